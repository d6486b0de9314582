"""Pre-upgrade gates: nothing is touched until every one passes; they also record the baseline."""

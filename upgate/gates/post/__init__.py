"""Post-upgrade gates: the result proven against the baseline; in the rollback phase, the rollback proven."""

"""Post-gate: no preserved row lost or changed against the baseline fingerprints (zero data loss, proven)."""

from __future__ import annotations

import pytest

from upgate.checks.integrity import Fingerprint, verify_table

pytestmark = pytest.mark.upgate_component("database")


@pytest.fixture(scope="session")
def comparison(db_url, gated_table, baseline_dir, config):
    baseline = Fingerprint.load(baseline_dir / "fingerprints", gated_table)
    result, damage = verify_table(db_url, baseline, workers=config.integrity.workers,
                                  allow_added=config.integrity.allow_added_rows, first=config.integrity.report_first)
    if damage is not None and not damage.empty:
        # Every damaged key, not only the first few: what a repair from the backup works from.
        damage.save(baseline_dir.parent / "integrity")
    return result


def test_no_preserved_row_lost(comparison, evidence):
    evidence("integrity", comparison)
    assert comparison.evidence.get("lost", {}).get("count", 1) == 0, comparison.summary


def test_no_preserved_row_changed(comparison):
    assert comparison.evidence.get("changed", {}).get("count", 1) == 0, comparison.summary


def test_added_rows_allowed(comparison, config):
    added = comparison.evidence.get("added", {}).get("count", 0)
    assert config.integrity.allow_added_rows or added == 0, (
        f"{comparison.summary} (integrity.allow_added_rows = false)")

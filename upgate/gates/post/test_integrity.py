"""Post-gate: no preserved row lost or changed against the baseline fingerprints (zero data loss, proven)."""

from __future__ import annotations

import pytest

from upgate.checks.integrity import Fingerprint, fingerprint_and_compare

pytestmark = pytest.mark.upgate_component("database")


@pytest.fixture(scope="session")
def comparison(db_url, gated_table, baseline_dir, config):
    baseline = Fingerprint.load(baseline_dir / "fingerprints", gated_table)
    return fingerprint_and_compare(db_url, baseline, workers=config.integrity.workers,
                                   allow_added=config.integrity.allow_added_rows,
                                   first=config.integrity.report_first)


def test_no_preserved_row_lost(comparison, evidence):
    evidence("integrity", comparison)
    assert comparison.evidence["lost"]["count"] == 0, comparison.summary


def test_no_preserved_row_changed(comparison):
    assert comparison.evidence["changed"]["count"] == 0, comparison.summary


def test_added_rows_allowed(comparison, config):
    added = comparison.evidence["added"]["count"]
    assert config.integrity.allow_added_rows or added == 0, (
        f"{comparison.summary} (integrity.allow_added_rows = false)")

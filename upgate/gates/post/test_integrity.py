"""Post-gate: no preserved row lost or changed against the baseline fingerprints (zero data loss, proven).

With a live-traffic capture (upgate/core/live.py) only the upgrade's changes are judged: what live traffic
wrote since the baseline is attributed to it and counted in the evidence, never counted as damage.
"""

from __future__ import annotations

import json
import re

import psycopg
import pytest

from upgate.checks.integrity import Fingerprint, diff_table, verify_table
from upgate.checks.result import CheckResult

pytestmark = pytest.mark.upgate_component("database")


@pytest.fixture(scope="session")
def live_view(run_dir, db_url):
    """What the run's capture saw since the baseline; None when the run captured no live traffic."""
    from upgate.core.live import LiveView

    return LiveView.open(run_dir, db_url)


@pytest.fixture(scope="session")
def comparison(db_url, gated_table, baseline_dir, config, live_view):
    baseline = Fingerprint.load(baseline_dir / "fingerprints", gated_table)
    folder = baseline_dir.parent / "integrity"
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", gated_table)
    for stale in (folder / f"{stem}.damage.npz", folder / f"{stem}.repair.json"):
        stale.unlink(missing_ok=True)  # a repair reads only what this verdict names
    cfg = config.integrity
    if live_view is None:
        result, damage = verify_table(db_url, baseline, workers=cfg.workers, allow_added=cfg.allow_added_rows,
                                      first=cfg.report_first)
        if damage is not None and not damage.empty:
            damage.save(folder)  # every damaged key, not only the first few: what a repair works from
        return result
    try:
        raw = diff_table(db_url, baseline, workers=cfg.workers)
        verdict = live_view.verdict(baseline, raw, allow_added=cfg.allow_added_rows, first=cfg.report_first)
    except (ValueError, psycopg.Error) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return CheckResult(ok=False, summary=f"{gated_table}: cannot judge the upgrade's changes: {reason}",
                           evidence={"table": gated_table, "error": reason})
    if not verdict.damage.empty or not verdict.result.ok:
        verdict.damage.save(folder)
        evidence = verdict.result.evidence
        (folder / f"{stem}.repair.json").write_text(json.dumps({
            "table": gated_table, "mixed": verdict.repair,
            "contested": evidence.get("contested", {}).get("count", 0),
            "unverifiable": evidence.get("unverifiable", {}).get("count", 0),
            "unattributable": evidence.get("unattributable", 0),
        }, default=str), encoding="utf-8")
    return verdict.result


def test_no_preserved_row_lost(comparison, evidence):
    evidence("integrity", comparison)
    assert comparison.evidence.get("lost", {}).get("count", 1) == 0 and not comparison.evidence.get(
        "unattributable"), comparison.summary


def test_no_preserved_row_changed(comparison):
    assert comparison.evidence.get("changed", {}).get("count", 1) == 0, comparison.summary


def test_added_rows_allowed(comparison, config):
    added = comparison.evidence.get("added", {}).get("count", 0)
    assert config.integrity.allow_added_rows or added == 0, (
        f"{comparison.summary} (integrity.allow_added_rows = false)")

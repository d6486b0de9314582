"""Post-gate: no preserved row lost or changed against the baseline fingerprints (zero data loss, proven).

With a live-traffic capture (upgate/core/live.py) only the upgrade's changes are judged: what live traffic
wrote since the baseline is attributed to it and counted in the evidence, never counted as damage. Every
gated table is read first, then the captured stream once, so it holds every change those reads saw.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest

from upgate.checks.integrity import Damage, Fingerprint, diff_table, verify_table
from upgate.checks.result import CheckResult

pytestmark = pytest.mark.upgate_component("database")


@pytest.fixture(scope="session")
def live_view(run_dir, db_url):
    """What the run's capture saw since the baseline; None when the run captured no live traffic."""
    from upgate.core.live import LiveView

    return LiveView.open(run_dir, db_url)


def _stem(table: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", table)


def _failed(table: str, err: BaseException) -> CheckResult:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return CheckResult(ok=False, summary=f"{table}: cannot judge the upgrade's changes: {reason}",
                       evidence={"table": table, "error": reason})


@pytest.fixture(scope="session")
def live_verdicts(db_url, baseline_dir, config, live_view) -> dict[str, CheckResult]:
    """Every gated table against its baseline, the live stream read once after all of them."""
    folder = baseline_dir.parent / "integrity"
    cfg = config.integrity
    baselines = {}
    for path in sorted((baseline_dir / "fingerprints").glob("*.json")):
        table = json.loads(path.read_text(encoding="utf-8"))["table"]
        baselines[table] = Fingerprint.load(baseline_dir / "fingerprints", table)
    results: dict[str, CheckResult] = {}
    raws: dict[str, Damage] = {}
    for table in baselines:
        _forget(folder, table)
    for table, baseline in baselines.items():
        try:
            raws[table] = diff_table(db_url, baseline, workers=cfg.workers)
        except (ValueError, psycopg.Error) as err:
            results[table] = _failed(table, err)
    try:
        events = live_view.events_of(list(raws)) if live_view.mode == "decode" else {}
    except (ValueError, psycopg.Error) as err:
        return {**results, **{t: _failed(t, err) for t in raws}}
    for table, raw in raws.items():
        try:
            verdict = live_view.verdict(baselines[table], raw, allow_added=cfg.allow_added_rows,
                                        first=cfg.report_first, events=events.get(table))
        except (ValueError, psycopg.Error) as err:
            results[table] = _failed(table, err)
            continue
        if not verdict.damage.empty or not verdict.result.ok:
            _save(folder, table, verdict)
        results[table] = verdict.result
    return results


def _forget(folder: Path, table: str) -> None:
    """A repair reads only what this verdict names: an earlier phase's damage goes."""
    for stale in (folder / f"{_stem(table)}.damage.npz", folder / f"{_stem(table)}.repair.json"):
        stale.unlink(missing_ok=True)


def _save(folder: Path, table: str, verdict) -> None:
    """Every damaged key (not only the first few), and what a repair needs to know: what it works from."""
    verdict.damage.save(folder)
    evidence = verdict.result.evidence
    (folder / f"{_stem(table)}.repair.json").write_text(json.dumps({
        "table": table, "mixed": verdict.repair,
        "contested": evidence.get("contested", {}).get("count", 0),
        "unverifiable": evidence.get("unverifiable", {}).get("count", 0),
        "unattributable": evidence.get("unattributable", 0),
    }, default=str), encoding="utf-8")


@pytest.fixture(scope="session")
def comparison(request, db_url, gated_table, baseline_dir, config, live_view):
    if live_view is not None:
        return request.getfixturevalue("live_verdicts")[gated_table]
    baseline = Fingerprint.load(baseline_dir / "fingerprints", gated_table)
    folder = baseline_dir.parent / "integrity"
    _forget(folder, gated_table)
    cfg = config.integrity
    result, damage = verify_table(db_url, baseline, workers=cfg.workers, allow_added=cfg.allow_added_rows,
                                  first=cfg.report_first)
    if damage is not None and not damage.empty:
        damage.save(folder)  # every damaged key, not only the first few: what a repair works from
    return result


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

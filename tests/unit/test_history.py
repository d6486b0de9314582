"""`upgate history`: past run folders read back into a success rate, per-run times, trends and a chart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from upgate.reporting.history import format_table, load_history, trend


def make_runs(reports: Path, verdicts: list[str], downtimes: list[float]) -> None:
    for i, (verdict, down) in enumerate(zip(verdicts, downtimes, strict=True)):
        folder = reports / "runs" / f"20261101-1000{i:02d}-aaaa"
        folder.mkdir(parents=True)
        rolled = verdict in ("ROLLED_BACK", "NEEDS_ATTENTION")
        (folder / "summary.json").write_text(json.dumps({
            "run_id": folder.name, "started_at": f"2026-11-01T10:00:{i:02d}+00:00", "target": "svc",
            "from_version": "v1", "to_version": "v2", "verdict": verdict, "seconds": 20 + i,
            "downtime": {"downtime_s": down, "longest_outage_s": down / 2},
            "rollback": {"triggered": rolled, "seconds": 3.0 + i, "verified": verdict == "ROLLED_BACK"},
        }))
    (reports / "runs" / "20261101-999999-hand").mkdir()  # gates run by hand: no summary, skipped


def test_success_rate_against_the_95_percent_target(tmp_path: Path):
    make_runs(tmp_path, ["UPGRADED"] * 18 + ["ROLLED_BACK", "BLOCKED"], [0.5] * 20)
    history = load_history(tmp_path)
    assert history.total == 20
    assert history.success_rate == 0.9 and history.meets_target is False
    assert history.attempted_success_rate == 18 / 19
    assert history.by_verdict == {"UPGRADED": 18, "ROLLED_BACK": 1, "BLOCKED": 1}
    table = format_table(history)
    assert "success rate 90.0 %" in table and "BELOW the 95 % target" in table


def test_rollback_time_only_for_runs_that_rolled_back(tmp_path: Path):
    make_runs(tmp_path, ["UPGRADED", "ROLLED_BACK", "NEEDS_ATTENTION"], [0.1, 0.2, 0.3])
    records = load_history(tmp_path).records
    assert [r.rollback_s for r in records] == [None, 4.0, 5.0]
    assert [r.rollback_verified for r in records] == [None, True, False]
    assert "5.00s!" in format_table(load_history(tmp_path))  # an unverified rollback is flagged


def test_trend_directions():
    assert trend("d", [1.0, 1.1, 2.0, 2.2]).direction == "rising"
    assert trend("d", [3.0, 3.0, 1.0, 1.0]).direction == "falling"
    assert trend("d", [1.0, 1.02, 0.99, 1.01]).direction == "flat"
    assert trend("d", [1.0, None]).direction == "n/a"


def test_filters_by_target_and_last_n(tmp_path: Path):
    make_runs(tmp_path, ["UPGRADED"] * 5, [0.1, 0.2, 0.3, 0.4, 0.5])
    assert [r.downtime_s for r in load_history(tmp_path, last=2).records] == [0.4, 0.5]
    assert load_history(tmp_path, target="other").total == 0


def test_cli_prints_the_table_and_writes_the_chart(tmp_path: Path):
    make_runs(tmp_path, ["UPGRADED", "UPGRADED", "ROLLED_BACK", "UPGRADED"], [0.4, 0.5, 1.5, 0.6])
    proc = subprocess.run([sys.executable, "-m", "upgate.cli", "history", "--reports", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "success rate 75.0 %" in proc.stdout and "trend downtime_s" in proc.stdout
    chart = tmp_path / "history.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000
    gated = subprocess.run([sys.executable, "-m", "upgate.cli", "history", "--reports", str(tmp_path), "--json",
                            "--chart", "none", "--fail-below"], capture_output=True, text=True, timeout=120)
    assert gated.returncode == 1
    assert json.loads(gated.stdout)["success_rate"] == 0.75

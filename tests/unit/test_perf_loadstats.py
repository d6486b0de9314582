"""The charts and reports read the perf gates' records back: a paired post-gate's live run stands for the baseline."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.test_perf_compare import make_run
from upgate.core.runs import RunDir
from upgate.reporting.loadstats import load_load_runs


def write(path: Path, scale: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(make_run(scale=scale).to_json()))


def test_sequential_records_give_baseline_and_candidate(tmp_path: Path):
    run = RunDir(tmp_path)
    write(tmp_path / "baseline" / "perf.json", 1.0)
    write(tmp_path / "perf" / "candidate.json", 3.0)
    runs = load_load_runs(run)
    assert [(r.phase, r.label) for r in runs] == [("baseline", "baseline"), ("candidate", "candidate")]
    assert len(runs[0].samples_ms) == 1200  # every endpoint's samples, not their offsets in the window


def test_paired_live_run_is_the_baseline_the_candidate_was_judged_against(tmp_path: Path):
    run = RunDir(tmp_path)
    write(tmp_path / "baseline" / "perf.json", 1.0)
    write(tmp_path / "perf" / "live.json", 2.0)
    write(tmp_path / "perf" / "candidate.json", 3.0)
    runs = load_load_runs(run)
    assert [(r.phase, r.label) for r in runs] == [("baseline", "live"), ("candidate", "candidate")]
    assert runs[0].p50_ms == make_run(scale=2.0).total.p50_ms

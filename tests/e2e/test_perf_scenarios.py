"""`upgate run` with the performance gate: the `slow` plan's v2-slow is caught and rolled back, sequentially
(against the pre-gate's baseline) and paired (beside an old version kept running, `[performance] baseline_url`);
the `good` plan with the perf gate added is upgraded, never rolled back by it. Checked independently (serving
build, schema) and through the run folder's perf records."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tests.e2e.support import run_upgate
from upgate.fixtures.demo import DemoTarget
from upgate.fixtures.reference import free_port, start_service, stop_pid, wait_ready

pytestmark = pytest.mark.e2e

PERFORMANCE = """
[performance]
users = 10
rate_per_user = 10
warmup_s = 2
duration_s = 6
windows = 6
"""


def serving_build(base_url: str) -> str:
    with urllib.request.urlopen(base_url + "/health", timeout=5) as resp:
        return str(json.loads(resp.read())["build"])


def columns(database_url: str) -> set[str]:
    with psycopg.connect(database_url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'episodic_logs'")}


def post_gates(tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    run = sorted((tmp_path / "reports" / "runs").iterdir())[-1]
    post = json.loads((run / "gates-post.json").read_text())
    return run, {g["nodeid"].split("::")[-1]: g for g in post["gates"] if "test_performance" in g["nodeid"]}


def latency_evidence(run: Path) -> dict:
    return json.loads(next((run / "evidence").glob("*no_latency_regression-latency.json")).read_text())["evidence"]


@pytest.mark.slow  # the long tier (make test-slow): sequential windows; make test keeps the paired detection below
@pytest.mark.parametrize("target", ["slow"], indirect=True)
def test_slow_build_is_rolled_back_by_the_performance_gate(target: DemoTarget, tmp_path):
    proc, summary = run_upgate(target, tmp_path)
    assert proc.returncode == 20, proc.stdout + proc.stderr
    assert "VERDICT: ROLLED_BACK (exit 20)" in proc.stdout
    assert "latency regressed on" in proc.stdout and "Mann-Whitney" in proc.stdout
    assert serving_build(target.base_url) == "v1"
    assert "cache_hit" not in columns(target.database_url)
    run, perf = post_gates(tmp_path)
    assert perf["test_no_latency_regression"]["outcome"] == "failed"
    assert latency_evidence(run)["paired"] is False and latency_evidence(run)["verdict"] == "regressed"
    baseline = json.loads((run / "baseline" / "perf.json").read_text())
    assert baseline["times"] and baseline["steadiness"]["evidence"]["windows"] == 10
    for name in ("baseline_stats.csv", "candidate_stats.csv", "candidate.json"):
        assert (run / "perf" / name).exists(), name
    assert summary["verdict"] == "ROLLED_BACK" and summary["gated"]["performance"] is True


@pytest.mark.parametrize("target", ["slow"], indirect=True)
def test_slow_build_beside_the_old_version_is_caught_pairwise(target: DemoTarget, tmp_path):
    # The operator keeps a v1 up beside the one being upgraded: the post-gate loads both at once.
    port = free_port()
    old = start_service(target.database_url, port, "v1", tmp_path / "old.pid", tmp_path / "old.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc=old)
        text = target.config.read_text(encoding="utf-8")
        target.config.write_text(text.replace("[performance]\n", f'[performance]\nbaseline_url = '
                                                                   f'"http://127.0.0.1:{port}"\n', 1))
        proc, summary = run_upgate(target, tmp_path)
    finally:
        stop_pid(old.pid)
    assert proc.returncode == 20, proc.stdout + proc.stderr
    run, perf = post_gates(tmp_path)
    message = perf["test_no_latency_regression"]["message"]
    assert message.startswith("latency regressed on") and "paired windows x" in message
    found = latency_evidence(run)
    assert found["paired"] is True and found["verdict"] == "regressed"
    assert (run / "perf" / "live.json").exists()
    assert serving_build(target.base_url) == "v1" and summary["verdict"] == "ROLLED_BACK"


@pytest.mark.slow  # the long tier (make test-slow): minutes of load; make test keeps the A/A run of tests/integration/test_perf_load.py
@pytest.mark.parametrize("target", ["good"], indirect=True)
def test_good_upgrade_is_not_rolled_back_by_the_performance_gate(target: DemoTarget, tmp_path):
    target.config.write_text(target.config.read_text(encoding="utf-8") + PERFORMANCE, encoding="utf-8")
    proc, summary = run_upgate(target, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary["verdict"] == "UPGRADED" and summary["gated"]["performance"] is True
    _, perf = post_gates(tmp_path)
    latency = perf["test_no_latency_regression"]
    # v2 reads three more columns: a pass, or on a busy machine an honest "too noisy" (skipped with the figures).
    assert latency["outcome"] == "passed" or latency["message"].startswith("too noisy to judge latency"), latency
    assert serving_build(target.base_url) == "v2" and "cache_hit" in columns(target.database_url)

"""`upgate run` on the `slow` plan: the performance post-gate catches v2-slow and the upgrade is rolled back;
checked independently (serving build, schema) and through the run folder's perf records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import psycopg
import pytest

from upgate.fixtures.demo import start_target, stop_target

pytestmark = pytest.mark.e2e


def serving_build(base_url: str) -> str:
    with urllib.request.urlopen(base_url + "/health", timeout=5) as resp:
        return str(json.loads(resp.read())["build"])


def test_slow_build_is_rolled_back_by_the_performance_gate(pg_server, tmp_path):
    target = start_target("slow", pg_server, tmp_path, rows=3000)
    try:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        proc = subprocess.run([sys.executable, "-m", "upgate.cli", "run", "--config", str(target.config),
                               "--reports", str(tmp_path / "reports")], cwd=tmp_path, capture_output=True,
                              text=True, env=env, timeout=600)
        assert proc.returncode == 20, proc.stdout + proc.stderr
        assert "VERDICT: ROLLED_BACK (exit 20)" in proc.stdout
        assert "latency regressed on" in proc.stdout and "Mann-Whitney" in proc.stdout
        assert serving_build(target.base_url) == "v1"
        with psycopg.connect(target.database_url) as conn:
            cols = {r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'episodic_logs'")}
        assert "cache_hit" not in cols
        run = sorted((tmp_path / "reports" / "runs").iterdir())[-1]
        post = json.loads((run / "gates-post.json").read_text())
        failed = {g["nodeid"].split("::")[-1] for g in post["gates"] if g["outcome"] == "failed"}
        assert "test_no_latency_regression" in failed
        assert (run / "baseline" / "perf.json").exists()
        for name in ("baseline_stats.csv", "candidate_stats.csv", "candidate.json"):
            assert (run / "perf" / name).exists(), name
        summary = json.loads((run / "summary.json").read_text())
        assert summary["verdict"] == "ROLLED_BACK" and summary["gated"]["performance"] is True
    finally:
        stop_target(target, pg_server)

"""`upgate run` on a plan whose pre-gates fail: the diagnostics family runs right after, attaches what an
operator looks at, and the verdict stays what the gates decided (BLOCKED, exit 10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from upgate.fixtures.demo import start_target, stop_target

pytestmark = pytest.mark.e2e


def test_failed_pre_gates_are_followed_by_diagnostics(pg_server, tmp_path):
    target = start_target("blocked", pg_server, tmp_path, rows=500)
    try:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        proc = subprocess.run([sys.executable, "-m", "upgate.cli", "run", "--config", str(target.config),
                               "--reports", str(tmp_path / "reports")], cwd=tmp_path, capture_output=True, text=True,
                              env=env, timeout=600)
    finally:
        stop_target(target, pg_server)
    assert proc.returncode == 10, proc.stdout + proc.stderr
    assert "diagnostics after pre failed" in proc.stdout
    run = sorted((tmp_path / "reports" / "runs").iterdir())[-1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["verdict"] == "BLOCKED"
    assert [d["after"] for d in summary["diagnostics"]] == ["pre"]
    gates = json.loads((run / "gates-diagnostics-pre.json").read_text())["gates"]
    outcomes = {g["nodeid"].split("::")[-1]: g["outcome"] for g in gates}
    assert outcomes["test_connection_headroom"] == "passed"
    assert outcomes["test_service_log_tail"] == "passed"
    tail = json.loads((run / "evidence" / "diagnostics-test_service_log_tail-log_tail.json").read_text())
    assert any("service-v1.log" in path for path in tail["evidence"]["tails"])
    owners = json.loads((run / "evidence" / "diagnostics-test_port_owners-port_owners.json").read_text())
    port = target.base_url.rsplit(":", 1)[1]
    assert owners["evidence"]["ports"][port], "the service's port had an owner when diagnostics ran"
    failed = json.loads((run / "evidence" / "diagnostics-test_failed_gates_listed-failed_gates.json").read_text())
    assert any("test_no_unallowed_destructive_change" in f["gate"] for f in failed["evidence"]["failures"])

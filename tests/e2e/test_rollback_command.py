"""`upgate rollback --run DIR` undoes a run from its journal: one killed half-way, and one that upgraded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.support import upgate
from tests.e2e.test_scenarios import V2_COLUMNS, columns, rows_digest, serving_build
from upgate.fixtures.demo import start_target, stop_target

pytestmark = pytest.mark.e2e


def latest_run(reports: Path) -> Path:
    return sorted((reports / "runs").iterdir())[-1]


def test_rollback_of_a_run_killed_during_deploy(pg_server, tmp_path):
    target = start_target("broken-deploy", pg_server, tmp_path, rows=2000)
    try:
        # A deploy that waits long for readiness, so the run can be killed in the middle of it.
        target.config.write_text(target.config.read_text().replace("ready_timeout_s = 5", "ready_timeout_s = 120"))
        before = rows_digest(target.database_url)
        reports = tmp_path / "reports"
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        proc = subprocess.Popen([sys.executable, "-m", "upgate.cli", "run", "--config", str(target.config),
                                 "--reports", str(reports)], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        journal = None
        while time.monotonic() < deadline:
            runs = reports / "runs"
            if runs.is_dir() and any(runs.iterdir()):
                journal = latest_run(reports) / "journal.jsonl"
                if journal.exists() and '"step": "deploy", "event": "start"' in journal.read_text():
                    break
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert journal is not None and "deploy" in journal.read_text()
        assert V2_COLUMNS <= columns(target.database_url)  # the migration was applied when it died

        result = upgate("rollback", "--config", str(target.config), "--run", str(journal.parent), cwd=tmp_path)
        assert result.returncode == 20, result.stdout + result.stderr
        assert "ROLLED_BACK" in result.stdout
        assert serving_build(target.base_url) == "v1"
        assert not (V2_COLUMNS & columns(target.database_url))
        assert rows_digest(target.database_url) == before
        summary = json.loads((journal.parent / "summary.json").read_text())
        assert summary["rollback"]["verified"] is True
    finally:
        stop_target(target, pg_server)


def test_rollback_of_an_upgraded_run(pg_server, tmp_path):
    target = start_target("good", pg_server, tmp_path, rows=2000)
    try:
        before = rows_digest(target.database_url)
        reports = tmp_path / "reports"
        assert upgate("run", "--config", str(target.config), "--reports", str(reports), cwd=tmp_path).returncode == 0
        assert serving_build(target.base_url) == "v2"
        run = latest_run(reports)
        result = upgate("rollback", "--config", str(target.config), "--run", str(run), cwd=tmp_path)
        assert result.returncode == 20, result.stdout + result.stderr
        assert serving_build(target.base_url) == "v1"
        assert not (V2_COLUMNS & columns(target.database_url))
        assert rows_digest(target.database_url) == before
        # A second rollback of the same run has nothing left to undo.
        again = upgate("rollback", "--config", str(target.config), "--run", str(run), cwd=tmp_path)
        assert again.returncode == 20 and "nothing to undo" in again.stdout
    finally:
        stop_target(target, pg_server)

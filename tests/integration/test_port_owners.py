"""Who holds the app's port, before anything is touched: the pidfile's whole tree, or something the deploy
would leave serving (an escaped worker, a stale pidfile). Real pre-fork servers (forking_server.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from upgate.checks.processes import check_port_owners, tree_pids
from upgate.fixtures.reference import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVER = str(Path(__file__).with_name("forking_server.py"))


class Server:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.pidfile = tmp_path / "svc.pid"

    def start(self, *extra: str) -> None:
        argv = [sys.executable, SERVER, "--port", str(self.port), "--version", "v1", "--pidfile", str(self.pidfile),
                *extra]
        subprocess.run(["sh", "-c", 'setsid "$@" > /dev/null 2>&1 &', "sh", *argv], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(self.procs()) < 3:
            time.sleep(0.05)
        assert self.pidfile.exists(), "the server did not start"

    def procs(self) -> list[psutil.Process]:
        marker = f"--port {self.port} "
        return [p for p in psutil.process_iter(["cmdline", "status"])
                if SERVER in " ".join(p.info["cmdline"] or []) and marker in " ".join(p.info["cmdline"] or []) + " "
                and p.info["status"] != psutil.STATUS_ZOMBIE]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    for proc in s.procs():  # every process this test started, by pid
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


def test_the_pidfiles_tree_holding_every_listener_passes(server):
    server.start()
    result = check_port_owners(server.port, server.pidfile)
    assert result.ok, result.summary
    assert f"pid {server.pidfile.read_text().strip()}" in result.summary
    assert len(result.evidence["tree"]) == 3


def test_an_escaped_worker_is_named_with_its_command_line(server):
    server.start("--escape")
    leader = int(server.pidfile.read_text())
    escaped = [p.pid for p in server.procs() if p.pid not in tree_pids(leader)]
    assert len(escaped) == 1
    result = check_port_owners(server.port, server.pidfile)
    assert not result.ok
    assert f"pid {escaped[0]} ({sys.executable} {SERVER}" in result.summary
    assert "stopping the old version would leave it serving" in result.summary


def test_a_stale_pidfile_blocks(server, tmp_path):
    server.start()
    stale = tmp_path / "stale.pid"
    stale.write_text("999999999\n")
    result = check_port_owners(server.port, stale)
    assert not result.ok
    assert "names no running process (pid 999999999)" in result.summary
    assert "would leave it serving" in result.summary


def test_nothing_listening_has_nothing_to_stop(tmp_path):
    port = free_port()
    result = check_port_owners(port, tmp_path / "none.pid")
    assert result.ok and "nothing listens" in result.summary


def run_pre_deploy_gate(tmp_path: Path, deploy: str, port: int) -> dict:
    tmp_path.mkdir()
    cfg = tmp_path / "upgate.toml"
    cfg.write_text(f'[target]\nname = "svc"\n[app]\nbase_url = "http://127.0.0.1:{port}"\n[deploy]\n{deploy}\n')
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "pytest", "upgate/gates/pre/test_deploy.py", "--upgate-config", str(cfg),
                    "--upgate-run-dir", str(run), "-p", "no:cacheprovider", "-q", "--rootdir", str(ROOT)],
                   cwd=ROOT, capture_output=True, text=True, timeout=120)
    gates = json.loads((run / "gates-pre.json").read_text())["gates"]
    assert len(gates) == 1
    return gates[0]


def test_the_pre_gate_blocks_on_a_leftover_and_skips_other_kinds(server, tmp_path):
    server.start("--escape")
    process = (f'kind = "process"\npidfile = "{server.pidfile}"\nstart = ["true"]\nprevious = ["true"]')
    gate = run_pre_deploy_gate(tmp_path / "a", process, server.port)
    assert gate["outcome"] == "failed" and "would leave it serving" in gate["message"]
    command = 'kind = "command"\ndeploy_command = "true"\nrollback_command = "true"'
    gate = run_pre_deploy_gate(tmp_path / "b", command, server.port)
    assert gate["outcome"] == "skipped" and "the deploy command decides what it stops" in gate["message"]

"""Process and command deploys on real pre-fork servers: the whole old tree stops, readiness comes from the
new process, a leftover worker is caught, a new process that dies fails at once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from upgate.checks.processes import listeners, tree_pids
from upgate.config import load_config
from upgate.core.journal import Journal
from upgate.core.runs import RunDir
from upgate.errors import StepFailed
from upgate.fixtures.reference import free_port
from upgate.steps.base import StepContext
from upgate.steps.deploy import CommandDeploy, ProcessDeploy, deploy_step

SERVER = str(Path(__file__).with_name("forking_server.py"))


class Target:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.pidfile = tmp_path / "svc.pid"
        self.marker = f"--port {self.port}"

    def argv(self, version: str, *extra: str) -> list[str]:
        return [sys.executable, SERVER, "--port", str(self.port), "--version", version,
                "--pidfile", str(self.pidfile), *extra]

    def start(self, version: str, *extra: str) -> None:
        """Start a server as an operator's script would: detached, not a child of this test."""
        subprocess.run(["sh", "-c", 'setsid "$@" > /dev/null 2>&1 &', "sh", *self.argv(version, *extra)],
                       check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.pidfile.exists() and len(self.procs(version)) >= 3:
                return
            time.sleep(0.05)
        raise TimeoutError(f"{version} did not start")

    def procs(self, version: str | None = None) -> list[psutil.Process]:
        """Every server process of this target (leader and workers), optionally of one version."""
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if SERVER in cmd and self.marker in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
                if version is None or f"--version {version} " in cmd + " ":
                    found.append(proc)
        return found

    def versions_answering(self, requests: int = 30) -> set[str]:
        seen = set()
        for _ in range(requests):
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as resp:
                seen.add(json.loads(resp.read())["version"])
        return seen

    def config(self, deploy: str, ready_timeout_s: float = 10) -> Path:
        path = self.tmp_path / "upgate.toml"
        path.write_text(f'[target]\nname = "svc"\n[app]\nbase_url = "http://127.0.0.1:{self.port}"\n'
                        f'[deploy]\nready_timeout_s = {ready_timeout_s}\nstop_timeout_s = 5\n{deploy}\n')
        return path

    def process_config(self, start: list[str], previous: list[str], **kw: float) -> Path:
        return self.config(f'kind = "process"\npidfile = "{self.pidfile}"\nstart = {json.dumps(start)}\n'
                           f'previous = {json.dumps(previous)}', **kw)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    t = Target(tmp_path)
    yield t
    for proc in t.procs():  # every server this test started, leftovers included
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


def context(config_path: Path) -> StepContext:
    config = load_config(config_path, environ={})
    run = RunDir.create(config_path.parent / "reports")
    return StepContext(config, run, Journal(run.journal))


def test_process_deploy_stops_every_old_worker_and_serves_only_the_new_version(target):
    target.start("v1", "--worker-groups")  # workers outside the leader's group: only a tree walk finds them
    old = {p.pid for p in target.procs("v1")}
    assert len(old) == 3 and target.versions_answering() == {"v1"}
    ctx = context(target.process_config(target.argv("v2"), target.argv("v1")))
    step = deploy_step(ctx.config)
    assert isinstance(step, ProcessDeploy)
    step.do(ctx)
    assert target.procs("v1") == [], "an old worker is still running"
    assert target.versions_answering() == {"v2"}
    events = [(r["step"], r["event"]) for r in Journal(ctx.run.journal).read()]
    assert events == [("deploy", "stopping"), ("deploy", "stopped"), ("deploy", "starting"), ("deploy", "started"),
                      ("deploy", "ready")]
    # The undo, split: stop the new tree (the database would be undone here), start the previous one.
    step.stop_new(ctx)
    assert target.procs() == [] and listeners(target.port) == []
    step.start_previous(ctx)
    assert target.versions_answering() == {"v1"} and target.procs("v2") == []


def test_a_worker_left_behind_is_caught_by_name(target):
    target.start("v1", "--escape")
    leader = int(target.pidfile.read_text())
    leftover = [p for p in target.procs("v1") if p.pid not in tree_pids(leader)]
    ctx = context(target.process_config(target.argv("v2"), target.argv("v1")))
    with pytest.raises(StepFailed, match=rf"port {target.port} is still served after stopping the old version's "
                                         r"process tree: .*pid \d+.*a leftover process"):
        deploy_step(ctx.config).do(ctx)
    assert leftover and target.procs("v2") == [], "the new version must not start next to a leftover"


def test_a_new_process_that_exits_at_once_fails_fast(target):
    target.start("v1")
    ctx = context(target.process_config(target.argv("v2", "--exit", "3"), target.argv("v1"), ready_timeout_s=60))
    t0 = time.monotonic()
    with pytest.raises(StepFailed, match="new version did not become ready: the new version exited with code 3"):
        deploy_step(ctx.config).do(ctx)
    assert time.monotonic() - t0 < 10


def test_command_deploy_does_not_take_the_old_servers_answer_for_readiness(target):
    target.start("v1")
    ctx = context(target.config('kind = "command"\ndeploy_command = "true"\nrollback_command = "true"',
                                ready_timeout_s=2))
    step = deploy_step(ctx.config)
    assert isinstance(step, CommandDeploy)
    with pytest.raises(StepFailed, match=f"port {target.port} is also served by a process that is not the new "
                                         "version"):
        step.do(ctx)


def test_command_deploy_whose_new_process_dies_fails_at_once(target):
    target.start("v1")
    dying = " ".join(target.argv("v2", "--exit", "4"))
    command = f'kill $(cat {target.pidfile}); ({dying}) & echo $! > {target.pidfile}'
    ctx = context(target.config(f'kind = "command"\npidfile = "{target.pidfile}"\n'
                                f'deploy_command = {json.dumps(command)}\nrollback_command = "true"',
                                ready_timeout_s=60))
    t0 = time.monotonic()
    with pytest.raises(StepFailed, match=rf"the process in {target.pidfile} \(pid \d+\) exited"):
        deploy_step(ctx.config).do(ctx)
    assert time.monotonic() - t0 < 10


def test_command_deploy_ready_from_a_new_process(target):
    target.start("v1")
    stop = (f"/bin/kill -TERM -- -$(cat {target.pidfile}); "
            f"while /bin/kill -0 -- -$(cat {target.pidfile}) 2>/dev/null; do sleep 0.05; done")
    start = f'({" ".join(target.argv("v2"))}) > /dev/null 2>&1 &'
    ctx = context(target.config(f'kind = "command"\ndeploy_command = {json.dumps(stop + "; " + start)}\n'
                                'rollback_command = "true"\n'
                                f'version_url = "http://127.0.0.1:{target.port}/version"\nexpect_version = "v2"'))
    deploy_step(ctx.config).do(ctx)
    assert target.versions_answering() == {"v2"} and target.procs("v1") == []
    ready = [r for r in Journal(ctx.run.journal).read() if r["event"] == "ready"][0]["detail"]
    assert "from the new process" in ready and "names 'v2'" in ready

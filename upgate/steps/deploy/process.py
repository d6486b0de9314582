"""Deploy a local process: stop the whole old tree, wait for a free port, start the new one, ready from it.

    [deploy]
    kind = "process"
    pidfile = "run/service.pid"
    start = ["gunicorn", "app:app", "-w", "2", "-b", "127.0.0.1:8080", "-p", "run/service.pid"]
    previous = ["/srv/app-v1/bin/gunicorn", "app:app", "-w", "2", "-b", "127.0.0.1:8080", "-p", "run/service.pid"]

Stopping takes the leader in the pidfile *and* every descendant (forked workers) and, when the leader
leads its own process group, the group; then it waits until nothing listens on the app's port. A
listener outside the tree is caught twice: before anything is touched by the pre-gate
(gates/pre/test_deploy.py: BLOCKED, naming its pid and command line), and, should one escape during
the stop, by the port that stays held, which fails the step by name.
The started process outlives upgate (its own session); its output goes to the run's logs folder.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from upgate.checks.processes import read_pid, tree_pids
from upgate.checks.secrets import redact
from upgate.config import AppConfig, Config, DeployConfig
from upgate.errors import StepFailed
from upgate.steps.base import Record, StepContext, StepPlan, records_for, started
from upgate.steps.deploy.base import (
    Deployer,
    ReadyWait,
    alive,
    log_tail,
    stop_tree,
    wait_port_free,
)


def pid_alive(pid: int) -> bool:
    """True while pid runs (zombies count as gone; our own exited child is reaped)."""
    return alive(pid)


def stop_pid(pid: int, timeout: float = 10.0) -> bool:
    """Stop pid and its whole tree (SIGTERM, then SIGKILL after `timeout`); True if nothing needed SIGKILL."""
    return not stop_tree(pid, timeout)["killed"]


class ProcessDeploy(Deployer):
    def __init__(self, deploy: DeployConfig, app: AppConfig | None, launched: list[dict[str, Any]] | None = None) -> None:
        super().__init__(deploy, app)
        assert deploy.pidfile is not None
        self.pidfile: Path = deploy.pidfile
        #: Processes this step started (pid and create time), from this run or read back from its journal.
        self.launched: list[dict[str, Any]] = list(launched or [])

    def plan(self) -> StepPlan:
        port = f"port {self.port}" if self.port else "the app's port"
        ready = self.app.url(self.app.ready_path) if self.app else "(no [app]: not checked)"
        return StepPlan(self.name, (
            f"stop the process tree in {self.pidfile} (leader, forked workers, its process group); wait until "
            f"{port} is free",
            f"start {' '.join(self.deploy.start)}",
            f"ready: {ready} answers and {port} belongs to the new process tree"),
            ("stop the new version's whole process tree and wait for the port (before the database is undone)",
             f"then start {' '.join(self.deploy.previous)}, ready from that process"))

    # --- the protocol -----------------------------------------------------------------------------

    def do(self, ctx: StepContext) -> None:
        self._stop(ctx, "old")
        self._start(ctx, self.deploy.start, "new", self.deploy.expect_version)

    def stop_new(self, ctx: StepContext) -> None:
        self._stop(ctx, "new")

    def start_previous(self, ctx: StepContext) -> None:
        self._start(ctx, self.deploy.previous, "previous", self.deploy.previous_version)

    # --- parts ------------------------------------------------------------------------------------

    def _stop(self, ctx: StepContext, which: str) -> None:
        say = lambda m: ctx.say("deploy", m)  # noqa: E731
        pids = [pid for pid in [read_pid(self.pidfile)] if pid is not None]
        pids += [p["pid"] for p in self.launched if p["pid"] not in pids and alive(p["pid"], p.get("created"))]
        ctx.journal.write(self.name, "stopping", which=which, pids=pids)
        stopped: list[dict[str, object]] = []
        for pid in pids:
            stopped.append({"leader": pid, **stop_tree(pid, self.deploy.stop_timeout_s, say)})
        if not pids:
            say(f"no running process in {self.pidfile}")
        self.pidfile.unlink(missing_ok=True)
        if self.port is not None:
            held = wait_port_free(self.port, self.deploy.stop_timeout_s)
            if held:
                ctx.journal.write(self.name, "port-held", which=which, listeners=[h.describe() for h in held])
                raise StepFailed(f"port {self.port} is still served after stopping the {which} version's process "
                                 f"tree: {', '.join(h.describe() for h in held)}; a leftover process (a worker that "
                                 "left the tree) must be stopped by hand")
        ctx.journal.write(self.name, "stopped", which=which, trees=stopped)
        self.record[f"stopped_{which}"] = stopped

    def _start(self, ctx: StepContext, command: list[str], which: str, expect_version: str | None) -> None:
        ctx.run.logs.mkdir(parents=True, exist_ok=True)
        log_path = ctx.run.logs / f"service-{which}.log"
        env = {**os.environ, **self.deploy.env}
        ctx.say("deploy", f"starting {which}: {redact(' '.join(command))}")
        ctx.journal.write(self.name, "starting", which=which, argv=[redact(a) for a in command])
        try:
            with log_path.open("ab") as log:
                proc = subprocess.Popen(command, cwd=self.deploy.workdir, env=env, stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise StepFailed(f"cannot start the {which} version ({command[0]}): {exc.strerror}") from None
        launched = {"pid": proc.pid, "created": _created(proc.pid), "which": which}
        self.launched.append(launched)
        ctx.journal.write(self.name, "started", **launched)

        def owners() -> set[int]:
            return tree_pids(proc.pid) | tree_pids(read_pid(self.pidfile))

        def gone() -> str | None:
            if proc.poll() is None:
                return None
            other = read_pid(self.pidfile)
            if other and other != proc.pid and alive(other):
                return None  # it daemonized: the pidfile names the process that serves
            tail = log_tail(log_path)
            return (f"the {which} version exited with code {proc.returncode} (log {log_path}"
                    + (f": {tail}" if tail else "") + ")")

        try:
            detail = ReadyWait(self.app, self.deploy, expect_version).wait(owners, gone)
        except StepFailed as exc:
            ctx.journal.write(self.name, "not-ready", which=which, error=str(exc))
            raise StepFailed(f"{which} version did not become ready: {exc} (log: {log_path})") from None
        if read_pid(self.pidfile) is None:
            self.pidfile.write_text(f"{proc.pid}\n")
        ctx.journal.write(self.name, "ready", which=which, detail=detail)
        self.record[f"ready_{which}"] = detail
        ctx.say("deploy", detail)

    @classmethod
    def from_journal(cls, config: Config, records: list[Record], ctx: StepContext) -> ProcessDeploy | None:
        if config.deploy is None or config.deploy.kind != "process" or not started(records, cls.name):
            return None
        mine = records_for(records, cls.name)
        if not any(r.get("event") in ("stopping", "starting") for r in mine):
            return None  # started, but had not touched anything yet
        launched = [{"pid": r["pid"], "created": r.get("created"), "which": r.get("which")}
                    for r in mine if r.get("event") == "started"]
        return cls(config.deploy, config.app, launched)


def _created(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None

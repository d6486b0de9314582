"""Deploy by shell commands the operator already has (a script, `systemctl`, a blue-green switch).

    [deploy]
    kind = "command"
    deploy_command = "./deploy.sh v2"
    rollback_command = "./deploy.sh v1"
    stop_command = "./stop.sh"        # optional: stops the new version before the database is undone
    pidfile = "run/app.pid"           # optional: the served process, watched so a crash fails at once

Readiness must come from a process that was not listening before the command ran (or, with a
pidfile, from that pid's tree); `version_url`/`expect_version` prove it where the listener's owner
cannot be read.
"""

from __future__ import annotations

import os
import subprocess
from typing import ClassVar

from upgate.checks.processes import Listener, listeners, read_pid, tree_pids
from upgate.checks.secrets import redact
from upgate.config import Config
from upgate.errors import StepFailed
from upgate.steps.base import Record, StepContext, StepPlan, records_for, started
from upgate.steps.deploy.base import (
    Deployer,
    ReadyWait,
    alive,
    stop_tree,
    wait_port_free,
)


class CommandDeploy(Deployer):
    name: ClassVar[str] = "deploy"

    def plan(self) -> StepPlan:
        stop = (f"run {redact(self.deploy.stop_command)}" if self.deploy.stop_command else
                "nothing to stop first (no [deploy] stop_command): the rollback command replaces the new version")
        return StepPlan(self.name, (f"run {redact(self.deploy.deploy_command or '')}",
                                    "ready: the ready URL answers from a process that was not serving before"),
                        (f"{stop} (before the database is undone)",
                         f"then run {redact(self.deploy.rollback_command or '')}, ready from the previous version"))

    def _run(self, ctx: StepContext, command: str, label: str) -> None:
        ctx.run.logs.mkdir(parents=True, exist_ok=True)
        log_path = ctx.run.logs / f"{label}.log"
        ctx.say("deploy", f"{label}: {redact(command)}")
        ctx.journal.write(self.name, "running", label=label, command=redact(command))
        with log_path.open("ab") as log:
            proc = subprocess.run(command, shell=True, cwd=self.deploy.workdir, stdout=log, stderr=log,
                                  stdin=subprocess.DEVNULL, env={**os.environ, **self.deploy.env})
        ctx.journal.write(self.name, "ran", label=label, exit_code=proc.returncode)
        if proc.returncode != 0:
            raise StepFailed(f"{label} command exited {proc.returncode}: {redact(command)} (log: {log_path})")

    def _wait(self, ctx: StepContext, label: str, before: list[Listener], expect_version: str | None) -> None:
        old = {(b.pid, b.started) for b in before if b.pid is not None}
        pidfile = self.deploy.pidfile
        seen_new: list[int] = []

        def owners() -> set[int]:
            if pidfile is not None:
                return tree_pids(read_pid(pidfile))
            now = {h.pid for h in listeners(self.port)} if self.port else set()
            found = {p for p in now if p is not None}
            seen_new.extend(p for p in found if p not in seen_new)
            return found

        def gone() -> str | None:
            if pidfile is not None:
                pid = read_pid(pidfile)
                if pid is not None and not alive(pid):
                    return f"the process in {pidfile} (pid {pid}) exited"
                return None
            if seen_new and self.port and not listeners(self.port):
                return f"the new process (pid {', '.join(map(str, seen_new))}) stopped listening on port {self.port}"
            return None

        detail = ReadyWait(self.app, self.deploy, expect_version).wait(
            owners, gone, not_from=lambda listener: (listener.pid, listener.started) in old)
        ctx.journal.write(self.name, "ready", label=label, detail=detail)
        self.record[f"ready_{label}"] = detail
        ctx.say("deploy", detail)

    def do(self, ctx: StepContext) -> None:
        assert self.deploy.deploy_command
        before = listeners(self.port) if self.port else []
        self._run(ctx, self.deploy.deploy_command, "deploy")
        self._wait(ctx, "deploy", before, self.deploy.expect_version)

    def stop_new(self, ctx: StepContext) -> None:
        stopped = False
        if self.deploy.stop_command:
            self._run(ctx, self.deploy.stop_command, "stop")
            stopped = True
        pid = read_pid(self.deploy.pidfile) if self.deploy.pidfile else None
        if pid is not None and alive(pid):
            ctx.journal.write(self.name, "stopping", pids=[pid])
            stop_tree(pid, self.deploy.stop_timeout_s, lambda m: ctx.say("deploy", m))
            stopped = True
        if stopped and self.port:
            held = wait_port_free(self.port, self.deploy.stop_timeout_s)
            if held:
                raise StepFailed(f"port {self.port} still served after stopping the new version: "
                                 + ", ".join(h.describe() for h in held))
        if not stopped:
            ctx.say("deploy", "no stop_command or pidfile: the rollback command replaces the new version")

    def start_previous(self, ctx: StepContext) -> None:
        assert self.deploy.rollback_command
        before = listeners(self.port) if self.port else []
        self._run(ctx, self.deploy.rollback_command, "rollback")
        self._wait(ctx, "rollback", before, self.deploy.previous_version)

    @classmethod
    def from_journal(cls, config: Config, records: list[Record], ctx: StepContext) -> CommandDeploy | None:
        if config.deploy is None or config.deploy.kind != "command" or not started(records, cls.name):
            return None
        if not any(r.get("event") == "running" for r in records_for(records, cls.name)):
            return None
        return cls(config.deploy, config.app)

"""Deploy by shell commands the operator already has (a script, `kubectl apply`, a blue-green switch).

    [deploy]
    kind = "command"
    deploy_command = "./deploy.sh v2"
    rollback_command = "./deploy.sh v1"
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from upgate.checks.secrets import redact
from upgate.config import AppConfig, DeployConfig
from upgate.errors import StepFailed
from upgate.steps.deploy.base import Deployer


class CommandDeployer(Deployer):
    def __init__(self, config: DeployConfig, app: AppConfig | None, logs: Path,
                 on_progress: Callable[[str], None] | None = None) -> None:
        super().__init__(app, on_progress)
        self.config = config
        self.logs = logs

    def _run(self, command: str, label: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.on_progress(f"{label}: {command}")
        with (self.logs / f"{label}.log").open("ab") as log:
            proc = subprocess.run(command, shell=True, cwd=self.config.workdir, stdout=log, stderr=log,
                                  env={**os.environ, **self.config.env})
        if proc.returncode != 0:
            raise StepFailed(f"{label} command exited {proc.returncode}: {redact(command)} "
                             f"(log: {self.logs / f'{label}.log'})")
        ok, detail = self.wait_ready(self.config.ready_timeout_s)
        if not ok:
            raise StepFailed(f"after {label}: {detail}")

    def deploy(self) -> None:
        assert self.config.deploy_command
        self._run(self.config.deploy_command, "deploy")

    def undo(self) -> None:
        assert self.config.rollback_command
        self._run(self.config.rollback_command, "rollback")

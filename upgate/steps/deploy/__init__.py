"""Deploy adapters; the pipeline talks to `Deployer` (base.py) only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from upgate.config import AppConfig, DeployConfig
from upgate.steps.deploy.base import Deployer
from upgate.steps.deploy.command import CommandDeployer
from upgate.steps.deploy.process import ProcessDeployer

__all__ = ["Deployer", "deployer_for"]


def deployer_for(config: DeployConfig, app: AppConfig | None, logs: Path,
                 on_progress: Callable[[str], None] | None = None) -> Deployer:
    if config.kind == "process":
        return ProcessDeployer(config, app, logs, on_progress=on_progress)
    return CommandDeployer(config, app, logs, on_progress=on_progress)

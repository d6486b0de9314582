"""Deploy kinds behind one `DeployStep` interface (base.py); the pipeline only sees the step."""

from __future__ import annotations

from upgate.config import Config
from upgate.steps.deploy.base import Deployer
from upgate.steps.deploy.command import CommandDeploy
from upgate.steps.deploy.process import ProcessDeploy

__all__ = ["CommandDeploy", "Deployer", "ProcessDeploy", "deploy_step"]

KINDS: dict[str, type[Deployer]] = {"process": ProcessDeploy, "command": CommandDeploy}


def deploy_step(config: Config) -> Deployer:
    """The deploy step `[deploy] kind` names."""
    assert config.deploy is not None
    return KINDS[config.deploy.kind](config.deploy, config.app)

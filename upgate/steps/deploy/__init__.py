"""Deploy kinds behind one `DeployStep` interface (base.py); the pipeline only sees the step."""

from __future__ import annotations

from upgate.config import Config
from upgate.steps.deploy.base import Deployer
from upgate.steps.deploy.command import CommandDeploy
from upgate.steps.deploy.compose import ComposeDeploy
from upgate.steps.deploy.docker import DockerDeploy
from upgate.steps.deploy.kubernetes import KubernetesDeploy
from upgate.steps.deploy.process import ProcessDeploy

__all__ = ["CommandDeploy", "ComposeDeploy", "Deployer", "DockerDeploy", "KubernetesDeploy", "ProcessDeploy",
           "deploy_step"]

KINDS: dict[str, type[Deployer]] = {"process": ProcessDeploy, "command": CommandDeploy, "docker": DockerDeploy,
                                    "compose": ComposeDeploy}


def deploy_step(config: Config) -> Deployer:
    """The deploy step `[deploy] kind` names."""
    assert config.deploy is not None
    if config.deploy.kind == "kubernetes":
        return KubernetesDeploy.from_config(config)
    return KINDS[config.deploy.kind](config.deploy, config.app)

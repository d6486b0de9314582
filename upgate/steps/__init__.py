"""Every upgrade kind is one Step (base.py): backup, packages, config, migrate (sql, command, alembic), model,
deploy.

    >>> steps = build_steps(config)                        # in the order the pipeline runs them  # doctest: +SKIP
    >>> done = steps_from_journal(config, records, ctx)    # what a run's journal says it did (`upgate rollback`)

Adding a kind: a Step subclass in its own module here, a line in `build_steps` (where it runs) and in
`journal_kinds` (so `upgate rollback` can rebuild it), and its config section in upgate/config.py
(docs/steps.md walks through it).
"""

from __future__ import annotations

from upgate.config import Config
from upgate.steps.backup import BackupStep
from upgate.steps.base import DatabaseStep, DeployStep, Record, RestorePoint, Step, StepContext, StepPlan
from upgate.steps.config import ConfigStep
from upgate.steps.deploy import (
    CommandDeploy,
    ComposeDeploy,
    DockerDeploy,
    KubernetesDeploy,
    ProcessDeploy,
    deploy_step,
)
from upgate.steps.migrate import MigrateStep, migrator_for
from upgate.steps.packages import PackagesStep

__all__ = ["DatabaseStep", "DeployStep", "RestorePoint", "Step", "StepContext", "StepPlan", "build_steps",
           "steps_from_journal"]


def build_steps(config: Config) -> list[Step]:
    """The steps `config` asks for, in the order they run: backup, packages, config, migrate, model, deploy.

    Packages and config files come before the migration: the new version's migration tool may need them."""
    steps: list[Step] = []
    if config.database.url:
        steps.append(BackupStep(config))
    if config.packages:
        steps.append(PackagesStep(config))
    if config.config_files:
        steps.append(ConfigStep(config))
    if config.migrate:
        steps.append(MigrateStep(config, migrator_for(config)))
    if config.model_upgrade:
        from upgate.steps.model import ModelStep

        steps.append(ModelStep(config))
    if config.deploy:
        steps.append(deploy_step(config))
    if config.node_upgrade:
        from upgate.steps.node import NodeUpgradeStep

        steps.append(NodeUpgradeStep.from_config(config))
    return steps


def journal_kinds(config: Config) -> list[type[Step]]:
    """The step classes `upgate rollback` asks to rebuild themselves from a journal, in run order."""
    kinds: list[type[Step]] = [BackupStep, PackagesStep, ConfigStep, MigrateStep]
    if config.model_upgrade:
        from upgate.steps.model import ModelStep

        kinds.append(ModelStep)
    from upgate.steps.node import NodeUpgradeStep

    return [*kinds, ProcessDeploy, CommandDeploy, DockerDeploy, ComposeDeploy, KubernetesDeploy, NodeUpgradeStep]


def steps_from_journal(config: Config, records: list[Record], ctx: StepContext) -> list[Step]:
    """The steps a run's journal says were done (and not yet undone), in run order."""
    found = (kind.from_journal(config, records, ctx) for kind in journal_kinds(config))
    return [step for step in found if step is not None]

"""Migration tools behind one `Migrator` interface (base.py); the pipeline only sees `MigrateStep`.

    sql.py      NNN_name.up.sql / .down.sql files, one transaction each
    command.py  the application's own tool (argv), with an optional down command
    alembic.py  `alembic upgrade head`, down to the revision recorded before
"""

from __future__ import annotations

from pathlib import Path

from upgate.config import Config
from upgate.steps.migrate.alembic import AlembicMigrator
from upgate.steps.migrate.base import MigrateStep, Migrator, Unit
from upgate.steps.migrate.command import CommandMigrator
from upgate.steps.migrate.sql import SqlMigrator

__all__ = ["AlembicMigrator", "CommandMigrator", "MigrateStep", "Migrator", "SqlMigrator", "Unit", "migrator_for"]


def migrator_for(config: Config, log_dir: Path | None = None) -> Migrator:
    """The migrator `[migrate] kind` names; a tool's output is logged under `log_dir`."""
    assert config.migrate is not None
    if config.migrate.kind == "sql":
        return SqlMigrator(config.migrate)
    if config.migrate.kind == "alembic":
        return AlembicMigrator(config.migrate, log_dir=log_dir)
    return CommandMigrator(config.migrate, log_dir=log_dir)

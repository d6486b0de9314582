"""Migration tools behind one `Migrator` interface (base.py); the pipeline only sees `MigrateStep`."""

from __future__ import annotations

from upgate.config import Config
from upgate.steps.migrate.base import MigrateStep, Migrator, Unit
from upgate.steps.migrate.sql import SqlMigrator

__all__ = ["MigrateStep", "Migrator", "SqlMigrator", "Unit", "migrator_for"]


def migrator_for(config: Config) -> Migrator:
    """The migrator `[migrate] kind` names."""
    assert config.migrate is not None
    if config.migrate.kind == "sql":
        return SqlMigrator(config.migrate)
    raise ValueError(f"migrate.kind = {config.migrate.kind!r} is not supported")

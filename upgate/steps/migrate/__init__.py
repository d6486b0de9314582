"""Migration adapters; the pipeline talks to `Migrator` (base.py) only."""

from __future__ import annotations

from collections.abc import Callable

from upgate.config import MigrateConfig
from upgate.steps.migrate.base import Migrator
from upgate.steps.migrate.sql import SqlMigrator

__all__ = ["Migrator", "SqlMigrator", "migrator_for"]


def migrator_for(config: MigrateConfig, url: str, on_progress: Callable[[str], None] | None = None) -> Migrator:
    if config.kind == "sql":
        return SqlMigrator(url, config, on_progress=on_progress)
    raise ValueError(f"migrate.kind = {config.kind!r} is not supported")

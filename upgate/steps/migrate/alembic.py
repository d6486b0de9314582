"""Alembic, as a convenience over the command kind: up to head, down to the revision recorded before.

    [migrate]
    kind = "alembic"
    alembic_ini = "alembic.ini"
    alembic = ["/srv/app/venv/bin/alembic"]        # default: alembic on PATH
    env = { DATABASE_URL = "{database_url}" }      # what the project's env.py reads

Before the upgrade the current revision is read from `alembic_version` (none: `base`) and journaled;
the down is `alembic -c alembic.ini downgrade <that revision>`, so it exists whenever every revision
in between has a downgrade (a revision without one fails the down, and the rollback restores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import psycopg

from upgate.config import MigrateConfig
from upgate.steps.migrate.base import Unit
from upgate.steps.migrate.command import CommandMigrator


def current_revision(url: str) -> str:
    """The revision(s) in `alembic_version`, comma-joined; `base` when the table is missing or empty."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT to_regclass('alembic_version')").fetchone()
            if not exists or exists[0] is None:
                return "base"
            rows = conn.execute("SELECT version_num FROM alembic_version ORDER BY 1").fetchall()
    except psycopg.Error:
        return "base"
    return ",".join(r[0] for r in rows) or "base"


class AlembicMigrator(CommandMigrator):
    kind: ClassVar[str] = "alembic"

    def __init__(self, config: MigrateConfig, app_name: str = "upgate-migrate", log_dir: Path | None = None) -> None:
        super().__init__(config, app_name, log_dir)
        assert config.alembic_ini is not None
        self.ini = str(config.alembic_ini)

    def units(self) -> list[Unit]:
        up = self.config.up or [*self.config.alembic, "-c", self.ini, "upgrade", "head"]
        return [Unit("up", self._show(up), self._show([*self.config.alembic, "-c", self.ini, "downgrade"])
                     + " <revision before>")]

    def up_argv(self) -> list[str]:
        return list(self.config.up) or [*self.config.alembic, "-c", self.ini, "upgrade", "head"]

    def down_argv(self, recorded: dict[str, Any]) -> list[str]:
        if self.config.down:
            return list(self.config.down)
        revision = str(recorded.get("revision_before") or "base")
        if "," in revision:  # several heads: downgrade each branch by hand
            return []
        return [*self.config.alembic, "-c", self.ini, "downgrade", revision]

    def before(self, url: str) -> dict[str, Any]:
        return {"revision_before": current_revision(url)}

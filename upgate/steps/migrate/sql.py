"""SQL-file migrations: each file in its own transaction, under `lock_timeout`, retried a bounded number of times.

    [migrate]
    kind = "sql"
    directory = "migrations"      # NNN_name.up.sql, and NNN_name.down.sql where it can be undone

A file without a down file is allowed: the plan then says its undo is the restore of the backup.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import psycopg

from upgate.checks.migrations import (
    Migration,
    MigrationFailed,
    MigrationLockTimeout,
    apply_migration_file,
    load_migrations,
)
from upgate.checks.secrets import redact
from upgate.config import MigrateConfig
from upgate.errors import StepFailed
from upgate.steps.migrate.base import Migrator, Unit


class SqlMigrator(Migrator):
    kind: ClassVar[str] = "sql"
    atomic: ClassVar[bool] = True

    def __init__(self, config: MigrateConfig, app_name: str = "upgate-migrate") -> None:
        assert config.directory is not None
        self.config = config
        self.app_name = app_name
        try:
            self.migrations: list[Migration] = load_migrations(config.directory)
        except (ValueError, OSError) as exc:
            raise StepFailed(f"migrate.directory: {exc}") from None
        self._by_name = {m.name: m for m in self.migrations}

    def units(self) -> list[Unit]:
        return [Unit(m.name, m.up.name, m.down.name if m.down else None) for m in self.migrations]

    def sql_texts(self) -> dict[str, str]:
        return {m.up.name: m.up.read_text(encoding="utf-8") for m in self.migrations}

    def _run(self, url: str, path: Path, say: Callable[[str], None]) -> dict[str, Any]:
        def retried(attempt: int, error: Exception) -> None:
            say(f"{path.name}: lock not available (attempt {attempt}), retrying")

        try:
            with psycopg.connect(url, autocommit=True, application_name=self.app_name) as conn:
                done = apply_migration_file(conn, path, lock_timeout_ms=self.config.lock_timeout_ms,
                                            retries=self.config.retries, backoff_s=self.config.retry_backoff_s,
                                            on_retry=retried)
        except (MigrationFailed, MigrationLockTimeout) as exc:
            raise StepFailed(f"{path.name} failed and was rolled back: {redact(str(exc).strip())}") from None
        except psycopg.Error as exc:
            raise StepFailed(f"{path.name}: cannot run against {redact(url)}: {redact(str(exc).strip())}") from None
        return {"attempts": done.attempts, "statements": done.statements}

    def apply(self, unit: Unit, url: str, say: Callable[[str], None]) -> dict[str, Any]:
        return self._run(url, self._by_name[unit.name].up, say)

    def revert(self, unit: Unit, url: str, recorded: dict[str, Any], say: Callable[[str], None]) -> None:
        down = self._by_name[unit.name].down
        if down is None:
            raise StepFailed(f"{unit.name}: no down migration to undo it")
        self._run(url, down, say)

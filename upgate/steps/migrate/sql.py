"""SQL-file migrations: each file in its own transaction, under `lock_timeout`, retried a bounded number of times.

    >>> SqlMigrator(url, config.migrate).up()        # doctest: +SKIP
    ['001_add_columns']
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
from upgate.steps.migrate.base import Migrator


class SqlMigrator(Migrator):
    def __init__(self, url: str, config: MigrateConfig, on_progress: Callable[[str], None] | None = None) -> None:
        self.url = url
        self.config = config
        self.on_progress = on_progress or (lambda _msg: None)
        self.applied = []
        try:
            self.plan: list[Migration] = load_migrations(config.directory)
        except (ValueError, OSError) as exc:
            raise StepFailed(f"migrate.directory: {exc}") from None

    def _apply(self, conn: psycopg.Connection, name: str, path: Path) -> None:
        def retried(attempt: int, error: Exception) -> None:
            self.on_progress(f"{name}: lock not available (attempt {attempt}), retrying")

        try:
            apply_migration_file(conn, path, lock_timeout_ms=self.config.lock_timeout_ms,
                                 retries=self.config.retries, backoff_s=self.config.retry_backoff_s,
                                 on_retry=retried)
        except (MigrationFailed, MigrationLockTimeout, psycopg.Error) as exc:
            raise StepFailed(f"{path.name} failed and was rolled back: {redact(str(exc).strip())}") from None

    def up(self) -> list[str]:
        try:
            conn = psycopg.connect(self.url, autocommit=True, application_name="upgate-migrate")
        except psycopg.Error as exc:
            raise StepFailed(f"cannot connect to {redact(self.url)}: {exc}") from None
        with conn:
            for migration in self.plan:
                self.on_progress(f"applying {migration.up.name}")
                self._apply(conn, migration.name, migration.up)
                self.applied.append(migration.name)
                self._changed(migration.name, "applied")
        return list(self.applied)

    def down(self) -> list[str]:
        by_name = {m.name: m for m in self.plan}
        undone: list[str] = []
        try:
            conn = psycopg.connect(self.url, autocommit=True, application_name="upgate-migrate")
        except psycopg.Error as exc:
            raise StepFailed(f"cannot connect to {redact(self.url)}: {exc}") from None
        with conn:
            for name in reversed(self.applied):
                migration = by_name[name]
                if migration.down is None:
                    raise StepFailed(f"{name}: no down migration to undo it")
                self.on_progress(f"reverting {migration.down.name}")
                self._apply(conn, name, migration.down)
                undone.append(name)
                self.applied.remove(name)
                self._changed(name, "reverted")
        return undone

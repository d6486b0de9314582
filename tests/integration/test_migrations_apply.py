"""Applying one migration file: one transaction, lock_timeout with retries, clean rollback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from upgate.checks.migrations import MigrationFailed, MigrationLockTimeout, apply_migration_file


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE episodic_logs (id bigint PRIMARY KEY, prompt text)")
        conn.execute("INSERT INTO episodic_logs SELECT g, 'p' || g FROM generate_series(1, 10) g")
        yield conn


def columns(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'episodic_logs' ORDER BY ordinal_position"
    ).fetchall()
    return [r[0] for r in rows]


def migration(tmp_path: Path, text: str, name: str = "001_add_cache_hit.up.sql") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


ADD_COLUMN = "ALTER TABLE episodic_logs ADD COLUMN cache_hit boolean NOT NULL DEFAULT false;\n"


@pytest.fixture
def holder(pg_url: str) -> Iterator[psycopg.Connection]:
    """A second session inside a transaction that has read episodic_logs (ACCESS SHARE lock)."""
    with psycopg.connect(pg_url) as other:
        other.execute("SELECT count(*) FROM episodic_logs").fetchone()
        yield other
        other.rollback()


def test_file_is_applied_and_committed(conn: psycopg.Connection, tmp_path: Path, pg_url: str) -> None:
    path = migration(
        tmp_path, "BEGIN;\n" + ADD_COLUMN + "UPDATE episodic_logs SET cache_hit = true;\nCOMMIT;\n"
    )
    applied = apply_migration_file(conn, path)
    assert applied.attempts == 1 and applied.statements == 2 and applied.path == path
    with psycopg.connect(pg_url) as other:  # visible to another session: committed
        assert other.execute("SELECT count(*) FROM episodic_logs WHERE cache_hit").fetchone() == (10,)


def test_failing_statement_rolls_back_the_whole_file(conn: psycopg.Connection, tmp_path: Path) -> None:
    path = migration(tmp_path, ADD_COLUMN + "DELETE FROM episodic_logs;\nSELECT 1/0;\n", "002_bad.up.sql")
    with pytest.raises(MigrationFailed) as failed:
        apply_migration_file(conn, path)
    message = str(failed.value)
    assert message.startswith(
        "002_bad.up.sql: statement 3 (SELECT 1/0) failed, rolled back: division by zero"
    )
    assert failed.value.statement == 3 and failed.value.path == path
    assert columns(conn) == ["id", "prompt"]
    assert conn.execute("SELECT count(*) FROM episodic_logs").fetchone() == (10,)


def test_connection_inside_a_transaction_is_refused(pg_url: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(ValueError, match="already inside a transaction"):
            apply_migration_file(conn, migration(tmp_path, "SELECT 1;"))


def test_idle_non_autocommit_connection_works(pg_url: str, conn: psycopg.Connection, tmp_path: Path) -> None:
    with psycopg.connect(pg_url) as other:
        apply_migration_file(other, migration(tmp_path, ADD_COLUMN))
    assert columns(conn) == ["id", "prompt", "cache_hit"]


def test_retries_while_a_lock_is_held_then_succeeds(
    conn: psycopg.Connection, holder: psycopg.Connection, tmp_path: Path
) -> None:
    release = threading.Timer(1.5, holder.rollback)
    retries: list[int] = []
    release.start()
    try:
        applied = apply_migration_file(
            conn,
            migration(tmp_path, ADD_COLUMN),
            lock_timeout_ms=200,
            retries=5,
            backoff_s=0.3,
            on_retry=lambda attempt, error: retries.append(attempt),
        )
    finally:
        release.join()
    assert applied.attempts >= 2
    assert applied.attempts == len(retries) + 1
    assert retries == list(range(1, applied.attempts))
    assert applied.elapsed_s >= 1.4
    assert columns(conn) == ["id", "prompt", "cache_hit"]


def test_gives_up_after_the_retries(
    conn: psycopg.Connection, holder: psycopg.Connection, tmp_path: Path
) -> None:
    retries: list[int] = []
    with pytest.raises(
        MigrationLockTimeout, match=r"001_add_cache_hit.up.sql: gave up after 3 attempts"
    ) as failed:
        apply_migration_file(
            conn,
            migration(tmp_path, ADD_COLUMN),
            lock_timeout_ms=100,
            retries=2,
            backoff_s=0.05,
            on_retry=lambda attempt, error: retries.append(attempt),
        )
    assert isinstance(failed.value.__cause__, psycopg.errors.LockNotAvailable)
    assert retries == [1, 2]
    assert columns(conn) == ["id", "prompt"]

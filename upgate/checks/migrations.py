"""SQL migration files: load the up/down pairs, read them for risky statements, apply one safely.

    >>> migrations = load_migrations(Path("fixtures/service/migrations"))        # doctest: +SKIP
    >>> scan_statements("DELETE FROM episodic_logs WHERE ts < now();", source="002_prune.up.sql")
    ['002_prune.up.sql: statement 1 rewrites data (DELETE FROM episodic_logs WHERE ...): no static check can tell a correct backfill from a buggy one; the integrity gate decides']

A folder holds `NNN_name.up.sql` and, for every migration that can be undone, `NNN_name.down.sql`.
`apply_migration_file` runs one file in one transaction under a short `lock_timeout`, retrying
with backoff while another session holds a conflicting lock.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import psycopg.errors
import sqlparse
from psycopg.pq import TransactionStatus

_FILE = re.compile(r"^(?P<name>\d+_[A-Za-z0-9][A-Za-z0-9_.-]*?)\.(?P<direction>up|down)\.sql$")
_TRANSACTION_CONTROL = re.compile(
    r"^(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT)\b(\s+(WORK|TRANSACTION)\b)?[^;]*;?$", re.I
)
_EXCERPT_CHARS = 60
_WARNING_TAIL = "no static check can tell a correct backfill from a buggy one; the integrity gate decides"


@dataclass(frozen=True)
class Migration:
    """One migration: `name` is the file stem without `.up.sql` (e.g. `001_add_cache_columns`)."""

    name: str
    up: Path
    down: Path | None


@dataclass(frozen=True)
class AppliedFile:
    """How applying one file went: attempts counts the lock-timeout retries plus the final run."""

    path: Path
    attempts: int
    elapsed_s: float
    statements: int


class MigrationFailed(RuntimeError):
    """A migration file failed; its transaction was rolled back and left nothing behind."""

    def __init__(self, message: str, path: Path, statement: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.statement = statement


class MigrationLockTimeout(MigrationFailed):
    """Every attempt hit lock_timeout: another session kept a conflicting lock."""


def load_migrations(directory: Path) -> list[Migration]:
    """The migrations of a folder sorted by name; ValueError naming the folder and file when malformed."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"migrations folder {directory} does not exist")
    ups: dict[str, Path] = {}
    downs: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.suffix != ".sql":
            continue
        match = _FILE.match(path.name)
        if not match:
            raise ValueError(f"{directory}: {path.name} does not match NNN_name.up.sql or NNN_name.down.sql")
        target = ups if match["direction"] == "up" else downs
        target[match["name"]] = path
    if not ups and not downs:
        raise ValueError(f"{directory}: no migrations found (expected files named NNN_name.up.sql)")
    orphans = sorted(set(downs) - set(ups))
    if orphans:
        raise ValueError(
            f"{directory}: {downs[orphans[0]].name} has no matching up file ({orphans[0]}.up.sql)"
        )
    return [Migration(name=name, up=ups[name], down=downs.get(name)) for name in sorted(ups)]


def split_statements(sql_text: str) -> list[str]:
    """The statements of a SQL script in order, as written (comments kept), empty ones dropped."""
    statements = []
    for raw in sqlparse.split(sql_text):
        if _strip_comments(raw):
            statements.append(raw.strip())
    return statements


def scan_statements(sql_text: str, source: str = "") -> list[str]:
    """Warnings for statements that rewrite existing rows, which only the integrity gate can judge.

    Flags UPDATE, DELETE, TRUNCATE, INSERT ... SELECT, data-modifying WITH, DO blocks, CALL and
    ALTER COLUMN ... TYPE ... USING. Each warning names the file (`source`), the statement number and
    an excerpt.
    """
    prefix = f"{source}: " if source else ""
    warnings = []
    for number, statement in enumerate(split_statements(sql_text), start=1):
        text = _strip_comments(statement)
        what = _rewrite_kind(text)
        if what:
            warnings.append(f"{prefix}statement {number} {what} ({_excerpt(text)}): {_WARNING_TAIL}")
    return warnings


def apply_migration_file(
    conn: psycopg.Connection,
    path: Path,
    lock_timeout_ms: int = 1000,
    retries: int = 5,
    backoff_s: float = 0.5,
    on_retry: Callable[[int, Exception], None] | None = None,
) -> AppliedFile:
    """Run every statement of `path` in one transaction under `SET LOCAL lock_timeout`.

    `conn` must not be inside a transaction: use `autocommit=True` (recommended) or an idle
    non-autocommit connection; the file is committed before this returns. BEGIN/COMMIT lines in the
    file are skipped (the file already runs in one transaction), so statements that cannot run in a
    transaction (CREATE INDEX CONCURRENTLY, VACUUM) fail here.

    When a statement waits longer than lock_timeout_ms for a lock, the transaction is rolled back and
    the file retried after backoff_s, 2*backoff_s, 4*backoff_s ... up to `retries` times;
    `on_retry(attempt, error)` is called before each sleep (attempt = the one that just failed).
    Then MigrationLockTimeout.
    Any other error rolls back and raises MigrationFailed naming the file and the statement.
    """
    path = Path(path)
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError(
            f"{path.name}: the connection is already inside a transaction; "
            "pass an idle connection (autocommit=True recommended)"
        )
    try:
        statements = [s for s in split_statements(path.read_text()) if not _is_transaction_control(s)]
    except OSError as exc:
        raise MigrationFailed(f"{path.name}: cannot read migration file: {exc}", path) from exc
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            _run_in_transaction(conn, path, statements, lock_timeout_ms)
        except psycopg.errors.LockNotAvailable as exc:
            if attempt > retries:
                raise MigrationLockTimeout(
                    f"{path.name}: gave up after {attempt} attempts: each waited more than "
                    f"{lock_timeout_ms} ms for a lock another session holds ({_first_line(exc)}); "
                    "retry when traffic is lower or raise the lock timeout",
                    path,
                ) from exc
            sleep_s = backoff_s * 2 ** (attempt - 1)
            if on_retry is not None:
                on_retry(attempt, exc)
            time.sleep(sleep_s)
            continue
        return AppliedFile(
            path=path, attempts=attempt, elapsed_s=time.monotonic() - started, statements=len(statements)
        )


def _run_in_transaction(
    conn: psycopg.Connection, path: Path, statements: list[str], lock_timeout_ms: int
) -> None:
    number = 0
    try:
        with conn.transaction():
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_ms)}ms",))
            for statement in statements:
                number += 1
                conn.execute(statement.encode())
    except psycopg.errors.LockNotAvailable:
        raise
    except psycopg.Error as exc:
        excerpt = _excerpt(_strip_comments(statements[number - 1])) if number else ""
        raise MigrationFailed(
            f"{path.name}: statement {number} ({excerpt}) failed, rolled back: {_first_line(exc)}",
            path,
            number,
        ) from exc


def _rewrite_kind(text: str) -> str | None:
    words = re.findall(r"[A-Za-z_]+", text.upper())
    if not words:
        return None
    first = words[0]
    if first in ("UPDATE", "DELETE", "TRUNCATE"):
        return "rewrites data"
    if first == "INSERT":
        return "rewrites data" if "SELECT" in words else None
    if first == "WITH":
        return "rewrites data" if {"UPDATE", "DELETE", "INSERT"} & set(words) else None
    if first == "DO":
        return "runs an opaque DO block"
    if first == "CALL":
        return "calls a procedure"
    if first == "ALTER" and re.search(r"\bTYPE\b.*\bUSING\b", text, re.I | re.S):
        return "converts column data with USING"
    return None


def _is_transaction_control(statement: str) -> bool:
    return bool(_TRANSACTION_CONTROL.match(_strip_comments(statement)))


def _strip_comments(statement: str) -> str:
    return str(sqlparse.format(statement, strip_comments=True)).strip()


def _excerpt(text: str) -> str:
    flat = " ".join(text.rstrip(";").split())
    where = re.search(r"\bWHERE\b", flat, re.I)
    if where and where.end() <= _EXCERPT_CHARS:
        return flat[: where.end()] + " ..."
    if len(flat) <= _EXCERPT_CHARS:
        return flat
    return flat[:_EXCERPT_CHARS].rsplit(" ", 1)[0] + " ..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

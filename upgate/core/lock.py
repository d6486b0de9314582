"""One upgrade at a time per database and target: a PostgreSQL session advisory lock, freed if the process dies.

    >>> with run_lock(url, "reference-service"):     # doctest: +SKIP
    ...     pipeline()
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from upgate.checks.secrets import redact


class LockBusy(Exception):
    """Another upgate run holds the lock for this target."""


class LockUnavailable(Exception):
    """The database that holds the lock cannot be reached."""


def lock_key(target: str) -> int:
    digest = hashlib.blake2b(f"upgate:{target}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _connect(url: str, connect_timeout_s: float) -> psycopg.Connection:
    """A session for the lock, held in the server's maintenance database when the role may connect to it:
    a restore swaps the live database by rename, which needs every session of it gone (and a killed
    restore may leave no database under the live name until `upgate rollback` finishes the swap)."""
    timeout = max(1, int(connect_timeout_s))
    for name in ("postgres", "template1"):
        try:
            return psycopg.connect(make_conninfo(url, dbname=name), autocommit=True, connect_timeout=timeout,
                                   application_name="upgate-lock")
        except psycopg.Error:
            continue
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=timeout, application_name="upgate-lock")
    except psycopg.Error as exc:
        raise LockUnavailable(f"cannot connect to {redact(url)} for the run lock: {str(exc).strip()}") from None


@contextlib.contextmanager
def run_lock(url: str, target: str, connect_timeout_s: float = 5.0) -> Iterator[int]:
    dbname = conninfo_to_dict(url).get("dbname") or ""
    conn = _connect(url, connect_timeout_s)
    key = lock_key(f"{dbname}/{target}")
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not row or not row[0]:
            holder = conn.execute(
                "SELECT a.pid, a.backend_start FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = 'upgate-lock' "
                "AND a.pid <> pg_backend_pid() LIMIT 1"
            ).fetchone()
            who = f" (backend pid {holder[0]}, since {holder[1]:%H:%M:%S})" if holder else ""
            raise LockBusy(f"another upgate run holds the lock for target '{target}'{who}")
        yield key
    finally:
        conn.close()

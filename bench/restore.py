"""How long upgate's restore takes for about 1 GB, against a bare `pg_restore` into an empty database.

    python bench/restore.py [--gb 1.0] [--jobs 4] [--url postgresql://...]

upgate's restore does more than pg_restore: a fresh database from template0, `pg_restore -j` into it,
its schema compared with the baseline, the database's settings and grants copied, then the swap by
rename (the failed database kept). The bare figure is `createdb` + `pg_restore -j` into it, nothing
else. Without --url a private PostgreSQL (pgserver wheel) is started; with --url scratch databases are
created on that server and dropped afterwards. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from upgate.checks.schema import snapshot_schema
from upgate.checks.secrets import libpq_credentials
from upgate.embedded.postgres import PostgresServer, database_name, embedded_postgres, find_pg_tool
from upgate.steps.backup import restore_database, take_backup

ROW_BYTES = 330  # heap + index bytes per events row, measured on PostgreSQL 16

SCHEMA = """
CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE events (id bigserial PRIMARY KEY, item_id integer NOT NULL REFERENCES items (id),
                     kind text NOT NULL, payload text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX events_item_idx ON events (item_id, created_at);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 10000) g;
"""
FILL = """
INSERT INTO events (item_id, kind, payload, created_at)
SELECT 1 + (g::bigint * 7919) %% 10000, (ARRAY['view', 'buy', 'rate'])[1 + g %% 3],
       repeat(md5(g::text), 6), now() - make_interval(secs => g)
FROM generate_series(%s, %s) g
"""
# What the migration left: new tables with foreign keys into old ones, a type, a sequence, an index.
MIGRATION = """
CREATE TYPE mood AS ENUM ('ok', 'bad');
CREATE SEQUENCE ticket_seq;
CREATE TABLE reviews (id bigserial PRIMARY KEY, item_id integer REFERENCES items (id), mood mood);
INSERT INTO reviews (item_id, mood) SELECT id, 'ok' FROM items;
ALTER TABLE events ADD COLUMN review_id bigint REFERENCES reviews (id);
CREATE INDEX events_kind_idx ON events (kind);
"""


@contextmanager
def server(url: str | None) -> Iterator[PostgresServer]:
    if url:
        yield PostgresServer(url=url, bin_dir=None, embedded=False)
        return
    with embedded_postgres() as embedded:
        yield embedded


def fill(url: str, gigabytes: float) -> int:
    rows = int(gigabytes * 2**30 / ROW_BYTES)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        step = 500_000
        for start in range(1, rows + 1, step):
            conn.execute(FILL, (start, min(start + step - 1, rows)))
        conn.execute("VACUUM ANALYZE")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(size[0]) if size else 0


def bare_restore(server: PostgresServer, dump: Path, jobs: int) -> float:
    """createdb + pg_restore -j into it: the floor."""
    target = server.create_database("bare")
    try:
        started = time.monotonic()
        with libpq_credentials(target) as (dsn, env):
            subprocess.run([find_pg_tool("pg_restore", server.bin_dir), "--no-owner", "--exit-on-error",
                            f"--jobs={jobs}", "--dbname", dsn, str(dump)], check=True, capture_output=True, env=env)
        return time.monotonic() - started
    finally:
        server.drop_database(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="database size to build (default 1.0)")
    parser.add_argument("--jobs", type=int, default=4, help="pg_restore -j (default 4)")
    parser.add_argument("--url", help="a server to use instead of a private one")
    args = parser.parse_args()
    with server(args.url) as srv, tempfile.TemporaryDirectory(prefix="upgate-bench-restore-") as folder:
        url = srv.create_database("bench_restore")
        try:
            t0 = time.monotonic()
            size = fill(url, args.gb)
            print(f"database: {size / 2**30:.2f} GiB built in {time.monotonic() - t0:.0f} s")
            with psycopg.connect(url) as conn:
                expected = snapshot_schema(conn)
            backup = take_backup(url, Path(folder), find_pg_tool("pg_dump", srv.bin_dir),
                                 find_pg_tool("pg_restore", srv.bin_dir), verify="list")
            print(f"backup:   {backup.size_bytes / 2**20:.0f} MiB dump (-Fc -Z1) in {backup.dump_s:.1f} s")
            bare = bare_restore(srv, backup.path, args.jobs)
            print(f"bare:     createdb + pg_restore -j{args.jobs}: {bare:.1f} s")
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(MIGRATION)
            marks: dict[str, float] = {}
            started = time.monotonic()
            outcome = restore_database(url, backup, find_pg_tool("pg_restore", srv.bin_dir),
                                       find_pg_tool("psql", srv.bin_dir), tag="bench", expected=expected,
                                       jobs=args.jobs,
                                       progress=lambda event, _d: marks.setdefault(event, time.monotonic() - started))
            parts = ", ".join(f"{event} at {at:.1f} s" for event, at in marks.items())
            print(f"upgate:   restore ({outcome.method}, schema checked: {outcome.schema_checked}): "
                  f"{outcome.seconds:.1f} s ({parts})")
            print(f"ratio:    upgate / bare = {outcome.seconds / bare:.2f}")
        finally:
            drop_bench_databases(srv.url, url)


def drop_bench_databases(server_url: str, url: str) -> None:
    """Drop the bench database and every one a restore made beside it (fresh, failed: same name prefix)."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                            (f"{database_name(url)}%",)).fetchall()
        for (name,) in rows:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()

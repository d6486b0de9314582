"""upgate's backup step and restore on ~1 GB, against a bare single-process dump and full read.

    python bench/backup.py [--gb 1.0] [--rounds 3] [--layout partitioned|single] [--url postgresql://...]

bare:    `pg_dump -Fc -Z1` + `pg_restore -f /dev/null` (one process after the other, one core); the same
         with -Z0 is printed beside it, the like-for-like floor of an uncompressed backup
upgate:  `take_backup` as the backup step runs it (its default `[backup] compression`, uncompressed;
         `--compression 1` for gzip): `pg_dump -Fd -j N`, then the full read and the
         per-file sha256 manifest at the same time
restore: `restore_database` into a fresh database (pg_restore -j N, schema check, settings, swap)

`pg_dump -j` spreads tables over workers, so one huge table dumps on one core whatever N is. The
default layout is the events table partitioned by month (how a 1 GB event log is usually kept); the
`single` layout (one heap) shows the other end. Rounds interleave bare and upgate; the figures are
medians over the rounds, with min and median of each part printed. Printed, never asserted:

    backup ratio: X
    restore seconds per GB: X
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from restore import ROW_BYTES, drop_bench_databases, server  # noqa: E402

from upgate.checks.schema import snapshot_schema  # noqa: E402
from upgate.checks.secrets import libpq_credentials  # noqa: E402
from upgate.config import BackupConfig  # noqa: E402
from upgate.embedded.postgres import find_pg_tool  # noqa: E402
from upgate.steps.backup import restore_database, take_backup  # noqa: E402

PARTITIONS = 8
SCHEMA = """
CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE events (id bigint NOT NULL, item_id integer NOT NULL REFERENCES items (id),
                     kind text NOT NULL, payload text NOT NULL, created_at timestamptz NOT NULL{partition});
CREATE INDEX events_item_idx ON events (item_id, created_at);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 10000) g;
"""
FILL = """
INSERT INTO events (id, item_id, kind, payload, created_at)
SELECT g, 1 + (g::bigint * 7919) %% 10000, (ARRAY['view', 'buy', 'rate'])[1 + g %% 3],
       repeat(md5(g::text), 6), timestamptz '2026-01-01' + make_interval(secs => (g - 1) * %s)
FROM generate_series(%s, %s) g
"""


def build(url: str, gigabytes: float, layout: str) -> int:
    rows = int(gigabytes * 2**30 / ROW_BYTES)
    spread = 86400 * 30 * PARTITIONS / rows  # seconds between rows: `PARTITIONS` months in all
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA.format(partition=") PARTITION BY RANGE (created_at" if layout == "partitioned" else ""))
        if layout == "partitioned":
            for month in range(PARTITIONS):
                conn.execute(f"CREATE TABLE events_m{month} PARTITION OF events FOR VALUES FROM "
                             f"(timestamptz '2026-01-01' + interval '{30 * month} days') TO "
                             f"(timestamptz '2026-01-01' + interval '{30 * (month + 1)} days')")
        step = 500_000
        for start in range(1, rows + 1, step):
            conn.execute(FILL, (spread, start, min(start + step - 1, rows)))
        conn.execute("VACUUM ANALYZE")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(size[0]) if size else 0


def bare(url: str, folder: Path, pg_dump: str, pg_restore: str, compress: int = 1) -> tuple[float, float]:
    target = folder / "bare.dump"
    started = time.monotonic()
    with libpq_credentials(url) as (dsn, env):
        subprocess.run([pg_dump, "--format=custom", f"--compress={compress}", "--no-owner", "--file", str(target),
                        "--dbname", dsn], check=True, env=env)
    dumped = time.monotonic() - started
    subprocess.run([pg_restore, "--file", "/dev/null", str(target)], check=True)
    total = time.monotonic() - started
    target.unlink()
    return dumped, total


def spread(values: list[float]) -> str:
    return f"min {min(values):.2f} s, median {statistics.median(values):.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="database size to build (default 1.0)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layout", choices=("partitioned", "single"), default="partitioned")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="-j for dump and restore")
    parser.add_argument("--url", help="a server to use instead of a private one")
    parser.add_argument("--compression", type=int, default=BackupConfig().compression,
                        help="the backup step's -Z (default: its configured default)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    with server(args.url) as srv, tempfile.TemporaryDirectory(prefix="upgate-bench-backup-") as scratch:
        folder = Path(scratch)
        pg_dump, pg_restore = find_pg_tool("pg_dump", srv.bin_dir), find_pg_tool("pg_restore", srv.bin_dir)
        psql = find_pg_tool("psql", srv.bin_dir)
        url = srv.create_database("bench_backup")
        try:
            t0 = time.monotonic()
            size = build(url, args.gb, args.layout)
            gib = size / 2**30
            print(f"database: {gib:.2f} GiB ({args.layout}) built in {time.monotonic() - t0:.0f} s; upgate dumps with "
                  f"-Z{args.compression}, the bare dump with -Z1", flush=True)
            with psycopg.connect(url) as conn:
                expected = snapshot_schema(conn)
            bare_s, ours_s, ours_dump, ours_check, ratios, restores = [], [], [], [], [], []
            plain_ratios: list[float] = []  # against a bare uncompressed dump: the like-for-like floor
            for round_ in range(args.rounds):
                _dumped, floor = bare(url, folder, pg_dump, pg_restore)
                _dumped, plain = bare(url, folder, pg_dump, pg_restore, compress=0)
                started = time.monotonic()
                backup = take_backup(url, folder / "upgate", pg_dump, pg_restore, compression=args.compression,
                                     jobs=args.jobs)
                ours = time.monotonic() - started
                bare_s.append(floor)
                ours_s.append(ours)
                ours_dump.append(backup.dump_s)
                ours_check.append(backup.verify_s)
                ratios.append(ours / floor)
                plain_ratios.append(ours / plain)
                started = time.monotonic()
                outcome = restore_database(url, backup, pg_restore, psql, tag=f"bench{round_}", expected=expected,
                                           jobs=args.jobs)
                restores.append(time.monotonic() - started)
                with psycopg.connect(srv.url, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(outcome.kept_as or "")))
                shutil.rmtree(folder / "upgate")
                print(f"round {round_ + 1}: bare {floor:.2f} s (-Z0 {plain:.2f} s), upgate {ours:.2f} s (dump {backup.dump_s:.2f} s, "
                      f"verify + manifest {backup.verify_s:.2f} s, {backup.size_bytes / 2**20:.0f} MiB), ratio "
                      f"{ours / floor:.2f}; restore {restores[-1]:.2f} s ({outcome.method})", flush=True)
            print(f"bare dump + full read: {spread(bare_s)}")
            print(f"upgate backup step:    {spread(ours_s)} (dump {spread(ours_dump)}; verify + manifest "
                  f"{spread(ours_check)})")
            print(f"restore:               {spread(restores)} for {gib:.2f} GiB")
            print(f"backup ratio min {min(ratios):.2f}, median {statistics.median(ratios):.2f}")
            print(f"backup ratio against a bare -Z0 dump + full read: min {min(plain_ratios):.2f}, "
                  f"median {statistics.median(plain_ratios):.2f}")
            print(f"load average after: {os.getloadavg()[0]:.2f}")
            print(f"backup ratio: {statistics.median(ratios):.2f}")
            print(f"restore seconds per GB: {statistics.median(restores) / gib:.2f}")
        finally:
            drop_bench_databases(srv.url, url)


if __name__ == "__main__":
    main()

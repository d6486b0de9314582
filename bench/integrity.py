"""How close row fingerprints come to one hashed scan of the table, and whether they catch 1,000 faults.

    python bench/integrity.py [--rows 2000000] [--url postgresql://...] [--workers 2]

Without --url a private PostgreSQL (pgserver wheel) is started; with --url a scratch database is created
on that server and dropped afterwards.
"""

from __future__ import annotations

import argparse
import random
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg

from upgate.checks.integrity import compare_fingerprints, fingerprint_table
from upgate.embedded.postgres import PostgresServer, postgres_server

TABLE = "episodic_logs"
FAULTS_PER_KIND = 250
T = TypeVar("T")


@contextmanager
def scratch_database(url: str | None) -> Iterator[str]:
    with _server(url) as server:
        database = server.create_database("bench")
        try:
            yield database
        finally:
            server.drop_database(database)


@contextmanager
def _server(url: str | None) -> Iterator[PostgresServer]:
    if url:
        yield PostgresServer(url=url, bin_dir=None, embedded=False)
    else:
        with postgres_server() as server:
            yield server


def build_table(url: str, rows: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"""CREATE TABLE {TABLE} (id BIGSERIAL, session_id UUID, agent TEXT, role TEXT, content TEXT,
                metadata JSONB, tokens INTEGER, created_at TIMESTAMPTZ)"""
        )
        conn.execute(
            f"""INSERT INTO {TABLE} (session_id, agent, role, content, metadata, tokens, created_at)
                SELECT md5((i / 20)::text)::uuid, 'agent_' || (i %% 7),
                       (ARRAY['user', 'assistant', 'tool', 'system'])[1 + i %% 4],
                       left(repeat(md5(i::text), 8), 20 + (i * 37) %% 200),
                       jsonb_build_object('turn', i %% 50, 'model', 'm' || (i %% 3), 'score', (i %% 1000) / 10.0),
                       i %% 4000, timestamptz '2026-01-01' + i * interval '1 second'
                FROM generate_series(1, %s) AS i""",
            (rows,),
        )
        conn.execute(f"ALTER TABLE {TABLE} ADD PRIMARY KEY (id)")
        conn.execute(f"VACUUM ANALYZE {TABLE}")
    return time.perf_counter() - started


def best_of(runs: int, action: Callable[[], T]) -> tuple[float, T]:
    best, result = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        result = action()
        best = min(best, time.perf_counter() - started)
    assert result is not None
    return best, result


def floor_query(url: str) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*), bit_xor(hash_record_extended(t, 0)) FROM {TABLE} t").fetchone()
    assert row is not None
    return tuple(row)


def inject_faults(url: str, rows: int, seed: int = 7) -> dict[str, set[int]]:
    """250 deletes, 250 inserts, 250 one-column changes, 250 shifted agent/role boundaries."""
    picked = random.Random(seed).sample(range(1, rows + 1), 3 * FAULTS_PER_KIND)
    deleted, changed, shifted = (picked[i * FAULTS_PER_KIND : (i + 1) * FAULTS_PER_KIND] for i in range(3))
    with psycopg.connect(url) as conn:
        conn.execute(f"DELETE FROM {TABLE} WHERE id = ANY(%s)", (deleted,))
        conn.execute(f"UPDATE {TABLE} SET tokens = tokens + 1 WHERE id = ANY(%s)", (changed,))
        same = conn.execute(
            f"""WITH s AS (UPDATE {TABLE} SET agent = left(agent, -1), role = right(agent, 1) || role
                           WHERE id = ANY(%s) RETURNING id)
                SELECT count(*) FROM s""",
            (shifted,),
        ).fetchone()
        assert same is not None and same[0] == FAULTS_PER_KIND
        inserted = conn.execute(
            f"""INSERT INTO {TABLE} (session_id, agent, role, content, metadata, tokens, created_at)
                SELECT gen_random_uuid(), 'agent_x', 'user', 'injected', '{{}}', 1, now()
                FROM generate_series(1, %s) RETURNING id""",
            (FAULTS_PER_KIND,),
        ).fetchall()
    return {
        "lost": set(deleted),
        "changed": set(changed) | set(shifted),
        "added": {r[0] for r in inserted},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--url", help="a PostgreSQL server to create a scratch database on")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    with scratch_database(args.url) as url:
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        print(f"PostgreSQL {version[0] if version else '?'}, {args.rows:,} rows, workers={args.workers}")
        print(f"build: {build_table(url, args.rows):.1f} s")

        floor_s, floor = best_of(3, lambda: floor_query(url))
        capture_s, baseline = best_of(3, lambda: fingerprint_table(url, TABLE, workers=args.workers))
        assert baseline.count == floor[0] == args.rows
        verify_s, verdict = best_of(
            3,
            lambda: compare_fingerprints(baseline, fingerprint_table(url, TABLE, workers=args.workers)),
        )
        assert verdict.ok, verdict.summary
        print(f"floor:   {floor_s:.3f} s  {args.rows / floor_s / 1e6:.2f} M rows/s")
        print(f"capture: {capture_s:.3f} s  {args.rows / capture_s / 1e6:.2f} M rows/s")
        print(f"verify:  {verify_s:.3f} s  {args.rows / verify_s / 1e6:.2f} M rows/s")
        print(f"capture ratio: {capture_s / floor_s:.2f}")
        print(f"verify ratio: {verify_s / floor_s:.2f}")
        print(f"verdict: {verdict.summary}")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak memory: {peak:.0f} MiB")

        faults = inject_faults(url, args.rows)
        result = compare_fingerprints(
            baseline, fingerprint_table(url, TABLE, workers=args.workers), allow_added=True, first=10_000
        )
        reported = {kind: set(result.evidence[kind]["first"]) for kind in ("lost", "changed", "added")}
        found = sum(len(faults[kind] & reported[kind]) for kind in faults)
        false = sum(len(reported[kind] - faults[kind]) for kind in faults)
        total = sum(len(keys) for keys in faults.values())
        print(f"faults: {result.summary}")
        print(f"found: {found}/{total}")
        print(f"false reports: {false}")


if __name__ == "__main__":
    main()

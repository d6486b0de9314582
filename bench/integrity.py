"""How close row fingerprints come to one hashed scan of the table, how much memory they take, and whether
they catch 1,000 faults.

    python bench/integrity.py [--rows 2000000] [--repeat 5] [--url postgresql://...] [--workers 2]

Floor, capture and verify run interleaved (floor, capture, verify, floor, capture, verify, ...) so that
load from anything else on the machine hits all three alike; the ratios are medians of the per-round
ratios against the 2-connection floor (the same hashed scan split over two connections, as capture and
verify use two). A third floor hashes each row as upgate does (per-field hashes XORed, cheaper than
hash_record_extended): the ratios against it are what reading, sending and sorting add. The client CPU
(this process's, per capture and per verify) is printed beside them.
Memory is measured in a child process per case: its peak resident memory less what it
held after the imports, per row. Without --url a private PostgreSQL (pgserver wheel) is started; with
--url a scratch database is created on that server and dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from upgate.checks.integrity import fingerprint_and_compare, fingerprint_table, row_hash_sql
from upgate.embedded.postgres import PostgresServer, postgres_server

TABLE = "episodic_logs"
SHUFFLED = "episodic_logs_shuffled"
FAULTS_PER_KIND = 250


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


def build_table(url: str, rows: int, table: str = TABLE, shuffled: bool = False) -> float:
    """The guide's episodic_logs; `shuffled`: rows stored in random key order (the heap is not in key order)."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"""CREATE TABLE {table} (id BIGINT, session_id UUID, agent TEXT, role TEXT, content TEXT,
                metadata JSONB, tokens INTEGER, created_at TIMESTAMPTZ)"""
        )
        conn.execute(
            f"""INSERT INTO {table}
                SELECT i, md5((i / 20)::text)::uuid, 'agent_' || (i %% 7),
                       (ARRAY['user', 'assistant', 'tool', 'system'])[1 + i %% 4],
                       left(repeat(md5(i::text), 8), 20 + (i * 37) %% 200),
                       jsonb_build_object('turn', i %% 50, 'model', 'm' || (i %% 3), 'score', (i %% 1000) / 10.0),
                       i %% 4000, timestamptz '2026-01-01' + i * interval '1 second'
                FROM generate_series(1, %s) AS i {'ORDER BY md5(i::text)' if shuffled else ''}""",
            (rows,),
        )
        conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
        if not shuffled:
            conn.execute(f"CREATE SEQUENCE {table}_id_seq OWNED BY {table}.id START {rows + 1}")
            conn.execute(f"ALTER TABLE {table} ALTER id SET DEFAULT nextval('{table}_id_seq')")
        conn.execute(f"VACUUM ANALYZE {table}")
    return time.perf_counter() - started


FLOOR_HASH = "hash_record_extended(t, 0)"


def floor_scan(url: str, connections: int, row_hash: str = FLOOR_HASH) -> float:
    """One hashed scan of the whole table (`row_hash` of every row, by default `hash_record_extended`), split
    by block ranges."""
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT pg_relation_size('{TABLE}') / current_setting('block_size')::int").fetchone()
    pages = int(row[0]) if row else 0
    bounds = [pages * i // connections for i in range(connections + 1)]

    def scan(part: int) -> None:
        lo, hi = bounds[part], bounds[part + 1]
        last = part == connections - 1
        where = f"ctid >= '({lo},0)'::tid" + ("" if last else f" AND ctid < '({hi},0)'::tid")
        with psycopg.connect(url) as conn:
            conn.execute(f"SELECT count(*), bit_xor({row_hash}) FROM {TABLE} t WHERE {where}")

    started = time.perf_counter()
    threads = [threading.Thread(target=scan, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


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


# --------------------------------------------------------------------------------- memory, in a child


def _status_kib(field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}: memory is measured on Linux only")


def memory_probe(url: str, table: str, what: str, workers: int, folder: str) -> None:
    """Child process: peak resident memory of one capture or verify beyond what the imports hold."""
    with psycopg.connect(url) as conn:  # libpq and psycopg's own buffers belong to the imports
        conn.execute("SELECT 1")
    from upgate.checks.integrity import Fingerprint

    before = _status_kib("VmRSS")
    if what == "capture":
        fp = fingerprint_table(url, table, workers=workers)
        fp.save(Path(folder))
        rows = fp.count
    else:
        baseline = Fingerprint.load(Path(folder), table)
        result = fingerprint_and_compare(url, baseline, workers=workers)
        assert result.ok, result.summary
        rows = baseline.count
    # Not getrusage's ru_maxrss: Linux carries the parent's peak over fork and exec into it.
    peak = _status_kib("VmHWM")
    print(json.dumps({"bytes_per_row": (peak - before) * 1024 / max(rows, 1), "rows": rows}))


def measure_memory(url: str, table: str, workers: int, folder: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for what in ("capture", "verify"):
        done = subprocess.run([sys.executable, __file__, "--memory-probe", what, "--url", url, "--table", table,
                               "--workers", str(workers), "--folder", str(folder)],
                              capture_output=True, text=True, check=True)
        out[what] = float(json.loads(done.stdout.strip().splitlines()[-1])["bytes_per_row"])
    return out


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds of floor, capture, verify")
    parser.add_argument("--url", help="a PostgreSQL server to create a scratch database on")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-probe", choices=["capture", "verify"], help=argparse.SUPPRESS)
    parser.add_argument("--table", default=TABLE, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.url, args.table, args.memory_probe, args.workers, args.folder)
        return

    with scratch_database(args.url) as url:
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        print(f"PostgreSQL {version[0] if version else '?'}, {args.rows:,} rows, workers={args.workers}")
        print(f"build: {build_table(url, args.rows):.1f} s")

        baseline = fingerprint_table(url, TABLE, workers=args.workers)  # warm the cache once
        own_hash = row_hash_sql(url, TABLE)
        rounds: list[dict[str, Any]] = []
        for _ in range(args.repeat):
            floor1 = floor_scan(url, 1)
            floor2 = floor_scan(url, 2)
            same = floor_scan(url, 2, own_hash)
            started, cpu = time.perf_counter(), time.process_time()
            baseline = fingerprint_table(url, TABLE, workers=args.workers)
            capture, capture_cpu = time.perf_counter() - started, time.process_time() - cpu
            started, cpu = time.perf_counter(), time.process_time()
            verdict = fingerprint_and_compare(url, baseline, workers=args.workers)
            verify, verify_cpu = time.perf_counter() - started, time.process_time() - cpu
            assert verdict.ok, verdict.summary
            rounds.append({"floor1": floor1, "floor2": floor2, "same": same, "capture": capture, "verify": verify,
                           "capture_cpu": capture_cpu, "verify_cpu": verify_cpu})
        assert baseline.count == args.rows

        def med(key: str) -> float:
            return statistics.median(r[key] for r in rounds)

        def ratios(key: str, floor: str = "floor2") -> list[float]:
            return [r[key] / r[floor] for r in rounds]

        print(f"floor, 1 connection:  median {med('floor1'):.3f} s  {args.rows / med('floor1') / 1e6:.2f} M rows/s")
        print(f"floor, 2 connections: median {med('floor2'):.3f} s  {args.rows / med('floor2') / 1e6:.2f} M rows/s")
        print(f"floor, 2 connections, upgate's row hash: median {med('same'):.3f} s  "
              f"({statistics.median(ratios('same')):.2f} of the floor)")
        print(f"capture: median {med('capture'):.3f} s  {args.rows / med('capture') / 1e6:.2f} M rows/s")
        print(f"verify:  median {med('verify'):.3f} s  {args.rows / med('verify') / 1e6:.2f} M rows/s")
        # upgate's own process: on a machine whose floor does not scale with connections it adds to the wall
        # time almost in full, and it is far steadier than the wall time.
        print(f"client CPU: capture {med('capture_cpu'):.3f} s, verify {med('verify_cpu'):.3f} s "
              f"({med('capture_cpu') / args.rows * 1e9:.0f} / {med('verify_cpu') / args.rows * 1e9:.0f} ns per row)")
        for key in ("capture", "verify"):
            values = ratios(key)
            print(f"{key} ratio per round: " + " ".join(f"{v:.2f}" for v in values)
                  + f" (min {min(values):.2f}, median {statistics.median(values):.2f})")
        # What capture and verify add to a scan that hashes rows as they do: the reading and sorting alone.
        print("against the floor with upgate's row hash: capture "
              f"{statistics.median(ratios('capture', 'same')):.2f}, verify {statistics.median(ratios('verify', 'same')):.2f}")
        print(f"verdict: {verdict.summary}")

        with tempfile_folder() as folder:
            memory = measure_memory(url, TABLE, args.workers, folder)
        print(f"memory, heap in key order: capture {memory['capture']:.1f}, verify {memory['verify']:.1f} bytes/row")
        print(f"build (heap in random key order): {build_table(url, args.rows, SHUFFLED, shuffled=True):.1f} s")
        with tempfile_folder() as folder:
            shuffled = measure_memory(url, SHUFFLED, args.workers, folder)
        print(f"memory, heap in random key order: capture {shuffled['capture']:.1f}, "
              f"verify {shuffled['verify']:.1f} bytes/row")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {SHUFFLED}")

        faults = inject_faults(url, args.rows)
        result = fingerprint_and_compare(url, baseline, workers=args.workers, allow_added=True, first=10_000)
        reported = {kind: set(result.evidence[kind]["first"]) for kind in ("lost", "changed", "added")}
        found = sum(len(faults[kind] & reported[kind]) for kind in faults)
        false = sum(len(reported[kind] - faults[kind]) for kind in faults)
        total = sum(len(keys) for keys in faults.values())
        print(f"faults: {result.summary}")
        print(f"found: {found}/{total}")
        print(f"false reports: {false}")
        # The figures the issue tracks, each on its own line.
        print(f"fingerprint bytes per row: {max(*memory.values(), *shuffled.values()):.1f}")
        print(f"capture ratio: {statistics.median(ratios('capture')):.2f}")
        print(f"verify ratio: {statistics.median(ratios('verify')):.2f}")


@contextmanager
def tempfile_folder() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="upgate-bench-") as folder:
        yield Path(folder)


if __name__ == "__main__":
    main()

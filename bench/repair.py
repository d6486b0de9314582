"""Surgical repair of 300 damaged rows in a ~1 GB database, against the full restore of the same backup.

    python bench/repair.py [--gb 1.0] [--damaged 300] [--jobs 4] [--url postgresql://...]

The run is set up as `upgate run` sets it up: a live capture holds the baseline snapshot (wal_level =
logical), the baseline fingerprint and the backup are taken at it. A migration session
(application_name upgate-migrate) then changes two thirds of the damaged rows and deletes the rest;
the integrity verdict names them; `repair_damage` (upgate/core/repair.py) puts back exactly those rows
in one transaction, read back before it commits, and the fingerprint comparison is clean afterwards.
The full restore is upgate's `restore_database` of the same backup (fresh database, pg_restore -j,
schema check, swap by rename). Figures are printed, never asserted. Target: repair <= 1/10 of restore.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from restore import drop_bench_databases, fill, server  # noqa: E402  (bench/restore.py: the same ~1 GB database)

from upgate.checks.integrity import diff_table, fingerprint_table  # noqa: E402
from upgate.checks.schema import snapshot_schema  # noqa: E402
from upgate.config import load_config  # noqa: E402
from upgate.core.journal import Journal  # noqa: E402
from upgate.core.live import LiveCapture, LiveView  # noqa: E402
from upgate.core.repair import repair_damage  # noqa: E402
from upgate.core.runs import RunDir  # noqa: E402
from upgate.embedded.postgres import find_pg_tool  # noqa: E402
from upgate.steps.backup import restore_database, take_backup  # noqa: E402


def _quiet(_label: str, _message: str) -> None:
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="database size to build (default 1.0)")
    parser.add_argument("--damaged", type=int, default=300, help="rows the migration damages (default 300)")
    parser.add_argument("--jobs", type=int, default=4, help="pg_restore -j for the full restore (default 4)")
    parser.add_argument("--url", help="a server to use instead of a private one (wal_level = logical)")
    args = parser.parse_args()
    with server(args.url) as srv, tempfile.TemporaryDirectory(prefix="upgate-bench-repair-") as tmp:
        folder = Path(tmp)
        url = srv.create_database("bench_repair")
        try:
            t0 = time.monotonic()
            size = fill(url, args.gb)
            with psycopg.connect(url) as conn:
                rows_row = conn.execute("SELECT count(*) FROM events").fetchone()
                expected = snapshot_schema(conn)
            rows = int(rows_row[0]) if rows_row else 0
            print(f"database: {size / 2**30:.2f} GiB, events {rows:,} rows, built in {time.monotonic() - t0:.0f} s")
            (folder / "upgate.toml").write_text(
                f'[target]\nname = "bench-repair"\n[database]\nurl = "{url}"\n[integrity]\ntables = ["events"]\n'
                '[live]\nattribution = "decode"\n', encoding="utf-8")
            config = load_config(folder / "upgate.toml")
            run = RunDir.create(folder / "reports")
            capture = LiveCapture.start(config, run, _quiet)
            assert capture is not None
            try:
                t0 = time.monotonic()
                baseline = fingerprint_table(url, "events", snapshot=capture.snapshot)
                baseline.save(run.baseline / "fingerprints")
                print(f"baseline: fingerprint in {time.monotonic() - t0:.1f} s")
                backup = take_backup(url, folder / "backup", find_pg_tool("pg_dump", srv.bin_dir),
                                     find_pg_tool("pg_restore", srv.bin_dir), verify="list",
                                     snapshot=capture.snapshot)
                Journal(run.journal).write("backup", "verified", backup=backup.to_json())
                print(f"backup:   {backup.size_bytes / 2**20:.0f} MiB dump in {backup.dump_s:.1f} s")
                stride = max(1, rows // args.damaged)
                changed = args.damaged * 2 // 3
                with psycopg.connect(url, application_name="upgate-migrate") as conn:
                    conn.execute("UPDATE events SET payload = 'damaged' WHERE id %% %s = 0 AND id <= %s",
                                 (stride, stride * changed))
                    conn.execute("DELETE FROM events WHERE id %% %s = 0 AND id > %s AND id <= %s",
                                 (stride, stride * changed, stride * args.damaged))
                view = LiveView.open(run, url)
                assert view is not None
                t0 = time.monotonic()
                verdict = view.verdict(baseline, diff_table(url, baseline))
                verdict.damage.save(run.path / "integrity")
                evidence = verdict.result.evidence
                print(f"verdict:  {verdict.result.summary[:160]} ({time.monotonic() - t0:.1f} s)")
                t0 = time.monotonic()
                done = repair_damage(config, run, view, _quiet)
                repair_s = time.monotonic() - t0
                clean = diff_table(url, baseline).empty
                print(f"repaired: {done['rows']} rows from the {done['source']} "
                      f"(lost {evidence['lost']['count']}, changed {evidence['changed']['count']}); "
                      f"fingerprints equal afterwards: {clean}")
                print(f"repair seconds: {repair_s:.2f}")
            finally:
                capture.close()
            with psycopg.connect(url, autocommit=True) as conn:  # damage again: the restore undoes it too
                conn.execute("UPDATE events SET payload = 'damaged' WHERE id %% %s = 0 AND id <= %s",
                             (stride, stride * args.damaged))
            outcome = restore_database(url, backup, find_pg_tool("pg_restore", srv.bin_dir),
                                       find_pg_tool("psql", srv.bin_dir), tag="bench", expected=expected,
                                       jobs=args.jobs)
            print(f"full restore seconds: {outcome.seconds:.2f} ({outcome.method}, fingerprints equal afterwards: "
                  f"{diff_table(url, baseline).empty})")
            print(f"ratio:    repair / full restore = {repair_s / outcome.seconds:.4f} (target <= 0.1)")
        finally:
            drop_bench_databases(srv.url, url)


if __name__ == "__main__":
    main()

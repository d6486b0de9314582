"""Good upgrades under live write traffic: no false alarm, no committed write lost; the capture's overhead.

    python bench/live.py [--runs 10] [--rows 3000] [--overhead-s 5]

Each run starts a fresh reference target with pgbench's tables (`upgate demo`'s `live-pgbench-good`:
v1 -> v2 plus a backfill of every pgbench account), runs `upgate run` as a subprocess while pgbench writes
at -R 100 -c 2, then checks pgbench's invariants in plain SQL (every transaction pgbench processed has its
pgbench_history row; the balances of accounts, tellers and branches each sum to sum(delta)). A run that
does not end UPGRADED is a false alarm. The overhead is pgbench's unthrottled throughput (-c 2, -T
overhead-s, three alternated rounds) with and without the capture's statement triggers, publication and slot on the same database.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from upgate.config import load_config
from upgate.core.live import LiveCapture
from upgate.core.runs import RunDir
from upgate.embedded.postgres import embedded_postgres, find_pg_tool
from upgate.fixtures.demo import start_target, stop_target
from upgate.fixtures.live_load import PGBENCH_CLIENTS, PGBENCH_RATE
from upgate.fixtures.pgbench import PgbenchLoad, check_invariants

SCENARIO = "live-pgbench-good"
_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


def _upgate_run(config: Path, reports: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "upgate.cli", "run", "--config", str(config), "--reports",
                           str(reports)], capture_output=True, text=True, env=env, timeout=600)


def _tps(url: str, seconds: int) -> float:
    out = subprocess.run([find_pg_tool("pgbench"), "-n", "-c", str(PGBENCH_CLIENTS), "-T", str(seconds), url],
                         capture_output=True, text=True, check=True).stdout
    found = _TPS.search(out)
    return float(found.group(1)) if found else 0.0


def _quiet(_label: str, _message: str) -> None:
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rows", type=int, default=3000, help="episodic_logs rows seeded per target")
    parser.add_argument("--overhead-s", type=int, default=5, help="seconds of unthrottled pgbench per side")
    args = parser.parse_args()
    false_alarms, lost, broken, seconds, rates = 0, 0, 0, [], []
    with embedded_postgres() as server, tempfile.TemporaryDirectory(prefix="upgate-bench-live-") as tmp:
        for number in range(1, args.runs + 1):
            folder = Path(tmp) / f"run-{number}"
            folder.mkdir()
            target = start_target(SCENARIO, server, folder, args.rows)
            try:
                started = time.monotonic()
                with PgbenchLoad(target.database_url, PGBENCH_RATE, PGBENCH_CLIENTS,
                                 log_dir=folder / "pgbench") as load:  # committed: its --log lines
                    proc = _upgate_run(target.config, folder / "reports")
                seconds.append(time.monotonic() - started)
                invariants = check_invariants(target.database_url, load.committed)
                verdict = next((line for line in proc.stdout.splitlines() if line.startswith("VERDICT")), "no verdict")
                live = next((line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("live ")), "")
                rates.append(float(m.group(1)) if (m := re.search(r"([0-9.]+) writes/s", live)) else 0.0)
                false_alarms += proc.returncode != 0
                lost += invariants.lost
                broken += not invariants.ok
                print(f"run {number:2}: exit {proc.returncode}, {verdict[:60]}; {invariants.describe()}", flush=True)
            finally:
                stop_target(target, server)
        print(f"upgrade under load seconds: min {min(seconds):.1f}, median {statistics.median(seconds):.1f}; "
              f"writes/s in the window: median {statistics.median(rates):.0f}")
        print(f"live writes lost: {lost}")
        print(f"pgbench invariants broken: {broken}/{args.runs}")
        print(f"false alarms under load: {false_alarms}/{args.runs}")
        if args.overhead_s > 0:
            folder = Path(tmp) / "overhead"
            folder.mkdir()
            target = start_target(SCENARIO, server, folder, args.rows)
            try:
                without, with_capture = [], []
                for round_ in range(3):  # alternated: the shared machine's load drifts
                    without.append(_tps(target.database_url, args.overhead_s))
                    capture = LiveCapture.start(load_config(target.config),
                                                RunDir.create(folder / f"reports-{round_}"), _quiet)
                    assert capture is not None
                    try:
                        with_capture.append(_tps(target.database_url, args.overhead_s))
                    finally:
                        capture.close()
                a, b = statistics.median(without), statistics.median(with_capture)
                print(f"capture overhead: pgbench -c {PGBENCH_CLIENTS} unthrottled, median of 3 alternated "
                      f"{args.overhead_s} s rounds: {a:.0f} tps without, {b:.0f} tps with triggers + slot "
                      f"(overhead {(1 - b / a) * 100:+.1f} %; rounds {[round(x) for x in without]} / "
                      f"{[round(x) for x in with_capture]})")
            finally:
                stop_target(target, server)


if __name__ == "__main__":
    main()

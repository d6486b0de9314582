"""Good upgrades under live write traffic: no false alarm, no committed write lost; the capture's overhead.

    python bench/live.py [--runs 10] [--rows 3000] [--overhead-s 5]

Each run starts a fresh reference target with pgbench's tables (`upgate demo`'s `live-pgbench-good`:
v1 -> v2 plus a backfill of every pgbench account), runs `upgate run` as a subprocess while pgbench writes
at -R 100 -c 2, then checks pgbench's invariants in plain SQL (every transaction pgbench processed has its
pgbench_history row; the balances of accounts, tellers and branches each sum to sum(delta)). A run that
does not end UPGRADED is a false alarm. The overhead is pgbench's unthrottled throughput (-c 2, -T
overhead-s, three alternated rounds) with and without the capture's statement triggers, publication and slot on the same database.
With --restores N (default 3) the `live-pgbench-restore` plan runs N times under the same load: its
irreversible migration damages 300 rows, so the run ends in a full restore that replays every live write
committed since the baseline. Printed: the restore step's seconds, the replay's, how long the database was
locked out for the tail, and whether pgbench lost anything.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from upgate.config import load_config
from upgate.core.live import LiveCapture
from upgate.core.runs import RunDir
from upgate.embedded.postgres import PostgresServer, embedded_postgres, find_pg_tool
from upgate.fixtures.demo import start_target, stop_target
from upgate.fixtures.live_load import PGBENCH_CLIENTS, PGBENCH_RATE
from upgate.fixtures.pgbench import PgbenchLoad, check_invariants

SCENARIO = "live-pgbench-good"
RESTORE_SCENARIO = "live-pgbench-restore"
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


def _restores(server: PostgresServer, tmp: Path, runs: int, rows: int) -> None:
    """The full restore under pgbench: its step's seconds (journal), the replay's and the lockout's (summary)."""
    step, replay, locked, lost, wrong = [], [], [], 0, 0
    for number in range(1, runs + 1):
        folder = tmp / f"restore-{number}"
        folder.mkdir()
        target = start_target(RESTORE_SCENARIO, server, folder, rows)
        try:
            with PgbenchLoad(target.database_url, PGBENCH_RATE, PGBENCH_CLIENTS, log_dir=folder / "pgbench") as load:
                proc = _upgate_run(target.config, folder / "reports")
            invariants = check_invariants(target.database_url, load.committed)
            lost += invariants.lost
            wrong += proc.returncode != 20
            run = next((folder / "reports" / "runs").iterdir())
            events = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines() if line.strip()]
            at = {e["event"]: datetime.fromisoformat(e["ts"]) for e in events if e.get("step") == "rollback:restore backup"}
            if "start" in at and "end" in at:
                step.append((at["end"] - at["start"]).total_seconds())
            done = json.loads((run / "summary.json").read_text())["live"]["rollback"].get("replay") or {}
            replay.append(float(done.get("seconds", 0.0)))
            locked.append(float(done.get("locked_out_s", 0.0)))
            print(f"restore {number}: exit {proc.returncode}; {done.get('changes')} live changes replayed "
                  f"({done.get('tail_transactions')} transactions in the tail); {invariants.describe()}", flush=True)
        finally:
            stop_target(target, server)
    if step:
        print(f"restore under load seconds: min {min(step):.1f}, median {statistics.median(step):.1f}")
    print(f"replay seconds: min {min(replay):.2f}, median {statistics.median(replay):.2f}; lockout seconds: "
          f"min {min(locked):.2f}, median {statistics.median(locked):.2f}")
    print(f"restores not ending ROLLED_BACK: {wrong}/{runs}; live writes lost in restores: {lost}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rows", type=int, default=3000, help="episodic_logs rows seeded per target")
    parser.add_argument("--overhead-s", type=int, default=5, help="seconds of unthrottled pgbench per side")
    parser.add_argument("--restores", type=int, default=3, help="runs of the full restore under load")
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
        if seconds:
            print(f"upgrade under load seconds: min {min(seconds):.1f}, median {statistics.median(seconds):.1f}; "
                  f"writes/s in the window: median {statistics.median(rates):.0f}")
            print(f"live writes lost: {lost}")
            print(f"pgbench invariants broken: {broken}/{args.runs}")
            print(f"false alarms under load: {false_alarms}/{args.runs}")
        if args.restores > 0:
            _restores(server, Path(tmp), args.restores, args.rows)
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

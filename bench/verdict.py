"""Time to verdict: `upgate run` of the good plan on the reference service, as a user runs it.

    python bench/verdict.py [--rows 100000 1000000] [--rounds 3]

For each size: a reference target (embedded PostgreSQL, `episodic_logs` seeded, service v1) is started
once; each round is `upgate run` in its own process, timed from its start to its exit (UPGRADED
expected; when its VERDICT line appeared is printed too: the report is written after it), then `upgate rollback` (not timed) puts v1 back for the next round. The per-phase split
(pre-gates, backup, migrate, deploy, post-gates) comes from each run's summary.json. Printed, never
asserted; the last lines:

    verdict seconds 100k: X
    verdict seconds 1M: X
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from upgate.embedded.postgres import embedded_postgres
from upgate.fixtures.demo import start_target, stop_target


def upgate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "upgate.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def timed_run(config: Path, reports: Path, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """`upgate run`, and when its VERDICT line appeared (the report is written after it)."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "upgate.cli", "run", "--config", str(config), "--reports",
                             str(reports)], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines, verdict_at = [], float("nan")
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("VERDICT:"):
            verdict_at = time.monotonic() - started
    code = proc.wait()
    return subprocess.CompletedProcess(proc.args, code, "".join(lines), ""), verdict_at


def label(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows >= 1_000_000 and rows % 1_000_000 == 0 else f"{rows // 1000}k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    results: dict[int, list[float]] = {}
    with embedded_postgres() as server:
        for rows in args.rows:
            with tempfile.TemporaryDirectory(prefix="upgate-bench-verdict-") as scratch:
                folder = Path(scratch)
                target = start_target("good", server, folder, rows=rows)
                reports = folder / "reports"
                try:
                    times: list[float] = []
                    for round_ in range(args.rounds):
                        started = time.monotonic()
                        proc, verdict_at = timed_run(target.config, reports, folder)
                        seconds = time.monotonic() - started
                        if proc.returncode != 0:
                            print(proc.stdout[-3000:] + proc.stderr[-3000:])
                            raise SystemExit(f"round {round_ + 1} at {rows} rows ended {proc.returncode}, not 0")
                        run = sorted((reports / "runs").iterdir())[-1]
                        summary = json.loads((run / "summary.json").read_text())
                        parts = ", ".join(f"{s['name']} {s['seconds']:.2f}" for s in summary["steps"])
                        print(f"{label(rows)} round {round_ + 1}: {seconds:.2f} s to exit, VERDICT line at "
                              f"{verdict_at:.2f} s ({parts})", flush=True)
                        times.append(seconds)
                        back = upgate("rollback", "--config", str(target.config), "--reports", str(reports),
                                      cwd=folder)
                        if back.returncode != 20:
                            raise SystemExit(f"rollback between rounds ended {back.returncode}: {back.stdout[-2000:]}")
                    results[rows] = times
                finally:
                    stop_target(target, server)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    for rows, times in results.items():
        print(f"{label(rows)}: min {min(times):.2f} s, median {statistics.median(times):.2f} s over {len(times)} runs")
    for rows, times in results.items():
        print(f"verdict seconds {label(rows)}: {statistics.median(times):.2f}")


if __name__ == "__main__":
    main()

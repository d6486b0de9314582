"""How exactly the prober measures an injected outage of 3.0 s: refused (the service stops listening) and
hung (the service process is frozen with SIGSTOP).

    python bench/downtime.py [--seconds 3.0] [--repeat 3] [--interval-ms 100] [--timeout-ms 1000] [--chart DIR]

The service is `upgate.fixtures.outage_server` in its own process. The true outage comes from the
service's own clock for a refused port (when it closed and reopened its listener) and from the signals'
times for a frozen one; the error is the prober's downtime minus that. The prober runs with upgate's
defaults ([probe] interval_ms = 100, timeout_ms = 1000) unless told otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from upgate.core.probe import DowntimeProber, DowntimeReport
from upgate.fixtures.reference import free_port

ROOT = Path(__file__).resolve().parents[1]


def start_service() -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "upgate.fixtures.outage_server", "--port", str(port)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening"):
        raise RuntimeError(f"the outage server did not start: {line!r}")
    return proc, port


def inject(kind: str, proc: subprocess.Popen[str], seconds: float) -> float:
    """Cause one outage of `seconds`; returns its true length."""
    assert proc.stdout is not None
    if kind == "refused":
        proc.send_signal(signal.SIGUSR1)
        closed = float(proc.stdout.readline().split()[1])
        time.sleep(max(0.0, closed + seconds - time.monotonic()))
        proc.send_signal(signal.SIGUSR2)
        opened = float(proc.stdout.readline().split()[2])
        return opened - closed
    before = time.monotonic()
    os.kill(proc.pid, signal.SIGSTOP)
    stopped = (before + time.monotonic()) / 2
    time.sleep(max(0.0, stopped + seconds - time.monotonic()))
    before = time.monotonic()
    os.kill(proc.pid, signal.SIGCONT)
    return (before + time.monotonic()) / 2 - stopped


def measure(kind: str, seconds: float, interval_s: float, timeout_s: float) -> tuple[float, DowntimeReport, dict]:
    proc, port = start_service()
    try:
        prober = DowntimeProber([f"http://127.0.0.1:{port}/ready"], interval_s=interval_s, timeout_s=timeout_s)
        prober.start()
        time.sleep(1.0)
        truth = inject(kind, proc, seconds)
        time.sleep(timeout_s + 1.0)
        prober.stop()
        report = prober.report()
        data = {"timeline": [p.__dict__ for p in prober.timeline], "report": report.to_json()}
        return truth, report, data
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--interval-ms", type=int, default=100)
    parser.add_argument("--timeout-ms", type=int, default=1000)
    parser.add_argument("--chart", type=Path, help="write the last timeline of each kind as a PNG into this folder")
    args = parser.parse_args()
    interval_s, timeout_s = args.interval_ms / 1000, args.timeout_ms / 1000
    print(f"injected outage {args.seconds:.1f} s, probes every {args.interval_ms} ms, timeout {args.timeout_ms} ms")
    errors: dict[str, list[float]] = {}
    for kind in ("refused", "hung"):
        for run in range(args.repeat):
            truth, report, data = measure(kind, args.seconds, interval_s, timeout_s)
            error = report.downtime_s - truth
            errors.setdefault(kind, []).append(abs(error))
            print(f"{kind} run {run + 1}: true {truth:.3f} s, measured {report.downtime_s:.3f} s "
                  f"({len(report.outages)} outage, failed probes {report.failures}), error {error:+.3f} s")
        if args.chart:
            from upgate.reporting.charts import render_downtime

            print(f"chart: {render_downtime(data, args.chart / f'downtime-{kind}.png')}")
    for kind, values in errors.items():
        print(f"{kind}: |error| min {min(values):.3f} s, median {statistics.median(values):.3f} s, "
              f"max {max(values):.3f} s")
    # The figures the issue tracks, each on its own line: the median absolute error of the runs.
    for kind in ("refused", "hung"):
        print(f"downtime error {kind}: {statistics.median(errors[kind]):.3f}")


if __name__ == "__main__":
    main()

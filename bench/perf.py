"""Perf gate figures: an A/A repeat (same build N times) with the spread of p95 and how often the gate would
flap, and the Locust generator's achieved req/s against the reference service (local and 2 workers).

    $ .venv/bin/python bench/perf.py                    # 10 A/A runs of 5 s, then the throughput runs
    $ .venv/bin/python bench/perf.py --runs 3 --duration 3 --generator-cpus 1

Prints figures only; nothing here is asserted by the tests.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from upgate.checks.perf import LatencyPolicy, LoadProfile, LoadRun, compare_latency, run_load  # noqa: E402
from upgate.embedded.postgres import postgres_server  # noqa: E402
from upgate.fixtures.reference import free_port, start_service, stop_pid, wait_ready  # noqa: E402
from upgate.fixtures.seed import create_schema, seed  # noqa: E402

FLAT_OUT = """
from locust import constant

from upgate.loadtests.reference import ReferenceUser


class FlatOut(ReferenceUser):
    wait_time = constant(0)
"""


def line(run: LoadRun) -> str:
    t, r = run.total, run.resources
    res = f", target CPU {r.cpu_percent:.0f}% ({r.cpu_ms_per_request:.2f} ms/req), RSS {r.rss_max_mb:.0f} MiB" if (
        r and r.cpu_ms_per_request) else ""
    warn = "  [generator CPU > 90%]" if run.cpu_warning else ""
    return (f"{t.requests:6d} req {t.rps:7.1f} req/s  p50 {t.p50_ms:6.2f}  p95 {t.p95_ms:6.2f}  p99 {t.p99_ms:6.2f} ms"
            f"  err {t.error_rate:.2%}{res}{warn}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--rate", type=float, default=10.0, help="req/s per user in the A/A runs")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--generator-cpus", type=int, nargs="*", default=[])
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="upgate-bench-perf-"))
    with postgres_server() as server:
        url = server.create_database("bench_perf")
        create_schema(url)
        seed(url, rows=args.rows)
        port = free_port()
        proc = start_service(url, port, "v1", folder / "svc.pid", folder / "svc.log")
        host = f"http://127.0.0.1:{port}"
        try:
            wait_ready(host, proc=proc)
            cpus = tuple(args.generator_cpus)
            profile = LoadProfile(host=host, users=args.users, spawn_rate=args.users, rate_per_user=args.rate,
                                  warmup_s=args.warmup, duration_s=args.duration, cpus=cpus)
            print(f"A/A: {args.runs} runs of the same build (v1), {args.users} users x {args.rate:g} req/s, "
                  f"{args.warmup:g} s warm-up + {args.duration:g} s measured, generator CPUs {list(cpus) or 'any'}")
            runs: list[LoadRun] = []
            for i in range(args.runs):
                t0 = time.monotonic()
                run = run_load(profile, folder / "aa", f"run{i}", pids=[proc.pid])
                runs.append(run)
                print(f"  run {i + 1:2d} ({time.monotonic() - t0:4.1f} s wall): {line(run)}", flush=True)
            p95 = [r.total.p95_ms or 0.0 for r in runs]
            med = statistics.median(p95)
            cv = statistics.pstdev(p95) / statistics.mean(p95) if len(p95) > 1 else 0.0
            print(f"p95 spread: min {min(p95):.2f}  median {med:.2f}  max {max(p95):.2f} ms  "
                  f"(max/min x{max(p95) / min(p95):.2f}, CV {cv:.1%})")
            p50 = [r.total.p50_ms or 0.0 for r in runs]
            print(f"p50 spread: min {min(p50):.2f}  median {statistics.median(p50):.2f}  max {max(p50):.2f} ms")
            policy = LatencyPolicy()
            # The gate: baseline run i, candidate run i+1, and (only when that regresses) confirmation run i+2.
            gate_flaps, single_flaps, significant, judged = [], 0, 0, 0
            for i in range(len(runs) - 1):
                first = compare_latency(runs[i], runs[i + 1], policy)
                judged += len(first.evidence["endpoints"])
                significant += sum(e["p_value"] < policy.alpha for e in first.evidence["endpoints"].values())
                if first.ok:
                    continue
                single_flaps += 1
                if i + 2 < len(runs) and not compare_latency(runs[i], runs[i + 2], policy).ok:
                    gate_flaps.append(first.summary)
            pairs = len(runs) - 1
            print(f"A/A gate (baseline run i, candidate run i+1): {pairs - single_flaps} of {pairs} first comparisons "
                  f"pass; with the confirmation run (i+2) {pairs - len(gate_flaps)} of {pairs} gate verdicts pass; "
                  f"Mann-Whitney alone flags {significant} of {judged} endpoint comparisons at alpha {policy.alpha}")
            for summary in gate_flaps:
                print(f"  FLAP: {summary}")
            all_pairs = [compare_latency(a, b, policy) for a in runs for b in runs if a is not b]
            print(f"all ordered pairs, one comparison each: {sum(v.ok for v in all_pairs)} of {len(all_pairs)} pass")

            flat = folder / "flat_out.py"
            flat.write_text(FLAT_OUT)
            print("generator capacity (no wait time, the reference profile, 5 s):")
            for label, workers in (("local runner", 0), ("master + 2 workers", 2)):
                for users in (10, 50):
                    run = run_load(LoadProfile(host=host, locustfile=str(flat), users=users, spawn_rate=users,
                                               rate_per_user=0, warmup_s=2, duration_s=5, local_workers=workers,
                                               cpus=cpus), folder / "flat", f"flat-{workers}-{users}", pids=[proc.pid])
                    print(f"  {label:18s} {users:3d} users: {line(run)}", flush=True)
        finally:
            stop_pid(proc.pid)
            server.drop_database(url)
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

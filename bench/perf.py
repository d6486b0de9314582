"""Does the latency gate cry wolf, and does it catch a 1.5x slowdown? Gate verdicts on this machine, each
beside the machine's load (os.getloadavg(): 1, 5 and 15 minutes).

    $ .venv/bin/python bench/perf.py                                  # paired: 30 A/A, 10 x 1.5x, 10 x 3x
    $ .venv/bin/python bench/perf.py --mode sequential               # the in-place deploy's gate (slower)
    $ .venv/bin/python bench/perf.py --aa 5 --slow 2 --capacity      # a quick look, and Locust's req/s flat out

Every verdict is the gate's own, through the same functions the gates call:
- paired (the post-gate when both versions run, e.g. targets.json from a blue-green deploy): a fresh candidate
  process beside the live v1, the same load to both at once (run_paired), judge_latency with paired windows;
- sequential (the post-gate after an in-place deploy): the pre-gate's measure_baseline on v1 (re-measured when
  its windows disagree), the deploy (v1 stopped, the candidate started on the same port), then judge_latency.
A/A: the candidate is v1 again. Slowed: v2-slow-1.5x and v2-slow-3x (upgate/fixtures/service/builds.py),
whose effective factor against v1 is printed with each verdict (paired: measured in the same seconds).
"false alarm" = a regressed verdict on A/A; "detected" = a regressed verdict on a slowed build; a "too noisy"
verdict is neither, and is counted apart. Prints figures only; nothing here is asserted by the tests.
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
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from upgate.checks.perf import (  # noqa: E402
    LatencyPolicy,
    LoadProfile,
    LoadRun,
    judge_latency,
    measure_baseline,
    run_load,
    run_paired,
)
from upgate.checks.result import CheckResult  # noqa: E402
from upgate.embedded.postgres import postgres_server  # noqa: E402
from upgate.fixtures.demo import plans_folder  # noqa: E402
from upgate.fixtures.reference import free_port, start_service, stop_pid, wait_ready  # noqa: E402
from upgate.fixtures.seed import create_schema, seed  # noqa: E402

SLOWED = {"1.5x": "v2-slow-1.5x", "3x": "v2-slow-3x"}
FLAT_OUT = """
from locust import constant

from upgate.loadtests.reference import ReferenceUser


class FlatOut(ReferenceUser):
    wait_time = constant(0)
"""
READS = ("GET /logs", "GET /logs/{id}")


@dataclass
class Tally:
    """What one mode's verdicts came to."""

    mode: str
    lines: list[str] = field(default_factory=list)
    verdicts: dict[str, list[str]] = field(default_factory=dict)
    gate_s: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)

    def add(self, case: str, verdict: str, seconds: float) -> None:
        self.verdicts.setdefault(case, []).append(verdict)
        self.gate_s.append(seconds)
        self.loads.append(os.getloadavg()[0])

    def count(self, case: str, verdict: str) -> int:
        return sum(v == verdict for v in self.verdicts.get(case, []))


class Service:
    """One reference-service process on a fixed port, restarted with another build as a deploy would."""

    def __init__(self, url: str, folder: Path, name: str) -> None:
        self.url, self.folder, self.name = url, folder, name
        self.port = free_port()
        self.host = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, build: str) -> None:
        self.stop()
        self.proc = start_service(self.url, self.port, build, self.folder / f"{self.name}.pid",
                                  self.folder / f"{self.name}.log")
        wait_ready(self.host, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid)
            self.proc = None

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []


def reads_factor(result: CheckResult) -> str:
    """The candidate/baseline ratio of the reads' typical latency and the interval the verdict used: the
    samples' (Hodges-Lehmann) when paired, the windows' when sequential."""
    rows = result.evidence.get("endpoints", {})
    parts = []
    for name in READS:
        row = rows.get(name)
        if row:
            w = row.get("windows")
            use = w if w and not result.evidence.get("paired") else row["shift"]
            parts.append(f"{name.split()[1]} x{use['ratio']:.2f} [{use['ratio_low']:.2f}-{use['ratio_high']:.2f}]")
    return ", ".join(parts)


def verdict_line(tally: Tally, case: str, i: int, n: int, result: CheckResult, seconds: float,
                 runs: int) -> str:
    verdict = result.evidence["verdict"]
    load = os.getloadavg()
    p50 = result.evidence.get("baseline", {}).get("p50_ms")
    line = (f"  {tally.mode:10s} {case:4s} {i + 1:2d}/{n}: {verdict:9s} {reads_factor(result)}; baseline p50 "
            f"{p50 or 0:.1f} ms; {runs} run{'s' if runs > 1 else ''}, gate {seconds:4.1f} s; "
            f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if verdict != "pass":
        line += f"\n      {result.summary[:400]}"
    return line


def paired_mode(args: argparse.Namespace, profile: LoadProfile, policy: LatencyPolicy, live: Service,
                cand: Service, folder: Path) -> Tally:
    tally = Tally("paired")
    t0 = time.monotonic()
    measure_baseline(profile, folder / "pre", policy, args.baseline_retries, pids=live.pids)
    pre_s = time.monotonic() - t0
    cases = [("A/A", "v1", args.aa)] + [(k, b, args.slow) for k, b in SLOWED.items()]
    for case, build, n in cases:
        for i in range(n):
            cand.start(build)
            targets = {"live": live.host, "candidate": cand.host}
            runs: list[int] = []

            def measure(k: int, targets: dict[str, str] = targets, runs: list[int] = runs) -> tuple[LoadRun, LoadRun]:
                runs.append(k)
                pair = run_paired(profile, folder / "paired", f"candidate-{k}", targets, pids={"candidate": cand.pids})
                return pair["live"], pair["candidate"]

            t1 = time.monotonic()
            result = judge_latency(measure(0), measure, policy, args.confirm_runs, paired=True)
            seconds = time.monotonic() - t1
            tally.add(case, result.evidence["verdict"], pre_s + seconds)
            print(verdict_line(tally, case, i, n, result, seconds, len(runs)), flush=True)
    cand.stop()
    print(f"  (paired: the pre-gate's baseline took {pre_s:.1f} s, counted in each verdict's gate seconds)")
    return tally


def sequential_mode(args: argparse.Namespace, profile: LoadProfile, policy: LatencyPolicy, svc: Service,
                    folder: Path) -> Tally:
    tally = Tally("sequential")
    cases = [("A/A", "v1", args.aa)] + [(k, b, args.slow) for k, b in SLOWED.items()]
    for case, build, n in cases:
        for i in range(n):
            svc.start("v1")
            t0 = time.monotonic()
            baseline, steady = measure_baseline(profile, folder / "pre", policy, args.baseline_retries, pids=svc.pids)
            pre_s = time.monotonic() - t0
            svc.start(build)  # the deploy: not counted as the gate's time
            runs: list[int] = []

            def measure(k: int, baseline: LoadRun = baseline, runs: list[int] = runs) -> tuple[LoadRun, LoadRun]:
                runs.append(k)
                return baseline, run_load(profile, folder / "post", f"candidate-{k}", pids=svc.pids)

            t1 = time.monotonic()
            result = judge_latency(measure(0), measure, policy, args.confirm_runs, paired=False)
            seconds = pre_s + time.monotonic() - t1
            tally.add(case, result.evidence["verdict"], seconds)
            line = verdict_line(tally, case, i, n, result, seconds, len(runs))
            if not steady.ok:
                line += f"\n      pre-gate: {steady.summary[:300]}"
            print(line, flush=True)
    return tally


def capacity(host: str, pids: list[int], folder: Path) -> None:
    """What one Locust process (and a master with 2 workers) drives against the service, no wait time."""
    flat = folder / "flat_out.py"
    flat.write_text(FLAT_OUT)
    print("generator capacity (no wait time, the reference profile, 2 s warm-up + 5 s):")
    for label, workers in (("local runner", 0), ("master + 2 workers", 2)):
        for users in (10, 50):
            run = run_load(LoadProfile(host=host, locustfile=str(flat), users=users, spawn_rate=users, rate_per_user=0,
                                       warmup_s=2, duration_s=5, local_workers=workers), folder / "flat",
                           f"flat-{workers}-{users}", pids=pids)
            t, r = run.total, run.resources
            cpu = f", target CPU {r.cpu_percent:.0f}%" if r else ""
            print(f"  {label:18s} {users:3d} users: {t.rps:6.0f} req/s, p50 {t.p50_ms or 0:.1f} ms{cpu}; load "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


def report(tally: Tally, args: argparse.Namespace, minutes: float) -> None:
    if not tally.gate_s:
        return
    aa = tally.verdicts.get("A/A", [])
    print(f"{tally.mode}: {minutes:.1f} min, machine load (1 min) during the verdicts: min "
          f"{min(tally.loads):.2f}, median {statistics.median(tally.loads):.2f}, max {max(tally.loads):.2f}")
    print(f"  A/A false alarms: {tally.count('A/A', 'regressed')}/{len(aa)}   "
          f"(passed {tally.count('A/A', 'pass')}, too noisy {tally.count('A/A', 'too noisy')})")
    for case in SLOWED:
        got = tally.verdicts.get(case, [])
        print(f"  detected {case}: {tally.count(case, 'regressed')}/{len(got)}   "
              f"(passed {tally.count(case, 'pass')}, too noisy {tally.count(case, 'too noisy')})")
    s = tally.gate_s
    print(f"  seconds the gate adds to a run: median {statistics.median(s):.1f} s, max {max(s):.1f} s "
          f"(pre-gate baseline + post-gate measurement and confirmations)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("paired", "sequential", "both"), default="paired",
                        help="paired: ~15 min for the defaults; sequential: ~35 min")
    parser.add_argument("--aa", type=int, default=30, help="A/A verdicts per mode")
    parser.add_argument("--slow", type=int, default=10, help="verdicts per slowed build and mode")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--windows", type=int, default=10, help="windows per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--rate", type=float, default=10.0, help="req/s per user")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--confirm-runs", type=int, default=1)
    parser.add_argument("--baseline-retries", type=int, default=1)
    parser.add_argument("--capacity", action="store_true", help="also Locust's req/s flat out (local, 2 workers)")
    args = parser.parse_args()

    policy = LatencyPolicy(windows=args.windows)
    folder = Path(tempfile.mkdtemp(prefix="upgate-bench-perf-"))
    print(f"policy: regression above x{policy.regression_ratio:.2f} and +{policy.min_delta_ms:g} ms (low ends), a pass "
          f"rules out x{policy.rule_out_ratio:.2f} (high end), alpha {policy.alpha}, {args.windows} windows per run, "
          f"confirm runs {args.confirm_runs}, baseline re-measured up to {args.baseline_retries} more time(s)")
    print(f"load: {args.users} users x {args.rate:g} req/s per version, {args.warmup:g} s warm-up + "
          f"{args.duration:g} s measured per run; {args.rows} rows; machine: {os.cpu_count()} CPUs, "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    tallies: list[tuple[Tally, float]] = []
    with postgres_server() as server:
        url = server.create_database("bench_perf")
        create_schema(url)
        seed(url, rows=args.rows)
        # v2 builds read the columns of the good plan's migration; v1 reads fine on that schema too.
        up = plans_folder() / "good" / "migrations" / "001_add_cache_columns.up.sql"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(up.read_text(encoding="utf-8"))  # type: ignore[arg-type]
        live, cand = Service(url, folder, "live"), Service(url, folder, "candidate")
        profile = LoadProfile(host=live.host, users=args.users, spawn_rate=args.users, rate_per_user=args.rate,
                              warmup_s=args.warmup, duration_s=args.duration)
        try:
            if args.mode in ("paired", "both"):
                live.start("v1")
                t0 = time.monotonic()
                tallies.append((paired_mode(args, profile, policy, live, cand, folder), time.monotonic() - t0))
            if args.mode in ("sequential", "both"):
                t0 = time.monotonic()
                tallies.append((sequential_mode(args, profile, policy, live, folder), time.monotonic() - t0))
            if args.capacity:
                live.start("v1")
                capacity(live.host, live.pids, folder)
        finally:
            live.stop()
            cand.stop()
            server.drop_database(url)
    print("-" * 78)
    for tally, seconds in tallies:
        report(tally, args, seconds / 60)
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

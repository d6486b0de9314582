"""Is it as fast as before? A Locust load run against the target, and its comparison with a baseline run.

    >>> profile = LoadProfile(host="http://127.0.0.1:8080", users=10, rate_per_user=10, duration_s=5)
    >>> baseline = run_load(profile, Path("reports/runs/x/perf"), "baseline", pids=[4242])   # doctest: +SKIP
    >>> candidate = run_load(profile, Path("reports/runs/x/perf"), "candidate", pids=[4243])  # doctest: +SKIP
    >>> compare_latency(baseline, candidate, LatencyPolicy()).summary                       # doctest: +SKIP
    'GET /logs/{id}: p50 1.9 -> 14.2 ms (x7.47), p95 3.1 -> 17.0 ms, Mann-Whitney p=1e-300: slower'

Locust runs in a child process (`loadtests/runner.py`): importing it monkey-patches the interpreter with
gevent, which must never happen in a pytest or wrapper process. The child returns raw latency samples;
percentiles, throughput and error rates are computed here from those samples, in the same way for the
local runner and for master/worker mode. While the child measures, this process samples the target's
CPU time and memory (psutil) for the resource-impact comparison.

A latency regression must be both statistically significant (one-sided Mann-Whitney U on the samples,
as automated canary analysis does) and large enough to matter at the low end of its confidence interval
(the Hodges-Lehmann shift, in ms and as a ratio): on a busy machine two runs of the same build differ
with p < 1e-6 (bench/perf.py), so significance alone would flap. p95/p99 are reported and held to
absolute limits; judging the p95 change against the baseline is opt-in (`max_p95_regression`) because
between-run tail noise on a shared 2-core host exceeds a 3x slowdown's tail change.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from upgate.checks.result import CheckResult
from upgate.checks.secrets import redact

LOADTESTS = Path(__file__).resolve().parent.parent / "loadtests"
RUNNER = LOADTESTS / "runner.py"
SHIPPED_LOCUSTFILE = LOADTESTS / "reference.py"
# Samples kept per endpoint in the saved baseline (a seeded random subset beyond this).
MAX_SAMPLES_KEPT = 20_000


@dataclass(frozen=True)
class LoadProfile:
    """What load to offer: who, how many, how fast, for how long, from how many generator processes."""

    host: str
    locustfile: str = str(SHIPPED_LOCUSTFILE)
    user_classes: tuple[str, ...] = ()
    users: int = 10
    spawn_rate: float = 10.0
    # Requests per second per user (Locust's constant_throughput); 0 leaves the file's wait_time.
    rate_per_user: float = 10.0
    warmup_s: float = 1.0
    duration_s: float = 5.0
    # Master/worker mode when local_workers + len(remote_workers) > 0.
    local_workers: int = 0
    remote_workers: tuple[str, ...] = ()
    worker_command: str = ""
    master_bind_host: str = "127.0.0.1"
    master_host: str = "127.0.0.1"
    master_port: int = 0
    worker_timeout_s: float = 30.0
    # CPUs the generator (and its workers) may run on; empty: any.
    cpus: tuple[int, ...] = ()

    @property
    def expect_workers(self) -> int:
        return self.local_workers + len(self.remote_workers)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["host"] = redact(self.host)
        return data


@dataclass(frozen=True)
class EndpointStats:
    name: str
    requests: int
    failures: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    rps: float

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class ResourceUsage:
    """The target's processes while the window was measured."""

    pids: tuple[int, ...]
    cpu_seconds: float
    cpu_percent: float
    cpu_ms_per_request: float | None
    rss_max_mb: float
    rss_start_mb: float
    rss_end_mb: float
    system_cpu_percent: float
    system_memory_percent: float
    samples: int


@dataclass
class LoadRun:
    """One measured window: per-endpoint stats, the samples they came from, and the target's resources."""

    profile: LoadProfile
    window_s: float
    endpoints: dict[str, EndpointStats]
    total: EndpointStats
    samples: dict[str, list[float]] = field(repr=False)
    errors: dict[str, int]
    cpu_warning: bool
    mode: str
    workers: int
    resources: ResourceUsage | None
    csv: list[str] = field(default_factory=list)
    locust_version: str = ""

    def to_json(self, with_samples: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "profile": self.profile.to_json(),
            "window_s": self.window_s,
            "mode": self.mode,
            "workers": self.workers,
            "locust_version": self.locust_version,
            "cpu_warning": self.cpu_warning,
            "total": asdict(self.total),
            "endpoints": {k: asdict(v) for k, v in self.endpoints.items()},
            "errors": self.errors,
            "resources": asdict(self.resources) if self.resources else None,
            "csv": self.csv,
        }
        if with_samples:
            data["samples"] = self.samples
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadRun:
        profile = dict(data["profile"])
        for key in ("user_classes", "remote_workers", "cpus"):
            profile[key] = tuple(profile.get(key) or ())
        res = data.get("resources")
        return cls(
            profile=LoadProfile(**profile),
            window_s=data["window_s"],
            endpoints={k: EndpointStats(**v) for k, v in data["endpoints"].items()},
            total=EndpointStats(**data["total"]),
            samples={k: list(v) for k, v in data.get("samples", {}).items()},
            errors=data.get("errors", {}),
            cpu_warning=data.get("cpu_warning", False),
            mode=data.get("mode", "local"),
            workers=data.get("workers", 0),
            resources=ResourceUsage(**{**res, "pids": tuple(res["pids"])}) if res else None,
            csv=data.get("csv", []),
            locust_version=data.get("locust_version", ""),
        )

    def describe(self) -> str:
        t = self.total
        return (f"{t.requests} requests in {self.window_s:.1f} s ({t.rps:.0f} req/s, {self.mode}"
                f"{f' with {self.workers} workers' if self.workers else ''}), p50 {_ms(t.p50_ms)}, "
                f"p95 {_ms(t.p95_ms)}, p99 {_ms(t.p99_ms)}, errors {t.error_rate:.2%}")


class LoadRunFailed(RuntimeError):
    """The generator could not run the profile (workers missing, locustfile broken, target refused)."""


# --- running ----------------------------------------------------------------------------------------------------


def run_load(profile: LoadProfile, folder: Path, label: str, pids: list[int] | None = None,
             timeout_s: float | None = None) -> LoadRun:
    """Run `profile` in a Locust child process; write `<label>_stats.csv` etc. into folder; sample `pids`."""
    folder.mkdir(parents=True, exist_ok=True)
    port = profile.master_port or (_free_port() if profile.expect_workers else 0)
    out = folder / f"{label}-run.json"
    out.unlink(missing_ok=True)
    commands = [
        profile.worker_command.format(host=h, master_host=profile.master_host, master_port=port,
                                      locustfile=profile.locustfile, target=profile.host)
        for h in profile.remote_workers if profile.worker_command
    ]
    spec = {
        "host": profile.host, "locustfile": profile.locustfile, "user_classes": list(profile.user_classes),
        "users": profile.users, "spawn_rate": profile.spawn_rate, "rate_per_user": profile.rate_per_user,
        "warmup_s": profile.warmup_s, "duration_s": profile.duration_s,
        "local_workers": profile.local_workers, "expect_workers": profile.expect_workers,
        "master_bind_host": profile.master_bind_host, "master_host": profile.master_host,
        "master_port": port, "worker_timeout_s": profile.worker_timeout_s, "worker_commands": commands,
        "cpus": list(profile.cpus), "csv_prefix": str(folder / label), "out": str(out),
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="upgate-locust-", delete=False) as fh:
        json.dump(spec, fh)
        spec_path = fh.name
    log_path = folder / f"{label}-locust.log"
    limit = timeout_s or (profile.warmup_s + profile.duration_s + profile.worker_timeout_s + 60)
    sampler = _ResourceSampler(pids or [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(LOADTESTS.parent), env.get("PYTHONPATH")) if p)
    try:
        with log_path.open("w", encoding="utf-8") as log:
            proc = subprocess.Popen([sys.executable, str(RUNNER), "--spec", spec_path], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
            timer = threading.Timer(limit, proc.kill)
            timer.start()
            error = ""
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(redact(line))
                    if not line.startswith("UPGATE "):
                        continue
                    event = json.loads(line[7:])
                    if event["event"] == "measure_start":
                        sampler.start()
                    elif event["event"] == "measure_end":
                        sampler.stop()
                    elif event["event"] == "error":
                        error = event["message"]
                status = proc.wait()
            finally:
                timer.cancel()
                sampler.stop()
    finally:
        os.unlink(spec_path)
    if status != 0 or not out.exists():
        why = error or f"Locust runner exited {status}" + (f" (killed after {limit:.0f} s)" if status == -9 else "")
        raise LoadRunFailed(f"load run '{label}' against {redact(profile.host)} failed: {why}; see {log_path}")
    data = json.loads(out.read_text(encoding="utf-8"))
    return _summarise(profile, data, sampler)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stats(name: str, ms: list[float], failures: int, window_s: float) -> EndpointStats:
    requests = len(ms) + failures
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    if ms:
        arr = np.asarray(ms, dtype=float)
        p50, p95, p99 = (round(float(x), 3) for x in np.percentile(arr, [50, 95, 99]))
        mean = round(float(arr.mean()), 3)
    else:
        p50 = p95 = p99 = mean = None
    return EndpointStats(name, requests, failures, p50, p95, p99, mean, round(requests / window_s, 2) if window_s else 0.0)


def _summarise(profile: LoadProfile, data: dict[str, Any], sampler: _ResourceSampler) -> LoadRun:
    window_s = float(data["window_s"])
    endpoints: dict[str, EndpointStats] = {}
    samples: dict[str, list[float]] = {}
    all_ms: list[float] = []
    all_failures = 0
    rng = random.Random(0)
    for name, entry in sorted(data["endpoints"].items()):
        ms = [float(x) for x in entry["ms"]]
        endpoints[name] = _stats(name, ms, int(entry["failures"]), window_s)
        all_ms.extend(ms)
        all_failures += int(entry["failures"])
        samples[name] = ms if len(ms) <= MAX_SAMPLES_KEPT else rng.sample(ms, MAX_SAMPLES_KEPT)
    total = _stats("total", all_ms, all_failures, window_s)
    return LoadRun(profile=profile, window_s=window_s, endpoints=endpoints, total=total, samples=samples,
                   errors=data.get("errors", {}), cpu_warning=bool(data.get("cpu_warning")), mode=data["mode"],
                   workers=int(data.get("workers", 0)), resources=sampler.usage(total.requests),
                   csv=list(data.get("csv", [])), locust_version=data.get("locust_version", ""))


class _ResourceSampler:
    """CPU time and RSS of the target's processes (and their children) between start() and stop()."""

    def __init__(self, pids: list[int], interval_s: float = 0.25) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rss: list[float] = []
        self._cpu0 = self._cpu1 = 0.0
        self._t0 = self._t1 = 0.0
        self._sys_mem: list[float] = []
        self._sys_cpu = 0.0

    def _procs(self) -> list[psutil.Process]:
        procs: list[psutil.Process] = []
        for pid in self.pids:
            try:
                p = psutil.Process(pid)
                procs.append(p)
                procs.extend(p.children(recursive=True))
            except psutil.Error:
                continue
        return procs

    def _cpu(self) -> float:
        total = 0.0
        for p in self._procs():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
        return total

    def _sample(self) -> None:
        rss = 0.0
        for p in self._procs():
            try:
                rss += p.memory_info().rss
            except psutil.Error:
                continue
        self._rss.append(rss / 2**20)
        self._sys_mem.append(psutil.virtual_memory().percent)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> None:
        if not self.pids or self._thread:
            return
        psutil.cpu_percent(None)
        self._cpu0, self._t0 = self._cpu(), time.monotonic()
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="upgate-resources")
        self._thread.start()

    def stop(self) -> None:
        if not self._thread or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._sample()
        self._cpu1, self._t1 = self._cpu(), time.monotonic()
        self._sys_cpu = psutil.cpu_percent(None)

    def usage(self, requests: int) -> ResourceUsage | None:
        if not self.pids or not self._rss or self._t1 <= self._t0:
            return None
        cpu_s = max(0.0, self._cpu1 - self._cpu0)
        elapsed = self._t1 - self._t0
        return ResourceUsage(
            pids=tuple(self.pids), cpu_seconds=round(cpu_s, 3), cpu_percent=round(100 * cpu_s / elapsed, 1),
            cpu_ms_per_request=round(1000 * cpu_s / requests, 3) if requests else None,
            rss_max_mb=round(max(self._rss), 1), rss_start_mb=round(self._rss[0], 1),
            rss_end_mb=round(self._rss[-1], 1), system_cpu_percent=round(self._sys_cpu, 1),
            system_memory_percent=round(max(self._sys_mem), 1), samples=len(self._rss),
        )


# --- comparing --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyPolicy:
    """When a candidate is slower: significant (alpha) AND larger than both the relative and absolute effect."""

    alpha: float = 0.01
    max_regression: float = 1.0       # typical latency more than 2x ...
    min_delta_ms: float = 5.0         # ... and more than 5 ms slower, at the interval's low end
    min_samples: int = 20             # endpoints with fewer samples on either side are reported, not judged
    # Also judge p95 (bootstrap lower bound) against this; None: p95 is reported and held to absolute limits only.
    max_p95_regression: float | None = None


@dataclass(frozen=True)
class Limits:
    """Absolute limits on one run, from config; None: not limited."""

    max_p95_ms: float | None = None
    max_p99_ms: float | None = None
    max_error_rate: float | None = None
    min_rps: float | None = None
    max_target_cpu_percent: float | None = None
    max_system_memory_percent: float | None = None


def _mannwhitneyu(b: list[float], a: list[float], alternative: str) -> Any:
    from scipy.stats import mannwhitneyu  # the `perf` extra; gates require it before they get here

    return mannwhitneyu(b, a, alternative=alternative)


def compare_latency(baseline: LoadRun, candidate: LoadRun, policy: LatencyPolicy) -> CheckResult:
    """Per endpoint: Mann-Whitney U (candidate slower?) and the p50/p95/p99 ratios; fails on a real slowdown."""
    rows: dict[str, Any] = {}
    slower: list[str] = []
    notes: list[str] = []
    for name in sorted(set(baseline.samples) | set(candidate.samples)):
        a, b = baseline.samples.get(name, []), candidate.samples.get(name, [])
        if len(a) < policy.min_samples or len(b) < policy.min_samples:
            notes.append(f"{name}: {len(a)} vs {len(b)} samples, fewer than {policy.min_samples}: not judged")
            continue
        u = _mannwhitneyu(b, a, alternative="greater")
        pa = np.percentile(a, [50, 95, 99])
        pb = np.percentile(b, [50, 95, 99])
        ratios = [float(y / x) if x > 0 else float("inf") for x, y in zip(pa, pb, strict=True)]
        shift = shift_interval(a, b, policy.alpha)
        tail = p95_interval(a, b, policy.alpha)
        # The effect must hold at the low end of its confidence interval, not only at the point estimate.
        shift_effect = shift["ms_low"] > policy.min_delta_ms and shift["ratio_low"] > 1 + policy.max_regression
        tail_effect = (policy.max_p95_regression is not None and tail["ms_low"] > policy.min_delta_ms
                       and tail["ratio_low"] > 1 + policy.max_p95_regression)
        regressed = bool(u.pvalue < policy.alpha and (shift_effect or tail_effect))
        rows[name] = {
            "baseline": {"n": len(a), "p50_ms": _r(pa[0]), "p95_ms": _r(pa[1]), "p99_ms": _r(pa[2])},
            "candidate": {"n": len(b), "p50_ms": _r(pb[0]), "p95_ms": _r(pb[1]), "p99_ms": _r(pb[2])},
            "ratio": {"p50": _r(ratios[0]), "p95": _r(ratios[1]), "p99": _r(ratios[2])},
            "mann_whitney_u": float(u.statistic), "p_value": float(u.pvalue),
            "shift": shift, "p95_change": tail, "regressed": regressed,
            "why": ("typical latency" if shift_effect else "") + (" and " if shift_effect and tail_effect else "")
                   + ("p95" if tail_effect else ""),
        }
        if regressed:
            slower.append(f"{name}: p50 {_ms(pa[0])} -> {_ms(pb[0])} (x{ratios[0]:.2f}), p95 {_ms(pa[1])} -> "
                          f"{_ms(pb[1])} (x{ratios[1]:.2f}), shift +{shift['ms']:.1f} ms (at least "
                          f"+{shift['ms_low']:.1f}), Mann-Whitney p={u.pvalue:.1e}")
    evidence = {"endpoints": rows, "policy": asdict(policy), "not_judged": notes,
                "baseline": baseline.to_json(with_samples=False)["total"],
                "candidate": candidate.to_json(with_samples=False)["total"]}
    if not rows:
        return CheckResult(False, "no endpoint had enough samples in both runs to compare latency", evidence,
                           tuple(notes))
    if slower:
        return CheckResult(False, f"latency regressed on {len(slower)} of {len(rows)} endpoints: " + "; ".join(slower),
                           evidence, tuple(notes))
    worst = max(rows, key=lambda k: rows[k]["ratio"]["p50"] or 0)
    w = rows[worst]
    return CheckResult(True, f"no latency regression on {len(rows)} endpoints (largest p50 change {worst}: "
                             f"{_ms(w['baseline']['p50_ms'])} -> {_ms(w['candidate']['p50_ms'])}, "
                             f"p={w['p_value']:.2g})", evidence, tuple(notes))


def shift_interval(a: list[float], b: list[float], alpha: float, cap: int = 1500) -> dict[str, float]:
    """Hodges-Lehmann shift of b over a, in ms and as a ratio (on log latency), with the one-sided lower bound
    at confidence 1 - alpha from the Mann-Whitney rank distribution (the interval canary analysis uses)."""
    rng = np.random.default_rng(0)
    x = np.asarray(a if len(a) <= cap else rng.choice(a, cap, replace=False), dtype=float)
    y = np.asarray(b if len(b) <= cap else rng.choice(b, cap, replace=False), dtype=float)
    n, m = len(x), len(y)
    from scipy.stats import norm  # the `perf` extra; gates require it before they get here

    z = float(norm.ppf(1 - alpha))
    k = int(max(0, np.floor(n * m / 2 - z * np.sqrt(n * m * (n + m + 1) / 12))))
    out: dict[str, float] = {}
    for key, xs, ys in (("ms", x, y), ("log", np.log(np.maximum(x, 1e-3)), np.log(np.maximum(y, 1e-3)))):
        diffs = (ys[:, None] - xs[None, :]).ravel()
        out[key] = float(np.median(diffs))
        out[key + "_low"] = float(np.partition(diffs, k)[k])
    return {"ms": round(out["ms"], 3), "ms_low": round(out["ms_low"], 3),
            "ratio": round(float(np.exp(out["log"])), 3), "ratio_low": round(float(np.exp(out["log_low"])), 3)}


def p95_interval(a: list[float], b: list[float], alpha: float, resamples: int = 400,
                 cap: int = 3000) -> dict[str, float]:
    """The p95 change (ms and ratio) with its bootstrap lower bound at confidence 1 - alpha (seeded)."""
    rng = np.random.default_rng(0)
    x = np.asarray(a if len(a) <= cap else rng.choice(a, cap, replace=False), dtype=float)
    y = np.asarray(b if len(b) <= cap else rng.choice(b, cap, replace=False), dtype=float)
    px = np.percentile(rng.choice(x, (resamples, len(x))), 95, axis=1)
    py = np.percentile(rng.choice(y, (resamples, len(y))), 95, axis=1)
    delta, ratio = py - px, py / np.maximum(px, 1e-3)
    return {"ms": round(float(np.percentile(y, 95) - np.percentile(x, 95)), 3),
            "ms_low": round(float(np.quantile(delta, alpha)), 3),
            "ratio": round(float(np.percentile(y, 95) / max(float(np.percentile(x, 95)), 1e-3)), 3),
            "ratio_low": round(float(np.quantile(ratio, alpha)), 3)}


def check_limits(run: LoadRun, limits: Limits, label: str = "candidate") -> CheckResult:
    """Absolute limits on one run: p95/p99, error rate, throughput, target CPU and system memory."""
    t, res = run.total, run.resources
    checks: list[tuple[str, float | None, float | None, bool]] = [
        ("p95 ms", t.p95_ms, limits.max_p95_ms, True),
        ("p99 ms", t.p99_ms, limits.max_p99_ms, True),
        ("error rate", t.error_rate, limits.max_error_rate, True),
        ("req/s", t.rps, limits.min_rps, False),
        ("target CPU %", res.cpu_percent if res else None, limits.max_target_cpu_percent, True),
        ("system memory %", res.system_memory_percent if res else None, limits.max_system_memory_percent, True),
    ]
    broken, checked = [], []
    for what, value, limit, is_max in checks:
        if limit is None or value is None:
            continue
        bad = value > limit if is_max else value < limit
        checked.append({"what": what, "value": value, "limit": limit, "kind": "max" if is_max else "min", "ok": not bad})
        if bad:
            broken.append(f"{what} {_num(value)} {'above' if is_max else 'below'} the limit {_num(limit)}")
    evidence = {"limits": asdict(limits), "checked": checked, "run": run.to_json(with_samples=False)}
    warnings = ("load generator CPU above 90 %: Locust's figures may be inflated",) if run.cpu_warning else ()
    if broken:
        return CheckResult(False, f"{label}: " + "; ".join(broken), evidence, warnings)
    shown = ", ".join(f"{c['what']} {_num(c['value'])} (limit {_num(c['limit'])})" for c in checked) or "no limit set"
    return CheckResult(True, f"{label} within limits: {shown}", evidence, warnings)


def compare_throughput(baseline: LoadRun, candidate: LoadRun, max_drop: float, max_error_rate: float) -> CheckResult:
    """Throughput may not drop by more than max_drop, and errors may not rise above max_error_rate."""
    b, c = baseline.total, candidate.total
    drop = 1 - c.rps / b.rps if b.rps else 0.0
    problems = []
    if drop > max_drop:
        problems.append(f"throughput {b.rps:.1f} -> {c.rps:.1f} req/s (-{drop:.0%}, allowed -{max_drop:.0%})")
    if c.error_rate > max(max_error_rate, b.error_rate):
        problems.append(f"error rate {b.error_rate:.2%} -> {c.error_rate:.2%} (allowed {max_error_rate:.2%})")
    evidence = {"baseline": asdict(b), "candidate": asdict(c), "drop": round(drop, 4), "max_drop": max_drop,
                "max_error_rate": max_error_rate, "errors": candidate.errors}
    if problems:
        return CheckResult(False, "; ".join(problems), evidence)
    return CheckResult(True, f"throughput {b.rps:.1f} -> {c.rps:.1f} req/s, error rate {b.error_rate:.2%} -> "
                             f"{c.error_rate:.2%}", evidence)


def compare_resources(baseline: LoadRun, candidate: LoadRun, max_cpu_regression: float,
                      max_memory_growth: float) -> CheckResult:
    """The upgrade's impact on the target: CPU per request and peak RSS against the baseline run."""
    a, b = baseline.resources, candidate.resources
    if a is None or b is None:
        return CheckResult(False, "target resources were not sampled in both runs (no target process found)",
                           {"baseline": asdict(a) if a else None, "candidate": asdict(b) if b else None})
    problems = []
    cpu_ratio = (b.cpu_ms_per_request / a.cpu_ms_per_request
                 if a.cpu_ms_per_request and b.cpu_ms_per_request else None)
    mem_ratio = b.rss_max_mb / a.rss_max_mb if a.rss_max_mb else None
    if cpu_ratio is not None and cpu_ratio > 1 + max_cpu_regression:
        problems.append(f"CPU per request {a.cpu_ms_per_request:.2f} -> {b.cpu_ms_per_request:.2f} ms "
                        f"(x{cpu_ratio:.2f}, allowed x{1 + max_cpu_regression:.2f})")
    if mem_ratio is not None and mem_ratio > 1 + max_memory_growth:
        problems.append(f"peak RSS {a.rss_max_mb:.0f} -> {b.rss_max_mb:.0f} MiB "
                        f"(x{mem_ratio:.2f}, allowed x{1 + max_memory_growth:.2f})")
    evidence = {"baseline": asdict(a), "candidate": asdict(b), "cpu_ratio": _r(cpu_ratio), "memory_ratio": _r(mem_ratio),
                "response_time_ms": {"baseline_mean": baseline.total.mean_ms, "candidate_mean": candidate.total.mean_ms},
                "max_cpu_regression": max_cpu_regression, "max_memory_growth": max_memory_growth}
    if problems:
        return CheckResult(False, "; ".join(problems), evidence)
    return CheckResult(True, f"target CPU {a.cpu_percent:.0f}% -> {b.cpu_percent:.0f}% "
                             f"({_num(a.cpu_ms_per_request)} -> {_num(b.cpu_ms_per_request)} ms/request), "
                             f"peak RSS {a.rss_max_mb:.0f} -> {b.rss_max_mb:.0f} MiB", evidence)


def _r(x: Any) -> float | None:
    return None if x is None else round(float(x), 3)


def _ms(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):.1f} ms"


def _num(x: Any) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4g}" if isinstance(x, float) else str(x)

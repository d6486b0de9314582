"""Is it as fast as before? Locust load runs against the target, and their comparison: pass, regressed, or too
noisy to judge.

    >>> profile = LoadProfile(host="http://127.0.0.1:8080", users=10, rate_per_user=10, duration_s=10)
    >>> runs = run_paired(profile, Path("reports/runs/x/perf"), "candidate",                  # doctest: +SKIP
    ...                   {"live": "http://127.0.0.1:8080", "candidate": "http://127.0.0.1:8081"})
    >>> compare_latency(runs["live"], runs["candidate"], LatencyPolicy(), paired=True).summary  # doctest: +SKIP
    'latency regressed on 2 of 4 endpoints: GET /logs: p50 2.2 ms -> 3.4 ms (x1.55), ... Mann-Whitney p=3e-40'

Locust runs in a child process (`loadtests/runner.py`): importing it monkey-patches the interpreter with
gevent, which must never happen in a pytest or wrapper process. The child returns raw latency samples, each
with its offset in the window; percentiles, throughput and error rates are computed here from those samples,
in the same way for the local runner and for master/worker mode. While the child measures, this process
samples the target's CPU time and memory (psutil) for the resource-impact comparison, and notes the machine's
load average.

A latency regression must be statistically significant (one-sided Mann-Whitney U on the samples, as
automated canary analysis does), large enough to matter at the low end of its confidence interval (the
Hodges-Lehmann shift, in ms and as a ratio), and beyond the machine's drift: paired runs (both versions in
the same seconds) cancel it; sequential runs (the candidate minutes after its baseline) cannot see it in
their samples, so they are judged window by window against the spread of the baseline's own windows. A
pass must rule a `rule_out` slowdown out at the high end of the same interval; anything between is "too
noisy" and says so with its figures, never a silent pass. p95/p99 are reported and held to absolute
limits; judging the p95 change against the baseline is opt-in (`max_p95_regression`).
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

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
    # Each sample's offset from the window's start (s), aligned with samples; empty when not recorded.
    times: dict[str, list[float]] = field(default_factory=dict, repr=False)
    # os.getloadavg() when the window closed: the machine's state beside the figures.
    load_avg: list[float] | None = None

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
            "load_avg": self.load_avg,
        }
        if with_samples:
            data["samples"] = self.samples
            data["times"] = self.times
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
            times={k: list(v) for k, v in data.get("times", {}).items()},
            load_avg=data.get("load_avg"),
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
    samplers = {"": _ResourceSampler(pids or [])}
    data = _run_child(profile, folder, label, None, samplers, timeout_s)
    return _summarise(profile, data["endpoints"], data, samplers[""])


def run_paired(profile: LoadProfile, folder: Path, label: str, targets: dict[str, str],
               pids: dict[str, list[int]] | None = None, timeout_s: float | None = None) -> dict[str, LoadRun]:
    """The same profile against every target at once (one generator, `profile.users` users each): one LoadRun
    per target label, all measured in the same seconds, so the machine's drift weighs on each alike."""
    samplers = {name: _ResourceSampler((pids or {}).get(name, [])) for name in targets}
    data = _run_child(profile, folder, label, targets, samplers, timeout_s)
    return {name: _summarise(replace(profile, host=url), data["targets"].get(name, {}), data, samplers[name])
            for name, url in targets.items()}


def _run_child(profile: LoadProfile, folder: Path, label: str, targets: dict[str, str] | None,
               samplers: dict[str, _ResourceSampler], timeout_s: float | None) -> dict[str, Any]:
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
        "targets": targets or {},
    }
    where = ", ".join(redact(u) for u in targets.values()) if targets else redact(profile.host)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="upgate-locust-", delete=False) as fh:
        json.dump(spec, fh)
        spec_path = fh.name
    log_path = folder / f"{label}-locust.log"
    limit = timeout_s or (profile.warmup_s + profile.duration_s + profile.worker_timeout_s + 60)
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
                        for sampler in samplers.values():
                            sampler.start()
                    elif event["event"] == "measure_end":
                        for sampler in samplers.values():
                            sampler.stop()
                    elif event["event"] == "error":
                        error = event["message"]
                status = proc.wait()
            finally:
                timer.cancel()
                for sampler in samplers.values():
                    sampler.stop()
    finally:
        os.unlink(spec_path)
    if status != 0 or not out.exists():
        why = error or f"Locust runner exited {status}" + (f" (killed after {limit:.0f} s)" if status == -9 else "")
        raise LoadRunFailed(f"load run '{label}' against {where} failed: {why}; see {log_path}")
    data: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    data["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    return data


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


def _summarise(profile: LoadProfile, measured: dict[str, Any], data: dict[str, Any],
               sampler: _ResourceSampler) -> LoadRun:
    window_s = float(data["window_s"])
    endpoints: dict[str, EndpointStats] = {}
    samples: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {}
    all_ms: list[float] = []
    all_failures = 0
    rng = random.Random(0)
    for name, entry in sorted(measured.items()):
        ms = [float(x) for x in entry["ms"]]
        at = [float(x) for x in entry.get("t", [])]
        endpoints[name] = _stats(name, ms, int(entry["failures"]), window_s)
        all_ms.extend(ms)
        all_failures += int(entry["failures"])
        keep = range(len(ms)) if len(ms) <= MAX_SAMPLES_KEPT else sorted(rng.sample(range(len(ms)), MAX_SAMPLES_KEPT))
        samples[name] = [ms[i] for i in keep]
        times[name] = [at[i] for i in keep] if len(at) == len(ms) else []
    total = _stats("total", all_ms, all_failures, window_s)
    return LoadRun(profile=profile, window_s=window_s, endpoints=endpoints, total=total, samples=samples,
                   errors=data.get("errors", {}), cpu_warning=bool(data.get("cpu_warning")), mode=data["mode"],
                   workers=int(data.get("workers", 0)), resources=sampler.usage(total.requests),
                   csv=list(data.get("csv", [])), locust_version=data.get("locust_version", ""), times=times,
                   load_avg=data.get("load_avg"))


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

# "no data": no endpoint had enough samples on both sides; a gate fails it (it could not check).
Verdict = Literal["pass", "regressed", "too noisy", "no data"]
# A window needs this many samples of an endpoint for its median to count.
MIN_PER_WINDOW = 5


@dataclass(frozen=True)
class LatencyPolicy:
    """Three answers per endpoint. Regressed: Mann-Whitney significant (alpha), the Hodges-Lehmann shift's low
    end above both `1 + max_regression` and `min_delta_ms`, and the slowdown beyond the run-to-run spread (see
    compare_latency). Cleared: the interval's high end rules out `1 + rule_out` and the estimate itself is within
    `1 + max_regression` (or a slowdown that size would stay under `min_delta_ms`). Neither: too noisy to judge."""

    alpha: float = 0.01
    max_regression: float = 0.25      # typical latency more than 1.25x ...
    min_delta_ms: float = 0.5         # ... and more than 0.5 ms slower, at the intervals' low end
    rule_out: float | None = None     # a pass rules out this slowdown (None: 2 x max_regression, 1.5x by default)
    min_samples: int = 20             # endpoints with fewer samples on either side are reported, not judged
    windows: int = 10                 # each run of duration_s is cut into this many windows
    # Also judge p95 (bootstrap lower bound) against this; None: p95 is reported and held to absolute limits only.
    max_p95_regression: float | None = None

    @property
    def regression_ratio(self) -> float:
        return 1 + self.max_regression

    @property
    def rule_out_ratio(self) -> float:
        return 1 + (self.rule_out if self.rule_out is not None else 2 * self.max_regression)


def window_medians(run: LoadRun, name: str, windows: int) -> list[float]:
    """The endpoint's median latency in each window of `duration_s / windows` seconds (nan: too few samples).
    A merged run (several attempts laid end to end) has proportionally more windows."""
    ms, at = run.samples.get(name, []), run.times.get(name, [])
    if not ms or len(at) != len(ms):
        return []
    length = run.profile.duration_s / windows
    count = max(1, int(round(run.window_s / length)))
    index = np.minimum((np.asarray(at) / length).astype(int), count - 1)
    values = np.asarray(ms, dtype=float)
    return [float(np.median(values[index == k])) if (index == k).sum() >= MIN_PER_WINDOW else float("nan")
            for k in range(count)]


def window_ratio(base: list[float], cand: list[float], alpha: float, paired: bool) -> dict[str, Any] | None:
    """The candidate/baseline ratio of typical latency judged with windows as the unit of replication, so the
    run-to-run spread widens the interval: paired windows (same seconds) give a one-sample t interval on the
    per-window log ratios, separate runs a Welch interval on the two sets of log medians. None: too few windows."""
    b = np.log(np.asarray(base, dtype=float))
    c = np.log(np.asarray(cand, dtype=float))
    if paired:
        n = min(len(b), len(c))
        d = (c[:n] - b[:n])[np.isfinite(c[:n] - b[:n])]
        if len(d) < 3:
            return None
        mean, se, df = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))), float(len(d) - 1)
    else:
        b, c = b[np.isfinite(b)], c[np.isfinite(c)]
        if len(b) < 2 or len(c) < 2:
            return None
        vb, vc = float(b.var(ddof=1)) / len(b), float(c.var(ddof=1)) / len(c)
        mean, se = float(c.mean() - b.mean()), float(np.sqrt(vb + vc))
        denom = vb**2 / (len(b) - 1) + vc**2 / (len(c) - 1)
        df = (vb + vc) ** 2 / denom if denom > 0 else float(len(b) + len(c) - 2)
    from scipy.stats import t as student_t  # here, not at import: every gate phase imports this module

    t = float(student_t.ppf(1 - alpha, df))
    finite_b, finite_c = b[np.isfinite(b)], c[np.isfinite(c)]
    return {"paired": paired, "windows": [len(finite_b), len(finite_c)], "df": round(df, 1),
            "ratio": round(float(np.exp(mean)), 3), "ratio_low": round(float(np.exp(mean - t * se)), 3),
            "ratio_high": round(float(np.exp(mean + t * se)), 3),
            "baseline_spread": round(float(np.exp(finite_b.max() - finite_b.min())), 3),
            "baseline_slowest_ms": _r(np.exp(finite_b.max())), "candidate_typical_ms": _r(np.exp(np.median(finite_c))),
            "baseline_ms": [_r(x) for x in base], "candidate_ms": [_r(x) for x in cand]}


def compare_latency(baseline: LoadRun, candidate: LoadRun, policy: LatencyPolicy, paired: bool = False) -> CheckResult:
    """Per endpoint: Mann-Whitney U and the Hodges-Lehmann shift on the samples, and the ratio window by window.

    Sequential runs (measured at different times): the machine's drift between them is invisible to the samples,
    so the windows are the unit of replication; the window-level interval (Welch, on log medians) decides both
    ways: a regression's low end must clear both `1 + max_regression` and the spread of the baseline's own
    windows (slowest / fastest: a lucky fast stretch in the baseline is not a slowdown of the candidate), and a
    pass's high end must rule out `rule_out`, from a baseline steady enough to have resolved it, with the
    candidate's typical window no slower than the baseline's slowest. Paired runs (`run_paired`, the same load
    to both in the same seconds): drift weighs on both alike and the samples' interval decides; the per-window
    ratios must agree on average (no single burst). The verdict (evidence["verdict"]) is "pass", "regressed",
    "too noisy" or "no data"; ok only for "pass"."""
    rows: dict[str, Any] = {}
    slower: list[str] = []
    unsure: list[str] = []
    notes: list[str] = []
    for name in sorted(set(baseline.samples) | set(candidate.samples)):
        a, b = baseline.samples.get(name, []), candidate.samples.get(name, [])
        if len(a) < policy.min_samples or len(b) < policy.min_samples:
            notes.append(f"{name}: {len(a)} vs {len(b)} samples, fewer than {policy.min_samples}: not judged")
            continue
        from scipy.stats import mannwhitneyu  # here, not at import: every gate phase imports this module

        u = mannwhitneyu(b, a, alternative="greater")
        pa = np.percentile(a, [50, 95, 99])
        pb = np.percentile(b, [50, 95, 99])
        ratios = [float(y / x) if x > 0 else float("inf") for x, y in zip(pa, pb, strict=True)]
        shift = shift_interval(a, b, policy.alpha)
        tail = p95_interval(a, b, policy.alpha)
        base_windows = window_medians(baseline, name, policy.windows)
        windows = window_ratio(base_windows, window_medians(candidate, name, policy.windows), policy.alpha, paired)
        if windows is None and not paired:
            notes.append(f"{name}: too few windows with samples: judged on the samples alone")
        # The effect must hold at the low end of its confidence interval, not only at the point estimate,
        # and beyond the run-to-run spread: the window-level interval's low end (sequential), or the
        # windows' average ratio (paired). Per mode: the limit a slowdown is held to, the interval (low, high)
        # and the estimate that decide, and whether the slowdown is beyond the spread.
        if windows is None:
            limit, low, high = policy.regression_ratio, shift["ratio_low"], shift["ratio_high"]
            estimate, beyond_spread = shift["ratio"], True
        elif paired:
            limit, low, high = policy.regression_ratio, shift["ratio_low"], shift["ratio_high"]
            estimate = max(shift["ratio"], windows["ratio"])
            beyond_spread = windows["ratio"] > limit
        else:  # ... and above the spread of the baseline's own windows (slowest / fastest)
            limit = max(policy.regression_ratio, windows["baseline_spread"])
            low, high, estimate = windows["ratio_low"], windows["ratio_high"], windows["ratio"]
            beyond_spread = low > limit
        shift_effect = (shift["ms_low"] > policy.min_delta_ms and shift["ratio_low"] > policy.regression_ratio
                        and beyond_spread)
        tail_effect = (policy.max_p95_regression is not None and tail["ms_low"] > policy.min_delta_ms
                       and tail["ratio_low"] > 1 + policy.max_p95_regression)
        regressed = bool(u.pvalue < policy.alpha and (shift_effect or tail_effect))
        # Sequential: a pass needs a baseline steady enough to have caught the rule-out slowdown at all, and
        # must sit within the old version's own spread (its typical window no slower than the baseline's
        # slowest), the counterpart of a regression having to exceed it. Without both, drift between the two
        # runs could hide a real slowdown.
        resolves = None if paired else resolvable_ratio(base_windows, policy)
        within_spread = windows is None or paired or (
            windows["candidate_typical_ms"] <= windows["baseline_slowest_ms"]
            and (resolves is None or resolves <= policy.rule_out_ratio))
        # A pass never has its best estimate beyond the limit: between the limit and the rule-out ratio, an
        # interval whose low end misses the limit would otherwise pass a slowdown measured above it.
        over_limit = estimate > limit and shift["ms"] > policy.min_delta_ms
        cleared = ((high < policy.rule_out_ratio and within_spread and not over_limit)
                   or float(pa[0]) * (high - 1) < policy.min_delta_ms)
        verdict: Verdict = "regressed" if regressed else "pass" if cleared else "too noisy"
        rows[name] = {
            "baseline": {"n": len(a), "p50_ms": _r(pa[0]), "p95_ms": _r(pa[1]), "p99_ms": _r(pa[2])},
            "candidate": {"n": len(b), "p50_ms": _r(pb[0]), "p95_ms": _r(pb[1]), "p99_ms": _r(pb[2])},
            "ratio": {"p50": _r(ratios[0]), "p95": _r(ratios[1]), "p99": _r(ratios[2])},
            "mann_whitney_u": float(u.statistic), "p_value": float(u.pvalue),
            "shift": shift, "p95_change": tail, "windows": windows, "ruled_out_up_to": _r(high),
            "baseline_resolves": _r(resolves),
            "verdict": verdict, "regressed": regressed, "over_limit": bool(over_limit),
            "why": ("typical latency" if shift_effect else "") + (" and " if shift_effect and tail_effect else "")
                   + ("p95" if tail_effect else ""),
        }
        spread = _spread_text(windows, paired)
        if regressed:
            slower.append(f"{name}: p50 {_ms(pa[0])} -> {_ms(pb[0])} (x{ratios[0]:.2f}), p95 {_ms(pa[1])} -> "
                          f"{_ms(pb[1])} (x{ratios[1]:.2f}), shift +{shift['ms']:.1f} ms (at least "
                          f"+{shift['ms_low']:.1f}){spread}, Mann-Whitney p={u.pvalue:.1e}")
        elif verdict == "too noisy":
            if resolves is not None and resolves > policy.rule_out_ratio:
                spread += f" (the baseline resolves x{resolves:.2f} at best)"
            head = f"{name}: p50 {_ms(pa[0])} -> {_ms(pb[0])} (x{ratios[0]:.2f}){spread}"
            if over_limit:
                unsure.append(f"{head}: likely a regression, estimated x{estimate:.2f} above the x{limit:.2f} limit, "
                              f"but only x{low:.2f} at the interval's low end (Mann-Whitney p={u.pvalue:.1e})")
            else:
                unsure.append(f"{head}, shift at least {shift['ms_low']:+.1f} ms: a slowdown up to x{high:.2f} would "
                              f"not be seen (x{policy.rule_out_ratio:.2f} must be ruled out; a regression is above "
                              f"x{policy.regression_ratio:.2f} and +{policy.min_delta_ms:g} ms)")
    machine = {"baseline": baseline.load_avg, "candidate": candidate.load_avg}
    verdict_all: Verdict = "regressed" if slower else "too noisy" if unsure else "pass"
    evidence = {"verdict": verdict_all, "paired": paired, "endpoints": rows, "policy": asdict(policy),
                "not_judged": notes, "load_avg": machine,
                "baseline": baseline.to_json(with_samples=False)["total"],
                "candidate": candidate.to_json(with_samples=False)["total"]}
    load = _load_text(baseline.load_avg, candidate.load_avg)
    if not rows:
        return CheckResult(False, "no endpoint had enough samples in both runs to compare latency",
                           {**evidence, "verdict": "no data"}, tuple(notes))
    if slower:
        return CheckResult(False, f"latency regressed on {len(slower)} of {len(rows)} endpoints: " + "; ".join(slower)
                           + load, evidence, tuple(notes))
    if unsure:
        summary = (f"too noisy to judge latency on {len(unsure)} of {len(rows)} endpoints: " + "; ".join(unsure)
                   + load)
        return CheckResult(False, summary, evidence, (summary, *notes))
    worst = max(rows, key=lambda k: rows[k]["ratio"]["p50"] or 0)
    w = rows[worst]
    return CheckResult(True, f"no latency regression on {len(rows)} endpoints{' (paired)' if paired else ''}: each "
                             f"rules out x{policy.rule_out_ratio:.2f}; largest p50 change {worst}: "
                             f"{_ms(w['baseline']['p50_ms'])} -> {_ms(w['candidate']['p50_ms'])}" + load,
                       evidence, tuple(notes))


def _spread_text(windows: dict[str, Any] | None, paired: bool) -> str:
    if windows is None:
        return ""
    if paired:
        return f" [paired windows x{windows['ratio']:.2f}, x{windows['ratio_low']:.2f}-{windows['ratio_high']:.2f}]"
    inner = f"windows x{windows['ratio_low']:.2f}-{windows['ratio_high']:.2f}"
    if windows["baseline_spread"]:
        inner += f", baseline windows x{windows['baseline_spread']:.2f} apart"
    return f" [{inner}]"


def _load_text(before: list[float] | None, after: list[float] | None) -> str:
    if not before or not after:
        return ""
    return f" (machine load {before[0]:.1f} -> {after[0]:.1f})"


def confirm_latency(results: list[CheckResult], paired: bool = True) -> CheckResult:
    """The gate's answer over a first candidate run and its confirmation runs: regressed only when every run
    regressed (a neighbour's burst is transient); paired, a pass as soon as one run rules the slowdown out;
    sequential, a later run's pass after a first run that did not pass says the drift between runs is as large
    as the slowdown to rule out, so it is too noisy to judge; too noisy otherwise."""
    first, rest = results[0], results[1:]
    verdicts = [r.evidence.get("verdict", "pass" if r.ok else "regressed") for r in results]
    confirmations = [r.to_json() for r in rest]
    if not rest:
        return first
    extra = {**first.evidence, "confirmations": confirmations, "verdict": None}
    runs = f"{len(rest)} more run{'s' if len(rest) > 1 else ''}"
    if all(v == "regressed" for v in verdicts):
        return CheckResult(False, f"{first.summary} (confirmed by {runs})", {**extra, "verdict": "regressed"},
                           first.warnings)
    cleared = next((r for r, v in zip(results, verdicts, strict=True) if v == "pass"), None)
    if cleared is not None and not paired:
        summary = (f"too noisy to judge latency: the runs disagree (the first said: {first.summary}; then: "
                   f"{cleared.summary}); two runs of the candidate differ as much as the slowdown to rule out")
        return CheckResult(False, summary, {**extra, "verdict": "too noisy"}, (summary,))
    if cleared is not None:
        return CheckResult(True, f"not confirmed: {cleared.summary} (the first candidate run said: {first.summary})",
                           {**extra, "verdict": "pass"}, first.warnings)
    last = results[-1]
    summary = f"{last.summary} (after {runs}; the first said: {first.summary})"
    return CheckResult(False, summary, {**extra, "verdict": "too noisy"}, (summary,))


def resolvable_ratio(window_p50s: list[float], policy: LatencyPolicy) -> float | None:
    """The smallest slowdown a sequential comparison against these baseline windows could call a regression,
    assuming the candidate is as noisy: its window-level interval, exp(+-t * sd * sqrt(2 / windows)) wide,
    must clear both `1 + max_regression` and the windows' own spread (slowest / fastest). None: < 2 windows."""
    meds = np.asarray(window_p50s, dtype=float)
    meds = meds[np.isfinite(meds)]
    if len(meds) < 2:
        return None
    logs = np.log(meds)
    from scipy.stats import t as student_t

    half = float(student_t.ppf(1 - policy.alpha, 2 * len(logs) - 2)) * float(logs.std(ddof=1)) * np.sqrt(2 / len(logs))
    return max(policy.regression_ratio, float(meds.max() / meds.min())) * float(np.exp(half))


def baseline_steadiness(run: LoadRun, policy: LatencyPolicy) -> CheckResult:
    """Do the baseline's own windows agree well enough that a `rule_out` slowdown could be told from no change
    (resolvable_ratio at most `1 + rule_out`)? Endpoints so fast that even that slowdown stays under
    min_delta_ms are left out: they are never judged a regression."""
    rows: dict[str, Any] = {}
    noisy: list[str] = []
    for name in sorted(run.samples):
        ms = run.samples[name]
        meds = [m for m in window_medians(run, name, policy.windows) if np.isfinite(m)]
        resolvable = resolvable_ratio(meds, policy)
        if len(ms) < policy.min_samples or resolvable is None:
            continue
        if float(np.median(ms)) * (policy.rule_out_ratio - 1) < policy.min_delta_ms:
            continue
        low, high = min(meds), max(meds)
        rows[name] = {"window_p50_ms": [_r(x) for x in meds], "spread": _r(high / low),
                      "resolvable_ratio": _r(resolvable), "steady": resolvable <= policy.rule_out_ratio}
        if resolvable > policy.rule_out_ratio:
            noisy.append(f"{name}: window p50 {low:.1f}-{high:.1f} ms (x{high / low:.2f} apart): resolves "
                         f"x{resolvable:.2f} at best")
    evidence = {"endpoints": rows, "windows": policy.windows, "load_avg": run.load_avg,
                "window_s": run.window_s, "rule_out_ratio": policy.rule_out_ratio}
    load = f" (machine load {run.load_avg[0]:.1f})" if run.load_avg else ""
    if noisy:
        return CheckResult(False, f"baseline too noisy to rule out x{policy.rule_out_ratio:.2f}: " + "; ".join(noisy)
                           + load, evidence)
    widest = max(rows.values(), key=lambda r: r["resolvable_ratio"], default=None)
    return CheckResult(True, f"baseline steady: {len(rows)} endpoints over {int(run.window_s)} s, windows agree "
                             f"well enough to resolve x{widest['resolvable_ratio'] if widest else 0:.2f} (rule-out "
                             f"x{policy.rule_out_ratio:.2f})" + load, evidence)


def merge_runs(runs: list[LoadRun]) -> LoadRun:
    """Several measured runs of the same version as one: samples pooled, their windows laid end to end."""
    if len(runs) == 1:
        return runs[0]
    samples: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {}
    failures: dict[str, int] = {}
    offset = 0.0
    for run in runs:
        for name, ms in run.samples.items():
            samples.setdefault(name, []).extend(ms)
            times.setdefault(name, []).extend(t + offset for t in run.times.get(name, []))
            failures[name] = failures.get(name, 0) + (run.endpoints[name].failures if name in run.endpoints else 0)
        offset += run.window_s
    window_s = round(offset, 3)
    endpoints = {k: _stats(k, v, failures.get(k, 0), window_s) for k, v in samples.items()}
    total = _stats("total", [x for v in samples.values() for x in v], sum(failures.values()), window_s)
    errors: dict[str, int] = {}
    for run in runs:
        for k, v in run.errors.items():
            errors[k] = errors.get(k, 0) + v
    last = runs[-1]
    return replace(last, window_s=window_s, endpoints=endpoints, total=total, samples=samples,
                   times={k: v for k, v in times.items() if len(v) == len(samples[k])}, errors=errors,
                   cpu_warning=any(r.cpu_warning for r in runs), csv=[c for r in runs for c in r.csv],
                   load_avg=max((r.load_avg for r in runs if r.load_avg), key=lambda x: x[0], default=None))


def measure_baseline(profile: LoadProfile, folder: Path, policy: LatencyPolicy, retries: int,
                     pids: list[int] | None = None, label: str = "baseline") -> tuple[LoadRun, CheckResult]:
    """Measure the current version, and again (up to `retries` more runs) while its windows disagree too much
    to rule out `policy.rule_out_ratio`. Every run is kept, pooled: re-measuring adds windows (and the drift
    between runs) to the spread, so a quiet second run cannot hide a noisy first one."""
    runs = [run_load(profile, folder, label, pids=pids)]
    steady = baseline_steadiness(runs[0], policy)
    while not steady.ok and len(runs) <= retries:
        runs.append(run_load(profile, folder, f"{label}-again{len(runs)}", pids=pids))
        steady = baseline_steadiness(merge_runs(runs), policy)
    if len(runs) > 1:
        steady = CheckResult(steady.ok, f"{steady.summary} (measured {len(runs)} times)",
                             {**steady.evidence, "runs": len(runs)}, steady.warnings)
    return merge_runs(runs), steady


def judge_latency(first: tuple[LoadRun, LoadRun], again: Callable[[int], tuple[LoadRun, LoadRun]],
                  policy: LatencyPolicy, confirm_runs: int, paired: bool) -> CheckResult:
    """compare_latency on (baseline, candidate), then, while the answer is not a pass, on `again(i)` for
    i = 1..confirm_runs (fresh measurements); the runs' answers combine as confirm_latency says."""
    results = [compare_latency(*first, policy, paired=paired)]
    for i in range(1, confirm_runs + 1):
        if results[-1].evidence["verdict"] in ("pass", "no data"):
            break
        results.append(compare_latency(*again(i), policy, paired=paired))
    return confirm_latency(results, paired)


def shift_interval(a: list[float], b: list[float], alpha: float, cap: int = 1500) -> dict[str, float]:
    """Hodges-Lehmann shift of b over a, in ms and as a ratio (on log latency), with the one-sided bounds at
    confidence 1 - alpha from the Mann-Whitney rank distribution (the interval canary analysis uses)."""
    rng = np.random.default_rng(0)
    x = np.asarray(a if len(a) <= cap else rng.choice(a, cap, replace=False), dtype=float)
    y = np.asarray(b if len(b) <= cap else rng.choice(b, cap, replace=False), dtype=float)
    n, m = len(x), len(y)
    from scipy.stats import norm

    z = float(norm.ppf(1 - alpha))
    k = int(max(0, np.floor(n * m / 2 - z * np.sqrt(n * m * (n + m + 1) / 12))))
    out: dict[str, float] = {}
    for key, xs, ys in (("ms", x, y), ("log", np.log(np.maximum(x, 1e-3)), np.log(np.maximum(y, 1e-3)))):
        diffs = (ys[:, None] - xs[None, :]).ravel()
        out[key] = float(np.median(diffs))
        low, high = np.partition(diffs, (k, len(diffs) - 1 - k))[[k, len(diffs) - 1 - k]]
        out[key + "_low"], out[key + "_high"] = float(low), float(high)
    return {"ms": round(out["ms"], 3), "ms_low": round(out["ms_low"], 3), "ms_high": round(out["ms_high"], 3),
            "ratio": round(float(np.exp(out["log"])), 3), "ratio_low": round(float(np.exp(out["log_low"])), 3),
            "ratio_high": round(float(np.exp(out["log_high"])), 3)}


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


@dataclass(frozen=True)
class Limits:
    """Absolute limits on one run, from config; None: not limited."""

    max_p95_ms: float | None = None
    max_p99_ms: float | None = None
    max_error_rate: float | None = None
    min_rps: float | None = None
    max_target_cpu_percent: float | None = None
    max_system_memory_percent: float | None = None


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

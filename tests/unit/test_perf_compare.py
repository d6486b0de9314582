"""The perf comparison on synthetic runs: what flaps (noise) must pass, what is a real slowdown must fail."""

from __future__ import annotations

import json

import numpy as np

from upgate.checks.perf import (
    LatencyPolicy,
    Limits,
    LoadProfile,
    LoadRun,
    ResourceUsage,
    _stats,
    check_limits,
    compare_latency,
    compare_resources,
    compare_throughput,
)

PROFILE = LoadProfile(host="http://user:secret@127.0.0.1:1")


def make_run(scale: float = 1.0, seed: int = 0, n: int = 400, failures: int = 0, window_s: float = 5.0,
             cpu_ms: float = 1.0, rss: float = 40.0) -> LoadRun:
    rng = np.random.default_rng(seed)
    samples = {name: list(rng.lognormal(np.log(base * scale), 0.35, n)) for name, base in
               (("GET /logs", 4.0), ("GET /logs/{id}", 3.5), ("GET /health", 1.5))}
    endpoints = {k: _stats(k, v, failures, window_s) for k, v in samples.items()}
    all_ms = [x for v in samples.values() for x in v]
    total = _stats("total", all_ms, failures * len(samples), window_s)
    resources = ResourceUsage(pids=(1,), cpu_seconds=cpu_ms * total.requests / 1000, cpu_percent=10.0,
                              cpu_ms_per_request=cpu_ms, rss_max_mb=rss, rss_start_mb=rss, rss_end_mb=rss,
                              system_cpu_percent=30.0, system_memory_percent=20.0, samples=20)
    return LoadRun(profile=PROFILE, window_s=window_s, endpoints=endpoints, total=total, samples=samples,
                   errors={}, cpu_warning=False, mode="local", workers=0, resources=resources)


def test_same_distribution_is_no_regression():
    for seed in range(5):
        result = compare_latency(make_run(seed=seed), make_run(seed=seed + 100), LatencyPolicy())
        assert result.ok, result.summary
        assert "no latency regression on 3 endpoints" in result.summary


def test_three_times_slower_is_a_regression_naming_endpoints():
    result = compare_latency(make_run(), make_run(scale=3.0, seed=1), LatencyPolicy())
    assert not result.ok
    # GET /health goes 1.5 -> 4.5 ms: three times slower, but by less than min_delta_ms (5 ms).
    assert "latency regressed on 2 of 3 endpoints" in result.summary
    assert "GET /logs:" in result.summary and "Mann-Whitney" in result.summary
    assert result.evidence["endpoints"]["GET /logs"]["p_value"] < 1e-10


def test_small_samples_of_the_same_build_do_not_flap():
    # ~30 samples per endpoint: a p95 is then the second-largest value; only its confidence bound may judge it.
    flaps = [seed for seed in range(20)
             if not compare_latency(make_run(n=30, seed=seed), make_run(n=30, seed=seed + 50), LatencyPolicy()).ok]
    assert flaps == []


def test_significant_but_small_shift_passes():
    # 20 % slower is highly significant on 400 samples, but below the 50 % effect: noise on a busy host.
    result = compare_latency(make_run(), make_run(scale=1.2, seed=1), LatencyPolicy())
    assert result.evidence["endpoints"]["GET /logs"]["p_value"] < 0.01
    assert result.ok, result.summary


def test_large_ratio_on_tiny_latency_passes_under_the_absolute_delta():
    policy = LatencyPolicy(min_delta_ms=50.0)
    assert compare_latency(make_run(), make_run(scale=3.0, seed=1), policy).ok


def test_endpoints_with_few_samples_are_not_judged():
    result = compare_latency(make_run(n=10), make_run(scale=5, n=10, seed=1), LatencyPolicy())
    assert not result.ok and "no endpoint had enough samples" in result.summary


def test_limits_name_what_is_broken():
    run = make_run(scale=3.0)
    result = check_limits(run, Limits(max_p95_ms=5.0, max_error_rate=0.01))
    assert not result.ok and "p95 ms" in result.summary and "above the limit 5" in result.summary
    assert check_limits(run, Limits(max_p95_ms=1000.0)).ok
    assert check_limits(run, Limits(min_rps=1e6)).summary.startswith("candidate: req/s")


def test_throughput_drop_and_errors():
    base = make_run()
    assert compare_throughput(base, make_run(seed=3), 0.3, 0.01).ok
    fewer = make_run(n=200, seed=3)
    result = compare_throughput(base, fewer, 0.3, 0.01)
    assert not result.ok and "throughput" in result.summary
    failing = make_run(failures=40, seed=3)
    result = compare_throughput(base, failing, 0.3, 0.01)
    assert not result.ok and "error rate" in result.summary


def test_resource_impact_against_baseline():
    base = make_run()
    assert compare_resources(base, make_run(cpu_ms=1.5), 1.0, 0.5).ok
    result = compare_resources(base, make_run(cpu_ms=2.5, rss=70.0), 1.0, 0.5)
    assert not result.ok
    assert "CPU per request 1.00 -> 2.50 ms" in result.summary and "peak RSS 40 -> 70 MiB" in result.summary


def test_run_round_trips_through_json_without_the_password():
    run = make_run()
    text = json.dumps(run.to_json())
    assert "secret" not in text
    again = LoadRun.from_json(json.loads(text))
    assert again.total == run.total and again.samples.keys() == run.samples.keys()
    assert again.resources == run.resources


def test_docs_performance_example_is_valid_config(tmp_path):
    from pathlib import Path

    from upgate.config import load_config

    readme = (Path(__file__).resolve().parents[2] / "docs" / "performance.md").read_text()
    block = readme.split("```toml\n[performance]\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "upgate.toml"
    path.write_text('[target]\nname = "t"\n[app]\nbase_url = "http://127.0.0.1:1"\n[performance]\n' + block)
    perf = load_config(path, environ={}).performance
    assert perf is not None and perf.confirm_runs == 1 and perf.max_p95_ms == 2000 and perf.pidfile is None

"""Pre-gate: Locust runs of the current version, cut into windows, recorded as the baseline the post-gate compares
against, with their run-to-run spread (re-measured while the windows disagree too much to judge)."""

from __future__ import annotations

import json

import pytest

from upgate.checks.perf import LoadRun, LoadRunFailed, measure_baseline
from upgate.checks.result import CheckResult

pytestmark = pytest.mark.upgate_component("performance")


def read_pids(pidfile):
    """The target's pid from its pidfile: [] when none is configured, a failed gate when it cannot be read."""
    if pidfile is None:
        return []
    try:
        return [int(pidfile.read_text().strip())]
    except (OSError, ValueError) as exc:
        pytest.fail(f"target pidfile {pidfile}: cannot read a pid ({exc})", pytrace=False)


@pytest.fixture(scope="session")
def measured_baseline(load_profile, target_pidfile, run_dir, baseline_dir, config) -> tuple[LoadRun, CheckResult]:
    perf = config.performance
    pids = read_pids(target_pidfile) if target_pidfile and target_pidfile.exists() else []
    # With an old version kept beside the new one, the post-gate compares in the same seconds: the baseline
    # serves the resource comparison and the chart, and is not re-measured for its spread.
    retries = 0 if perf.baseline_url else perf.baseline_retries
    try:
        run, steadiness = measure_baseline(load_profile, run_dir.path / "perf", perf.latency_policy(), retries,
                                           pids=pids)
    except LoadRunFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    (baseline_dir / "perf.json").write_text(json.dumps({**run.to_json(), "steadiness": steadiness.to_json()}) + "\n",
                                            encoding="utf-8")
    return run, steadiness


@pytest.fixture(scope="session")
def baseline_run(measured_baseline) -> LoadRun:
    return measured_baseline[0]


def test_baseline_load_recorded(baseline_run, config, evidence):
    evidence("baseline-load", baseline_run.to_json(with_samples=False))
    assert baseline_run.total.requests > 0, (
        f"baseline load against {baseline_run.profile.host}: no request completed in {baseline_run.window_s:.1f} s")
    limit = config.performance.max_error_rate
    assert baseline_run.total.error_rate <= limit, (
        f"baseline already fails under load: {baseline_run.describe()} (limit {limit:.2%}); "
        f"errors: {dict(list(baseline_run.errors.items())[:3])}")


def test_baseline_steady_enough_to_judge(measured_baseline, config, evidence):
    _, steadiness = measured_baseline
    evidence("baseline-steadiness", steadiness)
    if config.performance.baseline_url:
        pytest.skip("paired comparison configured ([performance] baseline_url): the post-gate loads both versions "
                    f"in the same seconds; this baseline's spread is recorded only ({steadiness.summary})")
    if not steadiness.ok and config.performance.when_too_noisy == "warn":
        pytest.skip(f"{steadiness.summary}; the post-gate still fails a slowdown beyond this noise "
                    "([performance] when_too_noisy = \"fail\" blocks the upgrade instead)")
    assert steadiness.ok, steadiness.summary


@pytest.mark.upgate_component("performance.process")
def test_target_resources_sampled(baseline_run, target_pidfile, evidence):
    if target_pidfile is None:
        pytest.skip("target process not configured ([performance] pidfile or [deploy] pidfile)")
    read_pids(target_pidfile)
    evidence("baseline-resources", {"resources": baseline_run.to_json(with_samples=False)["resources"]})
    assert baseline_run.resources is not None, f"target process of {target_pidfile} was not found while measuring"

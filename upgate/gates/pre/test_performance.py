"""Pre-gate: a Locust run of the current version, recorded as the baseline the post-gate compares against."""

from __future__ import annotations

import json

import pytest

from upgate.checks.perf import LoadRun, LoadRunFailed, run_load

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
def baseline_run(load_profile, target_pidfile, run_dir, baseline_dir) -> LoadRun:
    pids = read_pids(target_pidfile) if target_pidfile and target_pidfile.exists() else []
    try:
        run = run_load(load_profile, run_dir.path / "perf", "baseline", pids=pids)
    except LoadRunFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    (baseline_dir / "perf.json").write_text(json.dumps(run.to_json()) + "\n", encoding="utf-8")
    return run


def test_baseline_load_recorded(baseline_run, config, evidence):
    evidence("baseline-load", baseline_run.to_json(with_samples=False))
    assert baseline_run.total.requests > 0, (
        f"baseline load against {baseline_run.profile.host}: no request completed in {baseline_run.window_s:.1f} s")
    limit = config.performance.max_error_rate
    assert baseline_run.total.error_rate <= limit, (
        f"baseline already fails under load: {baseline_run.describe()} (limit {limit:.2%}); "
        f"errors: {dict(list(baseline_run.errors.items())[:3])}")


@pytest.mark.upgate_component("performance.process")
def test_target_resources_sampled(baseline_run, target_pidfile, evidence):
    if target_pidfile is None:
        pytest.skip("target process not configured ([performance] pidfile or [deploy] pidfile)")
    read_pids(target_pidfile)
    evidence("baseline-resources", {"resources": baseline_run.to_json(with_samples=False)["resources"]})
    assert baseline_run.resources is not None, f"target process of {target_pidfile} was not found while measuring"

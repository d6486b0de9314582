"""Post-gate: the same Locust profile against the new version, compared with the pre-gate's baseline run."""

from __future__ import annotations

import json

import pytest

from upgate.checks.perf import (
    LatencyPolicy,
    Limits,
    LoadRun,
    LoadRunFailed,
    check_limits,
    compare_latency,
    compare_resources,
    compare_throughput,
    run_load,
)
from upgate.checks.result import CheckResult

pytestmark = pytest.mark.upgate_component("performance")

# The profile may differ only in where it points: a different load would make the comparison meaningless.
_SAME_LOAD = ("locustfile", "user_classes", "users", "spawn_rate", "rate_per_user", "warmup_s", "duration_s")


@pytest.fixture(scope="session")
def baseline(load_profile, baseline_dir, phase) -> LoadRun:
    if phase == "rollback":
        pytest.skip("performance is not re-measured when verifying a rollback (health, schema, integrity prove it)")
    path = baseline_dir / "perf.json"
    if not path.exists():
        pytest.fail(f"no performance baseline ({path}): run the pre gates first", pytrace=False)
    run = LoadRun.from_json(json.loads(path.read_text(encoding="utf-8")))
    changed = [k for k in _SAME_LOAD if getattr(run.profile, k) != getattr(load_profile, k)]
    if changed:
        pytest.fail(f"[performance] changed since the baseline run ({', '.join(changed)}): "
                    "the runs cannot be compared; run the pre gates again", pytrace=False)
    return run


def read_pids(pidfile) -> list[int]:
    if pidfile is None:
        return []
    try:
        return [int(pidfile.read_text().strip())]
    except (OSError, ValueError):
        return []


@pytest.fixture(scope="session")
def candidate(baseline, load_profile, target_pidfile, run_dir) -> LoadRun:
    try:
        run = run_load(load_profile, run_dir.path / "perf", "candidate", pids=read_pids(target_pidfile))
    except LoadRunFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    (run_dir.path / "perf" / "candidate.json").write_text(json.dumps(run.to_json()) + "\n", encoding="utf-8")
    return run


def test_no_latency_regression(baseline, candidate, load_profile, target_pidfile, run_dir, config, evidence):
    perf = config.performance
    policy = LatencyPolicy(alpha=perf.alpha, max_regression=perf.max_latency_regression,
                           min_delta_ms=perf.min_latency_delta_ms, min_samples=perf.min_samples,
                           max_p95_regression=perf.max_p95_regression)
    result = compare_latency(baseline, candidate, policy)
    # A slowdown must show again in confirmation runs: a burst of load from a neighbour is transient.
    confirmations = []
    for i in range(perf.confirm_runs if not result.ok else 0):
        try:
            again = run_load(load_profile, run_dir.path / "perf", f"candidate-confirm{i + 1}",
                             pids=read_pids(target_pidfile))
        except LoadRunFailed as exc:
            pytest.fail(str(exc), pytrace=False)
        confirmation = compare_latency(baseline, again, policy)
        confirmations.append(confirmation.to_json())
        if confirmation.ok:
            result = CheckResult(True, f"not confirmed: {confirmation.summary} (the first candidate run said: "
                                       f"{result.summary})", {**result.evidence, "confirmations": confirmations},
                                 result.warnings)
            break
    else:
        if confirmations:
            result = CheckResult(result.ok, f"{result.summary} (confirmed by {len(confirmations)} more run"
                                            f"{'s' if len(confirmations) > 1 else ''})",
                                 {**result.evidence, "confirmations": confirmations}, result.warnings)
    evidence("latency", result)
    assert result.ok, result.summary


def test_candidate_within_limits(candidate, config, evidence):
    perf = config.performance
    limits = Limits(max_p95_ms=perf.max_p95_ms, max_p99_ms=perf.max_p99_ms, max_error_rate=perf.max_error_rate,
                    min_rps=perf.min_rps, max_target_cpu_percent=perf.max_target_cpu_percent,
                    max_system_memory_percent=perf.max_system_memory_percent)
    result = check_limits(candidate, limits)
    evidence("limits", result)
    assert result.ok, result.summary


def test_throughput_and_errors_hold(baseline, candidate, config, evidence):
    perf = config.performance
    result = compare_throughput(baseline, candidate, perf.max_throughput_drop, perf.max_error_rate)
    evidence("throughput", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("performance.process")
def test_no_resource_regression(baseline, candidate, target_pidfile, config, evidence):
    if target_pidfile is None:
        pytest.skip("target process not configured ([performance] pidfile or [deploy] pidfile)")
    perf = config.performance
    result = compare_resources(baseline, candidate, perf.max_cpu_regression, perf.max_memory_growth)
    evidence("resources", result)
    assert result.ok, result.summary

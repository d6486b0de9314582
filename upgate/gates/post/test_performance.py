"""Post-gate: the same Locust profile against the new version. When the old version still runs beside it (a deploy
step's `targets.json` in the run folder, else `[performance] baseline_url`), both get the load in the same seconds
and are compared pairwise, which cancels the machine's drift; otherwise the candidate is compared with the
pre-gate's baseline window by window, against the baseline's run-to-run spread.

`targets.json`, written by a deploy that keeps the old version up (blue-green, preview):
    {"live": "http://10.0.0.7:8080", "candidate": "http://10.0.0.7:8081"}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from upgate.checks.perf import (
    Limits,
    LoadProfile,
    LoadRun,
    LoadRunFailed,
    check_limits,
    compare_resources,
    compare_throughput,
    judge_latency,
    run_load,
    run_paired,
)

pytestmark = pytest.mark.upgate_component("performance")

TARGETS_FILE = "targets.json"
# The profile may differ only in where it points: a different load would make the comparison meaningless.
_SAME_LOAD = ("locustfile", "user_classes", "users", "spawn_rate", "rate_per_user", "warmup_s", "duration_s")


@dataclass
class Measured:
    """The candidate's first run and what it is compared with; `again(i)` measures both afresh (confirmations)."""

    reference: LoadRun  # the live version in the same seconds (paired), else the pre-gate's baseline
    candidate: LoadRun
    paired: bool
    source: str  # where the reference came from, for messages
    again: Callable[[int], tuple[LoadRun, LoadRun]]


def read_pids(pidfile) -> list[int]:
    if pidfile is None:
        return []
    try:
        return [int(pidfile.read_text().strip())]
    except (OSError, ValueError):
        return []


def read_targets(path: Path) -> dict[str, str]:
    """{"live": url, "candidate": url} from a deploy step's targets.json; a failed gate naming the key otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        pytest.fail(f"{path}: not readable JSON ({exc})", pytrace=False)
    if not isinstance(data, dict):
        pytest.fail(f"{path}: expected an object {{\"live\": url, \"candidate\": url}}", pytrace=False)
    targets = {}
    for key in ("live", "candidate"):
        url = data.get(key)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            pytest.fail(f"{path}: key '{key}' must be the http(s) URL of the {key} version, got {url!r}",
                        pytrace=False)
        targets[key] = url
    return targets


@pytest.fixture(scope="session")
def post_phase(phase) -> None:
    if phase == "rollback":
        pytest.skip("performance is not re-measured when verifying a rollback (health, schema, integrity prove it)")


@pytest.fixture(scope="session")
def paired_targets(post_phase, config, run_dir, load_profile) -> tuple[dict[str, str], str] | None:
    """Both versions' URLs and where they came from, when the old one still runs; None: compare sequentially."""
    path = run_dir.path / TARGETS_FILE
    if path.exists():
        return read_targets(path), str(path)
    if config.performance.baseline_url:
        return {"live": config.performance.baseline_url, "candidate": load_profile.host}, "[performance] baseline_url"
    return None


@pytest.fixture(scope="session")
def baseline(post_phase, load_profile, baseline_dir) -> LoadRun:
    """The pre-gate's baseline run."""
    path = baseline_dir / "perf.json"
    if not path.exists():
        pytest.fail(f"no performance baseline ({path}): run the pre gates first", pytrace=False)
    run = LoadRun.from_json(json.loads(path.read_text(encoding="utf-8")))
    changed = [k for k in _SAME_LOAD if getattr(run.profile, k) != getattr(load_profile, k)]
    if changed:
        pytest.fail(f"[performance] changed since the baseline run ({', '.join(changed)}): "
                    "the runs cannot be compared; run the pre gates again", pytrace=False)
    return run


def measure_paired(profile: LoadProfile, folder: Path, targets: dict[str, str], pids: list[int],
                   label: str) -> tuple[LoadRun, LoadRun]:
    runs = run_paired(profile, folder, label, targets, pids={"candidate": pids})
    return runs["live"], runs["candidate"]


@pytest.fixture(scope="session")
def measured(post_phase, paired_targets, request, load_profile, target_pidfile, run_dir, config) -> Measured:
    folder = run_dir.path / "perf"
    pids = read_pids(target_pidfile)
    try:
        if paired_targets is not None:
            targets, source = paired_targets

            def again(i: int) -> tuple[LoadRun, LoadRun]:
                return measure_paired(load_profile, folder, targets, pids, f"candidate-confirm{i}")

            live, candidate = measure_paired(load_profile, folder, targets, pids, "candidate")
            (folder / "live.json").write_text(json.dumps(live.to_json()) + "\n", encoding="utf-8")
            limit = config.performance.max_error_rate
            if live.total.error_rate > limit:
                pytest.fail(f"the live version at {targets['live']} (from {source}) answered {live.describe()} "
                            f"(limit {limit:.2%}): the paired comparison needs it up beside the candidate",
                            pytrace=False)
            result = Measured(live, candidate, True, f"the live version ({source})", again)
        else:
            baseline: LoadRun = request.getfixturevalue("baseline")

            def again(i: int) -> tuple[LoadRun, LoadRun]:
                return baseline, run_load(load_profile, folder, f"candidate-confirm{i}", pids=pids)

            candidate = run_load(load_profile, folder, "candidate", pids=pids)
            result = Measured(baseline, candidate, False, "the pre-gate's baseline", again)
    except LoadRunFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    (folder / "candidate.json").write_text(json.dumps(candidate.to_json()) + "\n", encoding="utf-8")
    return result


def test_no_latency_regression(measured, config, evidence):
    perf = config.performance

    def again(i: int):
        try:
            return measured.again(i)
        except LoadRunFailed as exc:
            pytest.fail(str(exc), pytrace=False)

    result = judge_latency((measured.reference, measured.candidate), again, perf.latency_policy(),
                           perf.confirm_runs, paired=measured.paired)
    evidence("latency", result)
    if result.evidence["verdict"] == "too noisy" and perf.when_too_noisy == "warn":
        pytest.skip(f"{result.summary}; compared with {measured.source}")
    assert result.ok, result.summary


def test_candidate_within_limits(measured, config, evidence):
    perf = config.performance
    limits = Limits(max_p95_ms=perf.max_p95_ms, max_p99_ms=perf.max_p99_ms, max_error_rate=perf.max_error_rate,
                    min_rps=perf.min_rps, max_target_cpu_percent=perf.max_target_cpu_percent,
                    max_system_memory_percent=perf.max_system_memory_percent)
    result = check_limits(measured.candidate, limits)
    evidence("limits", result)
    assert result.ok, result.summary


def test_throughput_and_errors_hold(measured, config, evidence):
    perf = config.performance
    result = compare_throughput(measured.reference, measured.candidate, perf.max_throughput_drop, perf.max_error_rate)
    evidence("throughput", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("performance.process")
def test_no_resource_regression(measured, baseline, target_pidfile, config, evidence):
    if target_pidfile is None:
        pytest.skip("target process not configured ([performance] pidfile or [deploy] pidfile)")
    perf = config.performance
    result = compare_resources(baseline, measured.candidate, perf.max_cpu_regression, perf.max_memory_growth)
    evidence("resources", result)
    assert result.ok, result.summary

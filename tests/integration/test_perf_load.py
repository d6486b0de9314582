"""Locust against the real reference service: local runner, master with two local workers, the same load to two
versions at once (paired), and the perf gates run by hand: an A/A upgrade must never be called a regression, a
slowed candidate beside the live version must be. Load runs are kept to a few seconds."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from upgate.checks.perf import LoadProfile, LoadRunFailed, run_load, run_paired
from upgate.fixtures.demo import plans_folder
from upgate.fixtures.reference import free_port, start_service, stop_pid, wait_ready
from upgate.fixtures.seed import create_schema, seed

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Service:
    base_url: str
    pid: int
    pidfile: Path


@pytest.fixture
def database(pg_url: str) -> str:
    """The reference schema with 500 rows, migrated to v2's columns (v1 reads fine on it; v2 builds need them)."""
    create_schema(pg_url)
    seed(pg_url, rows=500)
    up = plans_folder() / "good" / "migrations" / "001_add_cache_columns.up.sql"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(up.read_text(encoding="utf-8"))  # type: ignore[arg-type]
    return pg_url


@pytest.fixture
def start(database: str, tmp_path: Path) -> Iterator[Callable[[str], Service]]:
    """Start a reference-service process of a build on the shared database; all stopped at the end."""
    started: list[int] = []

    def run(build: str) -> Service:
        port = free_port()
        pidfile = tmp_path / f"{build}-{port}.pid"
        proc = start_service(database, port, build, pidfile, tmp_path / f"{build}-{port}.log")
        started.append(proc.pid)
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, proc=proc)
        return Service(base_url, proc.pid, pidfile)

    try:
        yield run
    finally:
        for pid in started:
            stop_pid(pid)


@pytest.fixture
def service(start) -> Service:
    return start("v1")


def short(host: str, **kw) -> LoadProfile:
    return LoadProfile(host=host, users=5, spawn_rate=5, rate_per_user=10, warmup_s=1.0, duration_s=2.0, **kw)


def test_local_run_measures_latency_throughput_and_resources(service, tmp_path):
    run = run_load(short(service.base_url), tmp_path / "perf", "baseline", pids=[service.pid])
    assert run.mode == "local" and run.workers == 0
    # 5 users x 10 req/s at random moments for 2 s: about 100 requests offered.
    assert 50 <= run.total.requests <= 150 and run.total.failures == 0, run.describe()
    assert {"GET /health", "GET /logs", "GET /logs/{id}", "POST /logs"} <= set(run.endpoints)
    assert len(run.samples["GET /logs"]) == run.endpoints["GET /logs"].requests
    times = run.times["GET /logs"]
    assert len(times) == len(run.samples["GET /logs"]) and 0 <= min(times) and max(times) <= run.window_s
    assert run.total.p50_ms is not None and run.total.p50_ms <= run.total.p95_ms <= run.total.p99_ms
    assert run.resources is not None and run.resources.cpu_ms_per_request and run.resources.rss_max_mb > 5
    assert run.load_avg is not None and len(run.load_avg) == 3
    with open(tmp_path / "perf" / "baseline_stats.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[-1]["Name"] == "Aggregated" and int(rows[-1]["Request Count"]) > 0
    assert (tmp_path / "perf" / "baseline_failures.csv").exists()


@pytest.mark.slow  # the long tier (make test-slow): distributed Locust; make test keeps the local run and a missing worker
def test_master_with_two_local_workers(service, tmp_path):
    run = run_load(short(service.base_url, local_workers=2), tmp_path / "perf", "dist", pids=[service.pid])
    raw = json.loads((tmp_path / "perf" / "dist-run.json").read_text())
    assert run.mode == "master" and run.workers == 2
    assert raw["workers_reported"] == 2 and len(raw["worker_ids"]) == 2
    assert run.total.requests >= 40 and run.total.failures == 0, run.describe()
    assert len(run.times["GET /logs"]) == len(run.samples["GET /logs"])
    with open(tmp_path / "perf" / "dist_stats.csv", newline="") as fh:
        assert int(list(csv.DictReader(fh))[-1]["Request Count"]) > 0


def test_missing_remote_worker_fails_naming_the_count(service, tmp_path):
    profile = short(service.base_url, remote_workers=("loadgen-1.example",), worker_timeout_s=2.0)
    with pytest.raises(LoadRunFailed, match="0 of 1 Locust workers connected within 2"):
        run_load(profile, tmp_path / "perf", "missing")


def test_target_that_refuses_connections_is_all_errors(tmp_path):
    run = run_load(LoadProfile(host=f"http://127.0.0.1:{free_port()}", users=2, spawn_rate=2, rate_per_user=5,
                               warmup_s=0.5, duration_s=1.0), tmp_path / "perf", "down")
    assert run.total.requests > 0 and run.total.error_rate == 1.0
    assert any("GET /health" in e or "GET /logs" in e for e in run.errors)


def test_paired_run_loads_both_versions_at_once(start, tmp_path):
    live, slow = start("v1"), start("v2-slow-3x")
    runs = run_paired(short(live.base_url), tmp_path / "perf", "pair", {"live": live.base_url,
                                                                       "candidate": slow.base_url},
                      pids={"candidate": [slow.pid]})
    a, b = runs["live"], runs["candidate"]
    assert a.profile.host == live.base_url and b.profile.host == slow.base_url
    # The profile's users each: about the same number of requests to both, in the same seconds.
    assert 50 <= a.total.requests <= 150 and 50 <= b.total.requests <= 150, (a.describe(), b.describe())
    assert a.window_s == b.window_s and a.resources is None and b.resources is not None
    # Each target's samples are its own: the slowed build answers its reads slower.
    assert b.endpoints["GET /logs"].p50_ms > a.endpoints["GET /logs"].p50_ms


# --- the gates, run by hand -------------------------------------------------------------------------------------


def write_config(folder: Path, service: Service, extra: str = "") -> Path:
    path = folder / "upgate.toml"
    path.write_text(f"""
[target]
name = "aa"

[app]
base_url = "{service.base_url}"

[performance]
users = 5
spawn_rate = 5
rate_per_user = 10
warmup_s = 1
duration_s = 4
windows = 4
pidfile = "{service.pidfile}"
{extra}
""")
    return path


def gates(phase: str, config: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "upgate" / "gates" / phase / "test_performance.py"), "--upgate-config",
         str(config), "--upgate-run-dir", str(run_dir), "--upgate-phase", phase, "-p", "no:cacheprovider",
         "--import-mode=importlib", "--rootdir", str(ROOT / "upgate" / "gates"), "-q", "-rs"],
        cwd=ROOT / "upgate" / "gates", capture_output=True, text=True, timeout=300)


def outcomes(run_dir: Path, phase: str) -> dict[str, dict]:
    results = json.loads((run_dir / f"gates-{phase}.json").read_text())
    return {g["nodeid"].split("::")[-1]: g for g in results["gates"]}


def latency_evidence(run_dir: Path) -> dict:
    return json.loads(next((run_dir / "evidence").glob("*latency*.json")).read_text())


@pytest.mark.slow  # the long tier (make test-slow): a minute of A/A load; bench/perf.py counts A/A false alarms
def test_aa_run_through_the_gates_is_never_a_regression(service, tmp_path):
    config = write_config(tmp_path, service)
    run_dir = tmp_path / "run"
    pre = gates("pre", config, run_dir)
    assert pre.returncode == 0, pre.stdout + pre.stderr
    baseline = json.loads((run_dir / "baseline" / "perf.json").read_text())
    assert baseline["times"]["GET /logs"] and "resolve" in baseline["steadiness"]["summary"]
    steady = outcomes(run_dir, "pre")["test_baseline_steady_enough_to_judge"]
    assert steady["outcome"] == "passed" or steady["message"].startswith("baseline too noisy to rule out x1.50")
    post = gates("post", config, run_dir)
    assert post.returncode == 0, post.stdout + post.stderr
    got = outcomes(run_dir, "post")
    latency = got.pop("test_no_latency_regression")
    # Same build: a pass, or on a busy machine an honest "too noisy" (skipped with the figures); never a failure.
    assert latency["outcome"] == "passed" or latency["message"].startswith("too noisy to judge latency"), latency
    assert {k: g["outcome"] for k, g in got.items()} == {
        "test_candidate_within_limits": "passed", "test_throughput_and_errors_hold": "passed",
        "test_no_resource_regression": "passed"}
    assert latency_evidence(run_dir)["evidence"]["paired"] is False
    assert (run_dir / "perf" / "candidate_stats.csv").exists() and (run_dir / "perf" / "candidate.json").exists()


@pytest.mark.slow  # the long tier (make test-slow): make test keeps the paired slow scenario end to end (tests/e2e/test_perf_scenarios.py)
def test_paired_gate_fails_a_slowed_candidate_beside_the_live_version(start, tmp_path):
    live, slow = start("v1"), start("v2-slow-3x")
    config = write_config(tmp_path, slow)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "targets.json").write_text(json.dumps({"live": live.base_url, "candidate": slow.base_url}))
    assert gates("pre", config, run_dir).returncode == 0  # the resource gate still compares with the baseline
    post = gates("post", config, run_dir)
    assert post.returncode == 1, post.stdout + post.stderr
    latency = outcomes(run_dir, "post")["test_no_latency_regression"]
    assert latency["outcome"] == "failed", latency
    assert latency["message"].startswith("latency regressed on") and "paired windows x" in latency["message"]
    assert "GET /logs:" in latency["message"]
    found = latency_evidence(run_dir)["evidence"]
    assert found["paired"] is True and found["verdict"] == "regressed" and found["confirmations"]
    assert (run_dir / "perf" / "live.json").exists() and (run_dir / "perf" / "candidate.json").exists()


@pytest.mark.slow  # the long tier (make test-slow): a second A/A pairing; make test keeps test_aa_run_through_the_gates_is_never_a_regression
def test_paired_gate_from_baseline_url_passes_the_same_build(start, tmp_path):
    live, candidate = start("v1"), start("v1")
    config = write_config(tmp_path, candidate, f'baseline_url = "{live.base_url}"')
    run_dir = tmp_path / "run"
    assert gates("pre", config, run_dir).returncode == 0
    steady = outcomes(run_dir, "pre")["test_baseline_steady_enough_to_judge"]
    assert steady["outcome"] == "skipped" and steady["message"].startswith("paired comparison configured")
    post = gates("post", config, run_dir)
    assert (run_dir / "gates-post.json").exists(), post.stdout + post.stderr
    latency = outcomes(run_dir, "post")["test_no_latency_regression"]
    assert latency["outcome"] in ("passed", "skipped"), post.stdout
    if latency["outcome"] == "skipped":
        assert latency["message"].startswith("too noisy to judge latency"), latency
    assert latency_evidence(run_dir)["evidence"]["paired"] is True


@pytest.mark.slow  # the long tier (make test-slow): make test keeps a target that refuses connections
def test_paired_gate_fails_when_the_live_version_is_down(service, tmp_path):
    config = write_config(tmp_path, service)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    gone = f"http://127.0.0.1:{free_port()}"
    (run_dir / "targets.json").write_text(json.dumps({"live": gone, "candidate": service.base_url}))
    gates("post", config, run_dir)
    latency = outcomes(run_dir, "post")["test_no_latency_regression"]
    assert latency["outcome"] == "error" and f"the live version at {gone}" in latency["message"], latency
    assert "targets.json" in latency["message"]


def test_malformed_targets_file_fails_naming_the_key(service, tmp_path):
    config = write_config(tmp_path, service)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "targets.json").write_text(json.dumps({"live": service.base_url, "canidate": service.base_url}))
    gates("post", config, run_dir)
    latency = outcomes(run_dir, "post")["test_no_latency_regression"]
    assert latency["outcome"] == "error"
    assert "targets.json: key 'candidate' must be the http(s) URL of the candidate version" in latency["message"]


def test_perf_gates_are_not_gated_when_not_configured(service, tmp_path):
    config = tmp_path / "upgate.toml"
    config.write_text(f'[target]\nname = "x"\n\n[app]\nbase_url = "{service.base_url}"\n')
    pre = gates("pre", config, tmp_path / "run")
    # Only the perf gates were asked for and none is configured: nothing collected, which never passes.
    assert pre.returncode == 5 and "to gate it: [performance]" in pre.stdout, pre.stdout

"""Locust against the real reference service: local runner, master with two local workers, and the perf gates
run by hand twice on the same build (an A/A run must pass). Load runs are kept to a few seconds."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from upgate.checks.perf import LoadProfile, LoadRunFailed, run_load
from upgate.fixtures.reference import free_port, start_service, stop_pid, wait_ready
from upgate.fixtures.seed import create_schema, seed

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Service:
    base_url: str
    pid: int
    pidfile: Path


@pytest.fixture
def service(pg_url: str, tmp_path: Path) -> Iterator[Service]:
    create_schema(pg_url)
    seed(pg_url, rows=500)
    port = free_port()
    pidfile = tmp_path / "service.pid"
    proc = start_service(pg_url, port, "v1", pidfile, tmp_path / "service.log")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, proc=proc)
        yield Service(base_url, proc.pid, pidfile)
    finally:
        stop_pid(proc.pid)


def short(host: str, **kw) -> LoadProfile:
    return LoadProfile(host=host, users=5, spawn_rate=5, rate_per_user=10, warmup_s=1.0, duration_s=2.0, **kw)


def test_local_run_measures_latency_throughput_and_resources(service, tmp_path):
    run = run_load(short(service.base_url), tmp_path / "perf", "baseline", pids=[service.pid])
    assert run.mode == "local" and run.workers == 0
    assert run.total.requests >= 40 and run.total.failures == 0, run.describe()
    assert {"GET /health", "GET /logs", "GET /logs/{id}", "POST /logs"} <= set(run.endpoints)
    assert len(run.samples["GET /logs"]) == run.endpoints["GET /logs"].requests
    assert run.total.p50_ms is not None and run.total.p50_ms <= run.total.p95_ms <= run.total.p99_ms
    assert run.resources is not None and run.resources.cpu_ms_per_request and run.resources.rss_max_mb > 5
    with open(tmp_path / "perf" / "baseline_stats.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[-1]["Name"] == "Aggregated" and int(rows[-1]["Request Count"]) > 0
    assert (tmp_path / "perf" / "baseline_failures.csv").exists()


def test_master_with_two_local_workers(service, tmp_path):
    run = run_load(short(service.base_url, local_workers=2), tmp_path / "perf", "dist", pids=[service.pid])
    raw = json.loads((tmp_path / "perf" / "dist-run.json").read_text())
    assert run.mode == "master" and run.workers == 2
    assert raw["workers_reported"] == 2 and len(raw["worker_ids"]) == 2
    assert run.total.requests >= 40 and run.total.failures == 0, run.describe()
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


def write_config(folder: Path, service: Service, workers: int = 0) -> Path:
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
duration_s = 3
workers = {workers}
pidfile = "{service.pidfile}"
""")
    return path


def gates(phase: str, config: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "upgate" / "gates" / phase / "test_performance.py"), "--upgate-config",
         str(config), "--upgate-run-dir", str(run_dir), "--upgate-phase", phase, "-p", "no:cacheprovider",
         "--import-mode=importlib", "--rootdir", str(ROOT / "upgate" / "gates"), "-q", "-rs"],
        cwd=ROOT / "upgate" / "gates", capture_output=True, text=True, timeout=300)


def test_aa_run_through_the_gates_passes(service, tmp_path):
    config = write_config(tmp_path, service)
    run_dir = tmp_path / "run"
    pre = gates("pre", config, run_dir)
    assert pre.returncode == 0, pre.stdout + pre.stderr
    assert (run_dir / "baseline" / "perf.json").exists()
    post = gates("post", config, run_dir)
    assert post.returncode == 0, post.stdout + post.stderr
    results = json.loads((run_dir / "gates-post.json").read_text())
    outcomes = {g["nodeid"].split("::")[-1]: g["outcome"] for g in results["gates"]}
    assert outcomes == {"test_no_latency_regression": "passed", "test_candidate_within_limits": "passed",
                        "test_throughput_and_errors_hold": "passed", "test_no_resource_regression": "passed"}
    assert (run_dir / "perf" / "candidate_stats.csv").exists() and (run_dir / "perf" / "candidate.json").exists()
    assert list((run_dir / "evidence").glob("*latency*.json"))


def test_perf_gates_are_not_gated_when_not_configured(service, tmp_path):
    config = tmp_path / "upgate.toml"
    config.write_text(f'[target]\nname = "x"\n\n[app]\nbase_url = "{service.base_url}"\n')
    pre = gates("pre", config, tmp_path / "run")
    # Only the perf gates were asked for and none is configured: nothing collected, which never passes.
    assert pre.returncode == 5 and "to gate it: [performance]" in pre.stdout, pre.stdout

"""The monitoring, hosts, resources and diagnostics gates as pytest runs them: skipped with the reason when
not configured, failing with a message naming the component when it is configured and down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from upgate.fixtures.reference import free_port

ROOT = Path(__file__).resolve().parents[2]


def run_gates(tmp_path: Path, config: str, *paths: str) -> dict[str, dict]:
    cfg = tmp_path / "upgate.toml"
    cfg.write_text(config)
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pytest", *paths, "--upgate-config", str(cfg), "--upgate-run-dir", str(run),
                    "--import-mode=importlib", "-p", "no:cacheprovider", "-q", "--rootdir", str(ROOT)],
                   cwd=ROOT, capture_output=True, text=True, timeout=300)
    phase = "diagnostics" if "diagnostics" in paths[0] else "pre"
    results = json.loads((run / f"gates-{phase}.json").read_text())
    return {g["nodeid"].split("::")[-1]: g for g in results["gates"]}


def test_unconfigured_components_are_skipped_with_the_reason(tmp_path):
    gates = run_gates(tmp_path, '[target]\nname = "svc"\n', "upgate/gates/pre/test_monitoring.py", "upgate/gates/pre/test_hosts.py",
                      "upgate/gates/pre/test_resources.py")
    assert gates["test_redis_answers"]["outcome"] == "skipped"
    assert "redis not configured" in gates["test_redis_answers"]["message"]
    assert "prometheus not configured" in gates["test_prometheus_answers"]["message"]
    assert "app not configured" in gates["test_app_metrics_parse_with_required_names"]["message"]
    assert "hosts not configured" in gates["test_host_answers[no-hosts]"]["message"]
    assert "database not configured" in gates["test_backup_location_has_room"]["message"]
    assert gates["test_memory_and_cpu_headroom"]["outcome"] == "skipped"
    assert not [name for name, g in gates.items() if g["outcome"] != "skipped"]


def test_configured_components_that_are_down_fail_naming_them(tmp_path, redis_server):
    dead = free_port()
    config = f"""
[target]
name = "svc"

[app]
base_url = "http://127.0.0.1:{dead}"

[monitoring]
redis_url = "redis://:s3cret@127.0.0.1:{dead}/0"
prometheus_url = "http://127.0.0.1:{dead}"
required_metrics = ["up"]  # asked for: the app's /metrics is gated (and down)

[[hosts]]
name = "box"
spec = "local://"
ports = [{dead}]
processes = ["no-such-daemon-xyz"]
"""
    gates = run_gates(tmp_path, config, "upgate/gates/pre/test_monitoring.py", "upgate/gates/pre/test_hosts.py")
    redis = gates["test_redis_answers"]
    assert redis["outcome"] == "failed" and f"127.0.0.1:{dead}" in redis["message"] and "s3cret" not in redis["message"]
    assert gates["test_prometheus_answers"]["outcome"] == "failed"
    assert f"http://127.0.0.1:{dead}" in gates["test_prometheus_answers"]["message"]
    assert gates["test_app_metrics_parse_with_required_names"]["outcome"] == "failed"
    assert gates["test_host_answers[box]"]["outcome"] == "passed"
    assert gates["test_expected_ports_listening[box]"]["message"] == f"box: not listening: {dead}"
    assert "no-such-daemon-xyz" in gates["test_expected_processes_running[box]"]["message"]
    assert "services not configured" in gates["test_expected_services_running[box]"]["message"]


def test_diagnostics_gates_attach_evidence(tmp_path, pg_url):
    log = tmp_path / "service.log"
    log.write_text("started\nERROR something broke\n")
    config = f'[target]\nname = "svc"\n\n[database]\nurl = "{pg_url}"\n\n[diagnostics]\nlog_files = ["service.log"]\n'
    gates = run_gates(tmp_path, config, "upgate/gates/diagnostics")
    assert gates["test_no_long_transaction"]["outcome"] == "passed"
    assert gates["test_connection_headroom"]["outcome"] == "passed"
    assert gates["test_service_log_tail"]["outcome"] == "passed"
    evidence = json.loads((tmp_path / "run" / "evidence" / "diagnostics-test_service_log_tail-log_tail.json").read_text())
    assert evidence["evidence"]["tails"][str(log)][-1] == "ERROR something broke"
    assert "port_owners" in gates["test_port_owners"]["evidence"] or gates["test_port_owners"]["outcome"] == "skipped"

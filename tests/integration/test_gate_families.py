"""The monitoring, hosts, resources and diagnostics gates as pytest runs them: deselected and listed as not
gated when not configured, failing with a message naming the component when it is configured and down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from upgate.fixtures.reference import free_port

ROOT = Path(__file__).resolve().parents[2]


def run_gates(tmp_path: Path, config: str, *paths: str, not_gated: dict | None = None) -> dict[str, dict]:
    cfg = tmp_path / "upgate.toml"
    cfg.write_text(config)
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pytest", *paths, "--upgate-config", str(cfg), "--upgate-run-dir", str(run),
                    "--import-mode=importlib", "-p", "no:cacheprovider", "-q", "--rootdir", str(ROOT)],
                   cwd=ROOT, capture_output=True, text=True, timeout=300)
    phase = "diagnostics" if "diagnostics" in paths[0] else "pre"
    results = json.loads((run / f"gates-{phase}.json").read_text())
    if not_gated is not None:
        not_gated.update(results.get("not_gated", {}))
    return {g["nodeid"].split("::")[-1]: g for g in results["gates"]}


def test_unconfigured_components_are_not_gated(tmp_path):
    not_gated: dict = {}
    gates = run_gates(tmp_path, '[target]\nname = "svc"\n', "upgate/gates/pre/test_monitoring.py", "upgate/gates/pre/test_hosts.py",
                      "upgate/gates/pre/test_resources.py", not_gated=not_gated)
    assert gates == {}
    assert set(not_gated) == {"monitoring", "hosts", "database", "app"}
    assert not_gated["monitoring"]["configure"] == "[monitoring] or REDIS_URL / MONITORING_URL"
    assert not_gated["hosts"]["gates"] == 8


def test_a_monitoring_section_gates_only_what_it_names(tmp_path, redis_server):
    not_gated: dict = {}
    gates = run_gates(tmp_path, f'[target]\nname = "svc"\n\n[monitoring]\nredis_url = "{redis_server}"\n',
                      "upgate/gates/pre/test_monitoring.py", not_gated=not_gated)
    assert gates["test_redis_answers"]["outcome"] == "passed"
    assert set(gates) == {"test_redis_answers"}
    assert set(not_gated) == {"monitoring.prometheus", "monitoring.metrics", "app"}


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
    assert "test_expected_services_running[box]" not in gates  # no host declares services: not gated


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

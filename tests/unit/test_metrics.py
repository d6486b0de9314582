"""Operations signals: metrics in Prometheus text format, pushed to a Pushgateway, and the alert rules
that name them (syntax checked with a real PromQL parser, and promtool when it is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from upgate.fixtures.pushgateway import PushgatewayServer
from upgate.reporting.loadstats import LoadRun
from upgate.reporting.metrics import METRIC_NAMES, build_registry, push, write_textfile, written_names

RULES = Path(__file__).resolve().parents[2] / "monitoring" / "upgate-alerts.yml"


def rolled_back_summary() -> dict[str, Any]:
    return {
        "run_id": "20261125-101500-ab12", "target": "reference-service", "from_version": "v1",
        "to_version": "v2", "verdict": "ROLLED_BACK", "exit_code": 20, "seconds": 25.6,
        "steps": [
            {"name": "pre-gates", "status": "ok", "seconds": 11.8},
            {"name": "migrate", "status": "ok", "seconds": 0.1},
            {"name": "post-gates", "status": "failed", "seconds": 9.4},
            {"name": "verify", "status": "failed", "seconds": 1.3},
            {"name": "verify", "status": "ok", "seconds": 1.1},
        ],
        "gates": {"pre": {"counts": {"passed": 8}}, "post": {"counts": {"passed": 5, "failed": 2}}},
        "downtime": {"downtime_s": 0.7, "longest_outage_s": 0.4},
        "downtime_budget_s": 300, "rollback_budget_s": 300,
        "rollback": {"triggered": True, "verified": True, "seconds": 3.2},
    }


def load_runs() -> list[LoadRun]:
    return [LoadRun("baseline", Path("baseline/perf.json"), p50_ms=7, p95_ms=11, p99_ms=13, rps=100, error_rate=0),
            LoadRun("candidate", Path("perf/candidate.json"), samples_ms=[10.0 + i % 20 for i in range(200)],
                    rps=99, error_rate=0.01)]


def exposition(tmp_path: Path, summary: dict[str, Any] | None = None) -> str:
    registry = build_registry(summary or rolled_back_summary(), load_runs(), [2.0, 3.0, 40.0], finished_at=1.8e9)
    return write_textfile(registry, tmp_path / "metrics.prom").read_text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def value(text: str, name: str, **labels: str) -> float:
    found = [v for (n, ls), v in samples(text).items() if n == name and labels.items() <= dict(ls).items()]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def test_a_rolled_back_run_reads_as_failed_with_rollback_downtime_and_steps(tmp_path: Path):
    text = exposition(tmp_path)
    assert value(text, "upgate_upgrade_status", verdict="ROLLED_BACK") == 0
    assert value(text, "upgate_rollback_triggered") == 1 and value(text, "upgate_rollback_verified") == 1
    assert value(text, "upgate_rollback_seconds") == pytest.approx(3.2)
    assert value(text, "upgate_downtime_seconds") == pytest.approx(0.7)
    assert value(text, "upgate_step_duration_seconds", step="verify") == pytest.approx(2.4)  # both attempts
    assert value(text, "upgate_step_failed", step="post-gates") == 1
    assert value(text, "upgate_gates", phase="post", outcome="failed") == 2
    assert value(text, "upgate_response_time_seconds", phase="baseline", quantile="0.95") == pytest.approx(0.011)
    assert value(text, "upgate_probe_latency_seconds", quantile="0.5") == pytest.approx(0.003)
    assert all(dict(ls).get("target") == "reference-service" for _, ls in samples(text))


def test_an_upgraded_run_has_status_one_and_no_rollback_time(tmp_path: Path):
    summary = {**rolled_back_summary(), "verdict": "UPGRADED", "exit_code": 0, "rollback": {"triggered": False}}
    text = exposition(tmp_path, summary)
    assert value(text, "upgate_upgrade_status", verdict="UPGRADED") == 1
    assert value(text, "upgate_rollback_triggered") == 0
    assert "upgate_rollback_seconds" not in written_names(text)


def test_metrics_are_pushed_to_a_pushgateway_grouped_by_job_and_target(tmp_path: Path):
    registry = build_registry(rolled_back_summary(), load_runs(), [], finished_at=1.8e9)
    with PushgatewayServer() as gw:
        push(registry, gw.url, job="upgate", target="reference-service")
        push(registry, gw.url, job="upgate", target="reference-service")  # a second run replaces the first
        assert [m for m, _ in gw.requests] == ["PUT", "PUT"]
        assert gw.requests[0][1] == "/metrics/job/upgate/target/reference-service"
        (key, body), = gw.groups.items()
    assert key == ("upgate", (("target", "reference-service"),))
    assert value(body, "upgate_rollback_triggered") == 1


def test_a_pushgateway_that_is_down_raises_naming_nothing_secret(tmp_path: Path):
    registry = build_registry(rolled_back_summary())
    with PushgatewayServer() as gw:
        url = gw.url
    with pytest.raises(OSError):
        push(registry, url, job="upgate", target="svc", timeout_s=1)


def metric_names(node: Any) -> set[str]:
    """Every metric a PromQL expression selects (walks the parsed AST)."""
    if isinstance(node, promql_parser.VectorSelector):
        return {node.name} if node.name else set()
    names: set[str] = set()
    for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, str | int | float):
            names |= metric_names(child)
    for child in getattr(node, "args", None) or []:
        names |= metric_names(child)
    return names


def test_alert_rules_parse_and_carry_the_guides_alerts():
    doc = yaml.safe_load(RULES.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {"UpgradeFailed", "UpgradeRollback", "UpgradePerformanceDegradation"} <= names
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]
        promql_parser.parse(rule["expr"])  # raises on a syntax error
        if "for" in rule:  # Prometheus durations; 0m is valid ("fire at once")
            assert re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", str(rule["for"])), rule["for"]


def test_every_metric_the_rules_name_is_written(tmp_path: Path):
    doc = yaml.safe_load(RULES.read_text())
    named = set().union(*(metric_names(promql_parser.parse(r["expr"])) for g in doc["groups"] for r in g["rules"]))
    written = written_names(exposition(tmp_path))
    assert named, "no metric found in the rules"
    assert named <= written, f"named by the rules but never written: {sorted(named - written)}"
    assert named <= METRIC_NAMES


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")
def test_promtool_accepts_the_rule_file():
    proc = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr

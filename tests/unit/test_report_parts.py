"""Report parts on their own: categories, environment.properties, JUnit, summaries of hand-made runs,
the performance gate's stats read back, and the charts."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from upgate.core.runs import RunDir
from upgate.reporting.charts import render_downtime, render_latency
from upgate.reporting.loadstats import load_load_runs
from upgate.reporting.report import (
    categorize,
    ensure_summary,
    environment,
    read_properties,
    write_environment,
    write_junit,
    write_run_result,
)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("status", "message", "category"), [
    ("failed", "episodic_logs: 2 rows lost (ids 244, 1061), 7 changed (ids 803, …), 0 added", "Data loss"),
    ("failed", "episodic_logs: 0 rows lost, 3 changed (ids 1, 2, 3), 0 added", "Data loss"),
    ("failed", "database unreachable, nothing touched: connection refused", "Infrastructure problem"),
    ("broken", "fixture 'db_url' failed: something odd", "Infrastructure problem"),
    ("failed", "latency regressed on 2 of 4 endpoints: GET /logs: p95 11.3 ms -> 27.8 ms", "Product defect"),
    ("failed", "episodic_logs: 0 rows lost, 0 changed, 12 added (not allowed)", "Product defect"),
    ("passed", "", None),
])
def test_categories_separate_data_loss_infrastructure_and_product(status, message, category):
    assert categorize(status, message) == category


def test_environment_properties_round_trip_with_secrets_redacted(tmp_path: Path):
    summary = {"run_id": "r1", "target": "svc", "from_version": "v1", "to_version": "v2", "verdict": "UPGRADED",
               "exit_code": 0, "config": "/etc/upgate.toml", "gated": {"database": True, "app": False}}
    env = environment(summary)
    env["database"] = "postgresql://app:s3cret@db:5432/prod"
    path = write_environment(tmp_path, environment({**summary, "config": env["database"]}))
    back = read_properties(path)
    assert back["run.id"] == "r1" and back["version.from"] == "v1" and back["version.to"] == "v2"
    assert back["gated"] == "database"
    assert "s3cret" not in path.read_text() and "***" in back["config"]


def hand_run(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "runs" / "20261101-100000-hand")
    run.path.mkdir(parents=True)
    run.write_json("gates-pre.json", {"phase": "pre", "exitstatus": 0, "counts": {"passed": 2}, "seconds": 1.0,
                                      "gates": [{"nodeid": "pre/test_health.py::test_app_is_alive",
                                                 "outcome": "passed", "seconds": 0.1, "message": ""},
                                                {"nodeid": "pre/test_schema.py::test_x", "outcome": "passed",
                                                 "seconds": 0.2, "message": ""}]})
    run.write_json("gates-post.json", {"phase": "post", "exitstatus": 1, "counts": {"failed": 1, "skipped": 1},
                                       "gates": [{"nodeid": "post/test_integrity.py::test_lost[t]",
                                                  "outcome": "failed", "message": "t: 1 row lost (ids 7)"},
                                                 {"nodeid": "post/test_models.py::test_m", "outcome": "skipped",
                                                  "message": "models not configured"}]})
    return run


def test_a_run_made_by_hand_gets_a_summary_and_junit_from_its_gate_results(tmp_path: Path):
    run = hand_run(tmp_path)
    summary = ensure_summary(run)
    assert summary["verdict"] == "GATES_FAILED" and run.summary.exists()
    assert summary["gates"]["post"]["failures"][0]["message"] == "t: 1 row lost (ids 7)"
    root = ET.parse(write_junit(run)).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "4" and root.get("failures") == "1"
    assert [s.get("name") for s in root.iter("testsuite")] == ["pre", "post"]
    failure = root.find(".//testcase[@name='test_lost[t]']/failure")
    assert failure is not None and "1 row lost" in failure.get("message", "")


def test_phase_junit_files_merge_into_one_with_phase_named_suites(tmp_path: Path):
    run = RunDir(tmp_path)
    for phase, fails in (("pre", 0), ("post", 1), ("rollback", 0)):
        (tmp_path / f"junit-{phase}.xml").write_text(
            f'<testsuites><testsuite name="pytest" tests="2" failures="{fails}" errors="0" skipped="0">'
            f'<testcase classname="test_health" name="test_a"/><testcase classname="test_health" name="test_b"/>'
            f'</testsuite></testsuites>')
    root = ET.parse(write_junit(run)).getroot()
    assert [s.get("name") for s in root.iter("testsuite")] == ["pre", "post", "rollback"]
    assert root.get("tests") == "6" and root.get("failures") == "1"
    assert {c.get("classname") for c in root.iter("testcase")} == {
        "pre.test_health", "post.test_health", "rollback.test_health"}


def perf_run(tmp_path: Path) -> RunDir:
    """A run folder as gates/*/test_performance.py leave it (checks/perf.py LoadRun.to_json())."""
    run = RunDir(tmp_path / "run")
    (run.path / "baseline").mkdir(parents=True)
    (run.path / "perf").mkdir()

    def load(label: str, scale: float) -> dict:
        samples = {"GET /logs": [scale * (5 + i % 7) for i in range(300)], "GET /health": [1.0 + i % 3 for i in range(80)]}
        return {"profile": {"host": "http://127.0.0.1:1"}, "window_s": 5.0, "mode": "local", "workers": 0,
                "total": {"name": "total", "requests": 380, "failures": 4, "p50_ms": 5 * scale, "p95_ms": 10 * scale,
                          "p99_ms": 11 * scale, "mean_ms": 6.0, "rps": 76.0},
                "endpoints": {}, "errors": {}, "resources": None, "csv": [], "samples": samples}

    (run.path / "baseline" / "perf.json").write_text(json.dumps(load("baseline", 1.0)))
    (run.path / "perf" / "candidate.json").write_text(json.dumps(load("candidate", 3.0)))
    (run.path / "perf" / "baseline-run.json").write_text(json.dumps({"endpoints": {}, "mode": "local"}))  # raw
    return run


def test_the_performance_gates_stats_are_read_back_as_baseline_and_candidate(tmp_path: Path):
    runs = load_load_runs(perf_run(tmp_path))
    assert [(r.phase, r.p95_ms, len(r.samples_ms)) for r in runs] == [("baseline", 10.0, 380),
                                                                       ("candidate", 30.0, 380)]
    assert runs[0].error_rate == pytest.approx(4 / 380)


def test_locust_csv_is_read_when_no_json_stats_exist(tmp_path: Path):
    run = RunDir(tmp_path)
    (tmp_path / "perf").mkdir()
    with (tmp_path / "perf" / "candidate_stats.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Type", "Name", "Request Count", "Failure Count", "Requests/s", "50%", "95%", "99%"])
        w.writerow(["GET", "/logs", "100", "1", "20", "6", "12", "15"])
        w.writerow(["", "Aggregated", "200", "2", "40", "5", "11", "14"])
    (only,) = load_load_runs(run)
    assert (only.label, only.phase, only.p95_ms, only.rps, only.error_rate) == ("candidate", "candidate", 11, 40, 0.01)


def test_charts_are_pngs_and_attached_to_the_run_result(tmp_path: Path):
    run = perf_run(tmp_path)
    latency = render_latency(load_load_runs(run), run.path / "charts" / "latency.png")
    timeline = [{"t": i / 10, "url": "http://x/ready", "ok": not 5 <= i < 9, "status": 200, "latency_ms": 2.0 + i % 3}
                for i in range(40)]
    downtime = render_downtime({"timeline": timeline, "report": {
        "downtime_s": 0.4, "longest_outage_s": 0.4, "outages": [{"start_s": 0.5, "end_s": 0.9, "seconds": 0.4}],
        "marks": [{"t": 0.0, "label": "migrate"}, {"t": 0.4, "label": "deploy"}, {"t": 1.2, "label": "post-gates"}],
        "duration_s": 4.0}}, run.path / "charts" / "downtime.png", budget_s=300)
    for chart in (latency, downtime):
        assert chart.read_bytes()[:8] == PNG and chart.stat().st_size > 10_000
    summary = {"run_id": "r", "target": "svc", "verdict": "ROLLED_BACK", "exit_code": 20, "seconds": 4.0,
               "reason": "post-gates failed: t: 2 rows lost (ids 1, 2)", "started_at": "2026-11-01T10:00:00+00:00",
               "steps": [{"name": "migrate", "status": "ok", "seconds": 0.4},
                         {"name": "post-gates", "status": "failed", "seconds": 1.0, "error": "2 failed"}]}
    result = json.loads(write_run_result(run, summary, [latency, downtime], []).read_text())
    assert result["status"] == "failed" and [s["status"] for s in result["steps"]] == ["passed", "failed"]
    assert {a["type"] for a in result["attachments"]} == {"image/png"}
    for a in result["attachments"]:
        assert (run.allure_results / a["source"]).read_bytes()[:8] == PNG
    labels = {x["name"]: x["value"] for x in result["labels"]}
    assert (labels["epic"], labels["feature"], labels["story"]) == ("run", "pipeline", "svc")
    assert "**Category:** Data loss" in result["description"]

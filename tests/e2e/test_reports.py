"""Reports of a real gated upgrade, as QA and operations get them: one `upgate run` of the destructive
scenario (rows lost, rolled back), then `upgate report` and the HTML rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from upgate.embedded.postgres import PostgresServer
from upgate.fixtures.demo import start_target, stop_target
from upgate.fixtures.pushgateway import PushgatewayServer
from upgate.reporting.audit import read_audit, verify_chain
from upgate.reporting.report import find_allure, read_properties

pytestmark = pytest.mark.e2e

PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Finished:
    proc: subprocess.CompletedProcess[str]
    run: Path
    reports: Path
    summary: dict[str, Any]
    pushed: dict[Any, str]


def upgate(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | env
    return subprocess.run([sys.executable, "-m", "upgate.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=environ, timeout=600)


@pytest.fixture(scope="module")
def finished(pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Finished]:
    folder = tmp_path_factory.mktemp("reports-e2e")
    target = start_target("destructive", pg_server, folder, rows=2000)
    try:
        with PushgatewayServer() as gw:
            proc = upgate("run", "--config", str(target.config), "--reports", str(folder / "reports"), cwd=folder,
                          PUSHGATEWAY_URL=gw.url, UPGATE_ACTOR="qa-e2e")
            pushed = dict(gw.groups)
    finally:
        stop_target(target, pg_server)
    (run,) = sorted((folder / "reports" / "runs").iterdir())
    yield Finished(proc, run, folder / "reports", json.loads((run / "summary.json").read_text()), pushed)


def allure_results(run: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in (run / "allure-results").glob("*-result.json")]


def test_the_run_rolled_back(finished: Finished):
    assert finished.proc.returncode == 20, finished.proc.stdout + finished.proc.stderr
    assert finished.summary["verdict"] == "ROLLED_BACK"
    assert "report      charts/, metrics.prom" in finished.proc.stdout


def test_every_gate_result_carries_epic_feature_and_story(finished: Finished):
    results = allure_results(finished.run)
    epics = set()
    for result in results:
        labels = {x["name"]: x["value"] for x in result["labels"]}
        assert {"epic", "feature", "story"} <= set(labels), result["fullName"]
        epics.add(labels["epic"])
    assert {"pre", "post", "rollback", "run"} <= epics
    # a post gate and its re-run proving the rollback are two tests, not a test and its retry
    lost = [r for r in results if r["name"].startswith("test_no_preserved_row_lost")]
    assert len({r["historyId"] for r in lost}) >= 2
    assert {r["status"] for r in lost} == {"failed", "passed"}
    story = {x["value"] for r in results if r["name"] == "test_database_answers" for x in r["labels"]
             if x["name"] == "story"}
    assert story == {"database"}


def test_evidence_is_attached_as_json(finished: Finished):
    attached = [a for r in allure_results(finished.run) for a in r.get("attachments", [])
                if a["type"] == "application/json"]
    assert attached and all((finished.run / "allure-results" / a["source"]).exists() for a in attached)


def test_environment_and_categories_are_in_the_allure_results(finished: Finished):
    env = read_properties(finished.run / "allure-results" / "environment.properties")
    assert env["run.id"] == finished.run.name and env["target"] == "reference-service"
    assert (env["version.from"], env["version.to"], env["verdict"]) == ("v1", "v2", "ROLLED_BACK")
    assert env["database"].startswith("postgresql://") and env["app.base_url"].startswith("http://127.0.0.1:")
    names = {c["name"] for c in json.loads((finished.run / "allure-results" / "categories.json").read_text())}
    assert {"Data loss", "Infrastructure problem", "Product defect"} <= names


def test_the_run_result_has_its_steps_the_downtime_chart_and_the_data_loss_category(finished: Finished):
    (run_result,) = [r for r in allure_results(finished.run) if r["fullName"].startswith("upgate.run#")]
    assert run_result["status"] == "failed" and "rows lost" in run_result["statusDetails"]["message"]
    assert "**Category:** Data loss" in run_result["description"]
    names = [s["name"] for s in run_result["steps"]]
    assert sorted(names[:2]) == ["backup", "pre-gates"] and names[2] == "migrate"  # the backup runs beside the pre-gates
    charts = [a for a in run_result["attachments"] if a["type"] == "image/png"]
    assert any("downtime" in a["name"] for a in charts)
    for chart in charts:
        assert (finished.run / "allure-results" / chart["source"]).read_bytes()[:8] == PNG
    assert (finished.run / "charts" / "downtime.png").read_bytes()[:8] == PNG


def test_metrics_are_written_and_pushed(finished: Finished):
    text = (finished.run / "metrics.prom").read_text()
    assert 'upgate_upgrade_status{from_version="v1",target="reference-service",to_version="v2",' \
           'verdict="ROLLED_BACK"} 0.0' in text
    assert 'upgate_rollback_triggered{target="reference-service"} 1.0' in text
    assert "upgate_downtime_seconds" in text and 'upgate_step_duration_seconds{step="migrate"' in text
    ((job, labels), body), = finished.pushed.items()
    assert (job, labels) == ("upgate", (("target", "reference-service"),))
    assert "upgate_rollback_triggered" in body


def test_every_action_is_in_the_append_only_audit_log(finished: Finished):
    path = finished.reports / "audit.jsonl"
    assert verify_chain(path).ok
    lines = [x for x in read_audit(path) if x.get("run_id") == finished.run.name]
    actions = [(x["action"], x["event"]) for x in lines]
    assert actions[0] == ("run", "start") and actions[-1] == ("run", "end")
    assert ("migrate", "end") in actions and ("rollback:stop new version", "end") in actions
    assert all(x["who"] == "qa-e2e" and x["host"] and x["config_sha256"] for x in lines)
    assert lines[-1]["verdict"] == "ROLLED_BACK"


@pytest.fixture(scope="module")
def reported(finished: Finished) -> subprocess.CompletedProcess[str]:
    return upgate("report", finished.run.name, "--reports", str(finished.reports), "--no-install",
                  cwd=finished.reports.parent)


def test_upgate_report_writes_junit_and_summary(finished: Finished, reported: subprocess.CompletedProcess[str]):
    assert reported.returncode == 0, reported.stdout + reported.stderr
    root = ET.parse(finished.run / "junit.xml").getroot()
    assert [s.get("name") for s in root.iter("testsuite")][:2] == ["pre", "post"]
    assert int(root.get("failures", "0")) >= 2
    assert json.loads((finished.run / "summary.json").read_text())["verdict"] == "ROLLED_BACK"
    report_lines = [x for x in read_audit(finished.reports / "audit.jsonl") if x["action"] == "report"]
    assert report_lines and report_lines[-1]["verdict"] == "ROLLED_BACK"


@pytest.fixture(scope="module")
def html(finished: Finished, reported: subprocess.CompletedProcess[str]) -> Path:
    if find_allure() is None:
        pytest.skip("Allure 3 CLI not installed (make report-tools: npm install allure@3 into .tools/allure)")
    index = finished.run / "allure-report" / "index.html"
    assert index.exists(), reported.stdout + reported.stderr
    return index


def test_the_html_report_is_one_self_contained_file(html: Path):
    text = html.read_text(encoding="utf-8")
    assert "<html" in text and "ROLLED_BACK" in text and len(text) > 100_000


def test_the_html_report_renders_in_headless_chromium(html: Path, tmp_path: Path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium not installed (make report-tools: apt-get install chromium)")
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1400,1400"]
    for budget in (15_000, 60_000, 180_000):  # virtual ms; a loaded machine may need a longer one
        dom = subprocess.run([*args, f"--virtual-time-budget={budget}", "--dump-dom", html.as_uri()],
                             capture_output=True, text=True, timeout=180)
        assert dom.returncode == 0, dom.stderr[-2000:]
        # rendered by the report's JavaScript, not present as such in the file: the tree of results
        rendered = ("upgrade reference-service v1 -&gt; v2: ROLLED_BACK" in dom.stdout
                    or "upgrade reference-service v1 -> v2: ROLLED_BACK" in dom.stdout)
        if rendered:
            break
    assert rendered, f"not rendered after {budget} virtual ms: {dom.stdout[:2000]}"
    assert "rollback" in dom.stdout and "pre" in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run([*args, f"--virtual-time-budget={budget}", f"--screenshot={shot}", html.as_uri()],
                   capture_output=True, timeout=180, check=True)
    assert shot.read_bytes()[:8] == PNG and shot.stat().st_size > 20_000

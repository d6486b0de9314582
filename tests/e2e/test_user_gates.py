"""The user's own gates on a real upgrade: the good demo with `[gates] extra = [examples/user-gates]`.

They run in pre and post in the same session as the shipped gates, show in summary.json and in the Allure
results; the gates of the families the good demo does not configure (models, performance) are nowhere in
the Allure results, and are listed as not gated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import run_upgate
from upgate.fixtures.demo import DemoTarget

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "user-gates"
ROWS = 2000


def _labels(result: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for label in result["labels"]:
        out.setdefault(label["name"], []).append(label["value"])
    return out


@pytest.mark.parametrize("target", ["good"], indirect=True)
def test_user_gates_run_in_pre_and_post_and_show_in_the_report(target: DemoTarget, tmp_path: Path) -> None:
    with target.config.open("a", encoding="utf-8") as fh:
        fh.write(f'\n[gates]\nextra = ["{EXAMPLES}"]\n')
    proc, summary = run_upgate(target, tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

    pre = {g["nodeid"].split("::")[-1]: g["outcome"] for g in summary["gates"]["pre"]["user_gates"]}
    post = {g["nodeid"].split("::")[-1]: g["outcome"] for g in summary["gates"]["post"]["user_gates"]}
    assert pre == {"test_the_service_table_answers_a_query": "passed", "test_the_first_logs_are_recorded": "passed"}
    assert post == {"test_database_queries_answer": "passed", "test_api_endpoint_answers[/health]": "passed",
                    "test_api_endpoint_answers[/ready]": "passed", "test_api_endpoint_answers[/metrics]": "passed",
                    "test_a_log_written_through_the_api_reads_back": "passed",
                    "test_the_first_logs_read_back": "passed"}  # the model call: no model configured, not gated
    assert {"models", "performance"} <= set(summary["not_gated"])
    assert "ok    " in proc.stdout and "test_functionality.py::test_a_log_written_through_the_api_reads_back" in proc.stdout

    (run,) = list((tmp_path / "reports" / "runs").iterdir())
    results = [json.loads(p.read_text()) for p in (run / "allure-results").glob("*-result.json")]
    user = {(r["name"], _labels(r)["epic"][0]) for r in results if "user gate" in _labels(r).get("tag", [])}
    assert ("test_the_service_table_answers_a_query", "pre") in user
    assert ("test_a_log_written_through_the_api_reads_back", "post") in user
    assert ("test_the_first_logs_read_back", "post") in user

    # No test of an unconfigured family: the good demo configures no model and no performance profile.
    features = {_labels(r).get("feature", [""])[0] for r in results}
    stories = {_labels(r).get("story", [""])[0] for r in results}
    assert {"health", "integrity", "schema", "functionality"} <= features, features
    assert not features & {"models", "performance"}, features
    assert not {s for s in stories if s.startswith(("models", "model_upgrade", "performance"))}, stories
    assert not [r for r in results if r.get("status") == "skipped" and "not configured" in
                (r.get("statusDetails") or {}).get("message", "")]
    env = (run / "allure-results" / "environment.properties").read_text()
    assert "not.gated=" in env and "models" in env.split("not.gated=")[1].splitlines()[0]

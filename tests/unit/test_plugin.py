"""The gate plugin, exercised through pytest itself (pytester): options, skips, the results file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

GATES = Path(__file__).resolve().parents[2] / "upgate" / "gates"


def test_unconfigured_components_are_skipped_with_the_reason(pytester: pytest.Pytester) -> None:
    config = pytester.path / "upgate.toml"
    config.write_text('[target]\nname = "bare"\n')
    run_dir = pytester.path / "run"
    result = pytester.runpytest_subprocess(str(GATES / "pre"), "--upgate-config", str(config),
                                           "--upgate-run-dir", str(run_dir), "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=0, failed=0, skipped=result.parseoutcomes().get("skipped", 0))
    assert result.parseoutcomes()["skipped"] >= 3
    result.stdout.fnmatch_lines(["*database not configured*", "*app not configured*"])
    data = json.loads((run_dir / "gates-pre.json").read_text())
    assert data["phase"] == "pre" and data["counts"] == {"skipped": data["counts"]["skipped"]}
    assert all(g["message"] for g in data["gates"])


def test_bad_config_is_one_clean_usage_error(pytester: pytest.Pytester) -> None:
    config = pytester.path / "upgate.toml"
    config.write_text('[target]\nname = "x"\ncolour = "blue"\n')
    result = pytester.runpytest_subprocess(str(GATES / "pre"), "--upgate-config", str(config))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: invalid configuration:*", f"*{config}:3: unknown key 'target.colour'*"])


def test_post_without_any_run_folder_says_to_run_pre_first(pytester: pytest.Pytester) -> None:
    config = pytester.path / "upgate.toml"
    config.write_text('[target]\nname = "x"\n')
    result = pytester.runpytest_subprocess(str(GATES / "post"), "--upgate-config", str(config),
                                           "--upgate-reports", str(pytester.path / "nothing"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no run folder under*run the pre gates first*"])


def test_gate_failure_message_reaches_the_results_file(pytester: pytest.Pytester) -> None:
    config = pytester.path / "upgate.toml"
    config.write_text('[target]\nname = "x"\n\n[database]\nurl = "postgresql://u:pw@127.0.0.1:1/db"\n'
                      'connect_timeout_s = 1\n')
    run_dir = pytester.path / "run"
    result = pytester.runpytest_subprocess(str(GATES / "pre" / "test_health.py"), "--upgate-config", str(config),
                                           "--upgate-run-dir", str(run_dir))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    gates = json.loads((run_dir / "gates-pre.json").read_text())["gates"]
    failed = [g for g in gates if g["outcome"] == "failed"]
    assert len(failed) == 1 and "127.0.0.1:1" in failed[0]["message"] and "pw" not in failed[0]["message"]
    assert failed[0]["evidence"] == ["database"]


def test_an_app_that_serves_no_metrics_is_not_gated_on_them(pytester: pytest.Pytester) -> None:
    config = pytester.path / "upgate.toml"
    config.write_text('[target]\nname = "x"\n\n[app]\nbase_url = "http://127.0.0.1:1"\n')  # nothing listens there
    run_dir = pytester.path / "run"
    result = pytester.runpytest_subprocess(str(GATES / "pre" / "test_monitoring.py"), str(GATES / "pre" / "test_health.py"),
                                           "--upgate-config", str(config), "--upgate-run-dir", str(run_dir), "-rs")
    gates = {g["nodeid"].split("::")[1]: g for g in json.loads((run_dir / "gates-pre.json").read_text())["gates"]}
    metrics = gates["test_app_metrics_parse_with_required_names"]
    assert metrics["outcome"] == "skipped" and "app metrics not asked for ([monitoring] required_metrics)" in metrics["message"]
    ready = gates["test_app_is_ready"]
    assert ready["outcome"] == "skipped" and "ready_path unset" in ready["message"]
    assert gates["test_app_is_alive"]["outcome"] == "failed"  # configured and unreachable: a failure, not a skip
    assert result.ret == pytest.ExitCode.TESTS_FAILED

"""The gate plugin, exercised through pytest itself (pytester): options, skips, the results file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

GATES = Path(__file__).resolve().parents[2] / "upgate" / "gates"


def test_unconfigured_families_are_deselected_and_listed_once(pytester: pytest.Pytester) -> None:
    config = pytester.path / "upgate.toml"
    config.write_text('[target]\nname = "bare"\n')
    run_dir = pytester.path / "run"
    result = pytester.runpytest_subprocess(str(GATES / "pre"), "--upgate-config", str(config),
                                           "--upgate-run-dir", str(run_dir), "-rs", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED  # nothing configured: nothing gated, never a pass
    assert result.parseoutcomes()["deselected"] >= 30
    result.stdout.fnmatch_lines(["*upgate: not gated*", "database * gate(s); to gate it: [[]database[]] url or DATABASE_URL",
                                 "models * gate(s); to gate it: [[][[]models[]][]]*"])
    assert "monitoring.redis" not in result.stdout.str()  # its parent "monitoring" is listed instead
    data = json.loads((run_dir / "gates-pre.json").read_text())
    assert data["gates"] == [] and data["counts"] == {}
    assert {"database", "app", "migrate", "models", "performance", "monitoring", "hosts", "compat",
            "contract"} <= set(data["not_gated"])
    assert data["not_gated"]["models"]["gates"] >= 9


def test_every_shipped_gate_declares_known_families(pytester: pytest.Pytester) -> None:
    from upgate.plugin.families import FAMILIES

    pytester.makepyfile(familyprobe='''
import json, pathlib
def pytest_collection_modifyitems(config, items):
    out = {i.nodeid: list(m.args) if (m := i.get_closest_marker("upgate_component")) else None for i in items}
    pathlib.Path("families.json").write_text(json.dumps(out))
''')
    result = pytester.runpytest_subprocess(str(GATES), "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "familyprobe",
                                           "--import-mode=importlib", "--rootdir", str(pytester.path))
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-2000:]
    found = json.loads((pytester.path / "families.json").read_text())
    assert len(found) > 80
    assert not [n for n, names in found.items() if not names], "gates without @pytest.mark.upgate_component"
    assert not {name for names in found.values() for name in names} - set(FAMILIES)


def test_a_gate_naming_an_unknown_family_fails_naming_it(pytester: pytest.Pytester) -> None:
    config = pytester.path / "upgate.toml"
    config.write_text('[target]\nname = "x"\n')
    pytester.makepyfile(test_mine='''
import pytest
@pytest.mark.upgate_component("databse")
def test_typo():
    pass
''')
    result = pytester.runpytest_subprocess("--upgate-config", str(config), "--upgate-run-dir", str(pytester.path / "r"))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*unknown gate family 'databse'*known: app, compat*"])


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
    assert "test_app_metrics_parse_with_required_names" not in gates  # [monitoring] unset: not gated, not a test
    assert "monitoring" in json.loads((run_dir / "gates-pre.json").read_text())["not_gated"]
    ready = gates["test_app_is_ready"]
    assert ready["outcome"] == "skipped" and "ready_path unset" in ready["message"]
    assert gates["test_app_is_alive"]["outcome"] == "failed"  # configured and unreachable: a failure, not a skip
    assert result.ret == pytest.ExitCode.TESTS_FAILED

"""`upgate run` and `upgate rollback` on an app upgraded by `[packages]` and `[config]` (tests/e2e/packaged_app.py),
each outcome checked by the test itself: `pip freeze --all` of the app's venv, the config files' bytes.

Every record a good run journals is a kill -9 point (as in test_rollback_command.py): the run dies right
after it, `upgate rollback` runs, and the venv and the files must be as before. Before the first package
is installed nothing is touched (10); from then on it is undone (20).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.packaged_app import BAD, GOOD, build_venv, installed, make_app
from tests.e2e.support import upgate
from tests.e2e.test_rollback_command import rollback_record, run_killed_at

pytestmark = [pytest.mark.e2e, pytest.mark.pypi]

# Every record of a good run, in order: (step, event, occurrence, expected exit of `upgate rollback`).
GOOD_RUN = [
    ("run", "start", 1, 10), ("pre-gates", "start", 1, 10), ("pre-gates", "end", 1, 10),
    ("packages backup", "start", 1, 10), ("packages", "saved", 1, 10), ("packages backup", "end", 1, 10),
    ("config backup", "start", 1, 10), ("config", "backed-up", 1, 10), ("config backup", "end", 1, 10),
    ("packages", "start", 1, 10), ("packages", "installing", 1, 20), ("packages", "installed", 1, 20),
    ("packages", "end", 1, 20), ("config", "start", 1, 20), ("config", "writing", 1, 20),
    ("config", "written", 1, 20), ("config", "writing", 2, 20), ("config", "written", 2, 20),
    ("config", "end", 1, 20), ("post-gates", "start", 1, 20), ("post-gates", "end", 1, 20), ("run", "end", 1, 20),
]


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One venv for the module: every test leaves it as it found it (that is what each one asserts)."""
    return build_venv(tmp_path_factory.mktemp("packaged") / "venv")


@pytest.fixture
def base_set(venv_python: Path) -> list[str]:
    found = installed(venv_python)
    assert "six==1.16.0" in found and "packaging==21.3" in found, f"an earlier test left the venv changed: {found}"
    return found


@pytest.mark.slow  # the long tier (make test-slow): make test keeps the step's upgrade and offline undo (tests/integration/test_packages_and_config_steps.py)
def test_good_upgrade(venv_python, base_set, tmp_path):
    app = make_app(tmp_path / "app", venv_python, GOOD)
    proc = upgate("run", "--config", str(app.config), "--reports", str(tmp_path / "reports"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pre-gates, package upgrade, config migration and post-gates passed" in proc.stdout
    assert installed(venv_python) == sorted(["six==1.17.0" if p == "six==1.16.0" else p for p in base_set])
    assert json.loads((app.folder / "service.json").read_text())["database"] == {"url": "postgresql://app@db/app"}
    journal = next((tmp_path / "reports" / "runs").glob("*/journal.jsonl")).read_text().splitlines()
    assert [(r["step"], r["event"]) for r in map(json.loads, journal)] == [(s, e) for s, e, _, _ in GOOD_RUN], \
        "GOOD_RUN no longer lists every record of a good run: the kill -9 test would miss a point"
    # `upgate rollback` of the upgraded run, from its journal alone: the old set, offline, and the old bytes.
    before_files = make_app(tmp_path / "pristine", venv_python, GOOD).digests()
    undo = upgate("rollback", "--config", str(app.config), "--reports", str(tmp_path / "reports"), cwd=tmp_path)
    assert undo.returncode == 20, undo.stdout + undo.stderr
    assert installed(venv_python) == base_set
    assert app.digests() == before_files


def test_candidate_that_breaks_the_apps_tests_is_rolled_back(venv_python, base_set, tmp_path):
    app = make_app(tmp_path / "app", venv_python, BAD)
    before = app.digests()
    proc = upgate("run", "--config", str(app.config), "--reports", str(tmp_path / "reports"), cwd=tmp_path)
    assert proc.returncode == 20, proc.stdout + proc.stderr
    assert "cannot import name 'LegacyVersion'" in proc.stdout
    assert installed(venv_python) == base_set
    assert app.digests() == before
    summary = json.loads(next((tmp_path / "reports" / "runs").glob("*/summary.json")).read_text())
    assert [r["rung"] for r in summary["rollback"]["ladder"]] == ["restore config files", "reinstall previous packages"]
    assert summary["packages"]["changes"]["changed"] == ["packaging 21.3 -> 24.1"]


@pytest.mark.slow
@pytest.mark.parametrize(("step", "event", "nth", "expected"), GOOD_RUN,
                         ids=[f"{s}:{e}:{n}" for s, e, n, _ in GOOD_RUN])
def test_run_killed_at_each_journal_point_is_undone(venv_python, base_set, tmp_path, step, event, nth, expected):
    app = make_app(tmp_path / "app", venv_python, GOOD)
    before = app.digests()
    run = run_killed_at(app.config, tmp_path / "reports", (step, event, nth), tmp_path)
    result = upgate("rollback", "--config", str(app.config), "--run", str(run), cwd=tmp_path)
    assert result.returncode == expected, result.stdout + result.stderr
    if expected == 10:
        assert "nothing to undo" in result.stdout
    else:
        assert rollback_record(run)["rollback"]["verified"] is True  # the run may have written its summary
    assert installed(venv_python) == base_set
    assert app.digests() == before

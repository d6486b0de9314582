"""The packages and config steps on a real venv (real packages from PyPI) and real files: prepare touches
nothing, do upgrades, undo (rebuilt from the journal alone) brings back exactly what was there, offline."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.e2e.packaged_app import BAD, build_venv, installed, make_app
from upgate.config import load_config
from upgate.core.journal import Journal
from upgate.core.runs import RunDir
from upgate.errors import StepFailed
from upgate.fixtures.reference import free_port
from upgate.steps import build_steps, steps_from_journal
from upgate.steps.base import StepContext
from upgate.steps.config import ConfigStep
from upgate.steps.packages import PackagesStep


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_venv(tmp_path_factory.mktemp("packaged") / "venv")


# The config step never runs the app's interpreter: its tests name this one and build no venv (a module
# fixture is built again on every xdist worker that runs one of the module's tests).
THIS_PYTHON = Path(sys.executable)


def context(config_path: Path) -> StepContext:
    config = load_config(config_path, environ={})
    run = RunDir.create(config_path.parent / "reports")
    return StepContext(config, run, Journal(run.journal))


def events(ctx: StepContext, step: str) -> list[str]:
    return [r["event"] for r in Journal(ctx.run.journal).read() if r["step"] == step]


def test_packages_upgrade_then_offline_undo_from_the_journal(venv_python, tmp_path, monkeypatch):
    app = make_app(tmp_path / "app", venv_python, [*BAD, "idna==3.7"])
    ctx = context(app.config)
    before = installed(venv_python)
    step = PackagesStep(ctx.config)
    step.prepare(ctx)
    assert installed(venv_python) == before, "prepare changed the environment"
    wheels = list((ctx.run.path / "packages" / "wheels").glob("*.whl"))
    assert {w.name.split("-")[0].lower() for w in wheels} >= {"six", "packaging", "pip"}
    step.do(ctx)
    after = installed(venv_python)
    assert "packaging==24.1" in after and "idna==3.7" in after
    # No network from here on: a proxy that refuses everything, no index, no find-links but the run's.
    dead = f"http://127.0.0.1:{free_port()}"
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, dead)
    monkeypatch.setenv("PIP_INDEX_URL", dead + "/simple")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    rebuilt = steps_from_journal(ctx.config, Journal(ctx.run.journal).read(), ctx)
    assert [type(s) for s in rebuilt] == [PackagesStep]
    rebuilt[0].undo(ctx)
    assert installed(venv_python) == before
    assert events(ctx, "packages") == ["saved", "installing", "installed", "reinstalling", "reinstalled"]
    assert steps_from_journal(ctx.config, Journal(ctx.run.journal).read(), ctx) == [], "undone twice"


def test_a_package_that_cannot_be_saved_blocks_before_anything_changes(venv_python, tmp_path, monkeypatch):
    app = make_app(tmp_path / "app", venv_python, BAD)
    ctx = context(app.config)
    before = installed(venv_python)
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{free_port()}/simple")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(StepFailed, match="pip wheel failed"):
        PackagesStep(ctx.config).prepare(ctx)
    assert installed(venv_python) == before


def test_config_step_writes_the_migration_and_undoes_to_the_exact_bytes(tmp_path):
    app = make_app(tmp_path / "app", THIS_PYTHON, BAD)
    ctx = context(app.config)
    before = {p: p.read_bytes() for p in app.files}
    step = next(s for s in build_steps(ctx.config) if isinstance(s, ConfigStep))
    step.prepare(ctx)
    assert {p: p.read_bytes() for p in app.files} == before, "prepare changed a file"
    step.do(ctx)
    service = json.loads((app.folder / "service.json").read_text())
    assert service["database"] == {"url": "postgresql://app@db/app"} and service["ai_models"][0]["timeout"] == 30
    env = (app.folder / ".env").read_text()
    assert env == "# app settings\nexport DATABASE_URL=postgresql://app:s3cret@db/app\nLOG_LEVEL=info\n"
    records = Journal(ctx.run.journal).read()
    assert "s3cret" not in ctx.run.journal.read_text(), "a secret value reached the journal"
    rebuilt = next(s for s in steps_from_journal(ctx.config, records, ctx) if isinstance(s, ConfigStep))
    rebuilt.undo(ctx)
    assert {p: p.read_bytes() for p in app.files} == before
    assert events(ctx, "config") == ["backed-up", "writing", "written", "writing", "written", "restored", "restored",
                                     "undone"]


def test_config_change_that_would_not_validate_blocks_in_prepare(tmp_path):
    app = make_app(tmp_path / "app", THIS_PYTHON, BAD)
    (app.folder / "migrate-rules.toml").write_text('[validate]\nrequired = ["database.url"]\n')
    ctx = context(app.config)
    before = (app.folder / "service.json").read_bytes()
    with pytest.raises(StepFailed, match="would not validate: service.json: 1 problem: missing required key "
                                         "database.url"):
        ConfigStep(ctx.config).prepare(ctx)
    assert (app.folder / "service.json").read_bytes() == before


def test_a_file_edited_after_its_backup_is_not_overwritten(tmp_path):
    app = make_app(tmp_path / "app", THIS_PYTHON, BAD)
    ctx = context(app.config)
    step = ConfigStep(ctx.config)
    step.prepare(ctx)
    (app.folder / "service.json").write_text('{"database": {"url": "edited by hand"}}\n')
    with pytest.raises(StepFailed, match="changed since it was backed up"):
        step.do(ctx)
    assert json.loads((app.folder / "service.json").read_text())["database"]["url"] == "edited by hand"

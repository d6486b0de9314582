"""The packages and config steps rebuilt from a journal alone: touched only from their first change on,
undone only once, and in run order with the other steps (what the ladder reverses)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from upgate.config import load_config
from upgate.core.journal import Journal
from upgate.core.runs import RunDir
from upgate.steps import build_steps, steps_from_journal
from upgate.steps.base import StepContext
from upgate.steps.config import ConfigStep
from upgate.steps.packages import PackagesStep


@pytest.fixture
def config(tmp_path: Path):
    (tmp_path / "service.json").write_text('{"database": {"connection_string": "x"}}\n')
    (tmp_path / "rules.toml").write_text('[[rule]]\nkind = "rename"\nfrom = "database.connection_string"\n'
                                         'to = "database.url"\n')
    (tmp_path / ".env").write_text("DB_URL=x\n")
    path = tmp_path / "upgate.toml"
    path.write_text('[target]\nname = "svc"\n[database]\nurl = "postgresql://u:pw@h/db"\n[migrate]\n'
                    'kind = "command"\nup = ["true"]\n[packages]\npython = "venv/bin/python"\n'
                    'install = ["six==1.17.0"]\n[[config.files]]\npath = "service.json"\nrules = "rules.toml"\n'
                    '[[config.env]]\npath = ".env"\nrename = { DB_URL = "DATABASE_URL" }\n')
    return load_config(path, environ={})


@pytest.fixture
def ctx(config, tmp_path: Path) -> StepContext:
    run = RunDir(tmp_path / "run")
    return StepContext(config, run, Journal(run.journal))


def rec(step: str, event: str, **detail: Any) -> dict[str, Any]:
    return {"ts": "t", "step": step, "event": event, **detail}


SAVED = rec("packages", "saved", installed={"python": "p", "pins": ["six==1.16.0"], "editable": []},
            wheels="/w", pins="/w/installed.txt", wheel_count=1)
BACKED_UP = rec("config", "backed-up", files=[
    {"path": "/a/service.json", "backup": "/r/1-service.json", "new": "/r/1-service.json.new",
     "sha256_before": "b", "sha256_after": "a", "changes": ["renamed x -> y"]}])


def test_they_run_after_the_backup_and_before_the_migration(config):
    plans = {s.name: s.plan() for s in build_steps(config)}
    assert list(plans) == ["backup", "packages", "config", "migrate"]
    assert plans["packages"].does[1] == "pip install six==1.17.0"
    assert "--no-index" in plans["packages"].undo[0]
    assert plans["config"].does[1].endswith(".env: rename DB_URL -> DATABASE_URL")


def test_saved_and_backed_up_but_nothing_written_touched_nothing(config, ctx):
    records = [SAVED, BACKED_UP, rec("packages", "start"), rec("config", "start")]
    assert steps_from_journal(config, records, ctx) == []


def test_from_the_first_install_or_write_they_are_undone_in_run_order(config, ctx):
    records = [SAVED, BACKED_UP, rec("packages", "start"), rec("packages", "installing", args=["six==1.17.0"]),
               rec("packages", "end"), rec("config", "start"), rec("config", "writing", path="/a/service.json")]
    steps = steps_from_journal(config, records, ctx)
    assert [type(s) for s in steps] == [PackagesStep, ConfigStep]
    packages, config_step = steps
    assert isinstance(packages, PackagesStep) and packages.saved and packages.saved["wheels"] == "/w"
    assert isinstance(config_step, ConfigStep) and config_step.written == ["/a/service.json"]


def test_once_undone_there_is_nothing_left(config, ctx):
    records = [SAVED, BACKED_UP, rec("packages", "installing"), rec("config", "writing", path="/a/service.json"),
               rec("config", "restored", path="/a/service.json"), rec("config", "undone", files=1),
               rec("packages", "reinstalling"), rec("packages", "reinstalled", count=1)]
    assert steps_from_journal(config, records, ctx) == []

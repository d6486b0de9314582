"""The real-app scenarios and their plans, without starting anything: names, templates, target records."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from upgate.config import load_config
from upgate.errors import Verdict
from upgate.fixtures.realapps import SCENARIOS, is_realapp
from upgate.fixtures.realapps.targets import (
    BUILDS,
    HIDDEN_MIGRATION,
    PLANS,
    RealAppTarget,
    load_target,
    render_plan,
)

# Every placeholder start_target fills in, with stand-in values.
VALUES = {
    "folder": "/srv/t", "database_url": "postgresql://u@/db?host=/tmp/s", "bin_dir": "/usr/lib/postgresql/16/bin",
    "base_url": "http://127.0.0.1:8080", "port": "8080", "pidfile": "/srv/t/app.pid", "realapps": "/srv/realapps",
    "old_python": "/v2/bin/python", "new_python": "/v5/bin/python", "new_bin": "/v5/bin",
    "optuna_app": "/srv/realapps/optuna_app.py", "pg8000_url": "postgresql+pg8000://u@/db?host=/tmp/s",
    "python": "/dj/bin/python", "new_release": "/srv/t/releases/v2", "new_build": "v2", "old_build": "v1",
    "escape_pidfile": "/srv/t/escaped.pids", "old_command": '"/g/bin/gunicorn", "app:v1"',
    "new_command": '"/g/bin/gunicorn", "app:v2"',
}


def test_scenarios_are_named_after_the_app_and_end_in_good_exactly_when_they_pass() -> None:
    assert set(SCENARIOS) == set(BUILDS)
    for name, scenario in SCENARIOS.items():
        assert is_realapp(name)
        assert name.endswith("-good") == (scenario.expect == Verdict.UPGRADED), name
        assert (PLANS / name / "upgate.toml.in").exists()
    assert not is_realapp("good") and not is_realapp("model-good")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_plan_renders_to_toml_and_loads(scenario: str, tmp_path: Path) -> None:
    config = render_plan(scenario, tmp_path, VALUES)
    data = tomllib.loads(config.read_text())
    assert data["target"]["name"] and data["deploy"]["kind"] == "process"
    if "migrate" in data:
        assert data["migrate"]["kind"] == "command" and "{database_url}" in str(data["migrate"])
    loaded = load_config(config, environ={})
    assert not loaded.gates.extra_pytest_args, "a real-app plan runs every gate"


@pytest.mark.parametrize("scenario", sorted(s for s in SCENARIOS if (PLANS / s / HIDDEN_MIGRATION).exists()))
def test_hidden_migration_wiring_has_no_migrate_step(scenario: str, tmp_path: Path) -> None:
    config = load_config(render_plan(scenario, tmp_path, VALUES, HIDDEN_MIGRATION), environ={})
    assert config.migrate is None and config.deploy is not None and config.deploy.kind == "command"
    assert "storage upgrade" in (config.deploy.deploy_command or "")


def test_target_record_round_trips(tmp_path: Path) -> None:
    target = RealAppTarget("gunicorn-deploy-good", tmp_path, None, "http://127.0.0.1:1", 1, tmp_path / "a.pid",
                           tmp_path / "upgate.toml", escape_pidfile=tmp_path / "e.pids", written={"seed": "x"})
    target.save()
    assert load_target(tmp_path) == target
    with pytest.raises(FileNotFoundError, match="not a folder made by start_target"):
        load_target(tmp_path / "elsewhere")

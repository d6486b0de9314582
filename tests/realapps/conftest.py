"""Real apps from PyPI: their venvs (built once, cached; skipped with the reason when PyPI is unreachable)
and started targets (`@pytest.mark.parametrize("realapp", ["optuna-upgrade-good"], indirect=True)`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.realapps.support import need_venv
from upgate.embedded.postgres import PostgresServer
from upgate.fixtures.realapps.targets import RealAppTarget, start_target, stop_target


@pytest.fixture(scope="session")
def venv() -> Callable[[str], Path]:
    """venv("optuna-2"): the app's venv folder, or a skip naming why PyPI could not be reached."""
    return need_venv


_NEEDS = {"optuna": ("optuna-2", "optuna-5"), "django": ("django",), "gunicorn": ("gunicorn",)}


@pytest.fixture
def realapp(request: pytest.FixtureRequest, pg_server: PostgresServer, tmp_path: Path) -> Iterator[RealAppTarget]:
    """A started real-app target for the scenario in request.param, stopped (by pid) afterwards."""
    scenario: str = request.param
    for name in _NEEDS[scenario.split("-", 1)[0]]:
        need_venv(name)
    target = start_target(scenario, pg_server, tmp_path / "target")
    try:
        yield target
    finally:
        stop_target(target, pg_server)

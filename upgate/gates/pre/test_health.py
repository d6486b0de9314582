"""Pre-gate: every configured component answers before anything is touched."""

from __future__ import annotations

import pytest

from upgate.checks.health import check_database, probe_http

pytestmark = pytest.mark.upgate_component("app")


@pytest.mark.upgate_component("database")
def test_database_answers(db_url, config, evidence):
    result = check_database(db_url, timeout_s=config.database.connect_timeout_s)
    evidence("database", result)
    assert result.ok, result.summary


def test_app_is_alive(app, evidence):
    result = probe_http(app.url(app.health_path), timeout_s=app.timeout_s)
    evidence("health", result)
    assert result.ok, result.summary


def test_app_is_ready(app, evidence):
    if app.ready_path == app.health_path:
        pytest.skip("no readiness endpoint of its own ([app] ready_path unset): test_app_is_alive covers it")
    result = probe_http(app.url(app.ready_path), timeout_s=app.timeout_s)
    evidence("ready", result)
    assert result.ok, result.summary

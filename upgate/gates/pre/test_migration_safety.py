"""Pre-gate: the plan's migrations pass squawk's lint, and no file holds an ACCESS EXCLUSIVE lock longer
than the plan's lock budget (estimated by timing each statement on a sampled clone on this server)."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import psycopg
import pytest

from upgate.checks.migration_safety import describe_statements, estimate_lock_holds, lint_migrations

pytestmark = pytest.mark.upgate_component("database")


@pytest.fixture(scope="session")
def squawk(config) -> str:
    if not config.migration_safety.squawk:
        pytest.skip("squawk lint not configured (migration_safety.squawk = false)")
    beside = Path(sys.executable).with_name("squawk")
    found = str(beside) if beside.exists() else shutil.which("squawk")
    if not found:
        pytest.fail("squawk not found beside the interpreter or on PATH: pip install squawk-cli", pytrace=False)
    return found


def _server_version(config) -> str | None:
    if not config.database.url:
        return None
    try:
        with psycopg.connect(config.database.url, connect_timeout=int(config.database.connect_timeout_s)) as conn:
            number = conn.info.server_version  # e.g. 160004
    except psycopg.Error:
        return None
    return f"{number // 10000}.{number % 100}"


def test_no_long_access_exclusive_lock(db_url, migrations, config, pg_tools, baseline_dir, evidence):
    safety = config.migration_safety
    estimate = estimate_lock_holds(db_url, migrations, pg_tools("pg_dump"), psql=pg_tools("psql"),
                                   budget_s=safety.lock_budget_s, sample_rows=safety.sample_rows)
    evidence("lock holds", estimate.result)
    evidence("statements", describe_statements(estimate.statements))
    (baseline_dir / "lock_estimate.json").write_text(
        json.dumps(estimate.result.to_json(), indent=2, default=str) + "\n", encoding="utf-8")
    for text in estimate.result.warnings:
        warnings.warn(text, UserWarning, stacklevel=1)
    assert estimate.result.ok, estimate.result.summary


def test_migrations_pass_squawk(migrations, squawk, config, evidence):
    safety = config.migration_safety
    files = [m.up for m in migrations] + [m.down for m in migrations if m.down]
    result = lint_migrations(files, squawk, _server_version(config), fail_rules=safety.squawk_fail,
                             ignore_rules=safety.squawk_ignore)
    evidence("squawk", result)
    for text in result.warnings:
        warnings.warn(text, UserWarning, stacklevel=1)
    assert result.ok, result.summary

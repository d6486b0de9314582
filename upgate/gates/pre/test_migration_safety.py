"""Pre-gate: the plan's SQL passes squawk's lint, and no unit holds an ACCESS EXCLUSIVE lock longer than the
plan's lock budget (watched in pg_locks while the rehearsal ran it on a sampled clone, scaled to live rows)."""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import psycopg
import pytest

from upgate.checks.migration_safety import lint_migrations
from upgate.checks.rehearsal import judge_lock_holds

pytestmark = pytest.mark.upgate_component("migrate", "database")


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


def test_no_long_access_exclusive_lock(rehearsal, config, run_dir, evidence):
    result = judge_lock_holds(rehearsal, config.migration_safety.lock_budget_s)
    evidence("lock holds", result)
    run_dir.save_baseline("lock_estimate", result.to_json())
    for text in result.warnings:
        warnings.warn(text, UserWarning, stacklevel=1)
    assert result.ok, result.summary


@pytest.mark.upgate_component("migrate.lint")
def test_migrations_pass_squawk(migrations, squawk, config, evidence):
    safety = config.migration_safety
    files = [m.up for m in migrations] + [m.down for m in migrations if m.down]
    result = lint_migrations(files, squawk, _server_version(config), fail_rules=safety.squawk_fail,
                             ignore_rules=safety.squawk_ignore)
    evidence("squawk", result)
    for text in result.warnings:
        warnings.warn(text, UserWarning, stacklevel=1)
    assert result.ok, result.summary

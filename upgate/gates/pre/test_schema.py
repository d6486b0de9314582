"""Pre-gate: the plan's migrations, rehearsed on a schema-only clone, are reversible and not destructive."""

from __future__ import annotations

import warnings

import psycopg
import pytest

from upgate.checks.schema import snapshot_schema

pytestmark = pytest.mark.upgate_component("database")


def test_schema_snapshot_recorded(db_url, run_dir, evidence):
    with psycopg.connect(db_url) as conn:
        snapshot = snapshot_schema(conn)
    run_dir.save_baseline("schema", snapshot.to_json())
    evidence("schema", {"tables": sorted(snapshot.tables)})
    assert snapshot.tables, "the database has no table in the gated schemas: nothing to protect, check [database] url"


def _problems(dry_run, destructive: bool) -> list[str]:
    found = dry_run.result.evidence.get("problems", [])
    return [p for p in found if p.startswith("destructive change") == destructive]


def test_migration_rehearsal_is_reversible(dry_run, evidence):
    """Up, down, up on a schema-only clone: down restores the original, the second up equals the first."""
    evidence("dry run", dry_run.result)
    problems = _problems(dry_run, destructive=False)
    assert not problems, "; ".join(problems)


def test_no_unallowed_destructive_change(dry_run):
    problems = _problems(dry_run, destructive=True)
    assert not dry_run.destructive and not problems, "; ".join(problems) or ", ".join(dry_run.destructive)


def test_data_rewrites_reported(dry_run, evidence):
    """Statements that rewrite data pass with a warning: the integrity gate is what proves them."""
    evidence("data rewrites", {"warnings": list(dry_run.warnings)})
    for text in dry_run.warnings:
        warnings.warn(text, UserWarning, stacklevel=1)

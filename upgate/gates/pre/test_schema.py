"""Pre-gate: the plan's migration, rehearsed on a sampled clone by its own tool, is not destructive, and
reversible where it has a down (where it has none, the plan says its rollback is the restore)."""

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


def _problems(rehearsal, destructive: bool) -> list[str]:
    found = rehearsal.result.evidence.get("problems", [])
    return [p for p in found if p.startswith("destructive change") == destructive]


@pytest.mark.upgate_component("migrate", "database")
def test_migration_rehearsal_is_reversible(rehearsal, evidence):
    """Up (and, where every unit has a down: down restores the original schema, up again equals the first up)."""
    evidence("rehearsal", rehearsal.result)
    problems = _problems(rehearsal, destructive=False)
    assert not problems, "; ".join(problems)
    if rehearsal.missing_down:
        warnings.warn(f"no down for {', '.join(rehearsal.missing_down)}: the rollback restores the verified backup",
                      UserWarning, stacklevel=1)


@pytest.mark.upgate_component("migrate", "database")
def test_no_unallowed_destructive_change(rehearsal):
    problems = _problems(rehearsal, destructive=True)
    assert not rehearsal.destructive and not problems, "; ".join(problems) or ", ".join(rehearsal.destructive)


@pytest.mark.upgate_component("migrate", "database")
def test_data_rewrites_reported(rehearsal, evidence):
    """Statements that rewrite data pass with a warning: the integrity gate is what proves them."""
    evidence("data rewrites", {"warnings": list(rehearsal.warnings)})
    for text in rehearsal.warnings:
        warnings.warn(text, UserWarning, stacklevel=1)

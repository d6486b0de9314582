"""Post-gate: the live schema is the one the rehearsal's up produced (after a rollback: the original one)."""

from __future__ import annotations

import psycopg
import pytest

from upgate.checks.schema import SchemaSnapshot, diff_schemas, snapshot_schema

pytestmark = pytest.mark.upgate_component("database")


@pytest.fixture(scope="session")
def expected_schema(phase, run_dir, config):
    if phase == "rollback" or config.migrate is None:
        snapshot = run_dir.load_baseline("schema")
        if snapshot is None:
            pytest.fail(f"{run_dir.baseline_file('schema')}: no baseline schema snapshot; run the pre gates first",
                        pytrace=False)
        return SchemaSnapshot.from_json(snapshot)
    rehearsal = run_dir.load_baseline("rehearsal")
    if rehearsal is None:
        pytest.fail(f"{run_dir.baseline_file('rehearsal')}: no rehearsal record; run the pre gates first",
                    pytrace=False)
    if rehearsal.get("after_up") is None:
        pytest.fail("the pre-gates' rehearsal never completed its up leg: nothing to compare with", pytrace=False)
    return SchemaSnapshot.from_json(rehearsal["after_up"])


def test_schema_matches_expected(db_url, expected_schema, phase, evidence):
    with psycopg.connect(db_url) as conn:
        live = snapshot_schema(conn, expected_schema.schemas)
    diff = diff_schemas(expected_schema, live)
    what = "the baseline schema" if phase == "rollback" else "the schema the migration rehearsal produced"
    evidence("schema diff", {"expected": what, "diff": diff.describe(), "empty": diff.is_empty})
    assert diff.is_empty, f"live schema differs from {what}: {diff.describe()}"

"""Post-gate: the live schema is the one the rehearsal produced (after a rollback: the original one)."""

from __future__ import annotations

import json

import psycopg
import pytest

from upgate.checks.schema import SchemaSnapshot, diff_schemas, snapshot_schema

pytestmark = pytest.mark.upgate_component("database")


@pytest.fixture(scope="session")
def expected_schema(phase, baseline_dir, config):
    if phase == "rollback" or config.migrate is None:
        path = baseline_dir / "schema.json"
        if not path.exists():
            pytest.fail(f"{path}: no baseline schema snapshot; run the pre gates first", pytrace=False)
        return SchemaSnapshot.from_json(json.loads(path.read_text()))
    path = baseline_dir / "dryrun.json"
    if not path.exists():
        pytest.fail(f"{path}: no dry-run record; run the pre gates first", pytrace=False)
    return SchemaSnapshot.from_json(json.loads(path.read_text())["after_up"])


def test_schema_matches_expected(db_url, expected_schema, phase, evidence):
    with psycopg.connect(db_url) as conn:
        live = snapshot_schema(conn)
    diff = diff_schemas(expected_schema, live)
    what = "the baseline schema" if phase == "rollback" else "the schema the migration rehearsal produced"
    evidence("schema diff", {"expected": what, "diff": diff.describe(), "empty": diff.is_empty})
    assert diff.is_empty, f"live schema differs from {what}: {diff.describe()}"

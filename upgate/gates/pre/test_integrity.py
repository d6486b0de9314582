"""Pre-gate: row-level fingerprints of every gated table, the baseline zero-data-loss is proven against."""

from __future__ import annotations

import psycopg
import pytest

from upgate.checks.integrity import fingerprint_table, primary_key, table_columns

pytestmark = pytest.mark.upgate_component("database")


@pytest.fixture
def preserved_columns(request, config, db_url, gated_table):
    """Columns the migration keeps (from the dry run when a migration is planned), less those it may change."""
    with psycopg.connect(db_url) as conn:
        all_columns = [name for name, _type in table_columns(conn, gated_table)]
    if config.migrate is not None:
        dry_run = request.getfixturevalue("dry_run")
        kept = dry_run.preserved_columns.get(gated_table, dry_run.preserved_columns.get(f"public.{gated_table}"))
        if kept is not None:
            all_columns = [c for c in all_columns if c in kept]
    may_change = set(config.integrity.may_change.get(gated_table, []))
    return [c for c in all_columns if c not in may_change]


def test_fingerprint_baseline_captured(gated_table, db_url, config, preserved_columns, baseline_dir, evidence):
    with psycopg.connect(db_url) as conn:
        key = config.integrity.keys.get(gated_table) or primary_key(conn, gated_table)
    assert key, (f"{gated_table}: no primary key; name its key columns in integrity.keys "
                 f"(e.g. {gated_table} = [\"id\"])")
    fingerprint = fingerprint_table(db_url, gated_table, columns=preserved_columns, key=key,
                                    workers=config.integrity.workers)
    fingerprint.save(baseline_dir / "fingerprints")
    evidence("fingerprint", {"table": gated_table, "rows": fingerprint.count, "key": key,
                             "columns": preserved_columns, "seconds": round(fingerprint.elapsed_s, 3)})
    assert fingerprint.count >= 0

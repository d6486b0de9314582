"""Pre-gate: row-level fingerprints of every gated table, the baseline zero-data-loss is proven against.

Under `upgate run` with a live-traffic capture every table is read in the one baseline snapshot the run
holds (the backup dumps the same one), so each change after it is in the captured stream.
"""

from __future__ import annotations

import psycopg
import pytest

from upgate.checks.integrity import Fingerprint, fingerprint_table, table_columns
from upgate.checks.schema import type_widens

pytestmark = pytest.mark.upgate_component("database")


@pytest.fixture
def preserved(request, config, db_url, gated_table):
    """(columns the migration keeps, less those it may change; {column: type it will have} for retyped ones).

    A column the dry run retypes compatibly (integer -> bigint, varchar(n) -> text, timestamp -> timestamptz)
    is kept and hashed as its new type, so a value the migration did not change compares equal.
    """
    with psycopg.connect(db_url) as conn:
        columns = dict(table_columns(conn, gated_table))
    as_types: dict[str, str] = {}
    if config.migrate is not None:
        dry_run = request.getfixturevalue("dry_run")
        after = dry_run.after_up.tables if dry_run.after_up is not None else {}
        new = after.get(gated_table, after.get(f"public.{gated_table}"))
        if new is not None:
            kept = {c: new[c]["type"] for c in columns if c in new and type_widens(columns[c], new[c]["type"])}
            as_types = {c: t for c, t in kept.items() if t != columns[c]}
            columns = {c: t for c, t in columns.items() if c in kept}
    may_change = set(config.integrity.may_change.get(gated_table, []))
    return [c for c in columns if c not in may_change], as_types


@pytest.fixture(scope="session")
def baseline_snapshot(run_dir):
    """The exported snapshot a live capture holds for this run (None: each table read as it is now)."""
    state = run_dir.load_baseline("live")
    return state.get("snapshot") if state else None


def test_fingerprint_baseline_captured(gated_table, db_url, config, preserved, baseline_dir, evidence,
                                       baseline_snapshot):
    columns, as_types = preserved
    key = config.integrity.keys.get(gated_table)  # None: the primary key, or whole rows when there is none
    fingerprint = fingerprint_table(db_url, gated_table, columns=columns, key=key, workers=config.integrity.workers,
                                    as_types=as_types, snapshot=baseline_snapshot)
    fingerprint.save(baseline_dir / "fingerprints")
    evidence("fingerprint", {"table": gated_table, "rows": fingerprint.count, "key": fingerprint.key_columns,
                             "key_kind": fingerprint.key_kind, "columns": columns, "hashed_as": as_types,
                             "seconds": round(fingerprint.elapsed_s, 3), "snapshot": baseline_snapshot})
    saved = Fingerprint.load(baseline_dir / "fingerprints", gated_table)
    assert saved.count == fingerprint.count and saved.key_kind == fingerprint.key_kind, (
        f"{gated_table}: the saved fingerprint does not read back ({saved.count} of {fingerprint.count} rows)")

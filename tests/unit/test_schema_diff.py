"""Diffs and destructive-change detection on hand-built snapshots (no database needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from upgate.checks.schema import (
    SchemaSnapshot,
    diff_schemas,
    find_destructive,
    preserved_columns,
    type_widens,
)


def col(type_: str, nullable: bool = True, default: str | None = None) -> dict[str, Any]:
    return {"type": type_, "nullable": nullable, "default": default}


BEFORE = SchemaSnapshot(
    tables={
        "episodic_logs": {
            "id": col("bigint", False, "nextval('episodic_logs_id_seq'::regclass)"),
            "prompt": col("text"),
            "metadata": col("jsonb"),
            "score": col("numeric(10,4)"),
        },
        "sessions": {"id": col("integer", False)},
    },
    indexes={
        "episodic_logs_pkey": "CREATE UNIQUE INDEX episodic_logs_pkey ON public.episodic_logs USING btree (id)"
    },
    constraints={"episodic_logs.episodic_logs_pkey": "PRIMARY KEY (id)"},
    sequences={
        "episodic_logs_id_seq": {
            "type": "bigint",
            "start": "1",
            "increment": "1",
            "min": "1",
            "max": "9223372036854775807",
            "cycle": False,
        }
    },
)


def evolve(**changes: Any) -> SchemaSnapshot:
    data = BEFORE.to_json()
    data.update(changes)
    return SchemaSnapshot.from_json(data)


def test_snapshot_round_trips_through_json() -> None:
    assert SchemaSnapshot.from_json(json.loads(json.dumps(BEFORE.to_json()))) == BEFORE


def test_column_order_does_not_matter() -> None:
    reordered = {t: dict(reversed(list(cols.items()))) for t, cols in BEFORE.tables.items()}
    after = evolve(tables=reordered)
    assert after == BEFORE
    assert diff_schemas(BEFORE, after).is_empty
    assert diff_schemas(BEFORE, after).describe() == "no schema changes"


def test_diff_names_added_dropped_and_changed_things() -> None:
    tables = BEFORE.to_json()["tables"]
    tables["episodic_logs"]["cache_hit"] = col("boolean", True, "false")
    del tables["episodic_logs"]["metadata"]
    tables["episodic_logs"]["score"] = col("real")
    del tables["sessions"]
    tables["audit"] = {"id": col("integer")}
    after = evolve(
        tables=tables, indexes={"episodic_logs_pkey": "CREATE UNIQUE INDEX x", "ix_new": "CREATE INDEX"}
    )
    diff = diff_schemas(BEFORE, after)
    assert diff.added_tables == ("audit",)
    assert diff.dropped_tables == ("sessions",)
    assert diff.added_columns == ("episodic_logs.cache_hit",)
    assert diff.dropped_columns == ("episodic_logs.metadata",)
    assert [c.column for c in diff.changed_columns] == ["episodic_logs.score"]
    assert diff.changed_columns[0].before["type"] == "numeric(10,4)"
    assert diff.changed_columns[0].after["type"] == "real"
    assert diff.added_indexes == ("ix_new",) and diff.changed_indexes == ("episodic_logs_pkey",)
    assert not diff.is_empty
    line = diff.describe()
    assert "\n" not in line
    assert "+table audit" in line and "-table sessions" in line
    assert "-column episodic_logs.metadata" in line
    assert "~column episodic_logs.score type numeric(10,4) -> real" in line
    json.dumps(diff.to_json())


def test_nullability_and_default_changes_are_described() -> None:
    tables = BEFORE.to_json()["tables"]
    tables["episodic_logs"]["prompt"] = col("text", False, "''::text")
    diff = diff_schemas(BEFORE, evolve(tables=tables))
    assert diff.describe() == "~column episodic_logs.prompt nullable true -> false, default none -> ''::text"
    assert find_destructive(BEFORE, evolve(tables=tables)) == []


def test_destructive_changes_are_dropped_tables_columns_and_narrowing() -> None:
    tables = BEFORE.to_json()["tables"]
    del tables["sessions"]
    del tables["episodic_logs"]["metadata"]
    tables["episodic_logs"]["score"] = col("numeric(6,2)")
    tables["episodic_logs"]["id"] = col("bigint", True)  # only nullability changed
    after = evolve(tables=tables)
    assert find_destructive(BEFORE, after) == ["sessions", "episodic_logs.metadata", "episodic_logs.score"]
    assert find_destructive(BEFORE, after, allowed=["public.sessions", "episodic_logs.metadata"]) == [
        "episodic_logs.score"
    ]
    assert (
        find_destructive(
            BEFORE, after, allowed=["sessions", "public.episodic_logs.metadata", "episodic_logs.score"]
        )
        == []
    )


def test_adding_columns_and_widening_is_not_destructive() -> None:
    tables = BEFORE.to_json()["tables"]
    tables["episodic_logs"]["cache_hit"] = col("boolean")
    tables["episodic_logs"]["score"] = col("numeric(14,6)")
    tables["sessions"]["id"] = col("bigint", False)
    assert find_destructive(BEFORE, evolve(tables=tables)) == []


@pytest.mark.parametrize(
    "before, after",
    [
        ("integer", "bigint"),
        ("smallint", "integer"),
        ("smallint", "bigint"),
        ("integer", "numeric"),
        ("integer", "numeric(12,2)"),
        ("integer", "double precision"),
        ("real", "double precision"),
        ("character varying(50)", "text"),
        ("character varying(50)", "character varying(80)"),
        ("character varying(50)", "character varying"),
        ("character(10)", "character varying(10)"),
        ("text", "character varying"),
        ("numeric(10,2)", "numeric(12,2)"),
        ("numeric(10,2)", "numeric(12,4)"),
        ("numeric(10,2)", "numeric"),
        ("date", "timestamp with time zone"),
        ("timestamp without time zone", "timestamp with time zone"),
        ("timestamp(3) with time zone", "timestamp with time zone"),
        ("integer[]", "bigint[]"),
        ("jsonb", "text"),
        ("uuid", "uuid"),
        ("public.mood", "public.mood"),
    ],
)
def test_widening(before: str, after: str) -> None:
    assert type_widens(before, after)


@pytest.mark.parametrize(
    "before, after",
    [
        ("bigint", "integer"),
        ("bigint", "smallint"),
        ("integer", "smallint"),
        ("bigint", "double precision"),
        ("integer", "real"),
        ("integer", "numeric(8,0)"),
        ("character varying(80)", "character varying(50)"),
        ("text", "character varying(255)"),
        ("character varying(10)", "character(10)"),
        ("numeric(10,2)", "numeric(8,2)"),
        ("numeric(10,4)", "numeric(10,2)"),
        ("numeric", "numeric(20,4)"),
        ("double precision", "real"),
        ("numeric(10,2)", "double precision"),
        ("timestamp with time zone", "date"),
        ("timestamp with time zone", "timestamp without time zone"),
        ("timestamp with time zone", "timestamp(0) with time zone"),
        ("bigint[]", "integer[]"),
        ("integer[]", "integer"),
        ("text", "integer"),
        ("json", "jsonb"),
        ("public.mood", "public.feeling"),
    ],
)
def test_narrowing(before: str, after: str) -> None:
    assert not type_widens(before, after)


def test_preserved_columns_keep_only_same_type_survivors() -> None:
    tables = BEFORE.to_json()["tables"]
    del tables["episodic_logs"]["metadata"]
    tables["episodic_logs"]["score"] = col("numeric(14,6)")
    tables["episodic_logs"]["cache_hit"] = col("boolean")
    del tables["sessions"]
    assert preserved_columns(BEFORE, evolve(tables=tables)) == {
        "episodic_logs": ["id", "prompt"],
        "sessions": [],
    }

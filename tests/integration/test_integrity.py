"""Row fingerprints on a real PostgreSQL: every kind of fault is found, by key."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest

from upgate.checks.integrity import (
    Fingerprint,
    compare_fingerprints,
    fingerprint_and_compare,
    fingerprint_table,
    list_tables,
    primary_key,
    table_columns,
)

ROWS = 5000


def run(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


@pytest.fixture
def logs_url(pg_url: str) -> str:
    """episodic_logs with ROWS rows spread over many pages."""
    run(
        pg_url,
        """CREATE TABLE episodic_logs (id BIGSERIAL PRIMARY KEY, session_id UUID, agent TEXT, role TEXT,
           content TEXT, metadata JSONB, tokens INTEGER, created_at TIMESTAMPTZ)""",
        f"""INSERT INTO episodic_logs (session_id, agent, role, content, metadata, tokens, created_at)
            SELECT md5((i / 20)::text)::uuid, 'agent_' || (i % 7), (ARRAY['user', 'assistant'])[1 + i % 2],
                   repeat(md5(i::text), 1 + i % 5), jsonb_build_object('turn', i % 50), i % 4000,
                   timestamptz '2026-01-01' + i * interval '1 second'
            FROM generate_series(1, {ROWS}) AS i""",
        "ANALYZE episodic_logs",
    )
    return pg_url


FAULTS = {
    "delete": ("DELETE FROM episodic_logs WHERE id = 17", "lost", 17),
    "insert": ("INSERT INTO episodic_logs (agent) VALUES ('intruder')", "added", ROWS + 1),
    "change": ("UPDATE episodic_logs SET tokens = tokens + 1 WHERE id = 42", "changed", 42),
    "shifted boundary": (
        "UPDATE episodic_logs SET agent = left(agent, -1), role = right(agent, 1) || role WHERE id = 99",
        "changed",
        99,
    ),
    "jsonb change": ("UPDATE episodic_logs SET metadata = '{\"turn\": -1}' WHERE id = 7", "changed", 7),
    "timestamp change": (
        "UPDATE episodic_logs SET created_at = created_at + interval '1 microsecond' WHERE id = 4999",
        "changed",
        4999,
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_is_found_with_its_key(logs_url: str, fault: str) -> None:
    statement, kind, key = FAULTS[fault]
    baseline = fingerprint_table(logs_url, "episodic_logs")
    run(logs_url, statement)
    result = fingerprint_and_compare(logs_url, baseline, allow_added=False)
    assert not result.ok
    assert result.evidence[kind] == {"count": 1, "first": [key]}, result.summary
    others = {"lost", "changed", "added"} - {kind}
    assert all(result.evidence[o]["count"] == 0 for o in others), result.summary


def test_shifted_boundary_keeps_the_concatenation(logs_url: str) -> None:
    with psycopg.connect(logs_url) as conn:
        before = conn.execute("SELECT agent || role FROM episodic_logs WHERE id = 99").fetchone()
        conn.execute(
            "UPDATE episodic_logs SET agent = left(agent, -1), role = right(agent, 1) || role WHERE id = 99"
        )
        after = conn.execute("SELECT agent || role FROM episodic_logs WHERE id = 99").fetchone()
    assert before == after


def test_identical_data_is_ok(logs_url: str) -> None:
    baseline = fingerprint_table(logs_url, "episodic_logs")
    result = fingerprint_and_compare(logs_url, baseline)
    assert result.ok, result.summary
    assert result.summary == f"episodic_logs: {ROWS} rows, 0 lost, 0 changed, 0 added"
    assert baseline.count == ROWS
    assert isinstance(baseline.keys, np.ndarray) and baseline.keys.dtype == np.int64
    assert baseline.columns == [
        "id",
        "session_id",
        "agent",
        "role",
        "content",
        "metadata",
        "tokens",
        "created_at",
    ]


def test_workers_give_the_same_fingerprint(logs_url: str) -> None:
    run(
        logs_url, "UPDATE episodic_logs SET tokens = tokens WHERE id % 3 = 0"
    )  # rows move: heap order != key order
    one = fingerprint_table(logs_url, "episodic_logs", workers=1)
    two = fingerprint_table(logs_url, "episodic_logs", workers=2)
    four = fingerprint_table(logs_url, "episodic_logs", workers=4)
    for other in (two, four):
        assert np.array_equal(np.asarray(one.keys), np.asarray(other.keys))
        assert np.array_equal(one.hashes, other.hashes)
    assert isinstance(two.keys, np.ndarray) and bool(np.all(np.diff(two.keys) > 0))


def test_only_the_given_columns_are_hashed(logs_url: str) -> None:
    baseline = fingerprint_table(logs_url, "episodic_logs", columns=["agent", "tokens"])
    run(logs_url, "UPDATE episodic_logs SET content = 'rewritten' WHERE id = 5")
    assert fingerprint_and_compare(logs_url, baseline).ok
    run(logs_url, "UPDATE episodic_logs SET tokens = -1 WHERE id = 5")
    assert fingerprint_and_compare(logs_url, baseline).evidence["changed"]["first"] == [5]


def test_dropped_column_fails_the_check_with_its_name(logs_url: str) -> None:
    baseline = fingerprint_table(logs_url, "episodic_logs")
    run(logs_url, "ALTER TABLE episodic_logs DROP COLUMN content")
    result = fingerprint_and_compare(logs_url, baseline)
    assert not result.ok
    assert "'content'" in result.summary


@pytest.mark.parametrize(
    ("column_type", "before", "after"),
    [
        ("json", """'{"a": 1}'""", """'{"a":1}'"""),
        ("numeric", "1.0", "1.00"),
        ("numeric[]", "ARRAY[1.0]", "ARRAY[1.00]"),
        ("text", "NULL", "''"),
        ("text", "''", "NULL"),
        ("interval", "'1 day'", "'24 hours'"),
        ("point", "'(1,2)'", "'(1,3)'"),
        ("box", "'(1,1),(0,0)'", "'(2,2),(0,0)'"),
        ("inet", "'10.0.0.1/24'", "'10.0.0.1/32'"),
        ("jsonb", """'{"a": "x"}'""", """'{"a": "y"}'"""),
    ],
)
def test_value_changes_invisible_to_equality_are_found(
    pg_url: str, column_type: str, before: str, after: str
) -> None:
    run(
        pg_url,
        f"CREATE TABLE t (id int PRIMARY KEY, v {column_type})",
        f"INSERT INTO t SELECT i, {before} FROM generate_series(1, 3) AS i",
    )
    baseline = fingerprint_table(pg_url, "t")
    assert fingerprint_and_compare(pg_url, baseline).ok
    run(pg_url, f"UPDATE t SET v = {after} WHERE id = 2")
    result = fingerprint_and_compare(pg_url, baseline)
    assert result.evidence["changed"] == {"count": 1, "first": [2]}, result.summary


def test_text_primary_key_fallback(pg_url: str) -> None:
    run(
        pg_url,
        "CREATE TABLE memories (slug text PRIMARY KEY, body text)",
        "INSERT INTO memories SELECT 'm' || i, md5(i::text) FROM generate_series(1, 500) AS i",
    )
    baseline = fingerprint_table(pg_url, "memories")
    assert baseline.count == 500 and isinstance(baseline.keys, list)
    run(
        pg_url,
        "DELETE FROM memories WHERE slug = 'm7'",
        "UPDATE memories SET body = 'x' WHERE slug = 'm8'",
        "INSERT INTO memories VALUES ('new', 'y')",
    )
    result = fingerprint_and_compare(pg_url, baseline)
    assert not result.ok
    assert result.evidence["lost"]["first"] == ["m7"]
    assert result.evidence["changed"]["first"] == ["m8"]
    assert result.evidence["added"]["first"] == ["new"]


def test_composite_key_fallback_in_another_schema(pg_url: str) -> None:
    run(
        pg_url,
        'CREATE SCHEMA "App"',
        'CREATE TABLE "App"."Facts" (tenant uuid, n int, "Odd Name" text, PRIMARY KEY (tenant, n))',
        """INSERT INTO "App"."Facts" SELECT md5((i % 3)::text)::uuid, i, 'v' || i FROM generate_series(1, 300) AS i""",
    )
    table = '"App"."Facts"'
    with psycopg.connect(pg_url) as conn:
        assert primary_key(conn, table) == ["tenant", "n"]
        assert table_columns(conn, table) == [("tenant", "uuid"), ("n", "integer"), ("Odd Name", "text")]
        assert list_tables(conn, "App") == [table]
    baseline = fingerprint_table(pg_url, table)
    run(pg_url, """UPDATE "App"."Facts" SET "Odd Name" = 'changed' WHERE n = 10""")
    result = fingerprint_and_compare(pg_url, baseline)
    tenant = str(uuid.UUID(hashlib.md5(b"1").hexdigest()))
    assert result.evidence["changed"] == {"count": 1, "first": [[tenant, "10"]]}, result.summary


def test_save_load_round_trip(logs_url: str, tmp_path: Path) -> None:
    baseline = fingerprint_table(logs_url, "episodic_logs")
    baseline.save(tmp_path)
    loaded = Fingerprint.load(tmp_path, "episodic_logs")
    assert loaded.columns == baseline.columns and loaded.key_columns == ["id"] and loaded.count == ROWS
    assert np.array_equal(np.asarray(loaded.keys), np.asarray(baseline.keys))
    run(logs_url, "DELETE FROM episodic_logs WHERE id = 3")
    assert fingerprint_and_compare(logs_url, loaded).evidence["lost"]["first"] == [3]


def test_listed_names_resolve_and_odd_names_round_trip(pg_url: str, tmp_path: Path) -> None:
    run(pg_url, 'CREATE TABLE "Odd Table" (id int PRIMARY KEY)', "CREATE TABLE plain (id int PRIMARY KEY)")
    with psycopg.connect(pg_url) as conn:
        tables = list_tables(conn)
    assert tables == ['"Odd Table"', "plain"]
    fingerprint_table(pg_url, tables[0]).save(tmp_path)
    stem = next(tmp_path.glob("*.json")).stem
    assert Fingerprint.load(tmp_path, stem).table == '"Odd Table"'


def test_empty_table(pg_url: str) -> None:
    run(pg_url, "CREATE TABLE t (id bigint PRIMARY KEY, v text)")
    baseline = fingerprint_table(pg_url, "t")
    assert baseline.count == 0 and len(baseline.keys) == 0
    assert compare_fingerprints(baseline, fingerprint_table(pg_url, "t")).ok
    run(pg_url, "INSERT INTO t VALUES (1, 'a')")
    result = fingerprint_and_compare(pg_url, baseline)
    assert result.ok and result.evidence["added"]["first"] == [1]


def test_missing_table_and_missing_key_are_explained(pg_url: str) -> None:
    with pytest.raises(ValueError, match="not found"):
        fingerprint_table(pg_url, "nope")
    run(pg_url, "CREATE TABLE heap (v text)")
    with pytest.raises(ValueError, match="no primary key"):
        fingerprint_table(pg_url, "heap")
    run(pg_url, "INSERT INTO heap VALUES ('a'), ('a')")
    with pytest.raises(ValueError, match="not unique"):
        fingerprint_table(pg_url, "heap", key=["v"])

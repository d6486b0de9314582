"""The migration rehearsal on a sampled clone, against a real PostgreSQL: SQL files and a command tool."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from upgate.checks.rehearsal import Rehearsal, judge_lock_holds, rehearse_migration
from upgate.checks.schema import SchemaSnapshot, diff_schemas, snapshot_schema
from upgate.config import MigrateConfig
from upgate.embedded.postgres import PostgresServer, find_pg_tool
from upgate.steps.migrate import CommandMigrator, SqlMigrator

ORIGINAL_SCHEMA = """
CREATE TABLE episodic_logs (
    id bigserial PRIMARY KEY,
    session_id integer NOT NULL,
    prompt text NOT NULL,
    response character varying(2000),
    metadata jsonb,
    score numeric(10,4),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX episodic_logs_session_idx ON episodic_logs (session_id, created_at);
CREATE TABLE sessions (id integer PRIMARY KEY, name text UNIQUE);
ALTER TABLE episodic_logs ADD CONSTRAINT episodic_logs_session_fk FOREIGN KEY (session_id) REFERENCES sessions (id);
ALTER TABLE episodic_logs ADD CONSTRAINT score_range CHECK (score BETWEEN 0 AND 1);
CREATE VIEW recent_logs AS SELECT id, prompt FROM episodic_logs WHERE created_at > now() - interval '1 day';
INSERT INTO sessions VALUES (1, 'a'), (2, 'b');
INSERT INTO episodic_logs (session_id, prompt, response, score) SELECT 1 + g % 2, 'p' || g, 'r' || g, 0.5
FROM generate_series(1, 50) g;
"""

ADD_COLUMNS_UP = """
ALTER TABLE episodic_logs
    ADD COLUMN cache_hit boolean NOT NULL DEFAULT false,
    ADD COLUMN similarity_score real,
    ADD COLUMN last_verified timestamptz;
CREATE INDEX episodic_logs_cache_hit_idx ON episodic_logs (cache_hit);
"""
ADD_COLUMNS_DOWN = """
DROP INDEX episodic_logs_cache_hit_idx;
ALTER TABLE episodic_logs DROP COLUMN cache_hit, DROP COLUMN similarity_score, DROP COLUMN last_verified;
"""
ORIGINAL_COLUMNS = ["created_at", "id", "metadata", "prompt", "response", "score", "session_id"]


@pytest.fixture
def db(pg_url: str) -> str:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(ORIGINAL_SCHEMA.encode())
    return pg_url


@pytest.fixture
def pg_dump(pg_server: PostgresServer) -> str:
    return find_pg_tool("pg_dump", pg_server.bin_dir)


@pytest.fixture
def untouched(db: str, pg_server: PostgresServer) -> Iterator[None]:
    """After the test: the original database has the same schema and rows, and no scratch database is left."""
    before, rows_before = state(db)
    yield
    after, rows_after = state(db)
    assert diff_schemas(before, after).is_empty and after == before
    assert rows_after == rows_before
    with psycopg.connect(pg_server.url) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'upgate_rehearsal_%'").fetchall()
    assert left == []


def state(url: str) -> tuple[SchemaSnapshot, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT count(*) FROM episodic_logs").fetchone()
        return snapshot_schema(conn), rows[0] if rows else -1


def migrations_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def dry_run(db: str, pg_dump: str, tmp_path: Path, files: dict[str, str], **kwargs: object) -> Rehearsal:
    runner = SqlMigrator(MigrateConfig(directory=migrations_dir(tmp_path, files)))
    result = rehearse_migration(db, runner, pg_dump, **kwargs)  # type: ignore[arg-type]
    json.dumps(result.to_json(), default=str)  # the whole outcome is report-ready
    return result


@pytest.mark.usefixtures("untouched")
def test_clean_add_columns_migration_passes(db: str, pg_dump: str, tmp_path: Path) -> None:
    dry = dry_run(
        db,
        pg_dump,
        tmp_path,
        {
            "001_add_cache_columns.up.sql": ADD_COLUMNS_UP,
            "001_add_cache_columns.down.sql": ADD_COLUMNS_DOWN,
            "002_backfill.up.sql": "UPDATE episodic_logs SET similarity_score = 0 WHERE cache_hit;",
            "002_backfill.down.sql": "-- nothing to undo: the columns go away with 001's down\n",
        },
    )
    assert dry.result.ok, dry.result.summary
    assert dry.result.summary.startswith(
        "rehearsal of 2 units (sql): up/down/up clean; 0 destructive changes; 1 warning; up took ")
    assert dry.destructive == []
    assert dry.warnings == [
        "002_backfill.up.sql: statement 1 rewrites data (UPDATE episodic_logs SET similarity_score = 0 WHERE ...): "
        "no static check can tell a correct backfill from a buggy one; the integrity gate decides"
    ]
    assert dry.preserved_columns == {"episodic_logs": ORIGINAL_COLUMNS, "sessions": ["id", "name"]}
    assert dry.after_up is not None
    assert set(dry.after_up.tables["episodic_logs"]) - set(dry.original.tables["episodic_logs"]) == {
        "cache_hit",
        "similarity_score",
        "last_verified",
    }
    assert dry.after_up.tables["episodic_logs"]["cache_hit"] == {
        "type": "boolean",
        "nullable": False,
        "default": "false",
    }
    assert "episodic_logs_cache_hit_idx" in dry.after_up.indexes
    assert dry.original.views["recent_logs"].startswith(" SELECT id,")
    assert "episodic_logs.episodic_logs_session_fk" in dry.original.constraints
    assert "episodic_logs_id_seq" in dry.original.sequences
    assert "clone_differences" not in dry.result.evidence


@pytest.mark.usefixtures("untouched")
def test_dropping_a_column_fails_naming_it_until_allowed(db: str, pg_dump: str, tmp_path: Path) -> None:
    files = {
        "001_drop_metadata.up.sql": "ALTER TABLE episodic_logs DROP COLUMN metadata;",
        "001_drop_metadata.down.sql": "ALTER TABLE episodic_logs ADD COLUMN metadata jsonb;",
    }
    dry = dry_run(db, pg_dump, tmp_path, files)
    assert not dry.result.ok
    assert dry.destructive == ["episodic_logs.metadata"]
    assert "episodic_logs.metadata (column dropped)" in dry.result.summary
    assert 'add "episodic_logs.metadata" to migrate.allow_destructive' in dry.result.summary
    assert "metadata" not in dry.preserved_columns["episodic_logs"]

    allowed = dry_run(
        db, pg_dump, tmp_path / "again", files, allowed_destructive=["public.episodic_logs.metadata"]
    )
    assert allowed.result.ok, allowed.result.summary
    assert allowed.destructive == []
    assert allowed.result.evidence["destructive_allowed"] == ["episodic_logs.metadata"]
    assert allowed.result.summary.startswith(
        "rehearsal of 1 unit (sql): up/down/up clean; 1 destructive change (allowed: episodic_logs.metadata); "
        "0 warnings")


@pytest.mark.usefixtures("untouched")
def test_narrowing_a_type_is_destructive(db: str, pg_dump: str, tmp_path: Path) -> None:
    dry = dry_run(
        db,
        pg_dump,
        tmp_path,
        {
            "001_shrink.up.sql": "ALTER TABLE episodic_logs ALTER COLUMN response TYPE character varying(100);",
            "001_shrink.down.sql": "ALTER TABLE episodic_logs ALTER COLUMN response TYPE character varying(2000);",
        },
    )
    assert not dry.result.ok
    assert dry.destructive == ["episodic_logs.response"]
    assert "character varying(2000) -> character varying(100)" in dry.result.summary
    assert "response" not in dry.preserved_columns["episodic_logs"]


@pytest.mark.usefixtures("untouched")
def test_down_that_forgets_a_column_fails_with_the_diff(db: str, pg_dump: str, tmp_path: Path) -> None:
    dry = dry_run(
        db,
        pg_dump,
        tmp_path,
        {
            "001_add_cache_columns.up.sql": ADD_COLUMNS_UP,
            "001_add_cache_columns.down.sql": "DROP INDEX episodic_logs_cache_hit_idx;\n"
            "ALTER TABLE episodic_logs DROP COLUMN cache_hit, DROP COLUMN similarity_score;",
        },
    )
    assert not dry.result.ok
    assert dry.result.summary == (
        "rehearsal of 1 unit (sql) failed: down does not restore the schema: +column episodic_logs.last_verified"
    )
    assert dry.result.evidence["down_leftovers"]["added_columns"] == ["episodic_logs.last_verified"]


@pytest.mark.usefixtures("untouched")
def test_up_with_an_sql_error_names_the_file_and_statement(db: str, pg_dump: str, tmp_path: Path) -> None:
    dry = dry_run(
        db,
        pg_dump,
        tmp_path,
        {
            "001_add_cache_columns.up.sql": ADD_COLUMNS_UP,
            "001_add_cache_columns.down.sql": ADD_COLUMNS_DOWN,
            "002_broken.up.sql": "ALTER TABLE episodic_logs ADD COLUMN note text;\n"
            "ALTER TABLE episodic_log ADD COLUMN other text;",
            "002_broken.down.sql": "ALTER TABLE episodic_logs DROP COLUMN note;",
        },
    )
    assert not dry.result.ok
    assert dry.after_up is None
    summary = dry.result.summary
    assert summary.startswith("rehearsal of 2 units (sql) failed: up failed: 002_broken.up.sql failed and was "
                              "rolled back: 002_broken.up.sql: statement 2 ")
    assert "(ALTER TABLE episodic_log ADD COLUMN other text)" in summary
    assert 'relation "episodic_log" does not exist' in summary


@pytest.mark.usefixtures("untouched")
def test_migration_without_down_is_allowed_and_its_rollback_is_the_restore(db: str, pg_dump: str,
                                                                          tmp_path: Path) -> None:
    dry = dry_run(db, pg_dump, tmp_path, {"001_add_cache_columns.up.sql": ADD_COLUMNS_UP})
    assert dry.result.ok, dry.result.summary
    assert dry.missing_down == ["001_add_cache_columns"]
    assert ("up clean; no down for 001_add_cache_columns: its rollback is the restore of the backup"
            in dry.result.summary)
    assert dry.preserved_columns["episodic_logs"] == ORIGINAL_COLUMNS
    assert dry.after_up is not None and "cache_hit" in dry.after_up.tables["episodic_logs"]


@pytest.mark.usefixtures("untouched")
def test_up_that_cannot_run_again_after_down_fails(db: str, pg_dump: str, tmp_path: Path) -> None:
    dry = dry_run(
        db,
        pg_dump,
        tmp_path,
        {
            "001_mood.up.sql": "CREATE TYPE mood AS ENUM ('ok', 'bad');\nALTER TABLE sessions ADD COLUMN mood mood;",
            "001_mood.down.sql": "ALTER TABLE sessions DROP COLUMN mood;",  # forgets DROP TYPE
        },
    )
    assert not dry.result.ok
    assert "up is not repeatable after down: 001_mood.up.sql failed and was rolled back: 001_mood.up.sql: " \
           "statement 1" in dry.result.summary
    assert 'type "mood" already exists' in dry.result.summary


@pytest.mark.usefixtures("untouched")
def test_dump_is_loaded_through_psycopg_when_no_psql_is_beside_pg_dump(
    db: str, pg_dump: str, tmp_path: Path
) -> None:
    wrapper = tmp_path / "bin" / "pg_dump"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec "{pg_dump}" "$@"\n')
    wrapper.chmod(0o755)
    dry = dry_run(
        db,
        str(wrapper),
        tmp_path,
        {"001_add_cache_columns.up.sql": ADD_COLUMNS_UP, "001_add_cache_columns.down.sql": ADD_COLUMNS_DOWN},
    )
    assert dry.result.ok, dry.result.summary
    assert "clone_differences" not in dry.result.evidence


# --- watched while it runs: lock holds and time, for SQL files and for any tool ----------------------------

LOCKING = Path(__file__).resolve().parents[2] / "upgate" / "fixtures" / "plans" / "locking" / "migrations"


@pytest.fixture
def seeded(pg_url: str) -> str:
    from upgate.fixtures.seed import create_schema, seed

    create_schema(pg_url)
    seed(pg_url, rows=3000)
    return pg_url


def test_a_rewrite_is_watched_and_scaled_to_the_live_rows(seeded: str, pg_dump: str) -> None:
    runner = SqlMigrator(MigrateConfig(directory=LOCKING))
    rehearsal = rehearse_migration(seeded, runner, pg_dump, sample_rows=500)
    assert rehearsal.result.ok, rehearsal.result.summary
    assert rehearsal.sampled == {"episodic_logs": 500} and rehearsal.timing is not None
    assert rehearsal.timing.scales == {"episodic_logs": 6.0}  # 3000 live rows / 500 sampled
    (rewrite,) = [h for h in rehearsal.holds if h.unit == "002_widen_tokens.up.sql"]
    assert rewrite.table == "episodic_logs" and rewrite.data_touched
    assert rewrite.estimate_s == pytest.approx(rewrite.measured_s * 6, rel=0.01)
    # 001 adds columns with constant defaults: a catalog change, held but not scaled.
    adds = [h for h in rehearsal.holds if h.unit == "001_add_cache_columns.up.sql"]
    assert all(not h.data_touched and h.estimate_s == h.measured_s for h in adds)
    assert rehearsal.timing.estimate_s > rehearsal.timing.measured_s
    judged = judge_lock_holds(rehearsal, budget_s=1e-6)
    assert not judged.ok
    assert "002_widen_tokens.up.sql holds ACCESS EXCLUSIVE on episodic_logs for ~" in judged.summary
    assert "> lock budget 1e-06 s" in judged.summary
    assert judge_lock_holds(rehearsal, budget_s=3600).ok
    with psycopg.connect(seeded) as conn:  # the live table was only read
        assert conn.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'episodic_logs' "
                            "AND column_name = 'tokens'").fetchone() == ("integer",)


TOOL = """
import os, sys, psycopg
direction = sys.argv[1]
statements = {
    "up": ["CREATE TABLE tags (id bigserial PRIMARY KEY, session_id integer REFERENCES sessions (id), tag text)",
           "INSERT INTO tags (session_id, tag) SELECT 1 + g % 2, 't' || g FROM generate_series(1, 10) g",
           "ALTER TABLE episodic_logs ALTER COLUMN session_id TYPE bigint"],
    "down": ["ALTER TABLE episodic_logs ALTER COLUMN session_id TYPE integer", "DROP TABLE tags"],
}[direction]
with psycopg.connect(os.environ["APP_DB"]) as conn:
    assert conn.execute("SHOW application_name").fetchone()[0] == "upgate-migrate"
    assert conn.execute("SHOW lock_timeout").fetchone()[0] == "1s"
    for statement in statements:
        conn.execute(statement)
print("migrated", direction)
"""


def tool_config(tmp_path: Path, down: bool) -> MigrateConfig:
    tool = tmp_path / "tool.py"
    tool.write_text(TOOL)
    return MigrateConfig(kind="command", up=[sys.executable, str(tool), "up"],
                         down=[sys.executable, str(tool), "down"] if down else [],
                         env={"APP_DB": "{database_url}"})


@pytest.mark.usefixtures("untouched")
def test_a_command_tool_is_rehearsed_up_down_up_and_watched(db: str, pg_dump: str, tmp_path: Path) -> None:
    rehearsal = rehearse_migration(db, CommandMigrator(tool_config(tmp_path, down=True)), pg_dump)
    assert rehearsal.result.ok, rehearsal.result.summary
    assert rehearsal.result.summary.startswith("rehearsal of 1 unit (command): up/down/up clean")
    assert rehearsal.after_up is not None and "tags" in rehearsal.after_up.tables
    assert "tags.tags_session_id_fkey" in rehearsal.after_up.constraints
    # Every table was sampled (a tool's SQL is not known beforehand), the rows of both tables kept.
    assert rehearsal.sampled == {"episodic_logs": 50, "sessions": 2}
    (retype,) = [h for h in rehearsal.holds if h.table == "episodic_logs"]
    assert retype.data_touched and retype.unit.endswith("tool.py up")


@pytest.mark.usefixtures("untouched")
def test_a_command_tool_without_down_is_allowed(db: str, pg_dump: str, tmp_path: Path) -> None:
    rehearsal = rehearse_migration(db, CommandMigrator(tool_config(tmp_path, down=False)), pg_dump)
    assert rehearsal.result.ok and rehearsal.missing_down == ["up"]
    assert "no down for up: its rollback is the restore of the backup" in rehearsal.result.summary

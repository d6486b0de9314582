"""The restore returns the exact baseline, whatever the migration created, on a real PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from upgate.checks.schema import SchemaSnapshot, diff_schemas, snapshot_schema
from upgate.embedded.postgres import PostgresServer, database_name, find_pg_tool, with_database
from upgate.steps.backup import restore_database, take_backup

BASELINE = """
CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY, item_id integer NOT NULL REFERENCES items (id), qty integer);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g;
INSERT INTO orders (item_id, qty) SELECT 1 + g % 500, g FROM generate_series(1, 2000) g;
"""

# What an application's migration may leave behind: new tables with foreign keys into old tables and an
# old table's foreign key into a new one, a type, a sequence, an index, a schema, an extension; and lost rows.
MIGRATION = """
CREATE TYPE mood AS ENUM ('ok', 'bad');
CREATE SEQUENCE ticket_seq START 1000;
CREATE TABLE reviews (id bigserial PRIMARY KEY, item_id integer REFERENCES items (id), mood mood,
                      ticket bigint DEFAULT nextval('ticket_seq'));
INSERT INTO reviews (item_id, mood) SELECT id, 'ok' FROM items WHERE id <= 50;
ALTER TABLE orders ADD COLUMN review_id bigint REFERENCES reviews (id);
CREATE INDEX items_name_idx ON items (name);
CREATE SCHEMA analytics;
CREATE TABLE analytics.daily (day date PRIMARY KEY, orders integer);
DELETE FROM orders WHERE id % 7 = 0;
"""
EXTENSION = "CREATE EXTENSION IF NOT EXISTS vector; CREATE TABLE embeddings (item_id integer REFERENCES items (id), v vector(3));"


def contents(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        return {
            "items": conn.execute("SELECT id, name FROM items ORDER BY id").fetchall(),
            "orders": conn.execute("SELECT id, item_id, qty FROM orders ORDER BY id").fetchall(),
            "orders_seq": conn.execute("SELECT last_value FROM orders_id_seq").fetchone(),
            "schemas": sorted(r[0] for r in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'")),
            "types": sorted(r[0] for r in conn.execute(
                "SELECT typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE n.nspname = 'public' AND t.typtype = 'e'")),
            "extensions": sorted(r[0] for r in conn.execute("SELECT extname FROM pg_extension")),
        }


def snapshot(url: str) -> SchemaSnapshot:
    with psycopg.connect(url) as conn:
        return snapshot_schema(conn)


def execute(url: str, text: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(text.encode())


def databases(server: PostgresServer, like: str) -> list[str]:
    with psycopg.connect(server.url) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                                           (like,)).fetchall()]


@pytest.fixture
def app_db(pg_server: PostgresServer) -> Iterator[str]:
    url = pg_server.create_database("app")
    execute(url, BASELINE)
    yield url
    for name in databases(pg_server, database_name(url) + "%"):
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_restore_into_a_fresh_database_leaves_nothing_the_migration_created(app_db, pg_server, tmp_path):
    before, expected = contents(app_db), snapshot(app_db)
    backup = take_backup(app_db, tmp_path, find_pg_tool("pg_dump"), find_pg_tool("pg_restore"))
    execute(app_db, MIGRATION + EXTENSION)
    assert contents(app_db) != before and not diff_schemas(expected, snapshot(app_db)).is_empty
    events: list[str] = []
    outcome = restore_database(app_db, backup, find_pg_tool("pg_restore"), find_pg_tool("psql"), tag="r1",
                               expected=expected, progress=lambda event, _detail: events.append(event))
    assert outcome.method == "fresh-database" and outcome.schema_checked
    assert events == ["created", "restored", "verified", "renamed-out", "renamed-in"]
    assert diff_schemas(expected, snapshot(app_db)).is_empty
    after = contents(app_db)
    assert after == before  # every row, the sequence position, and no new schema, type or extension
    assert after["schemas"] == ["public"] and after["types"] == [] and after["extensions"] == ["plpgsql"]
    # The failed database is kept for forensics under the name the report gives.
    kept = with_database(app_db, outcome.kept_as or "")
    assert outcome.kept_as == f"{database_name(app_db)}_failed_r1"
    assert {"reviews", "embeddings", "analytics.daily"} <= set(snapshot_kept(kept).tables)


def snapshot_kept(url: str) -> SchemaSnapshot:
    with psycopg.connect(url) as conn:
        return snapshot_schema(conn, ("public", "analytics"))


def test_database_settings_and_grants_survive_the_swap(app_db, pg_server, tmp_path):
    name = sql.Identifier(database_name(app_db))
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("ALTER DATABASE {} SET search_path = public, extra").format(name))
        conn.execute(sql.SQL("ALTER DATABASE {} SET statement_timeout = '5s'").format(name))
        conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET work_mem = '8MB'").format(sql.Identifier(role), name))
        conn.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 40").format(name))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(name))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(name, sql.Identifier(role)))
    try:
        before = database_level(pg_server, database_name(app_db))
        backup = take_backup(app_db, tmp_path, find_pg_tool("pg_dump"), find_pg_tool("pg_restore"))
        execute(app_db, MIGRATION)
        outcome = restore_database(app_db, backup, find_pg_tool("pg_restore"), find_pg_tool("psql"), tag="r2",
                                   expected=None)
        assert outcome.method == "fresh-database" and outcome.notes == []
        assert database_level(pg_server, database_name(app_db)) == before
        with psycopg.connect(app_db) as conn:
            assert conn.execute("SHOW search_path").fetchone() == ("public, extra",)
    finally:
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            for db in databases(pg_server, database_name(app_db) + "%"):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def database_level(server: PostgresServer, name: str) -> dict[str, Any]:
    with psycopg.connect(server.url) as conn:
        settings = conn.execute(
            "SELECT coalesce(r.rolname, ''), s.setconfig FROM pg_db_role_setting s JOIN pg_database d "
            "ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE d.datname = %s ORDER BY 1",
            (name,)).fetchall()
        grants = conn.execute(
            "SELECT coalesce(pg_get_userbyid(a.grantee), 'PUBLIC'), a.privilege_type FROM pg_database d, "
            "aclexplode(d.datacl) a WHERE d.datname = %s AND a.grantee <> d.datdba ORDER BY 1, 2", (name,)).fetchall()
        limit = conn.execute("SELECT datconnlimit, pg_get_userbyid(datdba), pg_encoding_to_char(encoding) "
                             "FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return {"settings": settings, "grants": grants, "limit": limit}


def test_a_swap_killed_half_way_is_finished_from_what_the_journal_says(app_db, pg_server, tmp_path):
    before = contents(app_db)
    backup = take_backup(app_db, tmp_path, find_pg_tool("pg_dump"), find_pg_tool("pg_restore"))
    execute(app_db, MIGRATION)
    journal: list[dict[str, Any]] = []

    def killed_after_renaming_out(event: str, detail: dict[str, Any]) -> None:
        journal.append({"event": event, **detail})
        if event == "renamed-out":
            raise KeyboardInterrupt  # the process dies here: no database under the live name

    with pytest.raises(KeyboardInterrupt):
        restore_database(app_db, backup, find_pg_tool("pg_restore"), find_pg_tool("psql"), tag="r3",
                         progress=killed_after_renaming_out)
    assert database_name(app_db) not in databases(pg_server, database_name(app_db) + "%")
    outcome = restore_database(app_db, backup, find_pg_tool("pg_restore"), find_pg_tool("psql"), tag="r3",
                               resume=journal[-1])
    assert "finished the swap a killed restore left half-done" in outcome.notes
    assert contents(app_db) == before


def test_without_createdb_the_schemas_are_dropped_and_the_backup_replayed_in_one_transaction(pg_server, tmp_path):
    role = f"app_{uuid.uuid4().hex[:8]}"
    name = f"owned_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOCREATEDB").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(role)))
    url = psycopg.conninfo.make_conninfo(with_database(pg_server.url, name), user=role)
    try:
        with psycopg.connect(pg_server.url.replace("/postgres?", f"/{name}?"), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(role)))
        execute(url, BASELINE)
        before, expected = contents(url), snapshot(url)
        backup = take_backup(url, tmp_path, find_pg_tool("pg_dump"), find_pg_tool("pg_restore"))
        execute(url, MIGRATION)
        outcome = restore_database(url, backup, find_pg_tool("pg_restore"), find_pg_tool("psql"), tag="r4",
                                   expected=expected)
        assert outcome.method == "drop-schemas" and outcome.schema_checked and outcome.kept_as is None
        assert "the role cannot create databases" in " ".join(outcome.notes)
        assert diff_schemas(expected, snapshot(url)).is_empty
        assert contents(url) == before
    finally:
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_the_password_reaches_the_tools_through_a_passfile_never_argv(app_db, tmp_path):
    seen = tmp_path / "seen"
    for tool in ("pg_dump", "pg_restore"):
        wrapper = tmp_path / "bin" / tool
        wrapper.parent.mkdir(exist_ok=True)
        wrapper.write_text(f'#!/bin/sh\necho "{tool} $* | PGPASSWORD=$PGPASSWORD | $PGPASSFILE: $(cat "$PGPASSFILE")" '
                           f'>> {seen}\nexec "{find_pg_tool(tool)}" "$@"\n')
        wrapper.chmod(0o755)
    with_password = app_db.replace("postgres:@", "postgres:s3cret@")
    take_backup(with_password, tmp_path / "b", str(tmp_path / "bin" / "pg_dump"), str(tmp_path / "bin" / "pg_restore"))
    lines = seen.read_text().splitlines()
    argv, env, passfile = [line for line in lines if line.startswith("pg_dump")][0].split(" | ")
    assert "s3cret" not in argv and env == "PGPASSWORD="
    path, content = passfile.split(": ", 1)
    assert content == "*:*:*:*:s3cret" and not Path(path).exists(), "the passfile outlived the tool"
    assert os.environ.get("PGPASSWORD") != "s3cret"
    assert Path(tmp_path / "b" / "database.dir" / "toc.dat").exists()

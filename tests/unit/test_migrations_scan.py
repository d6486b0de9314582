"""Reading migration folders and flagging statements that rewrite data (no database needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgate.checks.migrations import Migration, load_migrations, scan_statements, split_statements


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_data_rewrites_are_flagged_with_file_number_and_excerpt() -> None:
    sql = """
    -- backfill
    ALTER TABLE episodic_logs ADD COLUMN cache_hit boolean;
    UPDATE episodic_logs SET cache_hit = false;
    DELETE FROM episodic_logs WHERE created_at < now() - interval '90 days';
    """
    warnings = scan_statements(sql, source="002_backfill.up.sql")
    assert warnings == [
        "002_backfill.up.sql: statement 2 rewrites data (UPDATE episodic_logs SET cache_hit = false): "
        "no static check can tell a correct backfill from a buggy one; the integrity gate decides",
        "002_backfill.up.sql: statement 3 rewrites data (DELETE FROM episodic_logs WHERE ...): "
        "no static check can tell a correct backfill from a buggy one; the integrity gate decides",
    ]


@pytest.mark.parametrize(
    "statement, phrase",
    [
        ("TRUNCATE episodic_logs;", "rewrites data"),
        ("INSERT INTO archive SELECT * FROM episodic_logs;", "rewrites data"),
        ("WITH gone AS (DELETE FROM t RETURNING *) INSERT INTO archive SELECT * FROM gone;", "rewrites data"),
        ("DO $$ BEGIN UPDATE t SET a = 1; END $$;", "runs an opaque DO block"),
        ("CALL backfill_scores();", "calls a procedure"),
        (
            "ALTER TABLE t ALTER COLUMN score TYPE integer USING round(score);",
            "converts column data with USING",
        ),
    ],
)
def test_each_rewriting_statement_kind_warns(statement: str, phrase: str) -> None:
    [warning] = scan_statements(statement, source="003_x.up.sql")
    assert warning.startswith(f"003_x.up.sql: statement 1 {phrase} (")


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE t ADD COLUMN a integer;",
        "INSERT INTO settings (key, value) VALUES ('mode', 'v2');",
        "ALTER TABLE t ADD CONSTRAINT t_fk FOREIGN KEY (a) REFERENCES u(id) ON DELETE CASCADE ON UPDATE CASCADE;",
        "CREATE INDEX t_a_idx ON t (a);",
        "-- UPDATE t SET a = 1;\nCREATE TABLE u (id int);",
        "CREATE FUNCTION f() RETURNS int AS $$ BEGIN DELETE FROM t; RETURN 1; END $$ LANGUAGE plpgsql;",
    ],
)
def test_schema_only_statements_do_not_warn(statement: str) -> None:
    assert scan_statements(statement) == []


def test_warning_without_source_has_no_prefix_and_long_statements_are_cut() -> None:
    [warning] = scan_statements("UPDATE t SET " + ", ".join(f"column_{i} = {i}" for i in range(30)) + ";")
    assert warning.startswith("statement 1 rewrites data (UPDATE t SET column_0 = 0,")
    excerpt = warning[warning.index("(") + 1 : warning.index("):")]
    assert excerpt.endswith(" ...") and len(excerpt) <= 64


def test_split_keeps_dollar_quoted_bodies_and_drops_comment_only_pieces() -> None:
    sql = "CREATE FUNCTION f() RETURNS int AS $b$ SELECT 1; $b$ LANGUAGE sql;\n-- trailing note\n"
    assert split_statements(sql) == ["CREATE FUNCTION f() RETURNS int AS $b$ SELECT 1; $b$ LANGUAGE sql;"]


def test_migrations_load_sorted_with_their_down_files(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "002_backfill.up.sql": "",
            "001_add_columns.up.sql": "",
            "001_add_columns.down.sql": "",
            "README.md": "not a migration",
        },
    )
    assert load_migrations(tmp_path) == [
        Migration(
            "001_add_columns", tmp_path / "001_add_columns.up.sql", tmp_path / "001_add_columns.down.sql"
        ),
        Migration("002_backfill", tmp_path / "002_backfill.up.sql", None),
    ]


def test_empty_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"{tmp_path}: no migrations found"):
        load_migrations(tmp_path)


def test_missing_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_migrations(tmp_path / "nope")


def test_down_without_up_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, {"001_a.up.sql": "", "002_b.down.sql": ""})
    with pytest.raises(ValueError, match=r"002_b\.down\.sql has no matching up file \(002_b\.up\.sql\)"):
        load_migrations(tmp_path)


@pytest.mark.parametrize("name", ["add_columns.up.sql", "001_add_columns.sql", "001_add_columns.upgrade.sql"])
def test_sql_file_with_wrong_name_is_an_error(tmp_path: Path, name: str) -> None:
    write(tmp_path, {"001_ok.up.sql": "", name: ""})
    with pytest.raises(ValueError, match=f"{name} does not match NNN_name.up.sql"):
        load_migrations(tmp_path)

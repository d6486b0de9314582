"""`upgate init` against real PostgreSQL: tables and keys, the migration tool from its bookkeeping table, no
password written, `check-config` passes on the result, and an existing file is never written over."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import psycopg
import pytest

from upgate.config import load_config


def upgate(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "MONITORING_URL")}
    return subprocess.run([sys.executable, "-m", "upgate.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=environ | (env or {}), timeout=120)


def _schema(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.mark.parametrize(("bookkeeping", "kind", "expect"), [
    ("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY); "
     "INSERT INTO alembic_version VALUES ('3f2a9c')", "alembic", 'alembic_ini = "alembic.ini"'),
    ("CREATE TABLE django_migrations (id serial PRIMARY KEY, app text, name text, applied timestamptz)",
     "command", 'up = ["python", "manage.py", "migrate", "--noinput"]'),
    ("CREATE TABLE flyway_schema_history (installed_rank int PRIMARY KEY, version text, success bool)",
     "command", 'up = ["flyway", "migrate"]'),
])
def test_init_reads_tables_keys_and_the_migration_tool(pg_url: str, tmp_path: Path, bookkeeping: str, kind: str,
                                                       expect: str) -> None:
    _schema(pg_url, "CREATE TABLE orders (id bigint PRIMARY KEY, total numeric)",
            "CREATE TABLE order_lines (order_id bigint, line int, sku text, PRIMARY KEY (order_id, line))",
            "CREATE TABLE events (at timestamptz, payload jsonb)", *bookkeeping.split("; "))
    out = tmp_path / "upgate.toml"
    proc = upgate("init", "--database-url", pg_url, "--output", str(out), "--name", "shop", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    data = tomllib.loads(text)
    assert data["integrity"]["tables"] == ["events", "order_lines", "orders"]
    assert data["integrity"]["keys"] == {"order_lines": ["order_id", "line"], "orders": ["id"]}
    assert "No primary key" in text and "events" in text.split("No primary key")[1].splitlines()[0]
    assert data["migrate"]["kind"] == kind and expect in text
    assert "left out as migration bookkeeping" in text
    lines = text.splitlines()
    bare = [line for i, line in enumerate(lines) if line and not line.startswith(("#", "["))
            and "#" not in line and not lines[i - 1].startswith("#")]
    assert not bare, f"keys without a comment: {bare}"
    config = load_config(out, environ={})
    assert config.target.name == "shop" and config.database.url == pg_url
    checked = upgate("check-config", "--config", str(out), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_no_password_is_written(pg_url: str, tmp_path: Path) -> None:
    from upgate.init import without_password

    assert without_password("postgresql://app:s3cret@db:5432/shop?sslmode=require") == \
        "postgresql://app@db:5432/shop?sslmode=require"
    assert "s3cret" not in without_password("host=db user=app password=s3cret dbname=shop")
    assert without_password(pg_url) == pg_url  # no password: as given


def test_an_existing_file_is_never_written_over(pg_url: str, tmp_path: Path) -> None:
    out = tmp_path / "upgate.toml"
    out.write_text("# mine\n")
    proc = upgate("init", "--database-url", pg_url, "--output", str(out), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{out} exists: upgate init never writes over a file" in proc.stderr
    assert out.read_text() == "# mine\n"


def test_a_database_that_does_not_answer_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "upgate.toml"
    proc = upgate("init", "--database-url", "postgresql://u:pw@127.0.0.1:1/db?connect_timeout=1", "--output", str(out),
                  cwd=tmp_path)
    assert proc.returncode == 2 and "the database does not answer" in proc.stderr and "pw" not in proc.stderr
    assert not out.exists()


def test_redis_and_prometheus_come_from_the_environment(pg_url: str, tmp_path: Path) -> None:
    out = tmp_path / "upgate.toml"
    proc = upgate("init", "--database-url", pg_url, "--output", str(out), cwd=tmp_path,
                  env={"REDIS_URL": "redis://:pw@cache:6379/0", "MONITORING_URL": "http://prometheus:9090"})
    assert proc.returncode == 0, proc.stderr
    data = tomllib.loads(out.read_text())
    assert data["monitoring"] == {"redis_url": "redis://cache:6379/0", "prometheus_url": "http://prometheus:9090"}

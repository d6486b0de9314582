"""Redaction of every form a secret takes in what upgate writes, and libpq credentials kept out of argv."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from upgate.checks.secrets import libpq_credentials, redact

SECRET = "S3cr3t-Planted"

CASES = [
    # (text, what must remain)
    (f"postgresql://app:{SECRET}@db:5432/prod", "postgresql://app:***@db:5432/prod"),
    ("postgresql://u:pa:ss@w/rd@host/db", "postgresql://u:***@host/db"),  # never URL-encoded
    (f"redis://:{SECRET}@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    (f"host=db port=5432 password={SECRET} dbname=prod", "host=db port=5432 password=*** dbname=prod"),
    (f"host=db password='{SECRET} with spaces' dbname=prod", "host=db password='***' dbname=prod"),
    (f"host=db password='it\\'s {SECRET}' dbname=prod", "host=db password='***' dbname=prod"),
    (f"Authorization: Bearer {SECRET}.abc", "Authorization: Bearer ***"),
    (f"authorization: Basic {SECRET}==", "authorization: Basic ***"),
    (f"X-Api-Key: {SECRET}", "X-Api-Key: ***"),
    (f"SECRET={SECRET}", "SECRET=***"),
    (f"export GITHUB_TOKEN={SECRET}", "export GITHUB_TOKEN=***"),
    (f"DB_PASSWORD={SECRET}\nNEXT=1", "DB_PASSWORD=***\nNEXT=1"),
    (f"AWS_SECRET_ACCESS_KEY={SECRET}", "AWS_SECRET_ACCESS_KEY=***"),
    (f"pg_dump --password={SECRET} x", "pg_dump --password=*** x"),
    (f"PGPASSWORD={SECRET} pg_dump", "PGPASSWORD=*** pg_dump"),
    (f"https://api.example.com/v1?api_key={SECRET}&q=1", "https://api.example.com/v1?api_key=***&q=1"),
    (f"curl -H 'Authorization: Bearer {SECRET}'", "curl -H 'Authorization: Bearer ***'"),
    (f"request failed: Bearer {SECRET}xyz rejected", "request failed: Bearer *** rejected"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_every_form_is_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert "S3cr3t" not in redact(text) and "pa:ss" not in redact(text)


def test_json_and_python_reprs_stay_valid_and_lose_only_the_values() -> None:
    data = {"url": "postgresql://u:pa:ss@w/rd@host/db", "headers": {"Authorization": f"Bearer {SECRET}",
            "X-Api-Key": SECRET}, "env": {"DB_PASSWORD": SECRET, "APP_TOKEN": f"a\"b{SECRET}"},
            "dsn": f"host=h password={SECRET}", "tokens": 4000, "password_file": "/etc/pgpass",
            "note": "pa:ss@w/rd was the password"}
    redacted = redact(json.dumps(data))
    assert "S3cr3t" not in redacted
    back = json.loads(redacted)
    assert back["headers"] == {"Authorization": "Bearer ***", "X-Api-Key": "***"}
    assert back["env"] == {"DB_PASSWORD": "***", "APP_TOKEN": "***"}
    assert back["url"] == "postgresql://u:***@host/db" and back["dsn"] == "host=h password=***"
    assert back["tokens"] == 4000 and back["password_file"] == "/etc/pgpass"  # not secrets: left alone
    assert "S3cr3t" not in redact(repr(data))


def test_ordinary_text_is_left_alone() -> None:
    for text in ("http://127.0.0.1:8080/ready", "postgresql://postgres:@/db?host=/tmp/pg", "episodic_logs: 3 rows lost (ids 17, 42, 99)",
                 "max_tokens=16", "token_count: 5", "user@example.com wrote", "PWD=/work/app"):
        assert redact(text) == text


def test_libpq_credentials_keep_the_password_out_of_argv(tmp_path) -> None:
    url = f"postgresql://app:{SECRET}%3Ax%40y@db.internal:5433/prod?sslmode=disable"
    with libpq_credentials(url, environ={"PATH": os.environ["PATH"], "PGPASSWORD": "stale"}) as (dsn, env):
        assert "S3cr3t" not in dsn and "host=db.internal" in dsn and "sslmode=disable" in dsn
        assert "PGPASSWORD" not in env  # it would win over the passfile
        passfile = env["PGPASSFILE"]
        assert stat.S_IMODE(os.stat(passfile).st_mode) == 0o600
        with open(passfile, encoding="utf-8") as f:
            assert f.read() == f"*:*:*:*:{SECRET}\\:x@y\n"
    assert not os.path.exists(passfile)
    with libpq_credentials(url, environ={}, passfile=False) as (dsn, env):
        assert env == {"PGPASSWORD": f"{SECRET}:x@y"}
    with libpq_credentials("postgresql://app@db/prod", environ={"PGPASSWORD": "kept"}) as (dsn, env):
        assert env == {"PGPASSWORD": "kept"}  # no password in the URL: the operator's own stays
    with pytest.raises(ValueError, match=r"postgresql://u:\*\*\*@") as caught:
        with libpq_credentials("postgresql://u:x@host/db?nosuchoption=1"):
            pass
    assert "x@host" not in str(caught.value)


def test_a_real_libpq_tool_authenticates_through_the_passfile(pg_server, pg_url) -> None:
    """psql connects with the password-less dsn and the passfile (on a server that asks for passwords this is
    what logs the role in; the embedded one trusts local sockets), and its argv never holds the password."""
    import psycopg
    from psycopg import sql

    from upgate.embedded.postgres import find_pg_tool

    role = "upgate_secret_test"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(SECRET)))
    try:
        params = psycopg.conninfo.conninfo_to_dict(pg_url)
        params.update(user=role, password=SECRET)
        url = psycopg.conninfo.make_conninfo("", **params)
        with libpq_credentials(url) as (dsn, env):
            argv = [find_pg_tool("psql", pg_server.bin_dir), "--no-psqlrc", "-At", "-c", "SELECT current_user",
                    "--dbname", dsn]
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == role
        assert not any(SECRET in a for a in argv)
    finally:
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

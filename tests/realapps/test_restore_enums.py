"""A restored database must fingerprint as its baseline: optuna's storage has enum columns (trials.state,
study_directions.direction), and the rollback of every optuna scenario is a restore."""

from __future__ import annotations

import subprocess

import psycopg

from upgate.checks.integrity import compare_fingerprints, fingerprint_table
from upgate.embedded.postgres import PostgresServer, find_pg_tool
from upgate.fixtures.realapps.observe import digest_tables


def test_enum_column_fingerprint_survives_dump_and_restore(pg_server: PostgresServer, pg_url: str, tmp_path) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TYPE trialstate AS ENUM ('RUNNING', 'COMPLETE', 'PRUNED', 'FAIL', 'WAITING')")
        conn.execute("CREATE TABLE trials (trial_id int PRIMARY KEY, state trialstate NOT NULL)")
        conn.execute("INSERT INTO trials SELECT g, (ARRAY['COMPLETE', 'PRUNED', 'FAIL'])[1 + g % 3]::trialstate "
                     "FROM generate_series(1, 50) g")
    baseline = fingerprint_table(pg_url, "trials")
    dump = tmp_path / "db.dump"
    subprocess.run([find_pg_tool("pg_dump"), "-Fc", "-f", str(dump), "--dbname", pg_url], check=True)
    restored = pg_server.create_database("restored")
    try:
        subprocess.run([find_pg_tool("pg_restore"), "--no-owner", "--dbname", restored, str(dump)], check=True)
        assert digest_tables(restored) == digest_tables(pg_url)  # the rows are equal, as text
        result = compare_fingerprints(baseline, fingerprint_table(restored, "trials"))
        assert result.ok, result.summary
    finally:
        pg_server.drop_database(restored)

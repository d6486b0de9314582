"""The integrity gates as pytest runs them on an app-shaped database: bookkeeping tables left out by default,
a keyless table and a 6-column key gated, damage named by key and written out in full for a repair."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg

from upgate.checks.integrity import Damage

ROOT = Path(__file__).resolve().parents[2]


def run_gates(tmp_path: Path, url: str, phase: str, extra: str = "") -> dict[str, dict]:
    cfg = tmp_path / "upgate.toml"
    cfg.write_text(f'[target]\nname = "app"\n\n[database]\nurl = "{url}"\n\n[integrity]\nallow_added_rows = false\n{extra}')
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", f"upgate/gates/{phase}/test_integrity.py", "--upgate-config", str(cfg),
         "--upgate-run-dir", str(run), "--upgate-phase", phase, "--import-mode=importlib", "-p", "no:cacheprovider",
         "-q", "--rootdir", str(ROOT)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    results = json.loads((run / f"gates-{phase}.json").read_text())
    gates = {g["nodeid"].split("::")[-1]: g for g in results["gates"]}
    assert gates, done.stdout + done.stderr
    return gates


def seed(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('1a2b3c')")
        conn.execute('CREATE TABLE "__EFMigrationsHistory" ("MigrationId" text PRIMARY KEY, "ProductVersion" text)')
        conn.execute("""CREATE TABLE readings (site text, sensor uuid, at timestamptz, seq int, unit text, ch smallint,
                        value double precision, PRIMARY KEY (site, sensor, at, seq, unit, ch))""")
        conn.execute("""INSERT INTO readings SELECT 's' || (i % 4), md5((i % 9)::text)::uuid,
                               timestamptz '2026-05-01 00:00:00+00' + i * interval '1 second', i, 'C', i % 3, i / 10.0
                        FROM generate_series(1, 3000) AS i""")
        conn.execute("CREATE TABLE audit (who text, what text)")
        conn.execute("INSERT INTO audit SELECT 'u' || (i % 5), 'login' FROM generate_series(1, 200) AS i")


def test_integrity_gates_on_an_app_database(tmp_path: Path, pg_url: str) -> None:
    seed(pg_url)
    pre = run_gates(tmp_path, pg_url, "pre")
    assert set(pre) == {"test_fingerprint_baseline_captured[readings]", "test_fingerprint_baseline_captured[audit]"}
    assert all(g["outcome"] == "passed" for g in pre.values()), pre

    with psycopg.connect(pg_url, autocommit=True) as conn:  # what a new release's migration tool does ...
        conn.execute("UPDATE alembic_version SET version_num = '4d5e6f'")
        conn.execute("""INSERT INTO "__EFMigrationsHistory" VALUES ('20260501_Init', '8.0')""")
    post = run_gates(tmp_path, pg_url, "post")
    assert all(g["outcome"] == "passed" for g in post.values()), post  # ... is not data loss

    with psycopg.connect(pg_url, autocommit=True) as conn:  # a buggy backfill is
        conn.execute("DELETE FROM readings WHERE seq BETWEEN 100 AND 199")
        conn.execute("DELETE FROM audit WHERE ctid = (SELECT min(ctid) FROM audit WHERE who = 'u3')")
    post = run_gates(tmp_path, pg_url, "post")
    readings = post["test_no_preserved_row_lost[readings]"]
    assert readings["outcome"] == "failed" and "readings: 100 rows lost (keys (s" in readings["message"]
    audit = post["test_no_preserved_row_lost[audit]"]
    assert audit["outcome"] == "failed" and "audit: 1 row lost ((u3,login))" in audit["message"]
    damage = Damage.load(tmp_path / "run" / "integrity", "readings")
    assert damage.key_kind == "hashed" and damage.lost.size == 100  # every key, for a repair from the backup


def test_exclude_can_be_replaced_and_extended(tmp_path: Path, pg_url: str) -> None:
    seed(pg_url)
    pre = run_gates(tmp_path, pg_url, "pre", 'exclude = ["__EFMigrationsHistory"]\nextend_exclude = ["aud*"]\n')
    assert set(pre) == {"test_fingerprint_baseline_captured[alembic_version]",
                        "test_fingerprint_baseline_captured[readings]"}

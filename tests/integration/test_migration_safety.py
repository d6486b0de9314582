"""Migration safety for real: squawk on the demo plans' files, and how long the reference service waits when
the migration meets a conflicting lock (the ACCESS EXCLUSIVE estimate: test_rehearsal.py)."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from upgate.checks.migration_safety import app_blocking, lint_migrations
from upgate.checks.migrations import apply_migration_file, load_migrations
from upgate.core.probe import DowntimeProber
from upgate.fixtures.reference import PLANS, start_service, stop_pid, wait_ready
from upgate.fixtures.reference import free_port as pick_port
from upgate.fixtures.seed import create_schema, seed

LOCKING = Path(PLANS) / "locking" / "migrations"
SQUAWK = str(Path(sys.executable).with_name("squawk")) if Path(sys.executable).with_name("squawk").exists() \
    else shutil.which("squawk")


@pytest.fixture
def seeded(pg_url: str) -> str:
    create_schema(pg_url)
    seed(pg_url, rows=3000)
    return pg_url


def test_squawk_findings_map_to_warnings_and_failures(tmp_path):
    files = [m.up for m in load_migrations(LOCKING)]
    result = lint_migrations(files, SQUAWK, "16.0", ignore_rules=["require-lock-timeout", "require-statement-timeout"])
    assert result.ok, result.summary
    assert any("changing-column-type" in w and "002_widen_tokens.up.sql" in w for w in result.warnings)
    assert not any("require-lock-timeout" in w for w in result.warnings)

    concurrent = tmp_path / "003_index.up.sql"
    concurrent.write_text("CREATE INDEX CONCURRENTLY episodic_logs_agent_idx ON episodic_logs (agent);\n")
    failing = lint_migrations([concurrent], SQUAWK, "16.0", fail_rules=["ban-concurrent-index-creation-in-transaction"])
    assert not failing.ok
    assert "003_index.up.sql:1: ban-concurrent-index-creation-in-transaction" in failing.summary


def test_app_waits_at_most_about_lock_timeout_while_another_session_holds_a_lock(seeded, tmp_path, capsys):
    """A reader holds ACCESS SHARE for ~1.5 s; the migration's ALTER (ADD COLUMN: ACCESS EXCLUSIVE, no
    rewrite, the served columns unchanged) queues behind it and every later
    request queues behind the ALTER, but only for lock_timeout: then the ALTER gives up, retries later,
    and goes through once the reader is gone. The prober's timeline shows each wait."""
    port = pick_port()
    pidfile = tmp_path / "service.pid"
    proc = start_service(seeded, port, "v1", pidfile, tmp_path / "service.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout=30, proc=proc)
        holder = psycopg.connect(seeded)
        holder.execute("SELECT id FROM episodic_logs LIMIT 1").fetchall()  # ACCESS SHARE until commit
        release = threading.Timer(1.5, holder.commit)
        retries: list[tuple[int, str]] = []
        with DowntimeProber([f"{base}/logs?limit=1"], interval_s=0.05, timeout_s=5.0) as prober:
            time.sleep(0.2)
            release.start()
            with psycopg.connect(seeded, autocommit=True) as conn:
                applied = apply_migration_file(conn, LOCKING / "001_add_cache_columns.up.sql", lock_timeout_ms=200,
                                               retries=10, backoff_s=0.1,
                                               on_retry=lambda n, exc: retries.append((n, type(exc).__name__)))
            time.sleep(0.2)
        release.join()
        holder.close()
        report = app_blocking([p.__dict__ for p in prober.timeline], slow_ms=100)
        with capsys.disabled():
            print(f"\n  migration: {applied.attempts} attempts ({len(retries)} lock timeouts) in {applied.elapsed_s:.2f} s;"
                  f" {report.summary}")
        assert applied.attempts >= 2 and retries[0] == (1, "LockNotAvailable")
        assert report.evidence["probes"] > 0 and all(p.ok for p in prober.timeline)
        with psycopg.connect(seeded) as conn:
            assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'episodic_logs' "
                                "AND column_name = 'cache_hit'").fetchone() == (1,)
    finally:
        stop_pid(proc.pid, 10.0)

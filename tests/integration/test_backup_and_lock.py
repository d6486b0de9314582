"""Backup is verified by a full read and restores exactly; the run lock admits one upgate per target."""

from __future__ import annotations

import hashlib
import subprocess

import psycopg
import pytest

from upgate.core.lock import LockBusy, LockUnavailable, run_lock
from upgate.embedded.postgres import find_pg_tool
from upgate.errors import StepFailed
from upgate.steps.backup import MANIFEST, restore_database, take_backup, verify_backup


@pytest.fixture
def table(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
    return pg_url


def contents(url):
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()


def test_backup_restores_exactly_after_damage(table, tmp_path):
    before = contents(table)
    backup = take_backup(table, tmp_path, find_pg_tool("pg_dump"), find_pg_tool("pg_restore"))
    assert backup.size_bytes > 0 and backup.verified == "full" and len(backup.sha256) == 64
    with psycopg.connect(table, autocommit=True) as conn:
        conn.execute("DELETE FROM t WHERE id % 7 = 0")
        conn.execute("UPDATE t SET v = left(v, 3) WHERE id % 11 = 0")
        conn.execute("ALTER TABLE t ADD COLUMN extra int")
    restore_database(table, backup, find_pg_tool("pg_restore"), find_pg_tool("psql"), tag="t1")
    assert contents(table) == before


def test_full_verification_catches_a_corrupt_archive_that_list_misses(table, tmp_path):
    # Compressed: gzip's CRC is what a full read checks a data block against (uncompressed, the full read
    # proves every file reads to its end; the manifest and the restore's verification do the rest).
    backup = take_backup(table, tmp_path, find_pg_tool("pg_dump"), find_pg_tool("pg_restore"), compression=1)
    block = max(backup.path.glob("*.dat.gz"), key=lambda p: p.stat().st_size)  # the table's data file
    data = bytearray(block.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = b"\x00" * 64
    block.write_bytes(bytes(data))
    verify_backup(backup.path, find_pg_tool("pg_restore"), "list")  # the TOC still reads
    with pytest.raises(StepFailed, match="verifying backup"):
        verify_backup(backup.path, find_pg_tool("pg_restore"), "full")


def test_restore_refuses_a_backup_changed_since_verification(table, tmp_path):
    backup = take_backup(table, tmp_path, find_pg_tool("pg_dump"), find_pg_tool("pg_restore"))
    with max(backup.path.glob("*.dat"), key=lambda p: p.stat().st_size).open("ab") as f:
        f.write(b"x")
    with pytest.raises(StepFailed, match="checksum mismatch"):
        restore_database(table, backup, find_pg_tool("pg_restore"), find_pg_tool("psql"), tag="t2")


def test_second_run_on_the_same_target_is_refused(pg_url):
    with run_lock(pg_url, "svc"):
        with pytest.raises(LockBusy, match="another upgate run holds the lock for target 'svc'"):
            with run_lock(pg_url, "svc"):
                pass
        with run_lock(pg_url, "other-target"):
            pass
    with run_lock(pg_url, "svc"):
        pass


def test_unreachable_database_is_named_without_password():
    with pytest.raises(LockUnavailable) as err:
        with run_lock("postgresql://u:pw@127.0.0.1:1/db", "svc", connect_timeout_s=1):
            pass
    assert "127.0.0.1:1" in str(err.value) and ":pw@" not in str(err.value)


def test_backup_is_a_directory_archive_with_a_manifest_sha256sum_accepts(table, tmp_path):
    backup = take_backup(table, tmp_path, find_pg_tool("pg_dump"), find_pg_tool("pg_restore"), jobs=2)
    assert backup.path.is_dir() and (backup.path / "toc.dat").exists()
    manifest = (backup.path / MANIFEST).read_text()
    assert "toc.dat" in manifest and hashlib.sha256(manifest.encode()).hexdigest() == backup.sha256
    checked = subprocess.run(["sha256sum", "-c", MANIFEST], cwd=backup.path, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

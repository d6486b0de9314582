"""Diagnostics on real PostgreSQL: a session holding a lock, one waiting on it, connections, logs, port owners."""

from __future__ import annotations

import os
import socket
import threading
import time

import psycopg

from upgate.checks.diagnostics import (
    connection_headroom,
    failed_gates,
    lock_waits,
    long_transactions,
    port_owners,
    tail_logs,
)


def test_lock_holder_and_waiter_are_named(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as setup:
        setup.execute("CREATE TABLE held (id int)")
    holder = psycopg.connect(pg_url)
    holder.execute("LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
    holder_pid = holder.info.backend_pid
    waiter_done = threading.Event()

    def wait_for_lock() -> None:
        with psycopg.connect(pg_url) as waiter:
            waiter.execute("SET lock_timeout = '20s'")
            try:
                waiter.execute("SELECT count(*) FROM held").fetchone()
            except psycopg.Error:
                pass
        waiter_done.set()

    thread = threading.Thread(target=wait_for_lock, daemon=True)
    thread.start()
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            waits = lock_waits(conn)
            for _ in range(100):  # until the waiter is queued behind the lock
                if not waits.ok:
                    break
                time.sleep(0.05)
                waits = lock_waits(conn)
            long = long_transactions(conn, min_seconds=0)
            headroom = connection_headroom(conn)
    finally:
        holder.rollback()
        holder.close()
        waiter_done.wait(20)
    assert not waits.ok, waits.summary
    assert waits.evidence["waits"][0]["blocked_by"] == [holder_pid]
    assert "AccessShareLock" in waits.summary and "held" in waits.summary
    assert not long.ok and holder_pid in [s["pid"] for s in long.evidence["sessions"]]
    assert headroom.ok and headroom.evidence["in_use"] >= 2


def test_quiet_database_has_nothing_to_report(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert lock_waits(conn).ok
        assert long_transactions(conn, min_seconds=3600).ok


def test_log_tail_and_missing_file(tmp_path):
    log = tmp_path / "service-v2.log"
    log.write_text("".join(f"line {i} postgresql://app:s3cret@db/prod\n" for i in range(100)))
    result = tail_logs([log, tmp_path / "absent.log"], lines=5)
    tail = result.evidence["tails"][str(log)]
    assert len(tail) == 5 and tail[-1].startswith("line 99") and "s3cret" not in "".join(tail)
    assert result.evidence["missing"] == [str(tmp_path / "absent.log")]


def test_port_owner_is_this_process():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = port_owners([port])
    owners = result.evidence["ports"][str(port)]
    assert owners and owners[0]["pid"] == os.getpid()


def test_failed_gates_read_from_results_files(tmp_path):
    (tmp_path / "gates-post.json").write_text('{"phase": "post", "gates": [{"nodeid": "gates/post/test_x.py::test_y", '
                                              '"outcome": "failed", "message": "boom"}]}')
    result = failed_gates([tmp_path / "gates-post.json", tmp_path / "gates-pre.json"])
    assert result.evidence["failures"] == [{"phase": "post", "gate": "gates/post/test_x.py::test_y", "message": "boom"}]

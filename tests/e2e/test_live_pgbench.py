"""`upgate run` while pgbench writes 100 transactions/s (-R 100 -c 2) through the whole upgrade.

pgbench's own invariants are checked here with plain SQL, independently of upgate: every transaction
pgbench committed (counted from its per-transaction --log files; what it reported as processed may leave
out a client's last transaction when its session was terminated) has its pgbench_history row, and
sum(abalance), sum(tbalance), sum(bbalance) each equal sum(delta) of history. Each test takes ~25 s (marker `live`: `pytest -m "not live"` leaves them out).
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from tests.e2e.support import run_upgate
from upgate.fixtures.live_load import PGBENCH_CLIENTS, PGBENCH_RATE
from upgate.fixtures.pgbench import PgbenchLoad

pytestmark = [pytest.mark.e2e, pytest.mark.live]

ROWS = 3000


def _logged_transactions(folder: Path) -> int:
    """Committed transactions in pgbench's --log files (every run, every client): one line per transaction,
    its third field the latency in microseconds, or `failed` for one rolled back by an error (a deadlock)."""
    return sum(1 for path in folder.glob("pgbench-*") for line in path.read_text(encoding="utf-8").splitlines()
               if line.split()[2].isdigit())


def _invariants(url: str) -> tuple[int, int, int, int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pgbench_history), (SELECT coalesce(sum(delta), 0) FROM pgbench_history), "
            "(SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts), "
            "(SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers), "
            "(SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches)").fetchone()
    assert row is not None
    return tuple(int(v) for v in row)  # type: ignore[return-value]


def _run_under_pgbench(target, tmp_path: Path):
    logs = tmp_path / "pgbench"
    with PgbenchLoad(target.database_url, PGBENCH_RATE, PGBENCH_CLIENTS, log_dir=logs) as load:
        proc, summary = run_upgate(target, tmp_path)
    committed = _logged_transactions(logs)
    processed = sum(run["processed"] for run in load.runs)
    # An aborted run's summary (its sessions terminated) may leave out a client's last committed transaction.
    assert processed - PGBENCH_CLIENTS * len(load.runs) <= committed <= processed + PGBENCH_CLIENTS * len(load.runs), \
        (committed, load.runs)
    assert committed > 100, load.runs  # the load really ran through the upgrade
    history, delta, accounts, tellers, branches = _invariants(target.database_url)
    assert history == committed, f"{committed - history} committed pgbench transactions lost"
    assert accounts == tellers == branches == delta
    return proc, summary, load


@pytest.mark.slow  # the long tier (make test-slow): make test keeps live-locust-good (no false alarm under live writes)
@pytest.mark.parametrize("target", ["live-pgbench-good"], indirect=True)
def test_good_upgrade_under_pgbench_is_upgraded_without_false_alarm(target, tmp_path):
    proc, summary, _ = _run_under_pgbench(target, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    live = summary["live"]
    assert live["mode"] == "decode" and live["unknown_xids"] == []
    assert live["transactions"]["live"] > 100 and live["changes"]["upgrade"] >= 100_000
    assert live["removed"] is True
    assert "live traffic" in proc.stdout and "writes/s" in proc.stdout


@pytest.mark.parametrize("target", ["live-pgbench-damage"], indirect=True)
def test_damage_under_pgbench_is_named_and_only_those_rows_repaired(target, tmp_path):
    proc, summary, _ = _run_under_pgbench(target, tmp_path)
    assert proc.returncode == 20, proc.stdout[-3000:]
    assert "300 changed (ids 333, 666, 999" in proc.stdout
    live = summary["live"]
    repaired = live["rollback"]["repairs"][-1]
    assert repaired["rows"] == 300
    assert [t["table"] for t in repaired["tables"]] == ["pgbench_accounts"]
    assert live["kept"]["kept"] == live["kept"]["live"] and live["kept"]["discarded"] == 0
    with psycopg.connect(target.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM pgbench_accounts WHERE filler = 'tiered'").fetchone()
        tier = conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'pgbench_accounts' "
                            "AND column_name = 'tier'").fetchone()
    assert row == (0,) and tier == (0,)


@pytest.mark.parametrize("target", ["live-pgbench-restore"], indirect=True)
def test_full_restore_under_pgbench_replays_every_committed_write(target, tmp_path):
    proc, summary, load = _run_under_pgbench(target, tmp_path)
    assert proc.returncode == 20, proc.stdout[-3000:]
    assert load.restarts >= 1  # the swap cut pgbench's connections: it wrote to both databases
    live = summary["live"]
    replay = live["rollback"]["replay"]
    assert replay["changes"] > 0 and replay["discarded"] == 0
    assert live["kept"]["kept"] == live["kept"]["live"] and live["kept"]["discarded"] == 0
    with psycopg.connect(target.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM pgbench_accounts WHERE filler = 'tiered'").fetchone()
    assert row == (0,)


@pytest.mark.parametrize("target", ["live-pgbench-restore"], indirect=True)
def test_restore_that_cannot_replay_stops_before_restoring_and_lists_the_writes(target, tmp_path):
    """Without logical decoding (attribution = "xmin") live writes cannot be replayed: NEEDS_ATTENTION before
    the restore, every live transaction listed, and nothing pgbench committed is lost."""
    text = target.config.read_text(encoding="utf-8")
    target.config.write_text(text.replace('attribution = "decode"', 'attribution = "xmin"'), encoding="utf-8")
    proc, summary, _ = _run_under_pgbench(target, tmp_path)
    assert proc.returncode == 30, proc.stdout[-3000:]
    assert "not restoring" in summary["reason"] and "discard_live_writes" in summary["reason"]
    assert summary["live"]["mode"] == "xmin"
    listed = next((tmp_path / "reports" / "runs").iterdir()) / "live" / "would-discard.jsonl"
    apps = {json.loads(line)["application"] for line in listed.read_text(encoding="utf-8").splitlines()}
    assert apps == {"pgbench"}
    with psycopg.connect(target.database_url) as conn:  # not restored: the damage is still there, said so
        row = conn.execute("SELECT count(*) FROM pgbench_accounts WHERE filler = 'tiered'").fetchone()
    assert row == (300,)

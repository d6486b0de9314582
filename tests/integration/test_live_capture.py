"""The live-traffic capture on a real PostgreSQL (wal_level = logical): what it creates and removes, how it
attributes each change, the judgement of the upgrade's changes alone, the xmin fallback, and the repair."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from upgate.checks.attribution import LIVE, UNKNOWN, UPGRADE
from upgate.checks.integrity import diff_table, fingerprint_table
from upgate.config import load_config
from upgate.core.live import LiveCapture, LiveView
from upgate.core.repair import repair_damage
from upgate.core.runs import RunDir
from upgate.errors import StepFailed


def _config(tmp_path: Path, url: str, attribution: str = "decode", tables: str = '["accounts", "history"]',
            extra: str = ""):
    path = tmp_path / "upgate.toml"
    path.write_text(f'[target]\nname = "live-test"\n[database]\nurl = "{url}"\n[integrity]\ntables = {tables}\n'
                    f'[live]\nattribution = "{attribution}"\n{extra}', encoding="utf-8")
    return load_config(path)


@pytest.fixture
def bank(pg_url: str) -> str:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (aid int PRIMARY KEY, abalance int NOT NULL, filler char(20))")
        conn.execute("INSERT INTO accounts SELECT g, 0, 'f' FROM generate_series(1, 1000) g")
        conn.execute("CREATE TABLE history (aid int, delta int)")
    return pg_url


def _say(label: str, message: str) -> None:
    pass


def _write(url: str, app: str, *statements: str, replica: bool = False) -> None:
    with psycopg.connect(url, application_name=app) as conn:
        if replica:
            conn.execute("SET session_replication_role = replica")  # triggers do not fire: nothing records it
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def _objects(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'upgate_live'), "
            "(SELECT count(*) FROM pg_trigger WHERE tgname = 'upgate_live'), "
            "(SELECT count(*) FROM pg_publication WHERE pubname LIKE 'upgate\\_live\\_%'), "
            "(SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'upgate\\_live\\_%' "
            "AND database = current_database()), "
            "(SELECT count(*) FROM pg_stat_activity WHERE application_name = 'upgate-live' "
            "AND datname = current_database())").fetchone()
    assert row is not None
    return dict(zip(["schema", "triggers", "publications", "slots", "holders"], row, strict=True))


def test_capture_creates_its_objects_and_removes_every_one(bank, tmp_path):
    run = RunDir.create(tmp_path / "reports")
    capture = LiveCapture.start(_config(tmp_path, bank), run, _say)
    assert capture is not None and capture.mode == "decode" and capture.snapshot
    assert _objects(bank) == {"schema": 1, "triggers": 2, "publications": 2, "slots": 1, "holders": 1}
    plan = capture.plan()
    assert "logical decoding" in plan.does[0] and "upgate-migrate" in plan.does[0]
    summary = capture.close()
    assert summary["removed"] is True
    assert _objects(bank) == {"schema": 0, "triggers": 0, "publications": 0, "slots": 0, "holders": 0}


def test_leftovers_of_a_killed_run_are_removed_and_named(bank, tmp_path):
    first = LiveCapture.start(_config(tmp_path, bank), RunDir.create(tmp_path / "reports"), _say)
    assert first is not None and first.holder is not None
    first.holder.close()  # killed: nothing removed
    said: list[str] = []
    second = LiveCapture.start(_config(tmp_path, bank), RunDir.create(tmp_path / "reports"),
                               lambda label, message: said.append(message))
    assert second is not None
    assert any("earlier, unfinished run" in m and "slot upgate_live_" in m for m in said), said
    assert _objects(bank)["slots"] == 1
    second.close()
    assert _objects(bank)["slots"] == 0


def test_every_change_attributed_by_application_and_the_upgrade_judged_alone(bank, tmp_path):
    run = RunDir.create(tmp_path / "reports")
    capture = LiveCapture.start(_config(tmp_path, bank), run, _say)
    assert capture is not None
    try:
        baseline = fingerprint_table(bank, "accounts", snapshot=capture.snapshot)
        # Written after the baseline was taken but before anything read it: the snapshot still shows 0.
        _write(bank, "pgbench", "UPDATE accounts SET abalance = abalance + 5 WHERE aid <= 100",
               "INSERT INTO history VALUES (1, 5)")
        _write(bank, "upgate-migrate", "ALTER TABLE accounts ADD COLUMN tier smallint",
               "UPDATE accounts SET tier = aid % 3",  # every row, preserved columns untouched
               "UPDATE accounts SET filler = 'damaged' WHERE aid IN (500, 501)")
        _write(bank, "pgbench", "UPDATE accounts SET abalance = abalance - 1 WHERE aid IN (1, 500)",
               "DELETE FROM accounts WHERE aid = 2")
        _write(bank, "someone", "UPDATE accounts SET abalance = 42 WHERE aid = 900", replica=True)
        assert baseline.count == 1000
        view = LiveView.open(run, bank)
        assert view is not None
        events = view.events("accounts")
        assert events.changes(LIVE) == 103 and events.transactions[UPGRADE] and events.transactions[UNKNOWN]
        verdict = view.verdict(baseline, diff_table(bank, baseline))
        result = verdict.result
        # Damaged: 500 and 501 (500 also written by live traffic afterwards, its damage carried), and 900 (a
        # transaction nothing recorded is judged as the upgrade's). Live traffic's 101 changed rows and the
        # one it deleted are attributed, not damage.
        assert not result.ok
        assert result.evidence["changed"]["count"] == 3 and result.evidence["lost"]["count"] == 0
        assert sorted(result.evidence["changed"]["first"]) == [500, 501, 900]
        assert result.evidence["attributed"] == {"lost": 1, "changed": 99, "added": 0}
        assert "attributed to live traffic" in result.summary
        assert verdict.repair['["500"]'] == {"columns": {"filler": "f                   "}}
    finally:
        capture.close()


def test_repair_puts_back_only_damaged_columns_and_keeps_later_live_writes(bank, tmp_path):
    run = RunDir.create(tmp_path / "reports")
    config = _config(tmp_path, bank)
    capture = LiveCapture.start(config, run, _say)
    assert capture is not None
    try:
        baseline = fingerprint_table(bank, "accounts", snapshot=capture.snapshot)
        baseline.save(run.baseline / "fingerprints")
        _write(bank, "upgate-migrate", "UPDATE accounts SET filler = 'damaged', abalance = 0 WHERE aid % 100 = 0",
               "DELETE FROM accounts WHERE aid = 7")
        _write(bank, "pgbench", "UPDATE accounts SET abalance = abalance + 3 WHERE aid = 200")
        view = LiveView.open(run, bank)
        assert view is not None
        verdict = view.verdict(baseline, diff_table(bank, baseline))
        assert verdict.result.evidence["changed"]["count"] == 10 and verdict.result.evidence["lost"]["count"] == 1
        verdict.damage.save(run.path / "integrity")
        # Between the verdict and the repair, live traffic writes a damaged row once more.
        _write(bank, "pgbench", "UPDATE accounts SET abalance = abalance + 4 WHERE aid = 300")
        done = repair_damage(config, run, view, _say)
        assert done["source"] == "baseline snapshot" and done["rows"] == 11
        with psycopg.connect(bank) as conn:
            rows = {r[0]: (r[1], r[2]) for r in conn.execute(
                "SELECT aid, abalance, filler FROM accounts WHERE aid IN (7, 100, 200, 300)").fetchall()}
        assert rows == {7: (0, "f                   "), 100: (0, "f                   "),
                        200: (3, "f                   "), 300: (4, "f                   ")}
        again = view.verdict(baseline, diff_table(bank, baseline))
        assert again.result.ok, again.result.summary
    finally:
        capture.close()


def test_repair_without_a_snapshot_reads_the_backup(bank, tmp_path):
    from upgate.core.journal import Journal
    from upgate.embedded.postgres import find_pg_tool
    from upgate.steps.backup import take_backup

    run = RunDir.create(tmp_path / "reports")
    config = _config(tmp_path, bank, tables='["accounts"]')
    baseline = fingerprint_table(bank, "accounts")
    baseline.save(run.baseline / "fingerprints")
    backup = take_backup(bank, run.path / "backup", find_pg_tool("pg_dump"), find_pg_tool("pg_restore"))
    Journal(run.journal).write("backup", "verified", backup=backup.to_json())
    _write(bank, "upgate-migrate", "UPDATE accounts SET abalance = 99 WHERE aid IN (10, 20)")
    diff_table(bank, baseline).save(run.path / "integrity")
    done = repair_damage(config, run, None, _say)
    assert done["source"] == "backup (scratch database)" and done["rows"] == 2
    assert diff_table(bank, baseline).empty


def test_repair_refuses_contested_rows(bank, tmp_path):
    run = RunDir.create(tmp_path / "reports")
    config = _config(tmp_path, bank)
    capture = LiveCapture.start(config, run, _say)
    assert capture is not None
    try:
        baseline = fingerprint_table(bank, "accounts", snapshot=capture.snapshot)
        baseline.save(run.baseline / "fingerprints")
        _write(bank, "upgate-migrate", "UPDATE accounts SET abalance = 100 WHERE aid = 5")
        _write(bank, "pgbench", "UPDATE accounts SET abalance = abalance + 1 WHERE aid = 5")  # built on the damage
        view = LiveView.open(run, bank)
        assert view is not None
        verdict = view.verdict(baseline, diff_table(bank, baseline))
        assert verdict.result.evidence["contested"]["count"] == 1 and "may derive" in verdict.result.summary
        verdict.damage.save(run.path / "integrity")
        with pytest.raises(StepFailed, match="wrote after the upgrade had changed them"):
            repair_damage(config, run, view, _say)
        with psycopg.connect(bank) as conn:
            assert conn.execute("SELECT abalance FROM accounts WHERE aid = 5").fetchone() == (101,)  # untouched
    finally:
        capture.close()


def test_xmin_fallback_attributes_rows_and_refuses_unattributable_losses(bank, tmp_path):
    run = RunDir.create(tmp_path / "reports")
    capture = LiveCapture.start(_config(tmp_path, bank, attribution="xmin"), run, _say)
    assert capture is not None and capture.mode == "xmin" and _objects(bank)["slots"] == 0
    try:
        assert "fallback" in capture.plan().does[1]
        baseline = fingerprint_table(bank, "accounts", snapshot=capture.snapshot)
        _write(bank, "pgbench", "UPDATE accounts SET abalance = 1 WHERE aid <= 10")
        _write(bank, "upgate-migrate", "UPDATE accounts SET abalance = 2 WHERE aid = 20")
        view = LiveView.open(run, bank)
        assert view is not None
        verdict = view.verdict(baseline, diff_table(bank, baseline))
        assert verdict.result.evidence["changed"]["first"] == [20]
        assert verdict.result.evidence["attributed"]["changed"] == 10
        _write(bank, "pgbench", "DELETE FROM accounts WHERE aid = 30")
        verdict = view.verdict(baseline, diff_table(bank, baseline))
        assert not verdict.result.ok and "cannot be attributed" in verdict.result.summary
        assert "wal_level = logical" in verdict.result.summary
    finally:
        capture.close()
    assert _objects(bank)["triggers"] == 0


def test_decode_demanded_from_a_role_without_replication_blocks(bank, tmp_path):
    with psycopg.connect(bank, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS upgate_plain")
        conn.execute("CREATE ROLE upgate_plain LOGIN")
        conn.execute("GRANT CREATE ON DATABASE " + conn.info.dbname + " TO upgate_plain")
        conn.execute("ALTER TABLE accounts OWNER TO upgate_plain")
        conn.execute("ALTER TABLE history OWNER TO upgate_plain")
    plain = bank.replace("postgres:@", "upgate_plain:@")
    with pytest.raises(StepFailed, match="REPLICATION"):
        LiveCapture.start(_config(tmp_path, plain), RunDir.create(tmp_path / "reports"), _say)
    capture = LiveCapture.start(_config(tmp_path, plain, attribution="auto"), RunDir.create(tmp_path / "r2"), _say)
    assert capture is not None and capture.mode == "xmin" and "REPLICATION" in capture.state["why"]
    capture.close()
    assert _objects(bank) == {"schema": 0, "triggers": 0, "publications": 0, "slots": 0, "holders": 0}


@pytest.mark.parametrize("mode", ["xmin", "decode"])
def test_restore_that_cannot_keep_live_writes_stops_first_and_lists_them(bank, tmp_path, mode):
    import json

    run = RunDir.create(tmp_path / "reports")
    capture = LiveCapture.start(_config(tmp_path, bank, attribution=mode), run, _say)
    assert capture is not None and capture.mode == mode
    try:
        _write(bank, "pgbench", "INSERT INTO accounts VALUES (5001, 7, 'live')")
        if mode == "decode":  # a write nothing recorded: unknown, so a replay cannot know whose it is
            _write(bank, "psql", "UPDATE accounts SET abalance = 9 WHERE aid = 5", replica=True)
        with pytest.raises(StepFailed, match="not restoring") as stopped:
            capture.before_restore()
        listed = [json.loads(line) for line in (run.path / "live" / "would-discard.jsonl").read_text().splitlines()]
        assert listed, stopped.value
        if mode == "xmin":
            assert "without logical decoding" in str(stopped.value)
            assert [r["application"] for r in listed] == ["pgbench"]
        else:
            assert "nothing recorded" in str(stopped.value)
            assert {(r["key"][0], r["op"]) for r in listed} == {("5001", "I"), ("5", "U")}, listed
        # With consent the restore goes ahead, and what it cannot bring back is counted.
        capture.config = _config(tmp_path, bank, attribution=mode, extra="[rollback]\ndiscard_live_writes = true\n")
        assert capture.before_restore()["problems"]
    finally:
        capture.close()


def test_a_drain_killed_before_moving_the_slot_keeps_each_transaction_once(bank, tmp_path):
    """A process killed after writing what the slot held to the run folder but before moving the slot past it
    leaves both holding those transactions: the next drain and every reader of the stream take each once."""
    from upgate.checks.changes import peek_changes, write_transactions
    from upgate.core.live import DRAIN_APP

    run = RunDir.create(tmp_path / "reports")
    config = _config(tmp_path, bank)
    capture = LiveCapture.start(config, run, _say)
    assert capture is not None
    try:
        _write(bank, "pgbench", "INSERT INTO history VALUES (1, 5)")
        _write(bank, "pgbench", "INSERT INTO history VALUES (2, 6)")
        generation = capture.state["generations"][-1]
        with psycopg.connect(bank, autocommit=True) as conn:  # the killed process: written, slot not moved
            batch = peek_changes(conn, generation["slot"], generation["publications"])
        assert len(batch.transactions) == 2
        stream = run.path / "live" / "stream-0.jsonl"
        write_transactions(stream, batch.transactions, batch.relations)
        generation.setdefault("files", []).append("live/stream-0.jsonl")
        run.save_baseline("live", capture.state)
        _write(bank, "pgbench", "INSERT INTO history VALUES (3, 7)")

        view = LiveView.open(run, bank)
        assert view is not None
        seen = [t.xid for t in view.stream() if not isinstance(t, str)]
        assert len(seen) == len(set(seen)) == 3 and seen[:2] == [t.xid for t in batch.transactions]
        with psycopg.connect(bank, autocommit=True, application_name=DRAIN_APP) as conn:
            items = capture.drain(conn, whole=True)
        assert [t.xid for t in items if not isinstance(t, str)] == seen
        lines = stream.read_text(encoding="utf-8").splitlines()
        assert sum('"xid"' in line for line in lines) == 3  # the file took only the one it did not hold
        assert view.events("history").inserted[LIVE] == [{"aid": "1", "delta": "5"}, {"aid": "2", "delta": "6"},
                                                          {"aid": "3", "delta": "7"}]
    finally:
        capture.close()


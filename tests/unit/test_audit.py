"""The audit log: append-only JSON lines, hash-chained, safe with concurrent writers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from upgate.core.journal import Journal
from upgate.reporting.audit import GENESIS, AuditLog, read_audit, verify_chain


def test_every_line_names_who_when_where_and_chains_to_the_previous(tmp_path: Path):
    log = AuditLog(tmp_path / "audit.jsonl", run_id="r1", target="svc", config_sha256="abc")
    log.record("run", "start")
    log.record("run", "end", verdict="UPGRADED", exit_code=0)
    lines = read_audit(tmp_path / "audit.jsonl")
    assert [(x["action"], x["event"]) for x in lines] == [("run", "start"), ("run", "end")]
    for line in lines:
        assert line["who"] and line["host"] and line["ts"] and line["config_sha256"] == "abc"
    assert lines[0]["prev"] == GENESIS
    assert lines[1]["verdict"] == "UPGRADED"
    assert verify_chain(tmp_path / "audit.jsonl").ok


def test_an_edited_line_breaks_the_chain_at_the_next_line(tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i in range(4):
        log.record("step", "end", n=i, verdict="ROLLED_BACK")
    lines = path.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["verdict"] = "UPGRADED"
    lines[1] = json.dumps(edited)
    path.write_text("\n".join(lines) + "\n")
    check = verify_chain(path)
    assert not check.ok and check.first_broken_line == 3, check.summary


def test_actor_comes_from_the_environment_when_set(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("UPGATE_ACTOR", "release-bot")
    AuditLog(tmp_path / "a.jsonl").record("run", "start")
    assert read_audit(tmp_path / "a.jsonl")[0]["who"] == "release-bot"


def test_concurrent_writers_never_interleave_or_break_the_chain(tmp_path: Path):
    path = tmp_path / "audit.jsonl"

    def write(n: int) -> None:
        log = AuditLog(path, writer=n)
        for i in range(25):
            log.record("step", "end", i=i, padding="x" * 300)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check = verify_chain(path)
    assert check.ok and check.lines == 100, check.summary


def test_the_journal_mirrors_each_step_into_the_audit_log(tmp_path: Path):
    audit = AuditLog(tmp_path / "audit.jsonl", run_id="r9", config_sha256="feed")
    journal = Journal(tmp_path / "journal.jsonl", observers=[audit.mirror()])
    with journal.step("migrate", files=["001.sql"]):
        pass
    journal.write("run", "end", verdict="UPGRADED", exit_code=0)
    lines = read_audit(tmp_path / "audit.jsonl")
    assert [(x["action"], x["event"], x.get("status")) for x in lines] == [
        ("migrate", "start", None), ("migrate", "end", "ok"), ("run", "end", None)]
    assert lines[-1]["verdict"] == "UPGRADED" and all(x["run_id"] == "r9" for x in lines)
    assert "files" not in lines[0]  # run detail stays in the journal

"""The journal writes a line before and after each step, and redacts secrets."""

from __future__ import annotations

import pytest

from upgate.core.journal import Journal
from upgate.errors import ConfigError


def test_step_writes_start_and_end(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    with journal.step("migrate", files=2) as extra:
        extra["applied"] = ["001"]
    lines = journal.read()
    assert [(r["step"], r["event"]) for r in lines] == [("migrate", "start"), ("migrate", "end")]
    assert lines[0]["files"] == 2 and lines[1]["status"] == "ok" and lines[1]["applied"] == ["001"]


def test_failed_step_is_journaled_with_the_error(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    with pytest.raises(RuntimeError), journal.step("deploy"):
        raise RuntimeError("connect to postgresql://u:pw@h/db refused")
    end = journal.read()[-1]
    assert end["status"] == "failed" and "pw" not in end["error"] and "u:***@h" in end["error"]


def test_torn_last_line_is_ignored_with_a_warning(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    journal.write("run", "start")
    journal.write("migrate", "applying", unit="001")
    with journal.path.open("a") as f:
        f.write('{"ts": "2026-12-01T10:00:00", "step": "migrate", "ev')  # killed mid-line
    records = Journal(journal.path).read()
    assert [(r["step"], r["event"]) for r in records] == [("run", "start"), ("migrate", "applying")]
    reader = Journal(journal.path)
    reader.read()
    assert len(reader.warnings) == 1 and "torn last line ignored" in reader.warnings[0]


def test_next_writer_cuts_the_torn_line_off_instead_of_gluing_records(tmp_path):
    path = tmp_path / "journal.jsonl"
    Journal(path).write("run", "start")
    with path.open("a") as f:
        f.write('{"ts": "2026-12-01T10:00:00", "st')
    Journal(path).write("run", "start", command="rollback")
    reader = Journal(path)
    assert [r.get("command") for r in reader.read()] == [None, "rollback"] and reader.warnings == []


def test_a_whole_record_that_lost_its_newline_is_kept(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text('{"ts": "x", "step": "run", "event": "start"}')
    Journal(path).write("run", "end")
    assert [r["event"] for r in Journal(path).read()] == ["start", "end"]


def test_a_damaged_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text('{"step": "run", "event": "start"}\nnot json\n{"step": "run", "event": "end"}\n')
    with pytest.raises(ConfigError, match=r"journal.jsonl:2: not a journal record"):
        Journal(path).read()


def test_a_write_that_fails_never_raises_and_is_written_first_when_it_can(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    errors = []
    journal.on_error = errors.append
    path.mkdir()  # opening a folder for writing fails, as a full or read-only disk would
    journal.write("migrate", "applying", unit="001")
    journal.write("migrate", "applied", unit="001")
    assert not journal.healthy and len(journal.unwritten) == 2 and len(errors) == 1
    path.rmdir()
    journal.write("deploy", "start")
    assert journal.healthy
    assert [r["event"] for r in Journal(path).read()] == ["applying", "applied", "start"]

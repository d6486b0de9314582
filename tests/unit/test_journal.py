"""The journal writes a line before and after each step, and redacts secrets."""

from __future__ import annotations

import pytest

from upgate.core.journal import Journal


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

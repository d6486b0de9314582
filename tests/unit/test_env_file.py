"""Env files edited as text: keys renamed, deleted and set, every other byte kept, values never shown."""

from __future__ import annotations

import pytest

from upgate.checks.appconfig import edit_env

ENV = "# settings\nexport DB_URL='postgres://a:s3cret@db/app'  \nLOG_LEVEL=debug\r\nLEGACY=1\n\n# DB_URL=old\n"


def test_rename_delete_set_keep_everything_else():
    text, changes = edit_env(ENV, {"LOG_LEVEL": "info", "NEW": "x"}, {"DB_URL": "DATABASE_URL"}, ["LEGACY"])
    assert text == ("# settings\nexport DATABASE_URL='postgres://a:s3cret@db/app'  \nLOG_LEVEL=info\r\n\n"
                    "# DB_URL=old\nNEW=x\n")
    assert changes == ["renamed DB_URL -> DATABASE_URL", "deleted LEGACY", "set LOG_LEVEL (changed)",
                       "set NEW (added)"]
    assert "s3cret" not in " ".join(changes)


def test_applying_it_again_changes_nothing():
    once, _ = edit_env(ENV, {"LOG_LEVEL": "info"}, {"DB_URL": "DATABASE_URL"}, ["LEGACY"])
    again, changes = edit_env(once, {"LOG_LEVEL": "info"}, {"DB_URL": "DATABASE_URL"}, ["LEGACY"])
    assert again == once and changes == []


def test_a_rename_of_an_absent_key_or_onto_a_set_one_is_an_error():
    with pytest.raises(ValueError, match=r"\.env: cannot rename NOPE to X: NOPE is not set"):
        edit_env(ENV, {}, {"NOPE": "X"}, [])
    with pytest.raises(ValueError, match="cannot rename DB_URL to LOG_LEVEL: both are set"):
        edit_env(ENV, {}, {"DB_URL": "LOG_LEVEL"}, [])


def test_a_file_without_a_final_newline_gets_one_before_an_added_key():
    assert edit_env("A=1", {"B": "2"}, {}, []) == ("A=1\nB=2\n", ["set B (added)"])

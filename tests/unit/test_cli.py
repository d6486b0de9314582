"""The CLI explains itself: every command's --help renders, and no command is a usage error (exit 2)."""

from __future__ import annotations

import pytest

from upgate.cli import main

COMMANDS = ["run", "demo", "rollback", "report", "history", "config", "check-config", "backup", "recover"]


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]], ids=["upgate", *COMMANDS])
def test_help_renders(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: upgate")


def test_help_lists_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for code, verdict in (("0", "UPGRADED"), ("10", "BLOCKED"), ("20", "ROLLED_BACK"), ("30", "NEEDS_ATTENTION")):
        assert f"{code}" in out and verdict in out


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2


def test_check_config_names_the_bad_key(tmp_path, capsys):
    config = tmp_path / "upgate.toml"
    config.write_text('[target]\nname = "x"\n\n[app]\nbase_url = "http://127.0.0.1:1"\nhealth = "/h"\n')
    assert main(["check-config", "--config", str(config)]) == 2
    assert f"{config}:6: unknown key 'app.health'" in capsys.readouterr().err

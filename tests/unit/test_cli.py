"""The CLI explains itself: every command's --help renders, and no command is a usage error (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys

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


def _config(tmp_path):
    config = tmp_path / "upgate.toml"
    config.write_text('[target]\nname = "x"\n')
    return config


def test_reports_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    reports = tmp_path / "reports.txt"
    reports.write_text("not a folder")
    assert main(["run", "--config", str(_config(tmp_path)), "--reports", str(reports)]) == 2
    err = capsys.readouterr().err
    assert f"--reports {reports}: is a file, not a folder" in err and "Traceback" not in err


def test_reports_with_a_missing_parent_is_a_usage_error(tmp_path, capsys):
    reports = tmp_path / "no-such-folder" / "reports"
    assert main(["run", "--config", str(_config(tmp_path)), "--reports", str(reports)]) == 2
    assert f"its parent folder {reports.parent} does not exist" in capsys.readouterr().err
    assert not reports.parent.exists()


def test_reports_on_a_read_only_mount_is_a_usage_error(tmp_path, capsys):
    mount = tmp_path / "ro"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        assert main(["run", "--config", str(_config(tmp_path)), "--reports", str(mount / "reports")]) == 2
        assert "cannot create it: Read-only file system" in capsys.readouterr().err
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_config_that_is_not_utf8_is_a_usage_error(tmp_path, capsys):
    config = tmp_path / "upgate.toml"
    config.write_bytes(b'[target]\nname = "caf\xe9"\n')
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: not UTF-8 text" in err and "Traceback" not in err


def test_check_config_into_a_closed_pipe_ends_quietly(tmp_path):
    config = tmp_path / "upgate.toml"
    config.write_text('[target]\nname = "x"\n\n[database]\nurl = "postgresql://u:pw@127.0.0.1:1/db"\n')
    proc = subprocess.Popen([sys.executable, "-m", "upgate.cli", "check-config", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head -0`: the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "BrokenPipeError" not in err and "Traceback" not in err


def test_rollback_of_a_folder_that_is_no_run_is_a_usage_error(tmp_path, capsys):
    assert main(["rollback", "--config", str(_config(tmp_path)), "--run", str(tmp_path)]) == 2
    assert "no journal.jsonl; not a run folder" in capsys.readouterr().err

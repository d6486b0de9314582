"""`upgate backup` and `upgate recover` on the reference target, as an operator runs them in an emergency; every
outcome checked by the test itself (each file's sha256 against the manifest, the rows' content, the columns,
the build serving, the config file's bytes)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.support import upgate
from tests.e2e.test_scenarios import V2_COLUMNS, columns, rows_digest, serving_build
from upgate.embedded.postgres import find_pg_tool
from upgate.fixtures.reference import (
    apply_sql_file,
    migrations,
    read_pidfile,
    start_service,
    stop_pid,
    wait_ready,
)

pytestmark = pytest.mark.e2e

ROWS = 2000


def backup(target, tmp_path: Path) -> Path:
    proc = upgate("backup", "--config", str(target.config), "--output", str(tmp_path / "backups"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Path(re.search(r"^backup: (/\S+)$", proc.stdout, re.M).group(1))  # type: ignore[union-attr]


def disaster(target) -> None:
    """What an emergency looks like: a destructive migration applied by hand and v2 started in v1's place."""
    for path in migrations("destructive"):
        apply_sql_file(target.database_url, path)
    pid = read_pidfile(target.pidfile)
    assert pid is not None
    stop_pid(pid)
    port = int(target.base_url.rsplit(":", 1)[1])
    start_service(target.database_url, port, "v2", target.pidfile, target.folder / "service-v2.log")
    wait_ready(target.base_url)


@pytest.mark.parametrize("target", ["good"], indirect=True)
def test_backup_then_recover_after_a_disaster(target, tmp_path):
    before, toml = rows_digest(target.database_url), target.config.read_bytes()
    folder = backup(target, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == entry["sha256"], name
    assert {"database/database.dir/toc.dat", "database/schema.json", "config/upgate.toml"} <= set(manifest["files"])
    assert manifest["database"]["fingerprints"] == {"episodic_logs": ROWS}
    assert any(name.startswith("logs/") for name in manifest["files"]), "no service log in the backup"
    assert manifest["database"]["dump"]["verified"] == "full"

    disaster(target)
    target.config.write_bytes(toml + b"# edited during the incident\n")
    assert serving_build(target.base_url) == "v2" and rows_digest(target.database_url) != before
    proc = upgate("recover", "--config", str(target.config), "--from", str(folder),
                  "--reports", str(tmp_path / "reports"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "VERDICT: RECOVERED (exit 0)" in proc.stdout
    assert serving_build(target.base_url) == "v1"
    assert rows_digest(target.database_url) == before
    assert not V2_COLUMNS & columns(target.database_url)
    assert target.config.read_bytes() == toml
    summary = json.loads(next((tmp_path / "reports" / "recoveries").glob("*/summary.json")).read_text())
    assert [r["rung"] for r in summary["rollback"]["ladder"]] == [
        "stop the app", "restore the database", "restore config files", "start the previous version",
        "verify against the backup"]
    assert not (tmp_path / "reports" / "runs").exists(), "a recovery is not an upgrade run"


@pytest.mark.parametrize("target", ["good"], indirect=True)
def test_a_changed_backup_is_refused_with_nothing_touched(target, tmp_path):
    folder = backup(target, tmp_path)
    with (folder / "database" / "database.dir" / "toc.dat").open("ab") as dump:
        dump.write(b"\0")
    pid = read_pidfile(target.pidfile)
    proc = upgate("recover", "--config", str(target.config), "--from", str(folder),
                  "--reports", str(tmp_path / "reports"), cwd=tmp_path)
    assert proc.returncode == 30, proc.stdout + proc.stderr
    assert "database/database.dir/toc.dat changed since the backup" in proc.stdout and "nothing was touched" in proc.stdout
    assert read_pidfile(target.pidfile) == pid and serving_build(target.base_url) == "v1"


def test_recover_without_a_backup_is_a_usage_error(tmp_path):
    config = tmp_path / "upgate.toml"
    config.write_text('[target]\nname = "svc"\n')
    proc = upgate("recover", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 2 and "run `upgate backup` first" in proc.stderr
    proc = upgate("recover", "--config", str(config), "--from", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "not a folder made by `upgate backup`" in proc.stderr


@pytest.mark.parametrize("target", ["good"], indirect=True)
def test_the_dump_in_the_backup_restores_with_plain_pg_restore(target, tmp_path):
    folder = backup(target, tmp_path)
    listing = subprocess.run([find_pg_tool("pg_restore"), "--list", str(folder / "database" / "database.dir")],
                             capture_output=True, text=True)
    assert listing.returncode == 0 and "TABLE DATA public episodic_logs" in listing.stdout

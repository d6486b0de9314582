"""One secret planted in every input a run reads today, a full good upgrade, then a search for it everywhere:
every file the run wrote, the terminal output, and the process list while it ran. Zero hits.

Planted in: the database URL of the config file and of DATABASE_URL (a password with ':', '@' and '/',
URL-encoded as users write it), the deploy's environment (the service's DATABASE_URL and an API token).
The model endpoint has no header setting yet, so no model input carries it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest

from upgate.embedded.postgres import PostgresServer, find_pg_tool
from upgate.fixtures.demo import DemoTarget, start_target, stop_target
from upgate.fixtures.reference import PLANS

pytestmark = [pytest.mark.e2e, pytest.mark.quick]  # the planted-secret run, in make test

SECRET = "Pl4nted:S3cr3t@x/y"
NEEDLES = (SECRET, quote(SECRET, safe=""), "S3cr3t")  # raw, URL-encoded, and its core
LIBPQ_TOOLS = ("pg_dump", "pg_restore", "psql")


@dataclass
class PlantedRun:
    exit_code: int
    output: str
    folder: Path
    written: list[Path]
    process_hits: list[str] = field(default_factory=list)
    tool_argv: list[str] = field(default_factory=list)
    processes_seen: int = 0  # distinct upgate processes (run and gate children) the watcher saw


def hits(text: str) -> list[str]:
    return [n for n in NEEDLES if n in text]


def with_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    user = rest.split("@", 1)[0].split(":", 1)[0]
    return f"{scheme}://{user}:{quote(SECRET, safe='')}@{rest.split('@', 1)[1]}"


def wrap_tools(folder: Path, log: Path) -> Path:
    """pg_dump, pg_restore and psql that note their argv in `log` and run the real ones: what ps would show."""
    folder.mkdir()
    for name in LIBPQ_TOOLS:
        script = folder / name
        script.write_text(f'#!/bin/sh\nprintf "%s\\n" "{name} $*" >> "{log}"\nexec "{find_pg_tool(name)}" "$@"\n')
        script.chmod(0o755)
    return folder


def write_config(target: DemoTarget, folder: Path, url: str, bin_dir: Path) -> Path:
    port = target.base_url.rsplit(":", 1)[1]
    service = [sys.executable, "-m", "upgate.fixtures.service", "--port", port, "--pidfile", str(target.pidfile)]
    plan = PLANS / "good"
    config = folder / "upgate.toml"
    config.write_text(f"""
[target]
name = "planted"
from_version = "v1"
to_version = "v2"

[database]
url = "{url}"
bin_dir = "{bin_dir}"

[app]
base_url = "{target.base_url}"

[migrate]
directory = "{plan / 'migrations'}"

[deploy]
kind = "process"
pidfile = "{target.pidfile}"
workdir = "{Path(__file__).resolve().parents[2]}"
start = {json.dumps([*service, "--build", "v2"])}
previous = {json.dumps([*service, "--build", "v1"])}
env = {{ DATABASE_URL = "{url}", APP_API_TOKEN = "{SECRET}" }}
ready_timeout_s = 20

[integrity]
tables = ["episodic_logs"]
""")
    return config


def watch_processes(stop: threading.Event, seen: list[str], upgate: set[int]) -> None:
    me = os.getpid()
    while not stop.is_set():
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                line = " ".join(proc.info["cmdline"] or [])
            except (psutil.Error, TypeError):
                continue
            if "upgate" in line and proc.info["pid"] != me:
                upgate.add(proc.info["pid"])
            if proc.info["pid"] != me and hits(line) and line not in seen:
                seen.append(line)
        stop.wait(0.02)


@pytest.fixture(scope="module")
def planted(pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlantedRun]:
    folder = tmp_path_factory.mktemp("planted")
    target = start_target("good", pg_server, folder / "target", rows=3000)
    try:
        tool_log = folder / "tool-argv.log"
        url = with_password(target.database_url)
        config = write_config(target, folder / "target", url, wrap_tools(folder / "bin", tool_log))
        env = {**os.environ, "DATABASE_URL": url}
        seen: list[str] = []
        upgate: set[int] = set()
        stop = threading.Event()
        watcher = threading.Thread(target=watch_processes, args=(stop, seen, upgate), daemon=True)
        watcher.start()
        try:
            proc = subprocess.run([sys.executable, "-m", "upgate.cli", "run", "--config", str(config), "--reports",
                                   str(folder / "reports")], cwd=folder, env=env, capture_output=True, text=True,
                                  timeout=600)
        finally:
            time.sleep(0.1)
            stop.set()
            watcher.join(timeout=5)
        written = [p for p in (folder / "reports").rglob("*") if p.is_file()]
        written += [p for p in (folder / "target").rglob("*") if p.is_file() and p != config]
        tools = tool_log.read_text().splitlines() if tool_log.exists() else []
        yield PlantedRun(proc.returncode, proc.stdout + proc.stderr, folder, written,
                         [line for line in seen if not any(t in line for t in LIBPQ_TOOLS)], tools, len(upgate))
    finally:
        stop_target(target, pg_server)


def test_the_run_went_through_every_step(planted: PlantedRun) -> None:
    assert planted.exit_code == 0, planted.output[-3000:]
    assert any(line.startswith("pg_dump") for line in planted.tool_argv), "the backup must have run pg_dump"


def test_no_file_written_holds_the_secret(planted: PlantedRun) -> None:
    leaking = {str(p.relative_to(planted.folder)): hits(p.read_bytes().decode("utf-8", "replace"))
               for p in planted.written}
    assert len(planted.written) > 10
    assert {name: found for name, found in leaking.items() if found} == {}


def test_the_terminal_output_does_not_hold_the_secret(planted: PlantedRun) -> None:
    assert planted.output.strip()
    assert hits(planted.output) == []


def test_no_process_shows_the_secret_in_its_arguments(planted: PlantedRun) -> None:
    assert planted.processes_seen >= 3  # the run, its gate children, the service: the watcher was looking
    assert planted.process_hits == []


def test_libpq_tools_get_the_password_outside_argv(planted: PlantedRun) -> None:
    assert [line for line in planted.tool_argv if hits(line)] == []

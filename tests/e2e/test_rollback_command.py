"""`upgate rollback` undoes a run from its journal alone, wherever the run was killed (kill -9).

The run is a real `upgate run` in its own process; a journal observer SIGKILLs its whole process
group right after the chosen record is on disk (as the machine dying there would). Then `upgate
rollback` runs as a user runs it, and the test checks the outcome itself: which build serves, the
v2 columns, every seeded row's content. Nothing touched -> BLOCKED (10); anything touched -> 20.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.e2e.support import upgate
from tests.e2e.test_scenarios import V2_COLUMNS, columns, rows_digest, serving_build
from upgate.embedded.postgres import database_name
from upgate.fixtures.demo import start_target, stop_target

pytestmark = pytest.mark.e2e

ROWS = 2000

# Every record a good run journals: (step, event, occurrence). Before the first change to the target
# (the first migration unit) a killed run has nothing to undo. The backup runs beside the pre-gates,
# so its records interleave with theirs.
GOOD_RUN = [
    ("run", "start", 1, 10), ("pre-gates", "start", 1, 10), ("pre-gates", "end", 1, 10),
    ("backup", "start", 1, 10), ("backup", "verified", 1, 10), ("backup", "end", 1, 10),
    ("migrate", "start", 1, 10), ("migrate", "applying", 1, 20), ("migrate", "applied", 1, 20),
    ("migrate", "end", 1, 20), ("deploy", "start", 1, 20), ("deploy", "stopping", 1, 20),
    ("deploy", "stopped", 1, 20), ("deploy", "starting", 1, 20), ("deploy", "started", 1, 20),
    ("deploy", "ready", 1, 20), ("deploy", "end", 1, 20), ("post-gates", "start", 1, 20),
    ("post-gates", "end", 1, 20), ("run", "end", 1, 20),
]

# The ladder of a run whose post-gates fail (destructive): down migrations cannot bring deleted rows
# back, verification fails, the backup is restored. One point in each state the ladder passes through
# (new version stopped, a down unit cut off, verification running, each stage of the restore swap).
# Every kind of ladder record was killed at once while this was built (21 points, ~14 min); these keep
# the distinct states at a cost the suite can carry.
DESTRUCTIVE_LADDER = [
    ("deploy", "stopped", 2), ("migrate", "reverting", 2), ("rollback:down migrations", "end", 1),
    ("verify", "start", 1), ("restore", "created", 1), ("restore", "verified", 1),
    ("restore", "renamed-out", 1), ("restore", "done", 1),
]

KILLER = """
import os, signal, sys
from pathlib import Path
from upgate.config import load_config
from upgate.core.pipeline import Pipeline, RunOptions

config, reports, step, event, nth = sys.argv[1:6]
pipeline = Pipeline(load_config(config), RunOptions(reports=Path(reports)))
seen = 0

def kill_at(record):
    global seen
    if record["step"] == step and record["event"] == event:
        seen += 1
        if seen == int(nth):
            os.killpg(0, signal.SIGKILL)

pipeline.journal.observers.append(kill_at)
pipeline.execute()
"""


def run_killed_at(config: Path, reports: Path, point: tuple[str, str, int], cwd: Path) -> Path:
    """`upgate run` killed -9 right after the `nth` journal record (step, event); its run folder."""
    step, event, nth = point
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    proc = subprocess.Popen([sys.executable, "-c", KILLER, str(config), str(reports), step, event, str(nth)],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    code = proc.wait(timeout=600)
    assert code == -signal.SIGKILL, f"the run ended (exit {code}) before journaling {point}"
    run = sorted((reports / "runs").iterdir())[-1]
    # The point is on disk; a record of the backup running beside the pre-gates may follow it.
    records = [json.loads(line) for line in run.joinpath("journal.jsonl").read_text().splitlines()]
    assert (step, event) in [(r["step"], r["event"]) for r in records[-2:]]
    return run


def rollback_record(run: Path) -> dict:
    """What `upgate rollback` wrote: summary.json, or beside it when the killed run had already written its own."""
    records = sorted(p for p in run.glob("rollback-*.json") if not p.name.endswith("-downtime.json"))
    return json.loads((records[-1] if records else run / "summary.json").read_text())


def assert_v1_as_before(target, before: dict[int, str]) -> None:
    assert serving_build(target.base_url) == "v1"
    assert not (V2_COLUMNS & columns(target.database_url))
    assert rows_digest(target.database_url) == before


# make test kills at the points where the answer changes (the last nothing-touched record, the first change,
# nothing serving, the verdict reached); every other point is in the long tier (make test-slow).
QUICK_GOOD = {("backup", "verified"), ("migrate", "applying"), ("deploy", "stopped"), ("post-gates", "end")}
QUICK_LADDER = {("migrate", "reverting"), ("restore", "created"), ("restore", "renamed-out")}


@pytest.mark.parametrize(("step", "event", "nth", "expected"),
                         [pytest.param(*p, marks=() if p[:2] in QUICK_GOOD else pytest.mark.slow) for p in GOOD_RUN],
                         ids=[f"{s}:{e}" for s, e, _, _ in GOOD_RUN])
def test_run_killed_at_each_journal_point_is_undone(pg_server, tmp_path, step, event, nth, expected):
    target = start_target("good", pg_server, tmp_path, rows=ROWS)
    try:
        before = rows_digest(target.database_url)
        run = run_killed_at(target.config, tmp_path / "reports", (step, event, nth), tmp_path)
        result = upgate("rollback", "--config", str(target.config), "--run", str(run), cwd=tmp_path)
        assert result.returncode == expected, result.stdout + result.stderr
        if expected == 10:
            assert "nothing to undo" in result.stdout
        else:
            assert "ROLLED_BACK" in result.stdout
            assert rollback_record(run)["rollback"]["verified"] is True
        assert_v1_as_before(target, before)
    finally:
        stop_target(target, pg_server)


@pytest.mark.parametrize(("step", "event", "nth"),
                         [pytest.param(*p, marks=() if p[:2] in QUICK_LADDER else pytest.mark.slow)
                          for p in DESTRUCTIVE_LADDER],
                         ids=[f"{s}:{e}:{n}" for s, e, n in DESTRUCTIVE_LADDER])
def test_rollback_killed_at_each_ladder_point_is_finished(pg_server, tmp_path, step, event, nth):
    target = start_target("destructive", pg_server, tmp_path, rows=ROWS)
    with target.config.open("a", encoding="utf-8") as config:  # these points are the restore's, not a repair's
        config.write("\n[rollback]\nrepair = false\n")
    try:
        before = rows_digest(target.database_url)
        run = run_killed_at(target.config, tmp_path / "reports", (step, event, nth), tmp_path)
        result = upgate("rollback", "--config", str(target.config), "--run", "latest",
                        "--reports", str(tmp_path / "reports"), cwd=tmp_path)
        assert result.returncode == 20, result.stdout + result.stderr
        assert_v1_as_before(target, before)
        with psycopg.connect(pg_server.url) as conn:
            scratch = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                   (f"{database_name(target.database_url)}_upgate_%",)).fetchall()
        assert scratch == [], "a fresh database of an unfinished restore was left behind"
        assert run.exists()
    finally:
        stop_target(target, pg_server)


def test_rollback_of_an_upgraded_run_then_nothing_left(pg_server, tmp_path):
    target = start_target("good", pg_server, tmp_path, rows=ROWS)
    try:
        before = rows_digest(target.database_url)
        reports = tmp_path / "reports"
        proc = upgate("run", "--config", str(target.config), "--reports", str(reports), cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "pre-gates, backup, migration, deploy and post-gates passed" in proc.stdout
        assert serving_build(target.base_url) == "v2"
        result = upgate("rollback", "--config", str(target.config), "--reports", str(reports), cwd=tmp_path)
        assert result.returncode == 20, result.stdout + result.stderr
        assert_v1_as_before(target, before)
        # A second rollback of the same run has nothing left to undo.
        again = upgate("rollback", "--config", str(target.config), "--reports", str(reports), cwd=tmp_path)
        assert again.returncode == 20 and "nothing to undo" in again.stdout
    finally:
        stop_target(target, pg_server)

"""Faults a hostile operator (or a bad night) brings, and a run that never leaves a half-upgraded target.

Each `upgate run` is a real process on the reference target; the outcome is checked by the test itself
(which build serves, the v2 columns, every seeded row's content), not through upgate's report.

- SIGTERM right after each journal record: before the first change the run is BLOCKED with nothing
  touched; from the first change on the ladder runs in the same process and proves itself (20).
- The reports disk fills up during the post-gates: the rollback still runs, no traceback.
- A run killed -9 half-way stops every later run (naming it and the command that finishes it) until
  `upgate rollback` has finished it; a torn last journal line does not stop that rollback.
- The gate processes of a run killed -9 go with it.
- `upgate demo --stop` stops the PostgreSQL it started, as root too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.support import upgate
from tests.e2e.test_rollback_command import GOOD_RUN, assert_v1_as_before, run_killed_at
from tests.e2e.test_scenarios import V2_COLUMNS, columns, rows_digest, serving_build
from upgate.fixtures.demo import start_target, stop_target

pytestmark = pytest.mark.e2e

ROWS = 2000

SIGNALER = """
import os, signal, sys
from pathlib import Path
from upgate.config import load_config
from upgate.core.pipeline import Pipeline, RunOptions

config, reports, step, event, nth, action = sys.argv[1:7]
pipeline = Pipeline(load_config(config), RunOptions(reports=Path(reports)))
seen = 0

def act(record):
    global seen
    if record["step"] == step and record["event"] == event:
        seen += 1
        if seen == int(nth):
            if action == "fill":
                # The disk of the run folder fills up: every later write there fails with ENOSPC.
                with open(Path(reports) / "filler", "wb") as f:
                    try:
                        while True:
                            f.write(b"\\0" * (1 << 20))
                            f.flush()
                    except OSError:
                        pass
            else:
                os.kill(os.getpid(), getattr(signal, action))

pipeline.journal.observers.append(act)
outcome = pipeline.execute()
print(f"EXIT {outcome.exit_code}: {outcome.reason}")
sys.exit(outcome.exit_code)
"""

# Where a SIGTERM lands, and the exit it must end in: nothing touched before the first change (10), the
# ladder proven from the first change on (20), the verdict already decided at the run's end (0).
FIRST_CHANGE = GOOD_RUN.index(("migrate", "start", 1, 10))
SIGTERM_POINTS = [(s, e, n, 10 if i < FIRST_CHANGE else 20) for i, (s, e, n, _) in enumerate(GOOD_RUN[:-1])]
SIGTERM_POINTS.append(("run", "end", 1, 0))
# Kept in `make test` (one per state); the rest run with `-m slow` (make test-slow).
QUICK = {("pre-gates", "start"), ("migrate", "applied"), ("deploy", "starting"), ("post-gates", "end")}


def run_with(config: Path, reports: Path, point: tuple[str, str, int], action: str,
             cwd: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    step, event, nth = point
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    proc = subprocess.run([sys.executable, "-c", SIGNALER, str(config), str(reports), step, event, str(nth), action],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    run = sorted((reports / "runs").iterdir())[-1]
    return proc, run


def gate_processes_of(pid: int) -> list[psutil.Process]:
    """The warm gate worker started by the run `pid`, and the phases it forked (same command line)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "upgate.core.gating" in cmdline and str(pid) in cmdline:
            found.append(proc)
    return found


@pytest.mark.parametrize(("step", "event", "nth", "expected"), [
    pytest.param(*p, marks=() if (p[0], p[1]) in QUICK else pytest.mark.slow) for p in SIGTERM_POINTS],
    ids=[f"{s}:{e}" for s, e, _, _ in SIGTERM_POINTS])
def test_sigterm_at_each_journal_point(pg_server, tmp_path, step, event, nth, expected):
    target = start_target("good", pg_server, tmp_path, rows=ROWS)
    try:
        before = rows_digest(target.database_url)
        proc, run = run_with(target.config, tmp_path / "reports", (step, event, nth), "SIGTERM", tmp_path)
        output = proc.stdout + proc.stderr
        assert proc.returncode == expected, output
        assert "Traceback" not in output
        assert "interrupted by SIGTERM" in output or expected == 0
        if expected == 0:
            assert serving_build(target.base_url) == "v2" and V2_COLUMNS <= columns(target.database_url)
        else:
            assert_v1_as_before(target, before)
        summary = json.loads((run / "summary.json").read_text())
        assert summary["exit_code"] == expected
        ends = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
        assert ends[-1]["step"] == "run" and ends[-1]["event"] == "end", "the journal has no end: an unfinished run"
        if expected == 20:
            assert summary["rollback"]["verified"] is True
        time.sleep(0.2)
        assert gate_processes_of(_pid_of(run)) == []
    finally:
        stop_target(target, pg_server)


def _pid_of(run: Path) -> int:
    start = json.loads((run / "journal.jsonl").read_text().splitlines()[0])
    return int(start["pid"])


def test_sigterm_during_the_rollback_does_not_stop_it(pg_server, tmp_path):
    target = start_target("destructive", pg_server, tmp_path, rows=ROWS)
    try:
        before = rows_digest(target.database_url)
        proc, run = run_with(target.config, tmp_path / "reports", ("rollback:down migrations", "start", 1),
                             "SIGTERM", tmp_path)
        assert proc.returncode == 20, proc.stdout + proc.stderr
        assert "SIGTERM received during the rollback: noted, not obeyed" in proc.stdout
        assert_v1_as_before(target, before)
    finally:
        stop_target(target, pg_server)


@pytest.fixture
def small_disk(tmp_path):
    """A 100 MiB tmpfs (root only): room for the run's start, then filled by the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk is a small tmpfs mounted for the test, which needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.quick
def test_full_disk_during_post_gates_still_rolls_back(pg_server, tmp_path, small_disk):
    target = start_target("good", pg_server, tmp_path, rows=ROWS)
    try:
        before = rows_digest(target.database_url)
        proc, run = run_with(target.config, small_disk / "reports", ("post-gates", "start", 1), "fill", tmp_path)
        output = proc.stdout + proc.stderr
        assert "Traceback" not in output
        # The post gates cannot write their evidence: they fail, the ladder puts v1 back, and the room the
        # run held back from its first change on is where the rollback's journal and proof go.
        assert proc.returncode == 20, output
        assert "rolling back" in proc.stdout
        assert_v1_as_before(target, before)
        assert "No space left on device" in output
    finally:
        stop_target(target, pg_server)


def test_no_room_for_the_run_folder_blocks_before_anything_changes(pg_server, tmp_path, small_disk):
    target = start_target("good", pg_server, tmp_path, rows=ROWS)
    try:
        before = rows_digest(target.database_url)
        proc, _run = run_with(target.config, small_disk / "reports", ("pre-gates", "end", 1), "fill", tmp_path)
        assert proc.returncode == 10, proc.stdout + proc.stderr
        # The room check says so; or, when the backup was still being written, the backup's own failure.
        assert "MiB free where the run folder" in proc.stdout or "No space left on device" in proc.stdout
        assert "nothing was touched" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
        assert_v1_as_before(target, before)
    finally:
        stop_target(target, pg_server)


def test_killed_run_blocks_the_next_until_rolled_back(pg_server, tmp_path):
    target = start_target("good", pg_server, tmp_path, rows=ROWS)
    reports = tmp_path / "reports"
    try:
        before = rows_digest(target.database_url)
        killed = run_killed_at(target.config, reports, ("deploy", "started", 1), tmp_path)
        with (killed / "journal.jsonl").open("a") as journal:  # what the kill tore mid-line
            journal.write('{"ts": "2026-12-01T10:00:00.000+00:00", "step": "deploy", "ev')
        again = upgate("run", "--config", str(target.config), "--reports", str(reports), cwd=tmp_path)
        assert again.returncode == 10, again.stdout + again.stderr
        assert f"run {killed.name} was killed during its run" in again.stdout
        assert f"upgate rollback --config {target.config} --run {killed}" in again.stdout
        assert serving_build(target.base_url) == "v2", "the refused run touched the target"

        finished = upgate("rollback", "--config", str(target.config), "--run", str(killed), cwd=tmp_path)
        assert finished.returncode == 20, finished.stdout + finished.stderr
        assert "torn last line ignored" in finished.stdout
        assert_v1_as_before(target, before)

        after = upgate("run", "--config", str(target.config), "--reports", str(reports), cwd=tmp_path)
        assert after.returncode == 0, after.stdout + after.stderr
    finally:
        stop_target(target, pg_server)


def test_run_killed_before_touching_anything_blocks_nothing(pg_server, tmp_path):
    target = start_target("good", pg_server, tmp_path, rows=ROWS)
    reports = tmp_path / "reports"
    try:
        run_killed_at(target.config, reports, ("backup", "verified", 1), tmp_path)
        after = upgate("run", "--config", str(target.config), "--reports", str(reports), cwd=tmp_path)
        assert after.returncode == 0, after.stdout + after.stderr
    finally:
        stop_target(target, pg_server)


@pytest.mark.quick
def test_gate_processes_die_with_a_killed_run(pg_server, tmp_path):
    target = start_target("good", pg_server, tmp_path, rows=ROWS)
    try:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        proc = subprocess.Popen([sys.executable, "-m", "upgate.cli", "run", "--config", str(target.config),
                                 "--reports", str(tmp_path / "reports")], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        phase: list[psutil.Process] = []
        while time.monotonic() < deadline and len(phase) < 2:  # the worker and a forked pre-gates phase
            phase = gate_processes_of(proc.pid)
            time.sleep(0.05)
        assert len(phase) >= 2, "no gate phase was seen running"
        proc.kill()  # the wrapper alone, as the OOM killer would
        proc.wait()
        gone, alive = psutil.wait_procs(phase, timeout=10)
        assert alive == [], f"gate processes outlived the run: {[p.pid for p in alive]}"
    finally:
        stop_target(target, pg_server)


def test_rollback_of_a_finished_run_keeps_its_summary(pg_server, tmp_path):
    target = start_target("good", pg_server, tmp_path, rows=ROWS)
    reports = tmp_path / "reports"
    try:
        ran = upgate("run", "--config", str(target.config), "--reports", str(reports), cwd=tmp_path)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        run = sorted((reports / "runs").iterdir())[-1]
        summary = (run / "summary.json").read_bytes()
        undone = upgate("rollback", "--config", str(target.config), "--reports", str(reports), cwd=tmp_path)
        assert undone.returncode == 20, undone.stdout + undone.stderr
        assert (run / "summary.json").read_bytes() == summary
        records = [p for p in run.glob("rollback-*.json") if not p.name.endswith("-downtime.json")]
        assert len(records) == 1
        assert json.loads(records[0].read_text())["verdict"] == "ROLLED_BACK"
    finally:
        stop_target(target, pg_server)


def test_demo_stop_stops_postgres(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    served = subprocess.run([sys.executable, "-m", "upgate.cli", "demo", "--serve", "--rows", "100"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stdout + served.stderr
    folder = Path(next(line for line in served.stdout.splitlines() if "upgate demo --stop" in line).split()[-1])
    pid = int((folder / "pgdata" / "postmaster.pid").read_text().splitlines()[0])
    try:
        stopped = subprocess.run([sys.executable, "-m", "upgate.cli", "demo", "--stop", str(folder)], cwd=tmp_path,
                                 env=env, capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert not folder.exists()
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def test_backup_beside_failing_pre_gates_is_discarded(pg_server, tmp_path):
    target = start_target("blocked", pg_server, tmp_path, rows=ROWS)
    reports = tmp_path / "reports"
    try:
        proc = upgate("run", "--config", str(target.config), "--reports", str(reports), cwd=tmp_path)
        assert proc.returncode == 10, proc.stdout + proc.stderr
        run = sorted((reports / "runs").iterdir())[-1]
        assert not (run / "backup" / "database.dir").exists(), "a backup of a blocked run was kept"
        records = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
        backup = [r["event"] for r in records if r["step"] == "backup"]
        assert backup[0] == "start" and ("discarded" in backup or backup[-1] == "end"), backup
        assert not any(r["step"] == "migrate" for r in records)
    finally:
        stop_target(target, pg_server)

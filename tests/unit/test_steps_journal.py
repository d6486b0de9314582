"""Steps rebuilt from a journal alone (what `upgate rollback` reads), and the plans they print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from upgate.config import load_config
from upgate.core.journal import Journal
from upgate.core.runs import RunDir
from upgate.steps import build_steps, steps_from_journal
from upgate.steps.base import StepContext
from upgate.steps.migrate import MigrateStep


@pytest.fixture
def config(tmp_path: Path):
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "001_a.up.sql").write_text("CREATE TABLE a (id int);")
    (folder / "001_a.down.sql").write_text("DROP TABLE a;")
    (folder / "002_b.up.sql").write_text("CREATE TABLE b (id int);")  # no down: only the restore undoes it
    path = tmp_path / "upgate.toml"
    path.write_text('[target]\nname = "svc"\n[database]\nurl = "postgresql://u:pw@h/db"\n'
                    '[app]\nbase_url = "http://127.0.0.1:8080"\n[migrate]\ndirectory = "migrations"\n'
                    '[deploy]\nkind = "process"\npidfile = "svc.pid"\nstart = ["v2"]\nprevious = ["v1"]\n')
    return load_config(path, environ={})


@pytest.fixture
def ctx(config, tmp_path: Path) -> StepContext:
    run = RunDir(tmp_path / "run")
    return StepContext(config, run, Journal(run.journal))


def rec(step: str, event: str, **detail: Any) -> dict[str, Any]:
    return {"ts": "t", "step": step, "event": event, **detail}


BACKUP = [rec("backup", "start"), rec("backup", "verified", backup={
    "path": "/b/database.dump", "size_bytes": 1, "sha256": "x" * 64, "dump_s": 0.1, "verify_s": 0.1,
    "verified": "full"}), rec("backup", "end", status="ok")]


def test_plan_says_the_restore_undoes_a_migration_without_down(config):
    plans = {s.name: s.plan() for s in build_steps(config)}
    assert list(plans) == ["backup", "migrate", "deploy"]
    assert plans["migrate"].does == ("apply 001_a.up.sql (sql)", "apply 002_b.up.sql (sql)")
    assert plans["migrate"].undo == ("restore the verified backup (no down for 002_b)",)
    assert not plans["backup"].mutates and "pw" not in " ".join(plans["backup"].lines())
    assert plans["deploy"].undo[0].startswith("stop the new version's whole process tree")


def test_a_run_killed_before_any_unit_started_touched_nothing(config, ctx):
    records = [*BACKUP, rec("migrate", "start")]
    steps = steps_from_journal(config, records, ctx)
    assert [s.name for s in steps] == ["backup"] and not any(s.mutates for s in steps)


def test_applied_units_with_a_down_are_undone_by_down(config, ctx):
    records = [*BACKUP, rec("migrate", "start"), rec("migrate", "applying", unit="001_a"),
               rec("migrate", "applied", unit="001_a")]
    (migrate,) = [s for s in steps_from_journal(config, records, ctx) if isinstance(s, MigrateStep)]
    assert [a.unit for a in migrate.applied] == ["001_a"] and migrate.needs_restore is None


def test_an_applied_unit_without_down_needs_the_restore(config, ctx):
    records = [*BACKUP, rec("migrate", "start"), rec("migrate", "applying", unit="001_a"),
               rec("migrate", "applied", unit="001_a"), rec("migrate", "applying", unit="002_b"),
               rec("migrate", "applied", unit="002_b")]
    (migrate,) = [s for s in steps_from_journal(config, records, ctx) if isinstance(s, MigrateStep)]
    assert migrate.needs_restore == "no down for 002_b"


def test_a_unit_killed_mid_way_needs_the_restore(config, ctx):
    records = [*BACKUP, rec("migrate", "start"), rec("migrate", "applying", unit="001_a")]
    (migrate,) = [s for s in steps_from_journal(config, records, ctx) if isinstance(s, MigrateStep)]
    assert migrate.needs_restore == "the run stopped while applying 001_a: whether it committed is unknown"


def test_a_failed_atomic_unit_left_nothing(config, ctx):
    records = [*BACKUP, rec("migrate", "start"), rec("migrate", "applying", unit="001_a"),
               rec("migrate", "failed", unit="001_a", atomic=True)]
    assert [s.name for s in steps_from_journal(config, records, ctx)] == ["backup"]


def test_reverted_units_and_a_finished_restore_leave_nothing_to_undo(config, ctx):
    applied = [rec("migrate", "start"), rec("migrate", "applying", unit="001_a"),
               rec("migrate", "applied", unit="001_a")]
    reverted = [rec("migrate", "reverting", unit="001_a"), rec("migrate", "reverted", unit="001_a")]
    restored = [rec("restore", "created"), rec("restore", "renamed-in", live="db"), rec("restore", "done")]
    for tail in (reverted, restored):
        names = [s.name for s in steps_from_journal(config, [*BACKUP, *applied, *tail], ctx)]
        assert names == ["backup"]


def test_a_half_done_restore_is_pending(config, ctx):
    records = [*BACKUP, rec("restore", "created", database="db_upgate_x"),
               rec("restore", "renamed-out", live="db", fresh="db_upgate_x", failed="db_failed_x")]
    (backup,) = steps_from_journal(config, records, ctx)
    assert backup.restore_pending() and backup.restore_state["event"] == "renamed-out"  # type: ignore[attr-defined]


def test_a_deploy_is_rebuilt_once_it_touched_the_running_version(config, ctx):
    started = [*BACKUP, rec("deploy", "start")]
    assert [s.name for s in steps_from_journal(config, started, ctx)] == ["backup"]
    stopping = [*started, rec("deploy", "stopping", which="old", pids=[42]),
                rec("deploy", "started", pid=43, created=1.0, which="new")]
    deploy = steps_from_journal(config, stopping, ctx)[-1]
    assert deploy.name == "deploy" and deploy.launched == [{"pid": 43, "created": 1.0, "which": "new"}]  # type: ignore[attr-defined]

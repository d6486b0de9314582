"""Migrations by the application's own tool, on a real PostgreSQL: a command with and without down, a lock
timeout retried, and a real Alembic project (up to head, down to the revision recorded before)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from upgate.checks.rehearsal import rehearse_migration
from upgate.config import Config, DatabaseConfig, MigrateConfig, TargetConfig
from upgate.core.journal import Journal
from upgate.core.runs import RunDir
from upgate.embedded.postgres import find_pg_tool
from upgate.errors import StepFailed
from upgate.steps.base import StepContext
from upgate.steps.migrate import AlembicMigrator, CommandMigrator, MigrateStep, migrator_for

TOOL = """
import os, sys, psycopg
direction = sys.argv[1]
statements = {
    "up": ["CREATE TABLE tags (id bigserial PRIMARY KEY, item_id integer REFERENCES items (id), tag text)",
           "ALTER TABLE items ADD COLUMN note text"],
    "down": ["DROP TABLE tags", "ALTER TABLE items DROP COLUMN note"],
}[direction]
with psycopg.connect(os.environ["APP_DB"]) as conn:
    print(conn.execute("SHOW application_name").fetchone()[0], conn.execute("SHOW lock_timeout").fetchone()[0])
    for statement in statements:
        conn.execute(statement)
"""


@pytest.fixture
def db(pg_url: str) -> str:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id integer PRIMARY KEY, name text)")
        conn.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g")
    return pg_url


def columns(url: str, table: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                                           "ORDER BY ordinal_position", (table,)).fetchall()]


def step_for(url: str, migrate: MigrateConfig, tmp_path: Path) -> tuple[MigrateStep, StepContext]:
    config = Config(target=TargetConfig(name="svc"), database=DatabaseConfig(url=url), migrate=migrate)
    run = RunDir.create(tmp_path / "reports")
    return MigrateStep(config, migrator_for(config)), StepContext(config, run, Journal(run.journal))


def tool(tmp_path: Path, down: bool, **extra: object) -> MigrateConfig:
    path = tmp_path / "tool.py"
    path.write_text(TOOL)
    return MigrateConfig(kind="command", up=[sys.executable, str(path), "up"],
                         down=[sys.executable, str(path), "down"] if down else [],
                         env={"APP_DB": "{database_url}"}, **extra)  # type: ignore[arg-type]


def test_command_with_down_is_applied_journaled_and_undone_by_its_own_down(db, tmp_path):
    step, ctx = step_for(db, tool(tmp_path, down=True), tmp_path)
    assert step.plan().undo[0].endswith("tool.py down")
    step.do(ctx)
    assert columns(db, "tags") == ["id", "item_id", "tag"] and "note" in columns(db, "items")
    events = [(r["event"], r.get("unit")) for r in Journal(ctx.run.journal).read()]
    assert events == [("applying", "up"), ("applied", "up")]
    log = (ctx.run.logs / "migrate-up.log").read_text()
    assert "upgate-migrate 1s" in log  # PGAPPNAME and lock_timeout (PGOPTIONS) reached the tool's session
    assert step.needs_restore is None
    step.undo(ctx)
    assert columns(db, "tags") == [] and "note" not in columns(db, "items")


def test_command_without_down_says_only_the_restore_undoes_it(db, tmp_path):
    step, ctx = step_for(db, tool(tmp_path, down=False), tmp_path)
    assert step.plan().undo == ("restore the verified backup (no down for up)",)
    step.do(ctx)
    assert step.needs_restore == "no down for up"
    with pytest.raises(StepFailed, match="the backup must be restored"):
        step.undo(ctx)


def test_a_failing_command_leaves_an_uncertain_state_only_the_restore_clears(db, tmp_path):
    broken = MigrateConfig(kind="command", up=[sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                           down=["true"])
    step, ctx = step_for(db, broken, tmp_path)
    with pytest.raises(StepFailed, match="exited 3: boom"):
        step.do(ctx)
    assert step.needs_restore is not None and "failed part-way" in step.needs_restore


def test_lock_timeout_is_retried_with_backoff_until_the_lock_is_free(db, tmp_path):
    migrate = tool(tmp_path, down=True, lock_timeout_ms=200, retries=8, retry_backoff_s=0.1)
    step, ctx = step_for(db, migrate, tmp_path)
    holder = psycopg.connect(db)
    holder.execute("LOCK TABLE items IN ACCESS SHARE MODE")  # the tool's ALTER on items must wait
    log = ctx.run.logs / "migrate-up.log"

    def release_after_the_first_timeout() -> None:  # not on a timer: a loaded machine may start the tool late
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (log.exists() and "lock timeout" in log.read_text()):
            time.sleep(0.05)
        holder.rollback()

    release = threading.Thread(target=release_after_the_first_timeout)
    release.start()
    try:
        step.do(ctx)
    finally:
        release.join()
        holder.close()
    applied = [r for r in Journal(ctx.run.journal).read() if r["event"] == "applied"][0]
    assert applied["attempts"] > 1 and "note" in columns(db, "items")
    assert "lock timeout" in (ctx.run.logs / "migrate-up.log").read_text()


ENV_PY = '''
import os
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
config.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1))
engine = engine_from_config(config.get_section(config.config_ini_section), prefix="sqlalchemy.", poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
'''

REVISION = '''
from alembic import op
revision = "{rev}"
down_revision = {down!r}
def upgrade():
    op.execute("""{up}""")
def downgrade():
    op.execute("""{down_sql}""")
'''


@pytest.fixture
def alembic_project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    (folder / "migrations" / "versions").mkdir(parents=True)
    (folder / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    (folder / "migrations" / "env.py").write_text(ENV_PY)
    (folder / "migrations" / "script.py.mako").write_text("")
    revisions = [("r1", None, "CREATE TABLE tags (id serial PRIMARY KEY, item_id integer REFERENCES items (id))",
                  "DROP TABLE tags"),
                 ("r2", "r1", "ALTER TABLE tags ADD COLUMN label text; CREATE INDEX tags_label ON tags (label)",
                  "DROP INDEX tags_label; ALTER TABLE tags DROP COLUMN label")]
    for rev, down, up, down_sql in revisions:
        (folder / "migrations" / "versions" / f"{rev}.py").write_text(
            REVISION.format(rev=rev, down=down, up=up, down_sql=down_sql))
    return folder


def alembic_config(project: Path) -> MigrateConfig:
    return MigrateConfig(kind="alembic", alembic_ini=project / "alembic.ini", alembic=[sys.executable, "-m", "alembic"],
                         env={"DATABASE_URL": "{database_url}"})


def test_alembic_upgrade_head_and_downgrade_to_the_revision_before(db, tmp_path, alembic_project):
    migrate = alembic_config(alembic_project)
    subprocess.run([sys.executable, "-m", "alembic", "-c", str(alembic_project / "alembic.ini"), "upgrade", "r1"],
                   check=True, capture_output=True, env={**__import__("os").environ, "DATABASE_URL": db})
    rehearsal = rehearse_migration(db, AlembicMigrator(migrate), find_pg_tool("pg_dump"))
    assert rehearsal.result.ok, rehearsal.result.summary
    assert rehearsal.result.summary.startswith("rehearsal of 1 unit (alembic): up/down/up clean")
    step, ctx = step_for(db, migrate, tmp_path)
    step.do(ctx)
    applied = [r for r in Journal(ctx.run.journal).read() if r["event"] == "applied"][0]
    assert applied["revision_before"] == "r1" and "label" in columns(db, "tags")
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("r2",)
    step.undo(ctx)
    assert "label" not in columns(db, "tags") and columns(db, "tags") == ["id", "item_id"]
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("r1",)


def test_alembic_from_a_killed_run_downgrades_to_the_journaled_revision(db, tmp_path, alembic_project):
    migrate = alembic_config(alembic_project)
    step, ctx = step_for(db, migrate, tmp_path)
    step.do(ctx)  # from base: every revision up to head
    records = Journal(ctx.run.journal).read()
    rebuilt = MigrateStep.from_journal(step.config, [{"step": "migrate", "event": "start"}, *records], ctx)
    assert rebuilt is not None and rebuilt.applied[0].recorded == {"revision_before": "base"}
    t0 = time.monotonic()
    rebuilt.undo(ctx)
    assert columns(db, "tags") == [] and time.monotonic() - t0 < 60
    assert isinstance(rebuilt.migrator, CommandMigrator)

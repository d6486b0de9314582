"""The migrate step, whatever tool runs the migrations: units applied and journaled one by one.

    >>> step = MigrateStep(config, SqlMigrator(config.migrate))      # doctest: +SKIP
    >>> step.do(ctx)          # journal: applying 001_add_cache_columns, applied 001_add_cache_columns
    >>> step.needs_restore    # None: every applied unit has a down, so undo() can revert them
    >>> step.undo(ctx)        # reverting ..., reverted ... (newest first)

A `Migrator` knows one tool (SQL files, the application's own command, Alembic) and applies or
reverts one unit against any database URL, so the same code runs on the rehearsal clone in the
pre-gates and on the live database here.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from upgate.checks.secrets import redact
from upgate.config import Config
from upgate.errors import StepFailed
from upgate.steps.base import DatabaseStep, Record, StepContext, StepPlan, since_last, started

#: Journal events after which the database is the backup again: nothing a migration did is left.
RESTORED_EVENTS = ("done",)


@dataclass(frozen=True)
class Unit:
    """One thing a migrator applies as a whole: a SQL file, or the tool's whole `up` command."""

    name: str
    up: str  # how it is applied, for the plan: "001_add.up.sql", "alembic upgrade head"
    down: str | None  # how it is reverted, or None: only the restore can undo it


class Migrator(ABC):
    """One migration tool. Stateless between calls: what was applied lives in the journal."""

    kind: ClassVar[str]
    #: True when a failed unit leaves nothing behind (one transaction per unit); False for a tool that
    #: may have committed part of its work before it failed.
    atomic: ClassVar[bool] = False
    #: Where a tool's output is logged (the run's logs folder); None: not logged.
    log_dir: Path | None = None

    @abstractmethod
    def units(self) -> list[Unit]:
        """The plan's units in the order they are applied."""

    def before(self, url: str) -> dict[str, Any]:
        """State to record before a unit runs (e.g. Alembic's revision), handed back to `revert`."""
        return {}

    @abstractmethod
    def apply(self, unit: Unit, url: str, say: Callable[[str], None]) -> dict[str, Any]:
        """Apply `unit` to the database at `url`; detail for the journal. Raise StepFailed."""

    @abstractmethod
    def revert(self, unit: Unit, url: str, recorded: dict[str, Any], say: Callable[[str], None]) -> None:
        """Revert `unit` (its `before` state is in `recorded`). Raise StepFailed."""

    def sql_texts(self) -> dict[str, str]:
        """The SQL this plan runs, by file name, when it is known before running (static scans)."""
        return {}


@dataclass
class Applied:
    unit: str
    recorded: dict[str, Any]


class MigrateStep(DatabaseStep):
    name: ClassVar[str] = "migrate"
    label: ClassVar[str] = "migration"

    def __init__(self, config: Config, migrator: Migrator, applied: list[Applied] | None = None,
                 uncertain: str | None = None) -> None:
        assert config.database.url
        self.config = config
        self.url = config.database.url
        self.migrator = migrator
        self.applied: list[Applied] = list(applied or [])
        #: Why the journal cannot tell what a unit left behind (it failed or was killed part-way).
        self.uncertain = uncertain

    def plan(self) -> StepPlan:
        units = self.migrator.units()
        does = tuple(f"apply {u.up} ({self.migrator.kind})" for u in units) or ("nothing to apply",)
        missing = [u.name for u in units if u.down is None]
        if missing:
            undo: tuple[str, ...] = (f"restore the verified backup (no down for {', '.join(missing)})",)
        else:
            undo = tuple(f"{u.down}" for u in reversed(units)) + (
                "then, if down fails or the schema still differs from the baseline: restore the verified backup",)
        return StepPlan(self.name, does, undo)

    @property
    def needs_restore(self) -> str | None:
        if self.uncertain:
            return self.uncertain
        by_name = {u.name: u for u in self.migrator.units()}
        missing = [a.unit for a in self.applied if by_name.get(a.unit) is None or by_name[a.unit].down is None]
        if missing:
            return f"no down for {', '.join(missing)}"
        return None

    def restored(self) -> None:
        self.applied.clear()
        self.uncertain = None

    def do(self, ctx: StepContext) -> None:
        say = lambda message: ctx.say("migrate", message)  # noqa: E731
        self.migrator.log_dir = ctx.run.logs
        for unit in self.migrator.units():
            recorded = self.migrator.before(self.url)
            ctx.journal.write(self.name, "applying", unit=unit.name, **recorded)
            say(f"applying {unit.up}")
            t0 = time.monotonic()
            try:
                detail = self.migrator.apply(unit, self.url, say)
            except BaseException as exc:
                if not self.migrator.atomic:
                    self.uncertain = f"{unit.name} failed part-way ({type(exc).__name__}); what it changed is unknown"
                ctx.journal.write(self.name, "failed", unit=unit.name, atomic=self.migrator.atomic,
                                  error=redact(str(exc))[-500:])
                raise
            self.applied.append(Applied(unit.name, recorded))
            ctx.journal.write(self.name, "applied", unit=unit.name, seconds=round(time.monotonic() - t0, 3),
                              **recorded, **detail)

    def undo(self, ctx: StepContext) -> None:
        reason = self.needs_restore
        if reason:
            raise StepFailed(f"cannot undo the migration by its own tool: {reason}; the backup must be restored")
        by_name = {u.name: u for u in self.migrator.units()}
        say = lambda message: ctx.say("migrate", message)  # noqa: E731
        self.migrator.log_dir = ctx.run.logs
        for applied in reversed(list(self.applied)):
            unit = by_name[applied.unit]
            ctx.journal.write(self.name, "reverting", unit=unit.name)
            say(f"reverting {unit.down}")
            try:
                self.migrator.revert(unit, self.url, applied.recorded, say)
            except BaseException as exc:
                if not self.migrator.atomic:
                    self.uncertain = f"reverting {unit.name} failed part-way; what it changed is unknown"
                ctx.journal.write(self.name, "revert-failed", unit=unit.name, error=redact(str(exc))[-500:])
                raise
            self.applied.remove(applied)
            ctx.journal.write(self.name, "reverted", unit=unit.name)

    def summary(self) -> dict[str, Any] | None:
        return {"kind": self.migrator.kind, "applied": [a.unit for a in self.applied]}

    @classmethod
    def from_journal(cls, config: Config, records: list[Record], ctx: StepContext) -> MigrateStep | None:
        from upgate.steps.migrate import migrator_for

        if config.migrate is None or not config.database.url or not started(records, cls.name):
            return None
        applied: list[Applied] = []
        pending: str | None = None
        uncertain: str | None = None
        before: dict[str, Any] = {}  # what the "applying" record kept: the state `revert` needs
        for r in since_last(records, "restore", "done"):
            if r.get("step") != cls.name:
                continue
            event, unit = r.get("event"), r.get("unit")
            if event in ("applying", "reverting"):
                pending = f"{event} {unit}"
                if event == "applying":
                    before = {k: v for k, v in r.items() if k not in ("ts", "step", "event", "unit")}
            elif event == "applied":
                applied.append(Applied(str(unit), before))
                pending = None
            elif event == "reverted":
                applied = [a for a in applied if a.unit != unit]
                pending = None
            elif event == "failed" and r.get("atomic"):
                pending = None
            elif event in ("failed", "revert-failed"):
                uncertain, pending = f"{unit} failed part-way; what it changed is unknown", None
        if pending:
            uncertain = f"the run stopped while {pending}: whether it committed is unknown"
        if not applied and not uncertain:
            return None
        return cls(config, migrator_for(config), applied, uncertain)

"""The one protocol every upgrade kind follows: plan, do (journaling each part as it commits), undo.

    >>> step = MigrateStep.from_config(config)                     # doctest: +SKIP
    >>> step.plan().lines()                                        # printed before anything runs
    ['migrate: apply 001_add_cache_columns (sql)', '  undo: 001_add_cache_columns.down.sql']
    >>> step.do(ctx)            # ctx.journal gets "applying"/"applied" records as each unit commits
    >>> step.undo(ctx)          # reverses exactly what those records say was done

`upgate rollback` rebuilds the steps a run started with `from_journal` and undoes them through the
same code. Three shapes matter to the rollback ladder (upgate/core/ladder.py):

- `DeployStep` splits its undo: `stop_new` (before the database is undone) and `start_previous`
  (after it), so an old version that refuses a newer schema still comes back.
- `DatabaseStep` undoes by its own down units when every applied unit has one; otherwise
  `needs_restore` is true and the ladder restores the verified backup instead.
- `RestorePoint` (the backup) changes nothing on undo and offers `restore`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from upgate.config import Config
    from upgate.core.journal import Journal
    from upgate.core.runs import RunDir

Record = dict[str, Any]


@dataclass(frozen=True)
class StepPlan:
    """What a step will do and how it is undone, in lines a person reads before anything runs."""

    step: str
    does: tuple[str, ...]
    undo: tuple[str, ...]
    mutates: bool = True

    def lines(self) -> list[str]:
        out = [f"{self.step}: {self.does[0] if self.does else '(nothing)'}"]
        out += [f"{' ' * (len(self.step) + 2)}{line}" for line in self.does[1:]]
        out += [f"  undo: {line}" for line in self.undo]
        return out

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "does": list(self.does), "undo": list(self.undo), "mutates": self.mutates}


@dataclass
class StepContext:
    """What a step may use while it runs: the config, the run folder, the journal, the console."""

    config: Config
    run: RunDir
    journal: Journal
    #: Progress lines for the console: say(label, message).
    say: Callable[[str, str], None] = lambda _label, _message: None
    #: The live-traffic capture of this run (upgate/core/live.py), when there is one: the backup dumps its
    #: baseline snapshot and the restore keeps live writes through it.
    live: Any = None


class Step(ABC):
    """One upgrade kind. Subclasses set `name` (the journal's step name) and `label` (the verdict's word)."""

    name: ClassVar[str]
    label: ClassVar[str]
    #: False for a step that changes nothing the application sees (the backup): a failure there blocks
    #: the run, and a journal where only such steps started has nothing to undo.
    mutates: ClassVar[bool] = True

    @abstractmethod
    def plan(self) -> StepPlan:
        """What it will do and how it is undone; no side effects."""

    def prepare(self, ctx: StepContext) -> None:  # noqa: B027 (optional hook)
        """Work that touches nothing live (copies, checks), run before any step changes anything.

        A failure here blocks the run with nothing touched.
        """

    @abstractmethod
    def do(self, ctx: StepContext) -> None:
        """Apply; journal each part as it commits (`ctx.journal.write(self.name, ...)`). Raise StepFailed."""

    @abstractmethod
    def undo(self, ctx: StepContext) -> None:
        """Reverse exactly what the journal says was done. Raise StepFailed."""

    @classmethod
    @abstractmethod
    def from_journal(cls, config: Config, records: list[Record], ctx: StepContext) -> Step | None:
        """The step as a run's journal says it was done (None: this kind never started in that run)."""

    def summary(self) -> dict[str, Any] | None:
        """What summary.json keeps about this step (None: nothing beyond its timing)."""
        return None


class DeployStep(Step):
    """A step that replaces the running version: its undo is split around the database's."""

    name: ClassVar[str] = "deploy"
    label: ClassVar[str] = "deploy"

    @abstractmethod
    def stop_new(self, ctx: StepContext) -> None:
        """Stop whatever version this step put in service (all of it: workers, children). Raise StepFailed."""

    @abstractmethod
    def start_previous(self, ctx: StepContext) -> None:
        """Start the previous version and wait until it (not a leftover) is ready. Raise StepFailed."""

    def undo(self, ctx: StepContext) -> None:
        self.stop_new(ctx)
        self.start_previous(ctx)

    # Pre-promotion gating (blue-green on containers and Kubernetes): `do` starts the candidate beside
    # the live version; the pipeline gates it on `preview_url()`, then calls `promote`, then gates the
    # live URL; `retire` lets the previous version go once those gates passed.

    def preview_url(self) -> str | None:
        """The candidate's base URL while traffic still goes to the previous version (None: `do` moved it)."""
        return None

    def promote(self, ctx: StepContext) -> None:  # noqa: B027 (optional hook)
        """Move traffic to the candidate that passed its preview gates. Raise StepFailed."""

    def retire(self, ctx: StepContext) -> None:  # noqa: B027 (optional hook)
        """The post gates passed: let the previous version go (scale it down, remove its container)."""


class DatabaseStep(Step):
    """A step that changes the database: undone by its own down units, or by restoring the backup."""

    @property
    @abstractmethod
    def needs_restore(self) -> str | None:
        """Why only the restore can undo what was done (a unit without a down, a unit whose outcome the
        journal cannot tell); None when `undo` can."""

    @abstractmethod
    def restored(self) -> None:
        """The ladder restored the backup: nothing this step did is left to undo."""


class RestorePoint(Step):
    """The backup: nothing to undo, but it can put the database back exactly as it was."""

    mutates: ClassVar[bool] = False

    def undo(self, ctx: StepContext) -> None:
        """A backup changes nothing live: there is nothing to undo."""

    @property
    @abstractmethod
    def available(self) -> bool:
        """True when there is a verified backup to restore from."""

    @abstractmethod
    def restore(self, ctx: StepContext) -> dict[str, Any]:
        """Put the database back exactly as the backup holds it, and prove it. Raise StepFailed."""

    @abstractmethod
    def restore_pending(self) -> bool:
        """True when a restore started (in this run or a killed one) and did not finish."""


def records_for(records: list[Record], step: str) -> list[Record]:
    return [r for r in records if r.get("step") == step]


def started(records: list[Record], step: str) -> bool:
    return any(r.get("step") == step and r.get("event") == "start" for r in records)


def since_last(records: list[Record], step: str, event: str) -> list[Record]:
    """The records after the last `step`/`event` one (all of them when there is none)."""
    for index in range(len(records) - 1, -1, -1):
        if records[index].get("step") == step and records[index].get("event") == event:
            return records[index + 1:]
    return list(records)

"""What a migration adapter must do: apply the plan up, and undo what it applied."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable


class Migrator(ABC):
    #: Names of the migrations applied so far by this run, in order (read by rollback and the journal).
    applied: list[str]
    #: Called with (name, "applied" | "reverted") as each migration commits: the pipeline journals it,
    #: so `upgate rollback` knows what a killed run had applied.
    on_change: Callable[[str, str], None] | None = None

    def _changed(self, name: str, what: str) -> None:
        if self.on_change is not None:
            self.on_change(name, what)

    @abstractmethod
    def up(self) -> list[str]:
        """Apply every migration of the plan; return the names applied. Raise StepFailed on failure."""

    @abstractmethod
    def down(self) -> list[str]:
        """Undo what `up` applied, newest first; return the names undone. Raise StepFailed on failure."""

"""What a migration adapter must do: apply the plan up, and undo what it applied."""

from __future__ import annotations

from abc import ABC, abstractmethod


class Migrator(ABC):
    #: Names of the migrations applied so far by this run, in order (read by rollback and the journal).
    applied: list[str]

    @abstractmethod
    def up(self) -> list[str]:
        """Apply every migration of the plan; return the names applied. Raise StepFailed on failure."""

    @abstractmethod
    def down(self) -> list[str]:
        """Undo what `up` applied, newest first; return the names undone. Raise StepFailed on failure."""

"""The rollback ladder's order and its restore decisions, on steps that only record what was asked of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from upgate.config import Config, TargetConfig
from upgate.core.journal import Journal
from upgate.core.ladder import climb
from upgate.core.runs import RunDir
from upgate.errors import StepFailed
from upgate.steps.base import DatabaseStep, DeployStep, RestorePoint, Step, StepContext, StepPlan


class Calls(list[str]):
    def rung(self, name: str, action: Callable[[], Any]) -> bool:
        try:
            action()
        except StepFailed:
            self.append(f"{name}: FAILED")
            return False
        self.append(name)
        return True


class Backup(RestorePoint):
    name: ClassVar[str] = "backup"
    label: ClassVar[str] = "backup"

    def __init__(self, calls: Calls, pending: bool = False) -> None:
        self.calls, self.pending = calls, pending

    def plan(self) -> StepPlan:
        return StepPlan(self.name, ("dump",), ("nothing",), mutates=False)

    def do(self, ctx: StepContext) -> None: ...

    @property
    def available(self) -> bool:
        return True

    def restore(self, ctx: StepContext) -> dict[str, Any]:
        self.pending = False
        return {}

    def restore_pending(self) -> bool:
        return self.pending

    @classmethod
    def from_journal(cls, config: Config, records: list[dict[str, Any]], ctx: StepContext) -> None:
        return None


class Migrate(DatabaseStep):
    name: ClassVar[str] = "migrate"
    label: ClassVar[str] = "migration"

    def __init__(self, calls: Calls, has_down: bool = True, down_fails: bool = False) -> None:
        self.calls, self.has_down, self.down_fails = calls, has_down, down_fails
        self.was_restored = False

    def plan(self) -> StepPlan:
        return StepPlan(self.name, ("up",), ("down",))

    def do(self, ctx: StepContext) -> None: ...

    def undo(self, ctx: StepContext) -> None:
        if self.down_fails:
            raise StepFailed("down failed")

    @property
    def needs_restore(self) -> str | None:
        return None if self.has_down or self.was_restored else "no down for 001"

    def restored(self) -> None:
        self.was_restored = True

    @classmethod
    def from_journal(cls, config: Config, records: list[dict[str, Any]], ctx: StepContext) -> None:
        return None


class Model(Step):
    name: ClassVar[str] = "model"
    label: ClassVar[str] = "model switch"
    undo_label: ClassVar[str] = "swap model back"

    def plan(self) -> StepPlan:
        return StepPlan(self.name, ("switch",), ("switch back",))

    def do(self, ctx: StepContext) -> None: ...

    def undo(self, ctx: StepContext) -> None: ...

    @classmethod
    def from_journal(cls, config: Config, records: list[dict[str, Any]], ctx: StepContext) -> None:
        return None


class Deploy(DeployStep):
    def __init__(self, start_fails: bool = False) -> None:
        self.start_fails = start_fails

    def plan(self) -> StepPlan:
        return StepPlan(self.name, ("start v2",), ("stop v2", "start v1"))

    def do(self, ctx: StepContext) -> None: ...

    def stop_new(self, ctx: StepContext) -> None: ...

    def start_previous(self, ctx: StepContext) -> None:
        if self.start_fails:
            raise StepFailed("port busy")

    @classmethod
    def from_journal(cls, config: Config, records: list[dict[str, Any]], ctx: StepContext) -> None:
        return None


@pytest.fixture
def ctx(tmp_path: Path) -> StepContext:
    run = RunDir(tmp_path)
    return StepContext(Config(target=TargetConfig(name="t")), run, Journal(run.journal))


def verifier(calls: Calls, answers: list[bool]) -> Callable[[], bool]:
    def verify() -> bool:
        calls.append("verify")
        return answers.pop(0)
    return verify


def test_the_old_version_starts_only_after_the_database_is_undone(ctx):
    calls = Calls()
    steps = [Backup(calls), Migrate(calls), Model(), Deploy()]
    outcome = climb(steps, ctx, calls.rung, verifier(calls, [True]))
    assert outcome.verified and not outcome.restored
    assert calls == ["stop new version", "down migrations", "swap model back", "start previous version", "verify"]


def test_a_migration_without_down_is_undone_by_the_restore(ctx):
    calls = Calls()
    steps = [Backup(calls), Migrate(calls, has_down=False), Deploy()]
    outcome = climb(steps, ctx, calls.rung, verifier(calls, [True]))
    assert outcome.verified and outcome.restored
    assert calls == ["stop new version", "restore backup", "start previous version", "verify"]


def test_a_failed_down_falls_back_to_the_restore(ctx):
    calls = Calls()
    steps = [Backup(calls), Migrate(calls, down_fails=True), Deploy()]
    outcome = climb(steps, ctx, calls.rung, verifier(calls, [True]))
    assert outcome.verified and outcome.restored
    assert calls == ["stop new version", "down migrations: FAILED", "restore backup", "start previous version",
                     "verify"]


def test_failed_verification_restores_and_verifies_again(ctx):
    calls = Calls()
    steps = [Backup(calls), Migrate(calls), Deploy()]
    outcome = climb(steps, ctx, calls.rung, verifier(calls, [False, True]))
    assert outcome.verified and outcome.restored
    assert calls == ["stop new version", "down migrations", "start previous version", "verify",
                     "stop previous version", "restore backup", "start previous version", "verify"]


def test_a_second_failed_verification_is_not_verified(ctx):
    calls = Calls()
    outcome = climb([Backup(calls), Migrate(calls), Deploy()], ctx, calls.rung, verifier(calls, [False, False]))
    assert not outcome.verified and outcome.problems == ["the post gates did not pass against the baseline"]


def test_verified_gates_do_not_hide_a_previous_version_that_did_not_start(ctx):
    calls = Calls()
    outcome = climb([Backup(calls), Migrate(calls), Deploy(start_fails=True)], ctx, calls.rung,
                    verifier(calls, [True, True]))
    assert not outcome.verified
    assert "the previous version did not start" in outcome.problems


def test_a_half_done_restore_is_finished_before_anything_else_touches_the_database(ctx):
    calls = Calls()
    backup = Backup(calls, pending=True)
    outcome = climb([backup, Migrate(calls, has_down=False), Deploy()], ctx, calls.rung, verifier(calls, [True]))
    assert outcome.verified and outcome.restored and not backup.pending
    assert calls == ["stop new version", "finish restore", "start previous version", "verify"]

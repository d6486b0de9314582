"""One exception hierarchy, and the one place that maps outcomes to exit codes."""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    UPGRADED = "UPGRADED"
    BLOCKED = "BLOCKED"
    ROLLED_BACK = "ROLLED_BACK"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"
    RECOVERED = "RECOVERED"  # `upgate recover`: restored from an emergency backup and verified
    USAGE_ERROR = "USAGE_ERROR"


EXIT_CODES: dict[Verdict, int] = {
    Verdict.UPGRADED: 0,
    Verdict.BLOCKED: 10,
    Verdict.ROLLED_BACK: 20,
    Verdict.NEEDS_ATTENTION: 30,
    Verdict.RECOVERED: 0,
    Verdict.USAGE_ERROR: 2,
}


class UpgateError(Exception):
    """Base of every error upgate raises on purpose; the message says what to fix."""

    verdict = Verdict.NEEDS_ATTENTION


class ConfigError(UpgateError):
    """The configuration (file, key, environment) is missing or wrong; nothing ran."""

    verdict = Verdict.USAGE_ERROR


class GateFailed(UpgateError):
    """A gate phase did not pass."""


class StepFailed(UpgateError):
    """A mutating step (backup, migrate, deploy) failed."""


class RollbackFailed(UpgateError):
    """The rollback ladder could not restore and prove the previous state."""


def exit_code(verdict: Verdict) -> int:
    return EXIT_CODES[verdict]

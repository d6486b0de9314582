"""SIGTERM, SIGINT and SIGHUP turned into an exception the pipeline answers with the rollback ladder.

    >>> with SignalGuard() as guard:                  # doctest: +SKIP
    ...     try:
    ...         migrate_and_deploy()                  # SIGTERM here raises Interrupted
    ...     except Interrupted:
    ...         with guard.shield():                  # signals during the rollback are noted, not raised
    ...             rollback()

`Interrupted` derives from KeyboardInterrupt on purpose: psycopg cancels the running query on it,
`subprocess.run` kills its child, and no `except Exception` on the way swallows it. It is raised once
per run: later signals, and any signal inside `shield()`, are only recorded (`received`), so nothing
can cut the rollback or the final records short. Only SIGKILL can, and `upgate rollback` finishes
what a SIGKILL left from the journal.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A termination signal reached upgate; the pipeline rolls back whatever was touched."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)

    def __str__(self) -> str:
        return f"interrupted by {self.name}"


class SignalGuard:
    """While entered (in the main thread): the first termination signal raises Interrupted."""

    def __init__(self) -> None:
        #: Names of every signal received, in order.
        self.received: list[str] = []
        self.raised = False
        self._shielded = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum).name)
        if self.raised or self._shielded:
            return
        self.raised = True
        raise Interrupted(signum)

    @contextlib.contextmanager
    def shield(self) -> Iterator[None]:
        """Signals inside are recorded, never raised (the rollback ladder, the final records)."""
        self._shielded += 1
        try:
            yield
        finally:
            self._shielded -= 1

"""The journal: one fsynced JSON line before and after every step, so a killed run can be read back.

    >>> journal = Journal(run.journal)                # doctest: +SKIP
    >>> with journal.step("migrate", files=2):
    ...     apply()
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from upgate.checks.secrets import redact


class Journal:
    def __init__(self, path: Path, observers: list[Callable[[dict[str, Any]], None]] | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Called with each record after it is on disk (the audit log mirrors every step this way).
        self.observers = list(observers or [])

    def write(self, step: str, event: str, **detail: Any) -> None:
        record = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "step": step, "event": event}
        record.update(detail)
        line = redact(json.dumps(record, default=str)) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        for observe in self.observers:
            try:
                observe(record)
            except Exception:  # an observer (the audit log) must never stop a step
                pass

    @contextlib.contextmanager
    def step(self, name: str, **detail: Any) -> Iterator[dict[str, Any]]:
        """Journal start and end (ok or failed, with the error); the yielded dict adds end detail."""
        extra: dict[str, Any] = {}
        self.write(name, "start", **detail)
        started = time.monotonic()
        try:
            yield extra
        except BaseException as exc:
            self.write(name, "end", **{**extra, "status": "failed", "seconds": round(time.monotonic() - started, 3),
                                       "error": f"{type(exc).__name__}: {exc}"})
            raise
        self.write(name, "end", **{**extra, "status": "ok", "seconds": round(time.monotonic() - started, 3)})

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

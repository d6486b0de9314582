"""The journal: one fsynced JSON line before and after every step, so a killed run can be read back.

    >>> journal = Journal(run.journal)                # doctest: +SKIP
    >>> with journal.step("migrate", files=2):
    ...     apply()

Writing is best-effort and never raises: a full disk must not stop a rollback half-way. A record that
cannot be written is kept (`unwritten`) and written first by the next write that succeeds, so the file
stays in order; the pipeline refuses to touch anything while the journal is not writable
(`healthy`). A kill or a power cut can tear only the last line: reading ignores it with a warning
(`warnings`), and the next writer cuts it off before appending (never gluing two records together).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from upgate.checks.secrets import redact
from upgate.errors import ConfigError


class Journal:
    def __init__(self, path: Path, observers: list[Callable[[dict[str, Any]], None]] | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Called with each record after it is on disk (the audit log mirrors every step this way).
        self.observers = list(observers or [])
        #: Lines that could not be written yet (disk full, read-only), oldest first.
        self.unwritten: list[str] = []
        #: The last write error, while `unwritten` is not empty.
        self.error: OSError | None = None
        #: What reading found and skipped (a torn last line), for the caller to show.
        self.warnings: list[str] = []
        #: Called once per write error, with the error (the pipeline prints it).
        self.on_error: Callable[[OSError], None] | None = None
        self._checked_tail = False
        self._lock = threading.Lock()  # the backup may journal from its thread while the pre-gates run

    @property
    def healthy(self) -> bool:
        """True when every record so far is on disk."""
        return not self.unwritten

    def write(self, step: str, event: str, **detail: Any) -> None:
        record = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "step": step, "event": event}
        record.update(detail)
        line = redact(json.dumps(record, default=str)) + "\n"
        with self._lock:
            self.unwritten.append(line)
            try:
                self._flush()
            except OSError as exc:
                first = self.error is None
                self.error = exc
                if first and self.on_error is not None:
                    with contextlib.suppress(Exception):
                        self.on_error(exc)
            else:
                self.error = None
        for observe in self.observers:
            try:
                observe(record)
            except Exception:  # an observer (the audit log) must never stop a step
                pass

    def _flush(self) -> None:
        """Append every pending line, fsynced; on an error cut off what was half-written and raise."""
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if not self._checked_tail:
                _drop_torn_tail(fd)
                self._checked_tail = True
            while self.unwritten:
                data = self.unwritten[0].encode("utf-8")
                size = os.fstat(fd).st_size
                try:
                    written = os.write(fd, data)
                    if written != len(data):
                        raise OSError(28, f"short write to {self.path} ({written} of {len(data)} bytes)")
                    os.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)
                    raise
                self.unwritten.pop(0)
        finally:
            os.close(fd)

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
        """Every record; a torn last line is skipped (see `warnings`), a bad line before it is an error."""
        self.warnings = []
        if not self.path.exists():
            return []
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read the journal: {exc.strerror}") from None
        lines = text.splitlines()
        records: list[dict[str, Any]] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                if number == len(lines):
                    self.warnings.append(f"{self.path}:{number}: torn last line ignored (a run killed while "
                                         f"writing it): {line[:80]!r}")
                    continue
                raise ConfigError(f"{self.path}:{number}: not a journal record ({exc}); the journal is damaged "
                                  "before its last line: read it and undo the run by hand") from None
            records.append(record)
        return records


def _drop_torn_tail(fd: int) -> None:
    """Cut a last line that does not end in a newline (a writer killed mid-line) off the file."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    tail_start = max(0, size - 65536)
    tail = os.pread(fd, size - tail_start, tail_start)
    if tail.endswith(b"\n"):
        return
    cut = tail.rfind(b"\n")
    if cut < 0 and tail_start > 0:
        return  # a single line longer than 64 KiB: leave it to read() to report
    try:
        json.loads(tail[cut + 1:])
        os.write(fd, b"\n")  # a whole record that only lost its newline
    except ValueError:
        os.ftruncate(fd, tail_start + cut + 1)

"""The audit log: one append-only JSON line per action, across every run (who, when, where, what config, verdict).

    >>> log = AuditLog(Path("reports/audit.jsonl"))                      # doctest: +SKIP
    >>> log.record("run", "start", run_id="20261125-101500-ab12", config_sha256="5df6…")
    >>> verify_chain(Path("reports/audit.jsonl")).ok
    True

Each line carries the SHA-256 of the line before it (`prev`), so an edited or deleted line breaks the
chain and `verify_chain` names the first broken line. Lines are written with O_APPEND under an
exclusive lock and fsynced: two runs writing at once never interleave.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from upgate.checks.secrets import redact

if TYPE_CHECKING:
    from upgate.config import Config
    from upgate.core.runs import RunDir

GENESIS = "0" * 64
# The journal keys worth auditing; the rest (backup paths, applied files) stays in the run's journal.
_MIRRORED = ("status", "seconds", "error", "verdict", "exit_code", "reason", "config", "config_sha256", "target")


def whoami() -> str:
    """The person or pipeline acting: UPGATE_ACTOR, then CI's actor variables, then the OS user."""
    for var in ("UPGATE_ACTOR", "GITHUB_ACTOR", "GITLAB_USER_LOGIN", "BUILD_REQUESTEDFOR", "SUDO_USER"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def line_hash(line: str) -> str:
    return hashlib.sha256(line.rstrip("\n").encode("utf-8")).hexdigest()


class AuditLog:
    """Append actions to one JSONL file shared by every run of every target."""

    def __init__(self, path: Path, **context: Any) -> None:
        self.path = Path(path)
        self.context = context
        self.who = whoami()
        self.host = socket.gethostname()

    def record(self, action: str, event: str, **detail: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "who": self.who,
            "host": self.host,
            "pid": os.getpid(),
            "action": action,
            "event": event,
            **self.context,
            **detail,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entry["prev"] = _last_hash(fd)
            line = redact(json.dumps(entry, default=str, sort_keys=False)) + "\n"
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        return entry

    def mirror(self, **fixed: Any) -> Callable[[dict[str, Any]], None]:
        """A journal observer: every journal line (step start/end) becomes an audit line."""

        def observe(record: dict[str, Any]) -> None:
            detail = {k: v for k, v in record.items() if k in _MIRRORED}
            self.record(str(record.get("step")), str(record.get("event")), **fixed, **detail)

        return observe


def _last_hash(fd: int) -> str:
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return GENESIS
    chunk = min(size, 65536)
    while True:
        os.lseek(fd, size - chunk, os.SEEK_SET)
        data = os.read(fd, chunk)
        body = data.rstrip(b"\n")
        cut = body.rfind(b"\n")
        if cut >= 0 or chunk == size:
            return line_hash(body[cut + 1:].decode("utf-8"))
        chunk = min(size, chunk * 4)


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    lines: int
    summary: str
    first_broken_line: int | None = None


def verify_chain(path: Path) -> ChainCheck:
    """Walk the log and check every line's `prev` is the hash of the line before it."""
    prev = GENESIS
    count = 0
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            count += 1
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                return ChainCheck(False, count, f"{path}:{number}: not a JSON line", number)
            if entry.get("prev") != prev:
                return ChainCheck(False, count, f"{path}:{number}: chain broken (a line before it was edited, "
                                                f"removed or inserted)", number)
            prev = line_hash(line)
    return ChainCheck(True, count, f"{path}: {count} lines, chain intact")


def read_audit(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def audit_path(reporting_audit_log: Path | None, run_path: Path) -> Path:
    """[reporting] audit_log, else `audit.jsonl` in the reports folder holding runs/<id>/."""
    return Path(reporting_audit_log) if reporting_audit_log else run_path.parent.parent / "audit.jsonl"


def audit_log_for(config: Config, run: RunDir) -> AuditLog:
    """The audit log of a pipeline run: every line names the run, the target and the config's hash."""
    digest: str | None
    try:
        digest = hashlib.sha256(Path(config.source).read_bytes()).hexdigest()
    except OSError:
        digest = None
    return AuditLog(audit_path(config.reporting.audit_log, run.path), run_id=run.run_id,
                    target=config.target.name, config=str(config.source), config_sha256=digest)

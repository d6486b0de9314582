"""Backup before anything is touched: `pg_dump -Fc` at low compression, verified by a full read.

    >>> backup = take_backup(url, Path("run/backup"), pg_dump, pg_restore)   # doctest: +SKIP
    >>> restore_backup(url, backup, pg_restore)                                # the last rung of rollback

`pg_restore --list` only reads the table of contents and misses a corrupt data block; verification
here runs `pg_restore -f /dev/null` over the whole archive, which decompresses every block.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from upgate.checks.secrets import redact
from upgate.errors import StepFailed


@dataclass(frozen=True)
class Backup:
    path: Path
    size_bytes: int
    sha256: str
    dump_s: float
    verify_s: float
    verified: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def _run(cmd: list[str], what: str, timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise StepFailed(f"{what}: {cmd[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise StepFailed(f"{what}: timed out after {timeout_s} s") from None
    if proc.returncode != 0:
        raise StepFailed(f"{what} failed (exit {proc.returncode}): {redact(proc.stderr.strip())[-800:]}")
    return proc


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_backup(path: Path, pg_restore: str, level: str = "full") -> float:
    started = time.monotonic()
    if level == "full":
        _run([pg_restore, "--file", "/dev/null", str(path)], f"verifying backup {path}")
    elif level == "list":
        _run([pg_restore, "--list", str(path)], f"listing backup {path}")
    return time.monotonic() - started


def take_backup(url: str, folder: Path, pg_dump: str, pg_restore: str, compression: int = 1,
                verify: str = "full") -> Backup:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "database.dump"
    started = time.monotonic()
    _run([pg_dump, "--format=custom", f"--compress={compression}", "--no-owner", "--file", str(target),
          "--dbname", url], "pg_dump")
    dump_s = time.monotonic() - started
    verify_s = verify_backup(target, pg_restore, verify)
    return Backup(path=target, size_bytes=target.stat().st_size, sha256=sha256_of(target), dump_s=round(dump_s, 3),
                  verify_s=round(verify_s, 3), verified=verify)


def restore_backup(url: str, backup: Backup, pg_restore: str) -> float:
    """Replace the database's objects with the backup's, in one transaction (all or nothing)."""
    if sha256_of(backup.path) != backup.sha256:
        raise StepFailed(f"backup {backup.path} changed since it was verified (checksum mismatch): not restoring")
    started = time.monotonic()
    _run([pg_restore, "--clean", "--if-exists", "--single-transaction", "--no-owner", "--exit-on-error",
          "--dbname", url, str(backup.path)], f"restoring {backup.path}")
    return time.monotonic() - started

"""The model upgrade step: back up the live model (checksummed), stage the candidate, swap atomically, undo.

    >>> up = ModelUpgrader(config.model_upgrade, run.path / "backup" / "models", run.run_id)   # doctest: +SKIP
    >>> up.backup(); up.switch()       # readers see the old folder or the new one, never half of one
    >>> up.undo()                      # the verified old folder is live again

The guide's `upgrade_ai_model.sh` made safe: the candidate is validated (metadata-level compatibility)
before anything is switched; the switch is one `rename(2)` of a symlink, or for a plain directory one
`renameat2(RENAME_EXCHANGE)`; undo checks the old folder against the backup's manifest and swaps it
back, or swaps in a restored copy of the backup when the old folder no longer matches.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from upgate.checks.inference import check_compatibility
from upgate.config import ModelUpgradeConfig
from upgate.errors import StepFailed

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def hash_tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path (symlinks followed)."""
    manifest: dict[str, str] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        manifest[path.relative_to(folder).as_posix()] = digest.hexdigest()
    return manifest


def manifest_sha256(manifest: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def copy_tree(src: Path, dst: Path) -> dict[str, str]:
    """Copy `src` to the new folder `dst`, fsync it, and return the copy's manifest (equal to the source's or raise)."""
    shutil.copytree(src, dst, symlinks=False)
    for path in dst.rglob("*"):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    copied = hash_tree(dst)
    original = hash_tree(src)
    if copied != original:
        differing = sorted(k for k in set(copied) | set(original) if copied.get(k) != original.get(k))
        raise StepFailed(f"copy of {src} to {dst} differs from the source: {', '.join(differing[:5])}")
    _fsync_dir(dst.parent)
    return copied


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def point_symlink(link: Path, target: Path) -> None:
    """Repoint `link` at `target` atomically: a new link beside it, renamed over it."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    relative = os.path.relpath(target, link.parent) if target.parent == link.parent else str(target)
    os.symlink(relative, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


class ModelUpgrader:
    """Backup, switch and undo of one model folder; the pipeline journals each call."""

    def __init__(self, cfg: ModelUpgradeConfig, backup_root: Path, run_id: str,
                 on_progress: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.live = cfg.live
        self.backup_root = backup_root
        self.run_id = run_id
        self.say = on_progress or (lambda _m: None)
        self.mode = "symlink" if cfg.live.is_symlink() else "directory"
        self.previous: Path | None = None  # the old folder, once switched away from
        self.staged: Path | None = None
        self.manifest: dict[str, str] = {}
        self.backup_copy: Path | None = None
        self.switched = False
        self.record: dict[str, Any] = {"live": str(cfg.live), "candidate": str(cfg.candidate), "mode": self.mode}

    # --- before anything is switched ------------------------------------------------------------

    def backup(self) -> dict[str, Any]:
        """Copy the live model folder into the backup folder and prove the copy by its manifest."""
        if not self.live.exists():
            raise StepFailed(f"model_upgrade.live {self.live} does not exist")
        source = self.live.resolve()
        t0 = time.monotonic()
        self.backup_copy = self.backup_root / self.cfg.model
        if self.backup_copy.exists():
            shutil.rmtree(self.backup_copy)
        self.backup_root.mkdir(parents=True, exist_ok=True)
        self.manifest = copy_tree(source, self.backup_copy)
        if self.cfg.verify_backup and hash_tree(self.backup_copy) != self.manifest:
            raise StepFailed(f"model backup {self.backup_copy} does not match its manifest")
        digest = manifest_sha256(self.manifest)
        (self.backup_root / f"{self.cfg.model}.manifest.json").write_text(
            json.dumps({"source": str(source), "sha256": digest, "files": self.manifest}, indent=2) + "\n",
            encoding="utf-8")
        size = sum(p.stat().st_size for p in self.backup_copy.rglob("*") if p.is_file())
        self.record.update(backup=str(self.backup_copy), backup_sha256=digest, backup_bytes=size, source=str(source))
        self.say(f"backed up {source} ({size / 2**20:.1f} MiB, {len(self.manifest)} files, manifest sha256 "
                 f"{digest[:12]}) in {time.monotonic() - t0:.1f} s")
        return {"model_backup": dict(self.record)}

    # --- the switch -----------------------------------------------------------------------------

    def switch(self) -> dict[str, Any]:
        """Stage a verified copy of the candidate next to `live`, check it, and swap it in atomically."""
        candidate = self.cfg.candidate
        result = check_compatibility(candidate, name=f"candidate {candidate}")
        if not result.ok:
            raise StepFailed(f"nothing switched: {result.summary}")
        self.staged = self.live.with_name(f".{self.live.name}.{self.run_id}.new")
        if self.staged.exists():
            shutil.rmtree(self.staged)
        t0 = time.monotonic()
        copy_tree(candidate.resolve(), self.staged)
        staged_check = check_compatibility(self.staged, name=f"staged copy {self.staged}")
        if not staged_check.ok:
            raise StepFailed(f"nothing switched: {staged_check.summary}")
        if self.mode == "symlink":
            self.previous = self.live.resolve()
            point_symlink(self.live, self.staged)
            how = f"symlink {self.live} -> {self.staged.name} (was {self.previous})"
        else:
            self.previous = self.staged  # after the exchange the staged name holds the old folder
            if exchange(self.staged, self.live):
                how = f"renameat2 EXCHANGE {self.live} <-> {self.staged.name}"
            else:  # two renames: a reader may miss the folder for the instant between them, never see half
                old = self.live.with_name(f".{self.live.name}.{self.run_id}.old")
                os.rename(self.live, old)
                os.rename(self.staged, self.live)
                self.previous = old
                how = f"rename {self.live} -> {old.name}, {self.staged.name} -> {self.live.name}"
            _fsync_dir(self.live.parent)
        self.switched = True
        self.record.update(switched=True, previous=str(self.previous), how=how,
                           switch_s=round(time.monotonic() - t0, 3))
        self.say(f"switched: {how}")
        return {"model_switch": dict(self.record)}

    # --- undo -----------------------------------------------------------------------------------

    def undo(self) -> dict[str, Any]:
        """Swap the old model back: the old folder if it still matches the backup, else a restored backup copy."""
        if not self.switched:
            return {"model_undo": "nothing was switched"}
        assert self.previous is not None
        source = self.previous
        if not source.is_dir() or hash_tree(source) != self.manifest:
            if self.backup_copy is None or hash_tree(self.backup_copy) != self.manifest:
                raise StepFailed(f"cannot undo the model switch: {source} and the backup both differ from the "
                                 "backup manifest")
            source = self.live.with_name(f".{self.live.name}.{self.run_id}.restored")
            if source.exists():
                shutil.rmtree(source)
            copy_tree(self.backup_copy, source)
            self.say(f"old folder changed since the backup: restored {self.backup_copy} to {source.name}")
        if self.mode == "symlink":
            point_symlink(self.live, source)
        elif not exchange(source, self.live):
            aside = self.live.with_name(f".{self.live.name}.{self.run_id}.rejected")
            os.rename(self.live, aside)
            os.rename(source, self.live)
        if hash_tree(self.live.resolve()) != self.manifest:
            raise StepFailed(f"{self.live} does not match the backup manifest after the swap back")
        self.switched = False
        self.record.update(undone=True, restored_from=str(source))
        self.say(f"swapped back: {self.live} is the backed-up model again (manifest verified)")
        return {"model_undo": dict(self.record)}

    def resume(self, switch_record: dict[str, Any]) -> None:
        """Take up a switch journaled by a run that died (for `upgate rollback`): undo can then run."""
        manifest_file = self.backup_root / f"{self.cfg.model}.manifest.json"
        if not manifest_file.exists():
            raise StepFailed(f"{manifest_file}: the model backup manifest is missing; cannot undo the switch safely")
        self.manifest = json.loads(manifest_file.read_text(encoding="utf-8"))["files"]
        self.backup_copy = self.backup_root / self.cfg.model
        self.previous = Path(switch_record["previous"])
        self.mode = switch_record.get("mode", self.mode)
        self.record.update(switch_record)
        self.switched = True

    def to_json(self) -> dict[str, Any]:
        return dict(self.record)

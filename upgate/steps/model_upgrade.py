"""The model upgrade step: back up the live model (checksummed), stage the candidate, swap atomically, undo.

    >>> up = ModelUpgrader(config.model_upgrade, run.path / "backup" / "models", run.run_id)   # doctest: +SKIP
    >>> up.backup(); up.switch()       # readers see the old folder or the new one, never half of one
    >>> up.undo()                      # the verified old folder is live again

The guide's `upgrade_ai_model.sh` made safe: the candidate is validated (metadata-level compatibility)
before anything is switched; the switch is one `rename(2)` of a symlink, or for a plain directory one
`renameat2(RENAME_EXCHANGE)`; undo checks the old folder against the backup's manifest and swaps it
back, or swaps in a restored copy of the backup when the old folder no longer matches.

Space: the backup is reflinked, else hard-linked, where the filesystem allows (`backup_mode = "link"`), so a
backup of an 87 MiB model costs no 87 MiB; the staged candidate is reflinked or copied (never linked: it
becomes the live model). A refused switch removes its staged copy; an undo moves the rejected candidate into
the run's backup folder (a rename: readers that opened it still see it whole); each backup() removes what ended runs left beside the live path (a directory-mode upgrade keeps the old folder there
for a fast undo and for readers that opened it before the swap) and the model backups of runs older than the
newest `keep_backups`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
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
_FICLONE = 0x40049409  # linux/fs.h: share the extents of another file (btrfs, xfs, overlayfs on them)
_LEFTOVER = ("new", "old", "rejected", "restored")


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


def _reflink(src: Path, dst: Path) -> bool:
    try:
        with src.open("rb") as s, dst.open("wb") as d:
            fcntl.ioctl(d.fileno(), _FICLONE, s.fileno())
        shutil.copystat(src, dst)
        return True
    except OSError:
        dst.unlink(missing_ok=True)
        return False


def link_tree(src: Path, dst: Path, allow_hardlink: bool) -> dict[str, int]:
    """Create `dst` with the files of `src`: reflinked, else hard-linked (when allowed), else copied.

    Returns how many files went each way. Hard links share the bytes with `src` (same inode): fine for a
    backup that is checked against its manifest before use, never for a folder that becomes live.
    """
    ways = {"reflink": 0, "hardlink": 0, "copy": 0}
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        real = path.resolve()
        if _reflink(real, target):
            ways["reflink"] += 1
            continue
        if allow_hardlink:
            try:
                os.link(real, target)
                ways["hardlink"] += 1
                continue
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP):
                    raise
        shutil.copy2(real, target)
        ways["copy"] += 1
    dst.mkdir(parents=True, exist_ok=True)
    return ways


def copy_tree(src: Path, dst: Path, allow_hardlink: bool = False) -> dict[str, str]:
    """Create `dst` from `src` (see link_tree), fsync it, and return its manifest (equal to the source's or raise)."""
    original = hash_tree(src)
    ways = link_tree(src, dst, allow_hardlink)
    for path in dst.rglob("*"):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    copied = original if ways["reflink"] == ways["copy"] == 0 else hash_tree(dst)  # hard links: the same bytes
    if copied != original:
        differing = sorted(k for k in set(copied) | set(original) if copied.get(k) != original.get(k))
        raise StepFailed(f"copy of {src} to {dst} differs from the source: {', '.join(differing[:5])}")
    _fsync_dir(dst.parent)
    return copied


def _ways(folder: Path, source: Path) -> str:
    """'hardlink' when every file of `folder` is the same inode as in `source`, else 'copy'."""
    for path in folder.rglob("*"):
        if path.is_file():
            other = source / path.relative_to(folder)
            if not other.exists() or not os.path.samestat(path.stat(), other.stat()):
                return "copy"
    return "hardlink"


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


def _remove(folder: Path | None) -> bool:
    if folder is None or not folder.exists():
        return False
    shutil.rmtree(folder)
    return True


class ModelUpgrader:
    """Backup, switch and undo of one model folder; the pipeline journals each call."""

    def __init__(self, cfg: ModelUpgradeConfig, backup_root: Path, run_id: str,
                 on_progress: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.live = cfg.live
        # A configured backup_dir is shared by every run: each run gets its own folder in it.
        self.shared_backup_dir = cfg.backup_dir is not None and backup_root == cfg.backup_dir
        self.backup_root = backup_root / run_id if self.shared_backup_dir else backup_root
        self.run_id = run_id
        self.say = on_progress or (lambda _m: None)
        self.mode = "symlink" if cfg.live.is_symlink() else "directory"
        self.previous: Path | None = None  # the old folder, once switched away from
        self.staged: Path | None = None
        self.manifest: dict[str, str] = {}
        self.backup_copy: Path | None = None
        self.switched = False
        self.record: dict[str, Any] = {"live": str(cfg.live), "candidate": str(cfg.candidate), "mode": self.mode}

    def _sibling(self, kind: str, run_id: str | None = None) -> Path:
        return self.live.with_name(f".{self.live.name}.{run_id or self.run_id}.{kind}")

    # --- before anything is switched ------------------------------------------------------------

    def backup(self) -> dict[str, Any]:
        """Back up the live model folder (linked where allowed) and prove the backup by its manifest."""
        if not self.live.exists():
            raise StepFailed(f"model_upgrade.live {self.live} does not exist")
        source = self.live.resolve()
        t0 = time.monotonic()
        removed = self._remove_leftovers(source)
        self.backup_copy = self.backup_root / self.cfg.model
        if self.backup_copy.exists():
            shutil.rmtree(self.backup_copy)
        self.backup_root.mkdir(parents=True, exist_ok=True)
        self.manifest = copy_tree(source, self.backup_copy, allow_hardlink=self.cfg.backup_mode == "link")
        if self.cfg.verify_backup and hash_tree(self.backup_copy) != self.manifest:
            raise StepFailed(f"model backup {self.backup_copy} does not match its manifest")
        digest = manifest_sha256(self.manifest)
        how = _ways(self.backup_copy, source)
        (self.backup_root / f"{self.cfg.model}.manifest.json").write_text(
            json.dumps({"source": str(source), "sha256": digest, "files": self.manifest, "stored_as": how},
                       indent=2) + "\n", encoding="utf-8")
        size = sum(p.stat().st_size for p in self.backup_copy.rglob("*") if p.is_file())
        pruned = self._apply_retention()
        self.record.update(backup=str(self.backup_copy), backup_sha256=digest, backup_bytes=size, source=str(source),
                           backup_stored_as=how, removed_leftovers=removed, pruned_backups=pruned)
        cost = "no extra space: hard links" if how == "hardlink" else f"{size / 2**20:.1f} MiB"
        self.say(f"backed up {source} ({len(self.manifest)} files, {cost}, manifest sha256 {digest[:12]}) in "
                 f"{time.monotonic() - t0:.1f} s" + (f"; removed {len(pruned)} old model backups" if pruned else ""))
        return {"model_backup": dict(self.record)}

    def _remove_leftovers(self, live_target: Path) -> list[str]:
        """Staged, old and rejected folders that ended runs left beside the live path (never the live one)."""
        pattern = re.compile(rf"^\.{re.escape(self.live.name)}\.(.+)\.({'|'.join(_LEFTOVER)})$")
        removed = []
        for path in sorted(self.live.parent.iterdir()):
            if pattern.match(path.name) and path.is_dir() and not path.is_symlink() and path.resolve() != live_target:
                shutil.rmtree(path)
                removed.append(path.name)
        if removed:
            self.say(f"removed what earlier runs left beside {self.live}: {', '.join(removed)}")
        return removed

    def _apply_retention(self) -> list[str]:
        """Model backups of runs older than the newest `keep_backups` are removed (their manifests stay)."""
        if self.shared_backup_dir:
            runs = sorted(p for p in self.backup_root.parent.iterdir() if p.is_dir())
            backups = [r / self.cfg.model for r in runs]
        elif self.backup_root.parts[-2:] == ("backup", "models"):
            runs = sorted(p for p in self.backup_root.parents[2].iterdir() if p.is_dir())
            backups = [r / "backup" / "models" / self.cfg.model for r in runs]
        else:
            return []
        existing = [b for b in backups if b.is_dir()]
        pruned = []
        for old in existing[: max(len(existing) - self.cfg.keep_backups, 0)]:
            if old == self.backup_copy:
                continue
            shutil.rmtree(old)
            _remove(old.with_name(f"{old.name}.rejected"))
            pruned.append(str(old))
        return pruned

    # --- the switch -----------------------------------------------------------------------------

    def switch(self) -> dict[str, Any]:
        """Stage a verified copy of the candidate next to `live`, check it, and swap it in atomically."""
        candidate = self.cfg.candidate
        result = check_compatibility(candidate, name=f"candidate {candidate}")
        if not result.ok:
            raise StepFailed(f"nothing switched: {result.summary}")
        self.staged = self._sibling("new")
        if self.staged.exists():
            shutil.rmtree(self.staged)
        t0 = time.monotonic()
        try:
            copy_tree(candidate.resolve(), self.staged)  # reflinked or copied: it becomes the live model
            staged_check = check_compatibility(self.staged, name=f"staged copy {self.staged}")
            if not staged_check.ok:
                raise StepFailed(f"nothing switched: {staged_check.summary}")
        except BaseException:
            _remove(self.staged)
            raise
        self.record["staged"] = str(self.staged)
        if self.mode == "symlink":
            self.previous = self.live.resolve()
            point_symlink(self.live, self.staged)
            how = f"symlink {self.live} -> {self.staged.name} (was {self.previous})"
        else:
            self.previous = self.staged  # after the exchange the staged name holds the old folder
            if exchange(self.staged, self.live):
                how = f"renameat2 EXCHANGE {self.live} <-> {self.staged.name}"
            else:  # two renames: a reader may miss the folder for the instant between them, never see half
                old = self._sibling("old")
                os.rename(self.live, old)
                os.rename(self.staged, self.live)
                self.previous = old
                how = f"rename {self.live} -> {old.name}, {self.staged.name} -> {self.live.name}"
            _fsync_dir(self.live.parent)
            # The old folder stays for a fast undo (and for readers that opened it before the swap); the next
            # run's backup() removes it.
        self.switched = True
        self.record.update(switched=True, previous=str(self.previous), how=how,
                           switch_s=round(time.monotonic() - t0, 3))
        self.say(f"switched: {how}")
        return {"model_switch": dict(self.record)}

    # --- undo -----------------------------------------------------------------------------------

    def undo(self) -> dict[str, Any]:
        """Swap the old model back: the old folder if it still matches the backup, else a restored backup copy.

        The rejected candidate is removed once the old model is verified live again.
        """
        if not self.switched:
            return {"model_undo": "nothing was switched"}
        assert self.previous is not None
        source = self.previous
        if not source.is_dir() or hash_tree(source) != self.manifest:
            if self.backup_copy is None or not self.backup_copy.is_dir() or hash_tree(self.backup_copy) != self.manifest:
                raise StepFailed(f"cannot undo the model switch: {source} and the backup both differ from the "
                                 "backup manifest")
            source = self._sibling("restored")
            _remove(source)
            copy_tree(self.backup_copy, source, allow_hardlink=self.cfg.backup_mode == "link")
            self.say(f"old folder gone or changed since the backup: restored {self.backup_copy} to {source.name}")
        rejected: Path | None
        if self.mode == "symlink":
            rejected = self.live.resolve()
            point_symlink(self.live, source)
        elif exchange(source, self.live):
            rejected = source  # the exchange left the candidate under the old folder's name
        else:
            rejected = self._sibling("rejected")
            _remove(rejected)
            os.rename(self.live, rejected)
            os.rename(source, self.live)
        if hash_tree(self.live.resolve()) != self.manifest:
            raise StepFailed(f"{self.live} does not match the backup manifest after the swap back")
        kept = self._move_rejected(rejected)
        self.switched = False
        self.record.update(undone=True, restored_from=str(source), rejected_moved_to=kept)
        self.say(f"swapped back: {self.live} is the backed-up model again (manifest verified)")
        return {"model_undo": dict(self.record)}

    def _move_rejected(self, rejected: Path | None) -> str | None:
        """Move the rejected candidate from beside the live path into this run's backup folder.

        A rename, not a delete: a reader that opened the rejected release before the swap back (the service
        about to be restarted) still sees it whole. It is kept with the run for inspection, and removed with the
        run's model backup by retention. Across filesystems it stays beside live until the next run's backup().
        """
        if rejected is None or not rejected.is_dir() or rejected.resolve() == self.live.resolve() \
                or not rejected.name.startswith(f".{self.live.name}."):
            return None
        target = self.backup_root / f"{self.cfg.model}.rejected"
        _remove(target)
        self.backup_root.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(rejected, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self.say(f"{rejected.name} left beside {self.live} (another filesystem than {self.backup_root}); "
                     "the next run's backup removes it")
            return None
        return str(target)

    def resume(self, switch_record: dict[str, Any]) -> None:
        """Take up a switch journaled by a run that died (for `upgate rollback`): undo can then run."""
        manifest_file = self.backup_root / f"{self.cfg.model}.manifest.json"
        if not manifest_file.exists():
            raise StepFailed(f"{manifest_file}: the model backup manifest is missing; cannot undo the switch safely")
        self.manifest = json.loads(manifest_file.read_text(encoding="utf-8"))["files"]
        self.backup_copy = self.backup_root / self.cfg.model
        self.previous = Path(switch_record["previous"])
        self.staged = Path(switch_record["staged"]) if switch_record.get("staged") else None
        self.mode = switch_record.get("mode", self.mode)
        self.record.update(switch_record)
        self.switched = True

    def to_json(self) -> dict[str, Any]:
        return dict(self.record)

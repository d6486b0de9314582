"""A Python environment's packages: the installed set, what an upgrade changed in it, and the app's own tests.

    >>> before = installed_set("/srv/app/venv/bin/python")                 # doctest: +SKIP
    >>> compare_installed(before, installed_set("/srv/app/venv/bin/python")).summary   # doctest: +SKIP
    'packages: 1 changed (packaging 21.3 -> 24.1), 0 added, 0 removed'
    >>> run_app_tests(["pytest", "-q"], cwd=Path("/srv/app")).ok           # doctest: +SKIP
    True

The installed set is `pip list --format=freeze` of the environment's own interpreter: one
`name==version` per distribution (pip itself included), editable installs marked. Everything runs
the target interpreter in a subprocess; nothing here imports the environment's packages.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from upgate.checks.result import CheckResult
from upgate.checks.secrets import redact

_REPORT_FIRST = 10


class PipFailed(RuntimeError):
    """pip could not run in the environment, or exited non-zero; the message names the command and why."""


@dataclass(frozen=True)
class InstalledSet:
    """name==version of every installed distribution (pip list --format=freeze), sorted; editables by name."""

    python: str
    pins: tuple[str, ...]
    editable: tuple[str, ...] = field(default_factory=tuple)

    def versions(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for pin in self.pins:
            name, _, version = pin.partition("==")
            out[canonicalize_name(name)] = version
        return out

    def names(self) -> dict[str, str]:
        """canonical name -> the name as pip prints it."""
        return {canonicalize_name(pin.partition("==")[0]): pin.partition("==")[0] for pin in self.pins}

    def restorable(self) -> list[str]:
        """The pins a wheel can bring back (editable installs are the developer's checkout, not a release)."""
        editable = {canonicalize_name(n) for n in self.editable}
        return [p for p in self.pins if canonicalize_name(p.partition("==")[0]) not in editable]

    def to_json(self) -> dict[str, Any]:
        return {"python": self.python, "pins": list(self.pins), "editable": list(self.editable)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstalledSet:
        return cls(str(data["python"]), tuple(data.get("pins", [])), tuple(data.get("editable", [])))


def pip(python: str | os.PathLike[str], args: Sequence[str], timeout_s: float = 600.0,
        env: dict[str, str] | None = None, log: Path | None = None) -> str:
    """`python -m pip ARGS`; its output, or PipFailed naming the command and pip's last lines."""
    argv = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    shown = " ".join(argv[:3] + list(args[:1]))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, **(env or {})})
    except FileNotFoundError:
        raise PipFailed(f"{python}: no such interpreter (set [packages] python to the environment's bin/python)") \
            from None
    except subprocess.TimeoutExpired:
        raise PipFailed(f"{shown} timed out after {timeout_s:g} s") from None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as handle:
            handle.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}\n(exit {done.returncode})\n")
    if done.returncode != 0:
        if "No module named pip" in done.stderr:
            raise PipFailed(f"{python} has no pip: install it in that environment (python -m ensurepip)")
        tail = " | ".join(line.strip() for line in (done.stdout + done.stderr).strip().splitlines()[-4:])
        raise PipFailed(f"{shown} failed (exit {done.returncode}): {redact(tail)[-800:]}")
    return done.stdout


def installed_set(python: str | os.PathLike[str], timeout_s: float = 120.0) -> InstalledSet:
    pins = pip(python, ["list", "--format=freeze"], timeout_s).split()
    editable = pip(python, ["list", "--editable", "--format=freeze"], timeout_s).split()
    return InstalledSet(str(python), tuple(sorted(pins, key=str.lower)),
                        tuple(sorted(p.partition("==")[0] for p in editable)))


def candidate_args(requirements: Sequence[os.PathLike[str] | str], install: Sequence[str]) -> list[str]:
    """pip install's arguments for a candidate: `-r FILE` for each requirements file, then `install` as given."""
    args: list[str] = []
    for path in requirements:
        args += ["-r", str(path)]
    return [*args, *install]


def compare_installed(before: InstalledSet, after: InstalledSet, what: str = "packages") -> CheckResult:
    """Every distribution at the version it had before, none added, none removed."""
    old, new = before.versions(), after.versions()
    names = {**before.names(), **after.names()}
    changed = [f"{names[n]} {old[n]} -> {new[n]}" for n in sorted(old) if n in new and old[n] != new[n]]
    added = [f"{names[n]} {new[n]}" for n in sorted(new) if n not in old]
    removed = [f"{names[n]} {old[n]}" for n in sorted(old) if n not in new]
    evidence = {"python": after.python, "changed": changed, "added": added, "removed": removed,
                "count": len(after.pins)}
    if not (changed or added or removed):
        return CheckResult(True, f"{what} of {after.python}: the {len(after.pins)} distributions recorded before, "
                                 "each at its version", evidence)
    parts = [f"{len(items)} {label}" + (f" ({_first(items)})" if items else "")
             for label, items in (("changed", changed), ("added", added), ("removed", removed))]
    return CheckResult(False, f"{what} of {after.python} differ from the recorded set: {', '.join(parts)}", evidence)


def run_app_tests(argv: Sequence[str], cwd: Path | None = None, timeout_s: float = 600.0,
                  env: dict[str, str] | None = None) -> CheckResult:
    """The application's own test command: passes when it exits 0; the output's tail is the evidence."""
    shown = redact(" ".join(argv))
    started = time.monotonic()
    try:
        done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return CheckResult(False, f"app tests `{shown}`: {argv[0]} not found", {"argv": shown})
    except subprocess.TimeoutExpired:
        return CheckResult(False, f"app tests `{shown}` did not finish in {timeout_s:g} s", {"argv": shown})
    seconds = round(time.monotonic() - started, 2)
    output = redact((done.stdout + done.stderr).strip())
    tail = output.splitlines()[-15:]
    evidence = {"argv": shown, "cwd": str(cwd) if cwd else None, "exit_code": done.returncode, "seconds": seconds,
                "output_tail": tail}
    if done.returncode == 0:
        return CheckResult(True, f"app tests `{shown}` passed in {seconds:.1f} s", evidence)
    last = " | ".join(line.strip() for line in tail[-3:] if line.strip())
    return CheckResult(False, f"app tests `{shown}` failed (exit {done.returncode}) in {seconds:.1f} s: {last[-400:]}",
                       evidence)


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:_REPORT_FIRST])
    return shown + (f", ... {len(items) - _REPORT_FIRST} more" if len(items) > _REPORT_FIRST else "")

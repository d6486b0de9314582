"""The user's own gates (`[gates] extra`): which paths join a phase's pytest session, and the phases of each gate.

    [gates]
    extra = ["tests/gates", "smoke_test.py"]       # relative to upgate.toml

A folder with `pre/` and `post/` subfolders: `pre/` runs in the pre phase, `post/` in the post phase; any
other file or folder runs in post. `@pytest.mark.upgate_phase("pre", "post", "rollback")` on a test, class
or module replaces that default; rollback verification runs only the user gates marked for it. User gates
run in the same session as the shipped ones, after them, and are reported the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from upgate.config import Config
from upgate.core.gating import SHIPPED_GATES, gates_folder

MARKER = "upgate_phase"
USER_PHASES = ("pre", "post", "rollback")
_DOTTED = re.compile(r"upgate\.gates\.(pre|post|diagnostics)")


def dotted_phase(arg: str) -> str | None:
    """`upgate.gates.post` (as given to `pytest --pyargs`) -> "post"."""
    m = _DOTTED.fullmatch(arg.split("::")[0])
    return m.group(1) if m else None


def _gate_roots(config: Config) -> list[Path]:
    return [SHIPPED_GATES.resolve(), gates_folder(config).resolve()]


def runs_a_phase_folder(args: Sequence[str], config: Config) -> bool:
    """Does this session run a whole phase of the shipped (or `[gates] directory`) gates?"""
    folders = {root / p for root in _gate_roots(config) for p in ("pre", "post")}
    return any(dotted_phase(a) in ("pre", "post") or Path(a.split("::")[0]).resolve() in folders for a in args)


def extra_args(config: Config, args: Sequence[str]) -> list[str]:
    """The `[gates] extra` paths this session does not already name."""
    named = {Path(a.split("::")[0]).resolve() for a in args}
    return [str(p) for p in config.gates.extra if p.resolve() not in named]


def is_user_gate(path: Path, config: Config) -> bool:
    resolved = path.resolve()
    return not any(resolved.is_relative_to(root) for root in _gate_roots(config))


def default_phase(path: Path, extra: Sequence[Path]) -> str:
    """pre for a gate under a `pre/` folder (of an extra root, or its own parent), else post."""
    resolved = path.resolve()
    for root in extra:
        root = root.resolve()
        if root.is_dir() and resolved.is_relative_to(root):
            first = resolved.relative_to(root).parts[0]
            if first in ("pre", "post"):
                return first
    return "pre" if resolved.parent.name == "pre" else "post"


def check_phases(args: Sequence[object], where: str) -> tuple[str, ...]:
    names = tuple(str(a) for a in args)
    wrong = [n for n in names if n not in USER_PHASES]
    if wrong or not names:
        raise ValueError(f"{where}: @pytest.mark.{MARKER}(...) takes one or more of {', '.join(USER_PHASES)}; "
                         f"got {', '.join(map(repr, names)) or 'nothing'}")
    return names

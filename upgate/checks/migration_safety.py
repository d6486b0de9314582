"""Migration safety: squawk's lint of SQL migration files, and how long the app waited on the migration's locks.

    >>> lint = lint_migrations([Path("migrations/002_widen_tokens.up.sql")], squawk="squawk")   # doctest: +SKIP
    >>> app_blocking(prober_timeline).summary                                                   # doctest: +SKIP

How long each table would stay ACCESS EXCLUSIVE locked is measured for any migration tool by the
rehearsal on a sampled clone (upgate/checks/rehearsal.py, `judge_lock_holds`).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from upgate.checks.migrations import split_statements
from upgate.checks.result import CheckResult

_TRANSACTION_CONTROL = re.compile(r"^\s*(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT)\b", re.I)
_EXCERPT = 70


# --- squawk -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SquawkFinding:
    file: str
    line: int
    rule: str
    level: str
    message: str
    help: str | None = None

    def describe(self) -> str:
        fix = f" ({self.help})" if self.help else ""
        return f"{Path(self.file).name}:{self.line}: {self.rule}: {self.message}{fix}"


def run_squawk(paths: Sequence[Path], squawk: str, pg_version: str | None = None,
               timeout_s: float = 60.0) -> list[SquawkFinding]:
    """squawk's findings for `paths`, each file linted as upgate runs it: inside one transaction.

    Files without their own BEGIN are linted wrapped in BEGIN/COMMIT (squawk's --assume-in-transaction
    misses rules such as ban-concurrent-index-creation-in-transaction); line numbers are the file's own.
    """
    with tempfile.TemporaryDirectory(prefix="upgate-squawk-") as folder:
        linted: dict[str, tuple[Path, int]] = {}
        argv = [squawk, "--reporter", "json"]
        if pg_version:
            argv += ["--pg-version", pg_version]
        for index, path in enumerate(paths):
            text = Path(path).read_text(encoding="utf-8")
            if any(_TRANSACTION_CONTROL.match(s) for s in split_statements(text)):
                linted[str(path)] = (Path(path), 0)
                argv.append(str(path))
                continue
            copy = Path(folder) / f"{index:04d}" / Path(path).name
            copy.parent.mkdir()
            copy.write_text("BEGIN;\n" + text.rstrip() + "\nCOMMIT;\n", encoding="utf-8")
            linted[str(copy)] = (Path(path), 1)
            argv.append(str(copy))
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"squawk ({squawk}) could not run: {exc}") from exc
    if done.returncode not in (0, 1):
        raise RuntimeError(f"squawk failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[:500]}")
    try:
        raw = json.loads(done.stdout or "[]")
    except ValueError as exc:
        raise RuntimeError(f"squawk printed no JSON: {done.stdout.strip()[:300]!r}") from exc
    found = []
    for r in raw:
        original, offset = linted.get(str(r.get("file", "")), (Path(str(r.get("file", ""))), 0))
        found.append(SquawkFinding(file=str(original), line=int(r.get("line", 0)) + 1 - offset,
                                   rule=str(r.get("rule_name", "")), level=str(r.get("level", "")),
                                   message=str(r.get("message", "")), help=r.get("help")))
    return found


def lint_migrations(paths: Sequence[Path], squawk: str, pg_version: str | None = None,
                    fail_rules: Iterable[str] = (), ignore_rules: Iterable[str] = ()) -> CheckResult:
    """squawk's findings mapped to failures (rules in `fail_rules`) and warnings (every other rule)."""
    fail, ignore = set(fail_rules), set(ignore_rules)
    findings = [f for f in run_squawk(paths, squawk, pg_version) if f.rule not in ignore]
    failures = [f for f in findings if f.rule in fail]
    warnings = tuple(f.describe() for f in findings if f.rule not in fail)
    evidence = {"files": [str(p) for p in paths], "findings": [asdict(f) for f in findings],
                "fail_rules": sorted(fail), "ignored_rules": sorted(ignore)}
    if failures:
        return CheckResult(False, f"squawk: {len(failures)} finding(s) of rules that fail the gate: "
                                  + "; ".join(f.describe() for f in failures), evidence, warnings)
    return CheckResult(True, f"squawk: {len(paths)} file(s) linted, no failing rule, {len(warnings)} warning(s)",
                       evidence, warnings)


# --- lock holds: measured by the rehearsal (upgate/checks/rehearsal.py: judge_lock_holds) ----------------


# --- how long the app waited -----------------------------------------------------------------------------


def app_blocking(probes: Iterable[Mapping[str, Any]], slow_ms: float = 100.0) -> CheckResult:
    """From a prober timeline (t, latency_ms, ok per probe): how long the app's requests were held up.

    A probe slower than `slow_ms` or failed counts as blocked; `longest_ms` is the worst single wait and
    `blocked_s` the summed time of blocked probes. Report only: the verdict stays with the gates.
    """
    points = list(probes)
    blocked = [p for p in points if not p.get("ok", False) or float(p.get("latency_ms", 0)) > slow_ms]
    longest = max((float(p.get("latency_ms", 0)) for p in points), default=0.0)
    blocked_s = sum(float(p.get("latency_ms", 0)) for p in blocked) / 1000
    evidence = {"probes": len(points), "blocked_probes": len(blocked), "longest_ms": round(longest, 1),
                "blocked_s": round(blocked_s, 3), "slow_ms": slow_ms,
                "blocked_at": [round(float(p.get("t", 0)), 3) for p in blocked][:50]}
    return CheckResult(True, f"app waited on locks: {len(blocked)} of {len(points)} probes over {slow_ms:g} ms or "
                             f"failed, longest {longest:.0f} ms, {blocked_s:.2f} s in all", evidence)

"""Migration safety: squawk's lint of each file, and how long each file would hold ACCESS EXCLUSIVE locks.

    >>> lint = lint_migrations([Path("migrations/002_widen_tokens.up.sql")], squawk="squawk")   # doctest: +SKIP
    >>> locks = estimate_lock_holds(url, migrations, pg_dump="pg_dump", budget_s=0.5)            # doctest: +SKIP
    >>> locks.result.summary                                                                    # doctest: +SKIP
    '002_widen_tokens.up.sql holds ACCESS EXCLUSIVE on episodic_logs for ~1.9 s ... > lock budget 0.5 s'

The lock estimate is measured, not guessed: the schema is cloned into a scratch database on the same
server, up to `sample_rows` rows of every table the migrations name are copied in, and each statement
runs there in its own transaction while upgate records which tables it locked ACCESS EXCLUSIVE, which
it rewrote (the relfilenode changed) or scanned, and how long it took. A statement that rewrote or
scanned a table is scaled by live rows / sample rows; others count as measured. A file runs in one
transaction, so a table stays locked from the first statement that locks it to the end of the file.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import sqlparse
from psycopg import sql
from psycopg.conninfo import make_conninfo

from upgate.checks.migrations import Migration, split_statements
from upgate.checks.result import CheckResult
from upgate.checks.schema import DryRunError, _clone_schema, _create_database, _drop_database
from upgate.checks.secrets import redact

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


# --- lock holds ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatementLocks:
    """One statement rehearsed on the sampled clone."""

    file: str
    number: int
    excerpt: str
    exclusive: list[str]
    rewritten: list[str]
    scanned: list[str]
    measured_s: float
    scale: float
    estimate_s: float


@dataclass(frozen=True)
class LockHold:
    """How long one file keeps one table ACCESS EXCLUSIVE locked, at the live table size."""

    file: str
    table: str
    estimate_s: float
    from_statement: int
    rewrites: bool
    live_rows: int
    sample_rows: int

    def describe(self) -> str:
        how = "rewrites" if self.rewrites else "locks"
        return (f"{self.file} holds ACCESS EXCLUSIVE on {self.table} for ~{self.estimate_s:.2f} s "
                f"(from statement {self.from_statement}, which {how} it; {self.live_rows:,} live rows, timed on "
                f"a {self.sample_rows:,}-row sample on this server)")


@dataclass(frozen=True)
class LockEstimate:
    result: CheckResult
    statements: list[StatementLocks] = field(default_factory=list)
    holds: list[LockHold] = field(default_factory=list)


def mentioned_tables(sql_texts: Iterable[str], tables: Iterable[str]) -> list[str]:
    """The tables of `tables` whose name appears as a word in any of the SQL texts."""
    words = {w.lower() for text in sql_texts for w in re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", text)}
    return [t for t in tables if t.split(".")[-1].lower() in words]


def estimate_lock_holds(url: str, migrations: list[Migration], pg_dump: str, psql: str | None = None,
                        budget_s: float = 5.0, sample_rows: int = 20_000) -> LockEstimate:
    """Rehearse every up file on a sampled clone; fail when a file holds a table longer than `budget_s`."""
    texts = {m.up.name: m.up.read_text(encoding="utf-8") for m in migrations}
    with psycopg.connect(url, autocommit=True) as conn:
        tables = _user_tables(conn)
        touched = mentioned_tables(texts.values(), tables)
        live_rows = {t: _live_rows(conn, t) for t in touched}
    scratch_name = f"upgate_lockcheck_{uuid.uuid4().hex[:12]}"
    scratch = make_conninfo(url, dbname=scratch_name)
    _create_database(url, scratch_name)
    try:
        _clone_schema(url, scratch, pg_dump, psql)
        with psycopg.connect(url) as source, psycopg.connect(scratch, autocommit=True) as clone:
            sampled = {t: _copy_sample(source, clone, t, sample_rows) for t in touched}
            statements: list[StatementLocks] = []
            for name, text in texts.items():
                statements.extend(_rehearse_file(clone, name, text, live_rows, sampled))
    except psycopg.Error as exc:
        raise DryRunError(f"lock rehearsal on a sampled clone of {redact(url)} failed: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
    finally:
        _drop_database(url, scratch_name)
    holds = lock_holds(statements, live_rows, sampled)
    return LockEstimate(judge_holds(holds, statements, budget_s), statements, holds)


def lock_holds(statements: list[StatementLocks], live_rows: dict[str, int],
               sampled: dict[str, int]) -> list[LockHold]:
    """Per file and table: the estimates summed from the first statement that locks it to the file's end."""
    holds: list[LockHold] = []
    files = list(dict.fromkeys(s.file for s in statements))
    for name in files:
        mine = [s for s in statements if s.file == name]
        first: dict[str, int] = {}
        for index, s in enumerate(mine):
            for table in s.exclusive:
                first.setdefault(table, index)
        for table, index in first.items():
            tail = mine[index:]
            holds.append(LockHold(
                file=name, table=table, estimate_s=round(sum(s.estimate_s for s in tail), 3),
                from_statement=mine[index].number,
                rewrites=any(table in s.rewritten for s in tail),
                live_rows=live_rows.get(table, 0), sample_rows=sampled.get(table, 0)))
    return holds


def judge_holds(holds: list[LockHold], statements: list[StatementLocks], budget_s: float) -> CheckResult:
    over = [h for h in holds if h.estimate_s > budget_s]
    rewrites = [h for h in holds if h.rewrites and h.estimate_s <= budget_s]
    evidence = {"budget_s": budget_s, "holds": [asdict(h) for h in holds],
                "statements": [asdict(s) for s in statements]}
    warnings = tuple(f"{h.describe()}: within the lock budget {budget_s:g} s, but the app's reads and writes "
                     f"of {h.table} wait that long" for h in rewrites)
    if over:
        return CheckResult(False, "; ".join(f"{h.describe()} > lock budget {budget_s:g} s" for h in over)
                           + ": readers and writers of the table wait that long; rewrite it in batches or "
                             "raise migration_safety.lock_budget_s", evidence, warnings)
    longest = max(holds, key=lambda h: h.estimate_s, default=None)
    what = f"longest {longest.table} ~{longest.estimate_s:.2f} s in {longest.file}" if longest else "none taken"
    return CheckResult(True, f"ACCESS EXCLUSIVE holds within the lock budget {budget_s:g} s ({what})",
                       evidence, warnings)


def _rehearse_file(clone: psycopg.Connection, name: str, text: str, live_rows: dict[str, int],
                   sampled: dict[str, int]) -> list[StatementLocks]:
    found = []
    statements = [s for s in split_statements(text) if not _TRANSACTION_CONTROL.match(s)]
    for number, statement in enumerate(statements, start=1):
        with clone.transaction():
            before = _relations(clone)
            started = time.perf_counter()
            clone.execute(statement.encode())
            measured = time.perf_counter() - started
            exclusive = [r[0] for r in clone.execute(
                "SELECT DISTINCT CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END"
                " FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'"
                " AND l.granted AND c.relkind IN ('r', 'p', 'm') ORDER BY 1").fetchall()]
            after = _relations(clone)
        rewritten = sorted(t for t, (node, _) in before.items() if t in after and after[t][0] != node)
        scanned = sorted(t for t, (_, scans) in after.items() if t in before and scans > before[t][1])
        heavy = [t for t in exclusive if t in rewritten or t in scanned]
        scale = max((live_rows.get(t, 0) / max(sampled.get(t, 0), 1) for t in heavy), default=1.0)
        scale = max(scale, 1.0) if heavy else 1.0
        flat = " ".join(str(sqlparse.format(statement, strip_comments=True)).split())
        found.append(StatementLocks(
            file=name, number=number, excerpt=flat if len(flat) <= _EXCERPT else flat[:_EXCERPT] + " ...",
            exclusive=exclusive, rewritten=rewritten, scanned=scanned, measured_s=round(measured, 4),
            scale=round(scale, 2), estimate_s=round(measured * scale, 4)))
    return found


def _relations(conn: psycopg.Connection) -> dict[str, tuple[int, int]]:
    """table -> (relfilenode, sequential scans so far in this transaction)."""
    rows = conn.execute(
        "SELECT CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END,"
        " c.relfilenode, pg_stat_get_xact_numscans(c.oid)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg_toast%'").fetchall()
    return {name: (int(node), int(scans)) for name, node, scans in rows}


def _user_tables(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg_%' ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def _ident(table: str) -> sql.Composable:
    return sql.Identifier(*table.split(".", 1))


def _live_rows(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)", (table,)).fetchone()
    if row and row[0] is not None and row[0] >= 0:
        return int(row[0])
    counted = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_ident(table))).fetchone()
    return int(counted[0]) if counted else 0


def _copy_sample(source: psycopg.Connection, clone: psycopg.Connection, table: str, rows: int) -> int:
    """Copy up to `rows` rows of `table` into the clone (triggers and foreign keys off where allowed)."""
    with clone.transaction():
        # Not a superuser: foreign keys stay on; the copy may still succeed.
        with contextlib.suppress(psycopg.Error), clone.transaction():
            clone.execute("SET LOCAL session_replication_role = replica")
        out = sql.SQL("COPY (SELECT * FROM {} LIMIT {}) TO STDOUT (FORMAT binary)").format(
            _ident(table), sql.Literal(rows))
        into = sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(_ident(table))
        with source.cursor().copy(out) as reader, clone.cursor().copy(into) as writer:
            for chunk in reader:
                writer.write(chunk)
    clone.execute(sql.SQL("ANALYZE {}").format(_ident(table)))
    counted = clone.execute(sql.SQL("SELECT count(*) FROM {}").format(_ident(table))).fetchone()
    return int(counted[0]) if counted else 0


def describe_statements(statements: list[StatementLocks]) -> list[dict[str, Any]]:
    """The per-statement table printed in the pre-gate report."""
    return [{"statement": f"{s.file}#{s.number}", "sql": s.excerpt, "access_exclusive": s.exclusive,
             "rewrites": s.rewritten, "measured_s": s.measured_s, "scale": s.scale, "estimate_s": s.estimate_s}
            for s in statements]


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

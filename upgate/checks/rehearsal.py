"""The migration rehearsal: the plan run on one sampled clone, whatever tool runs it, watched and timed.

    >>> rehearsal = rehearse_migration(url, SqlMigrator(config.migrate), pg_dump, psql)    # doctest: +SKIP
    >>> rehearsal.result.summary
    'rehearsal of 2 units: up/down/up clean; 0 destructive changes; 1 warning'
    >>> judge_lock_holds(rehearsal, budget_s=5.0).summary                               # doctest: +SKIP
    >>> rehearsal.estimate_s        # the up leg's time at the live table sizes

One clone of the live database on the same server: its schema, up to `sample_rows` rows of every
sampled table, and the live sequence positions. Then:

    snapshot -> up -> snapshot (destructive preview) -> down, if every unit has one -> snapshot must
    equal the first -> up again -> snapshot must equal the first up.

While the first up runs, a watcher samples `pg_locks` on the clone every few milliseconds: which
tables the migration's sessions hold, and which in ACCESS EXCLUSIVE mode. A table the up leg rewrote
or read or wrote rows of is *data-touched*; time spent holding a data-touched table is scaled by live
rows / sampled rows, the rest (tool start-up, catalog changes) counts as measured. That gives the
lock-hold estimate per table and the time estimate of the whole up leg, for any migration tool.

The runner is anything with the `MigrationRunner` shape (upgate.steps.migrate's migrators): units
applied and reverted one by one against a database URL. The live database is only read.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

import psycopg
from psycopg import sql

from upgate.checks.migrations import scan_statements
from upgate.checks.result import CheckResult
from upgate.checks.schema import (
    DryRunError,
    SchemaSnapshot,
    clone_schema,
    create_scratch_database,
    destructive_changes,
    diff_schemas,
    drop_scratch_database,
    preserved_columns,
    same_server,
    snapshot_schema,
)
from upgate.checks.secrets import redact

_WATCH_INTERVAL_S = 0.002
_NAME = "CASE WHEN n.nspname = 'public' THEN c.relname ELSE n.nspname || '.' || c.relname END"
_USER_TABLES = (f"SELECT {_NAME}, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1")


class Unit(Protocol):
    """One thing a runner applies as a whole: its name, how it goes up, how (if at all) it goes down."""

    @property
    def name(self) -> str: ...

    @property
    def up(self) -> str: ...

    @property
    def down(self) -> str | None: ...


class MigrationRunner(Protocol):
    """What the rehearsal needs of a migration tool (upgate.steps.migrate.Migrator has this shape)."""

    kind: ClassVar[str]

    def units(self) -> Sequence[Unit]: ...

    def before(self, url: str) -> dict[str, Any]: ...

    # `unit` is one of units(): typed Any so that a runner may take its own Unit class.
    def apply(self, unit: Any, url: str, say: Callable[[str], None]) -> dict[str, Any]: ...

    def revert(self, unit: Any, url: str, recorded: dict[str, Any], say: Callable[[str], None]) -> None: ...

    def sql_texts(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class LockHold:
    """The longest ACCESS EXCLUSIVE hold of one table while one unit ran, measured and at live size."""

    unit: str
    table: str
    measured_s: float
    estimate_s: float
    data_touched: bool
    live_rows: int
    sample_rows: int
    seen: bool = True  # False: shorter than the watcher's sampling, bounded by two intervals

    def describe(self) -> str:
        how = "rewrites or reads it" if self.data_touched else "locks it"
        scale = f"{self.live_rows:,} live rows, timed on a {self.sample_rows:,}-row sample" if self.data_touched \
            else "catalog change, not scaled"
        return (f"{self.unit} holds ACCESS EXCLUSIVE on {self.table} for ~{self.estimate_s:.2f} s "
                f"(measured {self.measured_s * 1000:.0f} ms on the clone, which {how}; {scale})")


@dataclass(frozen=True)
class Timing:
    """How the up leg's time splits, and what it comes to at the live table sizes."""

    measured_s: float
    estimate_s: float
    per_unit: dict[str, dict[str, float]] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)  # data-touched table -> live / sample


@dataclass(frozen=True)
class Rehearsal:
    result: CheckResult
    original: SchemaSnapshot
    after_up: SchemaSnapshot | None
    destructive: list[str]
    warnings: list[str]
    preserved_columns: dict[str, list[str]]
    missing_down: list[str]
    timing: Timing | None
    holds: list[LockHold]
    sampled: dict[str, int]
    live_rows: dict[str, int]

    @property
    def estimate_s(self) -> float | None:
        return self.timing.estimate_s if self.timing else None

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.result.to_json(),
            "original": self.original.to_json(),
            "after_up": self.after_up.to_json() if self.after_up else None,
            "destructive": list(self.destructive),
            "warnings": list(self.warnings),
            "preserved_columns": {t: list(c) for t, c in self.preserved_columns.items()},
            "missing_down": list(self.missing_down),
            "timing": asdict(self.timing) if self.timing else None,
            "holds": [asdict(h) for h in self.holds],
            "sampled": dict(self.sampled),
            "live_rows": dict(self.live_rows),
        }


# --- the watcher --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockSample:
    t: float
    held: frozenset[str]
    exclusive: frozenset[str]


class LockWatcher:
    """Samples which tables other sessions of one database hold (and hold ACCESS EXCLUSIVE) until stopped."""

    def __init__(self, url: str, interval_s: float = _WATCH_INTERVAL_S) -> None:
        self.url = url
        self.interval_s = interval_s
        self.samples: list[LockSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()

    def __enter__(self) -> LockWatcher:
        self._thread = threading.Thread(target=self._watch, name="upgate-lock-watcher", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        if self._error is not None and exc[0] is None:
            raise DryRunError(f"the lock watcher failed: {self._error}")

    def _watch(self) -> None:
        query = (f"SELECT {_NAME}, l.mode = 'AccessExclusiveLock' FROM pg_locks l "
                 "JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace "
                 "WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid() "
                 "AND c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                 "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        try:
            with psycopg.connect(self.url, autocommit=True, application_name="upgate-lock-watcher") as conn:
                self._ready.set()
                while not self._stop.is_set():
                    rows = conn.execute(query, prepare=True).fetchall()
                    self.samples.append(LockSample(time.perf_counter(), frozenset(r[0] for r in rows),
                                                   frozenset(r[0] for r in rows if r[1])))
                    time.sleep(self.interval_s)
        except BaseException as exc:  # reported by __exit__
            self._error = exc
            self._ready.set()


# --- the rehearsal -----------------------------------------------------------------------------


def rehearse_migration(url: str, runner: MigrationRunner, pg_dump: str, psql: str | None = None,
                       allowed_destructive: Iterable[str] = (), sample_rows: int = 20_000,
                       sample_tables: Sequence[str] = (), schemas: Sequence[str] = ("public",),
                       say: Callable[[str], None] | None = None) -> Rehearsal:
    """Rehearse `runner`'s plan on one sampled clone of `url` (see the module docstring).

    `sample_tables`: tables whose rows are copied; empty: the tables the plan's SQL names when the
    runner knows its SQL, else every table. Raises DryRunError when the clone cannot be made.
    """
    progress = say or (lambda _m: None)
    allowed = list(allowed_destructive)
    texts = runner.sql_texts()
    warnings = [w for name, text in texts.items() for w in scan_statements(text, source=name)]
    with psycopg.connect(url, autocommit=True) as conn:
        original = snapshot_schema(conn, schemas)
        tables = [r[0] for r in conn.execute(_USER_TABLES).fetchall()]
        live_rows = {t: _live_rows(conn, t) for t in tables}
    if sample_tables:
        chosen = [t for t in tables if t in set(sample_tables) or t.split(".")[-1] in set(sample_tables)]
    elif texts:
        chosen = mentioned_tables(texts.values(), tables)
    else:
        chosen = tables
    scratch_name = f"upgate_rehearsal_{uuid.uuid4().hex[:12]}"
    scratch = same_server(url, scratch_name)
    create_scratch_database(url, scratch_name)
    try:
        clone_schema(url, scratch, pg_dump, psql)
        with psycopg.connect(url) as source, psycopg.connect(scratch, autocommit=True) as clone:
            sampled, notes = {}, []
            for table in chosen:
                copied = _copy_sample(source, clone, table, sample_rows)
                if copied is None:
                    notes.append(f"{table}: rows not sampled (foreign keys refuse a partial copy without "
                                 "superuser); its time is not scaled")
                else:
                    sampled[table] = copied
            _copy_sequence_positions(source, clone)
        progress(f"rehearsal clone {scratch_name}: schema and {sum(sampled.values()):,} sampled rows of "
                 f"{len(sampled)} table(s)")
        return _exercise(scratch, runner, original, allowed, warnings + notes, schemas, sampled, live_rows, progress)
    except psycopg.Error as exc:
        raise DryRunError(f"rehearsal on a sampled clone of {redact(url)} failed: {_first_line(exc)}") from exc
    finally:
        drop_scratch_database(url, scratch_name)


def _exercise(clone_url: str, runner: MigrationRunner, original: SchemaSnapshot, allowed: list[str],
              warnings: list[str], schemas: Sequence[str], sampled: dict[str, int], live_rows: dict[str, int],
              say: Callable[[str], None]) -> Rehearsal:
    units = list(runner.units())
    count = f"{len(units)} unit{'s' if len(units) != 1 else ''} ({runner.kind})"
    problems: list[str] = []
    missing = [u.name for u in units if u.down is None]
    evidence: dict[str, Any] = {"units": [u.name for u in units], "allowed_destructive": allowed,
                                "sampled": sampled, "missing_down": missing}

    def snapshot() -> SchemaSnapshot:
        with psycopg.connect(clone_url, autocommit=True) as conn:
            return snapshot_schema(conn, schemas)

    cloned = snapshot()
    clone_diff = diff_schemas(original, cloned)
    if not clone_diff.is_empty:
        evidence["clone_differences"] = clone_diff.to_json()

    def finish(after_up: SchemaSnapshot | None, destructive: list[str], preserved: dict[str, list[str]],
               timing: Timing | None = None, holds: list[LockHold] | None = None) -> Rehearsal:
        if problems:
            summary = f"rehearsal of {count} failed: " + "; ".join(problems)
        else:
            legs = ("nothing to apply" if not units else "up/down/up clean" if not missing else
                    f"up clean; no down for {', '.join(missing)}: its rollback is the restore of the backup")
            permitted = evidence.get("destructive_allowed", [])
            summary = (f"rehearsal of {count}: {legs}; {_destructive_phrase(permitted)}; "
                       f"{_plural(len(warnings), 'warning')}")
            if timing is not None:
                summary += f"; up took {timing.measured_s:.2f} s on the clone, ~{timing.estimate_s:.2f} s at live size"
        evidence.update(problems=problems, destructive=destructive, preserved_columns=preserved)
        result = CheckResult(ok=not problems, summary=summary, evidence=evidence, warnings=tuple(warnings))
        return Rehearsal(result, original, after_up, destructive, warnings, preserved, missing, timing,
                         holds or [], sampled, live_rows)

    # up, watched; each unit's data-touched tables from the statistics before and after it
    recorded: dict[str, dict[str, Any]] = {}
    windows: list[Window] = []
    stats = _table_stats(clone_url, settle=True)
    with LockWatcher(clone_url) as watcher:
        started = time.perf_counter()
        try:
            for unit in units:
                recorded[unit.name] = runner.before(clone_url)
                t0 = time.perf_counter()
                runner.apply(unit, clone_url, say)
                t1 = time.perf_counter()
                after = _table_stats(clone_url, settle=True)
                touched, rewritten = _data_touched(stats, after)
                windows.append(Window(unit.up, t0, t1, touched, rewritten))
                stats = after
        except Exception as exc:
            problems.append(f"up failed: {_first_line(exc)}")
            return finish(None, [], {})
        ended = time.perf_counter()
    after_up = snapshot()
    timing, holds = _measure(watcher.samples, watcher.interval_s, windows, started, ended, sampled, live_rows)
    evidence["up_changes"] = diff_schemas(original, after_up).to_json()
    changes = destructive_changes(original, after_up)
    blocked = destructive_changes(original, after_up, allowed)
    destructive = [name for name, _ in blocked]
    evidence["destructive_details"] = dict(changes)
    evidence["destructive_allowed"] = [name for name, _ in changes if name not in destructive]
    if blocked:
        names = ", ".join(f"{name} ({why})" for name, why in blocked)
        hint = ", ".join(f'"{name}"' for name, _ in blocked)
        problems.append(f"destructive change not allowed: {names}; if intended, add {hint} to migrate.allow_destructive")
    preserved = preserved_columns(original, after_up)
    if missing:
        return finish(after_up, destructive, preserved, timing, holds)

    try:
        for unit in reversed(units):
            runner.revert(unit, clone_url, recorded[unit.name], say)
    except Exception as exc:
        problems.append(f"down failed: {_first_line(exc)}")
        return finish(after_up, destructive, preserved, timing, holds)
    down_diff = diff_schemas(cloned, snapshot())
    if not down_diff.is_empty:
        evidence["down_leftovers"] = down_diff.to_json()
        problems.append(f"down does not restore the schema: {down_diff.describe()}")
        return finish(after_up, destructive, preserved, timing, holds)
    try:
        for unit in units:
            runner.apply(unit, clone_url, say)
    except Exception as exc:
        problems.append(f"up is not repeatable after down: {_first_line(exc)}")
        return finish(after_up, destructive, preserved, timing, holds)
    reup_diff = diff_schemas(after_up, snapshot())
    if not reup_diff.is_empty:
        evidence["reup_differences"] = reup_diff.to_json()
        problems.append(f"up is not repeatable after down: {reup_diff.describe()}")
    return finish(after_up, destructive, preserved, timing, holds)


@dataclass(frozen=True)
class Window:
    """When one unit ran during the up leg, and which tables' rows it rewrote or read or wrote."""

    unit: str
    t0: float
    t1: float
    touched: frozenset[str] | set[str]
    rewritten: frozenset[str] | set[str]


def _measure(samples: list[LockSample], interval_s: float, windows: list[Window], started: float, ended: float,
             sampled: dict[str, int], live_rows: dict[str, int]) -> tuple[Timing, list[LockHold]]:
    """The up leg's time and each table's longest ACCESS EXCLUSIVE hold per unit, measured and scaled.

    Each sample stands for the time until the next one. A slice of time is scaled by the largest
    live/sample ratio among the tables held then that the running unit touched; else it counts as measured.
    """
    ratio = {t: max(live_rows.get(t, 0) / n, 1.0) for t, n in sampled.items() if n}
    inside = [s for s in samples if started <= s.t <= ended]
    edges = [started, *[s.t for s in inside], ended]
    slices: list[tuple[float, float, LockSample | None]] = [(started, edges[1] - started, None)]
    slices += [(s.t, edges[i + 2] - s.t, s) for i, s in enumerate(inside)]

    def window_of(t: float) -> Window | None:
        return next((w for w in windows if w.t0 <= t <= w.t1), None)

    def scale(t: float, sample: LockSample | None) -> float:
        window = window_of(t)
        if sample is None or window is None:
            return 1.0
        return max((ratio.get(x, 1.0) for x in sample.held if x in window.touched), default=1.0)

    estimate = sum(dt * scale(t + dt / 2, s) for t, dt, s in slices)
    per_unit: dict[str, dict[str, float]] = {}
    holds: list[LockHold] = []
    for window in windows:
        mine = [(t, dt, s) for t, dt, s in slices if window.t0 <= t + dt / 2 <= window.t1]
        per_unit[window.unit] = {"measured_s": round(window.t1 - window.t0, 4),
                                 "estimate_s": round(sum(dt * scale(t + dt / 2, s) for t, dt, s in mine), 4)}
        chains: dict[str, list[list[tuple[float, float, LockSample]]]] = {}
        previous: LockSample | None = None
        for t, dt, s in mine:
            if s is None:
                continue
            for table in s.exclusive:
                runs = chains.setdefault(table, [])
                if runs and previous is not None and table in previous.exclusive:
                    runs[-1].append((t, dt, s))
                else:
                    runs.append([(t, dt, s)])
            previous = s
        for table, runs in chains.items():
            def scaled(run: list[tuple[float, float, LockSample]]) -> float:
                return sum(dt * scale(t + dt / 2, s) for t, dt, s in run)

            longest = max(runs, key=scaled)
            holds.append(LockHold(window.unit, table, round(sum(dt for _, dt, _ in longest), 4),
                                  round(scaled(longest), 4), table in window.touched, live_rows.get(table, 0),
                                  sampled.get(table, 0)))
        # A rewrite always holds ACCESS EXCLUSIVE; one shorter than the sampling held it under two intervals.
        for table in sorted(set(window.rewritten) - set(chains)):
            bound = 2 * interval_s
            holds.append(LockHold(window.unit, table, bound, round(bound * ratio.get(table, 1.0), 4), True,
                                  live_rows.get(table, 0), sampled.get(table, 0), seen=False))
    touched_ratio = {t: round(ratio.get(t, 1.0), 2) for w in windows for t in w.touched if t in ratio}
    return Timing(round(ended - started, 4), round(estimate, 4), per_unit, touched_ratio), holds


def _table_stats(url: str, settle: bool = False) -> dict[str, tuple[int, int]]:
    """table -> (relfilenode, rows read or written so far), from the catalog and the statistics views."""
    with psycopg.connect(url, autocommit=True) as conn:
        if settle:  # sessions flush their statistics when they end: wait for the migration's to end
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline and conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
                    "AND application_name <> 'upgate-lock-watcher'").fetchone() != (0,):
                time.sleep(0.02)
            conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = conn.execute(
            f"SELECT {_NAME}, c.relfilenode, coalesce(s.seq_tup_read, 0) + coalesce(s.idx_tup_fetch, 0) "
            "+ coalesce(s.n_tup_ins, 0) + coalesce(s.n_tup_upd, 0) + coalesce(s.n_tup_del, 0) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
            "WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_%'").fetchall()
    return {name: (int(node), int(tuples)) for name, node, tuples in rows}


def _data_touched(before: dict[str, tuple[int, int]],
                  after: dict[str, tuple[int, int]]) -> tuple[set[str], set[str]]:
    """(tables whose rows the up leg rewrote, read or wrote; the rewritten ones: a new relfilenode)."""
    touched: set[str] = set()
    rewritten: set[str] = set()
    for table, (node, tuples) in after.items():
        if table not in before:
            continue
        old_node, old_tuples = before[table]
        if node != old_node:
            touched.add(table)
            rewritten.add(table)
        elif tuples > old_tuples:
            touched.add(table)
    return touched, rewritten


def judge_lock_holds(rehearsal: Rehearsal, budget_s: float) -> CheckResult:
    """Fail when a unit is estimated to hold a table ACCESS EXCLUSIVE longer than `budget_s` at live size."""
    holds = rehearsal.holds
    over = [h for h in holds if h.estimate_s > budget_s]
    heavy = [h for h in holds if h.data_touched and h.estimate_s <= budget_s]
    evidence = {"budget_s": budget_s, "holds": [asdict(h) for h in holds],
                "timing": asdict(rehearsal.timing) if rehearsal.timing else None, "sampled": rehearsal.sampled}
    warnings = tuple(f"{h.describe()}: within the lock budget {budget_s:g} s, but the app's reads and writes "
                     f"of {h.table} wait that long" for h in heavy)
    if over:
        return CheckResult(False, "; ".join(f"{h.describe()} > lock budget {budget_s:g} s" for h in over)
                           + ": readers and writers of the table wait that long; rewrite it in batches or "
                             "raise migration_safety.lock_budget_s", evidence, warnings)
    longest = max(holds, key=lambda h: h.estimate_s, default=None)
    what = f"longest {longest.table} ~{longest.estimate_s:.2f} s in {longest.unit}" if longest else "none taken"
    return CheckResult(True, f"ACCESS EXCLUSIVE holds within the lock budget {budget_s:g} s ({what})",
                       evidence, warnings)


# --- the clone's rows --------------------------------------------------------------------------------


def mentioned_tables(sql_texts: Iterable[str], tables: Iterable[str]) -> list[str]:
    """The tables of `tables` whose name appears as a word in any of the SQL texts."""
    words = {w.lower() for text in sql_texts for w in re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", text)}
    return [t for t in tables if t.split(".")[-1].lower() in words]


def _ident(table: str) -> sql.Composable:
    return sql.Identifier(*table.split(".", 1))


def _live_rows(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
                       (_ident(table).as_string(conn),)).fetchone()
    if row and row[0] is not None and row[0] >= 0:
        return int(row[0])
    counted = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_ident(table))).fetchone()
    return int(counted[0]) if counted else 0


def _copy_sample(source: psycopg.Connection, clone: psycopg.Connection, table: str, rows: int) -> int | None:
    """Copy up to `rows` rows of `table` into the clone; None when the clone's constraints refuse them."""
    try:
        with clone.transaction():
            # Foreign keys and triggers off where the role may (superuser); else a partial copy may be refused.
            with contextlib.suppress(psycopg.Error), clone.transaction():
                clone.execute("SET LOCAL session_replication_role = replica")
            out = sql.SQL("COPY (SELECT * FROM {} LIMIT {}) TO STDOUT (FORMAT binary)").format(
                _ident(table), sql.Literal(rows))
            into = sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(_ident(table))
            with source.cursor().copy(out) as reader, clone.cursor().copy(into) as writer:
                for chunk in reader:
                    writer.write(chunk)
    except psycopg.errors.IntegrityError:
        source.rollback()
        return None
    source.rollback()
    clone.execute(sql.SQL("ANALYZE {}").format(_ident(table)))
    counted = clone.execute(sql.SQL("SELECT count(*) FROM {}").format(_ident(table))).fetchone()
    return int(counted[0]) if counted else 0


def _copy_sequence_positions(source: psycopg.Connection, clone: psycopg.Connection) -> None:
    """Set the clone's sequences where the live ones are, so rows a migration inserts do not collide."""
    rows = source.execute("SELECT schemaname, sequencename, last_value FROM pg_sequences "
                          "WHERE last_value IS NOT NULL").fetchall()
    source.rollback()
    for schema, name, last in rows:
        with contextlib.suppress(psycopg.Error):
            clone.execute("SELECT setval(%s, %s, true)", (sql.Identifier(schema, name).as_string(clone), last))


def _destructive_phrase(permitted: list[str]) -> str:
    if not permitted:
        return "0 destructive changes"
    return f"{_plural(len(permitted), 'destructive change')} (allowed: {', '.join(permitted)})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _first_line(exc: BaseException) -> str:
    """The error in one line: its first line, and for a tool's multi-line output its last lines too."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) <= 1:
        return lines[0]
    return f"{lines[0]} ... {' | '.join(lines[-3:])}"

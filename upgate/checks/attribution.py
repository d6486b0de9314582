"""Whose is each row change since the baseline: the upgrade's, live traffic's, or unknown; and what did the
upgrade do to each row live traffic also wrote.

    >>> who = Classifier(records, upgrade_apps={"upgate-migrate"})               # doctest: +SKIP
    >>> events = table_events(stream, "public.pgbench_accounts", ["aid"], who)   # doctest: +SKIP
    >>> verdict = judge_live(url, baseline, diff_table(url, baseline), events, fetch=rows_at_baseline)
    >>> verdict.result.summary
    'pgbench_accounts: 100000 rows, 0 lost, 0 changed, 0 added (attributed to live traffic: 617 changed)'

A transaction is the upgrade's when its session's application_name is one of the upgrade's (upgate's own
SQL sessions and tools run with PGAPPNAME=upgate-migrate), live traffic's when it is any other name, and
*unknown* when nothing recorded it (a session that bypassed triggers): unknown changes are judged like the
upgrade's, never counted as live traffic. upgate's own repair and replay sessions form a fourth class.

A row only live traffic changed is explained. A row only the upgrade changed is judged as before: against
the baseline. A row both changed is replayed column by column: what live traffic wrote stands; a column
the upgrade changed and live traffic did not write again is damage (its value before the upgrade is the
repair); a column live traffic wrote again after the upgrade had changed it is *contested*: the new value
may derive from the damaged one, and no generic repair can tell.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from upgate.checks.changes import DELETE, INSERT, TRUNCATE, UPDATE, Transaction
from upgate.checks.integrity import (
    HASHED,
    INTEGER,
    ROWS,
    Damage,
    Fingerprint,
    judge,
    key_hashes,
    name_damage,
    pin_settings,
    text_row_hashes,
)
from upgate.checks.result import CheckResult

LIVE, UPGRADE, UNKNOWN, UPGATE = "live", "upgrade", "unknown", "upgate"
RESTORE = "restore"
#: application_name of upgate's own writes that are neither the upgrade nor live traffic.
UPGATE_APPS = frozenset({"upgate-repair", "upgate-replay"})

Key = tuple[str | None, ...]
Row = dict[str, str | None]


# ----------------------------------------------------------------------------------------- classes


@dataclass(frozen=True)
class BaselineSnapshot:
    """The baseline snapshot's transaction bounds (`pg_current_snapshot()`, 64-bit ids): which committed
    transactions it already shows."""

    xmin: int
    xmax: int
    xip: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, text: str) -> BaselineSnapshot:
        xmin, xmax, xip = str(text).split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def widen(self, xid32: int) -> int:
        """The 64-bit id of a 32-bit transaction id seen near this snapshot."""
        full = (self.xmax & ~0xFFFFFFFF) | (xid32 & 0xFFFFFFFF)
        if full > self.xmax + (1 << 31):
            full -= 1 << 32
        elif full < self.xmax - (1 << 31):
            full += 1 << 32
        return full

    def shows(self, xid32: int) -> bool:
        """Whether a transaction that committed is already part of the baseline."""
        full = self.widen(xid32)
        return full < self.xmin or (full < self.xmax and full not in self.xip)

    def __str__(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(map(str, sorted(self.xip)))}"


@dataclass(frozen=True)
class XactRecord:
    """What the statement trigger recorded about one transaction that wrote a gated table."""

    xid: int  # 64-bit
    application: str
    #: Tables on which it ran a statement the attribution cannot see row by row (see upgate/core/live.py).
    blind: tuple[str, ...] = ()


@dataclass
class Classifier:
    """Transaction id (32 bits, as the WAL has it) -> live / upgrade / unknown / upgate."""

    records: Mapping[int, XactRecord]
    upgrade_apps: frozenset[str] = frozenset({"upgate-migrate"})

    def __post_init__(self) -> None:
        self.by_xid32 = {xid & 0xFFFFFFFF: r for xid, r in self.records.items()}
        self.upgrade_apps = frozenset(self.upgrade_apps)

    def classify(self, xid32: int) -> str:
        record = self.by_xid32.get(xid32 & 0xFFFFFFFF)
        if record is None:
            return UNKNOWN
        if record.application in UPGATE_APPS:
            return UPGATE
        return UPGRADE if record.application in self.upgrade_apps else LIVE

    def application(self, xid32: int) -> str | None:
        record = self.by_xid32.get(xid32 & 0xFFFFFFFF)
        return record.application if record else None

    def blind(self, table: str, classes: Iterable[str] = (LIVE,)) -> list[int]:
        """Transactions of these classes that ran a statement on table the attribution cannot see."""
        wanted = set(classes)
        return [r.xid for r in self.records.values() if table in r.blind and self.classify(r.xid) in wanted]


# ------------------------------------------------------------------------------------------ events


@dataclass(frozen=True)
class Event:
    """One change to one row, as replayed: who made it, and the row after it (None: the row is gone)."""

    seq: int
    cls: str
    op: str
    values: Row | None = None  # the columns sent (an Update leaves unchanged TOASTed values out)
    xid: int = 0
    at: datetime | None = None


@dataclass
class TableEvents:
    """Every change to one table since the baseline, by key, in commit order."""

    table: str  # schema.name
    key: tuple[str, ...]
    by_key: dict[Key, list[Event]] = field(default_factory=dict)
    #: Truncates and restores: they touch every row.
    sweeps: list[Event] = field(default_factory=list)
    #: Keyless tables: the rows inserted, by class.
    inserted: dict[str, list[Row]] = field(default_factory=dict)
    #: Changes whose key could not be read (a Delete that carries another key), by class.
    unkeyed: Counter[str] = field(default_factory=Counter)
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    transactions: dict[str, set[int]] = field(default_factory=dict)
    first_at: datetime | None = None
    last_at: datetime | None = None
    seq: int = 0  # the last sequence number given (to extend these events with a later part of the stream)
    #: The keys the last part of the stream read into these events touched.
    touched: set[Key] = field(default_factory=set)

    def classes_of(self, key: Key) -> set[str]:
        return {e.cls for e in self.by_key.get(key, ())}

    def history(self, key: Key) -> list[Event]:
        """The key's own events and every sweep, in order."""
        own = self.by_key.get(key, [])
        if not self.sweeps:
            return own
        return sorted([*own, *self.sweeps], key=lambda e: e.seq)

    def changes(self, cls: str) -> int:
        return sum(self.counts.get(cls, Counter()).values())


#: A stream item: a committed transaction, or the mark of a restore (every row became its expected value).
StreamItem = Transaction | str


def table_events(stream: Iterable[StreamItem], table: str, key: Sequence[str], who: Classifier,
                 shown: BaselineSnapshot | None = None, into: TableEvents | None = None) -> TableEvents:
    """The changes `stream` holds for `table` (schema.name) after the baseline `shown` already holds, by key.

    An Update that changes the key is a Delete of the old key and an Insert of the new one. `into`: events
    of the stream before this part, extended in place (the keys this part touches: `TableEvents.touched`).
    """
    out = into if into is not None else TableEvents(table, tuple(key))
    out.touched = set()
    seq = out.seq
    for item in stream:
        seq += 1
        if isinstance(item, str):
            if item == RESTORE:
                out.sweeps.append(Event(seq, RESTORE, RESTORE))
            continue
        if shown is not None and shown.shows(item.xid):
            continue
        cls = who.classify(item.xid)
        for change in item.changes:
            if change.table != table and table not in change.tables:
                continue
            seq += 1
            out.counts.setdefault(cls, Counter())[change.op] += 1
            out.transactions.setdefault(cls, set()).add(item.xid)
            if item.committed_at is not None:
                out.first_at = out.first_at or item.committed_at
                out.last_at = item.committed_at
            if change.op == TRUNCATE:
                out.sweeps.append(Event(seq, cls, TRUNCATE, None, item.xid, item.committed_at))
                continue
            if not key:
                if change.op == INSERT and change.new is not None:
                    out.inserted.setdefault(cls, []).append(change.new)
                else:
                    out.unkeyed[cls] += 1
                continue
            after = change.key(key) if change.op != DELETE else None
            before = change.key_before(key) if change.op != INSERT else None
            if change.op == DELETE:
                before = change.key(key)
            if change.op == UPDATE and before is not None and after is not None and before != after:
                out.by_key.setdefault(before, []).append(Event(seq, cls, DELETE, None, item.xid, item.committed_at))
                out.by_key.setdefault(after, []).append(Event(seq, cls, INSERT, _full(change.new), item.xid,
                                                              item.committed_at))
                out.touched |= {before, after}
                continue
            target = after if change.op != DELETE else before
            if target is None:
                out.unkeyed[cls] += 1
                continue
            values = None if change.op == DELETE else dict(change.new or {})
            out.by_key.setdefault(target, []).append(Event(seq, cls, change.op, values, item.xid, item.committed_at))
            out.touched.add(target)
    out.seq = seq
    return out


def _full(values: Row | None) -> Row:
    return dict(values or {})


# ------------------------------------------------------------------------------------ replaying keys


#: A baseline row that could not be read (the table was rewritten, or no baseline source is left).
UNREADABLE: Row = {"\0unreadable": None}


@dataclass
class KeyOutcome:
    """What the upgrade left of one row both it and live traffic wrote."""

    state: str  # ok | lost | changed | added | contested | unverifiable
    #: changed: the value each damaged column should have; lost: the whole row to put back.
    expected: Row | None = None
    columns: tuple[str, ...] = ()
    contested: tuple[str, ...] = ()


@dataclass
class KeyState:
    """One row replayed: as it is (`actual`), as it should be had only live traffic written (`expected`)."""

    expected: Row | None
    actual: Row | None
    contested: set[str] = field(default_factory=set)
    unknown: bool = False


def replay_states(events: Sequence[Event], baseline: Row | None, preserved: Sequence[str] = ()) -> KeyState:
    """Replay one row's events from its baseline (None: no row; UNREADABLE: not known).

    A live change sets, in both states, the columns it wrote with a new value (a column it sent unchanged
    was carried, not written); the upgrade's changes set `actual` only; a restore sets `actual` to
    `expected`. A preserved column live traffic wrote while `actual` and `expected` differed is contested.
    """
    unknown = baseline is UNREADABLE
    expected: Row | None = None if unknown or baseline is None else dict(baseline)
    actual: Row | None = None if expected is None else dict(expected)
    contested: set[str] = set()
    for event in events:
        if event.cls == RESTORE:
            actual = None if expected is None else dict(expected)
            continue
        new: Row | None = None if event.op in (DELETE, TRUNCATE) else {**(actual or {}), **(event.values or {})}
        if event.cls == LIVE:
            if new is None:
                expected, unknown = None, False
            elif event.op == INSERT or expected is None or actual is None:
                expected, unknown = dict(new), False
            else:
                for column, value in (event.values or {}).items():
                    if value != actual.get(column):  # live traffic wrote this column
                        if column in preserved and expected.get(column) != actual.get(column):
                            contested.add(column)
                        expected[column] = value
        actual = new
    return KeyState(expected, actual, contested, unknown)


def replay_key(events: Sequence[Event], baseline: Row | None, preserved: Sequence[str]) -> KeyOutcome:
    """What the upgrade left of one row: `replay_states`, then the preserved columns of both must agree."""
    state = replay_states(events, baseline, preserved)
    expected, actual = state.expected, state.actual
    if state.unknown:
        return KeyOutcome("unverifiable")
    if expected is None:
        return KeyOutcome("ok") if actual is None else KeyOutcome("added")
    if actual is None:
        return KeyOutcome("lost", expected=dict(expected), contested=tuple(sorted(state.contested)))
    differ = tuple(c for c in preserved if expected.get(c) != actual.get(c))
    if state.contested:
        return KeyOutcome("contested", {c: expected.get(c) for c in differ}, differ, tuple(sorted(state.contested)))
    if differ:
        return KeyOutcome("changed", {c: expected.get(c) for c in differ}, differ)
    return KeyOutcome("ok")


# ------------------------------------------------------------------------------------- baseline rows


def read_rows(conn: psycopg.Connection[Any], table: str, key: Sequence[str], keys: Sequence[Key],
              columns: Sequence[str] | None = None, lock: bool = False) -> dict[Key, Row]:
    """The rows of `table` with these keys (text tuples), every column (or `columns`) as text, by key.

    Runs in whatever transaction `conn` is in: import a snapshot first to read the baseline; `lock` takes
    them FOR UPDATE (no other session changes them until that transaction ends).
    """
    wanted = [k for k in dict.fromkeys(keys) if all(v is not None for v in k)]
    if not wanted or not key:
        return {}
    row = conn.execute("SELECT %s::regclass::text, %s::regclass::oid", (table, table)).fetchone()
    assert row is not None
    relation, oid = row
    described = conn.execute("SELECT attname, format_type(atttypid, atttypmod), atttypid FROM pg_attribute "
                             "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (oid,)).fetchall()
    types = {name: kind for name, kind, _ in described}
    shown = list(columns) if columns is not None else list(types)
    shown = [c for c in shown if c in types]
    keys_in = [sql.Identifier(f"k{i}") for i in range(len(key))]
    query = sql.SQL("SELECT {keys}, {values} FROM {table} AS t JOIN unnest({arrays}) AS u({names}) ON {join}{lock}").format(
        lock=sql.SQL(" FOR UPDATE OF t" if lock else ""),
        keys=sql.SQL(", ").join(sql.SQL("u.{}").format(k) for k in keys_in),
        values=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in shown) if shown
        else sql.SQL("NULL"),
        table=sql.SQL(relation),
        arrays=sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in key),
        names=sql.SQL(", ").join(keys_in),
        join=sql.SQL(" AND ").join(sql.SQL("t.{} = u.{}::{}").format(sql.Identifier(c), k, sql.SQL(types[c]))
                                   for c, k in zip(key, keys_in, strict=True)),
    )
    found: dict[Key, Row] = {}
    columns_of = [[k[i] for k in wanted] for i in range(len(key))]
    for values in text_cursor(conn, [t for _, _, t in described]).execute(query, columns_of).fetchall():
        found[tuple(values[: len(key)])] = dict(zip(shown, values[len(key):], strict=False))
    return found


def text_cursor(conn: psycopg.Connection[Any], type_oids: Iterable[int]) -> psycopg.Cursor[Any]:
    """A cursor that returns values of these types as the server prints them (their output function, as
    logical decoding sends them: char(n) keeps its padding, which a cast to text would trim)."""
    from psycopg.types.string import TextLoader

    cursor = conn.cursor()
    for oid in set(type_oids):
        cursor.adapters.register_loader(oid, TextLoader)
    return cursor


def rows_at_snapshot(url: str, snapshot: str, timezone: str | None = None) -> Callable[..., dict[Key, Row]]:
    """`read_rows` as the exported snapshot shows the table (the baseline, while its exporter holds it)."""

    def fetch(table: str, key: Sequence[str], keys: Sequence[Key], columns: Sequence[str] | None = None
              ) -> dict[Key, Row]:
        with psycopg.connect(url, autocommit=True, application_name="upgate-live") as conn:
            pin_settings(conn, timezone)
            conn.autocommit = False
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            try:
                return read_rows(conn, table, key, keys, columns)
            finally:
                conn.rollback()

    return fetch


# --------------------------------------------------------------------------------------- judgement


@dataclass
class LiveVerdict:
    """The integrity verdict on the upgrade's changes only, and what a repair needs."""

    result: CheckResult
    damage: Damage  # the upgrade's (lost/changed/added keys in the fingerprint's key space)
    #: Per damaged key (JSON text of the key): the values to put back; "row" for a whole row to insert.
    repair: dict[str, dict[str, Any]]
    live: dict[str, Any]  # counts for the report


def _key_space(url: str, baseline: Fingerprint, keys: list[Key]) -> np.ndarray:
    """Event keys (text tuples) in the fingerprint's key space: the integer, or the key hash."""
    if not keys:
        return np.empty(0, dtype=np.int64)
    if baseline.key_kind == INTEGER:
        return np.array([int(k[0]) if k[0] is not None else 0 for k in keys], dtype=np.int64)
    return key_hashes(url, baseline, keys)


def judge_live(
    url: str,
    baseline: Fingerprint,
    raw: Damage,
    events: TableEvents,
    who: Classifier,
    fetch: Callable[..., dict[Key, Row]] | None = None,
    allow_added: bool = True,
    first: int = 20,
) -> LiveVerdict:
    """Judge `raw` (the table now against its baseline) with every change since the baseline attributed.

    `fetch(table, key, keys, columns)` reads baseline rows (`rows_at_snapshot`); without it a row both the
    upgrade and live traffic wrote cannot be checked ("unverifiable", failing).
    """
    table = baseline.table
    attributed = {"lost": 0, "changed": 0, "added": 0}
    repair: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    contested_keys: list[Any] = []
    unverifiable: list[Any] = []
    unattributable = 0
    kept: dict[str, list[np.ndarray]] = {"lost": [], "changed": [], "added": []}

    if baseline.key_kind == ROWS:
        live_rows = events.inserted.get(LIVE, [])
        live_hashes = np.sort(text_row_hashes(url, baseline, live_rows).view(np.int64)) if live_rows else \
            np.empty(0, np.int64)
        added = _minus_multiset(np.sort(raw.added), live_hashes)
        attributed["added"] = int(raw.added.size - added.size)
        kept["added"].append(added)
        lost = raw.lost
        if lost.size and any(e.cls == LIVE and e.op == TRUNCATE for e in events.sweeps):
            attributed["lost"] += int(lost.size)
            lost = np.empty(0, np.int64)
        blind = who.blind(events.table) + ([0] if events.unkeyed.get(LIVE) else [])
        if lost.size and blind:
            unattributable = int(lost.size)
            notes.append(f"live traffic also updated or deleted rows of this keyless table ({len(blind)} "
                         "transactions), which logical decoding cannot show row by row: the lost rows cannot be "
                         "attributed")
        kept["lost"].append(lost)
    else:
        keys = list(events.by_key)
        space = _key_space(url, baseline, keys)
        live_mask = np.array([LIVE in events.classes_of(k) for k in keys], dtype=bool)
        other_mask = np.array([bool(events.classes_of(k) - {LIVE}) for k in keys], dtype=bool)
        live_only = np.unique(space[live_mask & ~other_mask]) if keys else np.empty(0, np.int64)
        mixed_index = np.flatnonzero(live_mask & other_mask) if keys else np.empty(0, np.int64)
        mixed = np.unique(space[mixed_index]) if keys else np.empty(0, np.int64)
        live_truncated = any(e.cls == LIVE and e.op == TRUNCATE for e in events.sweeps)
        others_anywhere = np.unique(space[other_mask]) if keys else np.empty(0, np.int64)
        unkeyed_live = events.unkeyed.get(LIVE, 0)
        for kind in ("lost", "changed", "added"):
            values: np.ndarray = getattr(raw, kind)
            explained = np.isin(values, live_only)
            if kind == "lost" and live_truncated:
                explained |= ~np.isin(values, others_anywhere)
            attributed[kind] += int(np.count_nonzero(explained & ~np.isin(values, mixed)))
            rest = values[~explained & ~np.isin(values, mixed)]
            if kind == "lost" and unkeyed_live and rest.size:
                unattributable += int(rest.size)
            kept[kind].append(rest)
        if unattributable:
            notes.append(f"live traffic deleted {unkeyed_live} rows by another key than {list(baseline.key_columns)}"
                         ": lost rows cannot be attributed")
        # Rows both wrote: replay them from their baseline.
        if mixed_index.size:
            mixed_keys = [keys[i] for i in mixed_index]
            mixed_space = space[mixed_index]
            in_baseline = np.isin(mixed_space, baseline.keys) if baseline.key_kind != ROWS else mixed_space
            wanted = [k for k, present in zip(mixed_keys, in_baseline, strict=True) if present]
            rows: dict[Key, Row] = {}
            readable = fetch is not None
            if fetch is not None and wanted:
                try:
                    rows = fetch(table, list(events.key), wanted)
                except psycopg.Error as exc:
                    readable = False
                    notes.append(f"baseline rows could not be read: {str(exc).strip().splitlines()[0]}")
            raw_sets = {kind: getattr(raw, kind) for kind in ("lost", "changed", "added")}
            for k, value, present in zip(mixed_keys, mixed_space, in_baseline, strict=True):
                base: Row | None
                if not present:
                    base = None
                elif readable and k in rows:
                    base = rows[k]
                else:
                    base = UNREADABLE
                outcome = replay_key(events.history(k), base, baseline.columns)
                shown = _key_label(k)
                if outcome.state == "ok":
                    for kind, values in raw_sets.items():
                        if np.isin(value, values):
                            attributed[kind] += 1
                    continue
                label = "changed" if outcome.state in ("changed", "contested", "unverifiable") else outcome.state
                kept[label].append(np.array([value], dtype=np.int64))
                if outcome.state == "contested":
                    contested_keys.append(shown)
                elif outcome.state == "unverifiable":
                    unverifiable.append(shown)
                elif outcome.state == "lost":
                    repair[_key_json(k)] = {"row": outcome.expected}
                elif outcome.state == "changed":
                    repair[_key_json(k)] = {"columns": outcome.expected}
    lost, changed, added = (np.sort(np.concatenate(kept[k])) if kept[k] else np.empty(0, np.int64)
                            for k in ("lost", "changed", "added"))
    damage = Damage(table, raw.key_kind, lost, changed, added, raw.baseline_count, raw.current_count, attributed,
                    raw.elapsed_s)
    names = name_damage(url, baseline, damage, first)
    result = judge(baseline, damage, allow_added=allow_added, first=first, names=names, attributed_to="live traffic")
    summary = result.summary
    if contested_keys:
        summary += (f"; {len(contested_keys)} rows the upgrade changed were written again by live traffic "
                    f"afterwards ({', '.join(map(str, contested_keys[:5]))}): their new values may derive from "
                    "the damaged ones")
    if unverifiable:
        summary += (f"; {len(unverifiable)} rows both the upgrade and live traffic wrote cannot be checked: their "
                    f"baseline cannot be read ({', '.join(map(str, unverifiable[:5]))})")
    if unattributable:
        summary += f"; {unattributable} lost rows cannot be attributed ({notes[-1]})"
    live = live_counts(events)
    evidence = {**result.evidence, "live": live, "contested": {"count": len(contested_keys),
                                                               "first": contested_keys[:first]},
                "unverifiable": {"count": len(unverifiable), "first": unverifiable[:first]},
                "unattributable": unattributable, "notes": notes}
    ok = result.ok and not unattributable
    return LiveVerdict(CheckResult(ok=ok, summary=summary, evidence=evidence, warnings=result.warnings), damage,
                       repair, live)


def live_counts(events: TableEvents) -> dict[str, Any]:
    """Changes and transactions by class, for the report."""
    return {
        cls: {"transactions": len(events.transactions.get(cls, ())), "changes": events.changes(cls),
              "by_op": dict(events.counts.get(cls, Counter()))}
        for cls in (LIVE, UPGRADE, UNKNOWN, UPGATE) if events.transactions.get(cls)
    }


def _minus_multiset(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted a less one copy per element of sorted b."""
    if not a.size or not b.size:
        return a
    rank = np.arange(a.size) - np.searchsorted(a, a, "left")
    have = np.searchsorted(b, a, "right") - np.searchsorted(b, a, "left")
    return a[rank >= have]


def _key_label(key: Key) -> Any:
    if len(key) == 1:
        value = key[0]
        return int(value) if value is not None and value.lstrip("-").isdigit() else value
    return list(key)


def _key_json(key: Key) -> str:
    import json

    return json.dumps(list(key))


def key_from_json(text: str) -> Key:
    import json

    return tuple(json.loads(text))


# ------------------------------------------------------------------------------------ xmin fallback


def judge_by_xmin(
    url: str,
    baseline: Fingerprint,
    raw: Damage,
    who: Classifier,
    allow_added: bool = True,
    first: int = 20,
    qualified: str | None = None,
) -> LiveVerdict:
    """Without logical decoding: a changed or added row is live traffic's when its current version was written
    by a live transaction (its xmin). Deletions leave no row to ask: a lost row is the upgrade's unless live
    traffic deleted rows of the table too, and then it cannot be attributed (failing, said so). A row the
    upgrade damaged and live traffic wrote again afterwards counts as live traffic's: only logical decoding
    sees it."""
    attributed = {"lost": 0, "changed": 0, "added": 0}
    kept: dict[str, np.ndarray] = {"lost": raw.lost}
    writers = _xmin_of(url, baseline, np.concatenate([raw.changed, raw.added]))
    for kind in ("changed", "added"):
        values: np.ndarray = getattr(raw, kind)
        live = np.array([who.classify(writers.get(int(v), -1)) == LIVE if int(v) in writers else False
                         for v in values], dtype=bool)
        attributed[kind] = int(np.count_nonzero(live))
        kept[kind] = values[~live]
    blind = who.blind(qualified or baseline.table)  # schema.name, as the trigger records it
    notes = []
    unattributable = 0
    if raw.lost.size and blind:
        unattributable = int(raw.lost.size)
        notes.append(f"live traffic deleted rows too ({len(blind)} transactions); without logical decoding "
                     "(wal_level = logical) a deleted row cannot be attributed")
    damage = Damage(baseline.table, raw.key_kind, kept["lost"], kept["changed"], kept["added"],
                    raw.baseline_count, raw.current_count, attributed, raw.elapsed_s)
    result = judge(baseline, damage, allow_added=allow_added, first=first, names=name_damage(url, baseline, damage,
                                                                                            first),
                   attributed_to="live traffic (by xmin)")
    summary = result.summary + (f"; {unattributable} lost rows cannot be attributed: {notes[0]}" if notes else "")
    evidence = {**result.evidence, "attribution": "xmin", "unattributable": unattributable, "notes": notes}
    return LiveVerdict(CheckResult(ok=result.ok and not unattributable, summary=summary, evidence=evidence),
                       damage, {}, {})


def _xmin_of(url: str, baseline: Fingerprint, keys: np.ndarray) -> dict[int, int]:
    """{key (fingerprint space): xmin of the row now} for keyed tables; for keyless tables by row hash."""
    if not keys.size:
        return {}
    from upgate.checks.integrity import _scan_plan  # the same key and row expressions as the scan

    wanted = [int(v) for v in np.unique(keys)]
    with _scan_plan(url, baseline.table, baseline.columns, baseline.key_columns, 1, baseline.types,
                    baseline.key_seed, baseline.timezone, baseline.key_kind) as plan:
        expr = plan.row_hash if plan.kind == ROWS else plan.key_expr
        found: dict[int, int] = {}
        for relation in dict.fromkeys(r for r, _ in plan.chunks):
            query = sql.SQL("SELECT k, x FROM (SELECT {} AS k, t.xmin::text::bigint AS x FROM {} AS t) AS s "
                            "WHERE k = ANY(%s)").format(expr, sql.SQL(relation))
            for key, xmin in plan.leader.execute(query, (wanted if plan.kind != ROWS else
                                                         [int(np.int64(np.uint64(w & 0xFFFFFFFFFFFFFFFF)))
                                                          for w in wanted],)):
                found[int(key)] = int(xmin)
        return found


__all__ = ["HASHED", "INTEGER", "ROWS", "BaselineSnapshot", "Classifier", "Event", "KeyOutcome", "LiveVerdict",
           "TableEvents", "XactRecord", "judge_by_xmin", "judge_live", "read_rows", "replay_key", "rows_at_snapshot",
           "table_events"]

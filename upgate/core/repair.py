"""Surgical repair (the rows an upgrade damaged, back from the baseline) and the replay of live traffic onto a
restored database: the rollback ladder's two ways to undo data without discarding what live traffic wrote.

    >>> repair_damage(config, run, fetch, say)       # doctest: +SKIP   (after a verify failed on integrity only)
    {'source': 'baseline snapshot', 'tables': [{'table': 'episodic_logs', 'updated': 187, 'inserted': 212, ...}]}

The repair works from what the last integrity gate named (`<run>/integrity/<table>.damage.npz`, and with a
live capture `<table>.repair.json` for rows live traffic also wrote). Baseline rows come from the baseline
snapshot a live capture holds for the run (index lookups: the cost follows the damaged rows, not the table),
else from the backup: its schema and the damaged tables' data restored into a scratch database. Every
table is repaired in one transaction, each row read back and compared before it commits. Rows the repair
cannot know (contested, unverifiable, unattributable) stop it: the ladder then restores the backup.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from upgate.checks.attribution import LIVE, TRUNCATE, Key, Row, read_rows, replay_states, text_cursor
from upgate.checks.integrity import (
    HASHED,
    INTEGER,
    ROWS,
    Damage,
    Fingerprint,
    _scan_plan,
    name_keys,
    pin_settings,
    read_key_names,
)
from upgate.checks.repair import Applied, RepairMismatch, apply_targets, delete_copies, insert_rows
from upgate.config import Config
from upgate.core.runs import RunDir
from upgate.errors import StepFailed

if TYPE_CHECKING:
    from upgate.core.live import LiveView, ReplayPlan

REPAIR_APP = "upgate-repair"
REPLAY_APP = "upgate-replay"
TIMEZONE = "UTC"

Fetch = Callable[..., dict[Key, Row]]

#: Locking the damaged rows can deadlock with live transactions (pgbench's lock its account, then wait for
#: the one branch): the server rolls one back. When that is the repair, it runs again from the start.
_ATTEMPTS = 5
_CONTENTION = (psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable,
               psycopg.errors.SerializationFailure)


def damaged_tables(run: RunDir) -> list[str]:
    """Tables the last integrity gate left damage for (their fingerprint names)."""
    folder = run.baseline / "fingerprints"
    tables = [json.loads(p.read_text(encoding="utf-8"))["table"] for p in sorted(folder.glob("*.json"))] \
        if folder.is_dir() else []
    return [t for t in tables if (run.path / "integrity" / f"{_stem(t)}.damage.npz").exists()]


def repair_damage(config: Config, run: RunDir, view: LiveView | None, say: Callable[[str, str], None],
                  delete_added: bool | None = None) -> dict[str, Any]:
    """Repair what the last integrity verdict named, in one transaction; StepFailed when it cannot.

    Baseline rows come through `view`'s held snapshot, else from the backup (a scratch database). The
    damaged rows are locked first, then the live stream is read again: a row live traffic wrote since the
    verdict gets what it wrote, and only the columns that differ from what the row should hold are written.
    `delete_added`: rows the upgrade added go too (default: when a live capture told them from live traffic).
    """
    url = config.database.url
    if not url:
        raise StepFailed("repair: no database configured")
    started = time.monotonic()
    work: list[tuple[Fingerprint, Damage]] = []
    for table in damaged_tables(run):
        damage = Damage.load(run.path / "integrity", table)
        info_path = run.path / "integrity" / f"{_stem(table)}.repair.json"
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
        if info.get("unattributable"):
            raise StepFailed(f"{table}: {info['unattributable']} lost rows cannot be attributed (live traffic or the "
                             "upgrade): a repair cannot know whether to put them back; the backup must be restored")
        if not damage.empty:
            work.append((Fingerprint.load(run.baseline / "fingerprints", table), damage))
    if not work:
        raise StepFailed("the integrity gates named no damaged rows: nothing a repair can put back")
    drop_added = (view is not None) if delete_added is None else delete_added
    fetch = view.fetcher() if view is not None else None
    with contextlib.ExitStack() as stack:
        scratch: list[str] = []

        def backup_rows() -> Fetch:
            if not scratch:
                scratch.append(stack.enter_context(_scratch_from_backup(config, run, [f.table for f, _ in work])))
            return _fetch_from(scratch[0])

        source = "baseline snapshot" if fetch is not None else "backup (scratch database)"
        say("repair", f"{sum(d.lost.size + d.changed.size + d.added.size for _, d in work)} damaged rows in "
                      f"{len(work)} tables; their baseline from the {source}")
        done: list[Applied] = []
        for attempt in range(1, _ATTEMPTS + 1):
            done = []
            with psycopg.connect(url, application_name=REPAIR_APP, connect_timeout=10) as conn:
                pin_settings(conn, TIMEZONE)
                try:
                    for fingerprint, damage in work:
                        if fingerprint.key_kind == ROWS:
                            if fetch is not None:
                                origin: tuple[str, str | None] = (url, _snapshot_of(run))
                            else:
                                backup_rows()
                                origin = (scratch[0], None)
                            done.append(_repair_keyless(conn, fingerprint, damage, origin, drop_added))
                        else:
                            done.append(_repair_table(conn, url, fingerprint, damage, view, fetch, backup_rows,
                                                      drop_added))
                except _CONTENTION as exc:  # live transactions hold some of the rows: the server chose us
                    conn.rollback()
                    if attempt == _ATTEMPTS:
                        raise StepFailed(f"repair rolled back after {attempt} attempts, nothing changed: "
                                         f"{_first_line(exc)}") from None
                    say("repair", f"attempt {attempt} rolled back ({_first_line(exc)}); trying again")
                    time.sleep(0.2 * attempt)
                    continue
                except (RepairMismatch, psycopg.Error, ValueError) as exc:
                    conn.rollback()
                    raise StepFailed(f"repair rolled back, nothing changed: {_first_line(exc)}") from None
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
                break
        if scratch:
            source = "backup (scratch database)" if fetch is None else "baseline snapshot and backup"
    seconds = round(time.monotonic() - started, 3)
    for applied in done:
        say("repair", f"{applied.summary} (read back, equal)")
    return {"source": source, "seconds": seconds, "tables": [a.to_json() for a in done],
            "rows": sum(a.rows for a in done)}


def _repair_table(conn: psycopg.Connection[Any], url: str, fp: Fingerprint, damage: Damage, view: LiveView | None,
                  fetch: Fetch | None, backup_rows: Callable[[], Fetch], drop_added: bool) -> Applied:
    key = list(fp.key_columns)
    named = _keys_of(url, fp, [int(v) for v in np.concatenate([damage.lost, damage.changed])], current=False)
    if len(named) < damage.lost.size + damage.changed.size:
        raise StepFailed(f"{fp.table}: {damage.lost.size + damage.changed.size - len(named)} damaged keys cannot be "
                         "named (no key names beside the baseline fingerprint)")
    at_baseline = list(dict.fromkeys(named.values()))
    added = list(_keys_of(url, fp, [int(v) for v in damage.added], current=True).values()) if drop_added else []
    keys = list(dict.fromkeys([*at_baseline, *added]))
    current = read_rows(conn, fp.table, key, keys, lock=True)  # from here on no one else writes them
    baseline = fetch(fp.table, key, at_baseline) if fetch is not None else {}
    missing = [k for k in at_baseline if k not in baseline]
    if missing:  # no snapshot, or a rewritten table the old snapshot shows empty: the backup has them
        baseline.update(backup_rows()(fp.table, key, missing))
        missing = [k for k in at_baseline if k not in baseline]
        if missing:
            raise StepFailed(f"{fp.table}: {len(missing)} damaged rows are in neither the baseline snapshot nor the "
                             f"backup (e.g. {list(missing[0])})")
    events = view.events(fp.table) if view is not None else None  # read after the locks: nothing newer can come
    targets: dict[Key, Row | None] = {}
    inserts: set[Key] = set()
    contested: list[Key] = []
    for k in keys:
        base = baseline.get(k)
        if events is not None:
            state = replay_states(events.history(k), base, fp.columns)
            if state.contested:
                contested.append(k)
                continue
            expected = state.expected
        else:
            expected = base
        now = current.get(k)
        if expected is None:
            if now is not None:
                targets[k] = None
        elif now is None:
            targets[k] = dict(expected)
            inserts.add(k)
        else:
            differ = {c: v for c, v in expected.items() if c in now and now[c] != v}
            if differ:
                targets[k] = differ
    if contested:
        raise StepFailed(f"{fp.table}: {len(contested)} rows live traffic wrote after the upgrade had changed them "
                         f"({', '.join(str(list(k)) for k in contested[:5])}): what they should hold is not known")
    return apply_targets(conn, fp.table, key, targets, whole=inserts)


def _keys_of(url: str, fp: Fingerprint, values: Sequence[int], current: bool) -> dict[int, Key]:
    """Fingerprint key-space values -> key tuples (text): integers as they are; hashed keys by name."""
    if fp.key_kind == INTEGER:
        return {v: (str(v),) for v in values}
    if fp.key_kind != HASHED or not values:
        return {}
    found = name_keys(url, fp, values) if current else (read_key_names(fp.key_names, values) if fp.key_names else {})
    return {h: tuple(str(v) for v in (k if isinstance(k, list) else [k])) for h, k in found.items()}


def _repair_keyless(conn: psycopg.Connection[Any], fp: Fingerprint, damage: Damage,
                    rows_source: tuple[str, str | None], drop_added: bool) -> Applied:
    done = Applied(fp.table)
    lost = [int(v) for v in damage.lost]
    if lost:
        found = rows_by_hash(rows_source[0], fp, lost, rows_source[1])
        if len(found) < len(lost):
            raise StepFailed(f"{fp.table}: {len(lost) - len(found)} lost rows are not in the baseline source")
        done.inserted = insert_rows(conn, fp.table, found)
    if drop_added and damage.added.size:
        with _scan_plan(rows_source[0], fp.table, fp.columns, [], 1, fp.types, 0, fp.timezone, ROWS) as plan:
            row_hash = plan.row_hash
        done.deleted = delete_copies(conn, fp.table, row_hash, [int(v) for v in damage.added])
        if done.deleted != damage.added.size:
            raise RepairMismatch(f"{fp.table}: {damage.added.size} added rows to remove, {done.deleted} found")
    return done


def rows_by_hash(url: str, fp: Fingerprint, hashes: Sequence[int], snapshot: str | None = None) -> list[Row]:
    """One row per listed row hash (a hash listed twice: two rows), every column as text, as `snapshot`
    shows the table (None: as it is)."""
    wanted: dict[int, int] = {}
    for h in hashes:
        wanted[int(h)] = wanted.get(int(h), 0) + 1
    rows: list[Row] = []
    with _scan_plan(url, fp.table, fp.columns, [], 1, fp.types, 0, fp.timezone, ROWS, snapshot) as plan:
        described = plan.leader.execute(
            "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum", (fp.table,)).fetchall()
        columns = [c for c, _ in described]
        cursor = text_cursor(plan.leader, [t for _, t in described])
        for relation in dict.fromkeys(r for r, _ in plan.chunks):
            query = sql.SQL("SELECT {} AS h, {} FROM {} AS t WHERE {} = ANY(%s)").format(
                plan.row_hash, sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns),
                sql.SQL(relation), plan.row_hash)
            for values in cursor.execute(query, (list(wanted),)).fetchall():
                h = int(values[0])  # the hash comes back as text too
                if wanted.get(h, 0) > 0:
                    wanted[h] -= 1
                    rows.append(dict(zip(columns, values[1:], strict=True)))
    return rows


def _snapshot_of(run: RunDir) -> str | None:
    state = run.load_baseline("live")
    return state.get("snapshot") if state else None


def _fetch_from(url: str) -> Fetch:
    def fetch(table: str, key: Sequence[str], keys: Sequence[Key], columns: Sequence[str] | None = None
              ) -> dict[Key, Row]:
        with psycopg.connect(url, autocommit=True) as conn:
            pin_settings(conn, TIMEZONE)
            return read_rows(conn, table, key, keys, columns)

    return fetch


@contextlib.contextmanager
def _scratch_from_backup(config: Config, run: RunDir, tables: list[str]) -> Iterator[str]:
    """A scratch database with the backup's schema and the named tables' data; dropped afterwards."""
    from upgate.core.journal import Journal
    from upgate.embedded.postgres import find_pg_tool
    from upgate.steps.backup import Backup, run_tool

    backup = None
    for record in Journal(run.journal).read():
        if record.get("step") == "backup" and record.get("event") == "verified" and record.get("backup"):
            backup = Backup.from_json(record["backup"])
    if backup is None or not Path(backup.path).exists():
        raise StepFailed("repair: no baseline snapshot and no verified backup in this run to read baseline rows from")
    url = str(config.database.url)
    name = f"upgate_repair_{uuid.uuid4().hex[:10]}"
    admin_url = make_conninfo(url, dbname="postgres")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    scratch = make_conninfo(url, dbname=name)
    try:
        pg_restore = find_pg_tool("pg_restore", config.database.bin_dir)
        run_tool([pg_restore, "--no-owner", "--schema-only", str(backup.path)], "pg_restore --schema-only (repair)",
                 conninfo=scratch)
        with psycopg.connect(scratch, autocommit=True) as conn:
            qualified = [conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON "
                                      "n.oid = c.relnamespace WHERE c.oid = %s::regclass", (t,)).fetchone()
                         for t in tables]
        args = [a for row in qualified if row for a in ("-n", row[0], "-t", row[1])]
        run_tool([pg_restore, "--no-owner", "--data-only", "--disable-triggers", *args, str(backup.path)],
                 "pg_restore --data-only of the damaged tables (repair)", conninfo=scratch)
        yield scratch
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# ------------------------------------------------------------------------------------------- replay


@dataclass
class Replayed:
    """What a replay onto the restored database wrote, and the baseline rows it read (for the next part)."""

    baseline: dict[str, dict[Key, Row]] = field(default_factory=dict)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: int = 0
    inserted_rows: int = 0
    sequences: int = 0
    seconds: float = 0.0


def replay_onto(fresh_url: str, plan: ReplayPlan, sequences: Sequence[tuple[str, int]] = (),
                only_touched: bool = False, done: Replayed | None = None) -> Replayed:
    """Bring every row live traffic wrote since the baseline to its last written state on the restored
    database (`fresh_url`, which holds the baseline), in one transaction, read back before it commits;
    then carry sequences forward to where the old database had them.

    `only_touched`: only the rows the plan's last part of the stream touched (`TableEvents.touched`), after
    an earlier replay `done` brought the rest (its baseline rows are reused: the restored database no longer
    holds them for the rows it replayed).
    """
    started = time.monotonic()
    done = done or Replayed()
    with psycopg.connect(fresh_url, application_name=REPLAY_APP, connect_timeout=10) as conn:
        pin_settings(conn, TIMEZONE)
        try:
            for name, events in plan.tables.items():
                inserted_before = (done.tables.get(name) or {}).get("inserted_rows", 0)
                if not only_touched and any(e.cls == LIVE and e.op == TRUNCATE for e in events.sweeps):
                    relation = conn.execute("SELECT %s::regclass::text", (name,)).fetchone()
                    assert relation is not None
                    conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(relation[0])))
                if not events.key:
                    rows = events.inserted.get(LIVE, [])[inserted_before:]
                    done.inserted_rows += insert_rows(conn, name, rows)
                    done.tables[name] = {"inserted_rows": inserted_before + len(rows)}
                    continue
                pool = events.touched if only_touched else set(events.by_key)
                keys = [k for k in pool if any(e.cls == LIVE for e in events.by_key.get(k, ()))]
                if not keys:
                    continue
                cache = done.baseline.setdefault(name, {})
                unread = [k for k in keys if k not in cache]
                found = read_rows(conn, name, list(events.key), unread)
                for k in unread:
                    cache[k] = found.get(k)  # type: ignore[assignment]  # None: no row at the baseline
                targets = {k: replay_states(events.history(k), cache.get(k)).expected for k in keys}
                applied = apply_targets(conn, name, list(events.key), targets, whole=targets)
                before = done.tables.get(name) or {}
                done.tables[name] = {"rows": before.get("rows", 0) + applied.rows}
                done.keys += len(keys)
            # Only when live traffic wrote rows: otherwise every advance is the upgrade's, and a restore puts
            # sequences back where the baseline had them.
            for sequence, value in (sequences if done.keys or done.inserted_rows else ()):
                exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (sequence,)).fetchone()
                if exists and exists[0]:
                    conn.execute(sql.SQL("SELECT setval({seq}::regclass, GREATEST(%s, (SELECT last_value FROM {rel})))")
                                 .format(seq=sql.Literal(sequence), rel=sql.SQL(sequence)), (int(value),))
                    done.sequences += 1
        except (RepairMismatch, psycopg.Error) as exc:
            conn.rollback()
            raise StepFailed(f"replaying live traffic onto the restored database failed, not swapping it in: "
                             f"{_first_line(exc)}") from None
        conn.commit()
    done.seconds += time.monotonic() - started
    return done


def _stem(table: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", table)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

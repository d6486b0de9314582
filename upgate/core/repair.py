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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from upgate.checks.attribution import LIVE, TRUNCATE, Key, Row, key_from_json, read_rows, replay_states
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
    from upgate.core.live import ReplayPlan

REPAIR_APP = "upgate-repair"
REPLAY_APP = "upgate-replay"
TIMEZONE = "UTC"

Fetch = Callable[..., dict[Key, Row]]


def damaged_tables(run: RunDir) -> list[str]:
    """Tables the last integrity gate left damage for (their fingerprint names)."""
    folder = run.baseline / "fingerprints"
    tables = [json.loads(p.read_text(encoding="utf-8"))["table"] for p in sorted(folder.glob("*.json"))] \
        if folder.is_dir() else []
    return [t for t in tables if (run.path / "integrity" / f"{_stem(t)}.damage.npz").exists()]


def repair_damage(config: Config, run: RunDir, fetch: Fetch | None, say: Callable[[str, str], None],
                  delete_added: bool | None = None) -> dict[str, Any]:
    """Repair what the last integrity verdict named, in one transaction; StepFailed when it cannot.

    `fetch(table, key, keys, columns)` reads baseline rows (the held snapshot); None: from the backup.
    `delete_added`: rows the upgrade added go too (default: when a live capture told them from live traffic).
    """
    url = config.database.url
    if not url:
        raise StepFailed("repair: no database configured")
    started = time.monotonic()
    work: list[tuple[Fingerprint, Damage, dict[str, Any]]] = []
    for table in damaged_tables(run):
        fingerprint = Fingerprint.load(run.baseline / "fingerprints", table)
        damage = Damage.load(run.path / "integrity", table)
        info_path = run.path / "integrity" / f"{_stem(table)}.repair.json"
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
        blocked = [f"{info[k]} {label}" for k, label in (("contested", "contested"),
                                                           ("unverifiable", "unverifiable"),
                                                           ("unattributable", "unattributable lost"))
                   if info.get(k)]
        if blocked:
            raise StepFailed(f"{table}: cannot repair {', '.join(blocked)} rows (what they should hold is not "
                             "known); the backup must be restored")
        if not damage.empty:
            work.append((fingerprint, damage, info))
    if not work:
        raise StepFailed("the integrity gates named no damaged rows: nothing a repair can put back")
    captured = (run.baseline / "live.json").exists()
    drop_added = captured if delete_added is None else delete_added
    source = "baseline snapshot"
    with contextlib.ExitStack() as stack:
        if fetch is None:
            source = "backup (scratch database)"
            scratch = stack.enter_context(_scratch_from_backup(config, run, [f.table for f, _, _ in work]))
            fetch = _fetch_from(scratch)
            rows_source: tuple[str, str | None] = (scratch, None)
        else:
            rows_source = (url, _snapshot_of(run))
        say("repair", f"{sum(d.lost.size + d.changed.size for _, d, _ in work)} damaged rows in {len(work)} tables; "
                      f"their baseline from the {source}")
        done: list[Applied] = []
        with psycopg.connect(url, application_name=REPAIR_APP, connect_timeout=10) as conn:
            pin_settings(conn, TIMEZONE)
            try:
                for fingerprint, damage, info in work:
                    done.append(_repair_table(conn, url, run, fingerprint, damage, info, fetch, rows_source,
                                              drop_added))
            except (RepairMismatch, psycopg.Error, ValueError) as exc:
                conn.rollback()
                raise StepFailed(f"repair rolled back, nothing changed: {_first_line(exc)}") from None
            conn.commit()
    seconds = round(time.monotonic() - started, 3)
    for applied in done:
        say("repair", f"{applied.summary} (read back, equal)")
    return {"source": source, "seconds": seconds, "tables": [a.to_json() for a in done],
            "rows": sum(a.rows for a in done)}


def _repair_table(conn: psycopg.Connection[Any], url: str, run: RunDir, fp: Fingerprint, damage: Damage,
                  info: dict[str, Any], fetch: Fetch, rows_source: tuple[str, str | None],
                  drop_added: bool) -> Applied:
    if fp.key_kind == ROWS:
        return _repair_keyless(conn, fp, damage, rows_source, drop_added)
    mixed = {key_from_json(k): v for k, v in (info.get("mixed") or {}).items()}
    key = list(fp.key_columns)
    hashes = [int(v) for v in np.concatenate([damage.lost, damage.changed])]
    keys = _keys_of(run, url, fp, hashes, current=False)
    plain = [k for k in keys.values() if k not in mixed]
    columns = _baseline_columns(run, fp.table)
    baseline = fetch(fp.table, key, plain, columns) if plain else {}
    missing = [k for k in plain if k not in baseline]
    lost_keys = {keys[int(h)] for h in damage.lost if int(h) in keys}
    missing_lost = [k for k in missing if k in lost_keys]
    if missing_lost or len(keys) < len(hashes):
        raise StepFailed(f"{fp.table}: {len(missing_lost) or len(hashes) - len(keys)} damaged rows are not in the "
                         "baseline source (a rewritten table hides them from the old snapshot)")
    targets: dict[Key, Row | None] = {k: baseline[k] for k in plain if k in baseline}
    whole = set(targets)
    for k, fix in mixed.items():
        if "row" in fix:
            targets[k] = dict(fix["row"])
            whole.add(k)
        else:
            targets[k] = dict(fix.get("columns") or {})
    if drop_added and damage.added.size:
        for k in _keys_of(run, url, fp, [int(v) for v in damage.added], current=True).values():
            targets.setdefault(k, None)
    return apply_targets(conn, fp.table, key, targets, whole=whole)


def _keys_of(run: RunDir, url: str, fp: Fingerprint, values: Sequence[int], current: bool) -> dict[int, Key]:
    """Fingerprint key-space values -> key tuples (text): integers as they are; hashed keys by name."""
    if fp.key_kind == INTEGER:
        return {v: (str(v),) for v in values}
    if fp.key_kind != HASHED or not values:
        return {}
    found = name_keys(url, fp, values) if current else (read_key_names(fp.key_names, values) if fp.key_names else {})
    return {h: tuple(str(v) for v in (k if isinstance(k, list) else [k])) for h, k in found.items()}


def _baseline_columns(run: RunDir, table: str) -> list[str] | None:
    schema = run.load_baseline("schema")
    tables = (schema or {}).get("tables") or {}
    for name in (table, table.replace('"', ""), f"public.{table}"):
        if name in tables:
            return list(tables[name])
    return None


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
        columns = [c for c, in plan.leader.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum", (fp.table,)).fetchall()]
        for relation in dict.fromkeys(r for r, _ in plan.chunks):
            query = sql.SQL("SELECT {} AS h, {} FROM {} AS t WHERE {} = ANY(%s)").format(
                plan.row_hash, sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in columns),
                sql.SQL(relation), plan.row_hash)
            for values in plan.leader.execute(query, (list(wanted),)).fetchall():
                h = int(values[0])
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


def replay_onto(fresh_url: str, plan: ReplayPlan, sequences: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """Bring every row live traffic wrote since the baseline to its last written state on the restored
    database (`fresh_url`, which is the baseline), in one transaction, read back before it commits; then
    carry every sequence forward to where the old database had it."""
    started = time.monotonic()
    by_table: dict[str, dict[str, Any]] = {}
    with psycopg.connect(fresh_url, application_name=REPLAY_APP, connect_timeout=10) as conn:
        pin_settings(conn, TIMEZONE)
        try:
            for name, events in plan.tables.items():
                if events.changes(LIVE) == 0 and not any(e.cls == LIVE for e in events.sweeps):
                    continue
                if any(e.cls == LIVE and e.op == TRUNCATE for e in events.sweeps):
                    relation = conn.execute("SELECT %s::regclass::text", (name,)).fetchone()
                    assert relation is not None
                    conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(relation[0])))
                if not events.key:
                    inserted = insert_rows(conn, name, events.inserted.get(LIVE, []))
                    by_table[name] = {"inserted": inserted, "changes": events.changes(LIVE)}
                    continue
                touched = [k for k, evs in events.by_key.items() if any(e.cls == LIVE for e in evs)]
                baseline = read_rows(conn, name, list(events.key), touched)
                targets = {k: replay_states(events.history(k), baseline.get(k)).expected for k in touched}
                applied = apply_targets(conn, name, list(events.key), targets, whole=targets)
                by_table[name] = {**applied.to_json(5), "changes": events.changes(LIVE)}
            carried = 0
            for sequence, value in sequences:
                exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (sequence,)).fetchone()
                if exists and exists[0]:
                    conn.execute(sql.SQL("SELECT setval({seq}::regclass, GREATEST(%s, (SELECT last_value FROM {rel})))")
                                 .format(seq=sql.Literal(sequence), rel=sql.SQL(sequence)), (int(value),))
                    carried += 1
        except (RepairMismatch, psycopg.Error) as exc:
            conn.rollback()
            raise StepFailed(f"replaying live traffic onto the restored database failed, not swapping it in: "
                             f"{_first_line(exc)}") from None
        conn.commit()
    transactions = {x for events in plan.tables.values() for x in events.transactions.get(LIVE, set())}
    return {"transactions": len(transactions), "changes": sum(ev.changes(LIVE) for ev in plan.tables.values()),
            "tables": by_table, "sequences": carried, "discarded": 0, "seconds": round(time.monotonic() - started, 3)}


def _stem(table: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", table)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

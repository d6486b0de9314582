"""Live write traffic during an upgrade: every row change from the baseline on is captured and attributed,
and the rollback keeps what live traffic committed (docs/live-traffic.md).

    >>> live = LiveCapture.start(config, run, say)       # doctest: +SKIP   (before the pre-gates)
    >>> live.snapshot                # the baseline: the pre-gates fingerprint it, the backup dumps it
    '00000003-0000001B-1'
    >>> LiveView.open(run, url).verdict(baseline, raw)   # the integrity gate: the upgrade's changes judged
    >>> live.close()                 # triggers, publications, slots and the held snapshot: gone

What it creates in the target database, all named upgate_live*, all removed when the run ends:

- schema `upgate_live`: table `xacts` (one row per transaction that wrote a gated table: its id, its
  application_name, and the tables where it ran a statement the attribution cannot see row by row) and
  the SECURITY DEFINER trigger function `note()`;
- a statement-level trigger `upgate_live` on every gated table: one row per transaction, not per row;
- with logical decoding (`wal_level = logical`): publication `upgate_live_<tag>` (tables with a replica
  identity: every change) and `upgate_live_<tag>_ins` (tables without one: inserts and truncates only,
  so that their updates and deletes keep working), and the slot `upgate_live_<tag>_<n>` (pgoutput);
- a session holding the baseline snapshot (REPEATABLE READ, exported) for the whole run: the pre-gates
  fingerprint it, the backup dumps it (`pg_dump --snapshot`), the repair reads baseline rows through it.
  It holds back vacuum for the length of the run, as a pg_dump of the same length would.

Without logical decoding the attribution falls back to xmin (`upgate.checks.attribution.judge_by_xmin`),
and a full restore cannot bring live writes back: it stops before restoring unless the config accepts
losing them (`[rollback] discard_live_writes`).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from upgate.checks.attribution import (
    LIVE,
    RESTORE,
    UNKNOWN,
    UPGATE,
    UPGRADE,
    BaselineSnapshot,
    Classifier,
    LiveVerdict,
    StreamItem,
    TableEvents,
    XactRecord,
    judge_by_xmin,
    judge_live,
    read_rows,
    replay_states,
    rows_at_snapshot,
    table_events,
)
from upgate.checks.changes import Transaction, peek_changes, read_transactions, write_transactions
from upgate.checks.integrity import Damage, Fingerprint, list_tables, pin_settings, split_excluded
from upgate.checks.secrets import redact
from upgate.config import Config
from upgate.core.runs import RunDir
from upgate.errors import StepFailed
from upgate.steps.base import StepPlan

if TYPE_CHECKING:
    from upgate.core.repair import Replayed

SCHEMA = "upgate_live"
HOLDER_APP = "upgate-live"
DRAIN_APP = "upgate-live-drain"
REPLAY_APP = "upgate-replay"
REPAIR_APP = "upgate-repair"
TIMEZONE = "UTC"  # every session that reads values as text pins it, so texts compare equal

_SETUP = f"""
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.xacts (xid xid8 PRIMARY KEY, app text NOT NULL, blind text[] NOT NULL DEFAULT '{{}}',
                             at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION {SCHEMA}.note() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $note$
DECLARE
  seen text := current_setting('upgate_live.seen', true);
  blind boolean := TG_OP = ANY (TG_ARGV);
  tbl text := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
BEGIN
  IF seen IS NULL OR seen = '' THEN
    INSERT INTO {SCHEMA}.xacts (xid, app, blind)
    VALUES (pg_current_xact_id(), current_setting('application_name'),
            CASE WHEN blind THEN ARRAY[tbl] ELSE '{{}}'::text[] END)
    ON CONFLICT (xid) DO NOTHING;
    PERFORM set_config('upgate_live.seen', 'y', true);
  ELSIF blind THEN
    UPDATE {SCHEMA}.xacts SET blind = array_append(blind, tbl) WHERE xid = pg_current_xact_id() AND NOT tbl = ANY (blind);
  END IF;
  RETURN NULL;
END
$note$;
"""


# ------------------------------------------------------------------------------------------ tables


@dataclass(frozen=True)
class GatedTable:
    name: str  # as the config (or list_tables) names it: the fingerprint's table name
    qualified: str  # schema.name, unquoted: how the stream names it
    key: tuple[str, ...]  # the replica identity's columns ((): none, inserts only are decoded)

    def to_json(self) -> dict[str, Any]:
        return {"qualified": self.qualified, "key": list(self.key)}


def gated_tables(conn: psycopg.Connection[Any], config: Config) -> list[GatedTable]:
    """The tables the integrity gates fingerprint, with how the stream names them and their replica identity."""
    cfg = config.integrity
    names = list(cfg.tables) if cfg.tables != "all" else split_excluded(list_tables(conn), cfg.excluded())[0]
    found: list[GatedTable] = []
    for name in names:
        row = conn.execute(
            """SELECT n.nspname, c.relname, c.relreplident,
                      coalesce((SELECT array_agg(a.attname::text ORDER BY k.pos) FROM pg_index i
                                CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, pos)
                                JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                                WHERE i.indrelid = c.oid AND (CASE c.relreplident WHEN 'i' THEN i.indisreplident
                                                              ELSE i.indisprimary END)), '{}')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)""",
            (name,)).fetchone()
        if row is None:
            raise StepFailed(f"integrity.tables: table {name!r} not found: the live capture cannot watch it")
        schema, relname, replident, key = row
        if replident == "f":
            key = []  # REPLICA IDENTITY FULL: every change is decoded, keyed by the primary key
            pk = conn.execute("SELECT array_agg(a.attname::text ORDER BY k.pos) FROM pg_index i "
                              "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, pos) "
                              "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                              "WHERE i.indrelid = to_regclass(%s) AND i.indisprimary", (name,)).fetchone()
            key = list(pk[0] or []) if pk else []
        elif replident == "n":
            key = []
        found.append(GatedTable(name, f"{schema}.{relname}", tuple(key or ())))
    return found


# ------------------------------------------------------------------------------------ the read side


class LiveView:
    """What a run's capture saw: the stream since the baseline, who made each change, the baseline rows.

    Opened from the run folder (`baseline/live.json`) by the integrity gates and by the pipeline alike.
    """

    def __init__(self, run: RunDir, url: str, state: dict[str, Any]) -> None:
        self.run = run
        self.url = url
        self.state = state
        self._records: dict[int, XactRecord] | None = None

    @classmethod
    def open(cls, run: RunDir, url: str) -> LiveView | None:
        state = run.load_baseline("live")
        return cls(run, url, state) if state else None

    @property
    def mode(self) -> str:
        return str(self.state["mode"])

    @property
    def folder(self) -> Path:
        return self.run.path / "live"

    @property
    def baseline(self) -> BaselineSnapshot:
        return BaselineSnapshot.parse(self.state["bounds"])

    def table(self, name: str) -> GatedTable | None:
        data = self.state["tables"].get(name)
        return GatedTable(name, data["qualified"], tuple(data["key"])) if data else None

    # --- who --------------------------------------------------------------------------------------

    def records(self, refresh: bool = False) -> dict[int, XactRecord]:
        """Every transaction the triggers recorded: earlier generations from files, the current one live."""
        if self._records is not None and not refresh:
            return self._records
        found: dict[int, XactRecord] = {}
        for generation in self.state["generations"]:
            if generation.get("records"):
                found.update(_load_records(self.run.path / generation["records"]))
        with contextlib.suppress(psycopg.Error), _connect(self.url) as conn:
            found.update(read_records(conn))
        self._records = found
        return found

    def classifier(self, refresh: bool = False) -> Classifier:
        return Classifier(self.records(refresh), frozenset(self.state["upgrade_apps"]))

    # --- what -------------------------------------------------------------------------------------

    def stream(self, tables: set[str] | None = None) -> Iterator[StreamItem]:
        """Every transaction since the slot was created, in commit order, generations separated by RESTORE.

        A generation is what its files kept (the slot was then moved past it) and what its slot still holds.
        """
        for index, generation in enumerate(self.state["generations"]):
            if index:
                yield RESTORE
            last = 0  # a process killed between writing a file and moving the slot left both holding a part
            for name in generation.get("files", []):
                for transaction in read_transactions(self.run.path / name):
                    last = max(last, transaction.end_lsn)
                    if tables is None:
                        yield transaction
                    else:
                        kept = [c for c in transaction.changes if c.table in tables or set(c.tables) & tables]
                        if kept:
                            yield Transaction(transaction.xid, transaction.commit_lsn, transaction.end_lsn,
                                              transaction.committed_at, kept)
            if generation.get("slot") and not generation.get("retired"):
                yield from (t for t in self._peek(generation, tables) if t.end_lsn > last)

    def _peek(self, generation: dict[str, Any], tables: set[str] | None) -> list[Transaction]:
        for attempt in range(50):
            try:
                with _connect(self.url) as conn:
                    return peek_changes(conn, generation["slot"], generation["publications"],
                                        tables=tables).transactions
            except psycopg.errors.ObjectInUse:  # another process reads the slot right now
                if attempt == 49:
                    raise
                time.sleep(0.1)
        return []

    def events(self, name: str) -> TableEvents:
        """The table's changes since the baseline by key, each classified."""
        return self.events_of([name])[name]

    def events_of(self, names: list[str]) -> dict[str, TableEvents]:
        """Several tables' changes from one read of the stream. The stream is read before the records:
        every transaction it holds has its record committed with it, so none reads as unknown."""
        tables = {}
        for name in names:
            table = self.table(name)
            if table is None:
                raise ValueError(f"table {name!r} was not captured (not among the gated tables at the baseline)")
            tables[name] = table
        items = list(self.stream({t.qualified for t in tables.values()}))
        who = self.classifier(refresh=True)
        return {name: table_events(items, t.qualified, t.key, who, self.baseline) for name, t in tables.items()}

    def fetcher(self) -> Callable[..., Any] | None:
        """Reads baseline rows through the held snapshot; None once nothing holds it (after the run)."""
        snapshot = self.state.get("snapshot")
        if not snapshot:
            return None
        try:
            with _connect(self.url) as conn:
                conn.autocommit = False
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
                conn.rollback()
        except psycopg.Error:
            return None
        return rows_at_snapshot(self.url, snapshot, TIMEZONE)

    def verdict(self, baseline: Fingerprint, raw: Damage, allow_added: bool = True, first: int = 20,
                events: TableEvents | None = None) -> LiveVerdict:
        """The integrity verdict on `raw` (the table now against its baseline) with live changes left out.

        `events`: the table's, from `events_of` read after `raw` was (default: read now).
        """
        if self.mode == "xmin":
            table = self.table(baseline.table)
            return judge_by_xmin(self.url, baseline, raw, self.classifier(refresh=True), allow_added, first,
                                 qualified=table.qualified if table else None)
        events = events if events is not None else self.events(baseline.table)
        return judge_live(self.url, baseline, raw, events, self.classifier(), fetch=self.fetcher(),
                          allow_added=allow_added, first=first)

    def counts(self) -> dict[str, Any]:
        """Transactions and row changes by class and table since the baseline (decode mode), for the report."""
        shown = self.baseline
        by_class: dict[str, Counter[str]] = {}
        transactions: dict[str, set[int]] = {}
        first: datetime | None = None
        last: datetime | None = None
        names = {t["qualified"]: name for name, t in self.state["tables"].items()}
        items = list(self.stream(set(names))) if self.mode == "decode" else []
        who = self.classifier(refresh=True)  # after the stream: see `events`
        if self.mode == "decode":
            for item in items:
                if isinstance(item, str) or shown.shows(item.xid):
                    continue
                cls = who.classify(item.xid)
                transactions.setdefault(cls, set()).add(item.xid)
                for change in item.changes:
                    by_class.setdefault(cls, Counter())[names.get(change.table, change.table)] += 1
                if item.committed_at:
                    first = first or item.committed_at
                    last = item.committed_at
        else:
            for record in who.records.values():
                if not shown.shows(record.xid & 0xFFFFFFFF):
                    transactions.setdefault(who.classify(record.xid), set()).add(record.xid)
        return {
            "transactions": {cls: len(xids) for cls, xids in transactions.items()},
            "changes": {cls: sum(c.values()) for cls, c in by_class.items()},
            "by_table": {cls: dict(c) for cls, c in by_class.items()},
            "unknown_xids": sorted(transactions.get(UNKNOWN, set()))[:50],
            "first_at": first.isoformat() if first else None,
            "last_at": last.isoformat() if last else None,
        }


def read_records(conn: psycopg.Connection[Any]) -> dict[int, XactRecord]:
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.xacts",)).fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute(f"SELECT xid::text::bigint, app, blind FROM {SCHEMA}.xacts").fetchall()
    return {int(x): XactRecord(int(x), str(app), tuple(blind or ())) for x, app, blind in rows}


def _load_records(path: Path) -> dict[int, XactRecord]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {int(r["xid"]): XactRecord(int(r["xid"]), r["app"], tuple(r.get("blind", ()))) for r in data}


def _save_records(path: Path, records: dict[int, XactRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"xid": r.xid, "app": r.application, "blind": list(r.blind)}
                                for r in records.values()]), encoding="utf-8")


def _connect(url: str, app: str = HOLDER_APP) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True, application_name=app, connect_timeout=10)
    pin_settings(conn, TIMEZONE)
    return conn


# ----------------------------------------------------------------------------------- the capture


class LiveUnavailable(StepFailed):
    """The config asks for an attribution the server cannot give (named, with what to change)."""


class LiveCapture:
    """The write side: creates what the capture needs before the pre-gates, and removes it at the end."""

    def __init__(self, config: Config, run: RunDir, state: dict[str, Any],
                 holder: psycopg.Connection[Any] | None) -> None:
        self.config = config
        self.run = run
        self.url = str(config.database.url)
        self.state = state
        self.holder = holder
        self.started = time.monotonic()
        self.rollback: dict[str, Any] = {}
        self.closed: dict[str, Any] | None = None
        # The stream since the baseline as far as `drain` read it (its slot part already in the files): a
        # restore reads it once, not once to plan and again to replay.
        self.drained: list[StreamItem] | None = None

    # --- start --------------------------------------------------------------------------------------

    @classmethod
    def start(cls, config: Config, run: RunDir, say: Callable[[str, str], None]) -> LiveCapture | None:
        """Triggers, publications and slot, then the held baseline snapshot. None when nothing is to capture."""
        cfg = config.live
        if cfg.attribution == "off" or not config.database.url:
            return None
        url = config.database.url
        tag = re.sub(r"[^a-z0-9]", "_", run.run_id.lower())[-24:]
        with _connect(url, "upgate-live-setup") as conn:
            tables = gated_tables(conn, config)
            if not tables:
                return None
            removed = _remove_leftovers(conn, cfg.lock_timeout_ms, cfg.retries)
            if removed:
                say("live", f"removed what an earlier, unfinished run left: {', '.join(removed)}")
            mode, why = _choose_mode(conn, cfg.attribution)
            state: dict[str, Any] = {
                "mode": mode, "why": why, "tag": tag, "upgrade_apps": list(cfg.upgrade_applications),
                "tables": {t.name: t.to_json() for t in tables}, "generations": [],
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "database": _dbname(url),
                "discard_live_writes": config.rollback.discard_live_writes,
            }
            holder: psycopg.Connection[Any] | None = None
            try:
                conn.execute(_SETUP)
                _with_lock_retries(conn, cfg.lock_timeout_ms, cfg.retries,
                                   [_trigger_sql(t, mode) for t in tables])
                if mode == "decode":
                    publications = _create_publications(conn, tag, tables)
                    slot = f"upgate_live_{tag}_0"
                    try:
                        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
                    except psycopg.Error as exc:
                        if cfg.attribution == "decode":
                            raise LiveUnavailable(f"live.attribution = 'decode': cannot create a replication slot: "
                                                  f"{_first_line(exc)}") from None
                        for name in publications:
                            conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
                        mode, why = "xmin", f"no replication slot could be created ({_first_line(exc)})"
                        state.update(mode=mode, why=why)
                        _with_lock_retries(conn, cfg.lock_timeout_ms, cfg.retries,
                                           [_trigger_sql(t, mode) for t in tables])
                    else:
                        state["generations"].append({"database": _dbname(url), "slot": slot,
                                                     "publications": publications})
                if mode == "xmin":
                    state["generations"].append({"database": _dbname(url), "slot": None, "publications": []})
                holder = _hold_snapshot(url)
                row = holder.execute("SELECT pg_export_snapshot(), pg_current_snapshot()::text").fetchone()
                assert row is not None
                state["snapshot"], state["bounds"] = row
            except BaseException:
                if holder is not None:
                    holder.close()
                _drop_objects(conn, tag, cfg.lock_timeout_ms, cfg.retries)
                raise
        run.save_baseline("live", state)
        capture = cls(config, run, state, holder)
        say("live", capture.describe())
        return capture

    @classmethod
    def resume(cls, config: Config, run: RunDir) -> LiveCapture | None:
        """The capture of a run that did not end (killed): its slot and triggers are still there; its snapshot
        is not (the repair then reads the backup)."""
        state = run.load_baseline("live")
        if not state or state.get("closed") or not config.database.url:
            return None
        return cls(config, run, state, None)

    def describe(self) -> str:
        tables = len(self.state["tables"])
        if self.mode == "decode":
            return (f"capturing every row change of {tables} gated tables by logical decoding (slot "
                    f"{self.state['generations'][0]['slot']}); baseline snapshot {self.snapshot} held")
        return (f"capturing by xmin ({self.state['why']}): inserts and updates attributed, deletions only when live "
                f"traffic deleted nothing; baseline snapshot {self.snapshot} held")

    @property
    def mode(self) -> str:
        return str(self.state["mode"])

    @property
    def snapshot(self) -> str | None:
        return self.state.get("snapshot") if self.holder is not None and not self.holder.closed else None

    def view(self) -> LiveView:
        return LiveView(self.run, self.url, self.state)

    def plan(self) -> StepPlan:
        apps = ", ".join(self.state["upgrade_apps"])
        does = [f"attribution: {'logical decoding (wal_level = logical)' if self.mode == 'decode' else 'xmin'} "
                f"of {len(self.state['tables'])} gated tables; the upgrade's sessions are application_name {apps}; "
                "any other is live traffic, a transaction nothing recorded is judged as the upgrade's"]
        if self.mode == "xmin":
            does.append(f"fallback: {self.state['why']}: a row a live transaction wrote last is live traffic's; "
                        "a lost row is attributed only when live traffic deleted nothing; damage live traffic wrote "
                        "over afterwards is not seen")
        does.append("baseline snapshot held for the run: fingerprints and backup read it; vacuum waits for it")
        deploy = self.config.deploy
        if deploy is not None and deploy.kind != "process":
            does.append(f"warning: a migration run inside the {deploy.kind} deploy (a script, an entrypoint) writes "
                        f"as the app does and would count as live traffic; run it through [migrate], or under "
                        f"application_name {apps}, or set [live] attribution = \"off\" when nobody writes")
        consent = self.config.rollback.discard_live_writes
        undo = ["keeps live writes: down migrations, then repair of only the damaged rows (their baseline values "
                "from the held snapshot, else from the backup), verified",
                ("a full restore replays every live change since the baseline onto the restored database and "
                 "proves it" if self.mode == "decode" else "a full restore cannot replay live writes")
                + ("; [rollback] discard_live_writes = true: what it cannot bring back is discarded and counted"
                   if consent else "; what it cannot bring back stops the rollback before restoring "
                                   "(NEEDS_ATTENTION, the writes listed)"),
                "removed at the end: triggers, upgate_live schema, publications, slots, the held snapshot"]
        return StepPlan("live", tuple(does), tuple(undo), mutates=False)

    # --- before a restore ---------------------------------------------------------------------------

    def before_restore(self) -> dict[str, Any]:
        """Whether a full restore could bring back every live write; StepFailed listing them when it cannot
        (unless the config accepts discarding them). What it found goes to the summary."""
        items: list[StreamItem] | None = None
        if self.mode == "decode":
            with _connect(self.url, DRAIN_APP) as conn:
                items = self.drain(conn, whole=True)
        plan = self._replay_plan(fetch=self.view().fetcher(), items=items)
        self.rollback["restore_plan"] = plan.describe()
        problems = plan.problems()
        if problems and not self.config.rollback.discard_live_writes:
            listed = self._write_discards(plan)
            raise StepFailed(f"not restoring: it would discard live writes committed since the baseline "
                             f"({'; '.join(problems)}); each is listed in {listed}; [rollback] discard_live_writes "
                             "= true accepts losing them")
        return plan.describe()

    def _replay_plan(self, fetch: Callable[..., Any] | None, items: list[StreamItem] | None = None,
                     who: Classifier | None = None, into: ReplayPlan | None = None) -> ReplayPlan:
        """Everything live traffic wrote since the baseline, by table and key, and what a replay cannot do.

        `items`/`who`: the stream and its classes (default: read now, the stream first); `into`: a plan of the
        stream before `items`, extended (what stands in the way is checked for the rows `items` touched).
        `fetch` reads baseline rows (for rows both the upgrade and live traffic wrote: contested?).
        """
        view = self.view()
        plan = into or ReplayPlan(self.mode, self.config.rollback.discard_live_writes)
        shown = view.baseline
        if items is None:
            items = list(view.stream({t.qualified for t in self._tables()})) if self.mode == "decode" else []
        who = who or view.classifier(refresh=True)  # after the stream: see LiveView.events
        if self.mode != "decode":
            plan.xmin_live = [r for r in who.records.values()
                              if who.classify(r.xid) == LIVE and not shown.shows(r.xid & 0xFFFFFFFF)]
            return plan
        for table in self._tables():
            events = table_events(items, table.qualified, table.key, who, shown, into=plan.tables.get(table.name))
            plan.tables[table.name] = events
            plan.unknown |= events.transactions.get(UNKNOWN, set())
            blind = len(who.blind(table.qualified)) if not table.key else 0
            if blind or events.unkeyed.get(LIVE):
                plan.blind[table.name] = blind + events.unkeyed.get(LIVE, 0)
            mixed = [k for k in events.touched if {e.cls for e in events.by_key[k]} >= {LIVE}
                     and {e.cls for e in events.by_key[k]} - {LIVE}]
            if mixed and fetch is not None:
                baseline = fetch(table.name, list(table.key), mixed)
                preserved = self._preserved(table)
                for k in mixed:
                    state = replay_states(events.history(k), baseline.get(k), preserved)
                    if state.contested:
                        plan.contested.setdefault(table.name, []).append(list(k))
        return plan

    def drain(self, conn: psycopg.Connection[Any], whole: bool) -> list[StreamItem]:
        """What the current generation's slot holds, read through `conn` (and, `whole`, everything before it:
        what an earlier drain read, or the files). What the slot held is appended to the generation's file
        first, and only then is the slot moved past it: nothing read is ever only in memory."""
        from upgate.checks.changes import advance_slot

        current = self.state["generations"][-1]
        items: list[StreamItem] = []
        if whole and self.drained is not None:
            items = list(self.drained)
        elif whole:
            tables = {t.qualified for t in self._tables()}
            view = self.view()
            retired = dict(current, retired=True)  # its files only: the slot is read below, through conn
            items = list(LiveView(view.run, view.url, {**self.state, "generations": [
                *self.state["generations"][:-1], retired]}).stream(tables))
        if self.mode == "decode" and current.get("slot") and not current.get("retired"):
            batch = peek_changes(conn, current["slot"], current["publications"])
            # What the files already hold (a process killed between writing them and moving the slot) is
            # left out: the slot still sends it.
            last = self._last_kept(items if whole else self.drained)
            fresh = [t for t in batch.transactions if t.end_lsn > last]
            if fresh:
                stream = self.run.path / "live" / f"stream-{len(self.state['generations']) - 1}.jsonl"
                write_transactions(stream, fresh, batch.relations)
                name = stream.relative_to(self.run.path).as_posix()
                if name not in current.setdefault("files", []):
                    current["files"].append(name)
                self.run.save_baseline("live", self.state)
            if batch.end_lsn is not None:
                advance_slot(conn, current["slot"], batch.end_lsn)
            items.extend(fresh)
            if not whole and self.drained is not None:
                self.drained.extend(fresh)
        if whole:
            self.drained = list(items)
        return items

    def _last_kept(self, read: list[StreamItem] | None) -> int:
        """The end LSN of the last transaction the current generation's files hold: from what was read of
        them (`read`, the stream since the baseline), else from the files."""
        if read is None:
            current = self.state["generations"][-1]
            read = [t for name in current.get("files", []) for t in read_transactions(self.run.path / name)]
        last = 0
        for item in reversed(read):
            if isinstance(item, str):  # RESTORE: what came before is an earlier generation's
                break
            last = max(last, item.end_lsn)
        return last

    def _tables(self) -> list[GatedTable]:
        return [GatedTable(n, t["qualified"], tuple(t["key"])) for n, t in self.state["tables"].items()]

    def _preserved(self, table: GatedTable) -> list[str]:
        """The columns the baseline fingerprint hashed: what the upgrade must leave as live traffic wrote them."""
        try:
            meta = Fingerprint.load_meta(self.run.baseline / "fingerprints", table.name)
        except (ValueError, OSError):
            return []
        return [str(c) for c in meta.get("columns", [])]

    def _write_discards(self, plan: ReplayPlan) -> Path:
        path = self.run.path / "live" / "would-discard.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        who = self.view().classifier(refresh=True)
        with path.open("w", encoding="utf-8") as out:
            for record in plan.xmin_live:
                out.write(json.dumps({"xid": record.xid, "application": record.application,
                                      "why": "no logical decoding: the rows it wrote cannot be replayed"}) + "\n")
            for name, events in plan.tables.items():
                for key, evs in events.by_key.items():
                    for event in evs:
                        if event.cls in (LIVE, UNKNOWN):
                            out.write(json.dumps({"table": name, "key": list(key), "op": event.op, "xid": event.xid,
                                                  "class": event.cls, "application": who.application(event.xid),
                                                  "committed_at": event.at.isoformat() if event.at else None,
                                                  "values": event.values}, default=str) + "\n")
                for cls, rows in events.inserted.items():
                    if cls in (LIVE, UNKNOWN):
                        for row in rows:
                            out.write(json.dumps({"table": name, "op": "I", "class": cls, "values": row}) + "\n")
        return path

    # --- the restore's swap -------------------------------------------------------------------------

    def swap_hook(self) -> LiveSwap:
        return LiveSwap(self)

    # --- repair ---------------------------------------------------------------------------------------

    # --- the end --------------------------------------------------------------------------------------

    def close(self) -> dict[str, Any]:
        """Count what was seen, keep the live changes in the run folder, remove everything; never raises."""
        if self.closed is not None:
            return self.closed
        summary: dict[str, Any] = {"mode": self.mode, "why": self.state.get("why"), "tables": list(self.state["tables"])}
        view = self.view()
        try:
            counts = view.counts()
            summary.update(counts)
            window = max(0.001, time.monotonic() - self.started)
            summary["window_s"] = round(window, 1)
            live_changes = counts["changes"].get(LIVE, 0)
            summary["writes_per_s"] = round(live_changes / window, 1) if self.mode == "decode" else None
            summary["live_transactions_per_s"] = round(counts["transactions"].get(LIVE, 0) / window, 1)
            summary["upgrade_changes"] = counts["changes"].get(UPGRADE, 0)
            self._keep_current(view)
        except (psycopg.Error, OSError, ValueError) as exc:
            summary["error"] = redact(_first_line(exc))
        summary["rollback"] = self.rollback
        summary["kept"] = self._kept(summary)
        problems: list[str] = []
        if self.holder is not None:
            with contextlib.suppress(psycopg.Error):
                self.holder.close()
        cfg = self.config.live
        try:
            with _connect(self.url, "upgate-live-setup") as conn:
                problems += _drop_objects(conn, self.state["tag"], cfg.lock_timeout_ms, cfg.retries)
        except psycopg.Error as exc:
            problems.append(f"cannot connect to remove the capture: {_first_line(exc)}")
        for database in set(self.state.get("forensics") or []) - {_dbname(self.url)}:
            problems += _drop_in(self.url, database, self.state["tag"], cfg.lock_timeout_ms, cfg.retries)
        summary["removed"] = not problems
        if problems:
            summary["cleanup_problems"] = problems
        self.closed = summary
        return summary

    def _kept(self, summary: dict[str, Any]) -> dict[str, Any]:
        live = summary.get("changes", {}).get(LIVE, 0) if self.mode == "decode" else \
            summary.get("transactions", {}).get(LIVE, 0)
        unit = "row changes" if self.mode == "decode" else "transactions"
        replay = self.rollback.get("replay") or {}
        return {"unit": unit, "live": live, "replayed": replay.get("changes", 0),
                "discarded": replay.get("discarded", 0) + self.rollback.get("discarded", 0),
                "kept": live - replay.get("discarded", 0) - self.rollback.get("discarded", 0)}

    def _keep_current(self, view: LiveView) -> None:
        """The current generation's live transactions and records into the run folder, before their slot and
        table go: what a reader audits, and what `upgate rollback` of this run reads later."""
        current = self.state["generations"][-1]
        index = len(self.state["generations"]) - 1
        batch = None
        if current.get("slot") and not current.get("retired"):
            with _connect(self.url) as conn:
                batch = peek_changes(conn, current["slot"], current["publications"],
                                     tables={t.qualified for t in self._tables()})
        records = view.records(refresh=True)  # after the stream: see LiveView.events
        records_file = self.run.path / "live" / f"xacts-{index}.json"
        _save_records(records_file, records)
        current["records"] = records_file.relative_to(self.run.path).as_posix()
        if batch is not None:
            who = Classifier(records, frozenset(self.state["upgrade_apps"]))
            shown = view.baseline
            kept = [t for t in batch.transactions if not shown.shows(t.xid) and who.classify(t.xid) == LIVE]
            path = self.run.path / "live" / f"live-{index}.jsonl"
            write_transactions(path, kept, batch.relations)
            current.setdefault("files", []).append(path.relative_to(self.run.path).as_posix())
            current["retired"] = True  # its slot is dropped next; the last file holds its live transactions only
        self.state["closed"] = True
        self.state["snapshot"] = None
        self.run.save_baseline("live", self.state)


@dataclass
class ReplayPlan:
    """What a full restore would have to bring back, and what stands in the way."""

    mode: str
    consent: bool
    tables: dict[str, TableEvents] = field(default_factory=dict)
    unknown: set[int] = field(default_factory=set)
    blind: dict[str, int] = field(default_factory=dict)
    contested: dict[str, list[list[Any]]] = field(default_factory=dict)
    xmin_live: list[XactRecord] = field(default_factory=list)

    def live_changes(self) -> int:
        return sum(ev.changes(LIVE) for ev in self.tables.values())

    def problems(self) -> list[str]:
        out = []
        if self.xmin_live:
            out.append(f"{len(self.xmin_live)} live transactions, which without logical decoding cannot be replayed")
        if self.unknown:
            out.append(f"{len(self.unknown)} transactions nothing recorded (live or the upgrade's: unknown), "
                       f"xids {', '.join(map(str, sorted(self.unknown)[:5]))}")
        for table, n in self.blind.items():
            out.append(f"{table}: {n} live updates or deletes decoding cannot show row by row")
        for table, keys in self.contested.items():
            out.append(f"{table}: {len(keys)} rows live traffic wrote after the upgrade had changed them "
                       f"({', '.join(map(str, keys[:5]))}): what to replay cannot be known")
        return out

    def describe(self) -> dict[str, Any]:
        return {"live_changes": self.live_changes(), "problems": self.problems(),
                "by_table": {n: ev.changes(LIVE) for n, ev in self.tables.items()}}


class LiveSwap:
    """The restore's swap, with live traffic: called by `upgate.steps.backup.restore_database`.

    `before_lockout` (live traffic still writing) reads the stream so far into the run folder, moves the
    slot past it, and replays it onto the restored database; `after_lockout` (every other session gone, no
    new one let in) reads the rest, replays that too, proves both, carries the sequences forward and starts
    a new slot there. Either stops the restore, listing what would be lost, when it cannot keep every live
    write (unless the config accepts losing them). `in_place` refuses the in-place restore in that case.
    """

    spare_application = DRAIN_APP

    def __init__(self, capture: LiveCapture) -> None:
        self.capture = capture
        self.drain: psycopg.Connection[Any] | None = None
        self.new_generation: dict[str, Any] | None = None
        self.plan: ReplayPlan | None = None
        self.done: Replayed | None = None
        self.forensics: str | None = None

    def in_place(self, why: str) -> None:
        capture = self.capture
        plan = capture._replay_plan(fetch=None)
        lost = plan.live_changes() + len(plan.xmin_live)
        if lost and not capture.config.rollback.discard_live_writes:
            listed = capture._write_discards(plan)
            raise StepFailed(f"not restoring in place ({why}): live traffic keeps writing into the database while "
                             f"it is replayed, and {lost} live writes since the baseline would be lost (listed in "
                             f"{listed}); grant CREATEDB for a restore that keeps them, or set [rollback] "
                             "discard_live_writes = true")
        capture.rollback["discarded"] = lost

    def _read(self, whole: bool) -> list[StreamItem]:
        assert self.drain is not None
        return self.capture.drain(self.drain, whole)

    def _who(self) -> Classifier:
        assert self.drain is not None
        records = {**self.capture.view().records(), **read_records(self.drain)}
        return Classifier(records, frozenset(self.capture.state["upgrade_apps"]))

    def _refuse(self, plan: ReplayPlan, when: str) -> None:
        problems = plan.problems()
        if problems and not self.capture.config.rollback.discard_live_writes:
            listed = self.capture._write_discards(plan)
            raise StepFailed(f"{when}: {'; '.join(problems)} (listed in {listed}); [rollback] discard_live_writes "
                             "= true accepts losing them")

    def before_lockout(self, live_url: str, fresh_url: str) -> None:
        from upgate.core.repair import replay_onto

        capture = self.capture
        self.drain = _connect(live_url, DRAIN_APP)
        try:
            items = self._read(whole=True)
            who = self._who()  # after the stream: see LiveView.events
            with _connect(fresh_url, REPLAY_APP) as fresh:
                self.plan = capture._replay_plan(_reader(fresh), items, who)  # the restored database: the baseline
            self._refuse(self.plan, "not restoring")
            if capture.mode != "decode":
                return
            self.done = replay_onto(fresh_url, self.plan)
            # Catch up while live traffic still runs, so that what is left for the lockout is short; stop when a
            # round no longer shrinks what came in meanwhile (traffic writes as fast as it is replayed).
            behind: int | None = None
            for _ in range(_CATCH_UP_ROUNDS):
                more = self._read(whole=False)
                if not more:
                    break
                who = self._who()
                with _connect(fresh_url, REPLAY_APP) as fresh:
                    self.plan = capture._replay_plan(_reader(fresh, self.done.baseline), more, who, into=self.plan)
                self._refuse(self.plan, "not restoring")
                self.done = replay_onto(fresh_url, self.plan, only_touched=True, done=self.done)
                if len(more) < _SHORT_TAIL or (behind is not None and len(more) >= behind):
                    break
                behind = len(more)
        except BaseException:
            self.drain.close()
            self.drain = None
            raise

    def after_lockout(self, fresh_url: str) -> dict[str, Any]:
        from upgate.core.repair import replay_onto

        capture = self.capture
        state = capture.state
        assert self.drain is not None and self.plan is not None
        locked_at = time.monotonic()
        generation = len(state["generations"]) - 1
        current = state["generations"][-1]
        try:
            _settle(self.drain)
            items = self._read(whole=False)  # what committed since before_lockout
            who = self._who()
            records_file = capture.run.path / "live" / f"xacts-{generation}.json"
            _save_records(records_file, dict(who.records))
            current["records"] = records_file.relative_to(capture.run.path).as_posix()
            sequences = self.drain.execute(
                "SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename), last_value FROM pg_sequences "
                "WHERE last_value IS NOT NULL").fetchall()
        finally:
            self.drain.close()
            self.drain = None
        with _connect(fresh_url, REPLAY_APP) as fresh:
            # Rows the first part replayed no longer hold their baseline there: it read them, and kept them.
            plan = capture._replay_plan(_reader(fresh, self.done.baseline if self.done else None), items, who,
                                        into=self.plan)
        self._refuse(plan, "stopped before swapping the restored database in")
        outcome: dict[str, Any]
        if capture.mode == "decode":
            done = replay_onto(fresh_url, plan, sequences, only_touched=True, done=self.done)
            self.new_generation = _start_generation(fresh_url, capture, generation + 1)
            outcome = {"transactions": len({x for ev in plan.tables.values() for x in ev.transactions.get(LIVE, ())}),
                       "changes": plan.live_changes(), "keys": done.keys, "rows_inserted": done.inserted_rows,
                       "sequences": done.sequences, "discarded": 0, "seconds": round(done.seconds, 3),
                       "tail_transactions": sum(1 for i in items if isinstance(i, Transaction)),
                       "locked_out_s": round(time.monotonic() - locked_at, 3)}
        else:
            outcome = {"changes": 0, "transactions": 0, "discarded": len(plan.xmin_live), "mode": "xmin"}
        capture.rollback["replay"] = outcome
        capture.run.save_baseline("live", state)
        return outcome

    def resumed(self, names: dict[str, str]) -> None:
        """A killed run had locked the database out (its replay, if any, committed and its stream in the run
        folder) and `upgate rollback` finished the swap: the old slot stays in the failed database, where
        nothing reads it. Everything it held that was replayed is in the generation's files."""
        state = self.capture.state
        self.capture.drained = None  # the next read starts from the files, the restore's mark between
        current = state["generations"][-1]
        current["retired"] = True
        current["note"] = f"slot left in {names.get('failed')}: a killed restore's swap finished by a later process"
        state.setdefault("forensics", []).append(names.get("failed"))
        state["snapshot"] = None
        self.capture.run.save_baseline("live", state)

    def after_swap(self, names: dict[str, str] | None = None) -> None:
        """The restored database has the live name: its slot is the capture's current generation."""
        state = self.capture.state
        self.capture.drained = None  # the next read starts from the files, the restore's mark between
        if names:
            state.setdefault("forensics", []).append(names.get("failed"))
        if self.new_generation is not None:
            state["generations"][-1]["retired"] = True  # everything its slot held is in its files
            state["generations"].append(self.new_generation)
        state["snapshot"] = None
        self.capture.run.save_baseline("live", state)


_CATCH_UP_ROUNDS = 10
_SHORT_TAIL = 200  # transactions: what the lockout may be left to replay


def _settle(drain: psycopg.Connection[Any], timeout_s: float = 60.0) -> None:
    """Wait until every other session on the database is gone (a terminated backend may still be finishing
    a commit its client saw), then flush the WAL (a commit of our own), so that the slot holds every commit."""
    deadline = time.monotonic() + timeout_s
    while True:
        row = drain.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND pid <> pg_backend_pid()").fetchone()
        if not row or not row[0]:
            break
        if time.monotonic() > deadline:
            raise StepFailed(f"{row[0]} sessions stayed on the database after being terminated: not swapping")
        drain.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                      "AND pid <> pg_backend_pid()")
        time.sleep(0.05)
    with drain.transaction():
        drain.execute("SET LOCAL synchronous_commit = on")
        drain.execute("SELECT pg_current_xact_id()")  # a commit record, flushed with everything before it


def _start_generation(fresh_url: str, capture: LiveCapture, index: int) -> dict[str, Any]:
    slot = f"upgate_live_{capture.state['tag']}_{index}"
    with _connect(fresh_url, "upgate-live-setup") as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    first = capture.state["generations"][0]
    return {"database": capture.state["database"], "slot": slot, "publications": first["publications"]}


# ---------------------------------------------------------------------------------------- helpers


def _choose_mode(conn: psycopg.Connection[Any], wanted: str) -> tuple[str, str]:
    row = conn.execute("SELECT current_setting('wal_level'), r.rolsuper OR r.rolreplication "
                       "FROM pg_roles r WHERE r.rolname = current_user").fetchone()
    assert row is not None
    level, may_replicate = row
    if wanted == "xmin":
        return "xmin", "live.attribution = 'xmin'"
    if level != "logical":
        why = f"wal_level is {level}, not logical"
    elif not may_replicate:
        why = "the role has no REPLICATION attribute (a logical slot needs it)"
    else:
        return "decode", "wal_level = logical"
    if wanted == "decode":
        raise LiveUnavailable(f"live.attribution = 'decode' needs logical decoding, but {why}: set wal_level = "
                              "logical (restart) and grant REPLICATION, or choose 'xmin'")
    return "xmin", why


def _trigger_sql(table: GatedTable, mode: str) -> str:
    if mode == "decode":
        blind = ["UPDATE", "DELETE"] if not table.key else []
    else:
        blind = ["DELETE", "TRUNCATE"]
    args = ", ".join(f"'{op}'" for op in blind)
    relation = _quoted(table.qualified)
    return (f"CREATE TRIGGER upgate_live AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {relation} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.note({args})")


def _create_publications(conn: psycopg.Connection[Any], tag: str, tables: list[GatedTable]) -> list[str]:
    names: list[str] = []
    groups = [(f"upgate_live_{tag}", [t for t in tables if t.key], ""),
              (f"upgate_live_{tag}_ins", [t for t in tables if not t.key], ", publish = 'insert, truncate'")]
    for name, members, extra in groups:
        if not members:
            continue
        relations = ", ".join(_quoted(t.qualified) for t in members)
        conn.execute(f"CREATE PUBLICATION \"{name}\" FOR TABLE {relations} "
                     f"WITH (publish_via_partition_root = true{extra})")
        names.append(name)
    return names


def _hold_snapshot(url: str) -> psycopg.Connection[Any]:
    holder = psycopg.connect(url, autocommit=True, application_name=HOLDER_APP, connect_timeout=10)
    holder.execute("SET idle_in_transaction_session_timeout = 0")
    holder.execute("SET statement_timeout = 0")
    holder.autocommit = False
    holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    holder.read_only = True
    return holder


def _with_lock_retries(conn: psycopg.Connection[Any], lock_timeout_ms: int, retries: int,
                       statements: list[str]) -> None:
    """Run statements in one transaction under lock_timeout, again (bounded, with backoff) when it is hit."""
    for attempt in range(retries + 1):
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",))
                for statement in statements:
                    conn.execute(statement)
            return
        except psycopg.errors.LockNotAvailable:
            if attempt == retries:
                raise StepFailed(f"live capture: a gated table stayed locked ({retries + 1} attempts of "
                                 f"{lock_timeout_ms} ms): {statements[0][:80]} ...") from None
            time.sleep(min(2.0, 0.1 * 2 ** attempt))


def _remove_leftovers(conn: psycopg.Connection[Any], lock_timeout_ms: int, retries: int) -> list[str]:
    found: list[str] = []
    if conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (SCHEMA,)).fetchone() == (True,):
        found.append(f"schema {SCHEMA} (and its triggers)")
    found += [f"publication {r[0]}" for r in conn.execute(
        "SELECT pubname FROM pg_publication WHERE pubname LIKE 'upgate\\_live\\_%'").fetchall()]
    found += [f"slot {r[0]}" for r in conn.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'upgate\\_live\\_%' AND NOT active "
        "AND database = current_database()").fetchall()]
    if found:
        _drop_objects(conn, None, lock_timeout_ms, retries)
    return found


def _drop_objects(conn: psycopg.Connection[Any], tag: str | None, lock_timeout_ms: int, retries: int) -> list[str]:
    """Drop the schema (with the triggers), publications and slots of `tag` (None: any upgate_live ones)."""
    problems: list[str] = []
    try:
        _with_lock_retries(conn, lock_timeout_ms, retries, [f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"])
    except (StepFailed, psycopg.Error) as exc:
        problems.append(f"schema {SCHEMA}: {_first_line(exc)}")
    pattern = f"upgate\\_live\\_{tag}%" if tag else "upgate\\_live\\_%"
    for (name,) in conn.execute("SELECT pubname FROM pg_publication WHERE pubname LIKE %s", (pattern,)).fetchall():
        try:
            conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            problems.append(f"publication {name}: {_first_line(exc)}")
    slots = conn.execute("SELECT slot_name, active_pid FROM pg_replication_slots WHERE slot_name LIKE %s",
                         (pattern,)).fetchall()
    for name, pid in slots:
        try:
            if pid:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                time.sleep(0.2)
            conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
        except psycopg.Error as exc:
            problems.append(f"slot {name}: {_first_line(exc)}")
    return problems


def _drop_in(url: str, database: str, tag: str, lock_timeout_ms: int, retries: int) -> list[str]:
    """The same in another database (the one a restore swapped out, kept for forensics)."""
    try:
        with _connect(make_conninfo(url, dbname=database), "upgate-live-setup") as conn:
            return _drop_objects(conn, tag, lock_timeout_ms, retries)
    except psycopg.Error:
        return []  # gone, or renamed: nothing of ours to leave behind there that holds WAL (slots are dropped)


def _quoted(qualified: str) -> str:
    schema, name = qualified.split(".", 1)
    return '"' + schema.replace('"', '""') + '"."' + name.replace('"', '""') + '"'


def _reader(conn: psycopg.Connection[Any], cache: dict[str, dict[Any, Any]] | None = None) -> Callable[..., Any]:
    """`read_rows` on conn, the rows in `cache` (table -> key -> row, None: no row) taken from there."""

    def fetch(table: str, key: Any, keys: Any, columns: Any = None) -> Any:
        known = (cache or {}).get(table, {})
        found = read_rows(conn, table, key, [k for k in keys if k not in known], columns)
        found.update({k: known[k] for k in keys if k in known and known[k] is not None})
        return found

    return fetch


def _dbname(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return str(conninfo_to_dict(url).get("dbname") or "postgres")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["LIVE", "UPGATE", "UPGRADE", "LiveCapture", "LiveSwap", "LiveView", "gated_tables"]

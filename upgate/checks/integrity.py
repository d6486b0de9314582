"""Row-level fingerprints that prove a migration lost or changed no preserved row.

A fingerprint is, per row, its key and a 64-bit hash of the preserved columns, computed by PostgreSQL
(`hash_record_extended`, one hash per field, so shifted field boundaries and NULL vs '' differ) and
read back in bulk on parallel connections that share one snapshot.

    >>> before = fingerprint_table(url, "episodic_logs")                  # doctest: +SKIP
    >>> fingerprint_and_compare(url, before).summary                      # doctest: +SKIP
    'episodic_logs: 100000 rows, 0 lost, 0 changed, 0 added'

Columns whose type has no exact 64-bit hash (numeric ignores scale, json has none, interval equates
'1 day' with '24 hours', domains, composites, ranges...) are hashed through their text form. jsonb and
float columns keep their native hash: jsonb {"a": 1.0} equals {"a": 1.00}, and -0.0 equals 0.0.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from upgate.checks.result import CheckResult

# Types whose extended hash tells apart every pair of values that print differently (pg_catalog only).
_EXACT_HASH_TYPES = frozenset(
    {
        "bool", "int2", "int4", "int8", "oid", "float4", "float8", "text", "varchar", "bpchar", "name",
        "char", "bytea", "uuid", "date", "time", "timetz", "timestamp", "timestamptz", "jsonb",
    }
)  # fmt: skip
_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "name"})
_INTEGER_KEY_TYPES = frozenset({"int2", "int4", "int8"})
_MAX_CHUNK_ROWS = 2_000_000  # 32 MB of (key, hash) per query, far below the 1 GB bytea limit
_MAX_ROWS_PER_PAGE = 291  # MaxHeapTuplesPerPage for 8 kB pages: the estimate when stats are missing
_PAIR = np.dtype([("key", ">i8"), ("hash", ">u8")])

Key = tuple[str | None, ...]


@dataclass(frozen=True)
class _Column:
    name: str
    type: str
    typname: str
    builtin: bool
    typtype: str
    element: str | None
    element_builtin: bool
    element_typtype: str | None
    deterministic: bool


@dataclass
class Fingerprint:
    """Keys and row hashes of one table, sorted by key (int64 array or text tuples)."""

    table: str
    key_columns: list[str]
    columns: list[str]
    count: int
    keys: np.ndarray | list[Key]
    hashes: np.ndarray
    elapsed_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def integer_keys(self) -> bool:
        return isinstance(self.keys, np.ndarray)

    def save(self, folder: Path) -> Path:
        """Write `<table>.npz` (keys, hashes) and `<table>.json` (metadata) into folder; returns the json."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = _file_stem(self.table)
        arrays: dict[str, np.ndarray] = {"hashes": np.asarray(self.hashes, dtype=np.uint64)}
        if isinstance(self.keys, np.ndarray):
            arrays["keys"] = self.keys.astype(np.int64, copy=False)
        else:
            for i in range(len(self.key_columns)):
                values = [k[i] for k in self.keys]
                arrays[f"key_{i}"] = np.array(["" if v is None else v for v in values], dtype=str)
                arrays[f"key_{i}_null"] = np.array([v is None for v in values], dtype=bool)
        np.savez(folder / f"{stem}.npz", **arrays)  # type: ignore[arg-type]
        meta = {
            "format": 1,
            "table": self.table,
            "key_columns": self.key_columns,
            "columns": self.columns,
            "count": self.count,
            "integer_keys": self.integer_keys,
            "elapsed_s": self.elapsed_s,
            "meta": self.meta,
        }
        path = folder / f"{stem}.json"
        path.write_text(json.dumps(meta, indent=2, default=str))
        return path

    @classmethod
    def load(cls, folder: Path, table: str) -> Fingerprint:
        """Read a fingerprint written by `save` (table: its name, or the file stem `save` made of it)."""
        stem = _file_stem(table)
        path = Path(folder) / f"{stem}.json"
        if not path.exists():
            raise ValueError(f"no fingerprint of table {table!r} in {folder} (expected {path.name})")
        meta = json.loads(path.read_text())
        if _file_stem(str(meta.get("table"))) != stem:
            raise ValueError(f"{path} holds the fingerprint of {meta.get('table')!r}, not {table!r}")
        with np.load(Path(folder) / f"{stem}.npz", allow_pickle=False) as data:
            hashes = data["hashes"]
            keys: np.ndarray | list[Key]
            if meta["integer_keys"]:
                keys = data["keys"]
            else:
                columns = [
                    [
                        None if null else str(v)
                        for v, null in zip(data[f"key_{i}"], data[f"key_{i}_null"], strict=True)
                    ]
                    for i in range(len(meta["key_columns"]))
                ]
                keys = list(zip(*columns, strict=True)) if columns else []
        return cls(
            table=meta["table"],
            key_columns=list(meta["key_columns"]),
            columns=list(meta["columns"]),
            count=int(meta["count"]),
            keys=keys,
            hashes=hashes,
            elapsed_s=float(meta.get("elapsed_s", 0.0)),
            meta=dict(meta.get("meta", {})),
        )


def list_tables(conn: psycopg.Connection[Any], schema: str = "public") -> list[str]:
    """Ordinary and partitioned tables of schema (not partitions), as names `fingerprint_table` resolves.

    Names are quoted only where needed (`"Odd Name"`) and qualified unless schema is public.
    """
    rows = conn.execute(
        """SELECT CASE WHEN n.nspname = 'public' THEN quote_ident(c.relname)
                       ELSE quote_ident(n.nspname) || '.' || quote_ident(c.relname) END
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1""",
        (schema,),
    ).fetchall()
    return [r[0] for r in rows]


def table_columns(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, str]]:
    """(name, formatted type) of each live column of table, in column order."""
    return [(c.name, c.type) for c in _columns(conn, _table_oid(conn, table))]


def primary_key(conn: psycopg.Connection[Any], table: str) -> list[str]:
    """Primary key columns of table in key order; [] when it has none."""
    rows = conn.execute(
        """SELECT a.attname FROM pg_index i
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, pos)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.pos""",
        (_table_oid(conn, table),),
    ).fetchall()
    return [r[0] for r in rows]


def fingerprint_table(
    url: str,
    table: str,
    columns: list[str] | None = None,
    key: list[str] | None = None,
    workers: int = 2,
) -> Fingerprint:
    """Key and hash of `columns` (default: all) for every row of table, read on `workers` connections.

    key defaults to the primary key. A single int2/int4/int8 key takes the fast path (numpy int64 keys);
    any other key comes back as tuples of the key columns' text. Raises ValueError for a missing table or
    column, a table without primary key and no key given, or a key that is not unique.
    """
    started = time.perf_counter()
    workers = max(1, int(workers))
    with psycopg.connect(url) as leader:
        leader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        oid = _table_oid(leader, table)
        all_columns = {c.name: c for c in _columns(leader, oid)}
        key = list(key) if key else primary_key(leader, table)
        if not key:
            raise ValueError(f"table {table!r} has no primary key: pass key=[...] naming unique columns")
        columns = list(columns) if columns is not None else list(all_columns)
        if not columns:
            raise ValueError(f"table {table!r}: no columns to hash")
        missing = [c for c in [*key, *columns] if c not in all_columns]
        if missing:
            raise ValueError(f"table {table!r} has no column {', '.join(map(repr, dict.fromkeys(missing)))}")
        relation = sql.SQL(
            leader.execute("SELECT %s::regclass::text", (oid,)).fetchone()[0]  # type: ignore[index]
        )
        integer_key = (
            len(key) == 1
            and all_columns[key[0]].builtin
            and all_columns[key[0]].typname in _INTEGER_KEY_TYPES
        )
        ranges = _page_ranges(leader, oid, workers)
        snapshot = None
        if len(ranges) > 1 and workers > 1:
            snapshot = leader.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        query = _select(relation, [all_columns[c] for c in columns], key, integer_key)
        n_lanes = min(workers, len(ranges))
        lanes = [
            ranges[len(ranges) * i // n_lanes : len(ranges) * (i + 1) // n_lanes] for i in range(n_lanes)
        ]

        def run_lane(lane: int) -> list[Any]:
            if lane == 0:
                return [_read_range(leader, query, r, integer_key, table) for r in lanes[0]]
            with psycopg.connect(url) as conn:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
                return [_read_range(conn, query, r, integer_key, table) for r in lanes[lane]]

        with ThreadPoolExecutor(max_workers=len(lanes)) as pool:
            parts = [part for lane_parts in pool.map(run_lane, range(len(lanes))) for part in lane_parts]
        leader.rollback()

    if integer_key:
        keys_arr, hashes = _sorted_integer(parts, table, key)
        return Fingerprint(
            table, key, columns, int(keys_arr.size), keys_arr, hashes, time.perf_counter() - started
        )
    keys_list, hashes = _sorted_text(parts, table, key)
    return Fingerprint(table, key, columns, len(keys_list), keys_list, hashes, time.perf_counter() - started)


def compare_fingerprints(
    baseline: Fingerprint, current: Fingerprint, allow_added: bool = True, first: int = 20
) -> CheckResult:
    """Lost, changed and added keys of current against baseline; ok when none lost or changed."""
    table = baseline.table
    if baseline.columns != current.columns or baseline.key_columns != current.key_columns:
        return CheckResult(
            ok=False,
            summary=(
                f"{table}: cannot compare fingerprints of different columns "
                f"(baseline key {baseline.key_columns} columns {baseline.columns}, "
                f"current key {current.key_columns} columns {current.columns})"
            ),
            evidence={
                "table": table,
                "baseline_columns": baseline.columns,
                "current_columns": current.columns,
                "baseline_key_columns": baseline.key_columns,
                "current_key_columns": current.key_columns,
            },
        )
    if isinstance(baseline.keys, np.ndarray) and isinstance(current.keys, np.ndarray):
        lost, changed, added = _diff_integer(baseline, current)
    else:
        lost, changed, added = _diff_text(baseline, current)

    ok = not lost[0] and not changed[0] and (allow_added or not added[0])
    label = "ids" if len(baseline.key_columns) == 1 else "keys"

    def part(found: tuple[int, list[Any]], noun: str) -> str:
        count, keys = found
        if not count:
            return f"0 {noun}"
        shown = ", ".join(_key_text(k) for k in keys[:5]) + (", …" if count > 5 else "")
        return f"{count} {noun} ({label} {shown})"

    if ok:
        summary = f"{table}: {baseline.count} rows, 0 lost, 0 changed, {added[0]} added"
        if added[0]:
            summary += " (allowed)"
    else:
        lost_noun = "row lost" if lost[0] == 1 else "rows lost"
        added_text = f"{added[0]} added (allowed)" if allow_added and added[0] else part(added, "added")
        summary = f"{table}: {part(lost, lost_noun)}, {part(changed, 'changed')}, {added_text}"
    evidence = {
        "table": table,
        "key_columns": list(baseline.key_columns),
        "columns": list(baseline.columns),
        "baseline_count": int(baseline.count),
        "current_count": int(current.count),
        "lost": {"count": lost[0], "first": lost[1][:first]},
        "changed": {"count": changed[0], "first": changed[1][:first]},
        "added": {"count": added[0], "first": added[1][:first]},
        "allow_added": allow_added,
    }
    return CheckResult(ok=ok, summary=summary, evidence=evidence)


def fingerprint_and_compare(
    url: str, baseline: Fingerprint, workers: int = 2, allow_added: bool = True, first: int = 20
) -> CheckResult:
    """Fingerprint baseline's table again (same key and columns) and compare it with baseline."""
    try:
        current = fingerprint_table(url, baseline.table, baseline.columns, baseline.key_columns, workers)
    except ValueError as err:
        return CheckResult(
            ok=False,
            summary=f"{baseline.table}: cannot fingerprint after the change: {err}",
            evidence={"table": baseline.table, "baseline_count": int(baseline.count), "error": str(err)},
        )
    result = compare_fingerprints(baseline, current, allow_added=allow_added, first=first)
    evidence = {**result.evidence, "elapsed_s": round(current.elapsed_s, 3)}
    return CheckResult(ok=result.ok, summary=result.summary, evidence=evidence, warnings=result.warnings)


def _table_oid(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute("SELECT to_regclass(%s)::oid", (table,)).fetchone()
    if not row or row[0] is None:
        raise ValueError(f"table {table!r} not found (schema-qualify it or check the search_path)")
    return int(row[0])


def _columns(conn: psycopg.Connection[Any], oid: int) -> list[_Column]:
    rows = conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typname, tn.nspname = 'pg_catalog',
                  t.typtype, et.typname, coalesce(etn.nspname = 'pg_catalog', false), et.typtype,
                  coalesce(co.collisdeterministic, true)
           FROM pg_attribute a
           JOIN pg_type t ON t.oid = a.atttypid
           JOIN pg_namespace tn ON tn.oid = t.typnamespace
           LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
           LEFT JOIN pg_namespace etn ON etn.oid = et.typnamespace
           LEFT JOIN pg_collation co ON co.oid = a.attcollation
           WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
        (oid,),
    ).fetchall()
    return [_Column(*row) for row in rows]


def _exact_hash(typname: str | None, builtin: bool, typtype: str | None) -> bool:
    return typtype == "e" or (builtin and typname in _EXACT_HASH_TYPES)


def _hash_input(column: _Column) -> sql.Composable:
    ident = sql.Identifier(column.name)
    if column.element is not None:
        exact = _exact_hash(column.element, column.element_builtin, column.element_typtype)
        if exact and column.element in _TEXT_TYPES and not column.deterministic:
            return sql.SQL('{}::text[] COLLATE "C"').format(ident)
        return ident if exact else sql.SQL("{}::text").format(ident)
    if not _exact_hash(column.typname, column.builtin, column.typtype):
        return sql.SQL("{}::text").format(ident)
    if column.typname in _TEXT_TYPES and not column.deterministic:
        return sql.SQL('{}::text COLLATE "C"').format(ident)
    return ident


def _select(
    relation: sql.Composable, columns: list[_Column], key: list[str], integer_key: bool
) -> sql.Composed:
    row_hash = sql.SQL("hash_record_extended(ROW({}), 0)").format(
        sql.SQL(", ").join(map(_hash_input, columns))
    )
    if integer_key:
        return sql.SQL(
            "SELECT count(*), string_agg(int8send({}::int8) || int8send({}), ''::bytea) FROM {} AS t"
        ).format(sql.Identifier(key[0]), row_hash, relation)
    keys = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in key)
    return sql.SQL("SELECT {}, {} FROM {} AS t").format(keys, row_hash, relation)


def _page_ranges(
    conn: psycopg.Connection[Any], oid: int, workers: int
) -> list[tuple[int, int | None] | None]:
    """Block ranges that split a heap table into equal parts (None: the whole relation in one query)."""
    row = conn.execute(
        """SELECT c.relkind, c.relpages, c.reltuples,
                  pg_relation_size(c.oid) / current_setting('block_size')::int,
                  current_setting('server_version_num')::int
           FROM pg_class c WHERE c.oid = %s""",
        (oid,),
    ).fetchone()
    assert row is not None
    relkind, relpages, reltuples, pages, version = row
    if relkind not in ("r", "m") or version < 140000 or pages <= 1:
        return [None]  # no TID range scans: one query over everything
    density = reltuples / relpages if relpages > 0 and reltuples >= 0 else _MAX_ROWS_PER_PAGE
    parts = max(1, math.ceil(density * pages / _MAX_CHUNK_ROWS))
    parts = min(pages, workers * math.ceil(parts / workers))
    if parts == 1:
        return [None]
    bounds = [pages * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1] if i + 1 < parts else None) for i in range(parts)]


def _read_range(
    conn: psycopg.Connection[Any],
    query: sql.Composed,
    pages: tuple[int, int | None] | None,
    integer_key: bool,
    table: str,
) -> Any:
    if pages is None:
        where: sql.Composable = sql.SQL("")
    else:
        lo, hi = pages
        where = sql.SQL(" WHERE ctid >= {}::tid").format(sql.Literal(f"({lo},0)"))
        if hi is not None:
            where = sql.SQL("{} AND ctid < {}::tid").format(where, sql.Literal(f"({hi},0)"))
    if not integer_key:
        return conn.execute(sql.Composed([query, where])).fetchall()
    row = conn.execute(sql.Composed([query, where]), binary=True).fetchone()
    assert row is not None
    count, data = row
    data = data or b""
    if len(data) != count * _PAIR.itemsize:
        raise ValueError(
            f"table {table!r}: the key has NULL values; pass key=[...] naming non-null unique columns"
        )
    return np.frombuffer(data, dtype=_PAIR)


def _sorted_integer(parts: Sequence[np.ndarray], table: str, key: list[str]) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.concatenate(parts) if parts else np.empty(0, dtype=_PAIR)
    keys = pairs["key"].astype(np.int64)
    hashes = pairs["hash"].astype(np.uint64)
    if keys.size > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        order = np.argsort(keys, kind="stable")
        keys, hashes = keys[order], hashes[order]
        duplicates = int(np.count_nonzero(keys[1:] == keys[:-1]))
        if duplicates:
            raise ValueError(f"table {table!r}: key {key} is not unique ({duplicates} duplicate values)")
    return keys, hashes


def _sorted_text(parts: Sequence[list[Any]], table: str, key: list[str]) -> tuple[list[Key], np.ndarray]:
    rows = sorted(
        (r for part in parts for r in part), key=lambda r: tuple((v is None, v or "") for v in r[:-1])
    )
    keys: list[Key] = [tuple(r[:-1]) for r in rows]
    if len(set(keys)) != len(keys):
        raise ValueError(
            f"table {table!r}: key {key} is not unique ({len(keys) - len(set(keys))} duplicate values)"
        )
    hashes = np.array([r[-1] for r in rows], dtype=np.int64).view(np.uint64)
    return keys, hashes


def _as_u64(hashes: Any) -> np.ndarray:
    array = np.asarray(hashes)
    return array.view(np.uint64) if array.dtype == np.int64 else array.astype(np.uint64)


def _sorted_pair(fp: Fingerprint) -> tuple[np.ndarray, np.ndarray]:
    keys = np.asarray(fp.keys, dtype=np.int64)
    hashes = _as_u64(fp.hashes)
    if keys.size > 1 and not bool(np.all(keys[1:] >= keys[:-1])):
        order = np.argsort(keys, kind="stable")
        return keys[order], hashes[order]
    return keys, hashes


def _diff_integer(baseline: Fingerprint, current: Fingerprint) -> tuple[tuple[int, list[Any]], ...]:
    b_keys, b_hashes = _sorted_pair(baseline)
    c_keys, c_hashes = _sorted_pair(current)
    if b_keys.size == c_keys.size and np.array_equal(b_keys, c_keys):
        changed = b_keys[b_hashes != c_hashes]
        lost = added = np.empty(0, dtype=np.int64)
    elif c_keys.size == 0:
        lost, changed, added = b_keys, np.empty(0, dtype=np.int64), c_keys
    else:
        pos = np.minimum(np.searchsorted(c_keys, b_keys), c_keys.size - 1)
        found = c_keys[pos] == b_keys
        lost = b_keys[~found]
        changed = b_keys[found][b_hashes[found] != c_hashes[pos[found]]]
        unmatched = np.ones(c_keys.size, dtype=bool)
        unmatched[pos[found]] = False
        added = c_keys[unmatched]
    return tuple((int(a.size), a.tolist()) for a in (lost, changed, added))


def _text_keys(fp: Fingerprint) -> list[Key]:
    if isinstance(fp.keys, np.ndarray):  # integer keys compared with text keys: the key type changed
        return [(str(int(k)),) for k in fp.keys]
    return [tuple(k) for k in fp.keys]


def _diff_text(baseline: Fingerprint, current: Fingerprint) -> tuple[tuple[int, list[Any]], ...]:
    b_keys, c_keys = _text_keys(baseline), _text_keys(current)
    b_map = dict(zip(b_keys, _as_u64(baseline.hashes).tolist(), strict=True))
    c_map = dict(zip(c_keys, _as_u64(current.hashes).tolist(), strict=True))
    lost = [k for k in b_keys if k not in c_map]
    changed = [k for k in b_keys if k in c_map and c_map[k] != b_map[k]]
    added = [k for k in c_keys if k not in b_map]
    single = len(baseline.key_columns) == 1
    return tuple((len(ks), [k[0] if single else list(k) for k in ks]) for ks in (lost, changed, added))


def _key_text(key: Any) -> str:
    if isinstance(key, list | tuple):
        return "(" + ", ".join(_key_text(k) for k in key) + ")"
    return str(key)


def _file_stem(table: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", table)

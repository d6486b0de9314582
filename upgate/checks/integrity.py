"""Row-level fingerprints that prove a migration lost or changed no preserved row, in bounded memory.

A fingerprint is, per row, its key and a 64-bit hash of the preserved columns, computed by PostgreSQL
(each field by the hash function `hash_record_extended` would call, seeded by its position, XORed: shifted
field boundaries, swapped values and NULL vs '' differ) and read back in bulk, one block range at a time,
on parallel connections that share one snapshot.

    >>> before = fingerprint_table(url, "episodic_logs")                  # doctest: +SKIP
    >>> fingerprint_and_compare(url, before).summary                      # doctest: +SKIP
    'episodic_logs: 100000 rows, 0 lost, 0 changed, 0 added'

Keys (`Fingerprint.key_kind`): a single integer column is kept as it is ("integer"); any other key
(text, uuid, timestamps, composite keys of any arity) is kept as a 64-bit hash of the key tuple
("hashed"), its readable form streamed to a side file so that lost keys can still be named; a table
without a key is compared as a multiset of row hashes ("rows"). Memory: 16 bytes per row (8 for a
keyless table), 24 while rows that did not arrive in key order are sorted in place; verification
streams the table against the baseline and adds 1 byte per row. No Python object is made per row.

Columns whose type has no exact 64-bit hash (numeric ignores scale, json has none, interval equates
'1 day' with '24 hours', domains, composites, ranges...) are hashed through their text form, under
pinned DateStyle/IntervalStyle settings. jsonb and float columns keep their native hash: jsonb
{"a": 1.0} equals {"a": 1.00}, and -0.0 equals 0.0. A column retyped compatibly (integer -> bigint,
varchar(n) -> text, numeric(8,2) -> numeric(12,4), timestamp -> timestamptz) is hashed as the type
the baseline recorded (`Fingerprint.types`), so a value that did not change compares equal; a
timestamp is read as an instant in the TimeZone of the baseline's session, as PostgreSQL's own cast does.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, Any

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
# PostgreSQL's cross-type hash operator families: equal values hash alike across the members.
_HASH_FAMILY = {"int2": "integer", "int4": "integer", "int8": "integer", "float4": "float", "float8": "float",
                "text": "text", "varchar": "text", "name": "text"}  # fmt: skip
_CHUNK_ROWS = 32_768  # rows per query: 0.75 MB of (key, hash) per result, whatever the table size
_MAX_ROWS_PER_PAGE = 291  # MaxHeapTuplesPerPage for 8 kB pages: the estimate when stats are missing
_BLOCK = 1 << 20  # elements per pass of the block-wise loops below (8 MB temporaries at most)
_MERGE_ROWS = 65_536  # rows placed per step when chunks are merged into key order (1.5 MB of temporaries)
_FENCE = 512  # every _FENCE-th key of a chunk is a candidate merge threshold
# A chunk's rows leave the server as one bytea: per row int8send(key) || int8send(row hash), 16 big-endian
# bytes (8 without a key), concatenated by string_agg. array_send(array_agg(...)) of two int8[] costs a
# function call and an allocation per element on the way out, and 24 bytes a row: 2.5x the overhead over
# the bare hashed scan on the server (measured: bench/integrity.py).
_PAIR = np.dtype([("key", ">i8"), ("hash", ">i8")])
_SINGLE = np.dtype(">i8")
_FORMAT = 3  # 3: per-field hashes XORed (_tuple_hash); 1 and 2 hashed whole records
_NAMES_SUFFIX = ".key-names.txt"
# Session settings that change the text form of values hashed through text: pinned on every connection.
_PINNED_SETTINGS = (("DateStyle", "ISO, MDY"), ("IntervalStyle", "postgres"), ("extra_float_digits", "1"),
                    ("bytea_output", "hex"))  # fmt: skip
# A type name as format_type prints it: `numeric(12,4)`, `timestamp(3) with time zone`, `"App".mood[]`.
_TYPE_NAME = re.compile(r'^[A-Za-z_"][A-Za-z0-9_ ."]*(\(\s*\d+\s*(,\s*\d+\s*)?\))?[A-Za-z ]*(\[\])*$')

INTEGER, HASHED, ROWS = "integer", "hashed", "rows"


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
    """Row hashes of one table, sorted by key.

    `keys` (int64) holds the integer key (`key_kind` "integer") or the 64-bit hash of the key tuple
    ("hashed", with `key_names` naming them); a keyless table ("rows") has no keys and its row hashes
    sorted. `types` is the type each column was hashed as, `timezone` the session's TimeZone.
    """

    table: str
    key_columns: list[str]
    columns: list[str]
    count: int
    keys: np.ndarray
    hashes: np.ndarray
    elapsed_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    key_kind: str = ""
    types: dict[str, str] = field(default_factory=dict)
    key_seed: int = 0
    timezone: str | None = None
    key_names: Path | None = None

    def __post_init__(self) -> None:
        if not self.key_kind:
            self.key_kind = INTEGER if self.key_columns else ROWS
        if self.key_kind not in (INTEGER, HASHED, ROWS):
            raise ValueError(f"unknown key kind {self.key_kind!r}")
        self.keys = np.asarray(self.keys, dtype=np.int64)
        self.hashes = _as_u64(self.hashes)

    @property
    def integer_keys(self) -> bool:
        return self.key_kind == INTEGER

    def save(self, folder: Path) -> Path:
        """Write `<table>.json` (metadata), `<table>.keys.npy`, `<table>.hashes.npy` and, for hashed keys,
        `<table>.key-names.txt` into folder. Returns the json's path.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = _file_stem(self.table)
        for name, array in (("keys", self.keys), ("hashes", self.hashes)):
            with (folder / f"{stem}.{name}.npy").open("wb") as f:  # a real file: written without a copy
                np.save(f, array)
        names_file = None
        if self.key_names is not None:
            target = folder / f"{stem}{_NAMES_SUFFIX}"
            if Path(self.key_names).resolve() != target.resolve():
                shutil.copyfile(self.key_names, target)
            self.key_names, names_file = target, target.name
        meta = {
            "format": _FORMAT,
            "table": self.table,
            "key_kind": self.key_kind,
            "key_columns": self.key_columns,
            "columns": self.columns,
            "types": self.types,
            "key_seed": self.key_seed,
            "timezone": self.timezone,
            "key_names": names_file,
            "count": self.count,
            "elapsed_s": self.elapsed_s,
            "meta": self.meta,
        }
        path = folder / f"{stem}.json"
        path.write_text(json.dumps(meta, indent=2, default=str))
        return path

    @staticmethod
    def load_meta(folder: Path, table: str) -> dict[str, Any]:
        """The metadata `save` wrote (table, key and hashed columns, types, count), without the arrays."""
        stem = _file_stem(table)
        path = Path(folder) / f"{stem}.json"
        if not path.exists():
            raise ValueError(f"no fingerprint of table {table!r} in {folder} (expected {path.name})")
        meta: dict[str, Any] = json.loads(path.read_text())
        if _file_stem(str(meta.get("table"))) != stem:
            raise ValueError(f"{path} holds the fingerprint of {meta.get('table')!r}, not {table!r}")
        return meta

    @classmethod
    def load(cls, folder: Path, table: str) -> Fingerprint:
        """Read a fingerprint written by `save` (table: its name, or the file stem `save` made of it)."""
        stem = _file_stem(table)
        meta = cls.load_meta(folder, table)
        path = Path(folder) / f"{stem}.json"
        version = int(meta.get("format", 1))
        if version != _FORMAT:  # another row hash: every row would read as changed
            raise ValueError(f"{path}: a fingerprint of format {version}, written by "
                             f"{'an older' if version < _FORMAT else 'a newer'} upgate (this one reads format "
                             f"{_FORMAT}); capture the baseline again")
        keys = np.load(Path(folder) / f"{stem}.keys.npy", allow_pickle=False)
        hashes = np.load(Path(folder) / f"{stem}.hashes.npy", allow_pickle=False)
        names = meta.get("key_names")
        return cls(
            table=meta["table"],
            key_columns=list(meta["key_columns"]),
            columns=list(meta["columns"]),
            count=int(meta["count"]),
            keys=keys,
            hashes=hashes,
            elapsed_s=float(meta.get("elapsed_s", 0.0)),
            meta=dict(meta.get("meta", {})),
            key_kind=str(meta.get("key_kind", INTEGER)),
            types=dict(meta.get("types", {})),
            key_seed=int(meta.get("key_seed", 0)),
            timezone=meta.get("timezone"),
            key_names=Path(folder) / names if names else None,
        )


@dataclass
class Damage:
    """Every difference between a baseline and the table now, compactly: int64 arrays, 8 bytes a row.

    The arrays hold keys ("integer"), key hashes ("hashed": `Fingerprint.key_names` and `name_keys`
    turn them into keys) or row hashes ("rows", one entry per lost or added copy; a changed row of a
    keyless table is one lost and one added). `attributed` counts the differences left out because
    the caller named them in `ignore` (for example writes of live traffic).
    """

    table: str
    key_kind: str
    lost: np.ndarray
    changed: np.ndarray
    added: np.ndarray
    baseline_count: int
    current_count: int
    attributed: dict[str, int] = field(default_factory=lambda: {"lost": 0, "changed": 0, "added": 0})
    elapsed_s: float = 0.0

    @property
    def empty(self) -> bool:
        return not (self.lost.size or self.changed.size or self.added.size)

    def save(self, folder: Path) -> Path:
        """Write the full lists to `<folder>/<table>.damage.npz` for a later repair; returns the path."""
        path = Path(folder) / f"{_file_stem(self.table)}.damage.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez(f, lost=self.lost, changed=self.changed, added=self.added,
                     meta=np.array(json.dumps({"table": self.table, "key_kind": self.key_kind,
                                               "baseline_count": self.baseline_count,
                                               "current_count": self.current_count,
                                               "attributed": self.attributed})))
        return path

    @classmethod
    def load(cls, folder: Path, table: str) -> Damage:
        with np.load(Path(folder) / f"{_file_stem(table)}.damage.npz", allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return cls(meta["table"], meta["key_kind"], data["lost"], data["changed"], data["added"],
                       int(meta["baseline_count"]), int(meta["current_count"]), dict(meta["attributed"]))


# --------------------------------------------------------------------------------------------- tables


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


def split_excluded(tables: Iterable[str], patterns: Iterable[str]) -> tuple[list[str], list[str]]:
    """(kept, excluded): tables whose name matches none / one of the glob patterns, case-insensitively.

    A pattern matches the bare table name or the schema-qualified one, quotes left out:
    `split_excluded(['"__EFMigrationsHistory"', 'logs'], ['__efmigrationshistory'])` excludes the first.
    """
    lowered = [p.lower() for p in patterns]
    kept: list[str] = []
    excluded: list[str] = []
    for table in tables:
        plain = table.replace('"', "").lower()
        bare = plain.rsplit(".", 1)[-1]
        hit = any(fnmatchcase(bare, p) or fnmatchcase(plain, p) for p in lowered)
        (excluded if hit else kept).append(table)
    return kept, excluded


def table_columns(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, str]]:
    """(name, formatted type) of each live column of table, in column order."""
    return [(c.name, c.type) for c in _columns(conn, _table_oid(conn, table))]


def primary_key(conn: psycopg.Connection[Any], table: str | int) -> list[str]:
    """Primary key columns of table (a name, or its oid) in key order; [] when it has none."""
    rows = conn.execute(
        """SELECT a.attname FROM pg_index i
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, pos)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.pos""",
        (table if isinstance(table, int) else _table_oid(conn, table),),
    ).fetchall()
    return [r[0] for r in rows]


# ------------------------------------------------------------------------------------------- capture


def fingerprint_table(
    url: str,
    table: str,
    columns: list[str] | None = None,
    key: list[str] | None = None,
    workers: int = 2,
    *,
    as_types: dict[str, str] | None = None,
    key_seed: int | None = None,
    timezone: str | None = None,
    name_keys: bool = True,
    snapshot: str | None = None,
) -> Fingerprint:
    """Key and hash of `columns` (default: all) for every row of table, read on `workers` connections.

    key defaults to the primary key; a table without one (or `key=[]`) is fingerprinted as a multiset of
    row hashes. `as_types` hashes a column as another type (`{"score": "numeric(12,4)"}`: the type a
    planned migration gives it). `key_seed` fixes the seed of hashed keys (default: 1, and another one
    should two keys hash alike); `timezone` the session TimeZone (default: the server's); `name_keys`
    writes the readable form of hashed keys to a side file (`Fingerprint.key_names`); `snapshot` reads the
    table as an exported snapshot shows it (`pg_export_snapshot()`, held open by its exporter: the baseline a
    live capture and the backup share). Raises ValueError for a missing table or column, or a key that is not
    unique; psycopg.Error when the database fails.
    """
    retries = 0 if key_seed is not None else 2
    seed = 1 if key_seed is None else key_seed
    while True:
        try:
            return _capture(url, table, columns, key, workers, as_types, seed, timezone, name_keys, snapshot)
        except _KeyHashCollision:
            if retries == 0:
                raise ValueError(f"table {table!r}: key {key or '(primary key)'} is not unique") from None
            retries -= 1
            seed += 1


class _KeyHashCollision(Exception):
    """Two rows share a 64-bit key hash: a duplicate key, or (rarely) two keys that hash alike."""


def _capture(
    url: str, table: str, columns: list[str] | None, key: list[str] | None, workers: int,
    as_types: dict[str, str] | None, seed: int, timezone: str | None, name_keys: bool, snapshot: str | None = None,
) -> Fingerprint:
    started = time.perf_counter()
    with _scan_plan(url, table, columns, key, workers, as_types, seed, timezone, None, snapshot) as plan:
        names_path: str | None = None
        names_file: IO[str] | None = None
        if plan.kind == HASHED and name_keys:
            fd, names_path = tempfile.mkstemp(prefix="upgate-keys-", suffix=_NAMES_SUFFIX)
            names_file = os.fdopen(fd, "w", encoding="utf-8")
        try:
            collector = _Collector(plan.kind, names_file)
            _scan(url, plan, workers, collector, with_names=names_file is not None)
        except BaseException:
            _unlink_quietly(names_path)
            raise
        finally:
            if names_file is not None:
                names_file.close()
    keys, hashes = collector.assemble()
    if plan.kind == ROWS:
        hashes.sort()
    else:
        duplicates = _count_duplicates(keys)
        if duplicates:
            _unlink_quietly(names_path)
            if plan.kind == HASHED:
                raise _KeyHashCollision()
            raise ValueError(f"table {table!r}: key {plan.key} is not unique ({duplicates} duplicate values)")
    fingerprint = Fingerprint(
        table, plan.key, plan.columns, int(hashes.size), keys, hashes, time.perf_counter() - started,
        key_kind=plan.kind, types=plan.types, key_seed=plan.key_seed if plan.kind == HASHED else 0,
        timezone=plan.timezone, key_names=Path(names_path) if names_path else None,
    )
    if names_path:
        weakref.finalize(fingerprint, _unlink_quietly, names_path)
    return fingerprint


def _unlink_quietly(path: str | None) -> None:
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)


@dataclass
class _Run:
    """One chunk's rows, sorted by key, each array in its own anonymous mapping."""

    keys: np.ndarray | None
    hashes: np.ndarray
    maps: list[mmap.mmap]
    taken: int = 0  # rows already merged out
    released: int = 0  # bytes per array already given back to the OS

    def release(self, upto: int | None = None) -> None:
        """Give back the pages holding rows before `upto` (None: all of it, closing the mappings)."""
        if upto is None:
            self.keys = None
            self.hashes = np.empty(0, dtype=np.uint64)
            for m in self.maps:
                m.close()
            self.maps = []
            return
        end = upto * 8 // mmap.PAGESIZE * mmap.PAGESIZE
        if end > self.released:
            for m in self.maps:
                m.madvise(mmap.MADV_DONTNEED, self.released, end - self.released)
            self.released = end


class _Collector:
    """Chunks as they arrive, each sorted by key and kept in its own anonymous mapping until assembled."""

    def __init__(self, kind: str, names: IO[str] | None) -> None:
        self.kind = kind
        self.names = names
        self.runs: dict[int, _Run] = {}
        self.lock = threading.Lock()

    def __call__(self, index: int, count: int, chunk_keys: np.ndarray | None, chunk_hashes: np.ndarray,
                 names: str | None) -> None:
        maps: list[mmap.mmap] = []
        hashes = _mapped(count, np.uint64, maps)
        keys = None
        if chunk_keys is not None:
            keys = _mapped(count, np.int64, maps)
            keys[:] = chunk_keys
            if not _is_sorted(keys):
                order = np.argsort(keys, kind="stable")
                keys[:] = keys[order]
                chunk_hashes = chunk_hashes[order]
        hashes[:] = chunk_hashes
        with self.lock:
            self.runs[index] = _Run(keys, hashes, maps)
            if self.names is not None and names:
                self.names.write("\n" + names)

    def assemble(self) -> tuple[np.ndarray, np.ndarray]:
        """All rows in one keys and one hashes array, in key order (keyless: in chunk order).

        Runs that follow each other in key order are copied; any other order is merged. Either way a run's
        memory goes back to the OS as it is consumed: resident memory stays near 16 bytes per row.
        """
        runs = [self.runs.pop(index) for index in sorted(self.runs)]
        total = sum(int(r.hashes.size) for r in runs)
        # np.empty commits no page until written: resident memory grows as the runs shrink.
        hashes = np.empty(total, dtype=np.uint64)
        keys = np.empty(0 if self.kind == ROWS else total, dtype=np.int64)
        for run in runs:
            if not run.hashes.size:
                run.release()
        runs = [r for r in runs if r.hashes.size]
        if self.kind != ROWS and not _chained(runs):
            _merge_runs(runs, keys, hashes)
            return keys, hashes
        at = 0
        for run in runs:
            n = int(run.hashes.size)
            hashes[at : at + n] = run.hashes
            if run.keys is not None:
                keys[at : at + n] = run.keys
            run.release()
            at += n
        return keys, hashes


def _chained(runs: Sequence[_Run]) -> bool:
    """Whether each run's keys all come after the previous run's (a heap stored in key order)."""
    return all(a.keys is not None and b.keys is not None and a.keys[-1] < b.keys[0] for a, b in zip(runs, runs[1:], strict=False))


def _merge_runs(runs: Sequence[_Run], keys: np.ndarray, hashes: np.ndarray) -> None:
    """Merge sorted runs into keys and hashes, _MERGE_ROWS at a time, giving back each run's pages as it goes.

    Every _FENCE-th key of every run, sorted, gives the thresholds: a step places all rows up to the next
    threshold from every run (a searchsorted per run) in key order (`_place`).
    """
    fences = np.sort(np.concatenate([r.keys[_FENCE - 1 :: _FENCE] for r in runs if r.keys is not None]))
    step = max(1, _MERGE_ROWS // _FENCE)
    thresholds: list[int | None] = [int(v) for v in fences[step - 1 :: step]]
    at = 0
    for threshold in [*thresholds, None]:
        piece_keys: list[np.ndarray] = []
        piece_hashes: list[np.ndarray] = []
        for run in runs:
            assert run.keys is not None
            start = run.taken
            if start == run.keys.size or (threshold is not None and run.keys[start] > threshold):
                continue
            end = run.keys.size if threshold is None else start + int(np.searchsorted(run.keys[start:], threshold,
                                                                                        "right"))
            if end > start:
                piece_keys.append(run.keys[start:end])
                piece_hashes.append(run.hashes[start:end])
                run.taken = end
        if not piece_keys:
            continue
        at = _place(piece_keys, piece_hashes, keys, hashes, at)
        del piece_keys, piece_hashes
        for run in runs:
            run.release(run.taken)
    for run in runs:
        run.release()
    assert at == keys.size


def _place(piece_keys: list[np.ndarray], piece_hashes: list[np.ndarray], keys: np.ndarray, hashes: np.ndarray,
           at: int) -> int:
    """Write one merge step's pieces (each sorted) into keys and hashes from `at`, in key order; returns the end.

    Runs of a heap in near key order overlap only where rows were stored out of order: whatever of the
    lowest piece comes before every other piece, and whatever of the highest comes after every other, is
    copied as it is; only the overlap in between is sorted.
    """
    pieces = [(k, h) for k, h in zip(piece_keys, piece_hashes, strict=True) if k.size]
    tail: list[tuple[np.ndarray, np.ndarray]] = []
    while len(pieces) > 1:
        low = min(range(len(pieces)), key=lambda i: int(pieces[i][0][0]))
        others_first = min(int(k[0]) for i, (k, _) in enumerate(pieces) if i != low)
        cut = int(np.searchsorted(pieces[low][0], others_first, "left"))
        high = max(range(len(pieces)), key=lambda i: int(pieces[i][0][-1]))
        others_last = max(int(k[-1]) for i, (k, _) in enumerate(pieces) if i != high)
        keep = int(np.searchsorted(pieces[high][0], others_last, "right"))
        if cut == 0 and keep == pieces[high][0].size:
            break
        if cut:
            k, h = pieces[low]
            at = _copy_into(k[:cut], h[:cut], keys, hashes, at)
            pieces[low] = (k[cut:], h[cut:])
        elif keep < pieces[high][0].size:
            k, h = pieces[high]
            tail.insert(0, (k[keep:], h[keep:]))
            pieces[high] = (k[:keep], h[:keep])
        pieces = [p for p in pieces if p[0].size]
    if len(pieces) == 1:
        at = _copy_into(*pieces[0], keys, hashes, at)
    elif pieces:
        step_keys = np.concatenate([k for k, _ in pieces])
        step_hashes = np.concatenate([h for _, h in pieces])
        by_key = np.argsort(step_keys, kind="stable")  # timsort: a merge of the sorted pieces
        n = int(step_keys.size)
        np.take(step_keys, by_key, out=keys[at : at + n], mode="clip")  # mode "raise" would buffer out
        np.take(step_hashes, by_key, out=hashes[at : at + n], mode="clip")
        at += n
    for k, h in tail:
        at = _copy_into(k, h, keys, hashes, at)
    return at


def _copy_into(piece_keys: np.ndarray, piece_hashes: np.ndarray, keys: np.ndarray, hashes: np.ndarray, at: int) -> int:
    n = int(piece_keys.size)
    keys[at : at + n] = piece_keys
    hashes[at : at + n] = piece_hashes
    return at + n


def _mapped(count: int, dtype: type[np.generic], maps: list[mmap.mmap]) -> np.ndarray:
    """An array in its own anonymous mapping: its pages go back to the OS as soon as it is released."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)  # faulted in at once
    mapping = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize), flags=flags)
    maps.append(mapping)
    return np.frombuffer(mapping, dtype=dtype, count=count)


def _is_sorted(keys: np.ndarray) -> bool:
    for lo in range(0, max(0, keys.size - 1), _BLOCK):
        hi = min(lo + _BLOCK, keys.size - 1)
        if not bool(np.all(keys[lo + 1 : hi + 1] >= keys[lo:hi])):
            return False
    return True


def _count_duplicates(keys: np.ndarray) -> int:
    found = 0
    for lo in range(0, max(0, keys.size - 1), _BLOCK):
        hi = min(lo + _BLOCK, keys.size - 1)
        found += int(np.count_nonzero(keys[lo + 1 : hi + 1] == keys[lo:hi]))
    return found


# ------------------------------------------------------------------------------------------- compare


def compare_fingerprints(
    baseline: Fingerprint,
    current: Fingerprint,
    allow_added: bool = True,
    first: int = 20,
    ignore: Collection[int] | np.ndarray | None = None,
) -> CheckResult:
    """Lost, changed and added keys of current against baseline; ok when none lost or changed."""
    problem = _incomparable(baseline, current)
    if problem is not None:
        return problem
    damage = diff_fingerprints(baseline, current, ignore)
    names = _names_from_files([baseline.key_names, current.key_names], damage, first)
    return judge(baseline, damage, allow_added=allow_added, first=first, names=names)


def diff_fingerprints(
    baseline: Fingerprint, current: Fingerprint, ignore: Collection[int] | np.ndarray | None = None
) -> Damage:
    """Every lost, changed and added key (or row hash) of current against baseline, as arrays."""
    if baseline.key_kind == ROWS:
        b_hashes, c_hashes = np.sort(baseline.hashes), np.sort(current.hashes)
        lost = _multiset_minus(b_hashes, c_hashes).view(np.int64)
        added = _multiset_minus(c_hashes, b_hashes).view(np.int64)
        changed = np.empty(0, dtype=np.int64)
    else:
        b_keys, b_hashes = _sorted_pair(baseline)
        c_keys, c_hashes = _sorted_pair(current)
        lost, changed, added = _diff_sorted(b_keys, b_hashes, c_keys, c_hashes)
    return _attribute(Damage(baseline.table, baseline.key_kind, lost, changed, added, baseline.count,
                             current.count), ignore)


def diff_table(
    url: str, baseline: Fingerprint, workers: int = 2, ignore: Collection[int] | np.ndarray | None = None
) -> Damage:
    """Stream the table as it is now against baseline (same key, columns, types): every difference.

    Keyed tables are never held in memory: each block of rows is matched against the baseline as it
    arrives (1 byte per baseline row marks the keys seen). Raises like `fingerprint_table`.
    """
    started = time.perf_counter()
    with _scan_plan(url, baseline.table, baseline.columns, baseline.key_columns, workers, baseline.types,
                    baseline.key_seed, baseline.timezone, baseline.key_kind) as plan:
        if plan.kind == ROWS:
            collector = _Collector(ROWS, None)
            _scan(url, plan, workers, collector, with_names=False)
            matcher = None
        else:
            matcher = _Matcher(baseline)
            _scan(url, plan, workers, matcher, with_names=False)
    if matcher is None:
        _, current = collector.assemble()
        current.sort()
        base = np.sort(baseline.hashes) if not _is_sorted(baseline.hashes) else baseline.hashes
        damage = Damage(baseline.table, ROWS, _multiset_minus(base, current).view(np.int64), np.empty(0, np.int64),
                        _multiset_minus(current, base).view(np.int64), baseline.count, int(current.size))
    else:
        damage = matcher.damage()
    damage.elapsed_s = time.perf_counter() - started
    return _attribute(damage, ignore)


def fingerprint_and_compare(
    url: str,
    baseline: Fingerprint,
    workers: int = 2,
    allow_added: bool = True,
    first: int = 20,
    ignore: Collection[int] | np.ndarray | None = None,
) -> CheckResult:
    """Fingerprint baseline's table again (same key, columns and types) and compare it with baseline.

    The evidence names the first `first` keys of each kind; `diff_table` returns all of them.
    """
    result, _damage = verify_table(url, baseline, workers, allow_added, first, ignore)
    return result


def verify_table(
    url: str,
    baseline: Fingerprint,
    workers: int = 2,
    allow_added: bool = True,
    first: int = 20,
    ignore: Collection[int] | np.ndarray | None = None,
) -> tuple[CheckResult, Damage | None]:
    """`fingerprint_and_compare` that also returns the full `Damage` (None when the table cannot be read)."""
    try:
        damage = diff_table(url, baseline, workers, ignore)
    except (ValueError, psycopg.Error) as err:
        reason = _first_line(err)
        return CheckResult(
            ok=False,
            summary=f"{baseline.table}: cannot fingerprint after the change: {reason}",
            evidence={"table": baseline.table, "baseline_count": int(baseline.count), "error": reason},
        ), None
    names: dict[int, Any] = {}
    if not damage.empty:
        names = _names_from_files([baseline.key_names], damage, first)
        failing = damage.lost.size or damage.changed.size or (damage.added.size and not allow_added)
        if failing:
            names.update(_names_from_table(url, baseline, damage, first, known=names))
    result = judge(baseline, damage, allow_added=allow_added, first=first, names=names)
    evidence = {**result.evidence, "elapsed_s": round(damage.elapsed_s, 3)}
    return CheckResult(ok=result.ok, summary=result.summary, evidence=evidence, warnings=result.warnings), damage


def judge(
    baseline: Fingerprint,
    damage: Damage,
    allow_added: bool = True,
    first: int = 20,
    names: dict[int, Any] | None = None,
    attributed_to: str = "",
) -> CheckResult:
    """The verdict on a `Damage`: ok when nothing was lost or changed (and nothing added, if refused).

    `attributed_to` names where the differences left out (`Damage.attributed`) went, for the summary.
    """
    names = names or {}
    table = baseline.table
    rows = damage.key_kind == ROWS
    lost_n, changed_n, added_n = int(damage.lost.size), int(damage.changed.size), int(damage.added.size)
    ok = not lost_n and not changed_n and (allow_added or not added_n)
    label = "ids" if damage.key_kind == INTEGER and len(baseline.key_columns) == 1 else "keys"
    listed = {kind: _listing(damage, kind, names, first) for kind in ("lost", "changed", "added")}

    def part(kind: str, count: int, noun: str) -> str:
        if not count:
            return f"0 {noun}"
        items = listed[kind][:5]
        if rows:
            shown = ", ".join(_row_text(item) for item in items)
            more = len(listed[kind]) > 5 or sum(i["copies"] for i in items) < count
            return f"{count} {noun} ({shown}{', …' if more else ''})"
        shown = ", ".join(_key_text(k) for k in items)
        return f"{count} {noun} ({label} {shown}{', …' if count > 5 else ''})"

    if ok:
        summary = f"{table}: {baseline.count} rows, 0 lost, 0 changed, {added_n} added"
        if added_n:
            summary += " (allowed)"
    else:
        lost_noun = "row lost" if lost_n == 1 else "rows lost"
        added_text = f"{added_n} added (allowed)" if allow_added and added_n else part("added", added_n, "added")
        summary = f"{table}: {part('lost', lost_n, lost_noun)}, {part('changed', changed_n, 'changed')}, {added_text}"
    if rows:
        summary += " (no key: compared as a multiset of rows)"
    attributed = {k: int(v) for k, v in damage.attributed.items()}
    if any(attributed.values()):
        summary += f" (attributed {f'to {attributed_to}' if attributed_to else 'elsewhere'}: " + ", ".join(f"{v} {k}" for k, v in attributed.items() if v) + ")"
    evidence = {
        "table": table,
        "key_kind": damage.key_kind,
        "key_columns": list(baseline.key_columns),
        "columns": list(baseline.columns),
        "hashed_as": {c: t for c, t in baseline.types.items() if c in baseline.columns or c in baseline.key_columns},
        "baseline_count": int(damage.baseline_count),
        "current_count": int(damage.current_count),
        "lost": {"count": lost_n, "first": listed["lost"]},
        "changed": {"count": changed_n, "first": listed["changed"]},
        "added": {"count": added_n, "first": listed["added"]},
        "allow_added": allow_added,
        "attributed": attributed,
    }
    return CheckResult(ok=ok, summary=summary, evidence=evidence)


def _listing(damage: Damage, kind: str, names: dict[int, Any], first: int) -> list[Any]:
    values: np.ndarray = getattr(damage, kind)
    if damage.key_kind == INTEGER:
        return [int(v) for v in values[:first]]
    if damage.key_kind == HASHED:
        return [names.get(int(v), _hash_text(int(v))) for v in values[:first]]
    distinct, copies = np.unique(values, return_counts=True)
    order = np.argsort(-copies, kind="stable")[:first]
    return [{"row_hash": _hash_text(int(distinct[i])), "copies": int(copies[i]),
             "row": names.get(int(distinct[i]))} for i in order]


def _incomparable(baseline: Fingerprint, current: Fingerprint) -> CheckResult | None:
    if (baseline.columns == current.columns and baseline.key_columns == current.key_columns
            and baseline.key_kind == current.key_kind and baseline.key_seed == current.key_seed):
        return None
    return CheckResult(
        ok=False,
        summary=(
            f"{baseline.table}: cannot compare fingerprints of different columns "
            f"(baseline key {baseline.key_columns} ({baseline.key_kind}) columns {baseline.columns}, "
            f"current key {current.key_columns} ({current.key_kind}) columns {current.columns})"
        ),
        evidence={
            "table": baseline.table,
            "baseline_columns": baseline.columns,
            "current_columns": current.columns,
            "baseline_key_columns": baseline.key_columns,
            "current_key_columns": current.key_columns,
        },
    )


def _attribute(damage: Damage, ignore: Collection[int] | np.ndarray | None) -> Damage:
    if ignore is None:
        return damage
    ignored = np.unique(np.asarray(list(ignore) if not isinstance(ignore, np.ndarray) else ignore).astype(np.int64))
    if not ignored.size:
        return damage
    for kind in ("lost", "changed", "added"):
        values: np.ndarray = getattr(damage, kind)
        hit = np.isin(values, ignored)
        damage.attributed[kind] = damage.attributed.get(kind, 0) + int(np.count_nonzero(hit))
        setattr(damage, kind, values[~hit])
    return damage


class _Matcher:
    """Matches each block of (key, hash) against the sorted baseline as it arrives."""

    def __init__(self, baseline: Fingerprint) -> None:
        self.baseline = baseline
        self.keys, self.hashes = _sorted_pair(baseline)
        self.seen = np.zeros(self.keys.size, dtype=bool)
        self.changed: list[np.ndarray] = []
        self.added: list[np.ndarray] = []
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, index: int, count: int, chunk_keys: np.ndarray | None, chunk_hashes: np.ndarray,
                 names: str | None) -> None:
        assert chunk_keys is not None
        keys = chunk_keys.astype(np.int64)
        hashes = chunk_hashes.astype(np.uint64)
        base = self.keys
        in_order = _is_sorted(keys)
        lo = hi = 0
        if keys.size and base.size:
            # The baseline's slice this block's keys span: for a heap in near key order that is about the
            # block's own size, and stays in cache.
            first, last = (keys[0], keys[-1]) if in_order else (keys.min(), keys.max())
            lo = int(np.searchsorted(base, first))
            hi = min(int(np.searchsorted(base, last, "right")), base.size)
        if in_order and hi - lo == keys.size and np.array_equal(base[lo:hi], keys):
            # The block is a run of the baseline (a heap in key order, no row added): no search.
            matched: np.ndarray | slice = slice(lo, hi)
            changed = keys[self.hashes[lo:hi] != hashes]
            added = keys[:0]
        else:
            if hi > lo and int(base[hi - 1]) - int(base[lo]) == hi - lo - 1:
                # The slice is every integer from base[lo] up (a serial key without gaps there): a key's
                # position is its offset; keys outside the slice land on its ends and do not match.
                pos = keys - base[lo]
                pos += lo
                np.clip(pos, lo, hi - 1, out=pos)
            else:
                pos = np.searchsorted(base[lo:hi], keys) if hi > lo else np.zeros(keys.size, dtype=np.intp)
                pos += lo
                np.minimum(pos, max(base.size - 1, 0), out=pos)
            found = base[pos] == keys if base.size else np.zeros(keys.size, dtype=bool)
            if found.all():
                matched, changed, added = pos, keys[self.hashes[pos] != hashes], keys[:0]
            else:
                matched = pos[found]
                changed = keys[found][self.hashes[matched] != hashes[found]]
                added = keys[~found]  # a new key read twice is refused with all of them (`damage`)
        with self.lock:
            # A key seen before, in this block or an earlier one, is a duplicate: every matched position
            # lies in [lo, hi), so the newly marked ones must number exactly the matched keys.
            before = int(np.count_nonzero(self.seen[lo:hi]))
            self.seen[matched] = True
            if int(np.count_nonzero(self.seen[lo:hi])) - before != keys.size - added.size:
                raise ValueError(f"table {self.baseline.table!r}: key {self.baseline.key_columns} is not unique now")
            self.count += count
            if changed.size:
                self.changed.append(changed)
            if added.size:
                self.added.append(added)

    def damage(self) -> Damage:
        lost = [self.keys[lo : lo + _BLOCK][~self.seen[lo : lo + _BLOCK]] for lo in range(0, self.keys.size, _BLOCK)]
        added = np.sort(_concat(self.added))
        if _count_duplicates(added):  # a new key read twice, in one block or in two
            raise ValueError(f"table {self.baseline.table!r}: key {self.baseline.key_columns} is not unique now")
        return Damage(self.baseline.table, self.baseline.key_kind, _concat(lost), np.sort(_concat(self.changed)),
                      added, self.baseline.count, self.count)


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.empty(0, dtype=np.int64)


def _multiset_minus(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elements of sorted a not matched by an equal element of sorted b, with multiplicity."""
    out: list[np.ndarray] = []
    for lo in range(0, a.size, _BLOCK):
        values = a[lo : lo + _BLOCK]
        rank = np.arange(lo, lo + values.size) - np.searchsorted(a, values, "left")
        have = np.searchsorted(b, values, "right") - np.searchsorted(b, values, "left")
        out.append(values[rank >= have])
    return np.concatenate(out) if out else np.empty(0, dtype=a.dtype)


def _as_u64(hashes: Any) -> np.ndarray:
    array = np.asarray(hashes)
    if array.dtype == np.uint64:
        return array
    return array.view(np.uint64) if array.dtype == np.int64 else array.astype(np.uint64)


def _sorted_pair(fp: Fingerprint) -> tuple[np.ndarray, np.ndarray]:
    keys, hashes = fp.keys, fp.hashes
    if not _is_sorted(keys):
        order = np.argsort(keys, kind="stable")
        return keys[order], hashes[order]
    return keys, hashes


def _diff_sorted(
    b_keys: np.ndarray, b_hashes: np.ndarray, c_keys: np.ndarray, c_hashes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if b_keys.size == c_keys.size and np.array_equal(b_keys, c_keys):
        return np.empty(0, np.int64), b_keys[b_hashes != c_hashes], np.empty(0, np.int64)
    if c_keys.size == 0:
        return b_keys, np.empty(0, np.int64), c_keys
    pos = np.minimum(np.searchsorted(c_keys, b_keys), c_keys.size - 1)
    found = c_keys[pos] == b_keys
    unmatched = np.ones(c_keys.size, dtype=bool)
    unmatched[pos[found]] = False
    return b_keys[~found], b_keys[found][b_hashes[found] != c_hashes[pos[found]]], c_keys[unmatched]


# ------------------------------------------------------------------------------ naming keys and rows


def name_keys(url: str, fingerprint: Fingerprint, key_hashes: Iterable[int]) -> dict[int, Any]:
    """The keys of the rows of fingerprint's table whose key hash is listed (one scan): {hash: key}.

    A single-column key comes back as its text, a composite one as a list of texts. For the keys of
    rows the table no longer has, read `fingerprint.key_names` (the baseline's side file), or run this
    on a restored copy of the table.
    """
    wanted = sorted({int(h) for h in key_hashes})
    if not wanted or fingerprint.key_kind != HASHED:
        return {}
    with _scan_plan(url, fingerprint.table, fingerprint.columns, fingerprint.key_columns, 1, fingerprint.types,
                    fingerprint.key_seed, fingerprint.timezone, HASHED) as plan:
        query = sql.SQL("SELECT kh, kt FROM (SELECT {} AS kh, {} AS kt FROM {} AS t) AS s WHERE kh = ANY(%s)")
        found: dict[int, Any] = {}
        for relation in dict.fromkeys(r for r, _ in plan.chunks):
            for kh, kt in plan.leader.execute(query.format(plan.key_expr, plan.key_text, sql.SQL(relation)),
                                              (wanted,)):
                found[int(kh)] = _key_value(json.loads(kt))
        return found


def rows_with_hashes(url: str, fingerprint: Fingerprint, row_hashes: Iterable[int], limit: int = 20) -> dict[int, str]:
    """One example row (the hashed columns, as PostgreSQL prints a row) per listed row hash: {hash: row}."""
    wanted = sorted({_signed(int(h)) for h in row_hashes})[: max(0, limit)]
    if not wanted:
        return {}
    with _scan_plan(url, fingerprint.table, fingerprint.columns, fingerprint.key_columns, 1, fingerprint.types,
                    0, fingerprint.timezone, fingerprint.key_kind) as plan:
        shown = sql.SQL("ROW({})::text").format(sql.SQL(", ").join(sql.Identifier(c) for c in plan.columns))
        query = sql.SQL("SELECT DISTINCT ON (rh) rh, rt FROM (SELECT {} AS rh, {} AS rt FROM {} AS t) AS s "
                        "WHERE rh = ANY(%s)")
        found: dict[int, str] = {}
        for relation in dict.fromkeys(r for r, _ in plan.chunks):
            for rh, rt in plan.leader.execute(query.format(plan.row_hash, shown, sql.SQL(relation)), (wanted,)):
                found[int(rh)] = str(rt)
        return found


def key_hashes(url: str, fingerprint: Fingerprint, keys: Sequence[Sequence[Any]]) -> np.ndarray:
    """The key hashes fingerprint uses for these key tuples (for `ignore`, or to look keys up in `Damage`)."""
    if fingerprint.key_kind == INTEGER:
        return np.array([int(k[0]) for k in keys], dtype=np.int64)
    if fingerprint.key_kind != HASHED:
        raise ValueError(f"{fingerprint.table}: a keyless fingerprint has no key hashes")
    if not keys:
        return np.empty(0, dtype=np.int64)
    columns = fingerprint.key_columns
    texts = [[None if k[i] is None else str(k[i]) for k in keys] for i in range(len(columns))]
    with psycopg.connect(url, autocommit=True) as conn:
        _pin_settings(conn, fingerprint.timezone)
        hashes = _text_tuple_hashes(conn, columns, fingerprint.types, fingerprint.key_seed, texts)
    return np.array(hashes, dtype=np.int64)


def text_row_hashes(url: str, fingerprint: Fingerprint, rows: Sequence[Mapping[str, str | None]],
                    conn: psycopg.Connection[Any] | None = None) -> np.ndarray:
    """The fingerprint's row hash of rows given as text (decoded changes, rows read as text), as uint64.

    Each value is cast to the type its column was hashed as and hashed the way the scan hashes it, so a row
    that was not changed hashes like its baseline. A column a row lacks hashes as NULL. Text must be in the
    settings `pin_settings` pins (DateStyle ISO and so on).
    """
    if not rows:
        return np.empty(0, dtype=np.uint64)
    with contextlib.ExitStack() as stack:
        if conn is None:
            conn = stack.enter_context(psycopg.connect(url, autocommit=True))
        _pin_settings(conn, fingerprint.timezone)
        columns = [[row.get(c) for row in rows] for c in fingerprint.columns]
        values = _text_tuple_hashes(conn, fingerprint.columns, fingerprint.types, 0, columns)
    return np.array(values, dtype=np.int64).view(np.uint64)


def _text_tuple_hashes(conn: psycopg.Connection[Any], columns: Sequence[str], types: Mapping[str, str], seed: int,
                       texts: Sequence[Sequence[str | None]]) -> list[int]:
    """`_tuple_hash` of tuples given as text, one list of texts per column, each cast to the type its column
    was hashed as (`types`) and hashed as the scan hashes it; in the order given."""
    names = [sql.Identifier(f"c{i}") for i in range(len(columns))]
    inputs = []
    for name, column in zip(names, columns, strict=True):
        typed = _type_column(conn, column, types[column])
        inputs.append(_hash_input(sql.SQL("u.{}::{}").format(name, sql.SQL(typed.type)), typed))
    # What unnest(text[], ...) AS u(names) gives, one row of it: for _tuple_hash to read the input types.
    source = sql.SQL("(SELECT {}) AS u").format(
        sql.SQL(", ").join(sql.SQL("NULL::text AS {}").format(n) for n in names))
    query = sql.SQL("SELECT {} FROM unnest({}) WITH ORDINALITY AS u({}, n) ORDER BY n").format(
        _tuple_hash(conn, inputs, source, seed),
        sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in names), sql.SQL(", ").join(names))
    return [int(r[0]) for r in conn.execute(query, list(texts)).fetchall()]


def _names_from_files(files: Sequence[Path | None], damage: Damage, first: int) -> dict[int, Any]:
    if damage.key_kind != HASHED:
        return {}
    wanted = {int(v) for kind in ("lost", "changed", "added") for v in getattr(damage, kind)[:first]}
    found: dict[int, Any] = {}
    for path in files:
        if path is None or not wanted - found.keys():
            continue
        found.update(_read_names(Path(path), wanted - found.keys()))
    return found


def read_key_names(path: Path, key_hashes: Iterable[int]) -> dict[int, Any]:
    """{key hash: key} for the hashes a fingerprint's side file (`Fingerprint.key_names`) holds."""
    return _read_names(Path(path), key_hashes)


def _read_names(path: Path, key_hashes: Iterable[int]) -> dict[int, Any]:
    """Look key hashes up in a side file of `\\n<16 hex digits>\\t<json key>` lines (a memchr per key)."""
    found: dict[int, Any] = {}
    try:
        size = path.stat().st_size
    except OSError:
        return found
    if size == 0:
        return found
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for value in key_hashes:
            needle = b"\n" + _hex(value).encode() + b"\t"
            at = data.find(needle)
            if at < 0:
                continue
            end = data.find(b"\n", at + len(needle))
            found[value] = _key_value(json.loads(data[at + len(needle) : end if end >= 0 else size]))
    return found


def name_damage(url: str, baseline: Fingerprint, damage: Damage, first: int = 20) -> dict[int, Any]:
    """Readable keys (hashed keys) or example rows (keyless tables) for the first damaged entries of each kind."""
    if damage.empty:
        return {}
    names = _names_from_files([baseline.key_names], damage, first)
    names.update(_names_from_table(url, baseline, damage, first, known=names))
    return names


def _names_from_table(url: str, baseline: Fingerprint, damage: Damage, first: int,
                      known: dict[int, Any]) -> dict[int, Any]:
    try:
        if damage.key_kind == HASHED:
            wanted = [int(v) for v in damage.added[:first] if int(v) not in known]
            return name_keys(url, baseline, wanted) if wanted else {}
        if damage.key_kind == ROWS:
            wanted = [int(v) for v in np.unique(np.concatenate([damage.lost, damage.added]))[: 4 * first]]
            return dict(rows_with_hashes(url, baseline, wanted, limit=len(wanted)))
    except (ValueError, psycopg.Error):
        return {}  # naming is a courtesy: the verdict stands without it
    return {}


def _key_value(items: list[Any]) -> Any:
    return items[0] if len(items) == 1 else list(items)


def _signed(value: int) -> int:
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def _hex(value: int) -> str:
    return f"{value & 0xFFFFFFFFFFFFFFFF:016x}"


def _hash_text(value: int) -> str:
    return "#" + _hex(value)


def _key_text(key: Any) -> str:
    if isinstance(key, list | tuple):
        return "(" + ", ".join(_key_text(k) for k in key) + ")"
    return str(key)


def _row_text(item: dict[str, Any]) -> str:
    shown = item["row"] if item.get("row") else item["row_hash"]
    return shown + (f" ×{item['copies']}" if item["copies"] > 1 else "")


# ---------------------------------------------------------------------------------------- scanning


@dataclass
class _Plan:
    leader: psycopg.Connection[Any]
    table: str
    kind: str
    key: list[str]
    columns: list[str]
    types: dict[str, str]
    timezone: str
    key_seed: int
    chunks: list[tuple[str, tuple[int, int | None] | None]]  # (relation, block range or None: all of it)
    row_hash: sql.Composable
    key_expr: sql.Composable
    key_text: sql.Composable
    snapshot: str | None = None


@contextlib.contextmanager
def _scan_plan(
    url: str, table: str, columns: list[str] | None, key: list[str] | None, workers: int,
    as_types: dict[str, str] | None, key_seed: int, timezone: str | None, kind: str | None,
    snapshot: str | None = None,
) -> Iterator[_Plan]:
    """Open the leader connection (REPEATABLE READ, in `snapshot` when given) and work out what each chunk
    query reads and hashes."""
    workers = max(1, int(workers))
    leader = psycopg.connect(url, autocommit=True)
    try:
        zone = _pin_settings(leader, timezone)
        leader.autocommit = False
        leader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        if snapshot:
            leader.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        oid = _table_oid(leader, table)
        all_columns = {c.name: c for c in _columns(leader, oid)}
        if key is None:
            key = primary_key(leader, oid)
        key = list(key)
        columns = list(columns) if columns is not None else list(all_columns)
        if not columns:
            raise ValueError(f"table {table!r}: no columns to hash")
        missing = [c for c in [*key, *columns] if c not in all_columns]
        if missing:
            raise ValueError(f"table {table!r} has no column {', '.join(map(repr, dict.fromkeys(missing)))}")
        wanted = dict(as_types or {})
        types = {c: wanted.get(c, all_columns[c].type) for c in dict.fromkeys([*key, *columns])}
        hashed = {c: _hash_as(leader, all_columns[c], wanted.get(c)) for c in types}
        if kind is None:
            kind = HASHED if key else ROWS
            if len(key) == 1 and all_columns[key[0]].builtin and all_columns[key[0]].typname in _INTEGER_KEY_TYPES:
                kind = INTEGER
        source = sql.SQL("{} AS t").format(sql.SQL(_relation_name(leader, oid)))
        row_hash = _tuple_hash(leader, [hashed[c] for c in columns], source, 0)
        if kind == INTEGER:
            key_expr: sql.Composable = sql.SQL("{}::int8").format(sql.Identifier(key[0]))
        elif kind == HASHED:
            key_expr = _tuple_hash(leader, [hashed[c] for c in key], source, key_seed)
        else:
            key_expr = sql.SQL("NULL")
        key_text = sql.SQL("json_build_array({})::text").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in key) if key else sql.SQL(""))
        plan = _Plan(leader, table, kind, key, columns, types, zone, key_seed, _chunks(leader, oid, workers),
                     row_hash, key_expr, key_text)
        if snapshot:
            plan.snapshot = snapshot
        elif len(plan.chunks) > 1 and workers > 1:
            plan.snapshot = leader.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        yield plan
    finally:
        with contextlib.suppress(psycopg.Error):
            leader.rollback()
        leader.close()


def row_hash_sql(url: str, table: str, columns: list[str] | None = None) -> str:
    """The SQL expression (over the table aliased `t`) that fingerprints hash each row of table with."""
    with _scan_plan(url, table, columns, None, 1, None, 1, None, None) as plan:
        return plan.row_hash.as_string(plan.leader)


def _relation_name(conn: psycopg.Connection[Any], oid: int) -> str:
    row = conn.execute("SELECT %s::regclass::text", (oid,)).fetchone()
    assert row is not None
    return str(row[0])


def _tuple_hash(conn: psycopg.Connection[Any], inputs: Sequence[sql.Composable], source: sql.Composable,
                seed: int) -> sql.Composable:
    """The 64-bit hash of a tuple of values (`inputs`, expressions over `source`): each value hashed by the
    extended hash function its type's default hash operator class names (the one hash_record_extended
    calls), with a seed of its own position, the results XORed; a NULL gives a constant of its position.

    The same per-field hashes as hash_record_extended, without building a record per row and taking it
    apart again: a quarter less of the server's time per row (docs/benchmarks.md). timestamptz and boolean,
    whose hash functions take another type, are rewritten exactly; other such types (date, bytea...) are
    hashed together as one record.
    """
    if not inputs:
        return sql.SQL("0::int8")
    described = conn.execute(sql.SQL("SELECT {} FROM {} LIMIT 0").format(sql.SQL(", ").join(inputs), source))
    oids = [int(column.type_code) for column in described.description or ()]
    functions = _hash_functions(conn, oids)
    base = seed << 32
    fields: list[sql.Composable] = []
    rest: list[sql.Composable] = []
    for i, (value, oid) in enumerate(zip(inputs, oids, strict=True)):
        call = functions.get(oid)
        if oid == _TIMESTAMPTZ_OID:  # its hash function takes timestamp: read the instant at UTC offset 0
            hashed = sql.SQL("pg_catalog.timestamp_hash_extended(pg_catalog.timezone(interval '0', {}), {})").format(
                value, sql.Literal(base + i + 1))
        elif oid == _BOOL_OID:
            hashed = sql.SQL("pg_catalog.hashint4extended(({})::pg_catalog.int4, {})").format(
                value, sql.Literal(base + i + 1))
        elif call is not None:
            function, cast = call
            argument = sql.SQL("({})::{}").format(value, sql.SQL(cast)) if cast else value
            hashed = sql.SQL("pg_catalog.{}({}, {})").format(sql.Identifier(function), argument,
                                                              sql.Literal(base + i + 1))
        else:
            rest.append(value)
            continue
        fields.append(sql.SQL("coalesce({}, {})").format(hashed, sql.Literal(-(base + i + 1))))
    if rest:
        fields.append(sql.SQL("pg_catalog.hash_record_extended(ROW({}), {})").format(
            sql.SQL(", ").join(rest), sql.Literal(base + len(inputs) + 1)))
    return sql.SQL("({})").format(sql.SQL(" # ").join(fields))  # 1,600 columns plan fine


_TIMESTAMPTZ_OID, _BOOL_OID = 1184, 16


def _hash_functions(conn: psycopg.Connection[Any], oids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
    """{type OID: (pg_catalog function, cast or None)}: the extended hash function of the default hash operator
    class PostgreSQL picks for each type (GetDefaultOpClass: the type's own class, else the one class of a type
    it is binary-coercible to implicitly, a preferred type first: text for varchar, any array for arrays),
    where that function takes the class's type itself."""
    rows = conn.execute(
        """SELECT t.oid, p.proname, c.opcintype = t.oid, c.opcintype = 'pg_catalog.anyarray'::regtype,
                  i.typispreferred AND i.typcategory = t.typcategory, format_type(c.opcintype, NULL)
           FROM pg_type t
           JOIN pg_opclass c ON c.opcdefault AND c.opcmethod = (SELECT oid FROM pg_am WHERE amname = 'hash')
           JOIN pg_type i ON i.oid = c.opcintype
           LEFT JOIN pg_amproc a ON a.amprocfamily = c.opcfamily AND a.amprocnum = 2
                                AND a.amproclefttype = c.opcintype AND a.amprocrighttype = c.opcintype
           LEFT JOIN pg_proc p ON p.oid = a.amproc AND p.pronamespace = 'pg_catalog'::regnamespace
                              AND p.proargtypes[0] = c.opcintype
           WHERE t.oid = ANY(%s::oid[])
             AND (c.opcintype = t.oid
                  OR c.opcintype = 'pg_catalog.anyarray'::regtype AND t.typcategory = 'A' AND t.typelem <> 0
                  OR EXISTS (SELECT FROM pg_cast k WHERE k.castsource = t.oid AND k.casttarget = c.opcintype
                                                      AND k.castmethod = 'b' AND k.castcontext = 'i'))""",
        (list(dict.fromkeys(oids)),),
    ).fetchall()
    candidates: dict[int, list[tuple[Any, ...]]] = {}
    for row in rows:
        candidates.setdefault(int(row[0]), []).append(row)
    found: dict[int, tuple[str, str | None]] = {}
    for oid, classes in candidates.items():
        picked = [c for c in classes if c[2]] or [c for c in classes if c[4]] or classes
        if len(picked) != 1 or picked[0][1] is None:
            continue  # no class, or one PostgreSQL could not pick either: hashed within a record
        _oid, function, exact, any_array, _preferred, cast = picked[0]
        found[oid] = (str(function), None if exact or any_array else str(cast))
    return found


def pin_settings(conn: psycopg.Connection[Any], timezone: str | None = None) -> str:
    """Pin the settings text forms of values depend on (DateStyle, IntervalStyle, float digits, bytea; TimeZone
    when given), so that values read as text by two sessions compare equal exactly when they are equal."""
    return _pin_settings(conn, timezone)


def _pin_settings(conn: psycopg.Connection[Any], timezone: str | None) -> str:
    """Pin the settings that text forms depend on; set TimeZone when given. Returns the TimeZone in use."""
    settings = [*_PINNED_SETTINGS, *([("TimeZone", timezone)] if timezone else [])]
    query = sql.SQL("SELECT {}, current_setting('TimeZone')").format(
        sql.SQL(", ").join(sql.SQL("set_config({}, {}, false)").format(sql.Literal(k), sql.Literal(v))
                           for k, v in settings))
    row = conn.execute(query).fetchone()
    return str(row[-1]) if row else "UTC"


_Handler = Callable[[int, int, "np.ndarray | None", np.ndarray, "str | None"], None]


def _scan(url: str, plan: _Plan, workers: int, handle: _Handler, with_names: bool) -> None:
    """Run every chunk query, lanes of consecutive chunks on `workers` connections sharing one snapshot."""
    # Rendered once: composing a query costs more client time than sending it.
    queries = [_chunk_query(plan, relation, pages, with_names).as_bytes(plan.leader)
               for relation, pages in plan.chunks]
    n_lanes = min(max(1, workers), len(queries)) if plan.snapshot else 1
    lanes = [range(len(queries) * i // n_lanes, len(queries) * (i + 1) // n_lanes) for i in range(n_lanes)]

    def read(conn: psycopg.Connection[Any], lane: range) -> None:
        # Pipelined, one query ahead: the server scans the next block range while this one is handled here.
        with conn.pipeline():
            ahead: deque[tuple[int, psycopg.Cursor[Any]]] = deque()
            for index in lane:
                ahead.append((index, conn.cursor(binary=True).execute(queries[index])))
                if len(ahead) > 1:
                    take(*ahead.popleft())
            while ahead:
                take(*ahead.popleft())

    def take(index: int, cursor: psycopg.Cursor[Any]) -> None:
        row = cursor.fetchone()
        cursor.close()
        assert row is not None
        count = int(row[0])
        keys, hashes = _unpack(row[1], count, plan)
        handle(index, count, keys, hashes, row[2] if with_names else None)

    def run_lane(lane_index: int) -> None:
        if lane_index == 0:
            read(plan.leader, lanes[0])
            return
        with psycopg.connect(url, autocommit=True) as conn:
            _pin_settings(conn, plan.timezone)
            conn.autocommit = False
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(plan.snapshot)))
            read(conn, lanes[lane_index])
            conn.rollback()

    if n_lanes == 1:
        run_lane(0)
        return
    with ThreadPoolExecutor(max_workers=n_lanes) as pool:
        list(pool.map(run_lane, range(n_lanes)))


def _chunk_query(plan: _Plan, name: str, pages: tuple[int, int | None] | None, with_names: bool) -> sql.Composed:
    relation = sql.SQL(name)  # a regclass name PostgreSQL printed, quoted where needed
    where: sql.Composable = sql.SQL("")
    if pages is not None:
        lo, hi = pages
        where = sql.SQL(" WHERE ctid >= {}::tid").format(sql.Literal(f"({lo},0)"))
        if hi is not None:
            where = sql.SQL("{} AND ctid < {}::tid").format(where, sql.Literal(f"({hi},0)"))
    names = sql.SQL(", string_agg(lpad(to_hex(kh), 16, '0') || E'\\t' || kt, E'\\n')") if with_names else sql.SQL("")
    text = sql.SQL(", {} AS kt").format(plan.key_text) if with_names else sql.SQL("")
    if plan.kind == ROWS:
        return sql.SQL("SELECT count(*), string_agg(int8send({}), ''::bytea) FROM {} AS t{}").format(
            plan.row_hash, relation, where)
    # A NULL key makes its row's pair NULL, which string_agg skips: the blob comes out short (see _unpack).
    return sql.SQL(
        "SELECT count(*), string_agg(int8send(kh) || int8send(rh), ''::bytea){} "
        "FROM (SELECT {} AS kh, {} AS rh{} FROM {} AS t{}) AS s"
    ).format(names, plan.key_expr, plan.row_hash, text, relation, where)


def _unpack(blob: bytes | None, count: int, plan: _Plan) -> tuple[np.ndarray | None, np.ndarray]:
    """Keys (None without a key) and row hashes of a chunk's blob, as big-endian views (no copy)."""
    item = _SINGLE if plan.kind == ROWS else _PAIR
    if count == 0 or blob is None:
        values: np.ndarray = np.empty(0, dtype=item)
    elif len(blob) != count * item.itemsize:
        raise ValueError(f"table {plan.table!r}: the key has NULL values; pass key=[...] naming non-null unique "
                         "columns")
    else:
        values = np.frombuffer(blob, dtype=item)
    if plan.kind == ROWS:
        return None, values
    return values["key"], values["hash"]


def _chunks(conn: psycopg.Connection[Any], oid: int, workers: int) -> list[tuple[str, tuple[int, int | None] | None]]:
    """(relation, block range) per query: each heap leaf of the table cut into ~_CHUNK_ROWS-row ranges."""
    rows = conn.execute(
        """SELECT c.oid::regclass::text, c.relkind, c.relpages, c.reltuples,
                  pg_relation_size(c.oid) / current_setting('block_size')::int,
                  current_setting('server_version_num')::int
           FROM pg_class c
           WHERE c.oid = %s AND c.relkind <> 'p'
              OR c.oid IN (SELECT relid FROM pg_partition_tree(%s) WHERE isleaf AND relid <> %s)
           ORDER BY c.oid = %s DESC, 1""",
        (oid, oid, oid, oid),
    ).fetchall()
    chunks: list[tuple[str, tuple[int, int | None] | None]] = []
    for relation, relkind, relpages, reltuples, pages, version in rows:
        if relkind not in ("r", "m") or version < 140000 or pages <= 1:
            chunks.append((relation, None))  # no TID range scan: one query over the whole leaf
            continue
        density = reltuples / relpages if relpages > 0 and reltuples >= 0 else _MAX_ROWS_PER_PAGE
        parts = max(1, math.ceil(density * pages / _CHUNK_ROWS))
        parts = min(pages, workers * math.ceil(parts / workers))
        bounds = [pages * i // parts for i in range(parts + 1)]
        chunks += [(relation, (bounds[i], bounds[i + 1] if i + 1 < parts else None)) for i in range(parts)]
    return chunks


def _table_oid(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute("SELECT to_regclass(%s)::oid", (table,)).fetchone()
    if not row or row[0] is None:
        raise ValueError(f"table {table!r} not found (schema-qualify it or check the search_path)")
    return int(row[0])


_TYPE_INFO = """t.typname, tn.nspname = 'pg_catalog', t.typtype, et.typname, coalesce(etn.nspname = 'pg_catalog', false),
                et.typtype"""
_TYPE_JOINS = """JOIN pg_namespace tn ON tn.oid = t.typnamespace
                 LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
                 LEFT JOIN pg_namespace etn ON etn.oid = et.typnamespace"""


def _columns(conn: psycopg.Connection[Any], oid: int) -> list[_Column]:
    rows = conn.execute(
        f"""SELECT a.attname, format_type(a.atttypid, a.atttypmod), {_TYPE_INFO},
                   coalesce(co.collisdeterministic, true)
            FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid {_TYPE_JOINS}
            LEFT JOIN pg_collation co ON co.oid = a.attcollation
            WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
        (oid,),
    ).fetchall()
    return [_Column(*row) for row in rows]


def _type_column(conn: psycopg.Connection[Any], name: str, type_name: str) -> _Column:
    """A column of type `type_name` (as format_type prints it), for hashing a value cast to that type."""
    if not _TYPE_NAME.match(type_name):
        raise ValueError(f"column {name!r}: cannot hash as type {type_name!r} (not a type name)")
    try:
        row = conn.execute(
            f"SELECT {_TYPE_INFO} FROM pg_type t {_TYPE_JOINS} WHERE t.oid = %s::regtype", (type_name,)
        ).fetchone()
    except psycopg.Error as exc:
        raise ValueError(f"column {name!r}: cannot hash as type {type_name!r}: {_first_line(exc)}") from None
    assert row is not None
    typname, builtin, typtype, element, element_builtin, element_typtype = row
    return _Column(name, type_name, typname, builtin, typtype, element, element_builtin, element_typtype, True)


def _hash_family(column: _Column) -> str:
    if column.element is not None:
        element = column.element if column.element_builtin else f"~{column.element}"
        return "array of " + _HASH_FAMILY.get(element, element)
    if not column.builtin:
        return column.type
    if column.typname in _HASH_FAMILY:
        return _HASH_FAMILY[column.typname]
    if _exact_hash(column.typname, column.builtin, column.typtype):
        return column.typname  # timestamp(3) and timestamp(6) hash alike: the type modifier is no part of it
    return column.type  # hashed through text: numeric(8,2) prints 1.50, numeric(12,4) 1.5000


def _hash_as(conn: psycopg.Connection[Any], column: _Column, type_name: str | None) -> sql.Composable:
    """The hash input of a column, read as `type_name` when its own type would hash equal values apart."""
    ident = sql.Identifier(column.name)
    if not type_name or type_name == column.type:
        return _hash_input(ident, column)
    target = _type_column(conn, column.name, type_name)
    if _hash_family(target) == _hash_family(column):
        return _hash_input(ident, column)
    # Read as the baseline's type only where that loses nothing; a value it cannot hold unchanged (a
    # numeric with more digits, a timestamp that is no longer midnight of a date) stops the scan by name.
    lossless = sql.SQL("CASE WHEN {i} IS NULL OR ({i}::{t})::{own} = {i} THEN {i}::{t} ELSE ({why} || {i}::text)::{t} END")
    return _hash_input(sql.SQL("({})").format(lossless.format(
        i=ident, t=sql.SQL(type_name), own=sql.SQL(column.type),
        why=sql.Literal(f"column {column.name} holds a value that {type_name} cannot hold unchanged: "))), target)


def _exact_hash(typname: str | None, builtin: bool, typtype: str | None) -> bool:
    # Not enums: their hash is the label's OID, and a restore gives every label a new one.
    return builtin and typname in _EXACT_HASH_TYPES


def _hash_input(value: sql.Composable, column: _Column) -> sql.Composable:
    if column.element is not None:
        exact = _exact_hash(column.element, column.element_builtin, column.element_typtype)
        if exact and column.element in _TEXT_TYPES and not column.deterministic:
            return sql.SQL('{}::text[] COLLATE "C"').format(value)
        return value if exact else sql.SQL("{}::text").format(value)
    if not _exact_hash(column.typname, column.builtin, column.typtype):
        return sql.SQL("{}::text").format(value)
    if column.typname in _TEXT_TYPES and not column.deterministic:
        return sql.SQL('{}::text COLLATE "C"').format(value)
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _file_stem(table: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", table)

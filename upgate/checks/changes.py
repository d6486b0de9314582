"""Row changes from a logical replication slot: PostgreSQL's `pgoutput` protocol, decoded in Python.

    >>> batch = peek_changes(conn, "upgate_live_ab12", ["upgate_live_ab12"])        # doctest: +SKIP
    >>> batch.transactions[0].xid, batch.transactions[0].changes[0].op
    (735, 'U')

The embedded PostgreSQL 16 ships `pgoutput` (not `test_decoding`), so the stream is read with
`pg_logical_slot_peek_binary_changes(slot, upto, NULL, 'proto_version', '1', 'publication_names', ...)`
and parsed here: Begin (xid, commit LSN), Relation (the table's columns as they are at that point of
the stream), Insert / Update / Delete / Truncate, Commit. Values come as text (the types' output
functions, under the reading session's settings); a value an UPDATE left unchanged in TOAST storage is
not sent (`Change.unchanged`). A Delete carries only the replica identity (the primary key).

`read_stream` reads the transactions a run has written to disk (`write_transactions`) and then the
slot's tail, so a caller sees every change since the slot was created without the slot keeping it all.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

# pgoutput timestamps count microseconds from 2000-01-01 UTC.
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
INSERT, UPDATE, DELETE, TRUNCATE = "I", "U", "D", "T"


@dataclass(frozen=True)
class Relation:
    """A table as the stream describes it: its columns at that point of the stream, and which form the key."""

    oid: int
    schema: str
    name: str
    replica_identity: str  # d(efault: the primary key), n(othing), f(ull), i(ndex)
    columns: tuple[str, ...]
    key: tuple[str, ...]  # the replica identity's columns (a Delete carries only these)
    type_oids: tuple[int, ...] = ()

    @property
    def qualified(self) -> str:
        """schema.name, both unquoted: the one spelling used to match a table across databases."""
        return f"{self.schema}.{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {"oid": self.oid, "schema": self.schema, "name": self.name, "replica_identity": self.replica_identity,
                "columns": list(self.columns), "key": list(self.key), "type_oids": list(self.type_oids)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Relation:
        return cls(int(data["oid"]), data["schema"], data["name"], data["replica_identity"], tuple(data["columns"]),
                   tuple(data["key"]), tuple(int(t) for t in data.get("type_oids", ())))


@dataclass(frozen=True)
class Change:
    """One row change. `new`: the row after it (Insert, Update), by column; `old_key`: the key before it
    (Delete, and an Update that changed the key). Values are text or None (NULL); a column listed in
    `unchanged` was not sent (an unchanged TOASTed value): its value is whatever it was before.
    `tables` lists the truncated tables of a Truncate (schema.name)."""

    table: str  # schema.name
    op: str
    new: dict[str, str | None] | None = None
    old_key: dict[str, str | None] | None = None
    unchanged: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()

    def key(self, columns: Sequence[str]) -> tuple[str | None, ...] | None:
        """The row's key (the columns named) after the change; before it for a Delete. None when absent."""
        source = self.old_key if self.op == DELETE else self.new
        if source is None or any(c not in source for c in columns):
            return None
        return tuple(source[c] for c in columns)

    def key_before(self, columns: Sequence[str]) -> tuple[str | None, ...] | None:
        """For an Update that changed the key: the key it had; else the key after it."""
        if self.op == UPDATE and self.old_key is not None and all(c in self.old_key for c in columns):
            return tuple(self.old_key[c] for c in columns)
        return self.key(columns)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"t": self.table, "op": self.op}
        if self.new is not None:
            data["new"] = self.new
        if self.old_key is not None:
            data["old"] = self.old_key
        if self.unchanged:
            data["u"] = list(self.unchanged)
        if self.tables:
            data["tables"] = list(self.tables)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        return cls(data["t"], data["op"], data.get("new"), data.get("old"), tuple(data.get("u", ())),
                   tuple(data.get("tables", ())))


@dataclass
class Transaction:
    """One committed transaction of the stream, its changes in order."""

    xid: int  # the top-level transaction id (32 bits, as the WAL has it)
    commit_lsn: int
    end_lsn: int
    committed_at: datetime | None
    changes: list[Change] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"xid": self.xid, "lsn": format_lsn(self.commit_lsn), "end": format_lsn(self.end_lsn),
                "at": self.committed_at.isoformat() if self.committed_at else None,
                "changes": [c.to_json() for c in self.changes]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Transaction:
        at = data.get("at")
        return cls(int(data["xid"]), parse_lsn(data["lsn"]), parse_lsn(data["end"]),
                   datetime.fromisoformat(at) if at else None, [Change.from_json(c) for c in data.get("changes", [])])


@dataclass
class Batch:
    """What one read of a slot returned: whole transactions, the relations described, and where it ended."""

    transactions: list[Transaction]
    relations: dict[int, Relation]
    end_lsn: int | None  # the end of the last whole transaction (None: nothing read)


class ProtocolError(ValueError):
    """A pgoutput message this decoder does not understand (the bytes are named)."""


# ------------------------------------------------------------------------------------------ parsing


_I8, _I16, _I32, _U32, _I64, _U64 = (struct.Struct(f) for f in (">b", ">h", ">i", ">I", ">q", ">Q"))


class _Reader:
    __slots__ = ("at", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int) -> bytes:
        at = self.at
        if at + n > len(self.data):
            raise ProtocolError(f"message ends early: wanted {n} bytes at {at} of {len(self.data)}")
        self.at = at + n
        return self.data[at : at + n]

    def _unpack(self, fmt: struct.Struct) -> int:
        at = self.at
        if at + fmt.size > len(self.data):
            raise ProtocolError(f"message ends early: wanted {fmt.size} bytes at {at} of {len(self.data)}")
        self.at = at + fmt.size
        return int(fmt.unpack_from(self.data, at)[0])

    def byte(self) -> str:
        return chr(self.take(1)[0])

    def int8(self) -> int:
        return self._unpack(_I8)

    def int16(self) -> int:
        return self._unpack(_I16)

    def int32(self) -> int:
        return self._unpack(_I32)

    def uint32(self) -> int:
        return self._unpack(_U32)

    def int64(self) -> int:
        return self._unpack(_I64)

    def uint64(self) -> int:
        return self._unpack(_U64)

    def string(self) -> str:
        end = self.data.index(b"\0", self.at)
        text = self.data[self.at : end].decode("utf-8")
        self.at = end + 1
        return text


def _timestamp(micros: int) -> datetime:
    return _PG_EPOCH + timedelta(microseconds=micros)


def _tuple(reader: _Reader, relation: Relation) -> tuple[dict[str, str | None], tuple[str, ...]]:
    data = reader.data
    count = reader.int16()
    if count != len(relation.columns):
        raise ProtocolError(f"{relation.qualified}: a row of {count} columns, the relation has "
                            f"{len(relation.columns)}")
    values: dict[str, str | None] = {}
    unchanged: list[str] = []
    at = reader.at
    end = len(data)
    for column in relation.columns:
        if at >= end:
            raise ProtocolError(f"{relation.qualified}.{column}: the row ends early")
        kind = data[at]
        at += 1
        if kind == 0x6E:  # n: NULL
            values[column] = None
        elif kind == 0x75:  # u: an unchanged TOASTed value, not sent
            unchanged.append(column)
        elif kind == 0x74:  # t: text
            (length,) = _I32.unpack_from(data, at)
            at += 4
            if at + length > end:
                raise ProtocolError(f"{relation.qualified}.{column}: the value ends early")
            values[column] = data[at : at + length].decode("utf-8")
            at += length
        elif kind == 0x62:  # b: binary
            raise ProtocolError(f"{relation.qualified}.{column}: a binary value (decode with binary 'false')")
        else:
            raise ProtocolError(f"{relation.qualified}.{column}: unknown column kind {chr(kind)!r}")
    reader.at = at
    return values, tuple(unchanged)


def _only(values: dict[str, str | None], columns: Sequence[str]) -> dict[str, str | None]:
    return {c: values[c] for c in columns if c in values}


class Decoder:
    """Turns pgoutput messages, in stream order, into whole transactions. Keeps the relations it has seen."""

    def __init__(self, relations: dict[int, Relation] | None = None, tables: Collection[str] | None = None) -> None:
        self.relations: dict[int, Relation] = dict(relations or {})
        self.current: Transaction | None = None
        #: Keep only changes to these tables (schema.name); None: all.
        self.tables = set(tables) if tables is not None else None

    def feed(self, message: bytes) -> Transaction | None:
        """Decode one message; returns the transaction its Commit completes (else None)."""
        reader = _Reader(bytes(message))
        kind = reader.byte()
        if kind == "B":
            final_lsn, at, xid = reader.uint64(), reader.int64(), reader.uint32()
            self.current = Transaction(xid, final_lsn, final_lsn, _timestamp(at))
            return None
        if kind == "C":
            reader.int8()  # flags
            commit_lsn, end_lsn, at = reader.uint64(), reader.uint64(), reader.int64()
            done = self.current
            if done is None:
                raise ProtocolError("a Commit without its Begin")
            done.commit_lsn, done.end_lsn, done.committed_at = commit_lsn, end_lsn, _timestamp(at)
            self.current = None
            return done
        if kind == "R":
            oid, schema, name = reader.uint32(), reader.string(), reader.string()
            replident = reader.byte()
            columns: list[str] = []
            key: list[str] = []
            types: list[int] = []
            for _ in range(reader.int16()):
                flags, column = reader.int8(), reader.string()
                types.append(reader.uint32())
                reader.int32()  # typmod
                columns.append(column)
                if flags & 1:
                    key.append(column)
            self.relations[oid] = Relation(oid, schema or "public", name, replident, tuple(columns), tuple(key),
                                           tuple(types))
            return None
        if kind in ("Y", "O", "M"):  # a type's name, an origin, a logical message: nothing to attribute
            return None
        if self.current is None:
            raise ProtocolError(f"a {kind!r} message outside a transaction")
        if kind == "T":
            count = reader.int32()
            reader.int8()  # options (CASCADE, RESTART IDENTITY)
            oids = [reader.uint32() for _ in range(count)]
            tables = tuple(self._relation(oid).qualified for oid in oids)
            for table in tables:
                if self.tables is None or table in self.tables:
                    self.current.changes.append(Change(table, TRUNCATE, tables=tables))
            return None
        if kind not in ("I", "U", "D"):
            raise ProtocolError(f"unknown pgoutput message {kind!r} ({bytes(message)[:32]!r})")
        relation = self._relation(reader.uint32())
        if self.tables is not None and relation.qualified not in self.tables:
            return None
        old: dict[str, str | None] | None = None
        new: dict[str, str | None] | None = None
        unchanged: tuple[str, ...] = ()
        marker = reader.byte()
        if marker in ("K", "O"):
            values, _ = _tuple(reader, relation)
            old = _only(values, relation.key) if marker == "K" else values
            if kind == "U":
                marker = reader.byte()
        if marker == "N":
            new, unchanged = _tuple(reader, relation)
        elif kind != "D":
            raise ProtocolError(f"{relation.qualified}: {kind} without its new row (got {marker!r})")
        self.current.changes.append(Change(relation.qualified, kind, new, old, unchanged))
        return None

    def _relation(self, oid: int) -> Relation:
        try:
            return self.relations[oid]
        except KeyError:
            raise ProtocolError(f"a change to relation {oid} before its Relation message") from None


# ------------------------------------------------------------------------------------------ reading


def parse_lsn(text: str) -> int:
    high, _, low = str(text).partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def peek_changes(conn: psycopg.Connection[Any], slot: str, publications: Sequence[str],
                 upto_lsn: int | None = None, relations: dict[int, Relation] | None = None,
                 tables: Collection[str] | None = None) -> Batch:
    """The whole transactions a slot holds, committed before `upto_lsn` (None: all), without consuming them.

    `relations` are the ones an earlier read described (a slot sends each Relation once per read); `tables`
    keeps only the changes to those (schema.name), and only transactions with one.
    """
    decoder = Decoder(relations, tables)
    done: list[Transaction] = []
    query = ("SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, NULL, 'proto_version', '1', "
             "'publication_names', %s)")
    upto = format_lsn(upto_lsn) if upto_lsn is not None else None
    with conn.cursor(binary=True) as cursor:
        cursor.execute(query, (slot, upto, ",".join(publications)))
        for (data,) in cursor:
            finished = decoder.feed(bytes(data))
            if finished is not None and (finished.changes or tables is None):
                done.append(finished)
    return Batch(done, decoder.relations, done[-1].end_lsn if done else None)


def advance_slot(conn: psycopg.Connection[Any], slot: str, lsn: int) -> None:
    """Tell the slot everything up to `lsn` is kept elsewhere (it may free the WAL before it)."""
    conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, format_lsn(lsn)))


def current_lsn(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    return parse_lsn(row[0])


# ------------------------------------------------------------------------------------------- on disk

_RELATION = "relation"  # a relation's line holds only this key; a transaction's starts with "xid"
_RELATION_LINE = '{"' + _RELATION + '"'


def write_transactions(path: Path, transactions: Iterable[Transaction], relations: dict[int, Relation]) -> int:
    """Append transactions to a JSON-lines file (relations first, when new), fsynced. Returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    known = {r.oid: r for r in _read_relations(path)} if path.exists() else {}
    count = 0
    with path.open("a", encoding="utf-8") as out:
        for oid, relation in relations.items():
            if known.get(oid) != relation:
                out.write(json.dumps({_RELATION: relation.to_json()}) + "\n")
        for transaction in transactions:
            out.write(json.dumps(transaction.to_json(), separators=(",", ":")) + "\n")
            count += 1
        out.flush()
        os.fsync(out.fileno())
    return count


def read_transactions(path: Path) -> Iterator[Transaction]:
    """The transactions of a file `write_transactions` wrote, in order (a torn last line is skipped)."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            data = _line(line)
            if data is not None and "xid" in data:
                yield Transaction.from_json(data)


def _read_relations(path: Path) -> list[Relation]:
    # A relation's line starts with its key (`write_transactions`): the transactions' lines are not parsed.
    with path.open(encoding="utf-8") as lines:
        found = (_line(line) for line in lines if line.startswith(_RELATION_LINE))
        return [Relation.from_json(d[_RELATION]) for d in found if d is not None and _RELATION in d]


def read_relations(path: Path) -> dict[int, Relation]:
    """The last description of each relation in the file (what a later slot read must start from)."""
    return {r.oid: r for r in _read_relations(path)} if path.exists() else {}


def _line(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None  # a torn last line (killed mid-write): what came before it stands
    return data if isinstance(data, dict) else None


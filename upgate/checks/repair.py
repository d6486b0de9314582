"""Put rows back to what they should be, in the caller's transaction, and prove it before it commits.

    >>> with psycopg.connect(url, application_name="upgate-repair") as conn:     # doctest: +SKIP
    ...     done = apply_targets(conn, "pgbench_accounts", ["aid"], {("17",): {"abalance": "0", ...}})
    ...     done.summary
    'pgbench_accounts: 1 updated, 0 inserted, 0 deleted'

One function serves the surgical repair (the rows an upgrade damaged, back to their baseline or to what
live traffic last wrote) and the replay of live traffic onto a restored database (each row live traffic
touched, to its last written state). A target is the whole row (inserted when missing), only some columns
(the row must exist), or None (no row). Afterwards every target is read back and compared as text; any
difference raises `RepairMismatch`, so the caller rolls the transaction back and nothing half-done stays.
Keyless tables take `insert_rows` and `delete_copies` (one copy per listed row hash).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from upgate.checks.attribution import Key, Row, read_rows

_BATCH = 500


class RepairMismatch(RuntimeError):
    """A row read back after the repair is not what it should be: the caller must roll back."""


@dataclass(frozen=True)
class TableShape:
    relation: str  # as regclass prints it
    types: dict[str, str]  # column -> formatted type
    generated: frozenset[str]
    identity_always: bool
    unique_key: bool  # a unique index on exactly the key columns (ON CONFLICT works)


@dataclass
class Applied:
    table: str
    updated: int = 0
    inserted: int = 0
    deleted: int = 0
    keys: list[Any] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.updated + self.inserted + self.deleted

    @property
    def summary(self) -> str:
        return f"{self.table}: {self.updated} updated, {self.inserted} inserted, {self.deleted} deleted"

    def to_json(self, first: int = 20) -> dict[str, Any]:
        return {"table": self.table, "updated": self.updated, "inserted": self.inserted, "deleted": self.deleted,
                "keys": self.keys[:first]}


def table_shape(conn: psycopg.Connection[Any], table: str, key: Sequence[str]) -> TableShape:
    row = conn.execute("SELECT %s::regclass::text, %s::regclass::oid", (table, table)).fetchone()
    assert row is not None
    relation, oid = row
    columns = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attgenerated <> '', attidentity = 'a' FROM pg_attribute "
        "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (oid,)).fetchall()
    unique = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL
                          AND i.indexprs IS NULL AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
                              FROM pg_attribute a WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey))
                          = (SELECT array_agg(k ORDER BY k) FROM unnest(%s::text[]) AS k))""",
        (oid, list(key))).fetchone()
    return TableShape(relation, {c: t for c, t, _, _ in columns}, frozenset(c for c, _, g, _ in columns if g),
                      any(a for _, _, _, a in columns), bool(unique and unique[0]))


def apply_targets(conn: psycopg.Connection[Any], table: str, key: Sequence[str],
                  targets: Mapping[Key, Row | None], whole: Iterable[Key] = ()) -> Applied:
    """Make each key's row its target within `conn`'s open transaction, then read every one back.

    A key in `whole` gets its whole row (inserted when missing); others only the columns given (the row
    must be there). Columns the table no longer has are left out. Raises RepairMismatch on any difference.
    """
    shape = table_shape(conn, table, key)
    whole_keys = set(whole)
    done = Applied(table)
    deletes = [k for k, row in targets.items() if row is None]
    writes = {k: {c: v for c, v in row.items() if c in shape.types and c not in shape.generated}
              for k, row in targets.items() if row is not None}
    for batch in _batches(deletes):
        done.deleted += _delete(conn, shape, key, batch)
    present = read_rows(conn, table, key, list(writes), list(key)) if writes else {}
    # One statement per row, sent pipelined by column set (executemany): thousands of rows a replay under
    # live traffic brings cost one round trip per batch, not one each.
    updates: dict[tuple[str, ...], list[list[str | None]]] = {}
    inserts: dict[tuple[str, ...], list[list[str | None]]] = {}
    for k, row in writes.items():
        if k in present:
            changed = {c: v for c, v in row.items() if c not in key}
            if changed:
                updates.setdefault(tuple(changed), []).append([*changed.values(), *k])
            done.updated += 1
        elif k in whole_keys:
            values = {**row, **dict(zip(key, k, strict=True))}
            inserts.setdefault(tuple(values), []).append(list(values.values()))
            done.inserted += 1
        else:
            raise RepairMismatch(f"{table}: row {list(k)} is missing, and only some of its columns are known")
    for names, params in updates.items():
        _update(conn, shape, key, names, params)
    for names, params in inserts.items():
        _insert(conn, shape, names, params)
    done.keys = [list(k) if len(k) > 1 else k[0] for k in targets]
    _verify(conn, table, key, targets, writes)
    return done


def _batches(items: Sequence[Key]) -> Iterable[Sequence[Key]]:
    for start in range(0, len(items), _BATCH):
        yield items[start : start + _BATCH]


def _key_match(shape: TableShape, key: Sequence[str]) -> sql.Composable:
    return sql.SQL(" AND ").join(sql.SQL("{} = %s::{}").format(sql.Identifier(c), sql.SQL(shape.types[c])) for c in key)


def _delete(conn: psycopg.Connection[Any], shape: TableShape, key: Sequence[str], keys: Sequence[Key]) -> int:
    names = [sql.Identifier(f"k{i}") for i in range(len(key))]
    query = sql.SQL("DELETE FROM {} AS t USING unnest({}) AS u({}) WHERE {}").format(
        sql.SQL(shape.relation), sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in key), sql.SQL(", ").join(names),
        sql.SQL(" AND ").join(sql.SQL("t.{} = u.{}::{}").format(sql.Identifier(c), n, sql.SQL(shape.types[c]))
                              for c, n in zip(key, names, strict=True)))
    return conn.execute(query, [[k[i] for k in keys] for i in range(len(key))]).rowcount


def _update(conn: psycopg.Connection[Any], shape: TableShape, key: Sequence[str], columns: Sequence[str],
            params: Sequence[Sequence[str | None]]) -> None:
    """UPDATE each row: a params entry is the columns' values, then the key's."""
    query = sql.SQL("UPDATE {} SET {} WHERE {}").format(
        sql.SQL(shape.relation),
        sql.SQL(", ").join(sql.SQL("{} = %s::{}").format(sql.Identifier(c), sql.SQL(shape.types[c])) for c in columns),
        _key_match(shape, key))
    with conn.cursor() as cursor:
        cursor.executemany(query, params)


def _insert(conn: psycopg.Connection[Any], shape: TableShape, columns: Sequence[str],
            params: Sequence[Sequence[str | None]]) -> None:
    """INSERT each row: a params entry is the columns' values."""
    query = sql.SQL("INSERT INTO {} ({}) {}VALUES ({})").format(
        sql.SQL(shape.relation), sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.SQL("OVERRIDING SYSTEM VALUE " if shape.identity_always else ""),
        sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(shape.types[c])) for c in columns))
    with conn.cursor() as cursor:
        cursor.executemany(query, params)


def _verify(conn: psycopg.Connection[Any], table: str, key: Sequence[str], targets: Mapping[Key, Row | None],
            writes: Mapping[Key, Row]) -> None:
    found = read_rows(conn, table, key, list(targets))
    wrong: list[str] = []
    for k, row in targets.items():
        now = found.get(k)
        if row is None:
            if now is not None:
                wrong.append(f"{list(k)} is still there")
            continue
        if now is None:
            wrong.append(f"{list(k)} is missing")
            continue
        differ = [c for c, v in writes[k].items() if now.get(c) != v]
        if differ:
            wrong.append(f"{list(k)}: {', '.join(f'{c} is {now.get(c)!r}, not {writes[k][c]!r}' for c in differ[:3])}")
    if wrong:
        raise RepairMismatch(f"{table}: {len(wrong)} rows differ after the repair ({'; '.join(wrong[:5])})")


# ---------------------------------------------------------------------------------------- keyless


def insert_rows(conn: psycopg.Connection[Any], table: str, rows: Sequence[Row]) -> int:
    """Insert rows (text values; columns the table lacks, and generated ones, left out)."""
    if not rows:
        return 0
    shape = table_shape(conn, table, [])
    by_columns: dict[tuple[str, ...], list[list[str | None]]] = {}
    for row in rows:
        values = {c: v for c, v in row.items() if c in shape.types and c not in shape.generated}
        by_columns.setdefault(tuple(values), []).append(list(values.values()))
    for columns, params in by_columns.items():
        _insert(conn, shape, columns, params)
    return len(rows)


def delete_copies(conn: psycopg.Connection[Any], table: str, row_hash: sql.Composable, hashes: Sequence[int]) -> int:
    """Delete one row per listed row hash (a hash listed twice: two copies). `row_hash` is the fingerprint's
    row-hash expression over the table aliased `t`."""
    if not hashes:
        return 0
    wanted = Counter(int(h) for h in hashes)
    relation = conn.execute("SELECT %s::regclass::text", (table,)).fetchone()
    assert relation is not None
    query = sql.SQL(
        "DELETE FROM {rel} WHERE ctid IN (SELECT ctid FROM (SELECT t.ctid, {h} AS h, row_number() OVER "
        "(PARTITION BY {h}) AS n FROM {rel} AS t) AS s JOIN unnest(%s::int8[], %s::int8[]) AS w(h, copies) "
        "ON s.h = w.h WHERE s.n <= w.copies)").format(rel=sql.SQL(relation[0]), h=row_hash)
    return conn.execute(query, (list(wanted), list(wanted.values()))).rowcount

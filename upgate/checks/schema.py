"""Database schema: snapshot it, diff two snapshots, spot destructive changes; clone it for the rehearsal.

    >>> before = snapshot_schema(conn)                                     # doctest: +SKIP
    >>> diff_schemas(before, after).describe()                             # doctest: +SKIP
    '+column episodic_logs.cache_hit; +index episodic_logs_cache_hit_idx'
    >>> find_destructive(before, after)                                    # doctest: +SKIP
    ['episodic_logs.metadata']

The migration rehearsal (up, down, up on a sampled clone, whatever tool runs it) lives in
upgate/checks/rehearsal.py and uses the snapshots and the clone helpers here.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from upgate.checks.secrets import libpq_credentials, redact

Column = dict[str, Any]  # {"type": "character varying(64)", "nullable": True, "default": None}

_DESCRIBE_ITEMS = 12
_PG_TOOL_TIMEOUT_S = 600


@dataclass(frozen=True)
class SchemaSnapshot:
    """What a migration may change, keyed by name (column order is deliberately left out).

    Tables, views and sequences are named `table` in `public` and `schema.table` elsewhere;
    constraints are named `table.constraint`.
    """

    schemas: tuple[str, ...] = ("public",)
    tables: dict[str, dict[str, Column]] = field(default_factory=dict)
    indexes: dict[str, str] = field(default_factory=dict)
    constraints: dict[str, str] = field(default_factory=dict)
    sequences: dict[str, dict[str, Any]] = field(default_factory=dict)
    views: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["schemas"] = list(self.schemas)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SchemaSnapshot:
        return cls(
            schemas=tuple(data.get("schemas", ("public",))),
            tables={
                t: {c: dict(info) for c, info in cols.items()} for t, cols in data.get("tables", {}).items()
            },
            indexes=dict(data.get("indexes", {})),
            constraints=dict(data.get("constraints", {})),
            sequences={s: dict(info) for s, info in data.get("sequences", {}).items()},
            views=dict(data.get("views", {})),
        )


@dataclass(frozen=True)
class ColumnChange:
    """A column present before and after whose type, nullability or default changed."""

    column: str
    before: Column
    after: Column

    def describe(self) -> str:
        parts = [
            f"{key} {_show(self.before.get(key))} -> {_show(self.after.get(key))}"
            for key in ("type", "nullable", "default")
            if self.before.get(key) != self.after.get(key)
        ]
        return f"{self.column} " + ", ".join(parts)


@dataclass(frozen=True)
class SchemaDiff:
    added_tables: tuple[str, ...] = ()
    dropped_tables: tuple[str, ...] = ()
    added_columns: tuple[str, ...] = ()
    dropped_columns: tuple[str, ...] = ()
    changed_columns: tuple[ColumnChange, ...] = ()
    added_indexes: tuple[str, ...] = ()
    dropped_indexes: tuple[str, ...] = ()
    changed_indexes: tuple[str, ...] = ()
    added_constraints: tuple[str, ...] = ()
    dropped_constraints: tuple[str, ...] = ()
    changed_constraints: tuple[str, ...] = ()
    added_sequences: tuple[str, ...] = ()
    dropped_sequences: tuple[str, ...] = ()
    changed_sequences: tuple[str, ...] = ()
    added_views: tuple[str, ...] = ()
    dropped_views: tuple[str, ...] = ()
    changed_views: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not any(getattr(self, name) for name in self.__dataclass_fields__)

    def items(self) -> list[str]:
        """Every change as a short phrase, e.g. `+column episodic_logs.cache_hit`."""
        out: list[str] = []
        for kind in ("table", "column", "index", "constraint", "sequence", "view"):
            plural = "indexes" if kind == "index" else f"{kind}s"
            out += [f"+{kind} {name}" for name in getattr(self, f"added_{plural}")]
            out += [f"-{kind} {name}" for name in getattr(self, f"dropped_{plural}")]
            if kind == "column":
                out += [f"~column {change.describe()}" for change in self.changed_columns]
            elif kind != "table":
                out += [f"~{kind} {name}" for name in getattr(self, f"changed_{plural}")]
        return out

    def describe(self) -> str:
        """One line: `no schema changes` or `+column t.a; -index t_a_idx; ~column t.b type integer -> bigint`."""
        items = self.items()
        if not items:
            return "no schema changes"
        shown = "; ".join(items[:_DESCRIBE_ITEMS])
        more = len(items) - _DESCRIBE_ITEMS
        return shown + (f"; ... and {more} more" if more > 0 else "")

    def to_json(self) -> dict[str, Any]:
        data = {name: list(getattr(self, name)) for name in self.__dataclass_fields__}
        data["changed_columns"] = [asdict(change) for change in self.changed_columns]
        return data


class DryRunError(RuntimeError):
    """The rehearsal could not be set up (pg_dump, scratch database, clone): not the migration's fault."""


# --------------------------------------------------------------------------- snapshot


def snapshot_schema(conn: psycopg.Connection, schemas: Sequence[str] = ("public",)) -> SchemaSnapshot:
    """Read tables, columns, indexes, constraints, sequences and views of `schemas` from the catalog."""
    names = list(schemas)
    tables: dict[str, dict[str, Column]] = {}
    for nsp, table, column, typ, notnull, default in conn.execute(_COLUMNS, (names,)).fetchall():
        tables.setdefault(_qualify(nsp, table), {})
        if column is not None:
            tables[_qualify(nsp, table)][column] = {"type": typ, "nullable": not notnull, "default": default}
    indexes = {_qualify(nsp, name): d for nsp, name, d in conn.execute(_INDEXES, (names,)).fetchall()}
    constraints = {
        f"{_qualify(nsp, table)}.{name}": d
        for nsp, table, name, d in conn.execute(_CONSTRAINTS, (names,)).fetchall()
    }
    sequences = {
        _qualify(nsp, name): {
            "type": typ,
            "start": str(start),
            "increment": str(inc),
            "min": str(lo),
            "max": str(hi),
            "cycle": cycle,
        }
        for nsp, name, typ, start, inc, lo, hi, cycle in conn.execute(_SEQUENCES, (names,)).fetchall()
    }
    views = {_qualify(nsp, name): d for nsp, name, d in conn.execute(_VIEWS, (names,)).fetchall()}
    return SchemaSnapshot(
        schemas=tuple(names),
        tables=tables,
        indexes=indexes,
        constraints=constraints,
        sequences=sequences,
        views=views,
    )


_COLUMNS = """
SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s)
ORDER BY 1, 2, 3
"""
_INDEXES = """
SELECT n.nspname, i.relname, pg_get_indexdef(i.oid)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_namespace n ON n.oid = i.relnamespace
WHERE n.nspname = ANY(%s)
ORDER BY 1, 2
"""
_CONSTRAINTS = """
SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid)
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%s) AND k.contype IN ('p', 'u', 'f', 'c', 'x')
ORDER BY 1, 2, 3
"""
_SEQUENCES = """
SELECT schemaname, sequencename, data_type::text, start_value, increment_by, min_value, max_value, cycle
FROM pg_sequences
WHERE schemaname = ANY(%s)
ORDER BY 1, 2
"""
_VIEWS = """
SELECT n.nspname, c.relname, pg_get_viewdef(c.oid, true)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm') AND n.nspname = ANY(%s)
ORDER BY 1, 2
"""


def _qualify(schema: str, name: str) -> str:
    return name if schema == "public" else f"{schema}.{name}"


# --------------------------------------------------------------------------- diff


def diff_schemas(before: SchemaSnapshot, after: SchemaSnapshot) -> SchemaDiff:
    """What changed from `before` to `after`; columns of added or dropped tables are not listed again."""
    common = sorted(set(before.tables) & set(after.tables))
    added_columns = [f"{t}.{c}" for t in common for c in sorted(set(after.tables[t]) - set(before.tables[t]))]
    dropped_columns = [
        f"{t}.{c}" for t in common for c in sorted(set(before.tables[t]) - set(after.tables[t]))
    ]
    changed_columns = [
        ColumnChange(f"{t}.{c}", before.tables[t][c], after.tables[t][c])
        for t in common
        for c in sorted(set(before.tables[t]) & set(after.tables[t]))
        if before.tables[t][c] != after.tables[t][c]
    ]
    added_i, dropped_i, changed_i = _compare(before.indexes, after.indexes)
    added_k, dropped_k, changed_k = _compare(before.constraints, after.constraints)
    added_s, dropped_s, changed_s = _compare(before.sequences, after.sequences)
    added_v, dropped_v, changed_v = _compare(before.views, after.views)
    return SchemaDiff(
        added_tables=tuple(sorted(set(after.tables) - set(before.tables))),
        dropped_tables=tuple(sorted(set(before.tables) - set(after.tables))),
        added_columns=tuple(added_columns),
        dropped_columns=tuple(dropped_columns),
        changed_columns=tuple(changed_columns),
        added_indexes=added_i,
        dropped_indexes=dropped_i,
        changed_indexes=changed_i,
        added_constraints=added_k,
        dropped_constraints=dropped_k,
        changed_constraints=changed_k,
        added_sequences=added_s,
        dropped_sequences=dropped_s,
        changed_sequences=changed_s,
        added_views=added_v,
        dropped_views=dropped_v,
        changed_views=changed_v,
    )


def _compare(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[tuple[str, ...], ...]:
    return (
        tuple(sorted(set(after) - set(before))),
        tuple(sorted(set(before) - set(after))),
        tuple(sorted(k for k in set(before) & set(after) if before[k] != after[k])),
    )


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


# --------------------------------------------------------------------------- destructive changes


def find_destructive(before: SchemaSnapshot, after: SchemaSnapshot, allowed: Iterable[str] = ()) -> list[str]:
    """Names of dropped tables (`table`), dropped columns and narrowed columns (`table.column`), minus `allowed`.

    A type change counts as narrowing unless the new type clearly holds every old value unchanged
    (integer -> bigint, varchar(n) -> text, numeric(8,2) -> numeric(12,2), anything -> text ...).
    `allowed` entries may carry the `public.` prefix or not.
    """
    return [name for name, _ in destructive_changes(before, after, allowed)]


def destructive_changes(
    before: SchemaSnapshot, after: SchemaSnapshot, allowed: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """Like `find_destructive`, with why: `[("episodic_logs.score", "type numeric(10,4) -> real")]`."""
    permitted = {_unqualify(name) for name in allowed}
    found: list[tuple[str, str]] = []
    for table in sorted(set(before.tables) - set(after.tables)):
        found.append((table, "table dropped"))
    for table in sorted(set(before.tables) & set(after.tables)):
        old, new = before.tables[table], after.tables[table]
        for column in sorted(old):
            if column not in new:
                found.append((f"{table}.{column}", "column dropped"))
            elif not type_widens(old[column]["type"], new[column]["type"]):
                found.append((f"{table}.{column}", f"type {old[column]['type']} -> {new[column]['type']}"))
    return [(name, why) for name, why in found if _unqualify(name) not in permitted]


def _unqualify(name: str) -> str:
    return name[len("public.") :] if name.startswith("public.") else name


@dataclass(frozen=True)
class _Type:
    base: str
    args: tuple[int, ...]
    array: bool


_TYPE = re.compile(
    r"^(?P<base>[a-z][a-z ]*?)(?:\((?P<args>\d+(?:,\d+)?)\))?(?P<tz> with(?:out)? time zone)?(?P<array>(?:\[\])*)$"
)
_INT_RANK = {"smallint": 1, "integer": 2, "bigint": 3}
_INT_DIGITS = {"smallint": 5, "integer": 10, "bigint": 19}
_UNBOUNDED_TEXT = {"text", "character varying"}
_DEFAULT_TIME_PRECISION = 6


def type_widens(before: str, after: str) -> bool:
    """True when a column of type `after` holds every value of type `before` unchanged (format_type names)."""
    if before == after:
        return True
    old, new = _parse_type(before), _parse_type(after)
    if new and not new.array and new.base in _UNBOUNDED_TEXT and not new.args:
        return True  # every value has a lossless text form
    if old is None or new is None or old.array != new.array:
        return False
    return _base_widens(old, new)


def _parse_type(name: str) -> _Type | None:
    match = _TYPE.match(name.strip().lower())
    if not match:
        return None
    args = tuple(int(a) for a in match["args"].split(",")) if match["args"] else ()
    return _Type(base=match["base"] + (match["tz"] or ""), args=args, array=bool(match["array"]))


def _base_widens(old: _Type, new: _Type) -> bool:
    if old.base in _INT_RANK:
        if new.base in _INT_RANK:
            return _INT_RANK[new.base] >= _INT_RANK[old.base]
        if new.base == "numeric":
            return not new.args or _numeric_integer_digits(new) >= _INT_DIGITS[old.base]
        if new.base == "double precision":
            return old.base in ("smallint", "integer")
        if new.base == "real":
            return old.base == "smallint"
        return False
    if old.base == "numeric" and new.base == "numeric":
        if not new.args:
            return True
        if not old.args:
            return False
        return _numeric_scale(new) >= _numeric_scale(old) and _numeric_integer_digits(
            new
        ) >= _numeric_integer_digits(old)
    if old.base == "real":
        return new.base == "double precision"
    if old.base in ("character varying", "character", "text"):
        if new.base not in ("character varying", "character"):
            return False
        if new.base == "character" and old.base != "character":
            return False  # char(n) pads: the stored values change
        return _text_length(new) >= _text_length(old)
    if old.base == "date":
        return new.base.startswith("timestamp")
    if old.base.startswith(("timestamp", "time ")) or old.base == "time":
        same_kind = new.base == old.base or (
            old.base == "timestamp without time zone" and new.base == "timestamp with time zone"
        )
        return same_kind and _time_precision(new) >= _time_precision(old)
    if old.base == "bit varying" and new.base == "bit varying":
        return not new.args or (bool(old.args) and new.args[0] >= old.args[0])
    return False


def _numeric_scale(t: _Type) -> int:
    return t.args[1] if len(t.args) > 1 else 0


def _numeric_integer_digits(t: _Type) -> int:
    return t.args[0] - _numeric_scale(t)


def _text_length(t: _Type) -> float:
    if t.base == "text" or (t.base == "character varying" and not t.args):
        return float("inf")
    return float(t.args[0]) if t.args else 1.0  # bare "character" is char(1)


def _time_precision(t: _Type) -> int:
    return t.args[0] if t.args else _DEFAULT_TIME_PRECISION


# --------------------------------------------------------------------------- for the rehearsal


def preserved_columns(before: SchemaSnapshot, after: SchemaSnapshot) -> dict[str, list[str]]:
    """For each table of `before`: its columns still present with the same type in `after` ([] if dropped)."""
    out: dict[str, list[str]] = {}
    for table, columns in before.tables.items():
        kept = after.tables.get(table, {})
        out[table] = sorted(c for c, info in columns.items() if c in kept and kept[c]["type"] == info["type"])
    return out


def create_scratch_database(url: str, name: str) -> None:
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise DryRunError(
            f"cannot create scratch database {name} on {redact(url)} for the rehearsal "
            f"(the role needs CREATEDB): {_first_line(exc)}"
        ) from exc


def drop_scratch_database(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def clone_schema(source: str, target: str, pg_dump: str, psql: str | None) -> None:
    if psql is None:
        beside = Path(pg_dump).with_name("psql")
        psql = str(beside) if beside.exists() else None
    with tempfile.TemporaryDirectory(prefix="upgate-rehearsal-") as folder:
        dump = Path(folder) / "schema.sql"
        _run_tool(
            [pg_dump, "--schema-only", "--no-owner", "--no-privileges", "--file", str(dump)],
            source,
            "pg_dump",
        )
        if psql:
            _run_tool(
                [psql, "--no-psqlrc", "--quiet", "--set", "ON_ERROR_STOP=1", "--file", str(dump)],
                target,
                "psql",
            )
        else:
            _load_without_psql(dump, target)


def same_server(url: str, dbname: str) -> str:
    """`url` naming another database on the same server, in the same form (a URL stays a URL: the
    application's own tools, SQLAlchemy or Django, read URLs, not libpq key=value strings)."""
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres") or parts.scheme.startswith("postgresql+"):
        return urlunsplit((parts.scheme, parts.netloc, "/" + quote(dbname), parts.query, parts.fragment))
    return make_conninfo(url, dbname=dbname)


def _run_tool(argv: list[str], conninfo: str, tool: str) -> None:
    """Run a libpq tool against `conninfo`, keeping the password out of the process list."""
    try:
        with libpq_credentials(conninfo) as (dsn, env):
            argv = [*argv, "--dbname", dsn]
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=_PG_TOOL_TIMEOUT_S)
    except ValueError as exc:
        raise DryRunError(f"{tool}: {exc}") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DryRunError(f"{tool} ({argv[0]}) could not run for the rehearsal: {exc}") from exc
    if done.returncode != 0:
        detail = redact(done.stderr.strip() or done.stdout.strip())
        raise DryRunError(f"{tool} failed (exit {done.returncode}) on {redact(conninfo)}: {detail}")


def _load_without_psql(dump: Path, target: str) -> None:
    text = "\n".join(line for line in dump.read_text().splitlines() if not line.startswith("\\"))
    try:
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute(text.encode())
    except psycopg.Error as exc:
        raise DryRunError(
            f"loading the schema dump into the scratch database failed: {_first_line(exc)}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

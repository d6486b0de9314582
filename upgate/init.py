"""`upgate init`: a starter upgate.toml written from what the database and the app actually answer.

    >>> found = discover("postgresql://app@db/shop", "http://127.0.0.1:8000", environ={})   # doctest: +SKIP
    >>> write_starter(Path("upgate.toml"), render(found, name="shop"))                      # doctest: +SKIP

The database gives the tables and their keys (migration tools' bookkeeping left out, with the integrity
exclude defaults) and the migration tool its bookkeeping table names; the app gives the health, readiness
and metrics endpoints it really answers; the environment gives Redis and Prometheus (REDIS_URL,
MONITORING_URL). Every key written is commented. A password is never written: libpq reads it from
PGPASSWORD or ~/.pgpass, or DATABASE_URL overrides the url. An existing file is never written over.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import requests
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from upgate.checks.secrets import redact
from upgate.config import IntegrityConfig
from upgate.errors import ConfigError

HEALTH_PATHS = ("/health", "/healthz", "/livez", "/api/health", "/status", "/ping")
READY_PATHS = ("/ready", "/readyz", "/api/ready")
METRICS_PATHS = ("/metrics",)
OPENAPI_PATHS = ("/openapi.json",)
# Bookkeeping table -> the tool that keeps it.
MIGRATION_TOOLS = {"alembic_version": "alembic", "django_migrations": "django", "flyway_schema_history": "flyway"}


@dataclass(frozen=True)
class TableInfo:
    name: str
    key: list[str]  # primary key columns; empty: compared as a multiset of whole rows
    rows: int  # the planner's estimate (-1: never analysed)


@dataclass
class Found:
    """What `discover` learnt; `render` turns it into commented TOML."""

    database_url: str | None = None
    server_version: str | None = None
    tables: list[TableInfo] = field(default_factory=list)
    bookkeeping: list[str] = field(default_factory=list)
    tool: str | None = None  # alembic, django, flyway
    tool_state: str = ""  # e.g. the Alembic revision the database is at
    app_url: str | None = None
    answered: dict[str, int] = field(default_factory=dict)  # path -> HTTP status (0: no answer)
    health_path: str | None = None
    ready_path: str | None = None
    metrics_path: str | None = None
    metric_names: list[str] = field(default_factory=list)
    openapi_path: str | None = None
    redis_url: str | None = None
    prometheus_url: str | None = None
    notes: list[str] = field(default_factory=list)  # what the person must look at, printed by the CLI


def without_password(url: str) -> str:
    """The database URL (or key=value DSN) with its password left out."""
    if "://" in url:
        parts = urlsplit(url)
        if not parts.password:  # none, or empty (postgres:@): nothing secret to leave out
            return url
        host = parts.netloc.rsplit("@", 1)[-1]
        user = parts.username or ""
        return urlunsplit((parts.scheme, f"{user}@{host}" if user else host, parts.path, parts.query, parts.fragment))
    params = conninfo_to_dict(url)
    params.pop("password", None)
    return make_conninfo("", **params)


def inspect_database(found: Found, url: str, timeout_s: float = 5.0) -> None:
    """Tables, keys, bookkeeping tables and the migration tool they name; a database that does not answer is an
    error (init writes nothing rather than a config that gates nothing)."""
    from upgate.checks.integrity import list_tables, primary_key, split_excluded

    found.database_url = without_password(url)
    if found.database_url != url:
        found.notes.append("the database password is not written: set it in PGPASSWORD or ~/.pgpass, or give the "
                           "whole URL in DATABASE_URL (it overrides [database] url)")
    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout_s))) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            found.server_version = str(row[0]) if row else None
            tables, excluded = split_excluded(list_tables(conn), IntegrityConfig().excluded())
            estimates: dict[str, int] = dict(conn.execute(
                "SELECT c.oid::regclass::text, c.reltuples::bigint FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
            ).fetchall())
            found.tables = [TableInfo(t, primary_key(conn, t), int(estimates.get(t, -1))) for t in tables]
            found.bookkeeping = excluded
            for table in excluded:
                tool = MIGRATION_TOOLS.get(table.replace('"', "").lower())
                if tool and found.tool is None:
                    found.tool = tool
                    found.tool_state = _tool_state(conn, tool)
    except psycopg.Error as exc:
        raise ConfigError(f"--database-url {redact(url)}: the database does not answer: "
                          f"{redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)}") \
            from None


def _tool_state(conn: psycopg.Connection[Any], tool: str) -> str:
    try:
        if tool == "alembic":
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
            return "at revision " + ", ".join(r[0] for r in rows) if rows else "no revision applied yet"
        if tool == "django":
            (count,) = conn.execute("SELECT count(*) FROM django_migrations").fetchone() or (0,)
            return f"{count} migrations applied"
        if tool == "flyway":
            row = conn.execute("SELECT version FROM flyway_schema_history WHERE success ORDER BY installed_rank DESC "
                               "LIMIT 1").fetchone()
            return f"at version {row[0]}" if row else "no version applied yet"
    except psycopg.Error:
        conn.rollback()
    return ""


def probe_app(found: Found, base_url: str, timeout_s: float = 3.0) -> None:
    """GET the usual health, readiness, metrics and OpenAPI paths; keep the ones that answer 200."""
    root = found.app_url = base_url.rstrip("/")
    with requests.Session() as session:
        session.trust_env = False
        session.headers["User-Agent"] = "upgate-init"

        def get(path: str) -> requests.Response | None:
            try:
                response = session.get(root + path, timeout=timeout_s)
            except requests.RequestException:
                found.answered[path] = 0
                return None
            found.answered[path] = response.status_code
            return response if response.status_code == 200 else None

        found.health_path = next((p for p in HEALTH_PATHS if get(p) is not None), None)
        found.ready_path = next((p for p in READY_PATHS if get(p) is not None), None)
        for path in METRICS_PATHS:
            response = get(path)
            if response is not None and _metric_names(response.text):
                found.metrics_path, found.metric_names = path, _metric_names(response.text)
                break
        for path in OPENAPI_PATHS:
            response = get(path)
            if response is not None and _is_json(response.text):
                found.openapi_path = path
                break
    if not any(found.answered.values()):
        raise ConfigError(f"--app-url {found.app_url}: the app does not answer (tried {', '.join(found.answered)})")
    if found.health_path is None:
        found.notes.append(f"no health endpoint answered 200 (tried {', '.join(HEALTH_PATHS)}): set [app] "
                           "health_path to one that does before gating")


def _metric_names(text: str) -> list[str]:
    names: list[str] = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4 and parts[2] not in names:
                names.append(parts[2])
    return names


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def discover(database_url: str | None, app_url: str | None, environ: Mapping[str, str]) -> Found:
    found = Found()
    if database_url:
        inspect_database(found, database_url)
    if app_url:
        probe_app(found, app_url)
    found.redis_url = environ.get("REDIS_URL") or None
    found.prometheus_url = environ.get("MONITORING_URL") or None
    return found


# --- the TOML ----------------------------------------------------------------------------------------


def _q(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string for what is written here


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def render(found: Found, name: str) -> str:
    """The starter config: every key with a comment saying what it does and where its value came from."""
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    out = [
        f"# upgate.toml written by `upgate init` on {today}: a starting point, from what the database and the app",
        "# answered. Read each key, then: `upgate check-config`, `pytest --pyargs upgate.gates.pre --upgate-config",
        "# upgate.toml`, and add [migrate] and [deploy] for `upgate run`. Reference: docs/configuration.md.",
        "",
        "[target]",
        f"name = {_q(name)}  # names the service in reports, metrics and the advisory lock",
        '# from_version = "1.4.2"  # shown in reports; CI usually passes them through the config it generates',
        '# to_version = "1.5.0"',
        "",
    ]
    out += _database(found)
    out += _integrity(found)
    out += _migrate(found)
    out += _app(found)
    out += _monitoring(found)
    out += _rest(found)
    return "\n".join(out).rstrip() + "\n"


def _database(found: Found) -> list[str]:
    if found.database_url is None:
        return ["# [database]", '# url = "postgresql://app@db.internal:5432/shop"  # or DATABASE_URL', ""]
    version = f" (PostgreSQL {found.server_version})" if found.server_version else ""
    return [
        "[database]",
        f"url = {_q(found.database_url)}  # the database gated{version}; DATABASE_URL overrides it",
        '# bin_dir = "/usr/lib/postgresql/16/bin"  # pg_dump/pg_restore/psql of the server\'s major version; '
        "default: PATH",
        "",
    ]


def _integrity(found: Found) -> list[str]:
    if found.database_url is None:
        return []
    out = ["[integrity]"]
    names = [t.name for t in found.tables]
    left = f"; left out as migration bookkeeping: {', '.join(found.bookkeeping)}" if found.bookkeeping else ""
    out.append("# Tables fingerprinted before the upgrade and compared after it: every table found" + left + ".")
    out.append('# "all" would also gate tables created later (minus the same bookkeeping patterns).')
    out.append(f"tables = {_list(names)}" if names else 'tables = "all"  # no table yet')
    out.append("allow_added_rows = true  # live traffic may add rows between the baseline and the post gates")
    keyless = [t.name for t in found.tables if not t.key]
    if found.tables:
        out += ["", "[integrity.keys]", "# The key each table's rows are matched on: its primary key."]
        for t in found.tables:
            if t.key:
                rows = f", ~{t.rows:,} rows" if t.rows >= 0 else ""
                out.append(f"{_q(t.name) if not t.name.isidentifier() else t.name} = {_list(t.key)}  # primary key"
                           f"{rows}")
        if keyless:
            out.append(f"# No primary key (compared as multisets of whole rows; name a unique key if there is one): "
                       f"{', '.join(keyless)}")
            out += [f"# {k} = [\"id\"]" for k in keyless]
    return [*out, ""]


def _migrate(found: Found) -> list[str]:
    state = f" ({found.tool_state})" if found.tool_state else ""
    if found.tool == "alembic":
        return [
            f"# Migrations: alembic_version found{state}: `alembic upgrade head`; undone by a downgrade to the",
            "# revision recorded before, else by restoring the verified backup.",
            "[migrate]",
            'kind = "alembic"  # alembic -c <alembic_ini> upgrade head',
            'alembic_ini = "alembic.ini"  # the project\'s alembic.ini, relative to this file',
            '# alembic = ["python", "-m", "alembic"]  # how to run it; default: alembic on PATH',
            "",
        ]
    if found.tool == "django":
        return [
            f"# Migrations: django_migrations found{state}: the project's own `manage.py migrate`. No `down`:",
            "# the rollback restores the verified backup (Django migrates back per app, to a named migration).",
            "[migrate]",
            'kind = "command"  # the application\'s own tool, as argv',
            'up = ["python", "manage.py", "migrate", "--noinput"]  # migrates the database forward',
            'workdir = "."  # the folder holding manage.py, relative to this file',
            "# {database_url} is replaced by the database it runs against (the rehearsal clone, then the live one):",
            '# env = { DATABASE_URL = "{database_url}" }  # if the settings read DATABASE_URL',
            "",
        ]
    if found.tool == "flyway":
        return [
            f"# Migrations: flyway_schema_history found{state}: `flyway migrate`. Flyway reads its JDBC URL",
            "# from FLYWAY_URL; no `down`: the rollback restores the verified backup.",
            "[migrate]",
            'kind = "command"  # the application\'s own tool, as argv',
            'up = ["flyway", "migrate"]  # migrates the database forward',
            '# env = { FLYWAY_URL = "jdbc:postgresql://db.internal:5432/shop", FLYWAY_USER = "app" }',
            "",
        ]
    return [
        "# Migrations: no migration tool's bookkeeping table found. Pick one:",
        "# [migrate]",
        '# kind = "sql"                 # NNN_name.up.sql files (+ optional NNN_name.down.sql), each in one transaction',
        '# directory = "migrations"',
        '# kind = "command"             # the application\'s own tool',
        '# up = ["./manage", "migrate"]',
        '# down = ["./manage", "migrate", "--to", "previous"]',
        "",
    ]


def _app(found: Found) -> list[str]:
    if found.app_url is None:
        return ["# [app]", '# base_url = "http://127.0.0.1:8000"  # or UPGATE_APP_URL', ""]
    tried = ", ".join(f"{p} {s or 'no answer'}" for p, s in found.answered.items())
    out = ["[app]", f"# Probed: {tried}.", f"base_url = {_q(found.app_url)}  # UPGATE_APP_URL overrides it"]
    if found.health_path:
        out.append(f"health_path = {_q(found.health_path)}  # answered 200: liveness")
    else:
        out.append('health_path = "/health"  # NOTHING answered 200 here: set the path that does')
    if found.ready_path:
        out.append(f"ready_path = {_q(found.ready_path)}  # answered 200: readiness; the downtime probes use it")
    else:
        out.append("# ready_path: no readiness endpoint answered; unset, readiness is the health path")
    if found.metrics_path:
        out.append(f"metrics_path = {_q(found.metrics_path)}  # Prometheus text, {len(found.metric_names)} metric "
                   "families")
    out.append("timeout_s = 2.0  # per request")
    return [*out, ""]


def _monitoring(found: Found) -> list[str]:
    lines: list[str] = []
    if found.redis_url:
        lines.append(f"redis_url = {_q(without_password(found.redis_url))}  # from REDIS_URL (which overrides it, "
                     "password included)")
    if found.prometheus_url:
        lines.append(f"prometheus_url = {_q(found.prometheus_url)}  # from MONITORING_URL (which also overrides it)")
    suggestion = _list(found.metric_names[:3]) if found.metric_names else '["http_requests_total"]'
    required = f"# required_metrics = {suggestion}  # names the app's {found.metrics_path or '/metrics'} must expose"
    if lines:
        return ["[monitoring]", *lines, required, ""]
    return ["# [monitoring]  # nothing in REDIS_URL or MONITORING_URL", '# redis_url = "redis://cache:6379/0"',
            '# prometheus_url = "http://prometheus:9090"', required, ""]


def _rest(found: Found) -> list[str]:
    endpoint = found.health_path or "/health"
    out = [
        "# [contract]  # GET paths whose JSON shape must survive the upgrade (no field removed or retyped)",
        f"# endpoints = [{_q(endpoint)}]",
    ]
    if found.openapi_path:
        out.append(f"# openapi_path = {_q(found.openapi_path)}  # answered: recorded and compared too")
    out += [
        "",
        "# [deploy]  # how the new version replaces the old one (docs/steps-and-rollback.md)",
        '# kind = "command"',
        '# deploy_command = "./deploy.sh 1.5.0"',
        '# rollback_command = "./deploy.sh 1.4.2"',
        "",
        "[thresholds]",
        "max_downtime_s = 300  # the guide's budget per upgrade",
        "max_rollback_s = 300  # from the failing post gate to the verified rollback",
        "",
        "# [gates]",
        '# extra = ["tests/upgate_gates"]  # your own gates, run with the shipped ones (docs/writing-gates.md)',
    ]
    return out


def refuse_existing(path: Path) -> None:
    if path.exists():
        raise ConfigError(f"{path} exists: upgate init never writes over a file (give --output another path)")


def write_starter(path: Path, text: str) -> None:
    """Create `path` with `text`; an existing file is never written over (ConfigError naming it)."""
    refuse_existing(path)
    try:
        with path.open("x", encoding="utf-8") as fh:
            fh.write(text)
    except FileExistsError:
        raise ConfigError(f"{path} exists: upgate init never writes over a file (give --output another path)") \
            from None

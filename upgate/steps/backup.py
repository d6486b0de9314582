"""Backup before anything is touched, and the restore that returns the exact baseline.

    >>> backup = take_backup(url, Path("run/backup"), pg_dump, pg_restore)       # doctest: +SKIP
    >>> outcome = restore_database(url, backup, pg_restore, psql, tag="20261125_101500_ab12")   # doctest: +SKIP
    >>> outcome.method, outcome.kept_as
    ('fresh-database', 'app_failed_20261125_101500_ab12')

`pg_dump -Fd -j N` (a directory archive, one data file per table, tables dumped in parallel),
uncompressed by default (`[backup] compression`: gzip costs more than the dump itself on two cores, and
the restore decompresses again); then, at the same time, the verification by a full read (`pg_restore -f
/dev/null` over the whole archive: `--list` only reads the table of contents and misses a corrupt data
block; gzip's CRC checks each compressed block, an uncompressed archive is proven to read to its end) and
the checksums (`manifest.sha256`, one sha256 per file, `sha256sum -c` format; the backup's `sha256` is the
manifest's). The restore checks the manifest again, in parallel, before it trusts the archive.

The restore never restores *over* what the migration left: `pg_restore --clean` cannot drop an old
constraint that a new table's foreign key depends on, and leaves every new table behind. Instead:

1. a fresh database `<name>_upgate_<tag>` from template0 (same encoding and locale), `pg_restore -j`
   into it, its schema compared with the baseline snapshot there, the database's own settings
   (`ALTER DATABASE ... SET`), connection limit and grants copied onto it;
2. then the swap: no new connections to the live database, its sessions terminated, renamed to
   `<name>_failed_<tag>` (kept for forensics), the fresh one renamed to `<name>`. Each move is
   journaled, so `upgate rollback` can finish a swap a killed run left half-done.

When the role cannot create databases (or cannot rename the live one), the fallback runs in one
transaction in the live database: drop every non-system schema with CASCADE (whatever the migration
created goes with it: tables, foreign keys into old tables, types, sequences, extensions), create
`public` again as it was, and replay the backup. Passwords reach the tools through a private passfile (PGPASSFILE), never argv.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from upgate.checks.schema import SchemaSnapshot, diff_schemas, snapshot_schema
from upgate.checks.secrets import libpq_credentials, redact
from upgate.config import Config
from upgate.errors import StepFailed
from upgate.steps.base import Record, RestorePoint, StepContext, StepPlan, records_for

_TOOL_TIMEOUT_S = 6 * 3600
# List-valued settings whose stored text is already quoted the way SET expects (as pg_dumpall emits them).
_LIST_SETTINGS = {"search_path", "temp_tablespaces", "session_preload_libraries", "shared_preload_libraries",
                  "local_preload_libraries", "unix_socket_directories"}


@dataclass(frozen=True)
class Backup:
    path: Path
    size_bytes: int
    sha256: str
    dump_s: float
    verify_s: float
    verified: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Backup:
        return cls(**{**data, "path": Path(data["path"])})


def run_tool(argv: list[str], what: str, conninfo: str | None = None,
             timeout_s: float | None = _TOOL_TIMEOUT_S,
             settings: dict[str, str] | None = None,
             track: Callable[[subprocess.Popen[str] | None], None] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a libpq tool; with `conninfo`, `--dbname` gets it without its password (a private passfile has that).

    `settings` are server settings for the tool's sessions (PGOPTIONS). The tool runs in a process
    group of its own: a Ctrl-C meant for upgate (which then rolls back) never kills a restore.
    `track(proc)` is told of the running tool (and of None when it ended), so that it can be cancelled.
    """
    with contextlib.ExitStack() as stack:  # the passfile lives until the tool has ended
        env = dict(os.environ)
        if settings:
            options = " ".join(f"-c {key}={value}" for key, value in settings.items())
            env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {options}".strip()
        if conninfo is not None:
            try:
                dsn, env = stack.enter_context(libpq_credentials(conninfo, env))
            except ValueError as exc:
                raise StepFailed(f"{what}: {exc}") from None
            argv = [*argv, "--dbname", dsn]
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    text=True, env=env, process_group=0)
        except FileNotFoundError:
            raise StepFailed(f"{what}: {argv[0]} not found (set [database] bin_dir)") from None
        if track is not None:
            track(proc)
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise StepFailed(f"{what}: timed out after {timeout_s} s") from None
        finally:
            if proc.poll() is None:  # timed out or interrupted: the tool and its workers (pg_dump -j) go
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if track is not None:
                track(None)
    if proc.returncode != 0:
        raise StepFailed(f"{what} failed (exit {proc.returncode}): {redact(stderr.strip())[-800:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


MANIFEST = "manifest.sha256"


def manifest_of(folder: Path, jobs: int = 2) -> str:
    """`sha256  name` per file of a directory archive (sorted, the manifest itself left out), hashed in parallel."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # hashlib releases the GIL on big blocks
        digests = list(pool.map(sha256_of, files))
    return "".join(f"{digest}  {path.name}\n" for digest, path in zip(digests, files, strict=True))


def checksum_of(path: Path, jobs: int = 2) -> str:
    """The backup's checksum: sha256 of the file, or of the manifest of a directory archive."""
    if path.is_dir():
        return hashlib.sha256(manifest_of(path, jobs).encode()).hexdigest()
    return sha256_of(path)


def verify_backup(path: Path, pg_restore: str, level: str = "full",
                  track: Callable[[subprocess.Popen[str] | None], None] | None = None) -> float:
    started = time.monotonic()
    if level == "full":
        run_tool([pg_restore, "--file", "/dev/null", str(path)], f"verifying backup {path}", track=track)
    elif level == "list":
        run_tool([pg_restore, "--list", str(path)], f"listing backup {path}", track=track)
    return time.monotonic() - started


def take_backup(url: str, folder: Path, pg_dump: str, pg_restore: str, compression: int = 0,
                verify: str = "full", jobs: int | None = None, snapshot: str | None = None,
                track: Callable[[subprocess.Popen[str] | None], None] | None = None) -> Backup:
    """Dump with `jobs` parallel workers, then verify (full read) and checksum at the same time.

    `snapshot`: dump what an exported snapshot shows (a live capture's baseline), not the database now."""
    jobs = max(1, jobs or os.cpu_count() or 1)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "database.dir"
    if target.exists():
        shutil.rmtree(target)
    started = time.monotonic()
    run_tool([pg_dump, "--format=directory", f"--jobs={jobs}", f"--compress={compression}", "--no-owner",
              "--file", str(target), *([f"--snapshot={snapshot}"] if snapshot else [])], "pg_dump", conninfo=url,
             track=track)
    dump_s = time.monotonic() - started
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        verifying = pool.submit(verify_backup, target, pg_restore, verify, track)
        manifest = manifest_of(target, jobs)
        verifying.result()
    (target / MANIFEST).write_text(manifest, encoding="utf-8")
    size = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
    return Backup(path=target, size_bytes=size, sha256=hashlib.sha256(manifest.encode()).hexdigest(),
                  dump_s=round(dump_s, 3), verify_s=round(time.monotonic() - started, 3), verified=verify)


# --- restore ----------------------------------------------------------------------------------------


@dataclass
class RestoreOutcome:
    method: str  # "fresh-database" or "drop-schemas"
    seconds: float
    database: str
    kept_as: str | None = None  # the failed database, kept for forensics (fresh-database only)
    schema_checked: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[str, dict[str, Any]], None]

#: Session settings of pg_restore into the fresh database: nobody uses it until the swap, so its commits
#: need not wait for the WAL flush (a crash before the swap is answered by restoring again, and the
#: swap's own synchronous commit flushes the WAL past every one of them); index builds get memory.
RESTORE_SETTINGS = {"synchronous_commit": "off", "maintenance_work_mem": "256MB"}


class SwapHook(Protocol):
    """Live traffic around the swap (upgate/core/live.py `LiveSwap`): the one session the lockout spares, and
    what runs once every other session is gone and before the restored database takes the live name."""

    spare_application: str

    def in_place(self, why: str) -> None: ...

    def before_lockout(self, live_url: str, fresh_url: str) -> None: ...

    def after_lockout(self, fresh_url: str) -> Any: ...

    def after_swap(self, names: dict[str, str]) -> None: ...

    def resumed(self, names: dict[str, str]) -> None: ...


def restore_database(url: str, backup: Backup, pg_restore: str, psql: str, tag: str,
                     expected: SchemaSnapshot | None = None, jobs: int = 4,
                     progress: Progress | None = None, resume: dict[str, Any] | None = None,
                     swap_hook: SwapHook | None = None) -> RestoreOutcome:
    """Make the database at `url` exactly the backup again (see the module docstring for how).

    `tag` names the fresh and the kept database; `expected` is the baseline schema the result must
    equal; `progress(event, detail)` is called as each part commits (the journal); `resume` is what
    the journal says an earlier, killed restore had done (its last event and names); `swap_hook` is called
    around the swap (live traffic: the writes since the baseline replayed onto the restored database).
    """
    if checksum_of(backup.path, jobs) != backup.sha256:
        raise StepFailed(f"backup {backup.path} changed since it was verified (checksum mismatch): not restoring")
    say = progress or (lambda _event, _detail: None)
    started = time.monotonic()
    names = _names(url, tag)
    if resume and resume.get("event") in ("renamed-out", "renamed-in", "verified"):
        done = _finish_swap(url, names, resume, say, swap_hook)
        if done is not None:
            done.seconds = round(time.monotonic() - started, 3)
            return done
    with _maintenance(url) as admin:
        plan = _can_swap(admin, names["live"])
    if plan is None:
        outcome = _restore_fresh(url, backup, pg_restore, names, expected, jobs, say, swap_hook)
    else:
        if swap_hook is not None:
            swap_hook.in_place(plan)
        say("fallback", {"why": plan})
        outcome = _restore_in_place(url, backup, pg_restore, psql, expected, say)
        outcome.notes.append(f"restored in place: {plan}")
    outcome.seconds = round(time.monotonic() - started, 3)
    return outcome


def _live_name(url: str) -> str:
    return str(conninfo_to_dict(url).get("dbname") or "postgres")


def _names(url: str, tag: str) -> dict[str, str]:
    live = _live_name(url)
    stem = live[: 63 - len("_failed_") - len(tag)]
    return {"live": live, "fresh": f"{stem}_upgate_{tag}", "failed": f"{stem}_failed_{tag}"}


class _maintenance:
    """A connection to the server's maintenance database (postgres, else template1): never the live one."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: psycopg.Connection | None = None

    def __enter__(self) -> psycopg.Connection:
        errors = []
        for name in ("postgres", "template1"):
            try:
                self.conn = psycopg.connect(make_conninfo(self.url, dbname=name), autocommit=True,
                                            connect_timeout=10, application_name="upgate-restore")
                return self.conn
            except psycopg.Error as exc:
                errors.append(f"{name}: {_first_line(exc)}")
        raise StepFailed(f"restore needs a connection to the server's maintenance database: {'; '.join(errors)}")

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.close()


def _can_swap(admin: psycopg.Connection, live: str) -> str | None:
    """None when this role can create a database and rename the live one; else why not."""
    row = admin.execute(
        "SELECT r.rolsuper, r.rolcreatedb, pg_has_role(current_user, d.datdba, 'MEMBER') "
        "FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = %s", (live,)).fetchone()
    if row is None:
        return f"database {live} not found on the server"
    superuser, createdb, owner = row
    if superuser:
        return None
    if not createdb:
        return "the role cannot create databases (no CREATEDB)"
    if not owner:
        return f"the role does not own database {live}, so it cannot rename it"
    return None


def _restore_fresh(url: str, backup: Backup, pg_restore: str, names: dict[str, str],
                   expected: SchemaSnapshot | None, jobs: int, say: Progress,
                   swap_hook: SwapHook | None = None) -> RestoreOutcome:
    live, fresh = names["live"], names["fresh"]
    fresh_url = make_conninfo(url, dbname=fresh)
    with _maintenance(url) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(fresh)))
        admin.execute(_create_like(admin, live, fresh))
    say("created", {"database": fresh, **names})
    try:
        run_tool([pg_restore, "--no-owner", "--exit-on-error", f"--jobs={max(1, jobs)}", str(backup.path)],
                 f"pg_restore of {backup.path} into {fresh}", conninfo=fresh_url, settings=RESTORE_SETTINGS)
        say("restored", {"database": fresh, **names})
        checked = _check_schema(fresh_url, expected, f"the restored database {fresh}")
        with _maintenance(url) as admin:
            notes = _copy_database_settings(admin, live, fresh)
        say("verified", {"database": fresh, "schema_checked": checked, **names})
    except BaseException:
        with _maintenance(url) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(fresh)))
        raise
    with _maintenance(url) as admin:
        _swap(admin, names, say, hook=swap_hook, url=url)
    return RestoreOutcome("fresh-database", 0.0, live, kept_as=names["failed"], schema_checked=checked, notes=notes)


def _finish_swap(url: str, names: dict[str, str], resume: dict[str, Any],
                 say: Progress, hook: SwapHook | None = None) -> RestoreOutcome | None:
    """Finish a swap a killed run left half-done; None when it must start over. `hook`: live traffic's,
    run around a swap that had not begun; told (`resumed`) when the killed run had already locked out."""
    with _maintenance(url) as admin:
        present = {r[0] for r in admin.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (list(names.values()),)).fetchall()}
        event = resume.get("event")
        if event == "renamed-in" and names["live"] in present:
            if hook is not None:
                hook.resumed(dict(names))
            return RestoreOutcome("fresh-database", 0.0, names["live"], kept_as=names["failed"], schema_checked=True,
                                  notes=["a killed restore had already swapped the restored database in"])
        if event == "renamed-out" and names["fresh"] in present and names["live"] not in present:
            _swap(admin, names, say, already_out=True)
            if hook is not None:
                hook.resumed(dict(names))
            return RestoreOutcome("fresh-database", 0.0, names["live"], kept_as=names["failed"], schema_checked=True,
                                  notes=["finished the swap a killed restore left half-done"])
        if event == "verified" and names["fresh"] in present and names["live"] in present:
            _swap(admin, names, say, hook=hook, url=url)
            return RestoreOutcome("fresh-database", 0.0, names["live"], kept_as=names["failed"], schema_checked=True,
                                  notes=["swapped in the database a killed restore had verified"])
        if names["live"] not in present:
            raise StepFailed(f"database {names['live']} is missing and {names['fresh']} is not there to take its "
                             f"place: rename {names['failed']} back by hand")
    return None


def _swap(admin: psycopg.Connection, names: dict[str, str], say: Progress, already_out: bool = False,
          hook: SwapHook | None = None, url: str | None = None) -> None:
    live, fresh, failed = (sql.Identifier(names[k]) for k in ("live", "fresh", "failed"))
    swapped = hook
    if not already_out:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(failed))
        spared = hook.spare_application if hook is not None else ""
        if hook is not None and url is not None:
            try:
                hook.before_lockout(url, make_conninfo(url, dbname=names["fresh"]))
            except BaseException:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(fresh))
                raise
        admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(live))
        for attempt in range(50):
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid() AND application_name <> %s",
                          (names["live"], spared))
            if hook is not None and url is not None:
                try:
                    detail = hook.after_lockout(make_conninfo(url, dbname=names["fresh"]))
                except BaseException:
                    admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(live))
                    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(fresh))
                    raise
                say("replayed", {"detail": detail, **names})
                hook, spared = None, ""
                continue
            try:
                admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(live, failed))
                break
            except psycopg.errors.ObjectInUse:
                if attempt == 49:
                    admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(live))
                    raise StepFailed(f"database {names['live']} stayed in use; the restored copy is kept as "
                                     f"{names['fresh']}") from None
                time.sleep(0.1)
        say("renamed-out", dict(names))
    try:
        admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(fresh, live))
    except psycopg.Error as exc:
        admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(failed, live))
        admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(live))
        raise StepFailed(f"could not rename {names['fresh']} to {names['live']} ({_first_line(exc)}); the live "
                         "database was put back under its name unchanged") from None
    admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(failed))
    say("renamed-in", dict(names))
    if swapped is not None:
        swapped.after_swap(dict(names))


def _create_like(admin: psycopg.Connection, live: str, fresh: str) -> sql.Composed:
    """CREATE DATABASE fresh with the live database's encoding, locale and owner, from template0."""
    row = admin.execute("SELECT row_to_json(d)::jsonb || jsonb_build_object('owner', pg_get_userbyid(d.datdba), "
                        "'encoding_name', pg_encoding_to_char(d.encoding)) FROM pg_database d WHERE datname = %s",
                        (live,)).fetchone()
    if row is None:
        raise StepFailed(f"database {live} not found on the server")
    info = row[0]
    parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {}").format(
        sql.Identifier(fresh), sql.Literal(info["encoding_name"]))]
    parts.append(sql.SQL("LC_COLLATE {} LC_CTYPE {}").format(sql.Literal(info["datcollate"]),
                                                            sql.Literal(info["datctype"])))
    provider = info.get("datlocprovider")
    icu = info.get("daticulocale") or info.get("datlocale")
    if provider == "i" and icu:
        parts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(icu)))
    owner = admin.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", (info["owner"],)).fetchone()
    if owner and owner[0]:
        parts.append(sql.SQL("OWNER {}").format(sql.Identifier(info["owner"])))
    return sql.SQL(" ").join(parts)


def _copy_database_settings(admin: psycopg.Connection, live: str, fresh: str) -> list[str]:
    """ALTER DATABASE ... SET (and per-role settings), the connection limit and the grants, onto `fresh`."""
    notes: list[str] = []
    target = sql.Identifier(fresh)
    rows = admin.execute(
        "SELECT coalesce(r.rolname, ''), s.setconfig FROM pg_db_role_setting s "
        "JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole "
        "WHERE d.datname = %s", (live,)).fetchall()
    for role, settings in rows:
        for item in settings or []:
            key, _, value = item.partition("=")
            shown = sql.SQL(value) if key.lower() in _LIST_SETTINGS else sql.Literal(value)
            if role:
                stmt = sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} TO {}").format(
                    sql.Identifier(role), target, sql.Identifier(key), shown)
            else:
                stmt = sql.SQL("ALTER DATABASE {} SET {} TO {}").format(target, sql.Identifier(key), shown)
            try:
                admin.execute(stmt)
            except psycopg.Error as exc:
                notes.append(f"setting {item!r}{' for ' + role if role else ''} not copied: {_first_line(exc)}")
    info = admin.execute("SELECT datconnlimit, datacl IS NULL FROM pg_database WHERE datname = %s", (live,)).fetchone()
    if info and info[0] != -1:
        admin.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(target, sql.Literal(info[0])))
    if info and not info[1]:
        admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(target))
        grants = admin.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, "
            "a.is_grantable FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s", (live,)).fetchall()
        for grantee, privilege, grantable in grants:
            who = sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee)
            stmt = sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                sql.SQL(privilege), target, who, sql.SQL(" WITH GRANT OPTION" if grantable else ""))
            try:
                admin.execute(stmt)
            except psycopg.Error as exc:
                notes.append(f"grant {privilege} to {grantee or 'PUBLIC'} not copied: {_first_line(exc)}")
    return notes


def _check_schema(url: str, expected: SchemaSnapshot | None, what: str) -> bool:
    if expected is None:
        return False
    with psycopg.connect(url, autocommit=True) as conn:
        found = snapshot_schema(conn, expected.schemas)
    diff = diff_schemas(expected, found)
    if not diff.is_empty:
        raise StepFailed(f"{what} differs from the baseline schema: {diff.describe()}")
    return True


def _restore_in_place(url: str, backup: Backup, pg_restore: str, psql: str, expected: SchemaSnapshot | None,
                      say: Progress) -> RestoreOutcome:
    """One transaction in the live database: drop every non-system schema, create public again, replay."""
    with psycopg.connect(url, autocommit=True) as conn:
        schemas = [r[0] for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
            "AND nspname <> 'information_schema' ORDER BY 1").fetchall()]
        public = conn.execute(
            "SELECT pg_get_userbyid(nspowner), pg_has_role(current_user, nspowner, 'MEMBER') "
            "FROM pg_namespace WHERE nspname = 'public'").fetchone()
        grants = conn.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type "
            "FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspname = 'public' "
            "AND a.grantee <> n.nspowner").fetchall()
        lines = [sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE;").format(sql.Identifier(s)).as_string(conn)
                 for s in schemas]
        lines.append("CREATE SCHEMA IF NOT EXISTS public;")
        if public and public[1]:
            lines.append(sql.SQL("ALTER SCHEMA public OWNER TO {};").format(sql.Identifier(public[0])).as_string(conn))
        for grantee, privilege in grants:
            who = "PUBLIC" if grantee is None else sql.Identifier(grantee).as_string(conn)
            lines.append(f"GRANT {privilege} ON SCHEMA public TO {who};")
    with tempfile.TemporaryDirectory(prefix="upgate-restore-") as folder:
        drops = Path(folder) / "drop.sql"
        drops.write_text("\n".join(lines) + "\n", encoding="utf-8")
        script = Path(folder) / "restore.sql"
        run_tool([pg_restore, "--no-owner", "--file", str(script), str(backup.path)], f"reading {backup.path}")
        # pg_restore's script empties search_path; CREATE SCHEMA public above needs no search_path.
        run_tool([psql, "--no-psqlrc", "--quiet", "--single-transaction", "--set", "ON_ERROR_STOP=1",
                  "--file", str(drops), "--file", str(script)], "restore (drop schemas, replay the backup)",
                 conninfo=url)
    say("restored", {"database": _live_name(url), "method": "drop-schemas", "dropped": schemas})
    checked = _check_schema(url, expected, "the restored database")
    return RestoreOutcome("drop-schemas", 0.0, _live_name(url), schema_checked=checked,
                          notes=[f"dropped schemas {', '.join(schemas)} and replayed the backup in one transaction"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- the step ---------------------------------------------------------------------------------------


class BackupStep(RestorePoint):
    """`pg_dump` of the database before anything changes; the rollback ladder's restore point."""

    name: ClassVar[str] = "backup"
    label: ClassVar[str] = "backup"

    def __init__(self, config: Config, backup: Backup | None = None,
                 restore_state: dict[str, Any] | None = None) -> None:
        assert config.database.url
        self.config = config
        self.url = config.database.url
        self.backup = backup
        #: The last restore record of the journal (event and database names), while a restore is unfinished.
        self.restore_state = restore_state
        self.outcome: RestoreOutcome | None = None
        self._running: subprocess.Popen[str] | None = None
        self._cancelled = threading.Event()

    def _track(self, proc: subprocess.Popen[str] | None) -> None:
        self._running = proc
        if proc is not None and self._cancelled.is_set():
            self.cancel()

    def cancel(self) -> None:
        """Stop a backup running in another thread (the pre-gates failed): its tools are killed."""
        self._cancelled.set()
        proc = self._running
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def _tool(self, name: str) -> str:
        from upgate.embedded.postgres import find_pg_tool

        try:
            return find_pg_tool(name, self.config.database.bin_dir)
        except FileNotFoundError as exc:
            raise StepFailed(str(exc)) from None

    def _jobs(self) -> int:
        return self.config.backup.jobs or os.cpu_count() or 1

    def _folder(self, ctx: StepContext) -> Path:
        return self.config.backup.directory or (ctx.run.path / "backup")

    def plan(self) -> StepPlan:
        cfg = self.config.backup
        where = str(cfg.directory) if cfg.directory else "the run folder's backup/"
        return StepPlan(self.name, (f"pg_dump -Fd -j{self._jobs()} -Z{cfg.compression} of {redact(self.url)} into "
                                    f"{where}, verified ({cfg.verify} read) and checksummed (per file) at once",),
                        ("nothing to undo; it is the restore point: pg_restore into a fresh database, schema "
                         "checked against the baseline, swapped in by rename (the failed one kept)",), mutates=False)

    def do(self, ctx: StepContext) -> None:
        cfg = self.config.backup
        ctx.say("backup", f"pg_dump -Fd -j{self._jobs()} -Z{cfg.compression} of {redact(self.url)}")
        snapshot = ctx.live.snapshot if ctx.live is not None else None  # a live capture's baseline
        self.backup = take_backup(self.url, self._folder(ctx), self._tool("pg_dump"), self._tool("pg_restore"),
                                  compression=cfg.compression, verify=cfg.verify, jobs=self._jobs(),
                                  snapshot=snapshot, track=self._track)
        if self._cancelled.is_set():
            raise StepFailed("backup cancelled")
        ctx.journal.write(self.name, "verified", backup=self.backup.to_json())
        b = self.backup
        ctx.say("backup", f"{b.size_bytes / 2**20:.1f} MiB in {b.dump_s:.1f} s, verified ({b.verified} read) "
                          f"in {b.verify_s:.1f} s, sha256 {b.sha256[:12]}")

    def discard(self, ctx: StepContext) -> bool:
        """Remove this run's dump, finished or not (the pre-gates failed: nothing will be touched).
        True when there was something to remove."""
        folder = self._folder(ctx)
        target = self.backup.path if self.backup is not None else folder / "database.dir"
        found = target.exists()
        shutil.rmtree(target, ignore_errors=True)
        self.backup = None
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: a configured [backup] directory may hold other runs' dumps
        return found

    @property
    def available(self) -> bool:
        return self.backup is not None

    def restore_pending(self) -> bool:
        return self.restore_state is not None

    def restore(self, ctx: StepContext) -> dict[str, Any]:
        if self.backup is None:
            raise StepFailed("no verified backup in this run: nothing to restore from")
        snapshot = ctx.run.load_baseline("schema")
        expected = SchemaSnapshot.from_json(snapshot) if snapshot else None
        tag = re.sub(r"[^a-z0-9]", "_", ctx.run.run_id.lower())

        def progress(event: str, detail: dict[str, Any]) -> None:
            ctx.journal.write("restore", event, **detail)
            self.restore_state = {"event": event, **detail}
            if event in ("created", "verified", "renamed-in", "fallback"):
                ctx.say("restore", {"created": f"restoring into the fresh database {detail.get('database')}",
                                    "verified": f"{detail.get('database')}: schema equals the baseline; swapping",
                                    "renamed-in": f"{detail['live']} is the restored database; the failed one is "
                                                  f"kept as {detail.get('failed')}",
                                    "fallback": f"restoring in place: {detail.get('why')}"}[event])

        swapping = (self.restore_state or {}).get("event") in ("renamed-out", "renamed-in")
        if ctx.live is not None and not swapping:  # live traffic: stop before restoring what cannot come back
            ctx.live.before_restore()
        outcome = restore_database(self.url, self.backup, self._tool("pg_restore"), self._tool("psql"), tag,
                                   expected=expected, progress=progress, resume=self.restore_state,
                                   jobs=self._jobs(),
                                   swap_hook=ctx.live.swap_hook() if ctx.live is not None else None)
        ctx.journal.write("restore", "done", outcome=outcome.to_json())
        self.restore_state = None
        self.outcome = outcome
        return outcome.to_json()

    def summary(self) -> dict[str, Any] | None:
        return self.backup.to_json() if self.backup else None

    @classmethod
    def from_journal(cls, config: Config, records: list[Record], ctx: StepContext) -> BackupStep | None:
        if not config.database.url:
            return None
        backup = None
        for r in records_for(records, cls.name):
            if r.get("event") == "verified" and r.get("backup"):
                backup = Backup.from_json(r["backup"])
        state: dict[str, Any] | None = None
        for r in records_for(records, "restore"):
            state = None if r.get("event") == "done" else {k: v for k, v in r.items() if k not in ("ts", "step")}
        if backup is None and state is None:
            return None
        return cls(config, backup, state)

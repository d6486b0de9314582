"""Emergency procedures (guide: "Emergency Procedures"): one verified backup of everything, and a recovery from it.

    >>> folder = emergency_backup(config, Path("backups"))       # backups/emergency-20261201-101500/  # doctest: +SKIP
    >>> recover(config, folder).exit_code                        # stop, restore, start previous, verify  # doctest: +SKIP
    0

`upgate backup` writes one timestamped folder: `database/` (a `pg_dump -Fd` directory archive verified by a full read,
the schema snapshot and the row fingerprints of the gated tables), `config/` (upgate.toml, the
files of `[config]` and `[compat] app_config`, the `[packages]` environment's installed set),
`models/` (each `[[models]]` path and the `[model_upgrade]` live folder), `logs/` (the tail of the
service logs), and `manifest.json`: every file with its sha256, read back and checked before the
command says the backup is done.

`upgate recover` checks the manifest first (a file that changed: nothing is touched), then, each
part journaled in a run folder like any run: stop the app (the `[deploy]` step's stop), restore the
database (the backup step's restore: a fresh database, schema checked, swapped in by rename), put
back each config file whose bytes differ, start the previous version (the deploy step's), and
verify: the app's health, the schema and every table's fingerprint against the manifest's. Exit
codes as `upgate run`: 0 recovered and verified, 30 not verified, 2 usage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from upgate.checks.health import probe_http
from upgate.checks.integrity import Fingerprint, fingerprint_table, list_tables, split_excluded, verify_table
from upgate.checks.packages import PipFailed, installed_set
from upgate.checks.schema import SchemaSnapshot, diff_schemas, snapshot_schema
from upgate.checks.secrets import redact
from upgate.config import Config
from upgate.core.pipeline import Pipeline, RunOptions, RunOutcome
from upgate.core.runs import DEFAULT_REPORTS, RunDir, write_json_atomically
from upgate.embedded.postgres import find_pg_tool
from upgate.errors import ConfigError, StepFailed, Verdict
from upgate.reporting.console import Console
from upgate.steps.backup import Backup, BackupStep, take_backup
from upgate.steps.config_migrate import write_atomically
from upgate.steps.deploy import deploy_step

MANIFEST = "manifest.json"
PREFIX = "emergency-"
DEFAULT_OUTPUT = Path("backups")
LOG_TAIL_BYTES = 1 << 20  # the last MiB of each log

Say = Callable[[str, str], None]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- backup -------------------------------------------------------------------------------------------


def gated_tables(config: Config, conn: psycopg.Connection[Any]) -> list[str]:
    """The tables `[integrity]` gates: its list, or every table less the excluded (bookkeeping) ones."""
    if config.integrity.tables != "all":
        return list(config.integrity.tables)
    return split_excluded(list_tables(conn), config.integrity.excluded())[0]


def config_files(config: Config) -> list[Path]:
    """The configuration a recovery needs: upgate.toml, `[config]` files and rules, `[compat] app_config`."""
    found = [config.source]
    if config.config_files:
        found += config.config_files.paths() + [f.rules for f in config.config_files.files]
    if config.compat:
        found += [spec.path for spec in config.compat.app_config]
    return list(dict.fromkeys(Path(p) for p in found))


def model_folders(config: Config) -> dict[str, Path]:
    found = {m.name: m.path for m in config.models if m.path is not None}
    if config.model_upgrade:
        found[f"{config.model_upgrade.model}-live"] = config.model_upgrade.live
    return found


def log_files(config: Config, reports: Path) -> list[Path]:
    """The service logs: `[diagnostics] log_files`, and the logs of the newest run under `reports`."""
    base = config.source.parent
    found = [p if p.is_absolute() else base / p for p in config.diagnostics.log_files]
    latest = RunDir.latest(reports)
    if latest is not None and latest.logs.is_dir():
        found += sorted(p for p in latest.logs.iterdir() if p.is_file())
    return [p for p in found if p.is_file()]


def emergency_backup(config: Config, output: Path = DEFAULT_OUTPUT, reports: Path = DEFAULT_REPORTS,
                     say: Say = lambda _label, _message: None) -> Path:
    """Write and verify one timestamped backup folder under `output`; its path. StepFailed when it cannot."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    folder = Path(output).resolve() / f"{PREFIX}{stamp}"
    n = 1
    while folder.exists():
        folder = folder.with_name(f"{PREFIX}{stamp}-{n}")
        n += 1
    folder.mkdir(parents=True, mode=0o700)
    started = time.monotonic()
    manifest: dict[str, Any] = {
        "format": 1, "created": datetime.now(UTC).isoformat(timespec="seconds"), "host": socket.gethostname(),
        "config": str(config.source), "target": config.target.name, "from_version": config.target.from_version,
        "to_version": config.target.to_version, "database": None, "copied": [], "missing": [], "files": {}}
    if config.database.url:
        manifest["database"] = _backup_database(config, folder / "database", say)
    for source in config_files(config):
        _copy_into(source, folder / "config", manifest, say)
    if config.packages:
        try:
            found = installed_set(config.packages.python)
            target = folder / "config" / "packages-installed.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(f"{p}\n" for p in found.pins), encoding="utf-8")
            manifest["packages"] = {"python": found.python, "count": len(found.pins),
                                    "file": "config/packages-installed.txt"}
        except PipFailed as exc:
            manifest["missing"].append({"what": "packages", "why": str(exc)})
    for name, path in model_folders(config).items():
        _copy_into(path, folder / "models", manifest, say, name=name)
    for log in log_files(config, reports):
        _copy_tail(log, folder / "logs", manifest)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        manifest["files"][str(path.relative_to(folder))] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    manifest["seconds"] = round(time.monotonic() - started, 3)
    write_json_atomically(folder / MANIFEST, manifest)
    bad = verify_manifest(folder)
    if bad:
        raise StepFailed(f"the backup in {folder} does not read back as written: {'; '.join(bad)}")
    size = sum(f["size"] for f in manifest["files"].values())
    say("backup", f"{len(manifest['files'])} files, {size / 2**20:.1f} MiB, every sha256 read back: {folder}")
    return folder


def _backup_database(config: Config, folder: Path, say: Say) -> dict[str, Any]:
    assert config.database.url
    url = config.database.url
    try:
        pg_dump, pg_restore = (find_pg_tool(t, config.database.bin_dir) for t in ("pg_dump", "pg_restore"))
    except FileNotFoundError as exc:
        raise StepFailed(str(exc)) from None
    say("backup", f"pg_dump -Fd of {redact(url)}, verified by a full read")
    backup = take_backup(url, folder, pg_dump, pg_restore, compression=config.backup.compression, verify="full")
    with psycopg.connect(url, connect_timeout=int(config.database.connect_timeout_s)) as conn:
        schema = snapshot_schema(conn)
        tables = gated_tables(config, conn)
    write_json_atomically(folder / "schema.json", schema.to_json())
    rows = {}
    for table in tables:
        key = config.integrity.keys.get(table)
        fp = fingerprint_table(url, table, key=key, workers=config.integrity.workers)
        fp.save(folder / "fingerprints")
        rows[table] = fp.count
    say("backup", f"{backup.size_bytes / 2**20:.1f} MiB dump; schema and fingerprints of {len(rows)} table(s) "
                  f"({sum(rows.values())} rows)")
    data = backup.to_json()
    data["path"] = str(Path(backup.path).relative_to(folder.parent))
    return {"url": redact(url), "dump": data, "schema": "database/schema.json", "fingerprints": rows}


def _copy_into(source: Path, folder: Path, manifest: dict[str, Any], say: Say, name: str | None = None) -> None:
    if not source.exists():
        manifest["missing"].append({"what": str(source), "why": "not found"})
        say("backup", f"{source}: not found, not in the backup")
        return
    target = folder / (name or source.name)
    n = 1
    while target.exists():
        target = folder / f"{n}-{name or source.name}"
        n += 1
    folder.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, symlinks=False)
    else:
        shutil.copy2(source, target)
    manifest["copied"].append({"source": str(source), "copy": str(target.relative_to(folder.parent)),
                               "kind": "folder" if source.is_dir() else "file"})


def _copy_tail(source: Path, folder: Path, manifest: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    n = 1
    while target.exists():
        target = folder / f"{n}-{source.name}"
        n += 1
    with source.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - LOG_TAIL_BYTES))
        target.write_bytes(handle.read())
    manifest["copied"].append({"source": str(source), "copy": str(target.relative_to(folder.parent)), "kind": "log"})


# --- the manifest -------------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{folder}: no {MANIFEST}; not a folder made by `upgate backup`") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != 1 or not isinstance(data.get("files"), dict):
        raise ConfigError(f"{path}: not a manifest written by `upgate backup`")
    return data


def verify_manifest(folder: Path) -> list[str]:
    """Every file the manifest lists, present with its sha256 and size; what is wrong otherwise."""
    manifest = read_manifest(folder)
    problems = []
    for name, entry in sorted(manifest["files"].items()):
        path = Path(folder) / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{name} changed since the backup (sha256 differs)")
    return problems


def latest_backup(output: Path = DEFAULT_OUTPUT) -> Path:
    found = sorted(p for p in Path(output).glob(f"{PREFIX}*") if (p / MANIFEST).is_file())
    if not found:
        raise ConfigError(f"no backup folder ({PREFIX}*/{MANIFEST}) under {Path(output).resolve()}: run "
                          "`upgate backup` first, or name one with --from")
    return found[-1].resolve()


# --- recover ------------------------------------------------------------------------------------------


def recover(config: Config, folder: Path, reports: Path = DEFAULT_REPORTS, console: Console | None = None) -> RunOutcome:
    """Stop, restore, start the previous version and verify against the backup's manifest (module docstring).

    Journaled in its own folder, `<reports>/recoveries/<id>/` (not among the upgrade runs that
    `upgate rollback` and `upgate history` read)."""
    manifest = read_manifest(folder)
    run = RunDir(Path(reports).resolve() / "recoveries" / f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}")
    for sub in (run.baseline, run.logs):
        sub.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline(config, RunOptions(reports=Path(reports), console=console, run_dir=run.path))
    return pipeline.finish(lambda: _recover(pipeline, Path(folder).resolve(), manifest))


def _recover(pipeline: Pipeline, folder: Path, manifest: dict[str, Any]) -> tuple[Verdict, str]:
    config, ctx, say = pipeline.config, pipeline.ctx, pipeline.console.step
    bad = verify_manifest(folder)
    if bad:
        return Verdict.NEEDS_ATTENTION, (f"the backup {folder} is not as written ({'; '.join(bad[:5])}): not "
                                         "recovering from it; nothing was touched")
    pipeline.journal.write("recover", "from", folder=str(folder), created=manifest.get("created"))
    say("recover", f"from {folder} (taken {manifest.get('created')})")
    database = manifest.get("database")
    if database and not config.database.url:
        return Verdict.USAGE_ERROR, "the backup holds a database but the config names none ([database] url)"
    if database:
        ctx.run.save_baseline("schema", json.loads((folder / database["schema"]).read_text()))
    record = pipeline.rollback_record
    record.triggered, record.reason = True, f"recover from {folder}"
    started = time.monotonic()
    pipeline.start_prober()
    deploy = deploy_step(config) if config.deploy else None
    ok = True
    if deploy is not None:
        ok &= pipeline.rung("stop the app", lambda: deploy.stop_new(ctx))
    else:
        say("recover", "no [deploy]: the app is not stopped or started by upgate")
    if database and ok:
        dump = Backup.from_json({**database["dump"], "path": str(folder / database["dump"]["path"])})
        restorer = BackupStep(config, dump)
        ok &= pipeline.rung("restore the database", lambda: {"restore": restorer.restore(ctx)})
        record.restored = ok
    if ok:
        ok &= pipeline.rung("restore config files", lambda: _restore_config(manifest, folder, say))
    if deploy is not None and ok:
        ok &= pipeline.rung("start the previous version", lambda: deploy.start_previous(ctx))
    verified = ok and pipeline.rung("verify against the backup", lambda: _verify(config, folder, manifest, say))
    record.seconds, record.verified = round(time.monotonic() - started, 3), verified
    record.verifications.append({"attempt": 1, "passed": verified, "against": str(folder)})
    ladder = "; ".join(f"{r.rung}: {'ok' if r.ok else 'FAILED'}" for r in record.ladder)
    if verified:
        return Verdict.RECOVERED, f"recovered from {folder} and verified in {record.seconds:.1f} s ({ladder})"
    failed = next((r for r in record.ladder if not r.ok), None)
    why = f"{failed.rung} failed: {failed.error}" if failed else "not verified"
    return Verdict.NEEDS_ATTENTION, f"recovery from {folder} NOT verified ({why}; see {ctx.run.path}): {ladder}"


def _restore_config(manifest: dict[str, Any], folder: Path, say: Say) -> dict[str, Any]:
    """Put back each backed-up config file whose bytes differ from the backup's copy."""
    restored, same = [], []
    for entry in manifest.get("copied", []):
        if entry["kind"] != "file" or not entry["copy"].startswith("config/"):
            continue
        source, copy = Path(entry["source"]), folder / entry["copy"]
        data = copy.read_bytes()
        if source.is_file() and source.read_bytes() == data:
            same.append(str(source))
            continue
        source.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(source, data)
        restored.append(str(source))
        say("recover", f"{source}: put back from {copy}")
    return {"restored": restored, "unchanged": len(same)}


def _verify(config: Config, folder: Path, manifest: dict[str, Any], say: Say) -> dict[str, Any]:
    """The app's health, the schema and every fingerprint against the manifest's; StepFailed naming what differs."""
    problems: list[str] = []
    detail: dict[str, Any] = {}
    if config.app is not None:
        health = probe_http(config.app.url(config.app.health_path), timeout_s=config.app.timeout_s)
        detail["health"] = health.summary
        if not health.ok:
            problems.append(health.summary)
    database = manifest.get("database")
    if database and config.database.url:
        url = config.database.url
        expected = SchemaSnapshot.from_json(json.loads((folder / database["schema"]).read_text()))
        with psycopg.connect(url, connect_timeout=int(config.database.connect_timeout_s)) as conn:
            diff = diff_schemas(expected, snapshot_schema(conn, expected.schemas))
        detail["schema"] = "equals the backup's" if diff.is_empty else diff.describe()
        if not diff.is_empty:
            problems.append(f"schema differs from the backup's: {diff.describe()}")
        tables: dict[str, str] = {}
        for table in database.get("fingerprints", {}):
            baseline = Fingerprint.load(folder / "database" / "fingerprints", table)
            result, _ = verify_table(url, baseline, workers=config.integrity.workers,
                                     allow_added=config.integrity.allow_added_rows,
                                     first=config.integrity.report_first)
            tables[table] = result.summary
            if not result.ok:
                problems.append(result.summary)
        detail["fingerprints"] = tables
        say("recover", f"schema and {len(tables)} table fingerprint(s) compared with the backup's")
    if problems:
        raise StepFailed("; ".join(problems))
    return detail

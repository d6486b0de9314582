"""Resources an upgrade needs: disk for the backup, memory and CPU headroom, latency, and a time estimate.

    >>> size = measure_database(conn)                                                   # doctest: +SKIP
    >>> check_backup_space(Path("/backups"), size.total_bytes, dump_ratio=0.4).summary  # doctest: +SKIP
    '/backups: 41.2 GiB free; backup estimated 0.4 GiB (1.1 GiB x dump ratio 0.40 x safety 2.0 = 0.9 GiB needed)'
    >>> estimate = estimate_upgrade(size, throughput, max_downtime_s=300, units=rehearsed)   # doctest: +SKIP

The time estimate is built from this target's own numbers: table sizes from the catalog, read
throughput measured on a sample of its largest table, the last run's dump speed when there is one,
the baseline fingerprints' measured speed, and the migration as the rehearsal timed it on a sampled
clone and scaled to the live row counts (upgate/checks/rehearsal.py).
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from upgate.checks import http
from upgate.checks.result import CheckResult
from upgate.checks.secrets import redact

GiB = 2**30
MiB = 2**20


# --- database size ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableSize:
    name: str  # schema-qualified
    total_bytes: int  # heap + indexes + toast
    heap_bytes: int
    rows: int


@dataclass(frozen=True)
class DatabaseSize:
    total_bytes: int
    tables: tuple[TableSize, ...]

    def table(self, name: str) -> TableSize | None:
        bare = name.split(".")[-1].strip('"')
        for t in self.tables:
            if t.name == name or t.name.split(".")[-1] == bare:
                return t
        return None

    def to_json(self) -> dict[str, Any]:
        return {"total_bytes": self.total_bytes, "tables": [asdict(t) for t in self.tables]}


def measure_database(conn: psycopg.Connection) -> DatabaseSize:
    """pg_database_size and each user table's size; rows from the planner's estimate, counted when unknown."""
    total = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    rows = conn.execute(
        """SELECT n.nspname, c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid), c.reltuples
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
            ORDER BY pg_total_relation_size(c.oid) DESC"""
    ).fetchall()
    tables = []
    for schema, name, total_bytes, heap_bytes, reltuples in rows:
        count = int(reltuples)
        if count < 0:  # never analyzed: count it (the sizes are small when nothing analyzed it yet)
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
            found = conn.execute(query).fetchone()
            count = int(found[0]) if found else 0
        tables.append(TableSize(f"{schema}.{name}", int(total_bytes), int(heap_bytes), count))
    return DatabaseSize(int(total[0]) if total else 0, tuple(tables))


# --- disk for the backup ------------------------------------------------------------------------


def _measured_runs(run_folders: Sequence[Path], target: str | None) -> Iterator[tuple[Path, dict[str, Any], int]]:
    """Newest first: (run folder, its summary's backup record, the database bytes its pre-gates saw)."""
    for folder in sorted(run_folders, reverse=True):
        try:
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
            measured = json.loads((folder / "baseline" / "resources.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if target is not None and summary.get("target") != target:
            continue
        database_bytes = measured.get("database", {}).get("total_bytes")
        if database_bytes:
            yield folder, summary.get("backup") or {}, int(database_bytes)


def dump_ratio_from_runs(run_folders: Sequence[Path], target: str | None = None) -> tuple[float, str] | None:
    """(dump bytes / database bytes, the run folder it came from) from the newest run that measured both.

    A run measured both when its summary.json has a backup and its baseline/resources.json has the
    database size the pre-gates saw. `target` keeps only runs of that target (summary's "target").
    """
    for folder, backup, database_bytes in _measured_runs(run_folders, target):
        if backup.get("size_bytes"):
            return float(backup["size_bytes"]) / float(database_bytes), str(folder)
    return None


def dump_speed_from_runs(run_folders: Sequence[Path], target: str | None = None) -> tuple[float, str] | None:
    """(database bytes dumped and verified per second, run folder) from the newest run with a backup."""
    for folder, backup, database_bytes in _measured_runs(run_folders, target):
        seconds = float(backup.get("dump_s") or 0) + float(backup.get("verify_s") or 0)
        if seconds > 0:
            return float(database_bytes) / seconds, str(folder)
    return None


def check_backup_space(folder: Path, database_bytes: int, dump_ratio: float = 1.0, safety_factor: float = 2.0,
                       ratio_source: str = "default") -> CheckResult:
    """Free space on the filesystem that will hold the backup >= database size x dump ratio x safety factor."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    usage = shutil.disk_usage(existing)
    estimated = database_bytes * dump_ratio
    needed = estimated * safety_factor
    evidence = {
        "folder": str(folder), "measured_at": str(existing), "free_bytes": usage.free, "total_bytes": usage.total,
        "database_bytes": database_bytes, "dump_ratio": round(dump_ratio, 4), "dump_ratio_source": ratio_source,
        "estimated_dump_bytes": int(estimated), "safety_factor": safety_factor, "needed_bytes": int(needed),
    }
    detail = (f"backup estimated {_size(estimated)} ({_size(database_bytes)} x dump ratio {dump_ratio:.2f}"
              f" from {ratio_source}) x safety {safety_factor:g} = {_size(needed)} needed")
    if usage.free < needed:
        return CheckResult(False, f"{folder}: only {_size(usage.free)} free; {detail}: free space or move "
                                  f"backup.directory", evidence)
    return CheckResult(True, f"{folder}: {_size(usage.free)} free; {detail}", evidence)


# --- memory, CPU, latency -----------------------------------------------------------------------


def check_memory_cpu(min_free_memory_mb: float = 256.0, max_cpu_percent: float | None = None,
                     interval_s: float = 0.5) -> CheckResult:
    """Available memory against a floor (psutil); CPU busy % over `interval_s`, gated only when a ceiling is set."""
    import os

    import psutil

    memory = psutil.virtual_memory()
    # Sampled (a wait of `interval_s`) only when gated; otherwise the load average says enough.
    cpu = psutil.cpu_percent(interval=interval_s) if max_cpu_percent is not None else None
    load1, load5, _ = os.getloadavg()
    cores = psutil.cpu_count() or 1
    available_mb = memory.available / MiB
    evidence = {
        "available_mb": round(available_mb), "total_mb": round(memory.total / MiB), "min_free_memory_mb": min_free_memory_mb,
        "cpu_percent": cpu, "max_cpu_percent": max_cpu_percent, "cpus": cores,
        "load_1m": round(load1, 2), "load_5m": round(load5, 2),
    }
    problems = []
    if available_mb < min_free_memory_mb:
        problems.append(f"{available_mb:.0f} MiB memory available, {min_free_memory_mb:g} MiB needed")
    if max_cpu_percent is not None and cpu is not None and cpu > max_cpu_percent:
        problems.append(f"CPU {cpu:.0f}% busy, above the {max_cpu_percent:g}% ceiling")
    warnings = []
    if max_cpu_percent is None and load1 > 0.9 * cores:
        warnings.append(f"load {load1:.1f} on {cores} cores (CPU not gated: set resources.max_cpu_percent)")
    busy = f"CPU {cpu:.0f}% busy, " if cpu is not None else ""
    summary = (f"{available_mb:.0f} of {memory.total / MiB:.0f} MiB memory available; {busy}"
               f"load {load1:.1f} on {cores} cores")
    if problems:
        return CheckResult(False, "; ".join(problems) + f" ({summary})", evidence, tuple(warnings))
    return CheckResult(True, summary, evidence, tuple(warnings))


def check_database_latency(url: str, samples: int = 5, max_ms: float = 250.0, timeout_s: float = 5.0) -> CheckResult:
    """Connect time, then the median and worst of `samples` SELECT 1 round trips on one connection."""
    shown = redact(url)
    started = time.monotonic()
    try:
        with psycopg.connect(url, connect_timeout=max(2, int(timeout_s)), autocommit=True) as conn:
            connect_ms = (time.monotonic() - started) * 1000
            rtts = []
            for _ in range(samples):
                t0 = time.monotonic()
                conn.execute("SELECT 1").fetchone()
                rtts.append((time.monotonic() - t0) * 1000)
    except (psycopg.Error, OSError) as exc:
        error = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return CheckResult(False, f"database {shown} does not answer: {error}", {"url": shown, "error": error})
    return _latency_result(f"database {shown}", rtts, max_ms, {"url": shown, "connect_ms": round(connect_ms, 2)})


def check_http_latency(url: str, samples: int = 5, max_ms: float = 1000.0, timeout_s: float = 2.0) -> CheckResult:
    """Median and worst of `samples` GETs of `url` (each a new connection, as a client would see)."""
    shown = redact(url)
    rtts = []
    statuses = []
    for _ in range(samples):
        answer = http.get(url, timeout_s)
        if not answer.answered:
            return CheckResult(False, f"GET {shown}: no answer ({answer.error})", {"url": shown, "error": answer.error})
        statuses.append(answer.status)
        rtts.append(answer.elapsed_ms)
    return _latency_result(f"GET {shown}", rtts, max_ms, {"url": shown, "statuses": statuses})


def _latency_result(what: str, rtts: list[float], max_ms: float, extra: dict[str, Any]) -> CheckResult:
    median = statistics.median(rtts)
    evidence = {**extra, "samples_ms": [round(r, 2) for r in rtts], "median_ms": round(median, 2),
                "max_ms": round(max(rtts), 2), "budget_ms": max_ms}
    # The median decides: one slow sample on a busy machine is noise, a slow median is the link.
    if median > max_ms:
        return CheckResult(False, f"{what}: median latency {median:.1f} ms over {len(rtts)} samples exceeds "
                                  f"{max_ms:g} ms", evidence)
    return CheckResult(True, f"{what}: median latency {median:.1f} ms (worst {max(rtts):.1f} ms, "
                             f"budget {max_ms:g} ms)", evidence)


# --- throughput and the time estimate -----------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    """Bytes per second this target reads (COPY out) and rewrites (CREATE TABLE AS), from a sample."""

    table: str
    sample_rows: int
    sample_bytes: int
    read_bytes_per_s: float
    read_rows_per_s: float
    rewrite_bytes_per_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure_throughput(conn: psycopg.Connection, table: str, sample_rows: int = 20_000) -> Throughput:
    """Time COPY TO STDOUT and CREATE TEMP TABLE AS of the first `sample_rows` rows of `table` (rolled back)."""
    schema, _, name = table.rpartition(".")
    ident = sql.Identifier(schema, name) if schema else sql.Identifier(name)
    sample = sql.SQL("SELECT * FROM {} LIMIT {}").format(ident, sql.Literal(sample_rows))
    t0 = time.monotonic()
    copied = 0
    rows = 0
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY ({}) TO STDOUT").format(sample)) as copy:
        for chunk in copy:
            copied += len(chunk)
            rows += bytes(chunk).count(b"\n")
    read_s = max(time.monotonic() - t0, 1e-6)
    heap = conn.execute(sql.SQL("SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM ({}) t").format(sample)).fetchone()
    sample_bytes = int(heap[0]) if heap else copied
    t0 = time.monotonic()
    with conn.transaction(force_rollback=True):
        conn.execute(sql.SQL("CREATE TEMP TABLE upgate_rewrite_probe AS {}").format(sample))
    rewrite_s = max(time.monotonic() - t0, 1e-6)
    return Throughput(table, rows, sample_bytes, read_bytes_per_s=sample_bytes / read_s,
                      read_rows_per_s=rows / read_s, rewrite_bytes_per_s=sample_bytes / rewrite_s)


@dataclass(frozen=True)
class UnitCost:
    """One migration unit as the rehearsal timed it: on the sampled clone, and at the live table sizes."""

    unit: str
    measured_s: float
    estimate_s: float


@dataclass(frozen=True)
class UpgradeEstimate:
    backup_s: float
    migrate_s: float
    verify_s: float
    window_s: float  # what the service is exposed to: migrate + post-gate verification
    total_s: float
    budget_s: float
    units: tuple[UnitCost, ...] = ()
    basis: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["units"] = [asdict(u) for u in self.units]
        return data


def estimate_upgrade(
    size: DatabaseSize,
    throughput: Throughput,
    max_downtime_s: float,
    units: Sequence[UnitCost] = (),
    dump_bytes_per_s: float | None = None,
    fingerprint_s: float | None = None,
    fingerprint_rows: int | None = None,
) -> UpgradeEstimate:
    """Seconds for backup, migration and verification, from this target's own measurements.

    `units` are the migration's units as the rehearsal timed them (its up leg on a sampled clone,
    scaled to the live table sizes): whatever tool runs the migration, its time is measured, not
    guessed from its SQL. `dump_bytes_per_s` (database bytes per second of dump + verify, from the
    last run) replaces the read-throughput guess when known; `fingerprint_s` (the baseline
    fingerprints' measured time) is what the post-gates repeat.
    """
    read_bps = max(throughput.read_bytes_per_s, 1.0)
    backup_s = size.total_bytes / (dump_bytes_per_s or read_bps)
    migrate_s = sum(u.estimate_s for u in units)
    if fingerprint_s is not None:
        verify_s = fingerprint_s
    else:
        rows = fingerprint_rows if fingerprint_rows is not None else sum(t.rows for t in size.tables)
        verify_s = rows / max(throughput.read_rows_per_s, 1.0)
    window_s = migrate_s + verify_s
    return UpgradeEstimate(
        backup_s=round(backup_s, 3), migrate_s=round(migrate_s, 3), verify_s=round(verify_s, 3),
        window_s=round(window_s, 3), total_s=round(backup_s + window_s, 3), budget_s=max_downtime_s,
        units=tuple(units),
        basis={"database_bytes": size.total_bytes, "read_bytes_per_s": round(read_bps),
               "read_rows_per_s": round(throughput.read_rows_per_s),
               "rewrite_bytes_per_s": round(throughput.rewrite_bytes_per_s),
               "dump_bytes_per_s": round(dump_bytes_per_s) if dump_bytes_per_s else None,
               "fingerprint_s": fingerprint_s, "sample_table": throughput.table,
               "sample_rows": throughput.sample_rows,
               "migration": "rehearsal on a sampled clone, scaled to live rows" if units else "no migration"},
    )


def check_estimate(estimate: UpgradeEstimate) -> CheckResult:
    """The exposure window (migration + verification) against the downtime budget."""
    parts = (f"backup {_secs(estimate.backup_s)}, migration {_secs(estimate.migrate_s)}"
             + (f" (rehearsed: {', '.join(f'{u.unit} {_secs(u.measured_s)} on the clone' for u in estimate.units)})"
                if estimate.units else "")
             + f", verification {_secs(estimate.verify_s)}")
    summary = (f"upgrade estimate {_secs(estimate.total_s)}: {parts}; exposure window "
               f"{_secs(estimate.window_s)} of the {estimate.budget_s:g} s downtime budget")
    if estimate.window_s > estimate.budget_s:
        worst = max(estimate.units, key=lambda u: u.estimate_s, default=None)
        hint = (f"; the costliest is {worst.unit} (~{_secs(worst.estimate_s)} at live size)" if worst else "")
        return CheckResult(False, summary.replace("upgrade estimate", "upgrade estimate OVER BUDGET") + hint,
                           estimate.to_json())
    return CheckResult(True, summary, estimate.to_json())


def _size(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def _secs(s: float) -> str:
    if s < 10:
        return f"{s:.2f} s"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"

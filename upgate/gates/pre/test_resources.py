"""Pre-gate: the resources the upgrade needs are there, and it fits in the downtime budget.

Free disk where the backup goes (database size x dump ratio of the last run x safety factor), memory
and CPU headroom here, latency to the database and the app, and an upgrade time estimate from this
target's table sizes, measured throughput and the migration rehearsal's timing (scaled to live rows),
compared with `thresholds.max_downtime_s`.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from upgate.checks.resources import (
    UnitCost,
    check_backup_space,
    check_database_latency,
    check_estimate,
    check_http_latency,
    check_memory_cpu,
    dump_ratio_from_runs,
    dump_speed_from_runs,
    estimate_upgrade,
    measure_database,
    measure_throughput,
)

pytestmark = pytest.mark.upgate_component("resources", "database")


@pytest.fixture(scope="module")
def database_size(db_url, config, run_dir):
    with psycopg.connect(db_url, connect_timeout=int(max(2, config.database.connect_timeout_s))) as conn:
        size = measure_database(conn)
    run_dir.save_baseline("resources", {"database": size.to_json()})
    return size


@pytest.fixture(scope="module")
def earlier_runs(run_dir):
    runs = run_dir.path.parent
    return [p for p in runs.iterdir() if p.is_dir() and p != run_dir.path] if runs.is_dir() else []


def test_backup_location_has_room(database_size, config, run_dir, earlier_runs, evidence):
    folder = config.backup.directory or (run_dir.path / "backup")
    measured = dump_ratio_from_runs(earlier_runs, config.target.name)
    ratio, source = (measured[0], f"run {Path(measured[1]).name}") if measured else (
        config.resources.default_dump_ratio, "resources.default_dump_ratio")
    result = check_backup_space(folder, database_size.total_bytes, ratio, config.resources.backup_safety_factor,
                                ratio_source=source)
    evidence("backup_space", result)
    assert result.ok, result.summary


def test_memory_and_cpu_headroom(db_url, config, evidence):
    # This machine runs the dump, the migration and the fingerprints: gated with the database.
    result = check_memory_cpu(config.resources.min_free_memory_mb, config.resources.max_cpu_percent)
    evidence("headroom", result)
    assert result.ok, result.summary


def test_database_latency_within_budget(db_url, config, evidence):
    result = check_database_latency(db_url, config.resources.latency_samples, config.resources.max_db_latency_ms,
                                    timeout_s=config.database.connect_timeout_s)
    evidence("database_latency", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("resources", "app")
def test_app_latency_within_budget(app, config, evidence):
    result = check_http_latency(app.url(app.health_path), config.resources.latency_samples,
                                config.resources.max_app_latency_ms, timeout_s=app.timeout_s)
    evidence("app_latency", result)
    assert result.ok, result.summary


def test_upgrade_fits_downtime_budget(request, db_url, database_size, config, run_dir, baseline_dir, earlier_runs,
                                      evidence):
    if not database_size.tables:
        pytest.skip("no table in the database: nothing to estimate")
    units: list[UnitCost] = []
    if config.migrate is not None:  # the migration as the rehearsal timed it, whatever tool runs it
        timing = request.getfixturevalue("rehearsal").timing
        if timing is not None:
            units = [UnitCost(unit, t["measured_s"], t["estimate_s"]) for unit, t in timing.per_unit.items()]
    with psycopg.connect(db_url) as conn:
        throughput = measure_throughput(conn, database_size.tables[0].name, config.resources.sample_rows)
    fingerprints = sorted((baseline_dir / "fingerprints").glob("*.json"))
    fingerprint_s = sum(json.loads(f.read_text(encoding="utf-8")).get("elapsed_s", 0.0) for f in fingerprints)
    speed = dump_speed_from_runs(earlier_runs, config.target.name)
    estimate = estimate_upgrade(database_size, throughput, config.thresholds.max_downtime_s, units=units,
                                dump_bytes_per_s=speed[0] if speed else None,
                                fingerprint_s=fingerprint_s if fingerprints else None)
    result = check_estimate(estimate)
    run_dir.save_baseline("estimate", result.to_json())
    evidence("estimate", result)
    assert result.ok, result.summary

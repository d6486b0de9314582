"""Resources on real PostgreSQL: sizes from the catalog, throughput measured on the table, latency, headroom."""

from __future__ import annotations

import psycopg

from upgate.checks.resources import (
    UnitCost,
    check_database_latency,
    check_estimate,
    check_http_latency,
    check_memory_cpu,
    estimate_upgrade,
    measure_database,
    measure_throughput,
)
from upgate.fixtures.reference import free_port
from upgate.fixtures.seed import create_schema, seed


def test_sizes_throughput_and_estimate_from_this_target(pg_url):
    create_schema(pg_url)
    seed(pg_url, rows=3000)
    with psycopg.connect(pg_url) as conn:
        size = measure_database(conn)
        logs = size.table("episodic_logs")
        assert logs is not None and logs.rows == 3000 and logs.total_bytes > logs.heap_bytes > 0
        assert size.total_bytes >= logs.total_bytes
        throughput = measure_throughput(conn, logs.name, sample_rows=1000)
        # the probe table was rolled back
        assert conn.execute("SELECT to_regclass('upgate_rewrite_probe')").fetchone() == (None,)
    assert throughput.sample_rows == 1000 and throughput.read_bytes_per_s > 0 and throughput.rewrite_bytes_per_s > 0
    units = [UnitCost("002.up.sql", 0.05, 0.3)]
    estimate = estimate_upgrade(size, throughput, max_downtime_s=300, units=units)
    assert estimate.migrate_s == 0.3 and estimate.verify_s > 0 and estimate.backup_s > 0
    assert check_estimate(estimate).ok
    tight = estimate_upgrade(size, throughput, max_downtime_s=1e-9, units=units)
    assert not check_estimate(tight).ok


def test_database_latency_measured_and_down_database_named(pg_url):
    result = check_database_latency(pg_url, samples=3, max_ms=5000)
    assert result.ok, result.summary
    assert len(result.evidence["samples_ms"]) == 3
    down = check_database_latency(f"postgresql://u:pw@127.0.0.1:{free_port()}/x", samples=1, timeout_s=2)
    assert not down.ok and "does not answer" in down.summary and ":pw@" not in down.summary


def test_app_latency_down_is_named():
    url = f"http://127.0.0.1:{free_port()}/health"
    result = check_http_latency(url, samples=2, timeout_s=1)
    assert not result.ok and url in result.summary


def test_memory_and_cpu_headroom_gated_only_when_asked():
    assert check_memory_cpu(min_free_memory_mb=1, interval_s=0.1).ok
    assert not check_memory_cpu(min_free_memory_mb=10**9, interval_s=0.1).ok


def test_cpu_is_sampled_only_when_gated():
    ungated = check_memory_cpu(min_free_memory_mb=1, max_cpu_percent=None, interval_s=30)  # no 30 s wait
    assert ungated.ok and ungated.evidence["cpu_percent"] is None and "load" in ungated.summary
    gated = check_memory_cpu(min_free_memory_mb=1, max_cpu_percent=100, interval_s=0.1)
    assert isinstance(gated.evidence["cpu_percent"], float)

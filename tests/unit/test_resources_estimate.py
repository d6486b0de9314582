"""The resources family's pure parts: the estimate from the rehearsal's timing, the dump ratio, the space check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from upgate.checks.resources import (
    DatabaseSize,
    TableSize,
    Throughput,
    UnitCost,
    check_backup_space,
    check_estimate,
    dump_ratio_from_runs,
    dump_speed_from_runs,
    estimate_upgrade,
)
from upgate.config import load_config

SIZE = DatabaseSize(total_bytes=1_000_000_000, tables=(
    TableSize("public.episodic_logs", 800_000_000, 600_000_000, 4_000_000),
    TableSize("public.small", 1_000_000, 800_000, 1000),
))
THROUGHPUT = Throughput("public.episodic_logs", 20_000, 4_000_000, read_bytes_per_s=100e6, read_rows_per_s=500_000,
                        rewrite_bytes_per_s=50e6)


def test_estimate_adds_backup_the_rehearsed_migration_and_verification():
    units = [UnitCost("001_retype.up.sql", measured_s=0.4, estimate_s=80.0),  # 20k of 4M rows on the clone
             UnitCost("002_index.up.sql", measured_s=0.01, estimate_s=0.01)]
    estimate = estimate_upgrade(SIZE, THROUGHPUT, max_downtime_s=300, units=units)
    assert estimate.backup_s == pytest.approx(10.0)  # 1 GB at the read speed
    assert estimate.migrate_s == pytest.approx(80.01)  # what the rehearsal measured, at the live size
    assert estimate.verify_s == pytest.approx(4_001_000 / 500_000)
    assert estimate.window_s == pytest.approx(estimate.migrate_s + estimate.verify_s)
    result = check_estimate(estimate)
    assert result.ok and "of the 300 s downtime budget" in result.summary
    assert "rehearsed: 001_retype.up.sql 0.40 s on the clone" in result.summary


def test_estimate_uses_measured_dump_speed_and_fingerprint_time():
    estimate = estimate_upgrade(SIZE, THROUGHPUT, 300, dump_bytes_per_s=500e6, fingerprint_s=3.0)
    assert estimate.backup_s == pytest.approx(2.0) and estimate.verify_s == 3.0 and estimate.migrate_s == 0


def test_estimate_over_budget_names_the_costliest_unit():
    units = [UnitCost("up", measured_s=0.19, estimate_s=9.5)]  # a tool's migration, not SQL upgate can read
    result = check_estimate(estimate_upgrade(SIZE, THROUGHPUT, max_downtime_s=5, units=units))
    assert not result.ok
    assert "OVER BUDGET" in result.summary and "the costliest is up (~9.50 s at live size)" in result.summary


def _run(folder: Path, target: str, backup: dict | None, database_bytes: int | None) -> Path:
    (folder / "baseline").mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"target": target, "backup": backup}))
    if database_bytes:
        (folder / "baseline" / "resources.json").write_text(json.dumps({"database": {"total_bytes": database_bytes}}))
    return folder


def test_dump_ratio_and_speed_come_from_the_newest_run_of_the_target(tmp_path):
    runs = [
        _run(tmp_path / "20260101-000000-aaaa", "svc", {"size_bytes": 300, "dump_s": 1.0, "verify_s": 1.0}, 1000),
        _run(tmp_path / "20260102-000000-bbbb", "svc", {"size_bytes": 500, "dump_s": 3.0, "verify_s": 1.0}, 1000),
        _run(tmp_path / "20260103-000000-cccc", "other", {"size_bytes": 900, "dump_s": 1.0, "verify_s": 0}, 1000),
        _run(tmp_path / "20260104-000000-dddd", "svc", None, 1000),  # blocked: no backup
    ]
    ratio, source = dump_ratio_from_runs(runs, target="svc")
    assert ratio == pytest.approx(0.5) and source.endswith("bbbb")
    speed, _ = dump_speed_from_runs(runs, target="svc")
    assert speed == pytest.approx(250.0)
    assert dump_ratio_from_runs(runs[:1] + runs[3:], target="nobody") is None


def test_backup_space_fails_with_the_numbers_when_the_disk_is_too_small(tmp_path):
    ok = check_backup_space(tmp_path / "backup", 1_000_000, dump_ratio=0.5, safety_factor=2.0)
    assert ok.ok and ok.evidence["needed_bytes"] == 1_000_000
    huge = check_backup_space(tmp_path / "backup", 2**60, dump_ratio=1.0, safety_factor=2.0, ratio_source="run x")
    assert not huge.ok
    assert "only" in huge.summary and "needed" in huge.summary and "run x" in huge.summary


def test_new_sections_load_and_env_names_override(tmp_path):
    path = tmp_path / "upgate.toml"
    path.write_text("""
[target]
name = "svc"

[monitoring]
required_metrics = ["up"]

[[hosts]]
spec = "local://"
ports = [8080, "tcp://0.0.0.0:22"]
files = [{ path = "/etc/passwd", mode = "0644" }]

[resources]
backup_safety_factor = 3
""")
    cfg = load_config(path, environ={"REDIS_URL": "redis://:pw@r:6379/0", "MONITORING_URL": "http://prom:9090"})
    assert cfg.monitoring is not None
    assert cfg.monitoring.redis_url == "redis://:pw@r:6379/0" and cfg.monitoring.prometheus_url == "http://prom:9090"
    assert cfg.hosts[0].label == "local://" and cfg.hosts[0].files[0].mode == "0644"
    assert cfg.resources.backup_safety_factor == 3
    assert cfg.gated_components()["monitoring"] and cfg.gated_components()["hosts"]
    bare = tmp_path / "bare.toml"
    bare.write_text('[target]\nname = "svc"\n')
    cfg = load_config(bare, environ={})
    assert cfg.monitoring is None and cfg.hosts == [] and cfg.diagnostics.enabled

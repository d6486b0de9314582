"""Helpers of the real-app tests: venvs or a skip, running `upgate` as a user does, the independent checks."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import upgate
from upgate.fixtures.realapps.observe import (
    TableDigest,
    catalog_objects,
    changed_tables,
    digest_tables,
    port_owners,
    read_pid,
    sequence_values,
    serving_versions,
    still_running,
    tree_snapshot,
)
from upgate.fixtures.realapps.targets import RealAppTarget
from upgate.fixtures.realapps.venvs import VenvUnavailable, ensure_venv

_venvs: dict[str, Path | str] = {}


def need_venv(name: str) -> Path:
    """The app's venv, or skip (with pip's reason) when the package index cannot be reached."""
    if name not in _venvs:
        try:
            _venvs[name] = ensure_venv(name)
        except VenvUnavailable as exc:
            _venvs[name] = str(exc)
    found = _venvs[name]
    if isinstance(found, str):
        pytest.skip(f"venv {name}: {found}")
    return found


def run_upgate(config: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`upgate run --config CONFIG` as a user runs it; its exit status and output, and the summary.json written."""
    reports = tmp_path / "reports"
    proc = upgate("run", "--config", str(config), "--reports", str(reports), cwd=tmp_path)
    runs = sorted((reports / "runs").iterdir()) if (reports / "runs").is_dir() else []
    summary = json.loads((runs[-1] / "summary.json").read_text()) if runs and (runs[-1] / "summary.json").exists() \
        else {}
    return proc, summary


def verdict_line(output: str) -> str:
    """The line that states the verdict (what the report quotes for each scenario)."""
    return next((line.strip() for line in output.splitlines() if "VERDICT" in line), "no verdict line")


@dataclass(frozen=True)
class Before:
    rows: dict[str, TableDigest]
    catalog: set[str]
    sequences: dict[str, int | None]
    tree: frozenset[tuple[int, float]]


def observe(target: RealAppTarget) -> Before:
    """What the test compares against after the run, read before it."""
    url = target.database_url
    return Before(rows=digest_tables(url) if url else {}, catalog=catalog_objects(url) if url else set(),
                  sequences=sequence_values(url) if url else {}, tree=tree_snapshot(read_pid(target.pidfile)))


def upgrade(target: RealAppTarget, config: Path, tmp_path: Path) -> tuple[int, str]:
    """`upgate run` on config; (exit status, its output), printing the verdict line for the record."""
    proc, _ = run_upgate(config, tmp_path)
    output = proc.stdout + proc.stderr
    print(f"{target.scenario}: {verdict_line(proc.stdout)}")
    return proc.returncode, output


def assert_serving_only(target: RealAppTarget, versions: set[str], before: Before) -> None:
    """Only `versions` answer, every listener is in the pidfile's tree, and no process of the old tree runs."""
    assert serving_versions(target.base_url, target.version_key, samples=20) <= versions
    owners = port_owners(target.port, target.pidfile)
    assert owners.listeners and not owners.foreign, owners.describe()
    assert not still_running(before.tree), f"old processes still running: {still_running(before.tree)}"


def assert_restored_exactly(target: RealAppTarget, before: Before) -> None:
    """Every row, every catalog object and every sequence as before the run (what a restore gives)."""
    url = target.database_url
    assert url
    assert changed_tables(before.rows, digest_tables(url)) == {}
    assert catalog_objects(url) ^ before.catalog == set(), "objects left or missing after the rollback"
    assert sequence_values(url) == before.sequences

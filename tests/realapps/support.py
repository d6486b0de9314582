"""Helpers of the real-app tests: venvs or a skip, the steps-core probe, running `upgate` as a user does."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import upgate
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


def steps_core_landed() -> bool:
    """The steps core of issue 8: upgate/steps/base.py and `[migrate] kind = "command"` in the config model."""
    from upgate.config import MigrateConfig

    kinds = typing.get_args(MigrateConfig.model_fields["kind"].annotation)
    return importlib.util.find_spec("upgate.steps.base") is not None and "command" in kinds


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

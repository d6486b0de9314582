"""Running `upgate` as a user does, for the e2e tests: a subprocess, DATABASE_URL left out (the plan names its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from upgate.fixtures.demo import DemoTarget


def upgate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "upgate.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


def run_upgate(target: DemoTarget, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`upgate run` on the target's plan; its exit status and the summary.json it wrote."""
    proc = upgate("run", "--config", str(target.config), "--reports", str(tmp_path / "reports"), cwd=tmp_path)
    runs = sorted((tmp_path / "reports" / "runs").iterdir())
    return proc, json.loads((runs[-1] / "summary.json").read_text())

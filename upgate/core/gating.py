"""Run one gate phase as pytest in a child process and read back what each gate said.

    >>> result = run_gates("pre", config, run)        # doctest: +SKIP
    >>> result.passed, result.counts
    (True, {'passed': 9, 'skipped': 1})

A child process keeps gate imports (and their failures) out of the wrapper, and is exactly what an
engineer gets with `pytest gates/pre --upgate-config upgate.toml`. pytest's exit 5 (nothing collected)
is a failure here: an empty phase must never unlock a migration.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from upgate.config import Config
from upgate.core.runs import RunDir
from upgate.errors import ConfigError

SHIPPED_GATES = Path(__file__).resolve().parent.parent / "gates"

_VERBOSE_LINE = re.compile(r"^(?P<node>\S+::\S+)\s+(?P<outcome>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


@dataclass
class PhaseResult:
    phase: str
    exit_status: int
    counts: dict[str, int] = field(default_factory=dict)
    gates: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.exit_status == 0 and self.counts.get("passed", 0) > 0

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [g for g in self.gates if g["outcome"] in ("failed", "error")]

    def describe(self) -> str:
        order = ("passed", "failed", "error", "skipped")
        parts = [f"{self.counts.get(k, 0)} {k}" for k in order if self.counts.get(k, 0) or k in ("passed", "failed")]
        if self.exit_status == 5:
            return "no gate collected (an empty phase never passes)"
        if self.exit_status in (2, 3, 4):
            return f"pytest could not run the gates (exit {self.exit_status}); see the log"
        return ", ".join(parts)


def gates_folder(config: Config) -> Path:
    return config.gates.directory or SHIPPED_GATES


def run_gates(phase: str, config: Config, run: RunDir, on_line: Callable[[str, str], None] | None = None,
              app_url: str | None = None) -> PhaseResult:
    """Run `gates/<pre|post>` for `phase` (rollback runs the post gates against the baseline, preview runs
    them against the candidate's preview: `app_url` replaces [app] base_url in the gates' config)."""
    folder = gates_folder(config) / ("post" if phase in ("rollback", "preview") else phase)
    if not folder.is_dir():
        raise ConfigError(f"gates folder {folder} not found: set [gates] directory to the folder holding pre/ and post/")
    run.logs.mkdir(parents=True, exist_ok=True)
    log_path = run.logs / f"pytest-{phase}.log"
    results_file = run.gate_results(phase)
    results_file.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "pytest", str(folder),
        "--upgate-config", str(config.source),
        "--upgate-run-dir", str(run.path),
        "--upgate-phase", phase,
        "--import-mode=importlib", "-p", "no:cacheprovider",
        "--rootdir", str(folder.parent),
        "-v", "-rfEs", "--tb=short", "--color=no",
        f"--junitxml={run.junit(phase)}",
        f"--alluredir={run.allure_results}",
        *config.gates.extra_pytest_args,
    ]
    with log_path.open("w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        env = {**os.environ, "UPGATE_APP_URL": app_url} if app_url else None
        proc = subprocess.Popen(cmd, cwd=folder.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            match = _VERBOSE_LINE.match(line)
            if match and on_line:
                on_line(match["node"], match["outcome"])
        status = proc.wait()
    result = PhaseResult(phase=phase, exit_status=status)
    if results_file.exists():
        data = json.loads(results_file.read_text(encoding="utf-8"))
        result.counts = data.get("counts", {})
        result.gates = data.get("gates", [])
        result.seconds = data.get("seconds", 0.0)
    return result

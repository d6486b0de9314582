"""Run folders: `reports/runs/<run-id>/`, shared by the wrapper and by a person running gates by hand.

    >>> run = RunDir.create(Path("reports"))         # doctest: +SKIP
    >>> run.baseline                                  # reports/runs/20261125-101500-ab12/baseline
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_REPORTS = Path("reports")


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def baseline(self) -> Path:
        return self.path / "baseline"

    @property
    def journal(self) -> Path:
        return self.path / "journal.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def allure_results(self) -> Path:
        return self.path / "allure-results"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def gate_results(self, phase: str) -> Path:
        return self.path / f"gates-{phase}.json"

    def junit(self, phase: str) -> Path:
        return self.path / f"junit-{phase}.xml"

    @classmethod
    def create(cls, reports: Path = DEFAULT_REPORTS) -> RunDir:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        path = Path(reports).resolve() / "runs" / f"{stamp}-{uuid.uuid4().hex[:4]}"
        for sub in ("baseline", "logs"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def latest(cls, reports: Path = DEFAULT_REPORTS) -> RunDir | None:
        runs = Path(reports) / "runs"
        if not runs.is_dir():
            return None
        folders = sorted(p for p in runs.iterdir() if p.is_dir())
        return cls(folders[-1].resolve()) if folders else None

    def write_json(self, name: str, data: Any) -> Path:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, target)
        return target

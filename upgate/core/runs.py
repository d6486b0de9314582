"""Run folders: `reports/runs/<run-id>/`, shared by the wrapper and by a person running gates by hand.

    >>> run = resolve_run("latest", Path("reports"))           # doctest: +SKIP
    >>> run.save_baseline("schema", snapshot.to_json())         # baseline/schema.json, written atomically
    >>> run.load_baseline("schema")["tables"]                   # doctest: +SKIP

One resolver of "which run" (`resolve_run`: a run id, a folder, or `latest`) serves the CLI and the
gate plugin; one typed record (`RunSummary`) is what the pipeline writes as `summary.json`.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from upgate.errors import ConfigError

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
        """Write `name` (relative to the run folder) atomically: readers see the old file or the new one."""
        return write_json_atomically(self.path / name, data)

    # --- baseline artifacts: written by the pre-gates, read by post-gates and rollback verification ----

    def baseline_file(self, name: str) -> Path:
        """`schema` -> baseline/schema.json; `fingerprints/episodic_logs` -> baseline/fingerprints/episodic_logs.json."""
        relative = Path(name if name.endswith(".json") else f"{name}.json")
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"baseline artifact name {name!r} must be a relative path inside baseline/")
        return self.baseline / relative

    def save_baseline(self, name: str, data: Any) -> Path:
        return write_json_atomically(self.baseline_file(name), data)

    def load_baseline(self, name: str) -> Any | None:
        """The artifact's data, or None when the pre-gates did not record it."""
        path = self.baseline_file(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc}); run the pre gates again") from None


def write_json_atomically(target: Path, data: Any) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return target


def resolve_run(spec: str | os.PathLike[str] | None, reports: Path = DEFAULT_REPORTS) -> RunDir:
    """Which run: None or `latest` (the newest under reports/runs), a run folder, or a run id.

    ConfigError names what was looked for when there is no such run.
    """
    text = str(spec) if spec is not None else "latest"
    if text == "latest":
        found = RunDir.latest(reports)
        if found is None:
            raise ConfigError(f"no run folder under {Path(reports) / 'runs'}: run the pre gates first (or "
                              "`upgate run`), or name the run folder")
        return found
    path = Path(text).expanduser()
    if path.is_dir():
        return RunDir(path.resolve())
    by_id = Path(reports) / "runs" / text
    if os.sep not in text and by_id.is_dir():
        return RunDir(by_id.resolve())
    raise ConfigError(f"no run folder {text!r}: give a folder, a run id under {Path(reports) / 'runs'}, or 'latest'")


# --- the run summary (summary.json) ---------------------------------------------------------------


@dataclass
class StepRecord:
    """One step (or gate phase, or rollback rung) as the summary lists it."""

    name: str
    status: str = "running"  # running | ok | failed
    seconds: float | None = None
    error: str | None = None


@dataclass
class Rung:
    rung: str
    ok: bool
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class RollbackRecord:
    triggered: bool = False
    reason: str | None = None
    ladder: list[Rung] = field(default_factory=list)
    verifications: list[dict[str, Any]] = field(default_factory=list)
    restored: bool = False
    seconds: float | None = None
    verified: bool | None = None
    #: The surgical repair, when one ran: source, tables and rows (upgate/core/repair.py).
    repair: dict[str, Any] | None = None


@dataclass
class PhaseRecord:
    passed: bool
    counts: dict[str, int]
    failures: list[dict[str, Any]]
    # The user's own gates ([gates] extra) of this phase: nodeid, outcome, message.
    user_gates: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunSummary:
    """What one run did, as `summary.json` holds it (reporting, metrics and history read the JSON)."""

    run_id: str
    target: str
    from_version: str | None
    to_version: str | None
    verdict: str
    exit_code: int
    reason: str
    started_at: str
    seconds: float
    config: str
    config_sha256: str | None
    plan: list[dict[str, Any]] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    gates: dict[str, PhaseRecord] = field(default_factory=dict)
    downtime: dict[str, Any] | None = None
    downtime_budget_s: float | None = None
    downtime_within_budget: bool | None = None
    rollback: RollbackRecord = field(default_factory=RollbackRecord)
    rollback_budget_s: float | None = None
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    backup: dict[str, Any] | None = None
    restore: dict[str, Any] | None = None
    model_upgrade: dict[str, Any] | None = None
    deploy: dict[str, Any] | None = None
    packages: dict[str, Any] | None = None
    config_files: dict[str, Any] | None = None
    gated: dict[str, bool] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    # Gate families left out because not configured (their gates deselected): family -> what to configure.
    not_gated: dict[str, str] = field(default_factory=dict)
    #: Live traffic during the run: attribution mode, writes per second, the upgrade's own changes, and how
    #: many live writes the rollback kept, replayed or (by consent) discarded (upgate/core/live.py).
    live: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = [{k: v for k, v in s.items() if v is not None} for s in data["steps"]]
        data["rollback"]["ladder"] = [{k: v for k, v in r.items() if v is not None and v != {}}
                                      for r in data["rollback"]["ladder"]]
        return data

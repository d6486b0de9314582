"""Past runs, read back from their folders: success rate against the guide's 95 %, downtime and rollback trends.

    >>> h = load_history(Path("reports"))                 # doctest: +SKIP
    >>> h.success_rate, h.meets_target
    (0.96, True)
    >>> print(format_table(h))                            # doctest: +SKIP

Only `summary.json` of each run folder is read; folders without one (gates run by hand) are skipped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SUCCESS = "UPGRADED"


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    started_at: str
    target: str
    from_version: str | None
    to_version: str | None
    verdict: str
    exit_code: int | None
    seconds: float | None
    downtime_s: float | None
    longest_outage_s: float | None
    rollback_s: float | None
    rollback_verified: bool | None
    path: str

    @classmethod
    def from_summary(cls, folder: Path, s: dict[str, Any]) -> RunRecord:
        downtime = s.get("downtime") or {}
        rollback = s.get("rollback") or {}
        triggered = bool(rollback.get("triggered"))
        return cls(
            run_id=str(s.get("run_id") or folder.name),
            started_at=str(s.get("started_at") or ""),
            target=str(s.get("target") or ""),
            from_version=s.get("from_version"),
            to_version=s.get("to_version"),
            verdict=str(s.get("verdict") or "UNKNOWN"),
            exit_code=s.get("exit_code"),
            seconds=s.get("seconds"),
            downtime_s=downtime.get("downtime_s"),
            longest_outage_s=downtime.get("longest_outage_s"),
            rollback_s=rollback.get("seconds") if triggered else None,
            rollback_verified=bool(rollback.get("verified")) if triggered else None,
            path=str(folder),
        )


@dataclass(frozen=True)
class Trend:
    """Least-squares slope per run and the mean of the recent half against the older half."""

    metric: str
    slope_per_run: float
    older_mean: float
    recent_mean: float
    direction: str  # "rising", "falling", "flat", or "n/a"

    def describe(self, unit: str = "s") -> str:
        if self.direction == "n/a":
            return f"{self.metric}: not enough runs for a trend"
        return (f"{self.metric}: {self.direction} ({self.slope_per_run:+.3f} {unit}/run; "
                f"older half {self.older_mean:.2f} {unit}, recent half {self.recent_mean:.2f} {unit})")


@dataclass
class History:
    records: list[RunRecord]
    target_rate: float = 0.95
    trends: list[Trend] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.records)

    @property
    def by_verdict(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.records:
            counts[r.verdict] = counts.get(r.verdict, 0) + 1
        return counts

    @property
    def success_rate(self) -> float | None:
        """UPGRADED over every finished run (a blocked or rolled-back upgrade did not succeed)."""
        return sum(r.verdict == SUCCESS for r in self.records) / self.total if self.total else None

    @property
    def attempted_success_rate(self) -> float | None:
        """UPGRADED over the runs that touched something (BLOCKED left out: the pre-gates stopped them)."""
        attempted = [r for r in self.records if r.verdict != "BLOCKED"]
        return sum(r.verdict == SUCCESS for r in attempted) / len(attempted) if attempted else None

    @property
    def meets_target(self) -> bool | None:
        rate = self.success_rate
        return None if rate is None else rate >= self.target_rate

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": self.total,
            "by_verdict": self.by_verdict,
            "success_rate": self.success_rate,
            "attempted_success_rate": self.attempted_success_rate,
            "target_success_rate": self.target_rate,
            "meets_target": self.meets_target,
            "trends": [asdict(t) for t in self.trends],
            "records": [asdict(r) for r in self.records],
        }


def load_history(reports: Path, target: str | None = None, last: int | None = None,
                 target_rate: float = 0.95) -> History:
    runs = Path(reports) / "runs"
    records: list[RunRecord] = []
    if runs.is_dir():
        for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
            summary = folder / "summary.json"
            try:
                data = json.loads(summary.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            record = RunRecord.from_summary(folder, data)
            if target is None or record.target == target:
                records.append(record)
    records.sort(key=lambda r: (r.started_at, r.run_id))
    if last:
        records = records[-last:]
    history = History(records, target_rate=target_rate)
    history.trends = [
        trend("downtime_s", [r.downtime_s for r in records]),
        trend("rollback_s", [r.rollback_s for r in records]),
        trend("run_seconds", [r.seconds for r in records]),
    ]
    return history


def trend(metric: str, values: list[float | None], flat_ratio: float = 0.1) -> Trend:
    """Rising or falling when the recent half's mean differs from the older half's by more than 10 %."""
    points = [(i, float(v)) for i, v in enumerate(values) if v is not None]
    if len(points) < 3:
        return Trend(metric, 0.0, 0.0, 0.0, "n/a")
    n = len(points)
    mx = sum(i for i, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((i - mx) ** 2 for i, _ in points)
    slope = sum((i - mx) * (v - my) for i, v in points) / var if var else 0.0
    half = n // 2
    older = sum(v for _, v in points[:half]) / half
    recent = sum(v for _, v in points[half:]) / (n - half)
    scale = max(abs(older), abs(recent), 1e-9)
    if abs(recent - older) <= flat_ratio * scale or abs(recent - older) < 0.01:
        direction = "flat"
    else:
        direction = "rising" if recent > older else "falling"
    return Trend(metric, round(slope, 4), round(older, 3), round(recent, 3), direction)


def format_table(history: History) -> str:
    """One line per run, then the success rate against the target and the trends."""
    head = f"{'run':<22} {'target':<18} {'versions':<12} {'verdict':<15} {'downtime':>9} {'longest':>8} " \
           f"{'rollback':>9} {'total':>8}"
    lines = [head, "-" * len(head)]
    for r in history.records:
        versions = f"{r.from_version or '?'}->{r.to_version or '?'}"
        rollback = "-" if r.rollback_s is None else f"{r.rollback_s:.2f}s" + ("" if r.rollback_verified else "!")
        lines.append(f"{r.run_id:<22} {r.target[:18]:<18} {versions[:12]:<12} {r.verdict:<15} "
                     f"{_s(r.downtime_s):>9} {_s(r.longest_outage_s):>8} {rollback:>9} {_s(r.seconds):>8}")
    lines.append("-" * len(head))
    if not history.records:
        lines.append("no finished runs (no summary.json under runs/)")
        return "\n".join(lines)
    rate = history.success_rate or 0.0
    verdicts = ", ".join(f"{n} {v}" for v, n in sorted(history.by_verdict.items()))
    status = "meets" if history.meets_target else "BELOW"
    lines.append(f"success rate {100 * rate:.1f} % ({verdicts}) - {status} the {100 * history.target_rate:g} % target")
    attempted = history.attempted_success_rate
    if attempted is not None:
        lines.append(f"of upgrades attempted (not blocked by pre-gates): {100 * attempted:.1f} % succeeded")
    for t in history.trends:
        lines.append("trend " + t.describe())
    return "\n".join(lines)


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s"

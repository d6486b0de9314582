"""What the performance gate left in a run folder, read back for charts, metrics and reports.

    >>> runs = load_load_runs(RunDir(Path("reports/runs/20261125-101500-ab12")))   # doctest: +SKIP
    >>> runs[0].label, runs[0].p95_ms, len(runs[0].samples_ms)
    ('baseline', 12.4, 5321)

Reading only: the gate decides. Stats are looked for as JSON files (`baseline/perf.json` and `perf/*.json`,
as gates/*/test_performance.py write them; `perf/live.json`, the old version measured beside the candidate by a
paired post-gate, stands for the baseline when present) holding latency samples or Locust's response-time histogram,
and as Locust CSV files
(`*_stats.csv`, `*_stats_history.csv`). Anything absent simply yields nothing, so a run without a
performance gate gets no latency chart instead of an error.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from upgate.core.runs import RunDir

_SAMPLE_KEYS = ("samples_ms", "latency_samples_ms", "latencies_ms", "response_times_ms", "samples")
_HISTOGRAM_KEYS = ("response_times", "histogram_ms", "latency_histogram_ms")


@dataclass
class LoadRun:
    """One load run (baseline or candidate): summary figures and, when recorded, the latency samples."""

    label: str
    source: Path
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    rps: float | None = None
    error_rate: float | None = None
    requests: int | None = None
    samples_ms: list[float] = field(default_factory=list)

    @property
    def phase(self) -> str:
        """baseline (recorded by the pre-gates) or candidate (the post-gates' run); else the label itself."""
        words = set(re.split(r"[^a-z0-9]+", self.label.lower()))
        if words & {"baseline", "pre", "before", "live"}:
            return "baseline"
        if words & {"candidate", "post", "after", "current"}:
            return "candidate"
        return self.label

    def quantile_ms(self, q: float) -> float | None:
        given = {0.5: self.p50_ms, 0.95: self.p95_ms, 0.99: self.p99_ms}.get(q)
        if given is not None:
            return given
        if not self.samples_ms:
            return None
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def perf_files(run: RunDir) -> list[Path]:
    """Stats files, the live version's run of a paired comparison first: measured in the same seconds as the
    candidate, it is the baseline that the post-gate judged against."""
    base = run.path
    found: list[Path] = []
    for pattern in ("baseline/perf*.json", "baseline/perf/**/*.json", "perf/**/*.json"):
        found.extend(p for p in base.glob(pattern) if p.is_file())
    return sorted(set(found), key=lambda p: (p != base / "perf" / "live.json", p))


def locust_csvs(run: RunDir) -> list[Path]:
    """Locust's own CSV output anywhere in the run folder (stats, history, failures, exceptions)."""
    return sorted(p for p in run.path.rglob("*.csv") if p.is_file() and "allure" not in p.parts[-2])


def load_load_runs(run: RunDir) -> list[LoadRun]:
    runs: list[LoadRun] = []
    seen: set[str] = set()
    for path in perf_files(run):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        default = "baseline" if path.parent.name == "baseline" else path.stem
        for label, stats in _stats_objects(data, default):
            parsed = _parse(label, path, stats)
            if parsed and (parsed.samples_ms or parsed.p95_ms is not None) and parsed.phase not in seen:
                seen.add(parsed.phase)
                runs.append(parsed)
    if not runs:
        runs.extend(_from_locust_csv(run))
    return runs


def _stats_objects(data: Any, stem: str) -> list[tuple[str, dict[str, Any]]]:
    """A stats file may hold one run, or several keyed by label (baseline / candidate)."""
    if not isinstance(data, dict):
        return []
    if "evidence" in data and isinstance(data["evidence"], dict):  # a CheckResult written as evidence
        data = data["evidence"]
    if _looks_like_stats(data):
        return [(str(data.get("label") or data.get("phase") or data.get("name") or stem), data)]
    out = []
    for key, value in data.items():
        if isinstance(value, dict) and _looks_like_stats(value):
            out.append((str(key), value))
    return out


def _looks_like_stats(d: dict[str, Any]) -> bool:
    keys = set(d)
    total = d.get("total")
    return bool(keys & {"p95_ms", "p95", *_SAMPLE_KEYS, *_HISTOGRAM_KEYS}) or (
        isinstance(total, dict) and "p95_ms" in total)


def _num(d: dict[str, Any], *keys: str) -> float | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
    return None


def _parse(label: str, source: Path, raw: dict[str, Any]) -> LoadRun | None:
    # checks/perf.py's LoadRun.to_json(): figures under "total", samples per endpoint under "samples".
    d = {**raw, **raw["total"]} if isinstance(raw.get("total"), dict) else raw
    samples: list[float] = []
    for key in _SAMPLE_KEYS:
        value = d.get(key)
        if isinstance(value, dict):  # per endpoint: all of them together
            value = [x for v in value.values() if isinstance(v, list) for x in v]
        if isinstance(value, list) and value and all(isinstance(x, int | float) for x in value[:100]):
            samples = [float(x) for x in value]
            break
    if not samples:
        for key in _HISTOGRAM_KEYS:
            value = d.get(key)
            if isinstance(value, dict) and value:
                try:
                    for ms, count in value.items():
                        samples.extend([float(ms)] * int(count))
                except (TypeError, ValueError):
                    samples = []
                break
    requests = _num(d, "requests", "num_requests", "request_count")
    failures = _num(d, "failures", "num_failures")
    error_rate = _num(d, "error_rate", "fail_ratio", "failure_rate")
    if error_rate is None and failures is not None and requests:
        error_rate = failures / requests
    return LoadRun(
        label=label,
        source=source,
        p50_ms=_num(d, "p50_ms", "p50", "median_ms"),
        p95_ms=_num(d, "p95_ms", "p95"),
        p99_ms=_num(d, "p99_ms", "p99"),
        rps=_num(d, "rps", "throughput_rps", "requests_per_s", "total_rps"),
        error_rate=error_rate,
        requests=int(requests) if requests is not None else None,
        samples_ms=samples,
    )


def _from_locust_csv(run: RunDir) -> list[LoadRun]:
    """Locust's `<prefix>_stats.csv`: the 'Aggregated' row of each prefix becomes one run."""
    out = []
    for path in locust_csvs(run):
        if not path.name.endswith("_stats.csv"):
            continue
        try:
            rows = list(csv.DictReader(path.open(encoding="utf-8")))
        except (OSError, csv.Error):
            continue
        agg = next((r for r in rows if r.get("Name") == "Aggregated"), None)
        if not agg:
            continue

        def f(key: str, row: dict[str, str] = agg) -> float | None:
            try:
                return float(row[key])
            except (KeyError, TypeError, ValueError):
                return None

        count, failures = f("Request Count"), f("Failure Count")
        out.append(LoadRun(
            label=path.name.removesuffix("_stats.csv"), source=path,
            p50_ms=f("50%"), p95_ms=f("95%"), p99_ms=f("99%"), rps=f("Requests/s"),
            error_rate=(failures / count) if count and failures is not None else None,
            requests=int(count) if count is not None else None))
    return out

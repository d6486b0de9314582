"""Operations signals: a run's outcome as Prometheus metrics (textfile, and a Pushgateway when configured).

    >>> registry = build_registry(summary, load_runs=[], probe_latencies_ms=[])    # doctest: +SKIP
    >>> write_textfile(registry, run.path / "metrics.prom")
    >>> push(registry, "http://pushgateway:9091", job="upgate", target="reference-service")

The alert rules shipped in `monitoring/upgate-alerts.yml` name only metrics defined here
(`METRIC_NAMES`); a test holds the two together.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from upgate.reporting.loadstats import LoadRun

NAMESPACE = "upgate"
QUANTILES = (0.5, 0.95, 0.99)

# name -> (help, extra labels beyond `target`)
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "upgate_upgrade_status": ("1 when the last upgrade ended UPGRADED, 0 when it did not (the verdict label says how)",
                              ("verdict", "from_version", "to_version")),
    "upgate_upgrade_exit_code": ("Exit code of the last run: 0 upgraded, 10 blocked, 20 rolled back, 30 needs attention",
                                 ()),
    "upgate_needs_attention": ("1 when the last run's rollback could not be proven", ()),
    "upgate_rollback_triggered": ("1 when the last run started the rollback ladder", ()),
    "upgate_rollback_verified": ("1 when the rollback was verified against the baseline (0 when it was not)", ()),
    "upgate_rollback_seconds": ("Seconds from the failure to the verified rollback", ()),
    "upgate_rollback_budget_seconds": ("Rollback time budget (thresholds.max_rollback_s)", ()),
    "upgate_downtime_seconds": ("Total seconds the health probes failed during the last run", ()),
    "upgate_longest_outage_seconds": ("Longest continuous outage during the last run", ()),
    "upgate_downtime_budget_seconds": ("Downtime budget (thresholds.max_downtime_s)", ()),
    "upgate_step_duration_seconds": ("Seconds spent in each step of the last run (repeated steps summed)", ("step",)),
    "upgate_step_failed": ("1 when a step of the last run failed", ("step",)),
    "upgate_run_duration_seconds": ("Wall time of the last run", ()),
    "upgate_last_run_timestamp_seconds": ("Unix time the last run finished", ()),
    "upgate_gates": ("Gates of the last run by phase and outcome", ("phase", "outcome")),
    "upgate_response_time_seconds": ("Load-test latency quantiles of the performance gate's runs",
                                     ("phase", "quantile")),
    "upgate_throughput_rps": ("Load-test throughput of the performance gate's runs", ("phase",)),
    "upgate_error_ratio": ("Load-test error ratio of the performance gate's runs", ("phase",)),
    "upgate_probe_latency_seconds": ("Health-probe latency quantiles during the upgrade window (answered probes)",
                                     ("quantile",)),
}
METRIC_NAMES = frozenset(METRICS)


def build_registry(summary: dict[str, Any], load_runs: Iterable[LoadRun] = (),
                   probe_latencies_ms: Iterable[float] = (), finished_at: float | None = None) -> CollectorRegistry:
    """The run's summary (and its load/probe data) as one registry of gauges labelled with the target."""
    registry = CollectorRegistry()
    gauges = {name: Gauge(name, help_, ("target", *labels), registry=registry)
              for name, (help_, labels) in METRICS.items()}
    target = str(summary.get("target") or "unknown")

    def put(name: str, value: float | None, **labels: str) -> None:
        if value is None:
            return
        gauges[name].labels(target=target, **labels).set(float(value))

    verdict = str(summary.get("verdict", "NEEDS_ATTENTION"))
    put("upgate_upgrade_status", 1.0 if verdict == "UPGRADED" else 0.0, verdict=verdict,
        from_version=str(summary.get("from_version") or ""), to_version=str(summary.get("to_version") or ""))
    put("upgate_upgrade_exit_code", summary.get("exit_code"))
    put("upgate_needs_attention", 1.0 if verdict == "NEEDS_ATTENTION" else 0.0)

    rollback = summary.get("rollback") or {}
    triggered = bool(rollback.get("triggered"))
    put("upgate_rollback_triggered", 1.0 if triggered else 0.0)
    if triggered:
        put("upgate_rollback_verified", 1.0 if rollback.get("verified") else 0.0)
        put("upgate_rollback_seconds", rollback.get("seconds"))
    put("upgate_rollback_budget_seconds", summary.get("rollback_budget_s"))

    downtime = summary.get("downtime") or {}
    put("upgate_downtime_seconds", downtime.get("downtime_s", 0.0 if summary.get("steps") else None))
    put("upgate_longest_outage_seconds", downtime.get("longest_outage_s"))
    put("upgate_downtime_budget_seconds", summary.get("downtime_budget_s"))

    totals: dict[str, float] = {}
    failed: dict[str, bool] = {}
    for step in summary.get("steps") or []:
        name = str(step.get("name"))
        totals[name] = totals.get(name, 0.0) + float(step.get("seconds") or 0.0)
        failed[name] = failed.get(name, False) or step.get("status") == "failed"
    for name, seconds in totals.items():
        put("upgate_step_duration_seconds", round(seconds, 3), step=name)
        put("upgate_step_failed", 1.0 if failed[name] else 0.0, step=name)
    put("upgate_run_duration_seconds", summary.get("seconds"))
    if finished_at is not None:
        put("upgate_last_run_timestamp_seconds", finished_at)

    for phase, result in (summary.get("gates") or {}).items():
        for outcome, count in (result.get("counts") or {}).items():
            put("upgate_gates", count, phase=str(phase), outcome=str(outcome))

    for load in load_runs:
        for q in QUANTILES:
            ms = load.quantile_ms(q)
            put("upgate_response_time_seconds", None if ms is None else ms / 1000, phase=load.phase, quantile=str(q))
        put("upgate_throughput_rps", load.rps, phase=load.phase)
        put("upgate_error_ratio", load.error_rate, phase=load.phase)

    latencies = sorted(probe_latencies_ms)
    if latencies:
        for q in QUANTILES:
            put("upgate_probe_latency_seconds", latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000,
                quantile=str(q))
    return registry


def probe_latencies(downtime_file: Path) -> list[float]:
    """Latency of the answered probes in a run's downtime.json."""
    try:
        data = json.loads(downtime_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    return [float(p["latency_ms"]) for p in data.get("timeline") or [] if p.get("ok") and p.get("latency_ms") is not None]


def write_textfile(registry: CollectorRegistry, path: Path) -> Path:
    """Prometheus text format, written atomically (node_exporter's textfile collector reads it as is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    return path


def push(registry: CollectorRegistry, gateway: str, job: str, target: str, timeout_s: float = 5.0) -> None:
    """PUT the registry to a Pushgateway, grouped by job and target: the target's previous run is replaced."""
    push_to_gateway(gateway, job=job, registry=registry, grouping_key={"target": target}, timeout=timeout_s)


def written_names(text: str) -> set[str]:
    """Metric family names present in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return {family.name for family in text_string_to_metric_families(text) if family.samples}

"""PNG charts for the report and for `upgate history` (matplotlib, Agg backend: no display needed).

    >>> render_downtime(json.loads(Path("downtime.json").read_text()), Path("charts/downtime.png"))  # doctest: +SKIP
    >>> render_latency([baseline, candidate], Path("charts/latency.png"))                          # doctest: +SKIP

Each function takes plain data (what the run folder holds) and writes one file; none reads config.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from upgate.reporting.history import RunRecord
    from upgate.reporting.loadstats import LoadRun

VERDICT_COLORS = {
    "UPGRADED": "#2e7d32",
    "BLOCKED": "#f9a825",
    "ROLLED_BACK": "#ef6c00",
    "NEEDS_ATTENTION": "#c62828",
}


def prewarm() -> threading.Thread:
    """Import matplotlib and its Agg backend on a thread (about a second of one core on a slow machine) while
    the run waits on its last gates, so that the charts written after the verdict do not pay for it. Join the
    thread before drawing; an import that fails here fails again, and is reported, when the chart is drawn."""

    def load() -> None:
        with contextlib.suppress(Exception):
            import matplotlib

            matplotlib.use("Agg", force=True)
            from matplotlib import font_manager
            from matplotlib.backends import backend_agg  # noqa: F401
            from matplotlib.figure import Figure  # noqa: F401

            font_manager.fontManager.findfont("DejaVu Sans")

    thread = threading.Thread(target=load, name="upgate-charts-prewarm", daemon=True)
    thread.start()
    return thread


def _figure(rows: int = 1, height: float = 4.0) -> tuple[Figure, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, height * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False)
    return fig, [a[0] for a in axes]


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# How each kind of failed probe is drawn on the timeline: marker, colour, legend text.
FAILURE_STYLES = {
    "refused": ("x", "#c62828", "refused (nothing listening, connection reset)"),
    "hung": ("v", "#ef6c00", "hung (no answer within the timeout)"),
    "http": ("s", "#6a1b9a", "answered with an error status"),
    "error": ("d", "#4e342e", "other failure"),
}


def failed_probes_by_kind(timeline: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Send times of the failed probes per kind (timelines from before kinds were recorded: by status)."""
    out: dict[str, list[float]] = {kind: [] for kind in FAILURE_STYLES}
    for probe in timeline:
        if probe.get("ok"):
            continue
        kind = probe.get("kind") or ("http" if probe.get("status") else "error")
        out.setdefault(kind, []).append(float(probe["t"]))
    return {kind: ts for kind, ts in out.items() if ts}


def render_downtime(downtime: dict[str, Any], path: Path, budget_s: float | None = None) -> Path:
    """The probe timeline: latency of each answered probe; failed probes by kind (refused, hung, ...) on a band
    above; outages shaded; below, the steps."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5), dpi=100, layout="constrained")
    ax, lane = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    timeline = downtime.get("timeline") or []
    report = downtime.get("report") or {}
    urls = sorted({p["url"] for p in timeline})
    palette = ["#1565c0", "#00838f", "#2e7d32", "#37474f"]
    top = max([p["latency_ms"] for p in timeline if p.get("ok")] or [1.0])
    fail_y = top * 1.1
    for i, url in enumerate(urls):
        ok = [(p["t"], p["latency_ms"]) for p in timeline if p["url"] == url and p.get("ok")]
        if ok:
            ax.plot([t for t, _ in ok], [ms for _, ms in ok], ".", ms=4, color=palette[i % len(palette)],
                    label=f"answered: {url}")
    for kind, times in failed_probes_by_kind(timeline).items():
        marker, color, text = FAILURE_STYLES.get(kind, FAILURE_STYLES["error"])
        ax.plot(times, [fail_y] * len(times), marker, color=color, ms=6, ls="none",
                label=f"{text}: {len(times)} probes")
    for outage in report.get("outages") or []:
        for a in (ax, lane):
            a.axvspan(outage["start_s"], outage["end_s"], color="#c62828", alpha=0.15, lw=0)
    ax.set_ylabel("probe latency (ms)")
    ax.set_ylim(0, fail_y * 1.15)
    down = report.get("downtime_s")
    title = "Downtime timeline"
    if down is not None:
        title += f": {down:.2f} s down, longest outage {report.get('longest_outage_s', 0):.2f} s"
        failures = report.get("failures") or {}
        if failures:
            title += " (" + ", ".join(f"{kind} {n}" for kind, n in failures.items()) + " probes)"
        if budget_s:
            title += f" (budget {budget_s:g} s)"
    ax.set_title(title)
    if timeline:
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no probes recorded", transform=ax.transAxes, ha="center")

    # The steps as a lane of spans: each mark runs to the next one (the last to the end of probing).
    marks = report.get("marks") or []
    end = float(report.get("duration_s") or (timeline[-1]["t"] if timeline else 0.0))
    for i, mark in enumerate(marks):
        t0 = float(mark["t"])
        t1 = float(marks[i + 1]["t"]) if i + 1 < len(marks) else max(end, t0)
        rollback = str(mark["label"]).startswith(("rollback", "verify"))
        lane.barh(i % 3, max(t1 - t0, end / 400 if end else 0.01), left=t0, height=0.8,
                  color="#ef6c00" if rollback else "#78909c", alpha=0.8)
        lane.text(t0, i % 3, f" {mark['label']}", va="center", ha="left", fontsize=7, clip_on=True)
    lane.set_yticks([])
    lane.set_ylim(-0.6, 2.6)
    lane.invert_yaxis()
    lane.set_ylabel("steps")
    lane.set_xlabel("seconds since the first mutating step (orange: rollback and its verification)")
    return _save(fig, path)


def render_latency(runs: Sequence[LoadRun], path: Path) -> Path:
    """Latency histograms of the load runs (log-spaced bins) with p50/p95/p99; bars when only quantiles exist."""
    fig, (ax,) = _figure(height=4.5)
    colors = ["#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a"]
    with_samples = [r for r in runs if r.samples_ms]
    if with_samples:
        lo = max(0.1, min(min(r.samples_ms) for r in with_samples))
        hi = max(max(r.samples_ms) for r in with_samples)
        hi = max(hi, lo * 1.01)
        bins = [lo * (hi / lo) ** (i / 60) for i in range(61)]
        for i, run in enumerate(with_samples):
            color = colors[i % len(colors)]
            p95 = run.quantile_ms(0.95)
            weights = [100.0 / len(run.samples_ms)] * len(run.samples_ms)
            ax.hist(run.samples_ms, bins=bins, histtype="step", lw=1.6, color=color, weights=weights,
                    label=f"{run.label}: n={len(run.samples_ms)}, p50 {_ms(run.quantile_ms(0.5))}, p95 {_ms(p95)}, "
                          f"p99 {_ms(run.quantile_ms(0.99))}")
            for q, ls in ((0.5, ":"), (0.95, "--"), (0.99, "-.")):
                v = run.quantile_ms(q)
                if v is not None:
                    ax.axvline(v, color=color, ls=ls, lw=0.9)
        ax.set_xscale("log")
        ax.set_xlabel("response time (ms, log scale); dotted p50, dashed p95, dash-dot p99")
        ax.set_ylabel("% of requests per bin")
        ax.legend(fontsize=8)
        ax.set_title("Latency under load: baseline vs candidate")
    else:
        names = ["p50", "p95", "p99"]
        width = 0.8 / max(1, len(runs))
        for i, run in enumerate(runs):
            values = [run.quantile_ms(q) or 0.0 for q in (0.5, 0.95, 0.99)]
            ax.bar([j + i * width for j in range(3)], values, width=width, color=colors[i % len(colors)],
                   label=run.label)
        ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(3)], names)
        ax.set_ylabel("response time (ms)")
        ax.legend(fontsize=8)
        ax.set_title("Latency quantiles under load (no samples recorded)")
    return _save(fig, path)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def render_history(records: Sequence[RunRecord], path: Path, target_rate: float = 0.95, window: int = 10) -> Path:
    """Per run: downtime and rollback time (bars, coloured by verdict); below, the rolling success rate."""
    fig, (ax, ax2) = _figure(rows=2, height=3.2)
    xs = list(range(1, len(records) + 1))
    colors = [VERDICT_COLORS.get(r.verdict, "#757575") for r in records]
    ax.bar([x - 0.2 for x in xs], [r.downtime_s or 0.0 for r in records], width=0.4, color=colors,
           label="downtime (s)")
    ax.bar([x + 0.2 for x in xs], [r.rollback_s or 0.0 for r in records], width=0.4, color=colors, alpha=0.45,
           hatch="//", label="rollback (s)")
    ax.set_ylabel("seconds")
    ax.set_title("Downtime (solid) and rollback time (hatched) per run; colour = verdict")
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=v) for v, c in VERDICT_COLORS.items() if any(r.verdict == v for r in records)]
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left")
    rates = []
    for i in range(len(records)):
        recent = records[max(0, i + 1 - window): i + 1]
        rates.append(100.0 * sum(r.verdict == "UPGRADED" for r in recent) / len(recent))
    ax2.plot(xs, rates, "-o", color="#1565c0", ms=3, label=f"success rate, last {window} runs")
    ax2.axhline(100 * target_rate, color="#c62828", ls="--", label=f"target {100 * target_rate:g} %")
    ax2.set_ylim(0, 105)
    ax2.set_ylabel("% UPGRADED")
    ax2.set_xlabel("run (oldest first)")
    ax2.legend(fontsize=8, loc="lower left")
    step = max(1, math.ceil(len(xs) / 20))
    for a in (ax, ax2):
        a.set_xticks(xs[::step] or [1])
    return _save(fig, path)

"""What a person sees in the terminal: one line per step, one per gate, and a verdict readable at a glance."""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING, Any

from upgate.checks.secrets import redact
from upgate.errors import Verdict, exit_code

if TYPE_CHECKING:
    from upgate.config import Config
    from upgate.core.runs import RunDir

_MARKS = {"PASSED": "ok  ", "FAILED": "FAIL", "ERROR": "ERR ", "SKIPPED": "skip", "XFAIL": "xfail", "XPASS": "xpass"}


class Console:
    def __init__(self, stream: IO[str] | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.run_path = "."

    def _print(self, text: str) -> None:
        if not self.quiet:
            print(redact(text), file=self.stream, flush=True)

    def header(self, config: Config, run: RunDir) -> None:
        versions = ""
        if config.target.from_version or config.target.to_version:
            versions = f"  {config.target.from_version or '?'} -> {config.target.to_version or '?'}"
        self.run_path = str(run.path)
        self._print(f"upgate run  {config.target.name}{versions}")
        self._print(f"  config {config.source}")
        self._print(f"  run    {run.path}")

    def step(self, name: str, message: str) -> None:
        self._print(f"[{time.monotonic() - self.t0:6.1f}s] {name:<11} {message}")

    def gate(self, nodeid: str, outcome: str) -> None:
        if outcome == "SKIPPED":  # counted in the phase line; reasons are in gates-<phase>.json and the report
            return
        short = nodeid.split("gates/", 1)[-1]
        self._print(f"          {_MARKS.get(outcome, outcome):<5} {short}")

    def skipped(self, nodeid: str, message: str) -> None:
        """A gate skipped for a reason other than its part not being configured (too noisy to judge, nothing to
        check): printed, since the run's verdict stands without what it would have proved."""
        short = nodeid.split("gates/", 1)[-1]
        first = message.strip().splitlines()[0] if message.strip() else "(no reason given)"
        self._print(f"          skip  {short}: {first}")

    def failure(self, nodeid: str, message: str) -> None:
        short = nodeid.split("gates/", 1)[-1]
        first = message.strip().splitlines()[0] if message.strip() else "(no message)"
        self._print(f"          -> {short}: {first}")

    def banner(self, text: str) -> None:
        self._print(f"[{time.monotonic() - self.t0:6.1f}s] !!! {text}")

    def verdict(self, verdict: Verdict, reason: str, summary: dict[str, Any]) -> None:
        self._print("-" * 78)
        self._print(f"VERDICT: {verdict.value} (exit {exit_code(verdict)})  {reason}")
        downtime = summary.get("downtime")
        if downtime:
            within = "within" if summary.get("downtime_within_budget") else "OVER"
            self._print(f"  downtime {downtime['downtime_s']:.2f} s (longest outage {downtime['longest_outage_s']:.2f} s, "
                        f"{downtime['probes']} probes, {within} budget {summary['downtime_budget_s']:g} s)")
        rollback = summary.get("rollback") or {}
        if rollback.get("triggered"):
            proof = "verified against baseline" if rollback.get("verified") else "NOT verified"
            self._print(f"  rollback {rollback.get('seconds', 0):.2f} s, {proof}; ladder: "
                        + ", ".join(f"{r['rung']} {'ok' if r['ok'] else 'FAILED'}" for r in rollback.get("ladder", [])))
        if summary.get("live"):
            self._print(f"  live    {live_line(summary['live'])}")
        steps = [s for s in summary.get("steps", []) if "seconds" in s]
        if steps:
            self._print("  steps   " + " | ".join(f"{s['name']} {s['seconds']:.1f}s"
                                                  + ("" if s["status"] == "ok" else " FAILED") for s in steps))
        gated = summary.get("gated", {})
        self._print("  gated   " + ", ".join(k for k, v in gated.items() if v)
                    + ("" if all(gated.values()) else "  (not configured: " + ", ".join(
                        k for k, v in gated.items() if not v) + ")"))
        self._print(f"  report  {self.run_path}/summary.json (journal.jsonl, junit-*.xml, downtime.json beside it)")


def live_line(live: dict[str, Any]) -> str:
    """One line on live traffic during the run: attribution, writes per second, the upgrade's own changes,
    and what the rollback kept, replayed or discarded."""
    tx = live.get("transactions") or {}
    changes = live.get("changes") or {}
    parts = [f"attribution by {'logical decoding' if live.get('mode') == 'decode' else 'xmin'}"
             + (f" ({live['why']})" if live.get("mode") != "decode" and live.get("why") else "")]
    if live.get("mode") == "decode":
        parts.append(f"live traffic {changes.get('live', 0)} row changes in {tx.get('live', 0)} transactions "
                     f"({live.get('writes_per_s') or 0:g} writes/s over {live.get('window_s', 0):g} s)")
        parts.append(f"the upgrade {changes.get('upgrade', 0)} row changes in {tx.get('upgrade', 0)} transactions")
    else:
        parts.append(f"live traffic {tx.get('live', 0)} transactions ({live.get('live_transactions_per_s') or 0:g}/s)")
        parts.append(f"the upgrade {tx.get('upgrade', 0)} transactions")
    if tx.get("unknown"):
        parts.append(f"{tx['unknown']} transactions nothing recorded, judged as the upgrade's")
    kept = live.get("kept") or {}
    rollback = live.get("rollback") or {}
    if rollback:
        parts.append(f"rollback kept {kept.get('kept', 0)} of {kept.get('live', 0)} live {kept.get('unit', 'writes')}"
                     f" (replayed {kept.get('replayed', 0)}, discarded {kept.get('discarded', 0)})")
    if live.get("cleanup_problems"):
        parts.append("NOT removed: " + "; ".join(live["cleanup_problems"]))
    return "; ".join(parts)

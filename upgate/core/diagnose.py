"""After a failure, run the `diagnostics` gate family and keep what it found; never changes the verdict.

    >>> record = diagnose(config, run, after="post", console=Console())     # doctest: +SKIP
    >>> record["findings"]
    ['lock waits: 1 session(s) waiting (pid 4242 waits 3.1 s for AccessExclusiveLock on episodic_logs, ...)']

Each diagnosis writes `gates-diagnostics-<after>.json` and `junit-diagnostics-<after>.xml` in the run
folder, its evidence under `evidence/`, and returns a record for summary.json.
"""

from __future__ import annotations

import json
from typing import Any

from upgate.config import Config
from upgate.core.gating import gates_folder, run_gates
from upgate.core.runs import RunDir
from upgate.reporting.console import Console


def diagnose(config: Config, run: RunDir, after: str, console: Console | None = None) -> dict[str, Any] | None:
    """Run gates/diagnostics now (the state right after `after` failed); None when disabled or absent."""
    if not config.diagnostics.enabled or not (gates_folder(config) / "diagnostics").is_dir():
        return None
    if console:
        console.step("diagnostics", f"after {after} failed: pytest diagnostics gates (evidence only)")
    result = run_gates("diagnostics", config, run)
    for path in (run.gate_results("diagnostics"), run.junit("diagnostics")):
        if path.exists():
            path.replace(path.with_name(f"{path.stem}-{after}{path.suffix}"))
    findings = [f["message"] for f in result.failures]
    record = {"after": after, "counts": result.counts, "findings": findings,
              "results": f"gates-diagnostics-{after}.json"}
    if console:
        for gate, message in ((f["nodeid"], f["message"]) for f in result.failures):
            console.failure(gate, message)
        console.step("diagnostics", f"{len(findings)} finding(s), {result.counts.get('passed', 0)} clean "
                                    f"({result.seconds:.1f} s); evidence in {run.path / 'evidence'}")
    return record


def show_estimate(run: RunDir, console: Console) -> None:
    """Print the pre-gates' upgrade time estimate (baseline/estimate.json) when they made one."""
    path = run.baseline / "estimate.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))["summary"]
    except (OSError, ValueError, KeyError):
        return
    console.step("estimate", summary)

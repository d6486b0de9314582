"""One gated upgrade (DESIGN.md, "The flow"): a short loop over steps, and the ladder when one fails.

    >>> outcome = run(load_config("upgate.toml"), RunOptions())     # doctest: +SKIP
    >>> outcome.verdict, outcome.exit_code
    (<Verdict.UPGRADED: 'UPGRADED'>, 0)

lock -> pre-gates -> the plan of every step, printed -> steps in order (backup, migrate, model,
deploy) -> post-gates -> UPGRADED; on a failure after anything was touched: the rollback ladder
(upgate/core/ladder.py), then its proof (the post gates against the baseline).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from upgate.checks.secrets import redact
from upgate.config import Config
from upgate.core.diagnose import diagnose, show_estimate
from upgate.core.gating import PhaseResult, gates_folder, run_gates
from upgate.core.journal import Journal
from upgate.core.ladder import climb
from upgate.core.live import LiveCapture
from upgate.core.lock import LockBusy, LockUnavailable, run_lock
from upgate.core.probe import DowntimeProber
from upgate.core.runs import (
    DEFAULT_REPORTS,
    PhaseRecord,
    RollbackRecord,
    RunDir,
    Rung,
    RunSummary,
    StepRecord,
)
from upgate.errors import ConfigError, StepFailed, Verdict, exit_code
from upgate.reporting.audit import audit_log_for
from upgate.reporting.console import Console
from upgate.reporting.report import report_run
from upgate.steps import Step, StepContext, build_steps
from upgate.steps.backup import BackupStep
from upgate.steps.base import DeployStep


@dataclass
class RunOptions:
    reports: Path = DEFAULT_REPORTS
    console: Console | None = None
    #: An existing run folder to continue (`upgate rollback`); default: a new one.
    run_dir: Path | None = None


@dataclass
class RunOutcome:
    verdict: Verdict
    reason: str
    run: RunDir
    summary: RunSummary

    @property
    def exit_code(self) -> int:
        return exit_code(self.verdict)


class Pipeline:
    def __init__(self, config: Config, options: RunOptions) -> None:
        for phase in ("pre", "post"):
            folder = gates_folder(config) / phase
            if not folder.is_dir():
                raise ConfigError(f"gates folder {folder} not found: set [gates] directory to the folder "
                                  "holding pre/ and post/")
        self.config = config
        self.options = options
        self.console = options.console or Console()
        self.run = RunDir(options.run_dir.resolve()) if options.run_dir else RunDir.create(options.reports)
        self.journal = Journal(self.run.journal)
        self.journal.observers.append(audit_log_for(config, self.run).mirror())
        self.ctx = StepContext(config, self.run, self.journal, say=self.console.step)
        self.steps: list[Step] = []  # every step of the plan (or, for `upgate rollback`, the ones done)
        self.done: list[Step] = []  # the steps whose do() started
        self.records: list[StepRecord] = []
        self.phases: dict[str, PhaseResult] = {}
        self.rollback_record = RollbackRecord()
        self.plan: list[dict[str, Any]] = []
        self.prober: DowntimeProber | None = None
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)
        self.diagnostics: list[dict[str, Any]] = []
        self.live: LiveCapture | None = None  # live-traffic capture from the baseline on (upgate/core/live.py)

    # --- one journaled, timed unit of work ----------------------------------------------------

    def _timed(self, name: str, fn: Callable[[], Any], **detail: Any) -> Any:
        if self.prober:
            self.prober.mark(name)
        t0 = time.monotonic()
        record = StepRecord(name)
        self.records.append(record)
        try:
            with self.journal.step(name, **detail) as extra:
                value = fn()
                if isinstance(value, dict):
                    extra.update(value)
        except BaseException as exc:
            record.status, record.seconds, record.error = "failed", round(time.monotonic() - t0, 3), redact(str(exc))
            raise
        record.status, record.seconds = "ok", round(time.monotonic() - t0, 3)
        return value

    def _gates(self, phase: str) -> PhaseResult:
        label = {"pre": "pre-gates", "post": "post-gates", "rollback": "verify"}[phase]
        self.console.step(label, f"pytest {('post' if phase == 'rollback' else phase)} gates"
                          + (" against the baseline" if phase == "rollback" else ""))

        def go() -> dict[str, Any]:
            result = run_gates(phase, self.config, self.run, on_line=self.console.gate)
            self.phases[phase] = result
            if not result.passed:
                raise StepFailed(f"{label} failed: {result.describe()}")
            return {"counts": result.counts}

        try:
            self._timed(label, go)
        except StepFailed:
            result = self.phases[phase]
            for failure in result.failures:
                self.console.failure(failure["nodeid"], failure["message"])
            self.console.step(label, f"FAILED: {result.describe()} ({result.seconds:.1f} s)")
            self._diagnose(phase)
            return result
        result = self.phases[phase]
        self.console.step(label, f"passed: {result.describe()} ({result.seconds:.1f} s)")
        if phase == "pre":
            show_estimate(self.run, self.console)
        return result

    def _diagnose(self, after: str) -> None:
        """The diagnostics gate family, right after a failure: evidence only, never the verdict."""
        try:
            record = diagnose(self.config, self.run, after, self.console)
        except Exception as exc:  # diagnosing must never stand in the way of the rollback
            record = {"after": after, "error": redact(str(exc))}
        if record:
            self.diagnostics.append(record)

    # --- the rollback ladder ------------------------------------------------------------------

    def start_prober(self) -> None:
        cfg = self.config
        self.prober = DowntimeProber(cfg.probe_urls(), interval_s=cfg.probe.interval_ms / 1000,
                                     timeout_s=cfg.probe.timeout_ms / 1000)
        self.prober.start()

    def rung(self, name: str, action: Callable[[], Any]) -> bool:
        """One rung of the ladder: journaled as `rollback:<name>`, recorded, never raising."""
        self.console.step("rollback", name)
        try:
            self._timed(f"rollback:{name}", action)
        except Exception as exc:
            self.rollback_record.ladder.append(Rung(name, False, redact(str(exc))))
            self.console.step("rollback", f"{name} failed: {redact(str(exc))}")
            return False
        self.rollback_record.ladder.append(Rung(name, True))
        return True

    def verify(self) -> bool:
        attempt = len(self.rollback_record.verifications) + 1
        if attempt > 1:
            for suffix, path in (("json", self.run.gate_results("rollback")), ("xml", self.run.junit("rollback"))):
                if path.exists():
                    path.rename(path.with_name(f"{path.stem}-{attempt - 1}.{suffix}"))
        result = self._gates("rollback")
        self.rollback_record.verifications.append({"attempt": attempt, "passed": result.passed,
                                                   "counts": result.counts})
        return result.passed

    def rollback(self, reason: str, steps: list[Step]) -> tuple[Verdict, str]:
        """Undo `steps` (the ones done, in run order) through the ladder and prove it."""
        t0 = time.monotonic()
        record = self.rollback_record
        record.triggered, record.reason = True, reason
        self.console.banner(f"rolling back: {reason}")
        outcome = climb(steps, self.ctx, self.rung, self.verify, repair=self.repair)
        record.seconds, record.verified, record.restored = round(time.monotonic() - t0, 3), outcome.verified, \
            outcome.restored
        if outcome.verified:
            return Verdict.ROLLED_BACK, f"{reason}; rolled back and verified against the baseline in {record.seconds:.1f} s"
        ladder = "; ".join(f"{r.rung}: {'ok' if r.ok else 'FAILED'}" for r in record.ladder) or "nothing undone"
        stopped = next((r for r in record.ladder if not r.ok and r.error and r.error.startswith(("not restoring",
                                                                                                  "stopped before"))),
                       None)
        if stopped is not None:  # the restore refused to discard live writes: say which, first
            ladder = f"{stopped.rung}: {stopped.error}; {ladder}"
        return Verdict.NEEDS_ATTENTION, (f"{reason}; rollback could NOT be verified against the baseline "
                                         f"({'; '.join(outcome.problems)}; see {self.run.path}): {ladder}")

    def repair(self) -> bool:
        """The repair rung, when the last verification failed on data integrity alone and named the damage:
        only the damaged rows, from the baseline (upgate/core/repair.py). False when it does not apply."""
        from upgate.core.repair import damaged_tables, repair_damage

        last = self.phases.get("rollback")
        if last is None or last.passed or not last.failures or not self.config.database.url \
                or not self.config.rollback.repair:
            return False
        if not all("test_integrity.py" in f["nodeid"] for f in last.failures) or not damaged_tables(self.run):
            return False
        view = self.live.view() if self.live is not None else None

        def go() -> dict[str, Any]:
            done = repair_damage(self.config, self.run, view, self.console.step)
            self.rollback_record.repair = done
            if self.live is not None:
                self.live.rollback.setdefault("repairs", []).append(done)
            return {"repair": done}

        return self.rung("repair damaged rows", go)

    def start_live(self) -> str | None:
        """Capture live traffic from the baseline on (before the pre-gates); a reason to block, or None."""
        try:
            self.live = LiveCapture.start(self.config, self.run, self.console.step)
        except StepFailed as exc:
            return f"live-traffic capture: {redact(str(exc))}"
        except Exception as exc:  # noqa: BLE001 (permissions, a server that refuses: said, never silent)
            if self.config.live.attribution != "auto":
                return f"live-traffic capture (live.attribution = {self.config.live.attribution!r}): {redact(str(exc))}"
            self.console.step("live", f"NOT capturing live traffic ({redact(str(exc)).splitlines()[0]}): every row "
                                      "change will be judged as the upgrade's")
            self.journal.write("live", "unavailable", error=redact(str(exc)))
        self.ctx.live = self.live
        return None

    # --- the run ------------------------------------------------------------------------------

    def execute(self) -> RunOutcome:
        return self.finish(self._locked)

    def finish(self, body: Callable[[], tuple[Verdict, str]]) -> RunOutcome:
        """Journal the run, run `body`, and always write the summary and print the verdict."""
        cfg = self.config
        self.console.header(cfg, self.run)
        self.journal.write("run", "start", config=str(cfg.source), target=cfg.target.name,
                           host=socket.gethostname(), user=getpass.getuser(), config_sha256=_sha256(cfg.source))
        verdict, reason = Verdict.NEEDS_ATTENTION, "run did not finish"
        try:
            verdict, reason = body()
        except KeyboardInterrupt:
            verdict, reason = Verdict.NEEDS_ATTENTION, "interrupted: read the journal; `upgate rollback` undoes it"
            raise
        finally:
            if self.prober:
                self.prober.stop()
            if self.live is not None:
                self.live.close()
            summary = self._summary(verdict, reason)
            self.journal.write("run", "end", verdict=verdict.value, exit_code=exit_code(verdict), reason=reason)
            data = summary.to_json()
            self.console.verdict(verdict, reason, data)
            report_run(self.run, data, cfg, self.console)
        return RunOutcome(verdict, reason, self.run, summary)

    def _locked(self) -> tuple[Verdict, str]:
        cfg = self.config
        if not cfg.database.url:
            return self._gated()
        try:
            with run_lock(cfg.database.url, cfg.target.name, cfg.database.connect_timeout_s):
                self.console.step("lock", f"advisory lock held for target '{cfg.target.name}'")
                return self._gated()
        except LockBusy as exc:
            return Verdict.BLOCKED, str(exc)
        except LockUnavailable as exc:
            return Verdict.BLOCKED, f"database unreachable, nothing touched: {exc}"

    def _show_plan(self) -> None:
        for plan in [*([self.live.plan()] if self.live is not None else []), *(s.plan() for s in self.steps)]:
            self.plan.append(plan.to_json())
            for line in plan.lines():
                self.console.step("plan", line)
        self.run.write_json("plan.json", self.plan)

    def _gated(self) -> tuple[Verdict, str]:
        blocked = self.start_live()
        if blocked:
            return Verdict.BLOCKED, f"{blocked}; nothing was touched"
        pre = self._gates("pre")
        if not pre.passed:
            first = pre.failures[0]["message"] if pre.failures else pre.describe()
            return Verdict.BLOCKED, f"pre-gates failed ({pre.describe()}): {first}; nothing was touched"
        try:
            self.steps = build_steps(self.config)
        except StepFailed as exc:
            return Verdict.BLOCKED, f"the plan cannot be built, nothing was touched: {redact(str(exc))}"
        self._show_plan()
        # Before anything changes: the steps that touch nothing live (the backup), and every step's
        # preparation (copies, checks). A failure here blocks with nothing touched.
        try:
            for step in self.steps:
                if not step.mutates:
                    self.done.append(step)
                    self._timed(step.name, partial(step.do, self.ctx))
            for step in self.steps:
                if type(step).prepare is not Step.prepare:
                    self._timed(f"{step.name} backup", partial(step.prepare, self.ctx))
        except Exception as exc:
            return Verdict.BLOCKED, f"{self.records[-1].name} failed, nothing was touched: {redact(str(exc))}"

        self.start_prober()
        try:
            for step in self.steps:
                if step.mutates:
                    self.done.append(step)
                    self._timed(step.name, partial(step.do, self.ctx))
        except Exception as exc:
            failed = self.records[-1].name
            self._diagnose(failed)
            return self.rollback(f"{failed} failed: {redact(str(exc))}", self.done)
        post = self._gates("post")
        if not post.passed:
            first = post.failures[0]["message"] if post.failures else post.describe()
            return self.rollback(f"post-gates failed ({post.describe()}): {first}", self.done)
        ran = ["pre-gates", *(s.label for s in self.done), "post-gates"]
        return Verdict.UPGRADED, f"{', '.join(ran[:-1])} and {ran[-1]} passed"

    def _summary(self, verdict: Verdict, reason: str) -> RunSummary:
        cfg = self.config
        downtime = self.prober.report() if self.prober else None
        if self.prober:
            self.run.write_json("downtime.json", {
                "interval_s": self.prober.interval_s, "urls": self.prober.urls,
                "report": downtime.to_json() if downtime else None,
                "timeline": [p.__dict__ for p in self.prober.timeline],
            })
        done = self.done or self.steps  # `upgate rollback`: the steps its journal says were done
        by_name = {s.name: s for s in done}
        backup = by_name.get(BackupStep.name)
        model = by_name.get("model")
        summary = RunSummary(
            run_id=self.run.run_id, target=cfg.target.name, from_version=cfg.target.from_version,
            to_version=cfg.target.to_version, verdict=verdict.value, exit_code=exit_code(verdict), reason=reason,
            started_at=self.started_at.isoformat(timespec="seconds"), seconds=round(time.monotonic() - self.started, 3),
            config=str(cfg.source), config_sha256=_sha256(cfg.source), plan=self.plan, steps=self.records,
            gates={p: PhaseRecord(r.passed, r.counts, r.failures) for p, r in self.phases.items()},
            downtime=downtime.to_json() if downtime else None, downtime_budget_s=cfg.thresholds.max_downtime_s,
            downtime_within_budget=(downtime.downtime_s <= cfg.thresholds.max_downtime_s) if downtime else None,
            rollback=self.rollback_record, rollback_budget_s=cfg.thresholds.max_rollback_s,
            diagnostics=self.diagnostics,
            backup=backup.summary() if backup else None,
            restore=_restore_summary(backup),
            model_upgrade=model.summary() if model else None,
            gated=cfg.gated_components(), models=[m.name for m in cfg.models],
            deploy=next((s.summary() for s in done if isinstance(s, DeployStep)), None),
            live=self.live.closed if self.live is not None else None,
        )
        self.run.write_json("summary.json", json.loads(redact(json.dumps(summary.to_json(), default=str))))
        return summary


def _restore_summary(backup: Step | None) -> dict[str, Any] | None:
    outcome = getattr(backup, "outcome", None)
    return outcome.to_json() if outcome is not None else None


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def run(config: Config, options: RunOptions | None = None) -> RunOutcome:
    return Pipeline(config, options or RunOptions()).execute()

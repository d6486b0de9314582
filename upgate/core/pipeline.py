"""One gated upgrade (DESIGN.md, "The flow"): a short loop over steps, and the ladder when one fails.

    >>> outcome = run(load_config("upgate.toml"), RunOptions())     # doctest: +SKIP
    >>> outcome.verdict, outcome.exit_code
    (<Verdict.UPGRADED: 'UPGRADED'>, 0)

lock -> pre-gates -> the plan of every step, printed -> steps in order (backup, packages, config,
migrate, model, deploy) -> post-gates -> UPGRADED; on a failure after anything was touched: the rollback ladder
(upgate/core/ladder.py), then its proof (the post gates against the baseline).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import socket
import sys
import threading
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
from upgate.core.gating import GateWorker, PhaseResult, gates_folder, run_gates
from upgate.core.interrupts import Interrupted, SignalGuard
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
from upgate.reporting.charts import prewarm as prewarm_charts
from upgate.reporting.console import Console
from upgate.reporting.report import report_run
from upgate.steps import Step, StepContext, build_steps
from upgate.steps.backup import BackupStep
from upgate.steps.base import DeployStep

#: MiB held back in the run folder from the first change on, and given to the rollback when it starts.
RESERVE_MB = 16


@dataclass
class RunOptions:
    reports: Path = DEFAULT_REPORTS
    console: Console | None = None
    #: An existing run folder to continue (`upgate rollback`); default: a new one.
    run_dir: Path | None = None
    #: The record this run writes in its folder: `summary.json`, or for `upgate rollback` of a run that
    #: finished, its own `rollback-<time>.json` (the run's summary stays as it was).
    record: str = "summary.json"


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
        self.journal.on_error = self._journal_error
        self.journal.observers.append(audit_log_for(config, self.run).mirror())
        self.guard = SignalGuard()
        #: "run", or "rollback" for `upgate rollback` (journaled in `run start`).
        self.command = "run"
        #: True from the first mutating step on: from then any failure or signal runs the ladder.
        self.touching = False
        #: What could not be written (disk full, read-only): shown with the verdict, never fatal.
        self.write_problems: list[str] = []
        #: The warm gate process (upgate/core/gating.py): one start-up per run, a fresh fork per phase.
        self.gate_worker: GateWorker | None = None
        #: matplotlib imported on a thread once the upgrade goes ahead (or the rollback verifies), for the report.
        self.charts_warm: threading.Thread | None = None
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

    def _gates(self, phase: str, app_url: str | None = None) -> PhaseResult:
        label = {"pre": "pre-gates", "post": "post-gates", "preview": "preview-gates", "rollback": "verify"}[phase]
        self.console.step(label, f"pytest {('post' if phase in ('rollback', 'preview') else phase)} gates"
                          + (" against the baseline" if phase == "rollback" else "")
                          + (f" against the candidate's preview {app_url}" if app_url else ""))
        if phase in ("post", "rollback"):  # `upgate rollback` has no pre-gates to start it after
            self._warm_charts()

        def go() -> dict[str, Any]:
            result = run_gates(phase, self.config, self.run, on_line=self.console.gate, worker=self.gate_worker,
                               app_url=app_url)
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
        for gate in result.gates:  # "X not configured" skips are listed in the summary's gated line instead
            if gate["outcome"] == "skipped" and "not configured" not in (gate.get("message") or ""):
                self.console.skipped(gate["nodeid"], gate.get("message") or "")
        self.console.step(label, f"passed: {result.describe()} ({result.seconds:.1f} s)")
        if phase == "pre":
            show_estimate(self.run, self.console)
            self._warm_charts()
        return result

    def _warm_charts(self) -> None:
        """Import matplotlib on a thread, once: the steps and gates mostly wait on other processes, and the
        charts written after the verdict then do not pay for the import."""
        if self.charts_warm is None:
            self.charts_warm = prewarm_charts()

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
        """Undo `steps` (the ones done, in run order) through the ladder and prove it.

        Signals cannot cut it short: they are noted (and said in the reason), never raised.
        """
        with self.guard.shield():
            seen = len(self.guard.received)
            verdict, reason = self._rollback(reason, steps)
            late = self.guard.received[seen:]
            if late:
                reason += f" ({', '.join(sorted(set(late)))} received during the rollback: noted, not obeyed)"
            return verdict, reason

    def _rollback(self, reason: str, steps: list[Step]) -> tuple[Verdict, str]:
        self._release_reserve()
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
        """Journal the run, run `body`, and always write the summary and print the verdict.

        SIGTERM, SIGINT and SIGHUP raise Interrupted inside `body` (which rolls back what it touched);
        the records and the verdict at the end are written whatever arrives, each one best-effort.
        """
        cfg = self.config
        with self.guard:
            verdict, reason = Verdict.NEEDS_ATTENTION, "run did not finish"
            try:
                self.gate_worker = GateWorker.start(gates_folder(cfg), [(m.path, m.task) for m in cfg.models if m.path])
                self.console.header(cfg, self.run)
                self.journal.write("run", "start", command=self.command, config=str(cfg.source),
                                   target=cfg.target.name, host=socket.gethostname(), pid=os.getpid(),
                                   user=getpass.getuser(), config_sha256=_sha256(cfg.source))
                verdict, reason = body()
            except Interrupted as exc:
                verdict, reason = self._stopped_by(f"{exc}")
            except Exception as exc:
                verdict, reason = self._stopped_by(f"{type(exc).__name__}: {redact(str(exc))}")
            finally:
                with self.guard.shield():
                    summary = self._finalize(verdict, reason)
        return RunOutcome(verdict, reason, self.run, summary)

    def _stopped_by(self, what: str) -> tuple[Verdict, str]:
        """The verdict when `body` itself ended in an exception (a rollback, if any, was not run by it)."""
        if self.command == "rollback":
            return Verdict.NEEDS_ATTENTION, (f"rollback stopped ({what}) before it finished: run `upgate rollback "
                                             f"--run {self.run.path}` again")
        if self.touching:
            return Verdict.NEEDS_ATTENTION, (f"{what} after the target was touched: run `upgate rollback --run "
                                             f"{self.run.path}`")
        return Verdict.BLOCKED, f"{what}; nothing was touched"

    def _finalize(self, verdict: Verdict, reason: str) -> RunSummary:
        """Stop the prober, write the record and the journal's end, print the verdict, report. Never raises."""
        if self.prober:
            try:
                self.prober.stop()
            except Exception as exc:
                self.write_problems.append(f"downtime prober: {exc}")
        if self.live is not None:
            try:
                self.live.close()
            except Exception as exc:
                self.write_problems.append(f"live-traffic capture: {exc}")
        if self.gate_worker is not None:
            self.gate_worker.close()
        self._release_reserve()
        try:
            summary = self._summary(verdict, reason)
        except Exception as exc:
            self.write_problems.append(f"summary ({type(exc).__name__}: {exc})")
            summary = RunSummary(run_id=self.run.run_id, target=self.config.target.name,
                                 from_version=self.config.target.from_version,
                                 to_version=self.config.target.to_version, verdict=verdict.value,
                                 exit_code=exit_code(verdict), reason=reason,
                                 started_at=self.started_at.isoformat(timespec="seconds"),
                                 seconds=round(time.monotonic() - self.started, 3), config=str(self.config.source),
                                 config_sha256=None, steps=self.records, rollback=self.rollback_record)
        self.journal.write("run", "end", command=self.command, verdict=verdict.value, exit_code=exit_code(verdict),
                           reason=reason)
        if not self.journal.healthy:
            self.write_problems.append(f"journal {self.run.journal}: {len(self.journal.unwritten)} record(s) not "
                                       f"written ({_strerror(self.journal.error)})")
        data = summary.to_json()
        try:
            self.console.verdict(verdict, reason, data)
            for problem in self.write_problems:
                self.console.step("warning", f"not written: {problem}")
        except Exception:
            pass
        for problem in self.write_problems:
            _stderr(f"upgate: warning: not written: {problem}")
        if self.options.record == "summary.json":
            try:
                if self.charts_warm is not None:
                    self.charts_warm.join(timeout=60)
                report_run(self.run, data, self.config, self.console)
            except Exception as exc:
                _stderr(f"upgate: warning: report not written: {exc}")
        return summary

    def _journal_error(self, exc: OSError) -> None:
        message = f"journal {self.run.journal} cannot be written ({_strerror(exc)}); going on, keeping the records"
        _stderr(f"upgate: warning: {message}")

    def _check_room(self) -> None:
        """Before the first change: the journal is on disk and the run folder has room for the rest."""
        if not self.journal.healthy:
            raise StepFailed(f"the journal {self.run.journal} cannot be written ({_strerror(self.journal.error)}): "
                             "a run whose journal is not on disk could not be finished by `upgate rollback`")
        need_mb = self.config.reporting.min_free_mb
        try:
            free = shutil.disk_usage(self.run.path).free
        except OSError as exc:
            raise StepFailed(f"cannot tell the free space of {self.run.path}: {_strerror(exc)}") from None
        if free < need_mb * 2**20:
            raise StepFailed(f"{free / 2**20:.0f} MiB free where the run folder {self.run.path} lives, under the "
                             f"{need_mb} MiB a run needs for its journal, gate logs and records while the target is "
                             "changed ([reporting] min_free_mb): free some space")
        # Ballast: room held back for the rollback, given back the moment it starts (should the disk fill
        # up meanwhile, the ladder's journal and its proof still find space).
        try:
            with self._reserve.open("wb") as ballast:
                for _ in range(RESERVE_MB):
                    ballast.write(b"\0" * 2**20)
                os.fsync(ballast.fileno())
        except OSError as exc:
            self._release_reserve()
            raise StepFailed(f"cannot set {RESERVE_MB} MiB aside in {self.run.path} for a rollback: "
                             f"{_strerror(exc)}") from None

    @property
    def _reserve(self) -> Path:
        return self.run.path / ".rollback-reserve"

    def _release_reserve(self) -> None:
        try:
            self._reserve.unlink(missing_ok=True)
        except OSError:
            pass

    def _locked(self) -> tuple[Verdict, str]:
        cfg = self.config
        if not cfg.database.url:
            return self._unfinished() or self._gated()
        try:
            with run_lock(cfg.database.url, cfg.target.name, cfg.database.connect_timeout_s):
                self.console.step("lock", f"advisory lock held for target '{cfg.target.name}'")
                return self._unfinished() or self._gated()
        except LockBusy as exc:
            return Verdict.BLOCKED, str(exc)
        except LockUnavailable as exc:
            return Verdict.BLOCKED, f"database unreachable, nothing touched: {exc}"

    def _unfinished(self) -> tuple[Verdict, str] | None:
        """BLOCKED while an earlier run of this target left it touched and unproven (checked under the lock)."""
        from upgate.core.recovery import unfinished_runs

        found = unfinished_runs(self.config, self.run.path.parent.parent, skip=self.run.path)
        if not found:
            return None
        first = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        return Verdict.BLOCKED, (f"an earlier run of target '{self.config.target.name}' is unfinished{more}: "
                                 f"{first.describe()}; finish it first with `{first.command(self.config)}`; "
                                 "nothing was touched")

    def _show_plan(self) -> None:
        for plan in [*([self.live.plan()] if self.live is not None else []), *(s.plan() for s in self.steps)]:
            self.plan.append(plan.to_json())
            for line in plan.lines():
                self.console.step("plan", line)
        self._write("plan.json", self.plan)

    def _gated(self) -> tuple[Verdict, str]:
        blocked_live = self.start_live()
        if blocked_live:
            return Verdict.BLOCKED, f"{blocked_live}; nothing was touched"
        try:
            blocked = self._before_touching()
        except Interrupted as exc:
            return Verdict.BLOCKED, f"{exc} before anything was touched; nothing was touched"
        if blocked is not None:
            return blocked
        try:
            self.start_prober()
        except Interrupted as exc:
            return Verdict.BLOCKED, f"{exc} before anything was touched; nothing was touched"
        except Exception as exc:
            return Verdict.BLOCKED, f"the downtime prober did not start ({exc}); nothing was touched"
        # From here on any failure, exception or signal rolls back what was touched.
        self.touching = True
        try:
            for step in self.steps:
                if step.mutates:
                    self.done.append(step)
                    self._timed(step.name, partial(step.do, self.ctx))
        except Interrupted as exc:
            return self.rollback(f"{exc} during {self._where()}", self.done)
        except Exception as exc:
            failed = self.records[-1].name if self.records else "the first step"
            try:
                self._diagnose(failed)
            except Interrupted:
                pass  # the rollback comes next either way
            return self.rollback(f"{failed} failed: {redact(str(exc))}", self.done)
        try:
            previewed = self._preview_and_promote()
            if isinstance(previewed, tuple):
                return previewed
            post = self._gates("post")
        except Interrupted as exc:
            return self.rollback(f"{exc} during {self._where()}", self.done)
        except Exception as exc:
            return self.rollback(f"post-gates could not run ({type(exc).__name__}: {redact(str(exc))})", self.done)
        if not post.passed:
            first = post.failures[0]["message"] if post.failures else post.describe()
            return self.rollback(f"post-gates failed ({post.describe()}): {first}", self.done)
        ran = ["pre-gates", *(s.label for s in self.done), *previewed, "post-gates"]
        return Verdict.UPGRADED, f"{', '.join(ran[:-1])} and {ran[-1]} passed" + self._retire()

    def _preview_and_promote(self) -> tuple[Verdict, str] | list[str]:
        """A deploy that started its candidate beside the live version (`preview_url()`): gate the candidate
        there before traffic moves, then promote it. Returns the verdict of a failure, else what ran."""
        ran: list[str] = []
        for step in [s for s in self.done if isinstance(s, DeployStep) and s.preview_url()]:
            url = step.preview_url()
            live = self.config.app.base_url if self.config.app else None
            self._write("targets.json", {"live": live, "candidate": url})  # both serve: perf compares them
            try:
                preview = self._gates("preview", app_url=url)
            finally:
                (self.run.path / "targets.json").unlink(missing_ok=True)
            if not preview.passed:
                first = preview.failures[0]["message"] if preview.failures else preview.describe()
                return self.rollback(f"preview-gates failed before traffic moved ({preview.describe()}): {first}",
                                     self.done)
            try:
                self._timed("promote", partial(step.promote, self.ctx))
            except Exception as exc:
                self._diagnose("promote")
                return self.rollback(f"promote failed: {redact(str(exc))}", self.done)
            ran += ["preview-gates", "promote"]
        return ran

    def _retire(self) -> str:
        """After the post gates passed: each deploy lets its previous version go; a failure is only reported."""
        notes = []
        for step in [s for s in self.done if isinstance(s, DeployStep) and type(s).retire is not DeployStep.retire]:
            try:
                self._timed("retire previous", partial(step.retire, self.ctx))
            except Exception as exc:
                self.console.step("retire", f"the previous version was not retired: {redact(str(exc))}")
                notes.append(f"; the previous version was not retired: {redact(str(exc))}")
        return "".join(notes)

    def _where(self) -> str:
        running = [r.name for r in self.records if r.status == "failed"]
        return running[-1] if running else (self.records[-1].name if self.records else "the run")

    def _before_touching(self) -> tuple[Verdict, str] | None:
        """Pre-gates, the plan, the backup and every step's preparation; BLOCKED (nothing touched) on failure.

        The backup only reads, so it starts with the pre-gates (on the other core) and is discarded
        when they fail.
        """
        try:
            self.steps = build_steps(self.config)
        except StepFailed as exc:
            return Verdict.BLOCKED, f"the plan cannot be built, nothing was touched: {redact(str(exc))}"
        early = [_Early(self, step) for step in self.steps if isinstance(step, BackupStep)]
        for job in early:
            self.done.append(job.step)
            job.start()
        try:
            return self._after_pre_gates(early)
        finally:
            for job in early:
                job.stop()

    def _after_pre_gates(self, early: list[_Early]) -> tuple[Verdict, str] | None:
        pre = self._gates("pre")
        if not pre.passed:
            for job in early:
                job.discard()
            first = pre.failures[0]["message"] if pre.failures else pre.describe()
            return Verdict.BLOCKED, f"pre-gates failed ({pre.describe()}): {first}; nothing was touched"
        self._show_plan()
        # Before anything changes: the steps that touch nothing live (the backup, already under way),
        # and every step's preparation (copies, checks). A failure here blocks with nothing touched.
        started = {job.step: job for job in early}
        current = "backup"
        try:
            for step in self.steps:
                if not step.mutates:
                    current = step.name
                    if step in started:
                        started[step].result()
                    else:
                        self.done.append(step)
                        self._timed(step.name, partial(step.do, self.ctx))
            for step in self.steps:
                if type(step).prepare is not Step.prepare:
                    current = getattr(step, "prepare_label", f"{step.name} backup")
                    self._timed(current, partial(step.prepare, self.ctx))
        except Exception as exc:
            return Verdict.BLOCKED, f"{current} failed, nothing was touched: {redact(str(exc))}"
        try:
            self._check_room()
        except StepFailed as exc:
            return Verdict.BLOCKED, f"{exc}; nothing was touched"
        return None

    def _summary(self, verdict: Verdict, reason: str) -> RunSummary:
        cfg = self.config
        downtime = self.prober.report() if self.prober else None
        if self.prober:
            name = "downtime.json" if self.options.record == "summary.json" else \
                self.options.record.replace(".json", "-downtime.json")
            self._write(name, {
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
            gates={p: PhaseRecord(r.passed, r.counts, r.failures, _user_gates(r)) for p, r in self.phases.items()},
            downtime=downtime.to_json() if downtime else None, downtime_budget_s=cfg.thresholds.max_downtime_s,
            downtime_within_budget=(downtime.downtime_s <= cfg.thresholds.max_downtime_s) if downtime else None,
            rollback=self.rollback_record, rollback_budget_s=cfg.thresholds.max_rollback_s,
            diagnostics=self.diagnostics,
            backup=backup.summary() if backup else None,
            restore=_restore_summary(backup),
            model_upgrade=model.summary() if model else None,
            gated=cfg.gated_components(), models=[m.name for m in cfg.models],
            not_gated={name: entry["configure"] for r in self.phases.values() for name, entry in r.not_gated.items()},
            deploy=next((s.summary() for s in done if isinstance(s, DeployStep)), None),
            packages=by_name["packages"].summary() if "packages" in by_name else None,
            config_files=by_name["config"].summary() if "config" in by_name else None,
            live=self.live.closed if self.live is not None else None,
        )
        self._write(self.options.record, json.loads(redact(json.dumps(summary.to_json(), default=str))))
        return summary

    def _write(self, name: str, data: Any) -> None:
        """A record in the run folder, best-effort: a full disk is noted and shown, never raised."""
        try:
            self.run.write_json(name, data)
        except OSError as exc:
            self.write_problems.append(f"{self.run.path / name} ({_strerror(exc)})")


class _Early:
    """A step that only reads (the backup), run in a thread while the pre-gates run."""

    def __init__(self, pipeline: Pipeline, step: BackupStep) -> None:
        self.pipeline = pipeline
        self.step = step
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"upgate-{step.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            self.pipeline._timed(self.step.name, partial(self.step.do, self.pipeline.ctx))
        except BaseException as exc:
            self.error = exc

    def result(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Cancel it if it still runs (the pre-gates failed, or a signal came) and wait for the thread."""
        if self.thread.is_alive():
            self.step.cancel()
            self.thread.join()

    def discard(self) -> None:
        """The pre-gates failed: no backup of a target that will not be touched is kept."""
        self.stop()
        if self.step.discard(self.pipeline.ctx):
            self.pipeline.journal.write(self.step.name, "discarded", reason="the pre-gates failed")


def _user_gates(result: PhaseResult) -> list[dict[str, Any]]:
    return [{k: g[k] for k in ("nodeid", "outcome", "message")} for g in result.gates if g.get("source") == "user"]


def _restore_summary(backup: Step | None) -> dict[str, Any] | None:
    outcome = getattr(backup, "outcome", None)
    return outcome.to_json() if outcome is not None else None


def _strerror(exc: BaseException | None) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _stderr(text: str) -> None:
    try:
        print(redact(text), file=sys.stderr, flush=True)
    except Exception:
        pass


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def run(config: Config, options: RunOptions | None = None) -> RunOutcome:
    return Pipeline(config, options or RunOptions()).execute()

"""The state machine of one gated upgrade (DESIGN.md, "The flow").

    >>> outcome = run(load_config("upgate.toml"), RunOptions())     # doctest: +SKIP
    >>> outcome.verdict, outcome.exit_code
    (<Verdict.UPGRADED: 'UPGRADED'>, 0)

lock -> pre-gates -> backup -> migrate -> deploy -> post-gates -> UPGRADED, and on a failure after
anything was touched: the rollback ladder, then its proof (the post gates against the baseline).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from upgate.checks.secrets import redact
from upgate.config import Config
from upgate.core.diagnose import diagnose, show_estimate
from upgate.core.gating import PhaseResult, gates_folder, run_gates
from upgate.core.journal import Journal
from upgate.core.lock import LockBusy, LockUnavailable, run_lock
from upgate.core.probe import DowntimeProber
from upgate.core.runs import DEFAULT_REPORTS, RunDir
from upgate.embedded.postgres import find_pg_tool
from upgate.errors import ConfigError, StepFailed, Verdict, exit_code
from upgate.reporting.audit import audit_log_for
from upgate.reporting.console import Console
from upgate.reporting.report import report_run
from upgate.steps.backup import Backup, restore_backup, take_backup
from upgate.steps.deploy import Deployer, deployer_for
from upgate.steps.migrate import Migrator, migrator_for


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
    summary: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return exit_code(self.verdict)


@dataclass
class _State:
    """What this run has touched so far: the rollback ladder reads it."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    phases: dict[str, PhaseResult] = field(default_factory=dict)
    backup: Backup | None = None
    migrator: Migrator | None = None
    deployer: Deployer | None = None
    model_upgrader: Any = None  # upgate.steps.model_upgrade.ModelUpgrader, imported only when configured
    deploy_started: bool = False
    rollback: dict[str, Any] = field(default_factory=dict)


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
        self.state = _State()
        self.prober: DowntimeProber | None = None
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)
        self.diagnostics: list[dict[str, Any]] = []

    # --- steps ----------------------------------------------------------------------------------

    def _step(self, name: str, fn: Any, **detail: Any) -> Any:
        if self.prober:
            self.prober.mark(name)
        t0 = time.monotonic()
        record: dict[str, Any] = {"name": name, "status": "running"}
        self.state.steps.append(record)
        try:
            with self.journal.step(name, **detail) as extra:
                value = fn()
                if isinstance(value, dict):
                    extra.update(value)
        except Exception as exc:
            record.update(status="failed", seconds=round(time.monotonic() - t0, 3), error=redact(str(exc)))
            raise
        record.update(status="ok", seconds=round(time.monotonic() - t0, 3))
        return value

    def _gates(self, phase: str) -> PhaseResult:
        label = {"pre": "pre-gates", "post": "post-gates", "rollback": "verify"}[phase]
        self.console.step(label, f"pytest {('post' if phase == 'rollback' else phase)} gates"
                          + (" against the baseline" if phase == "rollback" else ""))

        def show(node: str, outcome: str) -> None:
            self.console.gate(node, outcome)

        def go() -> dict[str, Any]:
            result = run_gates(phase, self.config, self.run, on_line=show)
            self.state.phases[phase] = result
            if not result.passed:
                raise StepFailed(f"{label} failed: {result.describe()}")
            return {"counts": result.counts}

        try:
            self._step(label, go)
        except StepFailed:
            result = self.state.phases[phase]
            for failure in result.failures:
                self.console.failure(failure["nodeid"], failure["message"])
            self.console.step(label, f"FAILED: {result.describe()} ({result.seconds:.1f} s)")
            self._diagnose(phase)
            return result
        result = self.state.phases[phase]
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

    def _backup(self) -> None:
        url = self.config.database.url
        assert url
        folder = self.config.backup.directory or (self.run.path / "backup")
        bin_dir = self.config.database.bin_dir
        self.console.step("backup", f"pg_dump -Fc -Z{self.config.backup.compression} of {redact(url)}")

        def go() -> dict[str, Any]:
            backup = take_backup(url, folder, find_pg_tool("pg_dump", bin_dir), find_pg_tool("pg_restore", bin_dir),
                                 compression=self.config.backup.compression, verify=self.config.backup.verify)
            self.state.backup = backup
            return {"backup": backup.to_json()}

        self._step("backup", go)
        b = self.state.backup
        assert b
        self.console.step("backup", f"{b.size_bytes / 2**20:.1f} MiB in {b.dump_s:.1f} s, verified ({b.verified} read) "
                                    f"in {b.verify_s:.1f} s, sha256 {b.sha256[:12]}")

    def _migrate(self) -> None:
        assert self.config.migrate and self.config.database.url
        migrator = migrator_for(self.config.migrate, self.config.database.url,
                                on_progress=lambda m: self.console.step("migrate", m))
        migrator.on_change = lambda name, what: self.journal.write("migrate", what, migration=name)
        self.state.migrator = migrator
        self._step("migrate", lambda: {"applied": migrator.up()})

    def _model_upgrader(self) -> Any:
        from upgate.steps.model_upgrade import ModelUpgrader

        cfg = self.config.model_upgrade
        assert cfg
        if self.state.model_upgrader is None:
            self.state.model_upgrader = ModelUpgrader(
                cfg, cfg.backup_dir or self.run.path / "backup" / "models", self.run.run_id,
                on_progress=lambda m: self.console.step("model", m))
        return self.state.model_upgrader

    def _deploy(self) -> None:
        assert self.config.deploy
        deployer = deployer_for(self.config.deploy, self.config.app, self.run.logs,
                                on_progress=lambda m: self.console.step("deploy", m))
        self.state.deployer = deployer
        self.state.deploy_started = True
        self._step("deploy", deployer.deploy)

    # --- rollback ladder ------------------------------------------------------------------------

    def rollback(self, reason: str) -> tuple[Verdict, str]:
        t0 = time.monotonic()
        ladder: list[dict[str, Any]] = []
        self.state.rollback = {"triggered": True, "reason": reason, "ladder": ladder}
        self.console.banner(f"rolling back: {reason}")

        def rung(name: str, fn: Any) -> bool:
            self.console.step("rollback", name)
            try:
                self._step(f"rollback:{name}", fn)
            except Exception as exc:
                ladder.append({"rung": name, "ok": False, "error": redact(str(exc))})
                self.console.step("rollback", f"{name} failed: {redact(str(exc))}")
                return False
            ladder.append({"rung": name, "ok": True})
            return True

        # Before the deploy undo: the previous process must start against the previous model.
        if self.state.model_upgrader and self.state.model_upgrader.switched:
            rung("swap model back", self.state.model_upgrader.undo)
        if self.state.deploy_started and self.state.deployer:
            rung("undo deploy", self.state.deployer.undo)
        down_ok = True
        if self.state.migrator and self.state.migrator.applied:
            down_ok = rung("down migration", self.state.migrator.down)

        verified = down_ok and self._verify_rollback(attempt=1)
        if not verified and self.state.backup and self.config.database.url:
            backup = self.state.backup
            url = self.config.database.url
            pg_restore = find_pg_tool("pg_restore", self.config.database.bin_dir)
            if rung("restore backup", lambda: {"restore_s": round(restore_backup(url, backup, pg_restore), 3)}):
                verified = self._verify_rollback(attempt=2)
        seconds = round(time.monotonic() - t0, 3)
        self.state.rollback.update(seconds=seconds, verified=verified)
        if verified:
            return Verdict.ROLLED_BACK, f"{reason}; rolled back and verified against the baseline in {seconds:.1f} s"
        return Verdict.NEEDS_ATTENTION, (f"{reason}; rollback could NOT be verified against the baseline "
                                         f"(see {self.run.path}): {self._ladder_state()}")

    def _verify_rollback(self, attempt: int) -> bool:
        if attempt > 1:
            for suffix, path in (("json", self.run.gate_results("rollback")), ("xml", self.run.junit("rollback"))):
                if path.exists():
                    path.rename(path.with_name(f"{path.stem}-1.{suffix}"))
        result = self._gates("rollback")
        self.state.rollback[f"verify_{attempt}"] = {"passed": result.passed, "counts": result.counts}
        return result.passed

    def _ladder_state(self) -> str:
        rungs = self.state.rollback.get("ladder", [])
        return "; ".join(f"{r['rung']}: {'ok' if r['ok'] else 'FAILED'}" for r in rungs) or "nothing to undo"

    # --- the run --------------------------------------------------------------------------------

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
            summary = self._summary(verdict, reason)
            self.journal.write("run", "end", verdict=verdict.value, exit_code=exit_code(verdict), reason=reason)
            self.console.verdict(verdict, reason, summary)
            report_run(self.run, summary, cfg, self.console)
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

    def _gated(self) -> tuple[Verdict, str]:
        cfg = self.config
        pre = self._gates("pre")
        if not pre.passed:
            first = pre.failures[0]["message"] if pre.failures else pre.describe()
            return Verdict.BLOCKED, f"pre-gates failed ({pre.describe()}): {first}; nothing was touched"
        try:
            if cfg.database.url:
                self._backup()
            if cfg.model_upgrade:
                self._step("model backup", self._model_upgrader().backup)
        except Exception as exc:
            return Verdict.BLOCKED, f"backup failed, nothing was touched: {redact(str(exc))}"

        self.prober = DowntimeProber(cfg.probe_urls(), interval_s=cfg.probe.interval_ms / 1000,
                                     timeout_s=cfg.probe.timeout_ms / 1000)
        self.prober.start()
        try:
            if cfg.migrate:
                self._migrate()
            if cfg.model_upgrade:
                self._step("model switch", self._model_upgrader().switch)
            if cfg.deploy:
                self._deploy()
        except Exception as exc:
            self._diagnose(self.state.steps[-1]["name"])
            return self.rollback(f"{self.state.steps[-1]['name']} failed: {redact(str(exc))}")
        post = self._gates("post")
        if not post.passed:
            first = post.failures[0]["message"] if post.failures else post.describe()
            return self.rollback(f"post-gates failed ({post.describe()}): {first}")
        return Verdict.UPGRADED, "pre-gates, backup, migration, deploy and post-gates all passed"

    def _summary(self, verdict: Verdict, reason: str) -> dict[str, Any]:
        cfg = self.config
        downtime = self.prober.report() if self.prober else None
        if self.prober:
            self.run.write_json("downtime.json", {
                "interval_s": self.prober.interval_s, "urls": self.prober.urls,
                "report": downtime.to_json() if downtime else None,
                "timeline": [p.__dict__ for p in self.prober.timeline],
            })
        summary: dict[str, Any] = {
            "run_id": self.run.run_id,
            "target": cfg.target.name,
            "from_version": cfg.target.from_version,
            "to_version": cfg.target.to_version,
            "verdict": verdict.value,
            "exit_code": exit_code(verdict),
            "reason": reason,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - self.started, 3),
            "steps": self.state.steps,
            "gates": {p: {"passed": r.passed, "counts": r.counts, "failures": r.failures}
                      for p, r in self.state.phases.items()},
            "downtime": downtime.to_json() if downtime else None,
            "downtime_budget_s": cfg.thresholds.max_downtime_s,
            "downtime_within_budget": (downtime.downtime_s <= cfg.thresholds.max_downtime_s) if downtime else None,
            "rollback": self.state.rollback or {"triggered": False},
            "rollback_budget_s": cfg.thresholds.max_rollback_s,
            "diagnostics": self.diagnostics,
            "backup": self.state.backup.to_json() if self.state.backup else None,
            "model_upgrade": self.state.model_upgrader.to_json() if self.state.model_upgrader else None,
            "gated": cfg.gated_components(),
            "models": [m.name for m in cfg.models],
            "config": str(cfg.source),
            "config_sha256": _sha256(cfg.source),
        }
        self.run.write_json("summary.json", json.loads(redact(json.dumps(summary, default=str))))
        return summary


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def run(config: Config, options: RunOptions | None = None) -> RunOutcome:
    return Pipeline(config, options or RunOptions()).execute()

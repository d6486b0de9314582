"""`upgate rollback`: undo a run from its journal, e.g. one that was killed half-way.

    >>> outcome = rollback_run(load_config("upgate.toml"), Path("reports/runs/<id>"))   # doctest: +SKIP
    >>> outcome.verdict
    <Verdict.ROLLED_BACK: 'ROLLED_BACK'>

The journal says what the run touched: the verified backup (its path and checksum), each migration
as it committed, a model switch, and whether the deploy started. From that the same rollback ladder runs as in
`upgate run`, and proves itself against the run's baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from upgate.config import Config
from upgate.core.journal import Journal
from upgate.core.lock import LockBusy, LockUnavailable, run_lock
from upgate.core.pipeline import Pipeline, RunOptions, RunOutcome
from upgate.core.probe import DowntimeProber
from upgate.errors import ConfigError, Verdict
from upgate.steps.backup import Backup
from upgate.steps.deploy import deployer_for
from upgate.steps.migrate import migrator_for


@dataclass(frozen=True)
class Touched:
    """What a run's journal says it changed."""

    backup: Backup | None
    applied: list[str]
    deploy_started: bool
    deploy_undone: bool
    verdict: str | None
    model_switch: dict[str, Any] | None = None


def read_touched(records: list[dict[str, Any]]) -> Touched:
    backup: Backup | None = None
    applied: list[str] = []
    deploy_started = deploy_undone = False
    verdict = None
    model_switch: dict[str, Any] | None = None
    for r in records:
        step, event = r.get("step"), r.get("event")
        if step == "backup" and event == "end" and r.get("status") == "ok" and r.get("backup"):
            data = dict(r["backup"])
            data["path"] = Path(data["path"])
            backup = Backup(**data)
        elif step == "migrate" and event == "applied":
            applied.append(r["migration"])
        elif step == "migrate" and event == "reverted" and r["migration"] in applied:
            applied.remove(r["migration"])
        elif step == "deploy" and event == "start":
            deploy_started, deploy_undone = True, False
        elif step == "rollback:undo deploy" and event == "end" and r.get("status") == "ok":
            deploy_undone = True
        elif step == "model switch" and event == "end" and r.get("status") == "ok":
            model_switch = r.get("model_switch")
        elif step == "rollback:swap model back" and event == "end" and r.get("status") == "ok":
            model_switch = None
        elif step == "run" and event == "end":
            verdict = r.get("verdict")
    return Touched(backup, applied, deploy_started, deploy_undone, verdict, model_switch)


def rollback_run(config: Config, run_folder: Path, options: RunOptions | None = None) -> RunOutcome:
    journal_path = run_folder / "journal.jsonl"
    if not journal_path.exists():
        raise ConfigError(f"{run_folder}: no journal.jsonl; not a run folder")
    touched = read_touched(Journal(journal_path).read())
    opts = options or RunOptions()
    pipeline = Pipeline(config, RunOptions(reports=opts.reports, console=opts.console, run_dir=run_folder))
    pipeline.state.backup = touched.backup
    if config.migrate and config.database.url and touched.applied:
        migrator = migrator_for(config.migrate, config.database.url,
                                on_progress=lambda m: pipeline.console.step("migrate", m))
        migrator.applied = list(touched.applied)
        migrator.on_change = lambda name, what: pipeline.journal.write("migrate", what, migration=name)
        pipeline.state.migrator = migrator
    if config.model_upgrade and touched.model_switch:
        pipeline._model_upgrader().resume(touched.model_switch)
    if config.deploy and touched.deploy_started and not touched.deploy_undone:
        pipeline.state.deployer = deployer_for(config.deploy, config.app, pipeline.run.logs,
                                               on_progress=lambda m: pipeline.console.step("deploy", m))
        pipeline.state.deploy_started = True
    return pipeline.finish(lambda: _undo(pipeline, touched, run_folder))


def _undo(pipeline: Pipeline, touched: Touched, run_folder: Path) -> tuple[Verdict, str]:
    if touched.verdict in (Verdict.ROLLED_BACK.value, Verdict.BLOCKED.value):
        return Verdict(touched.verdict), f"run {run_folder.name} already ended {touched.verdict}: nothing to undo"
    config = pipeline.config
    pipeline.prober = DowntimeProber(config.probe_urls(), interval_s=config.probe.interval_ms / 1000,
                                     timeout_s=config.probe.timeout_ms / 1000)
    pipeline.prober.start()
    reason = f"rollback of run {run_folder.name} requested (it ended {touched.verdict or 'without a verdict'})"
    if config.database.url:
        try:
            with run_lock(config.database.url, config.target.name, config.database.connect_timeout_s):
                return pipeline.rollback(reason)
        except (LockBusy, LockUnavailable) as exc:
            return Verdict.NEEDS_ATTENTION, f"cannot roll back now: {exc}"
    return pipeline.rollback(reason)

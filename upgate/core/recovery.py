"""`upgate rollback`: undo a run from its journal alone (one killed half-way, or one that upgraded).

    >>> outcome = rollback_run(load_config("upgate.toml"), resolve_run("latest"))   # doctest: +SKIP
    >>> outcome.verdict
    <Verdict.ROLLED_BACK: 'ROLLED_BACK'>

Each step kind rebuilds what it did from the journal (`Step.from_journal`); the same ladder as
`upgate run` undoes them and proves it against the run's baseline. A run that touched nothing (it
died in the pre-gates or during the backup) has nothing to undo: BLOCKED, exit 10.
"""

from __future__ import annotations

from typing import Any

from upgate.config import Config
from upgate.core.journal import Journal
from upgate.core.live import LiveCapture
from upgate.core.lock import LockBusy, LockUnavailable, run_lock
from upgate.core.pipeline import Pipeline, RunOptions, RunOutcome
from upgate.core.runs import RunDir
from upgate.errors import ConfigError, Verdict
from upgate.steps import steps_from_journal
from upgate.steps.base import RestorePoint


def last_verdict(records: list[dict[str, Any]]) -> str | None:
    """The verdict of the journal's last finished run (or rollback), None when it never finished."""
    ends = [r for r in records if r.get("step") == "run" and r.get("event") == "end"]
    return str(ends[-1].get("verdict")) if ends else None


def rollback_run(config: Config, run: RunDir, options: RunOptions | None = None) -> RunOutcome:
    if not run.journal.exists():
        raise ConfigError(f"{run.path}: no journal.jsonl; not a run folder")
    records = Journal(run.journal).read()
    opts = options or RunOptions()
    pipeline = Pipeline(config, RunOptions(reports=opts.reports, console=opts.console, run_dir=run.path))
    return pipeline.finish(lambda: _undo(pipeline, records))


def _undo(pipeline: Pipeline, records: list[dict[str, Any]]) -> tuple[Verdict, str]:
    config, name = pipeline.config, pipeline.run.run_id
    ended = last_verdict(records)
    if ended in (Verdict.ROLLED_BACK.value, Verdict.BLOCKED.value):
        return Verdict(ended), f"run {name} already ended {ended}: nothing to undo"
    done = steps_from_journal(config, records, pipeline.ctx)
    touched = [s for s in done if s.mutates or (isinstance(s, RestorePoint) and s.restore_pending())]
    if not touched:
        return Verdict.BLOCKED, (f"run {name} ({ended or 'killed before it ended'}) changed nothing: no step had "
                                 "touched the target; nothing to undo")
    pipeline.steps = done
    pipeline.live = LiveCapture.resume(config, pipeline.run)  # a killed run's capture: its slot still holds the writes
    pipeline.ctx.live = pipeline.live
    reason = f"rollback of run {name} requested (it ended {ended or 'without a verdict'})"
    for step in done:
        pipeline.console.step("journal", f"{step.name}: done in run {name}, to be undone")
    pipeline.start_prober()
    if not config.database.url:
        return pipeline.rollback(reason, done)
    try:
        with run_lock(config.database.url, config.target.name, config.database.connect_timeout_s):
            return pipeline.rollback(reason, done)
    except (LockBusy, LockUnavailable) as exc:
        return Verdict.NEEDS_ATTENTION, f"cannot roll back now: {exc}"

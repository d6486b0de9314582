"""`upgate rollback`: undo a run from its journal alone (one killed half-way, or one that upgraded).

    >>> outcome = rollback_run(load_config("upgate.toml"), resolve_run("latest"))   # doctest: +SKIP
    >>> outcome.verdict
    <Verdict.ROLLED_BACK: 'ROLLED_BACK'>

Each step kind rebuilds what it did from the journal (`Step.from_journal`); the same ladder as
`upgate run` undoes them and proves it against the run's baseline. A run that touched nothing (it
died in the pre-gates or during the backup) has nothing to undo: BLOCKED, exit 10.

The summary of a run that finished stays as it was: the rollback writes its own record beside it,
`rollback-<time>.json`. `unfinished_runs` is what `upgate run` checks under its lock: a run of the
same target that touched it and never ended (killed), or whose rollback was not proven, stops every
new run until `upgate rollback --run <it>` finishes it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from upgate.config import Config
from upgate.core.journal import Journal
from upgate.core.live import LiveCapture
from upgate.core.lock import LockBusy, LockUnavailable, run_lock
from upgate.core.pipeline import Pipeline, RunOptions, RunOutcome
from upgate.core.runs import RunDir
from upgate.errors import ConfigError, Verdict
from upgate.steps import Step, StepContext, steps_from_journal
from upgate.steps.base import RestorePoint


def last_verdict(records: list[dict[str, Any]]) -> str | None:
    """The verdict of the journal's last finished run (or rollback), None when it never finished."""
    ends = [r for r in records if r.get("step") == "run" and r.get("event") == "end"]
    return str(ends[-1].get("verdict")) if ends else None


def rollback_run(config: Config, run: RunDir, options: RunOptions | None = None) -> RunOutcome:
    if not run.journal.exists():
        raise ConfigError(f"{run.path}: no journal.jsonl; not a run folder")
    journal = Journal(run.journal)
    records = journal.read()
    opts = options or RunOptions()
    # A run that finished keeps its summary; the rollback's own record goes beside it.
    record = "summary.json"
    if run.summary.exists() and last_verdict(records) is not None:
        record = f"rollback-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json"
    pipeline = Pipeline(config, RunOptions(reports=opts.reports, console=opts.console, run_dir=run.path,
                                           record=record))
    pipeline.command = "rollback"
    for warning in journal.warnings:
        pipeline.console.step("journal", f"warning: {warning}")
    return pipeline.finish(lambda: _undo(pipeline, records))


def touched(steps: list[Step]) -> list[Step]:
    """The steps that touched the target (or a restore left unfinished)."""
    return [s for s in steps if s.mutates or (isinstance(s, RestorePoint) and s.restore_pending())]


@dataclass(frozen=True)
class Unfinished:
    """An earlier run of the same target that left it touched: killed, or ended without a proven rollback."""

    run: RunDir
    state: str  # "killed", "running" or the verdict it ended with (NEEDS_ATTENTION)
    detail: str

    def describe(self) -> str:
        return f"run {self.run.run_id} {self.detail}"

    def command(self, config: Config) -> str:
        return f"upgate rollback --config {config.source} --run {self.run.path}"


def unfinished_runs(config: Config, reports: Path, skip: Path | None = None) -> list[Unfinished]:
    """Runs of `config`'s target under `reports` that touched it and did not finish (newest first).

    Killed: the journal's last `run start` has no `run end` and a step after it touched the target.
    Unproven: the last `run end` is NEEDS_ATTENTION. A run killed before it touched anything is no
    obstacle. A journal whose writer is still alive on this host is a run in progress.
    """
    folder = Path(reports) / "runs"
    if not folder.is_dir():
        return []
    found: list[Unfinished] = []
    for path in sorted((p for p in folder.iterdir() if p.is_dir()), reverse=True):
        if skip is not None and path.resolve() == Path(skip).resolve():
            continue
        run = RunDir(path.resolve())
        try:
            records = Journal(run.journal).read()
        except ConfigError:
            continue  # damaged before its end: not ours to judge here (`upgate rollback` says why)
        starts = [i for i, r in enumerate(records) if r.get("step") == "run" and r.get("event") == "start"]
        if not starts or records[starts[0]].get("target") != config.target.name:
            continue
        last_start = records[starts[-1]]
        after = records[starts[-1] + 1:]
        ends = [r for r in after if r.get("step") == "run" and r.get("event") == "end"]
        if ends:
            if ends[-1].get("verdict") == Verdict.NEEDS_ATTENTION.value:
                found.append(Unfinished(run, "NEEDS_ATTENTION", f"ended NEEDS_ATTENTION: {ends[-1].get('reason', '')}"))
            continue
        if _alive(last_start):
            found.append(Unfinished(run, "running", f"is still running (pid {last_start.get('pid')} on this host)"))
            continue
        ctx = StepContext(config, run, Journal(run.journal))
        try:
            changed = touched(steps_from_journal(config, records, ctx))
        except Exception as exc:  # a journal this version cannot rebuild: say so rather than ignore it
            found.append(Unfinished(run, "killed", f"was killed and its journal cannot be read back ({exc})"))
            continue
        if changed:
            last = records[-1]
            what = "rollback" if last_start.get("command") == "rollback" else "run"
            found.append(Unfinished(run, "killed", f"was killed during its {what} (last journal record: "
                                                   f"{last.get('step')} {last.get('event')}, {last.get('ts')}) after "
                                                   f"touching the target ({', '.join(s.name for s in changed)})"))
    return found


def _alive(start: dict[str, Any]) -> bool:
    pid = start.get("pid")
    if not isinstance(pid, int) or start.get("host") != socket.gethostname() or pid == os.getpid():
        return False
    try:
        proc = psutil.Process(pid)
        started = datetime.fromisoformat(str(start.get("ts"))).timestamp()
        # The same pid reused by another program later would have started after the run did.
        return proc.create_time() <= started + 1.0
    except (psutil.Error, ValueError):
        return False


def _undo(pipeline: Pipeline, records: list[dict[str, Any]]) -> tuple[Verdict, str]:
    config, name = pipeline.config, pipeline.run.run_id
    ended = last_verdict(records)
    if ended in (Verdict.ROLLED_BACK.value, Verdict.BLOCKED.value):
        return Verdict(ended), f"run {name} already ended {ended}: nothing to undo"
    done = steps_from_journal(config, records, pipeline.ctx)
    if not touched(done) and ended == Verdict.NEEDS_ATTENTION.value:
        # Its ladder undid what it could but could not prove it: prove it now (restoring if that fails).
        pipeline.steps = done
        reason = f"run {name} ended NEEDS_ATTENTION with nothing left to undo: verifying against the baseline"
        return _locked_rollback(pipeline, reason, done)
    if not touched(done):
        return Verdict.BLOCKED, (f"run {name} ({ended or 'killed before it ended'}) changed nothing: no step had "
                                 "touched the target; nothing to undo")
    pipeline.steps = done
    pipeline.live = LiveCapture.resume(config, pipeline.run)  # a killed run's capture: its slot still holds the writes
    pipeline.ctx.live = pipeline.live
    reason = f"rollback of run {name} requested (it ended {ended or 'without a verdict'})"
    for step in done:
        pipeline.console.step("journal", f"{step.name}: done in run {name}, to be undone")
    pipeline.start_prober()
    return _locked_rollback(pipeline, reason, done)


def _locked_rollback(pipeline: Pipeline, reason: str, done: list[Step]) -> tuple[Verdict, str]:
    config = pipeline.config
    if not config.database.url:
        return pipeline.rollback(reason, done)
    try:
        with run_lock(config.database.url, config.target.name, config.database.connect_timeout_s):
            return pipeline.rollback(reason, done)
    except (LockBusy, LockUnavailable) as exc:
        return Verdict.NEEDS_ATTENTION, f"cannot roll back now: {exc}"

"""The rollback ladder: the same code for a failed `upgate run` and for `upgate rollback` from a journal.

    >>> outcome = climb(steps, ctx, rung=pipeline.rung, verify=pipeline.verify)    # doctest: +SKIP
    >>> outcome.verified, outcome.restored      # rungs run: stop new version, down migrations, start previous version
    (True, False)

The order works for any app, including one whose old version refuses a newer schema:

1. stop the new version (deploy-like steps, newest first);
2. undo the database: down migrations when every applied unit has one and the schema is the
   baseline's afterwards; otherwise (no down, down failed, schema differs) restore the verified backup;
3. undo everything else that changed (a model swap, later packages and config), newest first;
4. start the previous version;
5. verify (the post gates in the `rollback` phase, against the baseline).

When the verification fails on data integrity alone and no restore ran yet: repair only the damaged
rows (`repair`, upgate/core/repair.py), verify again. When it still fails: stop, restore, start the
previous version, verify again. A ladder that cannot prove itself is not verified (NEEDS_ATTENTION for
the caller).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psycopg

from upgate.checks.schema import SchemaSnapshot, diff_schemas, snapshot_schema
from upgate.errors import StepFailed
from upgate.steps.base import DatabaseStep, DeployStep, RestorePoint, Step, StepContext

#: rung(name, action) runs one rung (journaled, timed, shown) and returns whether it succeeded.
RungRunner = Callable[[str, Callable[[], Any]], bool]


@dataclass
class LadderOutcome:
    verified: bool
    restored: bool
    #: What still stands in the way when not verified, for the verdict line.
    problems: list[str] = field(default_factory=list)


def climb(steps: list[Step], ctx: StepContext, rung: RungRunner, verify: Callable[[], bool],
          repair: Callable[[], bool] | None = None) -> LadderOutcome:
    """Undo `steps` (the ones a run did, in run order) and prove it; see the module docstring.

    `repair()` runs the repair rung when it applies and says whether it repaired anything.
    """
    deploys = [s for s in steps if isinstance(s, DeployStep)]
    databases = [s for s in steps if isinstance(s, DatabaseStep)]
    restore_point = next((s for s in steps if isinstance(s, RestorePoint)), None)
    others = [s for s in steps if s.mutates and s not in deploys and s not in databases]
    outcome = LadderOutcome(verified=False, restored=False)

    def restore() -> bool:
        if restore_point is None:
            outcome.problems.append("no verified backup in this run to restore from")
            return False
        ok = rung("restore backup", lambda: {"restore": restore_point.restore(ctx)})
        if ok:
            outcome.restored = True
            for database in databases:
                database.restored()
        else:
            outcome.problems.append("the restore failed")
        return ok

    # 1. stop the new version
    for step in reversed(deploys):
        rung("stop new version", partial(step.stop_new, ctx))
    # A restore a killed run left half-done comes first: the database may be missing under its name.
    if restore_point is not None and restore_point.restore_pending():
        if rung("finish restore", lambda: {"restore": restore_point.restore(ctx)}):
            outcome.restored = True
            for database in databases:
                database.restored()
    # 2. undo the database
    touched = [d for d in databases if not outcome.restored]
    if touched:
        reasons = [r for r in (d.needs_restore for d in touched) if r]
        if reasons:
            ctx.say("rollback", f"the backup must be restored: {'; '.join(reasons)}")
            restore()
        elif not rung("down migrations", lambda: _down_and_check(touched, ctx)):
            restore()
    # 3. everything else, newest first
    for other in reversed(others):
        label = getattr(other, "undo_label", f"undo {other.label}")
        if not rung(label, partial(other.undo, ctx)):
            outcome.problems.append(f"{label} failed")
    # 4. start the previous version
    serving = all([rung("start previous version", partial(step.start_previous, ctx))
                   for step in deploys])
    # 5. verify
    outcome.verified = verify() and serving
    if not outcome.verified and serving and not outcome.restored and repair is not None and repair():
        outcome.verified = verify()
    if outcome.verified or outcome.restored or restore_point is None or not restore_point.available:
        if not serving:
            outcome.problems.append("the previous version did not start")
        return _finish(outcome)
    ctx.say("rollback", "verification failed: restoring the backup and verifying again")
    for step in reversed(deploys):
        rung("stop previous version", partial(step.stop_new, ctx))
    restored = restore()
    serving = all([rung("start previous version", partial(step.start_previous, ctx))
                   for step in deploys])
    outcome.verified = restored and verify() and serving
    if not serving:
        outcome.problems.append("the previous version did not start")
    return _finish(outcome)


def _finish(outcome: LadderOutcome) -> LadderOutcome:
    if outcome.verified:
        outcome.problems.clear()
    elif not outcome.problems:
        outcome.problems.append("the post gates did not pass against the baseline")
    return outcome


def _down_and_check(databases: list[DatabaseStep], ctx: StepContext) -> dict[str, Any]:
    """Down migrations, newest step first; then the live schema must be the baseline's (else: restore)."""
    for database in reversed(databases):
        database.undo(ctx)
    baseline = ctx.run.load_baseline("schema")
    url = ctx.config.database.url
    if not baseline or not url:
        return {"schema": "not compared (no baseline snapshot)"}
    expected = SchemaSnapshot.from_json(baseline)
    with psycopg.connect(url, autocommit=True) as conn:
        live = snapshot_schema(conn, expected.schemas)
    diff = diff_schemas(expected, live)
    if not diff.is_empty:
        raise StepFailed(f"after the down migrations the schema still differs from the baseline: {diff.describe()}")
    return {"schema": "equals the baseline"}

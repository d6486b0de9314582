"""The model switch as a step: the live model folder backed up (prepare), swapped atomically (do), swapped back (undo).

    [model_upgrade]
    model = "tiny-gpt"            # the [[models]] entry gated before and after
    live = "models/current"       # a symlink or a directory
    candidate = "models/releases/v2"

The work is `ModelUpgrader`'s (model_upgrade.py); this wraps it in the step protocol and its journal.
"""

from __future__ import annotations

from typing import Any, ClassVar

from upgate.config import Config
from upgate.steps.base import Record, Step, StepContext, StepPlan, records_for, since_last
from upgate.steps.model_upgrade import ModelUpgrader


class ModelStep(Step):
    name: ClassVar[str] = "model"
    label: ClassVar[str] = "model switch"
    undo_label: ClassVar[str] = "swap model back"

    def __init__(self, config: Config, upgrader: ModelUpgrader | None = None) -> None:
        assert config.model_upgrade is not None
        self.config = config
        self.cfg = config.model_upgrade
        self.upgrader = upgrader

    def _upgrader(self, ctx: StepContext) -> ModelUpgrader:
        if self.upgrader is None:
            self.upgrader = ModelUpgrader(self.cfg, self.cfg.backup_dir or ctx.run.path / "backup" / "models",
                                          ctx.run.run_id, on_progress=lambda m: ctx.say("model", m))
        return self.upgrader

    def plan(self) -> StepPlan:
        return StepPlan(self.name, (f"back up {self.cfg.live} (checksummed), then switch it to a verified copy of "
                                    f"{self.cfg.candidate} in one rename",),
                        (f"swap the backed-up model back into {self.cfg.live} (manifest checked)",))

    def prepare(self, ctx: StepContext) -> None:
        record = self._upgrader(ctx).backup()
        ctx.journal.write(self.name, "backed-up", **record)

    def do(self, ctx: StepContext) -> None:
        record = self._upgrader(ctx).switch()
        ctx.journal.write(self.name, "switched", **record)

    def undo(self, ctx: StepContext) -> None:
        record = self._upgrader(ctx).undo()
        ctx.journal.write(self.name, "swapped-back", **record)

    def summary(self) -> dict[str, Any] | None:
        return self.upgrader.to_json() if self.upgrader else None

    @classmethod
    def from_journal(cls, config: Config, records: list[Record], ctx: StepContext) -> ModelStep | None:
        if config.model_upgrade is None:
            return None
        mine = records_for(records, cls.name)
        switch: dict[str, Any] | None = None
        backed_up: dict[str, Any] | None = None
        for r in since_last(mine, cls.name, "swapped-back"):
            if r.get("event") == "backed-up":
                backed_up = r.get("model_backup")
            elif r.get("event") == "switched":
                switch = r.get("model_switch")
        started_switch = any(r.get("event") == "start" for r in since_last(mine, cls.name, "swapped-back"))
        if switch is None and started_switch and backed_up:
            # Killed during the switch: the folder the backup was taken from is the previous one; undo
            # checks it against the manifest and falls back to the backup copy when it changed.
            switch = {"previous": backed_up.get("source"), "mode": backed_up.get("mode")}
        if switch is None:
            return None
        step = cls(config)
        step._upgrader(ctx).resume(switch)
        return step

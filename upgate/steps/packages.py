"""A Python environment's packages upgraded as a step, and undone without the network.

    [packages]
    python = "/srv/app/venv/bin/python"
    requirements = ["requirements-v2.txt"]        # and/or install = ["optuna==5.0.0"]
    test = ["/srv/app/venv/bin/python", "-m", "pytest", "tests/"]

prepare (nothing changes yet): record the installed set (`pip list --format=freeze`) and save every
distribution in it as a wheel in the run folder (`pip wheel --no-deps` of those exact pins: from
pip's cache or the index, built locally for an sdist), then prove the saved set installs with
`--no-index` (a dry run). A distribution that cannot be saved blocks the run: its undo would need
the network. do: `pip install` the candidate. undo: `pip install --no-index --find-links <wheels>
--no-deps` of exactly the recorded pins, uninstall what the candidate added, and require the
installed set to equal the recorded one. The app's tests are gates (gates/*/test_packages.py).

Why wheels rather than swapping a symlinked venv: it works for any environment, including one that
is not a symlink or that other processes hold open by path, and the proof is the same `pip list`
before and after. Editable installs are the developer's checkout: recorded, never reinstalled.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from upgate.checks.packages import (
    InstalledSet,
    PipFailed,
    candidate_args,
    compare_installed,
    installed_set,
    pip,
)
from upgate.checks.secrets import redact
from upgate.config import Config, PackagesConfig
from upgate.errors import StepFailed
from upgate.steps.base import Record, Step, StepContext, StepPlan, records_for, since_last

#: pip's environment for the offline undo: no index, whatever the operator's pip.conf says.
OFFLINE = {"PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}


class PackagesStep(Step):
    name: ClassVar[str] = "packages"
    label: ClassVar[str] = "package upgrade"
    undo_label: ClassVar[str] = "reinstall previous packages"

    def __init__(self, config: Config, saved: dict[str, Any] | None = None) -> None:
        assert config.packages is not None
        self.config = config
        self.cfg: PackagesConfig = config.packages
        #: What prepare saved (journal "saved"): the installed set and the wheels folder.
        self.saved = saved
        self.record: dict[str, Any] = {"python": str(self.cfg.python)}

    @property
    def python(self) -> str:
        return str(self.cfg.python)

    def plan(self) -> StepPlan:
        candidate = " ".join(redact(a) for a in candidate_args(self.cfg.requirements, self.cfg.install))
        return StepPlan(self.name, (
            f"record `pip list` of {self.python} and save each installed distribution as a wheel in the run folder "
            "(before anything changes; an offline dry run proves the set reinstalls)",
            f"pip install {candidate}"),
            ("pip install --no-index from the saved wheels: exactly the recorded set, what the candidate added "
             "uninstalled; `pip list` must equal the recorded one",))

    def _pip(self, ctx: StepContext, args: list[str], env: dict[str, str] | None = None) -> str:
        try:
            return pip(self.python, args, self.cfg.pip_timeout_s, env=env, log=ctx.run.logs / "packages-pip.log")
        except PipFailed as exc:
            raise StepFailed(f"{exc} (log: {ctx.run.logs / 'packages-pip.log'})") from None

    def _installed(self) -> InstalledSet:
        try:
            return installed_set(self.python)
        except PipFailed as exc:
            raise StepFailed(str(exc)) from None

    def prepare(self, ctx: StepContext) -> None:
        before = self._installed()
        folder = ctx.run.path / "packages"
        wheels = folder / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        pins = folder / "installed.txt"
        pins.write_text("".join(f"{p}\n" for p in before.restorable()), encoding="utf-8")
        ctx.say("packages", f"{len(before.pins)} distributions in {self.python}: saving them as wheels")
        self._pip(ctx, ["wheel", "--no-deps", "--wheel-dir", str(wheels), "-r", str(pins)])
        try:
            pip(self.python, ["install", "--dry-run", "--ignore-installed", "--no-deps", "--find-links", str(wheels),
                              "-r", str(pins)], self.cfg.pip_timeout_s, env=OFFLINE)
        except PipFailed as exc:
            raise StepFailed(f"the saved wheels in {wheels} do not reinstall the recorded set offline: {exc}") from None
        self.saved = {"installed": before.to_json(), "wheels": str(wheels), "pins": str(pins),
                      "wheel_count": len(list(wheels.glob("*.whl")))}
        ctx.journal.write(self.name, "saved", **self.saved)
        ctx.say("packages", f"{self.saved['wheel_count']} wheels saved in {wheels}; an offline dry run reinstalls "
                            "the recorded set")

    def do(self, ctx: StepContext) -> None:
        args = candidate_args(self.cfg.requirements, self.cfg.install)
        ctx.journal.write(self.name, "installing", args=[redact(a) for a in args])
        ctx.say("packages", f"pip install {' '.join(redact(a) for a in args)}")
        self._pip(ctx, ["install", *args])
        after = self._installed()
        change = compare_installed(self._before(), after, "packages")
        ctx.journal.write(self.name, "installed", changes=change.evidence)
        self.record["changes"] = change.evidence
        ctx.say("packages", change.summary.replace("differ from the recorded set", "changed"))

    def _before(self) -> InstalledSet:
        if not self.saved:
            raise StepFailed("no recorded package set: the packages step's preparation did not run")
        return InstalledSet.from_json(self.saved["installed"])

    def undo(self, ctx: StepContext) -> None:
        before = self._before()
        wheels, pins = self.saved["wheels"] if self.saved else "", self.saved["pins"] if self.saved else ""
        ctx.journal.write(self.name, "reinstalling", wheels=wheels)
        self._pip(ctx, ["install", "--no-index", "--find-links", wheels, "--no-deps", "-r", pins], env=OFFLINE)
        now = self._installed()
        added = [name for key, name in now.names().items() if key not in before.versions()]
        if added:
            ctx.say("packages", f"uninstalling what the candidate added: {', '.join(added)}")
            self._pip(ctx, ["uninstall", "--yes", *added], env=OFFLINE)
        result = compare_installed(before, self._installed(), "packages")
        if not result.ok:
            raise StepFailed(f"after the offline reinstall, {result.summary}")
        ctx.journal.write(self.name, "reinstalled", count=len(before.pins))
        ctx.say("packages", result.summary)

    def summary(self) -> dict[str, Any] | None:
        return {**self.record, **({"wheels": self.saved["wheels"]} if self.saved else {})}

    @classmethod
    def from_journal(cls, config: Config, records: list[Record], ctx: StepContext) -> PackagesStep | None:
        if config.packages is None:
            return None
        mine = records_for(records, cls.name)
        saved = next((r for r in reversed(mine) if r.get("event") == "saved"), None)
        pending = since_last(mine, cls.name, "reinstalled")
        if saved is None or not any(r.get("event") == "installing" for r in pending):
            return None  # nothing installed (or already undone): nothing to undo
        return cls(config, {k: saved[k] for k in ("installed", "wheels", "pins", "wheel_count") if k in saved})

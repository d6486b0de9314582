"""The application's config files changed as a step: backed up, written atomically, undone to the exact bytes.

    [[config.files]]                    # `upgate config migrate` rules applied to a JSON/TOML/YAML file
    path = "service.json"
    rules = "migrate-rules.toml"
    [[config.env]]                      # an env file's KEY=value lines
    path = ".env"
    rename = { DB_URL = "DATABASE_URL" }
    set = { LOG_LEVEL = "info" }
    delete = ["LEGACY_CACHE"]

prepare (nothing changes yet): every change is computed in memory and must validate (the rules'
[validate] table); each file's bytes are copied into the run folder's `config/` with their sha256
in the journal, beside the new content. do: each file replaced in one rename, journaled before
("writing") and after ("written"); a file that changed since it was backed up is not overwritten.
undo: each written file put back from its backup, newest first, and its sha256 checked against the
journal's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

from upgate.config import Config, ConfigStepConfig
from upgate.errors import ConfigError, StepFailed
from upgate.steps.base import Record, Step, StepContext, StepPlan, records_for, since_last
from upgate.steps.config_migrate import PlannedChange, plan_env_change, plan_file_migration, write_atomically


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def planned_changes(cfg: ConfigStepConfig) -> list[PlannedChange]:
    """Every configured change, computed (nothing written); ConfigError naming a file that cannot be read."""
    planned = [plan_file_migration(f.path, f.rules, f.format) for f in cfg.files]
    planned += [plan_env_change(e.path, dict(e.set), dict(e.rename), list(e.delete)) for e in cfg.env]
    return planned


class ConfigStep(Step):
    name: ClassVar[str] = "config"
    label: ClassVar[str] = "config migration"
    undo_label: ClassVar[str] = "restore config files"

    def __init__(self, config: Config, files: list[dict[str, Any]] | None = None,
                 written: list[str] | None = None) -> None:
        assert config.config_files is not None
        self.config = config
        self.cfg = config.config_files
        #: One entry per file (journal "backed-up"): path, backup, new, sha256_before, sha256_after, changes.
        self.files: list[dict[str, Any]] = list(files or [])
        #: The paths whose write started (journal "writing"), in order.
        self.written: list[str] = list(written or [])

    def plan(self) -> StepPlan:
        does = [f"migrate {f.path} with the rules in {f.rules} (validated by their [validate] table)"
                for f in self.cfg.files]
        for e in self.cfg.env:
            parts = ([f"rename {', '.join(f'{a} -> {b}' for a, b in e.rename.items())}"] if e.rename else []) + \
                    ([f"delete {', '.join(e.delete)}"] if e.delete else []) + \
                    ([f"set {', '.join(e.set)}"] if e.set else [])
            does.append(f"{e.path}: {'; '.join(parts)}")
        return StepPlan(self.name, tuple(does),
                        ("put each written file back from its backup in the run folder, exact bytes (sha256 "
                         "from the journal)",))

    def prepare(self, ctx: StepContext) -> None:
        try:
            planned = planned_changes(self.cfg)
        except ConfigError as exc:
            raise StepFailed(str(exc)) from None
        invalid = [p.validation.summary for p in planned if not p.validation.ok]
        if invalid:
            raise StepFailed(f"the migrated config would not validate: {'; '.join(invalid)}")
        folder = ctx.run.path / "config"
        folder.mkdir(parents=True, exist_ok=True)
        self.files = []
        for number, change in enumerate(planned, start=1):
            backup = folder / f"{number}-{change.file.name}"
            backup.write_bytes(change.before)
            new = folder / f"{number}-{change.file.name}.new"
            new.write_bytes(change.after)
            self.files.append({"path": str(change.file), "backup": str(backup), "new": str(new),
                               "sha256_before": sha256(change.before), "sha256_after": sha256(change.after),
                               "changes": change.changes})
        ctx.journal.write(self.name, "backed-up", files=self.files)
        for entry in self.files:
            ctx.say("config", f"{entry['path']}: {len(entry['changes'])} change(s), backed up as {entry['backup']}")

    def do(self, ctx: StepContext) -> None:
        for entry in self.files:
            path = Path(entry["path"])
            if sha256(path.read_bytes()) != entry["sha256_before"]:
                raise StepFailed(f"{path} changed since it was backed up: not overwriting it")
            if entry["sha256_before"] == entry["sha256_after"]:
                ctx.say("config", f"{path}: already as the migration leaves it, nothing to write")
                continue
            ctx.journal.write(self.name, "writing", path=str(path))
            self.written.append(str(path))
            write_atomically(path, Path(entry["new"]).read_bytes())
            ctx.journal.write(self.name, "written", path=str(path), sha256=entry["sha256_after"])
            ctx.say("config", f"{path}: {', '.join(entry['changes'])}")

    def undo(self, ctx: StepContext) -> None:
        by_path = {e["path"]: e for e in self.files}
        for written in reversed(self.written):
            entry = by_path[written]
            path, backup = Path(written), Path(entry["backup"])
            data = backup.read_bytes()
            if sha256(data) != entry["sha256_before"]:
                raise StepFailed(f"the backup {backup} of {path} does not match its recorded sha256: not restoring it")
            if not path.exists() or sha256(path.read_bytes()) != entry["sha256_before"]:
                write_atomically(path, data)
            if sha256(path.read_bytes()) != entry["sha256_before"]:
                raise StepFailed(f"{path}: restored, but its sha256 differs from the one recorded before")
            ctx.journal.write(self.name, "restored", path=written, sha256=entry["sha256_before"])
            ctx.say("config", f"{path}: restored from {backup} (sha256 {entry['sha256_before'][:12]})")
        ctx.journal.write(self.name, "undone", files=len(self.written))
        self.written = []

    def summary(self) -> dict[str, Any] | None:
        return {"files": [{k: e[k] for k in ("path", "changes", "sha256_before", "sha256_after")}
                          for e in self.files]} if self.files else None

    @classmethod
    def from_journal(cls, config: Config, records: list[Record], ctx: StepContext) -> ConfigStep | None:
        if config.config_files is None:
            return None
        mine = records_for(records, cls.name)
        backed = next((r for r in reversed(mine) if r.get("event") == "backed-up"), None)
        written = [str(r["path"]) for r in since_last(mine, cls.name, "undone") if r.get("event") == "writing"]
        if backed is None or not written:
            return None  # no file was being written: nothing to undo
        return cls(config, list(backed.get("files", [])), written)

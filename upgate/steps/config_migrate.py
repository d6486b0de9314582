"""`upgate config migrate FILE --rules RULES`: the guide's configuration migration, made safe.

    >>> outcome = migrate_config_file(Path("service.json"), Path("rules.toml"))     # doctest: +SKIP
    >>> outcome.ok, outcome.backup
    (True, PosixPath('service.json.20260301-101500.bak'))

Order: read and apply the rules in memory -> write a timestamped backup of the file as it is -> write
the migrated file (atomically) -> read it back and validate it against the rules' [validate] table ->
when validation fails, put the backup back. The backup is kept either way.

`plan_file_migration` and `plan_env_change` compute a change without writing anything (the `[config]`
step, upgate/steps/config.py, backs up, writes and undoes with them); `write_atomically` is the one
way a config file is written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from upgate.checks.appconfig import (
    apply_rules,
    dump_config,
    edit_env,
    file_format,
    load_config_file,
    read_rules,
    validate_config,
)
from upgate.checks.result import CheckResult
from upgate.errors import ConfigError


@dataclass
class MigrateOutcome:
    file: Path
    changes: list[str]
    validation: CheckResult
    backup: Path | None = None
    restored: bool = False
    written: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.validation.ok


def backup_path(file: Path, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    candidate = file.with_name(f"{file.name}.{stamp}.bak")
    n = 1
    while candidate.exists():
        candidate = file.with_name(f"{file.name}.{stamp}-{n}.bak")
        n += 1
    return candidate


def write_atomically(file: Path, data: str | bytes) -> None:
    """Replace `file` with `data` in one rename (readers see the old file or the new one), keeping its mode."""
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        if file.exists():
            shutil.copymode(file, tmp)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class PlannedChange:
    """A config file's change, computed and checked but not written: its bytes before and after."""

    file: Path
    before: bytes
    after: bytes
    changes: list[str]
    validation: CheckResult

    @property
    def changed(self) -> bool:
        return self.before != self.after


def plan_file_migration(file: Path, rules_file: Path, fmt: str = "auto") -> PlannedChange:
    """The file migrated by its rules, validated by their [validate] table; ConfigError when unreadable."""
    file = Path(file)
    fmt = file_format(file, fmt)
    try:
        before = file.read_bytes()
        rules, spec = read_rules(rules_file)
        data = load_config_file(file, fmt)
        after, changes = apply_rules(data, rules)
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    check = validate_config(after, spec, file.name)
    text = dump_config(after, fmt).encode("utf-8") if after != data else before
    return PlannedChange(file, before, text, changes, check)


def plan_env_change(file: Path, set_values: dict[str, str], rename: dict[str, str],
                    delete: list[str]) -> PlannedChange:
    """The env file with keys renamed, deleted and set (every other line kept); ConfigError when it cannot be."""
    file = Path(file)
    try:
        before = file.read_bytes()
        text, changes = edit_env(before.decode("utf-8"), set_values, rename, delete, str(file))
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(str(exc)) from None
    return PlannedChange(file, before, text.encode("utf-8"), changes,
                         CheckResult(True, f"{file.name}: {len(changes)} change(s)"))


def migrate_config_file(file: Path, rules_file: Path, dry_run: bool = False, fmt: str = "auto") -> MigrateOutcome:
    """Apply the rules to `file`; ConfigError (nothing written) when the file or the rules cannot be read."""
    file = Path(file)
    fmt = file_format(file, fmt)
    try:
        rules, spec = read_rules(rules_file)
        before = load_config_file(file, fmt)
        after, changes = apply_rules(before, rules)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if dry_run or not changes:
        check = validate_config(after, spec, file.name)
        return MigrateOutcome(file, changes, check, warnings=list(check.warnings))
    backup = backup_path(file)
    shutil.copy2(file, backup)
    write_atomically(file, dump_config(after, fmt))
    try:
        check = validate_config(load_config_file(file, fmt), spec, file.name)
    except ValueError as exc:
        check = CheckResult(False, f"{file.name}: the migrated file does not read back: {exc}")
    outcome = MigrateOutcome(file, changes, check, backup=backup, written=True, warnings=list(check.warnings))
    if not check.ok:
        shutil.copy2(backup, file)
        outcome.restored = True
    return outcome

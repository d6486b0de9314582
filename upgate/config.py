"""The one place that reads `upgate.toml` and environment variables into a typed model.

    >>> cfg = load_config("upgate.toml")          # doctest: +SKIP
    >>> cfg.database.url                          # DATABASE_URL wins over the file

Unknown keys and wrong types raise `ConfigError` naming the file, the line and the key.
Relative paths in the file are resolved against the file's folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from upgate.errors import ConfigError

DEFAULT_NAME = "upgate.toml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetConfig(Section):
    name: str
    from_version: str | None = None
    to_version: str | None = None


class DatabaseConfig(Section):
    url: str | None = None
    # Folder holding pg_dump / pg_restore / psql matching the server's major version.
    # Empty: the pgserver wheel's binaries when installed, else PATH.
    bin_dir: Path | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)


class AppConfig(Section):
    base_url: str
    health_path: str = "/health"
    ready_path: str = "/ready"
    metrics_path: str = "/metrics"
    timeout_s: float = Field(default=2.0, gt=0)

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


class MigrateConfig(Section):
    kind: Literal["sql"] = "sql"
    # Folder of `NNN_name.up.sql` files, each with an optional `NNN_name.down.sql`.
    directory: Path
    lock_timeout_ms: int = Field(default=1000, gt=0, le=1000)
    retries: int = Field(default=5, ge=0)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    # Destructive schema changes the plan accepts, by name: "table" or "table.column".
    allow_destructive: list[str] = []


class DeployConfig(Section):
    kind: Literal["process", "command"] = "process"
    # process: the pidfile of the running service, the command that starts the new version
    # and the command that starts the previous one again (used by rollback).
    pidfile: Path | None = None
    start: list[str] = []
    previous: list[str] = []
    workdir: Path | None = None
    env: dict[str, str] = {}
    ready_timeout_s: float = Field(default=30.0, gt=0)
    stop_timeout_s: float = Field(default=10.0, gt=0)
    # command: shell commands run as they are.
    deploy_command: str | None = None
    rollback_command: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> DeployConfig:
        if self.kind == "process":
            missing = [k for k in ("pidfile", "start", "previous") if not getattr(self, k)]
            if missing:
                raise ValueError(f"deploy.kind = 'process' needs {', '.join('deploy.' + m for m in missing)}")
        if self.kind == "command" and not (self.deploy_command and self.rollback_command):
            raise ValueError("deploy.kind = 'command' needs deploy.deploy_command and deploy.rollback_command")
        return self


class BackupConfig(Section):
    # Empty: `backup/` inside the run folder.
    directory: Path | None = None
    compression: int = Field(default=1, ge=0, le=9)
    verify: Literal["full", "list", "none"] = "full"


class ThresholdsConfig(Section):
    max_downtime_s: float = Field(default=300.0, gt=0)
    max_rollback_s: float = Field(default=300.0, gt=0)


class IntegrityConfig(Section):
    # "all" or a list of table names (schema-qualified or in the search path).
    tables: Literal["all"] | list[str] = "all"
    # Key columns per table; a table not listed uses its primary key.
    keys: dict[str, list[str]] = {}
    # Columns the migration is expected to change, per table: left out of the fingerprint.
    may_change: dict[str, list[str]] = {}
    allow_added_rows: bool = True
    report_first: int = Field(default=20, gt=0)
    workers: int = Field(default=2, ge=1, le=16)


class ProbeConfig(Section):
    interval_ms: int = Field(default=100, ge=10)
    timeout_ms: int = Field(default=1000, ge=10)
    # Empty: the app's ready URL.
    urls: list[str] = []


class GatesConfig(Section):
    # Folder holding pre/ and post/; empty: the gates shipped with upgate.
    directory: Path | None = None
    extra_pytest_args: list[str] = []


class Config(Section):
    target: TargetConfig
    database: DatabaseConfig = DatabaseConfig()
    app: AppConfig | None = None
    migrate: MigrateConfig | None = None
    deploy: DeployConfig | None = None
    backup: BackupConfig = BackupConfig()
    thresholds: ThresholdsConfig = ThresholdsConfig()
    integrity: IntegrityConfig = IntegrityConfig()
    probe: ProbeConfig = ProbeConfig()
    gates: GatesConfig = GatesConfig()

    # Where it came from; not a key of the file.
    source: Path = Field(default=Path(DEFAULT_NAME), exclude=True)

    @field_validator("source", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Path:
        return Path(v)

    def probe_urls(self) -> list[str]:
        if self.probe.urls:
            return list(self.probe.urls)
        if self.app:
            return [self.app.url(self.app.ready_path)]
        return []

    def gated_components(self) -> dict[str, bool]:
        return {"database": self.database.url is not None, "app": self.app is not None}


# Environment variables that override keys of the file: operators already use these names.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "DATABASE_URL": ("database", "url"),
    "UPGATE_APP_URL": ("app", "base_url"),
}

_PATH_KEYS: dict[str, tuple[str, ...]] = {
    "database": ("bin_dir",),
    "migrate": ("directory",),
    "deploy": ("pidfile", "workdir"),
    "backup": ("directory",),
    "gates": ("directory",),
}


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--config, then UPGATE_CONFIG, then ./upgate.toml."""
    if explicit:
        return Path(explicit)
    if os.environ.get("UPGATE_CONFIG"):
        return Path(os.environ["UPGATE_CONFIG"])
    return Path.cwd() / DEFAULT_NAME


def load_config(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read, override from the environment, resolve paths and validate; raise ConfigError naming the key."""
    file = find_config_path(path)
    env = os.environ if environ is None else environ
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found (give --config FILE or set UPGATE_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None

    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            sect = data.setdefault(section, {})
            if isinstance(sect, dict):
                sect[key] = env[var]

    base = file.resolve().parent
    for section, keys in _PATH_KEYS.items():
        sect = data.get(section)
        if isinstance(sect, dict):
            for key in keys:
                value = sect.get(key)
                if isinstance(value, str) and value:
                    sect[key] = str(base / Path(value).expanduser())

    try:
        return Config.model_validate({**data, "source": file.resolve()})
    except ValidationError as exc:
        raise ConfigError(_describe(file, text, exc)) from None


def _describe(file: Path, text: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = locate_key(text, loc)
        where = f"{file}:{line}" if line else str(file)
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = f"unknown key '{key}'"
        elif kind == "missing":
            msg = f"missing required key '{key}'"
        else:
            got = err.get("input")
            shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
            msg = f"key '{key}': {err['msg']}{shown}"
        lines.append(f"{where}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def locate_key(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line number (1-based) of a key path like ('migrate', 'directory') in TOML text."""
    names = [p for p in loc if isinstance(p, str)]
    if not names:
        return None
    lines = text.splitlines()
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    current: str | None = None
    section_line: int | None = None
    for number, raw in enumerate(lines, start=1):
        m = header.match(raw)
        if m:
            current = m.group(1)
            if current == names[0]:
                section_line = number
                if len(names) == 1:
                    return number
            continue
        if len(names) >= 2 and current == names[0]:
            if re.match(rf"^\s*{re.escape(names[1])}\s*=", raw):
                return number
        if current is None and re.match(rf"^\s*{re.escape(names[0])}\s*=", raw):
            return number
    return section_line

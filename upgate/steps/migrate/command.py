"""Migrations by the application's own tool (`manage.py migrate`, `flask db upgrade`, `optuna storage upgrade`).

    [migrate]
    kind = "command"
    up = ["python", "manage.py", "migrate", "--noinput"]
    down = ["python", "manage.py", "migrate", "shop", "0007"]     # optional: else the rollback restores
    env = { DATABASE_URL = "{database_url}" }
    workdir = "/srv/app"

`{database_url}` is replaced in argv and env by the database the command runs against: the rehearsal
clone in the pre-gates, the live database here. Every session the tool opens gets
`lock_timeout` (PGOPTIONS) and `application_name=upgate-migrate` (PGAPPNAME) unless the tool sets its
own; when its output says a lock timed out (`lock timeout`, SQLSTATE 55P03) the command is run again,
a bounded number of times, with backoff.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from upgate.checks.secrets import redact
from upgate.config import MigrateConfig
from upgate.errors import StepFailed
from upgate.steps.migrate.base import Migrator, Unit

_LOCK_TIMEOUT = re.compile(r"lock[ _]timeout|55P03|could not obtain lock|LockNotAvailable", re.I)
_OUTPUT_TAIL = 1500


def substitute(value: str, url: str) -> str:
    return value.replace("{database_url}", url)


class CommandMigrator(Migrator):
    kind: ClassVar[str] = "command"
    atomic: ClassVar[bool] = False  # a tool may commit several transactions before it fails

    def __init__(self, config: MigrateConfig, app_name: str = "upgate-migrate", log_dir: Path | None = None) -> None:
        self.config = config
        self.app_name = app_name
        self.log_dir = log_dir

    def units(self) -> list[Unit]:
        return [Unit("up", self._show(self.up_argv()), self._show(self.config.down) if self.config.down else None)]

    def up_argv(self) -> list[str]:
        return list(self.config.up)

    def down_argv(self, recorded: dict[str, Any]) -> list[str]:
        return list(self.config.down)

    @staticmethod
    def _show(argv: list[str]) -> str:
        return redact(" ".join(argv))

    def environment(self, url: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({k: substitute(v, url) for k, v in self.config.env.items()})
        options = env.get("PGOPTIONS", "")
        if "lock_timeout" not in options:
            env["PGOPTIONS"] = f"{options} -c lock_timeout={self.config.lock_timeout_ms}ms".strip()
        env.setdefault("PGAPPNAME", self.app_name)
        return env

    def run(self, argv: list[str], url: str, label: str, say: Callable[[str], None]) -> dict[str, Any]:
        """Run `argv` against `url`, again after a lock timeout (bounded); detail for the journal."""
        command = [substitute(a, url) for a in argv]
        shown = self._show(argv)
        attempt = 0
        while True:
            attempt += 1
            t0 = time.monotonic()
            try:
                proc = subprocess.run(command, cwd=self.config.workdir, env=self.environment(url), capture_output=True,
                                      text=True, timeout=self.config.timeout_s, stdin=subprocess.DEVNULL)
            except FileNotFoundError:
                raise StepFailed(f"migrate: {command[0]} not found (migrate.up / migrate.down / migrate.alembic)") \
                    from None
            except subprocess.TimeoutExpired:
                raise StepFailed(f"migrate: {shown} did not finish in {self.config.timeout_s:g} s "
                                 "(migrate.timeout_s)") from None
            output = redact((proc.stdout or "") + (proc.stderr or ""))
            self._log(label, shown, attempt, proc.returncode, output, url)
            if proc.returncode == 0:
                return {"attempts": attempt, "command_s": round(time.monotonic() - t0, 3)}
            if _LOCK_TIMEOUT.search(output) and attempt <= self.config.retries:
                sleep_s = self.config.retry_backoff_s * 2 ** (attempt - 1)
                say(f"{shown}: a lock was not available (attempt {attempt}), again in {sleep_s:g} s")
                time.sleep(sleep_s)
                continue
            hint = " (every attempt hit lock_timeout: retry when traffic is lower)" if _LOCK_TIMEOUT.search(output) \
                else ""
            raise StepFailed(f"{shown} exited {proc.returncode}{hint}: {output.strip()[-_OUTPUT_TAIL:]}")

    def _log(self, label: str, shown: str, attempt: int, code: int, output: str, url: str) -> None:
        if self.log_dir is None:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"migrate-{label}.log").open("a", encoding="utf-8") as log:
            log.write(f"$ {shown}   # attempt {attempt}, database {redact(url)}, exit {code}\n{output}\n")

    def apply(self, unit: Unit, url: str, say: Callable[[str], None]) -> dict[str, Any]:
        return self.run(self.up_argv(), url, "up", say)

    def revert(self, unit: Unit, url: str, recorded: dict[str, Any], say: Callable[[str], None]) -> None:
        argv = self.down_argv(recorded)
        if not argv:
            raise StepFailed("migrate: no down command; only the restore of the backup undoes it")
        self.run(argv, url, "down", say)

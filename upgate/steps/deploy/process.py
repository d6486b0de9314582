"""Deploy a local process: stop the old one (its pidfile), start the new command, wait for /ready.

    [deploy]
    kind = "process"
    pidfile = "run/service.pid"
    start = ["python", "-m", "upgate.fixtures.service", "--build", "v2", ...]
    previous = ["python", "-m", "upgate.fixtures.service", "--build", "v1", ...]

The started process outlives upgate (its own session); its output goes to the run's logs folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from upgate.config import AppConfig, DeployConfig
from upgate.errors import StepFailed
from upgate.steps.deploy.base import Deployer


def pid_alive(pid: int) -> bool:
    """True while pid runs; reaps it if it is our exited child, and treats other zombies as gone."""
    # Our child: alive until reaped (a threaded process shows "Z" before waitpid can reap it).
    # Not our child (or already reaped): ask the kernel instead, below.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done != pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return "Z" not in line.split()[1]
    except OSError:
        pass
    return True


def stop_pid(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM pid, wait up to timeout, then SIGKILL. True if it ended on SIGTERM (or was already gone)."""
    if not pid_alive(pid):
        return True
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.02)
    return False



class ProcessDeployer(Deployer):
    def __init__(self, config: DeployConfig, app: AppConfig | None, logs: Path,
                 on_progress: Callable[[str], None] | None = None) -> None:
        super().__init__(app, on_progress)
        assert config.pidfile is not None
        self.config = config
        self.pidfile: Path = config.pidfile
        self.logs = logs

    def _read_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _stop_current(self) -> None:
        pid = self._read_pid()
        if pid is None:
            self.on_progress(f"no running process in {self.pidfile}")
            return
        self.on_progress(f"stopping pid {pid}")
        stop_pid(pid, self.config.stop_timeout_s)
        self.pidfile.unlink(missing_ok=True)

    def _start(self, command: list[str], label: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"service-{label}.log").open("ab")
        env = {**os.environ, **self.config.env}
        self.on_progress(f"starting {label}: {' '.join(command)}")
        try:
            proc = subprocess.Popen(command, cwd=self.config.workdir, env=env, stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise StepFailed(f"cannot start {label} ({command[0]}): {exc.strerror}") from None
        finally:
            log.close()
        ok, detail = self.wait_ready(self.config.ready_timeout_s, alive=lambda: proc.poll() is None)
        if not ok:
            raise StepFailed(f"{label} did not become ready: {detail} (log: {self.logs / f'service-{label}.log'})")
        if self._read_pid() is None:
            self.pidfile.write_text(f"{proc.pid}\n")
        self.on_progress(detail)

    def deploy(self) -> None:
        self._stop_current()
        self._start(self.config.start, "new")

    def undo(self) -> None:
        self._stop_current()
        self._start(self.config.previous, "previous")

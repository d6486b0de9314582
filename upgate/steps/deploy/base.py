"""What every deploy kind shares: stopping a whole process tree, a free port, and readiness from the new process.

    >>> tree = stop_tree(4242, timeout_s=10)          # the leader and every worker it forked  # doctest: +SKIP
    >>> wait_port_free(8080, timeout_s=10)            # nothing listens any more               # doctest: +SKIP
    >>> waiter = ReadyWait(app, deploy, port=8080)    # doctest: +SKIP
    >>> waiter.wait(owners=lambda: tree_pids(new_pid), alive=lambda: proc.poll() is None)   # doctest: +SKIP

Readiness counts only when it comes from the new version: the ready URL answers 2xx *and* every
socket listening on the app's port belongs to the new process tree (psutil). When the kernel does not
tell who owns the listener (another user's process), `[deploy] version_url`/`expect_version` is the
proof instead. A new process that exits fails the wait at once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import psutil

from upgate.checks.health import probe_http
from upgate.checks.processes import Listener, listeners
from upgate.config import AppConfig, DeployConfig
from upgate.errors import StepFailed
from upgate.steps.base import DeployStep


def app_port(app: AppConfig | None, deploy: DeployConfig) -> int | None:
    """`[deploy] port`, else the port of `[app] base_url`."""
    if deploy.port:
        return deploy.port
    if app is None:
        return None
    parts = urlsplit(app.base_url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def alive(pid: int, started: float | None = None) -> bool:
    """True while `pid` runs (a zombie is gone) and, given `started`, is still that same process."""
    try:
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) > 0.01:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_tree(pid: int, timeout_s: float = 10.0, say: Callable[[str], None] | None = None) -> dict[str, object]:
    """SIGTERM the process, every descendant and (when it leads a group that is not ours) its group;
    SIGKILL whatever is left after `timeout_s`. Returns which pids were stopped and how."""
    try:
        leader = psutil.Process(pid)
        tree = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return {"pids": [], "killed": [], "note": f"pid {pid} was not running"}
    group = _own_group(pid)
    if say:
        say(f"stopping pid {pid} and {len(tree) - 1} descendant(s)" + (f", process group {group}" if group else ""))
    _signal(tree, group, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # A master may have forked a replacement worker before it saw the signal: catch those too.
        tree = _with_new_children(tree)
        if not any(_running(p) for p in tree):
            return {"pids": sorted(p.pid for p in tree), "killed": []}
        time.sleep(0.02)
    left = [p for p in _with_new_children(tree) if _running(p)]
    _signal(left, group, signal.SIGKILL)
    end = time.monotonic() + 5.0
    while time.monotonic() < end and any(_running(p) for p in left):
        time.sleep(0.02)
    return {"pids": sorted(p.pid for p in tree), "killed": sorted(p.pid for p in left)}


def _own_group(pid: int) -> int | None:
    """The process group to signal: `pid`'s own group when it leads one that is not upgate's."""
    try:
        group = os.getpgid(pid)
    except OSError:
        return None
    return group if group == pid and group != os.getpgrp() else None


def _signal(procs: Iterable[psutil.Process], group: int | None, sig: signal.Signals) -> None:
    """`sig` to the group, and to each process outside it: once each (a second SIGTERM can upset a
    graceful shutdown the first one started)."""
    if group is not None:
        try:
            os.killpg(group, sig)
        except OSError:
            pass
    for proc in procs:
        try:
            if group is not None and os.getpgid(proc.pid) == group:
                continue
            proc.send_signal(sig)
        except (psutil.Error, OSError):
            pass


def _running(proc: psutil.Process) -> bool:
    try:
        if not proc.is_running():
            return False
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(proc.pid)
            return False
        return True
    except psutil.Error:
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _with_new_children(tree: list[psutil.Process]) -> list[psutil.Process]:
    known = {p.pid for p in tree}
    out = list(tree)
    for proc in tree:
        try:
            for child in proc.children(recursive=True):
                if child.pid not in known:
                    known.add(child.pid)
                    out.append(child)
        except psutil.Error:
            continue
    return out


def wait_port_free(port: int, timeout_s: float) -> list[Listener]:
    """Wait until nothing listens on `port`; the listeners still there at the timeout (empty: free)."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = listeners(port)
        if not held or time.monotonic() >= deadline:
            return held
        time.sleep(0.05)


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


class ReadyWait:
    """Wait until the app is ready *and* it is the new version answering (see the module docstring)."""

    def __init__(self, app: AppConfig | None, deploy: DeployConfig, expect_version: str | None = None) -> None:
        self.app = app
        self.deploy = deploy
        self.port = app_port(app, deploy)
        self.expect_version = expect_version

    def wait(self, owners: Callable[[], set[int]], alive: Callable[[], str | None],
             not_from: Callable[[Listener], bool] = lambda _l: False) -> str:
        """Poll until ready; return how readiness was proven. Raise StepFailed at once when `alive()`
        returns why the new process is gone, or at the timeout with the last thing seen.

        `owners()` is the set of pids of the new version; `not_from(listener)` marks a listener that
        was there before the deploy (command kind)."""
        timeout_s = self.deploy.ready_timeout_s
        if self.app is None:
            return "no [app] configured: readiness not checked"
        url = self.app.url(self.app.ready_path)
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            gone = alive()
            if gone:
                raise StepFailed(f"{gone} before {url} was ready (last: {last})")
            answer = probe_http(url, timeout_s=min(2.0, self.app.timeout_s))
            if answer.ok:
                proven, why = self._from_new(owners(), not_from)
                if proven:
                    return f"{url} answered {answer.evidence.get('status')} from the new process ({why})"
                last = why
            else:
                last = answer.summary
            if time.monotonic() >= deadline:
                raise StepFailed(f"{url} not ready from the new version after {timeout_s:g} s (last: {last})")
            time.sleep(0.05)

    def _from_new(self, pids: set[int], not_from: Callable[[Listener], bool]) -> tuple[bool, str]:
        version_ok, version_why = self._version()
        if not version_ok:
            return False, version_why
        if self.port is None or not self.deploy.check_listener:
            return True, version_why or "listener not checked ([deploy] check_listener = false)"
        held = listeners(self.port)
        unknown = [h for h in held if h.pid is None]
        strangers = [h for h in held if h.pid is not None and (h.pid not in pids or not_from(h))]
        if strangers:
            return False, f"port {self.port} is also served by a process that is not the new version: " + \
                ", ".join(h.describe() for h in strangers)
        if unknown:
            return True, version_why or (
                "listener owner not readable and no [deploy] version_url/expect_version to prove the version")
        if not held:
            return True, version_why or f"nothing listens on port {self.port} (behind a proxy?)"
        mine = sorted({h.pid for h in held if h.pid is not None})
        return True, f"port {self.port} held by pid {', '.join(map(str, mine))}" + (
            f"; {version_why}" if version_why else "")

    def _version(self) -> tuple[bool, str]:
        """The optional version check: (passed, what it proved or why not); ("", True) when not configured."""
        if not (self.deploy.version_url and self.expect_version):
            return True, ""
        answer = probe_http(self.deploy.version_url, timeout_s=2.0)
        if not answer.ok:
            return False, answer.summary
        body = answer.evidence.get("body")
        text = body if isinstance(body, str) else json.dumps(body)
        if self.expect_version not in text:
            return False, f"{self.deploy.version_url} does not name version {self.expect_version!r} (still the old one?)"
        return True, f"{self.deploy.version_url} names {self.expect_version!r}"


class Deployer(DeployStep):
    """Shared by the deploy kinds: the config, the app, where logs go."""

    name: ClassVar[str] = "deploy"
    label: ClassVar[str] = "deploy"

    def __init__(self, deploy: DeployConfig, app: AppConfig | None) -> None:
        self.deploy = deploy
        self.app = app
        self.port = app_port(app, deploy)
        self.record: dict[str, object] = {"kind": deploy.kind}

    def summary(self) -> dict[str, object] | None:
        return dict(self.record)

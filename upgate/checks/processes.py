"""Who serves a port: the sockets listening on it, their owners, and whether they all belong to one process tree.

    >>> check_port_owners(8080, Path("run/service.pid")).summary          # doctest: +SKIP
    'port 8080: pid 4242 (gunicorn: arbiter) and its 2 workers hold every listener'

A deploy stops the process tree its pidfile names. A listener outside that tree (a worker that left
it, a daemon the app forked, a stale pidfile pointing at some other process) would keep serving the
old version after the stop, so it is found before anything is touched. Listeners come from the
kernel's socket table, one entry per process holding the socket (a socket inherited across fork is
held by every process that inherited it).
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from upgate.checks.result import CheckResult


@dataclass(frozen=True)
class Listener:
    """A socket listening on the app's port; pid None when the kernel does not say whose it is."""

    pid: int | None
    started: float | None  # the process's create_time (tells a reused pid from the same process)
    address: str

    def describe(self) -> str:
        if self.pid is None:
            return f"{self.address} (owner not readable)"
        return f"{self.address} (pid {self.pid}: {cmdline(self.pid)})"


def listeners(port: int) -> list[Listener]:
    """Every TCP socket in LISTEN state on `port`, once per process holding it; pid None when no readable
    process holds it (another user's).

    A socket inherited across fork is held by several processes (an arbiter and its workers, or a daemon
    that escaped with it); psutil's system-wide table names only one of them, so on Linux each holder is
    found from /proc/<pid>/fd.
    """
    if not sys.platform.startswith("linux"):
        return [Listener(c.pid, create_time(c.pid), f"{c.laddr.ip}:{c.laddr.port}")
                for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]
    sockets = _listening_sockets(port)
    if not sockets:
        return []
    holders = _socket_holders(set(sockets))
    found = []
    for inode, address in sockets.items():
        pids: list[int | None] = [*sorted(holders.get(inode, ()))] or [None]
        found += [Listener(pid, create_time(pid), address) for pid in pids]
    return found


def _listening_sockets(port: int) -> dict[str, str]:
    """inode -> "ip:port" of the sockets listening on `port`, from /proc/net/tcp and tcp6."""
    found: dict[str, str] = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: TCP_LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port:
                found[fields[9]] = f"{_ip(hex_ip, family)}:{port}"
    return found


def _ip(hex_ip: str, family: int) -> str:
    raw = bytes.fromhex(hex_ip)
    # /proc/net/tcp* prints the address as 32-bit words in host byte order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)) if sys.byteorder == "little" else raw
    return socket.inet_ntop(family, words)


def _socket_holders(inodes: set[str]) -> dict[str, set[int]]:
    """inode -> the pids with an open descriptor on it (processes whose fds cannot be read are left out)."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    holders: dict[str, set[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(f"/proc/{entry.name}/fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target in wanted:
                    holders.setdefault(wanted[target], set()).add(int(entry.name))
    return holders


def create_time(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def cmdline(pid: int) -> str:
    """The process's command line (160 characters at most), 'gone' when it exited."""
    try:
        return " ".join(psutil.Process(pid).cmdline())[:160] or "?"
    except psutil.Error:
        return "gone"


def tree_pids(pid: int | None) -> set[int]:
    """`pid` and every descendant of it (empty when it is gone)."""
    if pid is None:
        return set()
    try:
        proc = psutil.Process(pid)
        return {pid} | {c.pid for c in proc.children(recursive=True)}
    except psutil.Error:
        return set()


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def check_port_owners(port: int, pidfile: Path) -> CheckResult:
    """Every listener on `port` belongs to the process tree of the pid in `pidfile`.

    Fails naming each listener outside the tree (pid and command line), or whose owner the kernel does
    not show; passes when nothing listens (nothing to stop) or the tree holds every listener.
    """
    leader = read_pid(pidfile)
    tree = tree_pids(leader)
    held = listeners(port)
    evidence = {"port": port, "pidfile": str(pidfile), "leader": leader, "tree": sorted(tree),
                "listeners": [{"pid": h.pid, "address": h.address,
                               "cmdline": cmdline(h.pid) if h.pid is not None else None} for h in held]}
    if not held:
        return CheckResult(True, f"port {port}: nothing listens, nothing to stop", evidence)
    strangers = [h for h in held if h.pid is not None and h.pid not in tree]
    unreadable = [h for h in held if h.pid is None]
    if strangers:
        whose = (f"the process tree of pid {leader} ({pidfile})" if tree else
                 f"{pidfile}, which names no running process" + (f" (pid {leader})" if leader else ""))
        named = ", ".join(f"pid {pid} ({cmdline(pid)})" for pid in sorted({h.pid for h in strangers if h.pid}))
        return CheckResult(False, f"port {port} is served by {named} outside {whose}: stopping the old version "
                                  "would leave it serving; stop it by hand (or correct the pidfile) and run again",
                           evidence)
    if unreadable:
        return CheckResult(False, f"port {port}: {len(unreadable)} listener(s) whose owner the kernel does not show "
                                  "(another user's process?): upgate cannot tell whether stopping the tree in "
                                  f"{pidfile} frees the port; run upgate as the app's user, or set [deploy] "
                                  "check_listener = false where a proxy holds the port", evidence)
    pids = sorted({h.pid for h in held if h.pid is not None})
    return CheckResult(True, f"port {port}: every listener belongs to the process tree of pid {leader} "
                             f"({len(tree)} process(es); listening: pid {', '.join(map(str, pids))})", evidence)


"""Hosts as the upgrade finds them, through pytest-testinfra: processes, ports, services, mounts, files, packages.

    >>> host = connect_host("local://")
    >>> check_ports(host, [8080], label="app-1").summary                   # doctest: +SKIP
    'app-1: 1 port listening (8080)'

A host is a testinfra spec (`local://`, `ssh://user@host`, `docker://container`,
`kubectl://pod?namespace=ns`); every check runs commands through its backend, so the same check
reads the local machine, a VM over SSH or a pod.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from upgate.checks.result import CheckResult
from upgate.checks.secrets import redact


@dataclass(frozen=True)
class FileExpectation:
    path: str
    mode: str | None = None  # octal, e.g. "0644"
    owner: str | None = None


@dataclass(frozen=True)
class MountExpectation:
    path: str
    min_free_gb: float = 0.0


@dataclass(frozen=True)
class PackageExpectation:
    name: str
    version: str | None = None  # exact, or a glob such as "16.*"


def connect_host(spec: str, sudo: bool = False) -> Any:
    """A testinfra host for the spec; connecting is lazy, `check_reachable` proves it answers."""
    import testinfra

    return testinfra.get_host(spec, sudo=sudo)


def check_reachable(host: Any, label: str) -> CheckResult:
    """Run `uname -sr; hostname` on the host: the backend connects and commands run."""
    try:
        out = host.run("uname -sr; hostname")
    except Exception as exc:  # each backend raises its own transport errors
        error = redact(_first_line(exc))
        return CheckResult(False, f"{label}: host does not answer ({error})", {"host": label, "error": error})
    if out.rc != 0:
        error = redact((out.stderr or out.stdout).strip()[:200])
        return CheckResult(False, f"{label}: commands fail on the host (exit {out.rc}: {error})",
                           {"host": label, "rc": out.rc, "error": error})
    lines = out.stdout.strip().splitlines()
    return CheckResult(True, f"{label}: answers ({' / '.join(lines)})",
                       {"host": label, "uname": lines[0] if lines else "", "hostname": lines[-1] if lines else ""})


def check_processes(host: Any, patterns: Sequence[str], label: str) -> CheckResult:
    """Each pattern must be a substring of some running process's command line (`ps` args)."""
    try:
        processes = host.process.filter()
    except Exception as exc:
        return _unreadable(label, "processes", exc)
    found: dict[str, list[int]] = {}
    for pattern in patterns:
        found[pattern] = [int(p.pid) for p in processes if pattern in str(p.args)]
    missing = [p for p, pids in found.items() if not pids]
    evidence = {"host": label, "running": {p: pids[:10] for p, pids in found.items()}, "missing": missing}
    if missing:
        return CheckResult(False, f"{label}: {len(missing)} expected process(es) not running: "
                                  + ", ".join(repr(m) for m in missing), evidence)
    shown = ", ".join(f"{p!r} (pid {found[p][0]})" for p in patterns)
    return CheckResult(True, f"{label}: {len(patterns)} process(es) running: {shown}", evidence)


def check_ports(host: Any, ports: Sequence[int | str], label: str) -> CheckResult:
    """Each port must be listening on some address (8080), or a socket spec exactly ("tcp://0.0.0.0:8080")."""
    state: dict[str, bool] = {}
    try:
        listening = list(host.socket.get_listening_sockets())
        for port in ports:
            if isinstance(port, int) or str(port).isdigit():
                state[str(port)] = any(s.startswith("tcp") and s.rsplit(":", 1)[-1] == str(port) for s in listening)
            else:
                state[str(port)] = bool(host.socket(str(port)).is_listening)
    except Exception as exc:
        return _unreadable(label, "listening sockets", exc)
    closed = [s for s, up in state.items() if not up]
    evidence = {"host": label, "listening": state, "sockets": listening[:100]}
    if closed:
        return CheckResult(False, f"{label}: not listening: {', '.join(closed)}", evidence)
    return CheckResult(True, f"{label}: {len(state)} port(s) listening ({', '.join(state)})", evidence)


def check_services(host: Any, services: Sequence[str], label: str) -> CheckResult:
    """Each system service must be running (systemd, sysv, openrc: whatever testinfra finds)."""
    state: dict[str, bool] = {}
    try:
        for name in services:
            state[name] = bool(host.service(name).is_running)
    except Exception as exc:
        return _unreadable(label, "services", exc)
    stopped = [s for s, up in state.items() if not up]
    evidence = {"host": label, "running": state}
    if stopped:
        return CheckResult(False, f"{label}: service(s) not running: {', '.join(stopped)}", evidence)
    return CheckResult(True, f"{label}: {len(state)} service(s) running ({', '.join(state)})", evidence)


def check_mounts(host: Any, mounts: Sequence[MountExpectation], label: str) -> CheckResult:
    """Each path must exist on a mounted filesystem with at least `min_free_gb` free (`df -Pk`)."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for mount in mounts:
        try:
            out = host.run("df -Pk %s", mount.path)
        except Exception as exc:
            return _unreadable(label, f"free space of {mount.path}", exc)
        lines = out.stdout.strip().splitlines()
        if out.rc != 0 or len(lines) < 2:
            problems.append(f"{mount.path}: no filesystem ({(out.stderr or '').strip()[:100] or 'df failed'})")
            rows.append({"path": mount.path, "error": out.stderr.strip()[:200]})
            continue
        fields = lines[-1].split()
        free_gb = int(fields[3]) / 2**20
        row = {"path": mount.path, "filesystem": fields[0], "mounted_on": fields[-1], "free_gb": round(free_gb, 2),
               "used_percent": fields[4], "min_free_gb": mount.min_free_gb}
        rows.append(row)
        if free_gb < mount.min_free_gb:
            problems.append(f"{mount.path} ({fields[-1]}): {free_gb:.1f} GiB free, {mount.min_free_gb:g} needed")
    evidence = {"host": label, "mounts": rows}
    if problems:
        return CheckResult(False, f"{label}: " + "; ".join(problems), evidence)
    shown = ", ".join(f"{r['path']} {r['free_gb']:.1f} GiB free" for r in rows)
    return CheckResult(True, f"{label}: {shown}", evidence)


def check_files(host: Any, files: Sequence[FileExpectation], label: str) -> CheckResult:
    """Each file must exist, with the given mode and owner when those are set."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for expected in files:
        try:
            f = host.file(expected.path)
            exists = bool(f.exists)
            row: dict[str, Any] = {"path": expected.path, "exists": exists}
            if exists:
                row.update(mode=f"{f.mode:04o}", owner=f.user)
        except Exception as exc:
            return _unreadable(label, expected.path, exc)
        rows.append(row)
        if not exists:
            problems.append(f"{expected.path} missing")
            continue
        if expected.mode is not None and int(expected.mode, 8) != int(row["mode"], 8):
            problems.append(f"{expected.path} has mode {row['mode']}, expected {expected.mode}")
        if expected.owner is not None and expected.owner != row["owner"]:
            problems.append(f"{expected.path} is owned by {row['owner']}, expected {expected.owner}")
    evidence = {"host": label, "files": rows}
    if problems:
        return CheckResult(False, f"{label}: " + "; ".join(problems), evidence)
    return CheckResult(True, f"{label}: {len(rows)} file(s) present as expected", evidence)


def check_packages(host: Any, packages: Sequence[PackageExpectation], label: str) -> CheckResult:
    """Each system package (dpkg, rpm, apk ... as testinfra detects) installed, at a matching version."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for expected in packages:
        try:
            pkg = host.package(expected.name)
            installed = bool(pkg.is_installed)
            version = str(pkg.version) if installed else None
        except Exception as exc:
            return _unreadable(label, f"package {expected.name}", exc)
        rows.append({"name": expected.name, "installed": installed, "version": version, "expected": expected.version})
        if not installed:
            problems.append(f"package {expected.name} not installed")
        elif expected.version and not (version == expected.version or fnmatch.fnmatch(version or "", expected.version)):
            problems.append(f"package {expected.name} is {version}, expected {expected.version}")
    evidence = {"host": label, "packages": rows}
    if problems:
        return CheckResult(False, f"{label}: " + "; ".join(problems), evidence)
    shown = ", ".join(f"{r['name']} {r['version']}" for r in rows)
    return CheckResult(True, f"{label}: {shown}", evidence)


def check_free_memory(host: Any, min_free_mb: float, label: str) -> CheckResult:
    """MemAvailable from /proc/meminfo (Linux hosts) against a floor."""
    try:
        out = host.run("cat /proc/meminfo")
    except Exception as exc:
        return _unreadable(label, "/proc/meminfo", exc)
    info = {}
    for line in out.stdout.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            info[key] = int(parts[0])
    if out.rc != 0 or "MemAvailable" not in info:
        return CheckResult(False, f"{label}: cannot read MemAvailable from /proc/meminfo", {"host": label})
    available_mb = info["MemAvailable"] / 1024
    total_mb = info.get("MemTotal", 0) / 1024
    evidence = {"host": label, "available_mb": round(available_mb), "total_mb": round(total_mb),
                "min_free_mb": min_free_mb}
    ok = available_mb >= min_free_mb
    verdict = "" if ok else f", below the {min_free_mb:g} MiB needed"
    return CheckResult(ok, f"{label}: {available_mb:.0f} MiB of {total_mb:.0f} MiB memory available{verdict}", evidence)


def _unreadable(label: str, what: str, exc: BaseException) -> CheckResult:
    error = redact(_first_line(exc))
    return CheckResult(False, f"{label}: cannot read {what} ({error})", {"host": label, "error": error})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

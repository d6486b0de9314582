"""Compatibility: installed packages against declared constraints and the upgrade's candidate requirements,
`pip check`, and the PostgreSQL server version against the supported range.

    >>> env = inspect_environment("/usr/bin/python3")                                   # doctest: +SKIP
    >>> check_candidate(read_requirements(Path("requirements-v2.txt")), declared, env).summary  # doctest: +SKIP
    'candidate requirements conflict: pydantic: requirements-v2.txt:2 wants >=3 but installed pydantic-settings 2.1 requires <3'
    >>> specifiers_overlap(SpecifierSet(">=3.1,<4"), SpecifierSet("==3.2.*"))
    True

Every requirement carries where it came from (`file:line`, or `upgate.toml compat.constraints`), so a
conflict names both sides. Markers are evaluated in the target interpreter's environment.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from upgate.checks.result import CheckResult

_REPORT_FIRST = 10
_INSPECT = r"""
import json, sys
from importlib import metadata
try:
    from packaging.markers import default_environment
    env = default_environment()
except Exception:
    import platform, os
    env = {"python_version": ".".join(platform.python_version_tuple()[:2]),
           "python_full_version": platform.python_version(), "sys_platform": sys.platform,
           "platform_system": platform.system(), "platform_machine": platform.machine(),
           "os_name": os.name, "implementation_name": sys.implementation.name,
           "platform_python_implementation": platform.python_implementation()}
dists = {}
for d in metadata.distributions():
    name = d.metadata["Name"]
    if name and name.lower() not in dists:
        dists[name.lower()] = {"name": name, "version": d.version, "requires": list(d.requires or [])}
print(json.dumps({"environment": env, "distributions": list(dists.values()), "executable": sys.executable}))
"""


@dataclass(frozen=True)
class Declared:
    """One requirement and where it was declared."""

    requirement: Requirement
    source: str

    @property
    def key(self) -> str:
        return canonicalize_name(self.requirement.name)

    def describe(self) -> str:
        return f"{self.requirement} ({self.source})"


@dataclass(frozen=True)
class Distribution:
    name: str
    version: str
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class Environment:
    """What is installed for one interpreter, and its marker environment."""

    python: str
    distributions: dict[str, Distribution] = field(default_factory=dict)
    markers: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> Distribution | None:
        return self.distributions.get(canonicalize_name(name))


def inspect_environment(python: str, timeout_s: float = 60.0) -> Environment:
    """Ask `python` what it has installed (importlib.metadata), and its marker environment."""
    try:
        done = subprocess.run([python, "-c", _INSPECT], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"cannot run the interpreter {python}: {exc}") from exc
    if done.returncode != 0:
        raise RuntimeError(f"{python} could not list its packages: {done.stderr.strip()[-400:]}")
    data = json.loads(done.stdout)
    dists: dict[str, Distribution] = {canonicalize_name(d["name"]): Distribution(d["name"], d["version"], tuple(d["requires"]))
             for d in data["distributions"]}
    return Environment(python, dists, {k: str(v) for k, v in data["environment"].items()})


_FINGERPRINT = """
import hashlib, os, sys
seen = [sys.version, os.path.realpath(sys.executable)]
for entry in sys.path:
    try:
        names = sorted(os.listdir(entry or "."))
    except OSError:
        continue
    for name in names:
        if name.endswith((".dist-info", ".egg-info")):
            for meta in ("METADATA", "PKG-INFO", "RECORD"):
                path = os.path.join(entry, name, meta)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                seen.append(f"{path} {st.st_size} {st.st_mtime_ns}")
print(hashlib.sha256("\\n".join(seen).encode()).hexdigest())
"""


def environment_fingerprint(python: str, timeout_s: float = 30.0) -> str:
    """A hash of what the constraint and `pip check` gates read: the interpreter's version and the
    metadata of every installed distribution on its sys.path (path, size, mtime). Equal fingerprints:
    those gates would judge the same things again."""
    try:
        done = subprocess.run([python, "-c", _FINGERPRINT], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"cannot run the interpreter {python}: {exc}") from exc
    if done.returncode != 0:
        raise RuntimeError(f"{python} could not list its distributions: {done.stderr.strip()[-400:]}")
    return done.stdout.strip()


def read_requirements(path: Path, _seen: set[Path] | None = None) -> list[Declared]:
    """Requirements of a pip requirements file (`-r`/`-c` followed); options, URLs and editables skipped."""
    path = Path(path)
    seen = _seen if _seen is not None else set()
    if path.resolve() in seen:
        return []
    seen.add(path.resolve())
    found: list[Declared] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read requirements file {path}: {exc.strerror}") from None
    for number, raw in enumerate(lines, start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        include = re.match(r"^(-r|-c|--requirement|--constraint)\s*=?\s*(\S+)$", line)
        if include:
            found.extend(read_requirements(path.parent / include.group(2), seen))
            continue
        if line.startswith("-") or ("://" in line.split(";")[0] and "@" not in line):
            continue
        try:
            found.append(Declared(Requirement(line), f"{path.name}:{number}"))
        except InvalidRequirement as exc:
            raise ValueError(f"{path}:{number}: not a requirement: {line!r} ({exc})") from None
    return found


def table_requirements(table: Mapping[str, str], source: str = "upgate.toml compat.constraints") -> list[Declared]:
    """{name = "specifier"} as requirements; an empty specifier means 'installed, any version'."""
    found = []
    for name, spec in table.items():
        try:
            found.append(Declared(Requirement(f"{name}{spec}"), f"{source}.{name}"))
        except InvalidRequirement as exc:
            raise ValueError(f"{source}.{name}: not a version specifier: {spec!r} ({exc})") from None
    return found


def _applies(req: Requirement, markers: Mapping[str, str]) -> bool:
    if req.marker is None:
        return True
    return bool(req.marker.evaluate({**markers, "extra": ""}))


def check_installed(declared: Iterable[Declared], env: Environment) -> CheckResult:
    """Every declared requirement whose markers apply is installed at a version it allows."""
    problems: list[str] = []
    checked = 0
    for d in declared:
        if not _applies(d.requirement, env.markers):
            continue
        checked += 1
        dist = env.get(d.requirement.name)
        if dist is None:
            problems.append(f"{d.requirement.name} is not installed, but {d.source} requires {d.requirement}")
        elif not d.requirement.specifier.contains(dist.version, prereleases=True):
            problems.append(f"{dist.name} {dist.version} is installed, but {d.source} requires "
                            f"{d.requirement.name}{d.requirement.specifier}")
    evidence = {"python": env.python, "checked": checked, "problems": problems}
    if problems:
        return CheckResult(False, f"{_count(len(problems), 'installed package')} outside the declared "
                                  f"constraints: {_first(problems)}", evidence)
    return CheckResult(True, f"{checked} declared requirement(s) satisfied by what {env.python} has installed",
                       evidence)


def check_candidate(candidate: Iterable[Declared], declared: Iterable[Declared], env: Environment) -> CheckResult:
    """The candidate requirements against the declared constraints and against what installed packages need.

    A conflict is a pair whose version ranges cannot both hold; each is named with both sides.
    """
    candidate = [c for c in candidate if _applies(c.requirement, env.markers)]
    declared = [d for d in declared if _applies(d.requirement, env.markers)]
    upgraded = {c.key for c in candidate}
    conflicts: list[str] = []
    changes: list[str] = []
    for c in candidate:
        spec = c.requirement.specifier
        for d in declared:
            if d.key == c.key and not specifiers_overlap(spec, d.requirement.specifier):
                conflicts.append(f"{c.requirement.name}: candidate {c.source} wants {spec or 'any'} but "
                                 f"{d.source} allows only {d.requirement.specifier}")
        for dist in env.distributions.values():
            if canonicalize_name(dist.name) in upgraded:
                continue  # replaced by the candidate's own version
            for text in dist.requires:
                try:
                    need = Requirement(text)
                except InvalidRequirement:
                    continue
                if canonicalize_name(need.name) != c.key or not _applies(need, env.markers):
                    continue
                if not specifiers_overlap(spec, need.specifier):
                    conflicts.append(f"{c.requirement.name}: candidate {c.source} wants {spec or 'any'} but "
                                     f"installed {dist.name} {dist.version} requires {need.specifier}")
        current = env.get(c.requirement.name)
        if current is None:
            changes.append(f"{c.requirement.name}: new ({spec or 'any'})")
        elif not spec.contains(current.version, prereleases=True):
            changes.append(f"{c.requirement.name}: {current.version} -> {spec}")
    evidence = {"conflicts": conflicts, "changes": changes, "candidate": [c.describe() for c in candidate]}
    if conflicts:
        return CheckResult(False, f"candidate requirements conflict ({_count(len(conflicts), 'conflict')}): "
                                  f"{_first(conflicts)}", evidence)
    return CheckResult(True, f"candidate requirements compatible: {len(candidate)} requirement(s), "
                             f"{_count(len(changes), 'package')} to change", evidence)


def pip_check(python: str, timeout_s: float = 120.0) -> CheckResult:
    """`python -m pip check`: every installed package's own requirements are met."""
    try:
        done = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return CheckResult(False, f"pip check could not run with {python}: {exc}")
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode == 0:
        return CheckResult(True, f"pip check ({python}): {lines[0] if lines else 'no broken requirements'}",
                           {"output": lines})
    if "No module named pip" in done.stderr:
        return CheckResult(False, f"pip check: {python} has no pip; install pip or set compat.pip_check = false",
                           {"stderr": done.stderr.strip()})
    broken = [line for line in lines if "requires" in line or "has requirement" in line or "not supported" in line]
    return CheckResult(False, f"pip check ({python}): {_count(len(broken or lines), 'broken requirement')}: "
                              f"{_first(broken or lines)}", {"output": lines, "stderr": done.stderr.strip()})


def check_server_version(server_version: str, supported: str) -> CheckResult:
    """The server's version (`SHOW server_version`, e.g. '16.4 (Debian 16.4-1)') within a PEP 440 range."""
    match = re.match(r"\s*(\d+(?:\.\d+)*)", server_version)
    try:
        spec = SpecifierSet(supported)
    except InvalidSpecifier:
        return CheckResult(False, f"compat.postgres = {supported!r} is not a version range such as '>=14,<17'")
    if not match:
        return CheckResult(False, f"cannot read a version number from the server's {server_version!r}")
    version = Version(match.group(1))
    evidence = {"server_version": server_version, "supported": supported}
    if spec.contains(version, prereleases=True):
        return CheckResult(True, f"PostgreSQL {version} within the supported range {supported}", evidence)
    return CheckResult(False, f"PostgreSQL {version} is outside the supported range {supported}: "
                              "upgrade the server or widen compat.postgres after testing it", evidence)


def specifiers_overlap(a: SpecifierSet, b: SpecifierSet) -> bool:
    """Whether some version satisfies both: tried on every bound either names and just above/below each."""
    if not str(a) or not str(b):
        return True
    candidates: set[Version] = {Version("0"), Version("999999")}
    for spec in (*a, *b):
        text = spec.version.rstrip(".*").rstrip(".")
        try:
            v = Version(text)
        except InvalidVersion:
            continue
        candidates.update(_around(v))
    return any(a.contains(v, prereleases=True) and b.contains(v, prereleases=True) for v in candidates)


def _around(v: Version) -> list[Version]:
    release = list(v.release)
    found = [v, Version(".".join(map(str, release + [0, 0, 0, 1])))]
    for i in range(len(release) - 1, -1, -1):
        if release[i] > 0:
            lower = release[:i] + [release[i] - 1, 99999]
            found.append(Version(".".join(map(str, lower))))
            break
    return found


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _first(items: list[str]) -> str:
    shown = "; ".join(items[:_REPORT_FIRST])
    return shown + (f"; ... {len(items) - _REPORT_FIRST} more" if len(items) > _REPORT_FIRST else "")


def environment_summary(env: Environment) -> dict[str, Any]:
    return {"python": env.python, "packages": len(env.distributions)}

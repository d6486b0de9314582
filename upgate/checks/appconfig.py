"""The application's own configuration files: validate them, and migrate them with declared rules.

    >>> spec = ConfigSpec(required=["database.url"], types={"ai_models[].timeout": "integer"},
    ...                   deprecated={"legacy_timeout": "use ai_models[].timeout"})
    >>> validate_config({"database": {}, "legacy_timeout": 5}, spec, "app.json").summary
    'app.json: 1 problem: missing required key database.url'
    >>> apply_rules({"database": {"connection_string": "x"}},
    ...             [Rule("rename", "database.connection_string", "database.url")])[1]
    ['renamed database.connection_string -> database.url']

Keys are dotted paths; `name[]` stands for every element of the list `name`
(`ai_models[].timeout`). Rules run in order: `rename`/`move` (from -> to), `default` (set `key` to
`value` where absent) and `remove`. Files are JSON, TOML or YAML, by suffix. Env files (`KEY=value`
lines) are edited as text by `edit_env`, every other line kept byte for byte.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from upgate.checks.result import CheckResult

TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}
_MISSING = object()


@dataclass(frozen=True)
class ConfigSpec:
    required: list[str] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)
    deprecated: dict[str, str] = field(default_factory=dict)

    def merged(self, other: ConfigSpec) -> ConfigSpec:
        return ConfigSpec(list(dict.fromkeys(self.required + other.required)), {**other.types, **self.types},
                          {**other.deprecated, **self.deprecated})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConfigSpec:
        unknown = set(data) - {"required", "types", "deprecated"}
        if unknown:
            raise ValueError(f"[validate]: unknown key(s) {', '.join(sorted(unknown))} "
                             "(expected required, types, deprecated)")
        spec = cls(list(data.get("required", [])), dict(data.get("types", {})), dict(data.get("deprecated", {})))
        bad = {k: v for k, v in spec.types.items() if v not in TYPES and v != "null"}
        if bad:
            raise ValueError(f"[validate] types: unknown type(s) {bad} (expected one of {', '.join(TYPES)}, null)")
        return spec


@dataclass(frozen=True)
class Rule:
    """One migration rule: kind rename | move (source -> target), default (source = value), remove (source)."""

    kind: str
    source: str
    target: str | None = None
    value: Any = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], index: int) -> Rule:
        kind = data.get("kind")
        where = f"rule {index} ({kind or 'no kind'})"
        if kind in ("rename", "move"):
            if not data.get("from") or not data.get("to"):
                raise ValueError(f"{where}: needs from and to")
            return cls(kind, str(data["from"]), str(data["to"]))
        if kind == "default":
            if not data.get("key") or "value" not in data:
                raise ValueError(f"{where}: needs key and value")
            return cls(kind, str(data["key"]), value=data["value"])
        if kind == "remove":
            if not data.get("key"):
                raise ValueError(f"{where}: needs key")
            return cls(kind, str(data["key"]))
        raise ValueError(f"{where}: kind must be rename, move, default or remove")


def read_rules(path: Path) -> tuple[list[Rule], ConfigSpec]:
    """A rules file (TOML): `[[rule]]` entries in order, and a `[validate]` table for the result."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read rules file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"rules file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"rule", "validate"}
    if unknown:
        raise ValueError(f"rules file {path}: unknown key(s) {', '.join(sorted(unknown))} (expected [[rule]], [validate])")
    try:
        rules = [Rule.from_json(r, i) for i, r in enumerate(data.get("rule", []), start=1)]
        return rules, ConfigSpec.from_json(data.get("validate", {}))
    except ValueError as exc:
        raise ValueError(f"rules file {path}: {exc}") from None


def file_format(path: Path, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    suffix = Path(path).suffix.lower()
    return {".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}.get(suffix, "json")


def load_config_file(path: Path, fmt: str = "auto") -> dict[str, Any]:
    """The file's top-level table; ValueError naming the file when it cannot be read or parsed."""
    path = Path(path)
    fmt = file_format(path, fmt)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if fmt == "toml":
            data: Any = tomllib.loads(text)
        elif fmt == "yaml":
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise ValueError(f"{path} is not valid {fmt.upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a table/object, got {type(data).__name__}")
    return data


def dump_config(data: Mapping[str, Any], fmt: str) -> str:
    if fmt == "toml":
        import tomli_w

        return tomli_w.dumps(dict(data))
    if fmt == "yaml":
        import yaml

        return str(yaml.safe_dump(dict(data), sort_keys=False))
    return json.dumps(data, indent=2) + "\n"


# --- paths ------------------------------------------------------------------------------------------


def _parts(path: str) -> list[str]:
    return [p for p in path.split(".") if p]


def walk(data: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(concrete path, value) for every place `path` names; the value is _MISSING where absent."""
    yield from _walk(data, _parts(path), "")


def _walk(node: Any, parts: list[str], done: str) -> Iterator[tuple[str, Any]]:
    if not parts:
        yield done, node
        return
    head, rest = parts[0], parts[1:]
    each = head.endswith("[]")
    name = head[:-2] if each else head
    here = f"{done}.{name}" if done else name
    if not isinstance(node, dict) or name not in node:
        yield here + ("[]" if each else "") + ("." + ".".join(rest) if rest else ""), _MISSING
        return
    value = node[name]
    if each:
        if not isinstance(value, list):
            yield here, _MISSING
            return
        for i, item in enumerate(value):
            yield from _walk(item, rest, f"{here}[{i}]")
    else:
        yield from _walk(value, rest, here)


def _parents(data: Any, path: str, create: bool) -> Iterator[tuple[dict[str, Any], str, str]]:
    """(parent dict, last key, concrete path) for every place `path` names; parents made when `create`."""
    parts = _parts(path)
    yield from _parents_in(data, parts, "", create)


def _parents_in(node: Any, parts: list[str], done: str, create: bool) -> Iterator[tuple[dict[str, Any], str, str]]:
    if not isinstance(node, dict):
        return
    head, rest = parts[0], parts[1:]
    if not rest:
        yield node, head, f"{done}.{head}" if done else head
        return
    each = head.endswith("[]")
    name = head[:-2] if each else head
    here = f"{done}.{name}" if done else name
    if name not in node:
        if not create or each:
            return
        node[name] = {}
    if each:
        if isinstance(node[name], list):
            for i, item in enumerate(node[name]):
                yield from _parents_in(item, rest, f"{here}[{i}]", create)
        return
    yield from _parents_in(node[name], rest, here, create)


# --- validate ------------------------------------------------------------------------------------------


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    for name in ("boolean", "integer", "number", "string", "array", "object"):
        if isinstance(value, TYPES[name]) and not (name in ("integer", "number") and isinstance(value, bool)):
            return name
    return type(value).__name__


def validate_config(data: Mapping[str, Any], spec: ConfigSpec, source: str) -> CheckResult:
    """Required keys present, typed keys of the declared type; deprecated keys present are warnings."""
    errors: list[str] = []
    for key in spec.required:
        for where, value in walk(data, key):
            if value is _MISSING:
                errors.append(f"missing required key {where}")
    for key, expected in spec.types.items():
        for where, value in walk(data, key):
            if value is _MISSING:
                continue
            actual = _type_of(value)
            fits = actual == expected or (expected == "number" and actual == "integer")
            if not fits:
                errors.append(f"{where} must be {expected}, got {actual} ({json.dumps(value, default=str)[:40]})")
    warnings = tuple(f"{source}: deprecated key {where}: {advice}"
                     for key, advice in spec.deprecated.items()
                     for where, value in walk(data, key) if value is not _MISSING)
    evidence = {"file": source, "errors": errors, "deprecated": list(warnings),
                "checked": {"required": len(spec.required), "types": len(spec.types)}}
    if errors:
        word = "problem" if len(errors) == 1 else "problems"
        return CheckResult(False, f"{source}: {len(errors)} {word}: " + "; ".join(errors[:10]), evidence, warnings)
    return CheckResult(True, f"{source}: valid ({len(spec.required)} required key(s), {len(spec.types)} typed, "
                             f"{len(warnings)} deprecated in use)", evidence, warnings)


# --- migrate ---------------------------------------------------------------------------------------------


def apply_rules(data: Mapping[str, Any], rules: list[Rule]) -> tuple[dict[str, Any], list[str]]:
    """A migrated copy of `data` and one line per change made (rules that found nothing to do say nothing)."""
    out = copy.deepcopy(dict(data))
    changes: list[str] = []
    for rule in rules:
        if rule.kind in ("rename", "move"):
            assert rule.target is not None
            changes.extend(_move(out, rule.source, rule.target, "renamed" if rule.kind == "rename" else "moved"))
        elif rule.kind == "default":
            for parent, key, where in list(_parents(out, rule.source, create=True)):
                if key not in parent:
                    parent[key] = copy.deepcopy(rule.value)
                    changes.append(f"set {where} = {json.dumps(rule.value)} (default)")
        elif rule.kind == "remove":
            for parent, key, where in list(_parents(out, rule.source, create=False)):
                if key in parent:
                    del parent[key]
                    changes.append(f"removed {where}")
    return out, changes


def _move(data: dict[str, Any], source: str, target: str, verb: str) -> list[str]:
    if "[]." in source:
        prefix = source.rsplit("[].", 1)[0] + "[]."
        if not target.startswith(prefix):
            raise ValueError(f"cannot move {source} to {target}: inside a list, both must start with {prefix}")
        changes = []
        for where, item in walk(data, prefix[:-1]):
            if isinstance(item, dict):
                for line in _move(item, source[len(prefix):], target[len(prefix):], verb):
                    changes.append(line.replace(f"{verb} ", f"{verb} {where}.", 1).replace(" -> ", f" -> {where}.", 1))
        return changes
    found = [(p, k) for p, k, _ in _parents(data, source, create=False) if k in p]
    if not found:
        return []
    parent, key = found[0]
    if any(k in p for p, k, _ in _parents(data, target, create=False)):
        return [f"kept {target} (already set); left {source} in place"]
    value = parent.pop(key)
    for new_parent, new_key, _ in _parents(data, target, create=True):
        new_parent[new_key] = value
        return [f"{verb} {source} -> {target}"]
    parent[key] = value
    raise ValueError(f"cannot move {source} to {target}: a key on the way is not a table")


# --- env files (KEY=value lines) -----------------------------------------------------------------------

_ENV_LINE = re.compile(r"^(\s*(?:export\s+)?)([A-Za-z_][A-Za-z0-9_.-]*)(\s*=)(.*?)(\r?\n)?$", re.S)


def env_keys(text: str) -> dict[str, int]:
    """KEY -> its line number (0-based) in an env file's text; comments and blank lines are not keys."""
    keys: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(keepends=True)):
        m = _ENV_LINE.match(line)
        if m and not line.lstrip().startswith("#"):
            keys.setdefault(m.group(2), number)
    return keys


def edit_env(text: str, set_values: Mapping[str, str], rename: Mapping[str, str], delete: list[str],
             source: str = ".env") -> tuple[str, list[str]]:
    """The env file's text with keys renamed (value kept), deleted, then set; one line per change, values never shown.

    Every other line (comments, order, quoting, `export`) is kept byte for byte. A rename whose old
    key is gone and new key present was done already (no change); neither present is a ValueError,
    and so is both present. Deleting an absent key changes nothing; setting an absent key appends it.
    """
    lines = text.splitlines(keepends=True)
    changes: list[str] = []

    def index() -> dict[str, int]:
        return env_keys("".join(lines))

    for old, new in rename.items():
        keys = index()
        if old in keys and new in keys:
            raise ValueError(f"{source}: cannot rename {old} to {new}: both are set")
        if old not in keys:
            if new in keys:
                continue
            raise ValueError(f"{source}: cannot rename {old} to {new}: {old} is not set")
        m = _ENV_LINE.match(lines[keys[old]])
        assert m is not None
        lines[keys[old]] = f"{m.group(1)}{new}{m.group(3)}{m.group(4)}{m.group(5) or ''}"
        changes.append(f"renamed {old} -> {new}")
    for key in delete:
        keys = index()
        if key in keys:
            lines = [line for n, line in enumerate(lines) if n not in _lines_of(lines, key)]
            changes.append(f"deleted {key}")
    for key, value in set_values.items():
        keys = index()
        if key in keys:
            m = _ENV_LINE.match(lines[keys[key]])
            assert m is not None
            if m.group(4) != value:
                lines[keys[key]] = f"{m.group(1)}{key}{m.group(3)}{value}{m.group(5) or ''}"
                changes.append(f"set {key} (changed)")
        else:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines.append(f"{key}={value}\n")
            changes.append(f"set {key} (added)")
    return "".join(lines), changes


def _lines_of(lines: list[str], key: str) -> set[int]:
    found = set()
    for number, line in enumerate(lines):
        m = _ENV_LINE.match(line)
        if m and m.group(2) == key and not line.lstrip().startswith("#"):
            found.add(number)
    return found

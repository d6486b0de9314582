"""API contract: the shape of the running version's responses, and what a new version broke in it.

    >>> before = {"GET /logs": shape_of({"items": [{"id": 1, "content": "hi"}]})}
    >>> after = {"GET /logs": shape_of({"items": [{"id": 1, "text": "hi"}]})}
    >>> compare_contracts(before, after).summary
    'API contract broken: 1 field removed (GET /logs: items[].content (was string))'

A shape is a small JSON tree: `{"type": "object", "fields": {...}}`, `{"type": "array", "items": ...}`
or `{"type": "string"}` (and integer, number, boolean, null). Removing an endpoint or a field, or
changing a field's type, breaks the contract; added endpoints and fields do not. A value seen as null
is compatible with any type (the sample could not tell). When the app serves an OpenAPI document, its
paths, operations and response schemas are compared the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from upgate.checks import http
from upgate.checks.result import CheckResult
from upgate.checks.secrets import redact

Shape = dict[str, Any]

_REPORT_FIRST = 10


@dataclass(frozen=True)
class EndpointSample:
    """One GET of a declared endpoint: its status and, for JSON answers, the shape of the body."""

    endpoint: str
    status: int | None
    shape: Shape | None
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and self.shape is not None


@dataclass(frozen=True)
class Contract:
    """The recorded contract of one version: endpoint shapes, and the OpenAPI document when served."""

    endpoints: dict[str, Shape] = field(default_factory=dict)
    openapi: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"endpoints": self.endpoints, "openapi": self.openapi}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Contract:
        return cls(endpoints=dict(data.get("endpoints", {})), openapi=data.get("openapi"))


def shape_of(value: Any) -> Shape:
    """The type tree of a JSON value; array items are merged into one shape."""
    if isinstance(value, dict):
        return {"type": "object", "fields": {k: shape_of(v) for k, v in value.items()}}
    if isinstance(value, list):
        items: Shape | None = None
        for item in value:
            items = shape_of(item) if items is None else merge_shapes(items, shape_of(item))
        return {"type": "array", "items": items} if items is not None else {"type": "array"}
    if value is None:
        return {"type": "null"}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    return {"type": "string"}


def merge_shapes(a: Shape, b: Shape) -> Shape:
    """One shape covering both: nulls give way, integer and number make number, objects union fields."""
    ta, tb = a.get("type"), b.get("type")
    if ta == "null":
        return b
    if tb == "null":
        return a
    if {ta, tb} == {"integer", "number"}:
        return {"type": "number"}
    if ta != tb:
        return {"type": "any"}
    if ta == "object":
        fields = dict(a.get("fields", {}))
        for name, sub in b.get("fields", {}).items():
            fields[name] = merge_shapes(fields[name], sub) if name in fields else sub
        return {"type": "object", "fields": fields}
    if ta == "array":
        if "items" not in a:
            return b
        if "items" not in b:
            return a
        return {"type": "array", "items": merge_shapes(a["items"], b["items"])}
    return a


def shape_breaks(before: Shape, after: Shape, where: str = "") -> list[tuple[str, str]]:
    """(kind, description) for every field removed or retyped from `before` to `after`."""
    tb, ta = before.get("type"), after.get("type")
    label = where or "(body)"
    if tb in ("null", "any") or ta in ("null", "any"):
        return []
    if tb != ta:
        return [("retyped", f"{label}: {tb} -> {ta}")]
    found: list[tuple[str, str]] = []
    if tb == "object":
        after_fields = after.get("fields", {})
        for name, sub in before.get("fields", {}).items():
            path = f"{where}.{name}" if where else name
            if name not in after_fields:
                found.append(("removed", f"{path} (was {_type_name(sub)})"))
            else:
                found.extend(shape_breaks(sub, after_fields[name], path))
    elif tb == "array" and "items" in before and "items" in after:
        found.extend(shape_breaks(before["items"], after["items"], f"{where}[]"))
    return found


def _type_name(shape: Shape) -> str:
    if shape.get("type") == "array" and "items" in shape:
        return f"array of {_type_name(shape['items'])}"
    return str(shape.get("type"))


def sample_endpoint(base_url: str, endpoint: str, timeout_s: float = 5.0) -> EndpointSample:
    """GET `base_url + endpoint` and take the shape of its JSON body."""
    answer = http.get(base_url.rstrip("/") + endpoint, timeout_s, headers={"Accept": "application/json"})
    if not answer.answered:
        return EndpointSample(endpoint, None, None, answer.error)
    if not 200 <= (answer.status or 0) < 300:
        return EndpointSample(endpoint, answer.status, None, f"HTTP {answer.status}")
    try:
        data = answer.json()
    except ValueError:
        return EndpointSample(endpoint, answer.status, None, "the body is not JSON")
    return EndpointSample(endpoint, answer.status, shape_of(data))


def fetch_openapi(base_url: str, path: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """The app's OpenAPI document, or None when it serves none at `path` (any error counts as none)."""
    if not path:
        return None
    status, data = http.get_json(base_url.rstrip("/") + path, timeout_s)
    return data if status == 200 and isinstance(data, dict) and "paths" in data else None


def record_contract(base_url: str, endpoints: list[str], openapi_path: str = "/openapi.json",
                    timeout_s: float = 5.0) -> tuple[Contract, CheckResult]:
    """Sample every endpoint of the running version; fails naming those that did not answer JSON."""
    samples = [sample_endpoint(base_url, e, timeout_s) for e in endpoints]
    openapi = fetch_openapi(base_url, openapi_path, timeout_s)
    contract = Contract({f"GET {s.endpoint}": s.shape for s in samples if s.answered and s.shape}, openapi)
    bad = [f"GET {s.endpoint}: {s.error or f'HTTP {s.status}'}" for s in samples if not s.answered]
    evidence = {"endpoints": {f"GET {s.endpoint}": {"status": s.status, "error": s.error} for s in samples},
                "openapi": bool(openapi)}
    source = " and its OpenAPI document" if openapi else ""
    if bad:
        return contract, CheckResult(False, f"cannot record the API contract of {redact(base_url)}: "
                                            + "; ".join(bad), evidence)
    return contract, CheckResult(True, f"API contract recorded: {len(contract.endpoints)} endpoint(s){source}",
                                 evidence)


def compare_contracts(before: Mapping[str, Shape | None], after: Mapping[str, Shape | None]) -> CheckResult:
    """Endpoints present before must answer with every field of the same type; additions are fine.

    `after[endpoint]` None means the endpoint no longer answered JSON (it counts as removed).
    """
    removed_endpoints = [e for e in before if after.get(e) is None]
    removed: list[str] = []
    retyped: list[str] = []
    added = sorted(set(after) - set(before))
    for endpoint, shape in before.items():
        now = after.get(endpoint)
        if shape is None or now is None:
            continue
        for kind, text in shape_breaks(shape, now):
            (removed if kind == "removed" else retyped).append(f"{endpoint}: {text}")
    evidence = {"removed_endpoints": removed_endpoints, "removed_fields": removed, "retyped_fields": retyped,
                "added_endpoints": added}
    parts = []
    if removed_endpoints:
        parts.append(f"{_count(len(removed_endpoints), 'endpoint')} removed ({_first(removed_endpoints)})")
    if removed:
        parts.append(f"{_count(len(removed), 'field')} removed ({_first(removed)})")
    if retyped:
        parts.append(f"{_count(len(retyped), 'field')} changed type ({_first(retyped)})")
    if parts:
        return CheckResult(False, "API contract broken: " + "; ".join(parts), evidence)
    return CheckResult(True, f"API contract kept: {len(before)} endpoint(s), no field removed or retyped",
                       evidence)


def openapi_shapes(document: Mapping[str, Any]) -> dict[str, Shape | None]:
    """Every operation of an OpenAPI 3 document with the shape of its 2xx JSON response (refs resolved)."""
    found: dict[str, Shape | None] = {}
    for path, item in (document.get("paths") or {}).items():
        if not isinstance(item, dict):
            continue
        for method, operation in item.items():
            if method.lower() not in ("get", "put", "post", "delete", "patch", "head", "options"):
                continue
            found[f"{method.upper()} {path}"] = _response_shape(document, operation)
    return found


def _response_shape(document: Mapping[str, Any], operation: Any) -> Shape:
    responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
    for code in sorted(responses, key=str):
        if str(code).startswith("2"):
            content = (_deref(document, responses[code]) or {}).get("content", {})
            schema = (content.get("application/json") or {}).get("schema")
            if schema is not None:
                return _schema_shape(document, schema, depth=0)
    return {"type": "any"}


def _schema_shape(document: Mapping[str, Any], schema: Any, depth: int) -> Shape:
    schema = _deref(document, schema)
    if not isinstance(schema, dict) or depth > 20:
        return {"type": "any"}
    kind = schema.get("type")
    if isinstance(kind, list):  # OpenAPI 3.1: ["string", "null"]
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {"type": "object", "fields": {k: _schema_shape(document, v, depth + 1) for k, v in props.items()}}
    if kind == "array":
        return {"type": "array", "items": _schema_shape(document, schema.get("items", {}), depth + 1)}
    if kind in ("string", "integer", "number", "boolean"):
        return {"type": kind}
    return {"type": "any"}


def _deref(document: Mapping[str, Any], node: Any) -> Any:
    seen = 0
    while isinstance(node, dict) and "$ref" in node and seen < 20:
        ref = str(node["$ref"])
        if not ref.startswith("#/"):
            return {}
        target: Any = document
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        node = target
        seen += 1
    return node


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:_REPORT_FIRST])
    return shown + (f", ... {len(items) - _REPORT_FIRST} more" if len(items) > _REPORT_FIRST else "")


def compare_recorded(before: Contract, after: Contract) -> CheckResult:
    """compare_contracts over the sampled endpoints and, when both serve one, the OpenAPI operations."""
    old: dict[str, Shape | None] = dict(before.endpoints)
    new: dict[str, Shape | None] = dict(after.endpoints)
    if before.openapi is not None:
        old.update({f"openapi {k}": v for k, v in openapi_shapes(before.openapi).items()})
        if after.openapi is not None:
            new.update({f"openapi {k}": v for k, v in openapi_shapes(after.openapi).items()})
    return compare_contracts(old, new)

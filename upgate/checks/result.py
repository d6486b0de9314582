"""The one result shape every check returns.

    >>> r = CheckResult(ok=False, summary="episodic_logs: 3 rows lost (ids 17, 42, 99)", evidence={"lost": 3})
    >>> r.to_json()["ok"]
    False
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["warnings"] = list(self.warnings)
        return data

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, default=str, sort_keys=True)

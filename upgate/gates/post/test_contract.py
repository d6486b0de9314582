"""Post-gate: the new version (after a rollback: the old one again) keeps the recorded API contract.

Removing an endpoint or a field, or changing a field's type, fails; added endpoints and fields pass.
"""

from __future__ import annotations

import json

import pytest

from upgate.checks.contract import Contract, compare_recorded, fetch_openapi, sample_endpoint

pytestmark = pytest.mark.upgate_component("contract", "app")


@pytest.fixture(scope="session")
def contract_check(config, app, baseline_dir):
    if config.contract is None:
        pytest.skip("API contract not configured ([contract] endpoints)")
    path = baseline_dir / "contract.json"
    if not path.exists():
        pytest.fail(f"{path}: no recorded API contract; run the pre gates first", pytrace=False)
    before = Contract.from_json(json.loads(path.read_text(encoding="utf-8")))
    spec = config.contract
    samples = [sample_endpoint(app.base_url, e, spec.timeout_s) for e in spec.endpoints]
    after = Contract({f"GET {s.endpoint}": s.shape for s in samples if s.answered and s.shape},
                     fetch_openapi(app.base_url, spec.openapi_path, spec.timeout_s))
    return compare_recorded(before, after), {f"GET {s.endpoint}": s.error for s in samples if not s.answered}


def test_no_endpoint_removed(contract_check, evidence):
    result, errors = contract_check
    evidence("contract", result)
    gone = result.evidence["removed_endpoints"]
    detail = [f"{e} ({errors[e]})" if errors.get(e) else e for e in gone]
    assert not gone, f"API contract broken: the new version no longer answers {', '.join(detail)}"


def test_no_field_removed(contract_check):
    result, _ = contract_check
    removed = result.evidence["removed_fields"]
    assert not removed, f"API contract broken: {len(removed)} response field(s) removed: {'; '.join(removed)}"


def test_no_field_type_changed(contract_check):
    result, _ = contract_check
    retyped = result.evidence["retyped_fields"]
    assert not retyped, f"API contract broken: {len(retyped)} response field(s) changed type: {'; '.join(retyped)}"

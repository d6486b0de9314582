"""Pre-gate: record the API contract of the running version (response shapes, and its OpenAPI document)."""

from __future__ import annotations

import json

import pytest

from upgate.checks.contract import record_contract

pytestmark = pytest.mark.upgate_component("contract", "app")


@pytest.fixture(scope="session")
def contract(config, app):
    if config.contract is None:
        pytest.skip("API contract not configured ([contract] endpoints)")
    return config.contract


def test_api_contract_recorded(app, contract, baseline_dir, evidence):
    recorded, result = record_contract(app.base_url, contract.endpoints, contract.openapi_path, contract.timeout_s)
    evidence("contract", result)
    evidence("shapes", recorded.to_json())
    assert result.ok, result.summary
    (baseline_dir / "contract.json").write_text(json.dumps(recorded.to_json(), indent=2) + "\n", encoding="utf-8")

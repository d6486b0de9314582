"""API contract shapes: what counts as a break (removed endpoint/field, changed type) and what does not."""

from __future__ import annotations

from upgate.checks.contract import Contract, compare_contracts, compare_recorded, openapi_shapes, shape_of

V1_ITEM = {"id": 1, "content": "hello", "tokens": 3, "metadata": {"retry": False}, "score": None}


def test_shape_merges_array_items():
    shape = shape_of({"items": [{"id": 1, "x": None}, {"id": 2, "x": 1.5, "y": "new"}]})
    item = shape["fields"]["items"]["items"]
    assert item["fields"]["x"] == {"type": "number"}
    assert set(item["fields"]) == {"id", "x", "y"}


def test_added_fields_and_endpoints_keep_the_contract():
    before = {"GET /logs": shape_of({"items": [V1_ITEM]})}
    after = {"GET /logs": shape_of({"items": [{**V1_ITEM, "cache_hit": False}]}), "GET /new": shape_of({})}
    result = compare_contracts(before, after)
    assert result.ok, result.summary
    assert result.evidence["added_endpoints"] == ["GET /new"]


def test_renamed_field_is_a_removed_field_named_with_its_path():
    renamed = {k if k != "content" else "text": v for k, v in V1_ITEM.items()}
    result = compare_contracts({"GET /logs": shape_of({"items": [V1_ITEM]})},
                               {"GET /logs": shape_of({"items": [renamed]})})
    assert not result.ok
    assert result.evidence["removed_fields"] == ["GET /logs: items[].content (was string)"]


def test_changed_type_and_removed_endpoint_are_breaks():
    before = {"GET /logs/1": shape_of(V1_ITEM), "GET /stats": shape_of({"n": 1})}
    after = {"GET /logs/1": shape_of({**V1_ITEM, "tokens": "3"}), "GET /stats": None}
    result = compare_contracts(before, after)
    assert result.evidence["retyped_fields"] == ["GET /logs/1: tokens: integer -> string"]
    assert result.evidence["removed_endpoints"] == ["GET /stats"]
    assert "1 endpoint removed" in result.summary and "1 field changed type" in result.summary


def test_null_is_compatible_with_any_type():
    result = compare_contracts({"GET /x": shape_of({"a": None})}, {"GET /x": shape_of({"a": "now set"})})
    assert result.ok


OPENAPI = {
    "openapi": "3.0.0",
    "paths": {"/logs/{id}": {"get": {"responses": {"200": {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Log"}}}}}}}},
    "components": {"schemas": {"Log": {"type": "object", "properties": {
        "id": {"type": "integer"}, "content": {"type": "string"}}}}},
}


def test_openapi_operations_and_ref_schemas_are_compared():
    shapes = openapi_shapes(OPENAPI)
    assert shapes["GET /logs/{id}"] == {"type": "object", "fields": {"id": {"type": "integer"},
                                                                      "content": {"type": "string"}}}
    broken = {**OPENAPI, "components": {"schemas": {"Log": {"type": "object", "properties": {
        "id": {"type": "string"}}}}}}
    result = compare_recorded(Contract({}, OPENAPI), Contract({}, broken))
    assert not result.ok
    assert "openapi GET /logs/{id}: content (was string)" in result.evidence["removed_fields"]
    assert "openapi GET /logs/{id}: id: integer -> string" in result.evidence["retyped_fields"]


def test_openapi_document_no_longer_served_removes_its_operations():
    result = compare_recorded(Contract({}, OPENAPI), Contract({}, None))
    assert result.evidence["removed_endpoints"] == ["openapi GET /logs/{id}"]

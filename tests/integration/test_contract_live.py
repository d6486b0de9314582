"""The API contract against real processes: the reference service's v1, v2 and v2-contract-break, and an
app that serves an OpenAPI document (a stdlib HTTP server)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from upgate.checks.contract import Contract, compare_recorded, record_contract
from upgate.fixtures.reference import PLANS, apply_sql_file, free_port, start_service, stop_pid, wait_ready
from upgate.fixtures.seed import create_schema, seed

ENDPOINTS = ["/health", "/logs?limit=5", "/logs/1"]


@pytest.fixture
def seeded(pg_url: str) -> str:
    create_schema(pg_url)
    seed(pg_url, rows=200)
    apply_sql_file(pg_url, Path(PLANS) / "good" / "migrations" / "001_add_cache_columns.up.sql")
    return pg_url


def serve(url: str, build: str, folder: Path) -> tuple[str, int]:
    port = free_port()
    proc = start_service(url, port, build, folder / f"{build}.pid", folder / f"{build}.log")
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, timeout=30, proc=proc)
    return base, proc.pid


def test_v2_keeps_the_contract_and_the_renaming_build_breaks_it(seeded, tmp_path):
    started = []
    try:
        bases = {}
        for build in ("v1", "v2", "v2-contract-break"):
            base, pid = serve(seeded, build, tmp_path)
            started.append(pid)
            bases[build] = base
        v1, result = record_contract(bases["v1"], ENDPOINTS)
        assert result.ok, result.summary
        v2, _ = record_contract(bases["v2"], ENDPOINTS)
        kept = compare_recorded(v1, v2)
        assert kept.ok, kept.summary
        broken, _ = record_contract(bases["v2-contract-break"], ENDPOINTS)
        verdict = compare_recorded(v1, broken)
        assert not verdict.ok
        assert verdict.evidence["removed_fields"] == ["GET /logs?limit=5: items[].content (was string)",
                                                      "GET /logs/1: content (was string)"]
    finally:
        for pid in started:
            stop_pid(pid, 10.0)


def test_unreachable_app_fails_naming_it():
    port = free_port()
    _, result = record_contract(f"http://127.0.0.1:{port}", ["/health"], timeout_s=1)
    assert not result.ok
    assert f"cannot record the API contract of http://127.0.0.1:{port}: GET /health:" in result.summary


def _openapi(version: str) -> dict:
    props = {"id": {"type": "integer"}, "name": {"type": "string"}}
    if version == "2":
        props = {"id": {"type": "string"}, "name": {"type": "string"}, "added": {"type": "boolean"}}
    return {"openapi": "3.1.0", "paths": {"/things/{id}": {"get": {"responses": {"200": {
        "content": {"application/json": {"schema": {"type": "object", "properties": props}}}}}}}}}


@pytest.fixture
def openapi_app() -> Iterator[tuple[str, dict]]:
    state = {"version": "1"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps(_openapi(state["version"]) if self.path == "/openapi.json" else {"ok": True}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def test_served_openapi_is_recorded_and_a_retyped_property_fails(openapi_app):
    base, state = openapi_app
    before, result = record_contract(base, ["/health"])
    assert result.ok and "OpenAPI document" in result.summary
    state["version"] = "2"
    after, _ = record_contract(base, ["/health"])
    verdict = compare_recorded(Contract.from_json(json.loads(json.dumps(before.to_json()))), after)
    assert verdict.evidence["retyped_fields"] == ["openapi GET /things/{id}: id: integer -> string"]
    assert not verdict.evidence["removed_fields"]

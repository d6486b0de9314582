"""Health checks against a real PostgreSQL and a real HTTP server on a free port."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from upgate.checks.health import check_database, probe_http


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/slow":
            time.sleep(1.0)
        if path == "/down":
            self.reply(503, "text/plain", b"maintenance in progress")
        elif path == "/health":
            self.reply(200, "application/json", json.dumps({"status": "ok", "version": "2.0"}).encode())
        else:
            self.reply(200, "text/plain", b"fine")

    def reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_database_answers(pg_url: str) -> None:
    result = check_database(pg_url)
    assert result.ok, result.summary
    assert result.summary.startswith(f"database {pg_url} answers: SELECT 1 in ")
    assert result.evidence["server_version"].startswith("16")
    assert result.evidence["latency_ms"] > 0
    json.dumps(result.to_json())


def test_closed_port_fails_naming_the_redacted_url() -> None:
    port = free_port()
    url = f"postgresql://upgate:s3cret@127.0.0.1:{port}/app"
    result = check_database(url, timeout_s=2)
    assert not result.ok
    assert result.summary.startswith(
        f"database postgresql://upgate:***@127.0.0.1:{port}/app does not answer: "
    )
    assert "s3cret" not in result.dumps()


def test_http_200_is_ok_with_json_body(http_base: str) -> None:
    result = probe_http(f"{http_base}/health")
    assert result.ok, result.summary
    assert result.summary.startswith(f"GET {http_base}/health: 200 in ")
    assert result.evidence["status"] == 200
    assert result.evidence["body"] == {"status": "ok", "version": "2.0"}
    assert result.evidence["latency_ms"] >= 0


def test_http_503_fails_with_status_and_body(http_base: str) -> None:
    result = probe_http(f"{http_base}/down?token=abc123")
    assert not result.ok
    assert result.summary.startswith(f"GET {http_base}/down?token=***: expected 200, got 503 in ")
    assert result.summary.endswith("(maintenance in progress)")
    assert result.evidence["body"] == "maintenance in progress"
    assert "abc123" not in result.dumps()


def test_http_expected_status_can_be_other_than_200(http_base: str) -> None:
    assert probe_http(f"{http_base}/down", expect_status=503).ok


def test_http_timeout_fails_naming_the_url(http_base: str) -> None:
    result = probe_http(f"{http_base}/slow", timeout_s=0.2)
    assert not result.ok
    assert result.summary.startswith(f"GET {http_base}/slow: no answer (timed out) after ")


def test_http_refused_fails_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    result = probe_http(url)
    assert not result.ok
    assert result.summary.startswith(f"GET {url}: no answer (")
    assert "refused" in result.summary.lower()

"""The one HTTP client (upgate/checks/http.py) against a real local server: any status is an answer, a refused
connection and a timeout are errors in words, secrets in the URL are redacted, proxies are ignored."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from upgate.checks import http
from upgate.fixtures.reference import free_port


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        if self.path == "/slow":
            time.sleep(1.0)
        status = 500 if self.path == "/boom" else 200
        body = json.dumps({"path": self.path, "ua": self.headers.get("User-Agent")}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:  # the client timed out (the /slow test): expected
            pass

    def do_POST(self) -> None:  # noqa: N802
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_any_status_is_an_answer(base):
    ok, boom = http.get(base + "/x"), http.get(base + "/boom")
    assert (ok.status, ok.json()["path"], ok.json()["ua"]) == (200, "/x", "upgate")
    assert boom.answered and boom.status == 500 and boom.error is None
    assert http.get_json(base + "/y") == (200, {"path": "/y", "ua": "upgate"})
    assert http.post_json(base + "/echo", {"a": 1}).json() == {"a": 1}


def test_refused_and_timeout_are_errors_in_words(base):
    refused = http.get(f"http://u:s3cret@127.0.0.1:{free_port()}/health")
    assert refused.error == "connection refused" and refused.status is None
    assert "s3cret" not in refused.url
    assert http.get(base + "/slow", timeout_s=0.2).error == "timed out"
    assert http.get_json(f"http://127.0.0.1:{free_port()}/") == (0, "connection refused")


def test_proxies_from_the_environment_are_ignored(base, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("NO_PROXY", "")
    assert http.get(base + "/through").status == 200

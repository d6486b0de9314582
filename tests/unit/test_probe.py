"""Downtime from a probe timeline: outages are the spans between a failed probe and the next passing one."""

from __future__ import annotations

import http.server
import threading

from upgate.core.probe import DowntimeProber, Probe, summarise


def p(t: float, ok: bool, cycle: int, url: str = "u") -> Probe:
    return Probe(t=t, url=url, ok=ok, status=200 if ok else None, latency_ms=1.0, cycle=cycle)


def test_no_failures_no_downtime():
    report = summarise([p(0.1 * i, True, i) for i in range(10)], 0.1)
    assert report.downtime_s == 0 and report.longest_outage_s == 0 and report.probes == 10


def test_outages_are_summed_and_longest_reported():
    oks = [True, False, False, True, True, False, True]
    report = summarise([p(0.1 * i, ok, i) for i, ok in enumerate(oks)], 0.1)
    assert report.downtime_s == 0.3
    assert report.longest_outage_s == 0.2
    assert len(report.outages) == 2


def test_outage_still_open_at_the_end_counts():
    report = summarise([p(0.0, True, 0), p(0.1, False, 1), p(0.2, False, 2)], 0.1)
    assert report.downtime_s == 0.2


def test_a_cycle_is_down_when_any_url_fails():
    timeline = [p(0.0, True, 0, "a"), p(0.0, False, 0, "b"), p(0.1, True, 1, "a"), p(0.1, True, 1, "b")]
    assert summarise(timeline, 0.1).downtime_s == 0.1


def test_prober_measures_a_real_server_going_away():
    class Ok(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/ready"
    prober = DowntimeProber([url], interval_s=0.02, timeout_s=0.2)
    prober.start()
    threading.Event().wait(0.2)
    server.shutdown()
    server.server_close()
    threading.Event().wait(0.3)
    prober.stop()
    report = prober.report()
    assert report.failed > 0 and report.probes > report.failed
    assert report.downtime_s >= 0.2

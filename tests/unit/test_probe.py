"""Downtime from a probe timeline, and the prober against a real service that refuses or freezes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from upgate.core.probe import DowntimeProber, Probe, summarise
from upgate.fixtures.reference import free_port

ROOT = Path(__file__).resolve().parents[2]


def p(t: float, ok: bool, cycle: int, url: str = "u", latency: float = 0.001, kind: str | None = None) -> Probe:
    return Probe(t=t, url=url, ok=ok, status=200 if ok else None, latency_ms=latency * 1000, cycle=cycle,
                 kind=None if ok else (kind or "refused"), answered_t=t + latency)


def test_no_failures_no_downtime():
    report = summarise([p(0.1 * i, True, i) for i in range(10)], 0.1)
    assert report.downtime_s == 0 and report.longest_outage_s == 0 and report.probes == 10
    assert report.failures == {}


def test_outages_run_from_the_first_failure_to_the_first_answer_received():
    oks = [True, False, False, True, True, False, True]
    report = summarise([p(0.1 * i, ok, i) for i, ok in enumerate(oks)], 0.1)
    assert [(o["start_s"], o["end_s"]) for o in report.outages] == [(0.1, 0.301), (0.5, 0.601)]
    assert report.downtime_s == 0.302 and report.longest_outage_s == 0.201
    assert report.outages[0]["refused"] == 2 and report.failures == {"refused": 3}


def test_outage_still_open_at_the_end_counts():
    report = summarise([p(0.0, True, 0), p(0.1, False, 1), p(0.2, False, 2)], 0.1)
    assert report.downtime_s == 0.101 and report.outages[0]["open"] == 1.0


def test_a_moment_is_down_when_any_url_is_down():
    timeline = [p(0.0, True, 0, "a"), p(0.0, False, 0, "b"), p(0.1, True, 1, "a"), p(0.1, True, 1, "b"),
                p(0.2, False, 2, "a"), p(0.3, True, 3, "a"), p(0.2, True, 2, "b"), p(0.3, True, 3, "b")]
    report = summarise(timeline, 0.1)
    assert [(o["start_s"], o["end_s"]) for o in report.outages] == [(0.0, 0.101), (0.2, 0.301)]


def test_a_frozen_service_ends_its_outage_when_held_requests_are_answered():
    """Frozen from 1.0 to 4.0 s, probes every 0.1 s with a 1 s timeout: those sent in the last second are
    held and answered at 4.0 s. The outage must end then, not when they were sent (3.05 s)."""
    timeline = []
    for i in range(60):
        sent = 0.05 + 0.1 * i
        if sent < 1.0 or sent >= 4.0:
            timeline.append(p(sent, True, i))
        elif sent < 3.0:
            timeline.append(p(sent, False, i, latency=1.0, kind="hung"))
        else:
            timeline.append(p(sent, True, i, latency=4.0 - sent))
    report = summarise(timeline, 0.1)
    assert len(report.outages) == 1
    outage = report.outages[0]
    assert outage["end_s"] == 4.0 and outage["hung"] == 20
    assert abs(report.downtime_s - 3.0) <= 0.05  # the start is halfway between the last answer and the first miss


def test_slow_answers_to_probes_sent_before_the_outage_do_not_end_it():
    timeline = [p(0.0, True, 0, latency=0.5), p(0.1, False, 1), p(0.2, False, 2), p(0.3, True, 3)]
    report = summarise(timeline, 0.1)
    assert [(o["start_s"], o["end_s"]) for o in report.outages] == [(0.1, 0.301)]


# --- against a real service process -------------------------------------------------------------------


@pytest.fixture
def service() -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "upgate.fixtures.outage_server", "--port", str(port)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("listening")
    try:
        yield proc, port
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=10)


def test_prober_measures_a_refused_port(service):
    proc, port = service
    prober = DowntimeProber([f"http://127.0.0.1:{port}/ready"], interval_s=0.02, timeout_s=0.3)
    prober.start()
    time.sleep(0.3)
    proc.send_signal(signal.SIGUSR1)
    closed = float(proc.stdout.readline().split()[1])
    time.sleep(1.0)
    proc.send_signal(signal.SIGUSR2)
    opened = float(proc.stdout.readline().split()[2])
    time.sleep(0.3)
    prober.stop()
    report = prober.report()
    assert report.failures.get("refused", 0) > 0 and "hung" not in report.failures
    assert len(report.outages) == 1
    assert abs(report.downtime_s - (opened - closed)) < 0.2, (report.downtime_s, opened - closed)


def _first_answer(port: int) -> float:
    """When the service first answered a GET of /ready (monotonic), asking again until it does (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1.0):
                return time.monotonic()
        except OSError:
            if time.monotonic() > deadline:
                raise


def test_prober_measures_a_frozen_service_in_full(service):
    proc, port = service
    prober = DowntimeProber([f"http://127.0.0.1:{port}/ready"], interval_s=0.02, timeout_s=0.3)
    prober.start()
    time.sleep(0.3)
    stopped = time.monotonic()
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(1.0)
    resumed = time.monotonic()
    os.kill(proc.pid, signal.SIGCONT)
    answered = _first_answer(port)  # a loaded machine may take a while to let the thawed service answer
    time.sleep(0.5)
    prober.stop()
    report = prober.report()
    assert report.failures.get("hung", 0) > 0
    assert len(report.outages) == 1
    # Probes sent one after another with a 0.3 s timeout used to stop counting 0.3 s early: the outage is the
    # freeze at least, and ends no later than the first answer this test itself got after it.
    frozen, down = resumed - stopped, report.downtime_s
    assert frozen - 0.1 < down < answered - stopped + 0.1, (down, frozen, answered - stopped)


def test_probes_keep_their_schedule_while_the_service_hangs(service):
    proc, port = service
    prober = DowntimeProber([f"http://127.0.0.1:{port}/ready"], interval_s=0.05, timeout_s=1.0)
    prober.start()
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(0.6)
    os.kill(proc.pid, signal.SIGCONT)
    prober.stop()
    sent = sorted(probe.t for probe in prober.timeline)
    assert len(sent) >= 8  # one per 50 ms although none was answered until the service resumed
    assert max(b - a for a, b in zip(sent, sent[1:], strict=False)) < 0.2


def test_the_timeline_chart_shows_refused_and_hung_probes_apart(tmp_path):
    from upgate.reporting.charts import failed_probes_by_kind, render_downtime

    timeline = [p(0.0, True, 0), p(0.1, False, 1), p(0.2, False, 2, latency=1.0, kind="hung"), p(1.3, True, 3)]
    timeline.append(Probe(t=1.4, url="u", ok=False, status=503, latency_ms=2.0, cycle=4))  # recorded before kinds
    data = [probe.__dict__ for probe in timeline]
    assert failed_probes_by_kind(data) == {"refused": [0.1], "hung": [0.2], "http": [1.4]}
    report = summarise(timeline, 0.1)
    assert report.failures == {"refused": 1, "hung": 1}
    chart = render_downtime({"timeline": data, "report": report.to_json()}, tmp_path / "downtime.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

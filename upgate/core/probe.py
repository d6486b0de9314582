"""Downtime, measured: probes leave on a fixed schedule, each on its own thread with its own timeout.

    >>> with DowntimeProber(["http://127.0.0.1:8080/ready"]) as prober:   # doctest: +SKIP
    ...     migrate(); deploy()
    >>> prober.report().downtime_s

A probe fails when the connection is refused or reset ("refused"), when no answer arrives within its
timeout ("hung": a stopped or deadlocked service), on a non-2xx status ("http") or anything else
("error"). A probe that is slow never delays the next one: a hung service is probed every interval
like any other. An outage ends at the first answer *received* from a probe sent during or after it,
so requests held by a frozen service and answered when it resumes end the outage when they are
answered, not when they were sent.
"""

from __future__ import annotations

import http.client
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

FAILURE_KINDS = ("refused", "hung", "http", "error")


@dataclass(frozen=True)
class Probe:
    t: float  # seconds since the prober started, when the probe was sent
    url: str
    ok: bool
    status: int | None
    latency_ms: float
    error: str | None = None
    cycle: int = 0
    kind: str | None = None  # None when answered 2xx, else one of FAILURE_KINDS
    answered_t: float | None = None  # when the answer (or the failure) came back

    @property
    def done_t(self) -> float:
        return self.answered_t if self.answered_t is not None else self.t + self.latency_ms / 1000


@dataclass(frozen=True)
class DowntimeReport:
    probes: int
    failed: int
    downtime_s: float
    longest_outage_s: float
    outages: list[dict[str, float]] = field(default_factory=list)
    marks: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)  # failed probes per kind

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class DowntimeProber:
    """Probe each URL every `interval_s` on a fixed schedule; each probe gives up after `timeout_s`."""

    def __init__(self, urls: list[str], interval_s: float = 0.1, timeout_s: float = 1.0) -> None:
        self.urls = urls
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.timeline: list[Probe] = []
        self.marks: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._t0 = 0.0
        self._lock = threading.Lock()

    def __enter__(self) -> DowntimeProber:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread or not self.urls:
            return
        self._t0 = time.monotonic()
        # Enough threads for every probe that can be in flight at once (connect and read each time out).
        in_flight = math.ceil(2 * self.timeout_s / self.interval_s) + 2
        self._pool = ThreadPoolExecutor(max_workers=len(self.urls) * in_flight, thread_name_prefix="upgate-probe")
        self._thread = threading.Thread(target=self._schedule, name="upgate-prober", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sending probes and wait for those in flight (at most their timeout) so the timeline is whole."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.interval_s + 1)
        if self._pool:
            self._pool.shutdown(wait=True)

    def mark(self, label: str) -> None:
        """Put a named point (a step starting) on the timeline."""
        with self._lock:
            self.marks.append({"t": round(time.monotonic() - self._t0, 3), "label": label})

    def _schedule(self) -> None:
        assert self._pool is not None
        cycle = 0
        while True:
            due = self._t0 + cycle * self.interval_s
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            late = time.monotonic() - due
            if late > self.interval_s:  # this thread was starved: skip the slots that passed, keep the grid
                cycle += int(late / self.interval_s)
                continue
            for url in self.urls:
                try:
                    self._pool.submit(self._probe, url, cycle)
                except RuntimeError:  # the pool is shutting down
                    return
            cycle += 1

    def _probe(self, url: str, cycle: int) -> None:
        probe = probe_once(url, self.timeout_s, self._t0, cycle)
        with self._lock:
            self.timeline.append(probe)

    def report(self) -> DowntimeReport:
        with self._lock:
            timeline = sorted(self.timeline, key=lambda p: (p.t, p.url))
            marks = list(self.marks)
        return summarise(timeline, self.interval_s, marks)


def probe_once(url: str, timeout_s: float, t0: float, cycle: int = 0) -> Probe:
    """One GET on a fresh connection (a new client's view, not a kept-alive socket to a draining process)."""
    parts = urlsplit(url)
    started = time.monotonic()
    deadline = started + timeout_s
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout_s)

    def done(ok: bool, status: int | None, kind: str | None, error: str | None = None) -> Probe:
        now = time.monotonic()
        return Probe(round(started - t0, 4), url, ok, status, round((now - started) * 1000, 2), error, cycle, kind,
                     round(now - t0, 4))

    try:
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(max(0.001, deadline - time.monotonic()))  # one timeout for the whole probe
        conn.request("GET", path, headers={"User-Agent": "upgate-prober", "Connection": "close"})
        response = conn.getresponse()
        response.read()
        if time.monotonic() > deadline:
            return done(False, response.status, "hung", f"answered after the {timeout_s:g} s timeout")
        if 200 <= response.status < 300:
            return done(True, response.status, None)
        return done(False, response.status, "http", f"HTTP {response.status}")
    except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected) as exc:
        return done(False, None, "refused", f"{type(exc).__name__}: {exc}"[:200])
    except TimeoutError as exc:
        return done(False, None, "hung", f"no answer within {timeout_s:g} s ({type(exc).__name__})")
    except (OSError, http.client.HTTPException) as exc:
        return done(False, None, "error", f"{type(exc).__name__}: {exc}"[:200])
    finally:
        conn.close()


def summarise(timeline: list[Probe], interval_s: float, marks: list[dict[str, Any]] | None = None) -> DowntimeReport:
    """Outages per URL, merged across URLs (a moment is down when any URL is down).

    An outage starts when the first failed probe was sent and ends at the first answer received from a
    probe sent at or after that. When that answer was held by a frozen service and released on recovery
    (it took longer than one interval), the end is exact and the start is placed halfway between the
    last answered probe and the first failed one, so that neither end is biased by the schedule;
    otherwise both ends sit on the schedule (first failure sent, first answer received) and their
    quantisation cancels out.
    """
    spans: list[dict[str, float]] = []
    for url in dict.fromkeys(p.url for p in timeline):
        spans += _outages([p for p in timeline if p.url == url], interval_s)
    outages = _merge(spans)
    end_t = max((p.done_t for p in timeline), default=0.0)
    downtime = round(sum(o["seconds"] for o in outages), 3)
    longest = round(max((o["seconds"] for o in outages), default=0.0), 3)
    failures = {kind: sum(1 for p in timeline if p.kind == kind) for kind in FAILURE_KINDS}
    return DowntimeReport(
        probes=len(timeline),
        failed=sum(1 for p in timeline if not p.ok),
        downtime_s=downtime,
        longest_outage_s=longest,
        outages=outages,
        marks=marks or [],
        duration_s=round(end_t, 3),
        failures={k: v for k, v in failures.items() if v},
    )


def _outages(probes: list[Probe], interval_s: float) -> list[dict[str, float]]:
    probes = sorted(probes, key=lambda p: p.t)
    answers = sorted((p for p in probes if p.ok), key=lambda p: p.done_t)
    out: list[dict[str, float]] = []
    last_ok_sent: float | None = None
    i = 0
    while i < len(probes):
        p = probes[i]
        if p.ok:
            last_ok_sent = p.t
            i += 1
            continue
        first_failed = p.t
        ending = next((a for a in answers if a.t >= first_failed), None)
        end = ending.done_t if ending is not None else max(q.done_t for q in probes)
        start = first_failed
        held = ending is not None and ending.done_t - ending.t > interval_s
        if held and last_ok_sent is not None:
            start = (last_ok_sent + first_failed) / 2
        within = [q for q in probes if first_failed <= q.t and q.done_t <= end and not q.ok]
        outage: dict[str, float] = {"start_s": round(start, 3), "end_s": round(end, 3),
                                    "seconds": round(end - start, 3)}
        for kind in FAILURE_KINDS:
            count = sum(1 for q in within if q.kind == kind)
            if count:
                outage[kind] = count
        if ending is None:
            outage["open"] = 1.0
        out.append(outage)
        # Continue after the outage: the next probe sent after its end.
        while i < len(probes) and probes[i].t < end:
            if probes[i].ok and probes[i].done_t <= end:
                last_ok_sent = probes[i].t
            i += 1
    return out


def _merge(spans: list[dict[str, float]]) -> list[dict[str, float]]:
    merged: list[dict[str, float]] = []
    for span in sorted(spans, key=lambda s: s["start_s"]):
        if merged and span["start_s"] <= merged[-1]["end_s"]:
            last = merged[-1]
            last["end_s"] = max(last["end_s"], span["end_s"])
            last["seconds"] = round(last["end_s"] - last["start_s"], 3)
            for key, value in span.items():
                if key not in ("start_s", "end_s", "seconds"):
                    last[key] = last.get(key, 0) + value if key != "open" else 1.0
        else:
            merged.append(dict(span))
    return merged

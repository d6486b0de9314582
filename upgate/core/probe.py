"""Downtime, measured: a thread probes the health URL(s) every interval and keeps a timeline.

    >>> with DowntimeProber(["http://127.0.0.1:8080/ready"]) as prober:   # doctest: +SKIP
    ...     migrate(); deploy()
    >>> prober.report().downtime_s
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Probe:
    t: float  # seconds since the prober started
    url: str
    ok: bool
    status: int | None
    latency_ms: float
    error: str | None = None
    cycle: int = 0


@dataclass(frozen=True)
class DowntimeReport:
    probes: int
    failed: int
    downtime_s: float
    longest_outage_s: float
    outages: list[dict[str, float]] = field(default_factory=list)
    marks: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class DowntimeProber:
    """Probe each URL every `interval_s`; a probe fails on a connection error, timeout or non-2xx."""

    def __init__(self, urls: list[str], interval_s: float = 0.1, timeout_s: float = 1.0) -> None:
        self.urls = urls
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.timeline: list[Probe] = []
        self.marks: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
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
        self._thread = threading.Thread(target=self._loop, name="upgate-prober", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.timeout_s + 1)

    def mark(self, label: str) -> None:
        """Put a named point (a step starting) on the timeline."""
        with self._lock:
            self.marks.append({"t": round(time.monotonic() - self._t0, 3), "label": label})

    def _loop(self) -> None:
        next_at = time.monotonic()
        number = 0
        while not self._stop.is_set():
            number += 1
            for url in self.urls:
                probe = self._probe(url, number)
                with self._lock:
                    self.timeline.append(probe)
            next_at += self.interval_s
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def _probe(self, url: str, number: int) -> Probe:
        parts = urlsplit(url)
        started = time.monotonic()
        t = started - self._t0
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        # A fresh connection per probe: a new client's view, not a kept-alive socket to a draining process.
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=self.timeout_s)
        try:
            conn.request("GET", path, headers={"User-Agent": "upgate-prober"})
            resp = conn.getresponse()
            resp.read()
            ok = 200 <= resp.status < 300
            return Probe(round(t, 3), url, ok, resp.status, round((time.monotonic() - started) * 1000, 2), cycle=number)
        except (OSError, http.client.HTTPException) as exc:
            return Probe(round(t, 3), url, False, None, round((time.monotonic() - started) * 1000, 2),
                         error=f"{type(exc).__name__}: {exc}"[:200], cycle=number)
        finally:
            conn.close()

    def report(self) -> DowntimeReport:
        with self._lock:
            timeline = list(self.timeline)
            marks = list(self.marks)
        return summarise(timeline, self.interval_s, marks)


def summarise(timeline: list[Probe], interval_s: float, marks: list[dict[str, Any]] | None = None) -> DowntimeReport:
    """Downtime = the time between the first failed probe of an outage and the next passing one."""
    outages: list[dict[str, float]] = []
    start: float | None = None
    # With several URLs a moment is down when any URL of that round fails.
    rounds: dict[int, tuple[float, bool]] = {}
    for p in timeline:
        t, ok = rounds.get(p.cycle, (p.t, True))
        rounds[p.cycle] = (min(t, p.t), ok and p.ok)
    order = [rounds[k] for k in sorted(rounds)]
    for t, ok in order:
        if not ok and start is None:
            start = t
        elif ok and start is not None:
            outages.append({"start_s": round(start, 3), "end_s": round(t, 3), "seconds": round(t - start, 3)})
            start = None
    end_t = order[-1][0] if order else 0.0
    if start is not None:
        seconds = max(end_t - start + interval_s, interval_s)
        outages.append({"start_s": round(start, 3), "end_s": round(start + seconds, 3), "seconds": round(seconds, 3),
                        "open": 1.0})
    downtime = round(sum(o["seconds"] for o in outages), 3)
    longest = round(max((o["seconds"] for o in outages), default=0.0), 3)
    return DowntimeReport(
        probes=len(timeline),
        failed=sum(1 for p in timeline if not p.ok),
        downtime_s=downtime,
        longest_outage_s=longest,
        outages=outages,
        marks=marks or [],
        duration_s=round(end_t, 3),
    )

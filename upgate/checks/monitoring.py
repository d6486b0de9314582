"""Monitoring and the components a service leans on: Redis answers, Prometheus answers, /metrics parses.

    >>> check_redis("redis://127.0.0.1:6379/0").summary                           # doctest: +SKIP
    'redis redis://127.0.0.1:6379/0 answers PING in 0.4 ms: 1.2 MiB used, 3 clients (Redis 6.2.7)'
    >>> check_prometheus("http://127.0.0.1:9090").ok                              # doctest: +SKIP
    True
    >>> check_metrics("http://127.0.0.1:8080/metrics", ["upgate_ref_up"]).ok     # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from upgate.checks import http
from upgate.checks.result import CheckResult
from upgate.checks.secrets import redact


def check_redis(url: str, timeout_s: float = 2.0) -> CheckResult:
    """PING, then INFO memory/clients/server: used memory, max memory, connected and blocked clients."""
    import redis

    shown = redact(url)
    started = time.monotonic()
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            ping_started = time.monotonic()
            pong = client.ping()
            ping_ms = (time.monotonic() - ping_started) * 1000
            info: dict[str, Any] = {}
            for section in ("server", "memory", "clients"):
                info.update(client.info(section))
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        error = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return CheckResult(
            ok=False,
            summary=f"redis {shown} does not answer: {error}",
            evidence={"url": shown, "error": error, "elapsed_ms": round((time.monotonic() - started) * 1000, 1)},
        )
    used = int(info.get("used_memory", 0))
    maxmemory = int(info.get("maxmemory", 0) or 0)
    clients = int(info.get("connected_clients", 0))
    max_clients = int(info.get("maxclients", 0) or 0)
    evidence = {
        "url": shown,
        "ping_ms": round(ping_ms, 2),
        "version": info.get("redis_version"),
        "used_memory_bytes": used,
        "used_memory_peak_bytes": int(info.get("used_memory_peak", 0)),
        "maxmemory_bytes": maxmemory,
        "maxmemory_policy": info.get("maxmemory_policy"),
        "connected_clients": clients,
        "blocked_clients": int(info.get("blocked_clients", 0)),
        "maxclients": max_clients,
    }
    warnings = []
    if maxmemory and used > 0.9 * maxmemory:
        warnings.append(f"redis {shown}: {used / maxmemory:.0%} of maxmemory used")
    if max_clients and clients > 0.9 * max_clients:
        warnings.append(f"redis {shown}: {clients} of {max_clients} client slots used")
    ok = bool(pong)
    memory = f"{used / 2**20:.1f} MiB used" + (f" of {maxmemory / 2**20:.0f} MiB" if maxmemory else "")
    summary = (f"redis {shown} answers PING in {ping_ms:.1f} ms: {memory}, {clients} clients "
               f"(Redis {info.get('redis_version', '?')})")
    if not ok:
        summary = f"redis {shown}: PING did not return PONG"
    return CheckResult(ok=ok, summary=summary, evidence=evidence, warnings=tuple(warnings))


def check_prometheus(url: str, query: str = "up", timeout_s: float = 2.0) -> CheckResult:
    """GET /-/ready, then evaluate `query` through /api/v1/query; series whose value is 0 are warnings."""
    base = url.rstrip("/")
    shown = redact(base)
    started = time.monotonic()
    status, body, error = _get(base + "/-/ready", timeout_s)
    evidence: dict[str, Any] = {"url": shown, "query": query, "ready_status": status}
    if error or status != 200:
        why = error or f"/-/ready answered {status}: {_excerpt(body)}"
        evidence["error"] = why
        return CheckResult(ok=False, summary=f"prometheus {shown} is not ready: {why}", evidence=evidence)
    q = urllib.parse.urlencode({"query": query})
    status, body, error = _get(f"{base}/api/v1/query?{q}", timeout_s)
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    evidence["latency_ms"] = latency_ms
    if error:
        evidence["error"] = error
        return CheckResult(ok=False, summary=f"prometheus {shown}: query {query!r} got no answer: {error}",
                           evidence=evidence)
    try:
        payload = json.loads(body)
    except ValueError:
        evidence["error"] = "not JSON"
        return CheckResult(ok=False, summary=f"prometheus {shown}: query {query!r} answered {status} with non-JSON "
                                             f"({_excerpt(body)})", evidence=evidence)
    if status != 200 or payload.get("status") != "success":
        why = payload.get("error") or f"status {status}"
        evidence["error"] = why
        return CheckResult(ok=False, summary=f"prometheus {shown}: query {query!r} failed: {why}", evidence=evidence)
    data = payload.get("data") or {}
    results = data.get("result") or []
    series = []
    warnings = []
    for item in results if isinstance(results, list) else []:
        metric = item.get("metric", {})
        value = (item.get("value") or [None, None])[1]
        series.append({"metric": metric, "value": value})
        if value in ("0", 0):
            warnings.append(f"prometheus {shown}: {query}{_labels(metric)} is 0")
    evidence.update(result_type=data.get("resultType"), series=series[:50], series_count=len(series))
    return CheckResult(
        ok=True,
        summary=f"prometheus {shown} ready; {query!r} returned {len(series)} series in {latency_ms:.0f} ms"
                + (f" ({len(warnings)} at 0)" if warnings else ""),
        evidence=evidence,
        warnings=tuple(warnings),
    )


def check_metrics(url: str, required: Sequence[str] = (), timeout_s: float = 2.0) -> CheckResult:
    """GET the Prometheus text exposition, parse it with prometheus_client, and find every required name.

    A required name matches a family name (`requests` for a counter family) or any sample name
    (`requests_total`, `duration_seconds_bucket`).
    """
    from prometheus_client.parser import text_string_to_metric_families

    shown = redact(url)
    status, body, error = _get(url, timeout_s)
    evidence: dict[str, Any] = {"url": shown, "status": status, "required": list(required)}
    if error or status != 200:
        why = error or f"answered {status}: {_excerpt(body)}"
        evidence["error"] = why
        return CheckResult(ok=False, summary=f"metrics {shown}: no exposition ({why})", evidence=evidence)
    families: dict[str, dict[str, Any]] = {}
    names: set[str] = set()
    try:
        for family in text_string_to_metric_families(body):
            families[family.name] = {"type": family.type, "samples": len(family.samples)}
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
    except (ValueError, TypeError, IndexError) as exc:
        evidence["error"] = str(exc)
        return CheckResult(ok=False, summary=f"metrics {shown}: not valid Prometheus text: {exc}", evidence=evidence)
    missing = [name for name in required if name not in names]
    evidence.update(families=families, missing=missing)
    if not families:
        return CheckResult(ok=False, summary=f"metrics {shown}: parsed, but no metric exposed", evidence=evidence)
    if missing:
        return CheckResult(ok=False, summary=f"metrics {shown}: {len(missing)} required metric(s) missing: "
                                             f"{', '.join(missing)} ({len(families)} families exposed)",
                           evidence=evidence)
    return CheckResult(ok=True, summary=f"metrics {shown}: {len(families)} families parsed, "
                                        f"{len(required)} required present", evidence=evidence)


def _get(url: str, timeout_s: float) -> tuple[int | None, str, str | None]:
    """(status, body, error): an HTTP error status is an answer, a refused connection is an error."""
    answer = http.get(url, timeout_s)
    return answer.status, answer.text, answer.error


def _excerpt(body: str) -> str:
    return " ".join(body.split())[:120]


def _labels(metric: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return "{" + inner + "}" if inner else ""

"""Is it up? A database that answers a query, an HTTP endpoint that answers with the expected status.

>>> check_database("postgresql://app:s3cret@db:5432/prod").summary        # doctest: +SKIP
'database postgresql://app:***@db:5432/prod answers: SELECT 1 in 1.2 ms (PostgreSQL 16.2)'
>>> probe_http("http://127.0.0.1:8080/health").ok                          # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import psycopg

from upgate.checks import http
from upgate.checks.result import CheckResult
from upgate.checks.secrets import redact

_BODY_EXCERPT_CHARS = 500
_JSON_BODY_MAX_CHARS = 20_000


def check_database(url: str, timeout_s: float = 5.0) -> CheckResult:
    """Connect, run `SELECT 1`, read the server version; latency_ms is connect plus query."""
    shown = redact(url)
    started = time.monotonic()
    try:
        # libpq's connect_timeout is whole seconds, at least 2
        with psycopg.connect(url, connect_timeout=max(2, math.ceil(timeout_s)), autocommit=True) as conn:
            connected = time.monotonic()
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(timeout_s * 1000)}ms",))
            query_started = time.monotonic()
            conn.execute("SELECT 1").fetchone()
            query_ms = (time.monotonic() - query_started) * 1000
            version = conn.execute("SHOW server_version").fetchone()
            database, user = conn.info.dbname, conn.info.user
    except (psycopg.Error, OSError) as exc:
        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        error = redact(_first_line(exc))
        return CheckResult(
            ok=False,
            summary=f"database {shown} does not answer: {error}",
            evidence={
                "url": shown,
                "error": error,
                "error_type": type(exc).__name__,
                "elapsed_ms": elapsed_ms,
            },
        )
    server_version = str(version[0]) if version else "unknown"
    connect_ms = round((connected - started) * 1000, 1)
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    return CheckResult(
        ok=True,
        summary=f"database {shown} answers: SELECT 1 in {query_ms:.1f} ms (PostgreSQL {server_version})",
        evidence={
            "url": shown,
            "database": database,
            "user": user,
            "server_version": server_version,
            "connect_ms": connect_ms,
            "query_ms": round(query_ms, 2),
            "latency_ms": latency_ms,
        },
    )


def probe_http(url: str, timeout_s: float = 2.0, expect_status: int = 200) -> CheckResult:
    """GET `url` (proxies ignored) and compare the status; evidence has status, latency_ms and the body."""
    shown = redact(url)
    answer = http.get(url, timeout_s)
    if not answer.answered:
        return CheckResult(
            ok=False,
            summary=f"GET {shown}: no answer ({answer.error}) after {answer.elapsed_ms:.0f} ms",
            evidence={"url": shown, "error": answer.error, "elapsed_ms": answer.elapsed_ms,
                      "expect_status": expect_status},
        )
    status, latency_ms = answer.status, answer.elapsed_ms
    body = _body_excerpt(answer.body, answer.content_type)
    evidence: dict[str, Any] = {
        "url": shown,
        "status": status,
        "expect_status": expect_status,
        "latency_ms": latency_ms,
        "content_type": answer.content_type,
        "body": body,
    }
    if status == expect_status:
        return CheckResult(
            ok=True, summary=f"GET {shown}: {status} in {latency_ms:.1f} ms", evidence=evidence
        )
    excerpt = body if isinstance(body, str) else json.dumps(body, default=str)
    excerpt = " ".join(excerpt.split())[:120]
    return CheckResult(
        ok=False,
        summary=f"GET {shown}: expected {expect_status}, got {status} in {latency_ms:.1f} ms ({excerpt})",
        evidence=evidence,
    )


def _body_excerpt(raw: bytes, content_type: str | None) -> Any:
    text = raw.decode("utf-8", errors="replace")
    looks_json = "json" in (content_type or "") or text.lstrip().startswith(("{", "["))
    if looks_json and len(text) <= _JSON_BODY_MAX_CHARS:
        try:
            return json.loads(text)
        except ValueError:
            pass
    return redact(text[:_BODY_EXCERPT_CHARS])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

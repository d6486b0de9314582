"""The one HTTP client of checks, gates, deploys and fixtures: `requests`, with timeouts, proxies ignored.

    >>> answer = get("http://127.0.0.1:8080/health", timeout_s=2.0)        # doctest: +SKIP
    >>> answer.status, answer.json(), answer.elapsed_ms                      # doctest: +SKIP
    (200, {'status': 'ok'}, 1.4)
    >>> get("http://127.0.0.1:1/health").error                               # doctest: +SKIP
    'connection refused'

Nothing here raises for the network: an `Answer` either has a `status` (any status, 5xx included,
is an answer) or an `error` naming what went wrong in words ("timed out", "connection refused"),
secrets in the URL redacted. Each call opens its own connection (a session that is closed after the
call): a check sees the service as a new client does, and on a port shared by two servers
(SO_REUSEPORT) each call may reach either. Proxies from the environment are ignored: upgate talks to
the service itself. (The downtime prober, upgate/core/probe.py, keeps its own tuned client.)
"""

from __future__ import annotations

import json as jsonlib
import time
from dataclasses import dataclass
from typing import Any

import requests

from upgate.checks.secrets import redact

USER_AGENT = "upgate"


@dataclass(frozen=True)
class Answer:
    """One request's outcome: `status` and `body` when the server answered, else `error`."""

    url: str
    status: int | None
    body: bytes
    content_type: str | None
    elapsed_ms: float
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.status is not None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON (ValueError when it is not)."""
        return jsonlib.loads(self.body or b"null")

    def describe(self) -> str:
        """'200', or the error in words, for a summary line."""
        return str(self.status) if self.answered else f"no answer ({self.error})"


def session() -> requests.Session:
    """A session that ignores proxy settings from the environment and names itself upgate."""
    s = requests.Session()
    s.trust_env = False
    s.headers["User-Agent"] = USER_AGENT
    return s


def request(method: str, url: str, timeout_s: float = 2.0, json: Any = None,
            headers: dict[str, str] | None = None) -> Answer:
    """One request on its own connection; never raises for network errors (see `Answer`)."""
    started = time.monotonic()
    try:
        with session() as s:
            response = s.request(method, url, json=json, headers=headers, timeout=timeout_s)
            body = response.content
    except (requests.RequestException, ValueError) as exc:
        return Answer(redact(url), None, b"", None, _ms(started), describe_error(exc))
    return Answer(redact(url), response.status_code, body, response.headers.get("Content-Type"), _ms(started))


def get(url: str, timeout_s: float = 2.0, headers: dict[str, str] | None = None) -> Answer:
    return request("GET", url, timeout_s, headers=headers)


def post_json(url: str, payload: Any, timeout_s: float = 30.0) -> Answer:
    return request("POST", url, timeout_s, json=payload)


def get_json(url: str, timeout_s: float = 2.0) -> tuple[int, Any]:
    """(status, JSON body) of a GET; (status, None) for a body that is not JSON; (0, error) when nothing answered."""
    answer = get(url, timeout_s, headers={"Accept": "application/json"})
    if not answer.answered:
        return 0, answer.error
    try:
        return int(answer.status or 0), answer.json()
    except ValueError:
        return int(answer.status or 0), None


def describe_error(exc: BaseException) -> str:
    """What went wrong, in words a summary can carry (secrets redacted)."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        text = str(exc)
        if "Connection refused" in text:
            return "connection refused"
        if "Connection reset" in text:
            return "connection reset"
        if "RemoteDisconnected" in text or "without response" in text:
            return "connection closed without an answer"
        if "Name or service not known" in text or "nodename nor servname" in text or "NameResolutionError" in text:
            return "host name not found"
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema |
                  requests.exceptions.InvalidSchema):
        return f"not a valid URL ({redact(str(exc))})"
    text = redact(str(exc).strip()) or type(exc).__name__
    return text.splitlines()[0][:300]


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)

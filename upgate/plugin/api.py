"""The public fixtures for writing your own gates (docs/writing-gates.md): stable names, typed.

    @pytest.mark.upgate_component("app", "database")
    def test_a_note_written_through_the_api_is_stored(app_http, db_connect, evidence):
        created = app_http.post("/notes", json={"text": "upgate smoke"})
        assert created.status_code == 201, created.text
        with db_connect() as conn:
            assert conn.execute("SELECT 1 FROM notes WHERE id = %s", (created.json()["id"],)).fetchone()

| fixture | type | what |
| --- | --- | --- |
| `config` | `upgate.config.Config` | the validated upgate.toml (environment overrides applied) |
| `phase` | `str` | "pre", "post" or "rollback" |
| `run_dir` | `upgate.core.runs.RunDir` | the run folder; `save_baseline(name, data)` in pre, `load_baseline(name)` after |
| `db_connect` | `DbConnect`: `(**kwargs) -> psycopg.Connection` | a new connection to [database] url, closed after the gate |
| `app_http` | `AppSession` (a `requests.Session`) | relative URLs start at [app] base_url; [app] timeout_s by default |
| `evidence` | `(name: str, data: CheckResult or JSON value) -> None` | attached to the gate: Allure, evidence/ |

`config`, `phase`, `run_dir` and `evidence` live in `upgate.plugin.pytest_plugin`; the two below are here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import psycopg
import pytest
import requests

from upgate.config import AppConfig, Config


class DbConnect(Protocol):
    """`db_connect(**kwargs)`: psycopg.connect to the configured database (autocommit unless told otherwise)."""

    def __call__(self, **kwargs: Any) -> psycopg.Connection[Any]: ...


class AppSession(requests.Session):
    """A requests.Session whose relative URLs start at the app's base URL, with its timeout by default.

    The environment's proxies are not used: the gate talks to the app it gates, not through a proxy.
    """

    def __init__(self, base_url: str, timeout_s: float) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.trust_env = False
        self.headers["User-Agent"] = "upgate-gate"

    def url(self, path: str) -> str:
        if "://" in path:
            return path
        return self.base_url + ("" if path.startswith("/") else "/") + path

    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout_s)
        target = url.decode() if isinstance(url, bytes) else url
        return super().request(method, self.url(target), *args, **kwargs)


@pytest.fixture
def db_connect(config: Config) -> Iterator[DbConnect]:
    """A factory of connections to [database] url; each is closed after the gate."""
    url = config.database.url
    if not url:
        pytest.skip("database not configured ([database] url or DATABASE_URL)")
    opened: list[psycopg.Connection[Any]] = []

    def connect(**kwargs: Any) -> psycopg.Connection[Any]:
        kwargs.setdefault("connect_timeout", max(1, int(config.database.connect_timeout_s)))
        kwargs.setdefault("autocommit", True)
        conn = psycopg.connect(url, **kwargs)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


@pytest.fixture
def app_http(app: AppConfig) -> Iterator[AppSession]:
    """A requests.Session on [app] base_url (`app_http.get("/health")`); skipped when [app] is not configured."""
    with AppSession(app.base_url, app.timeout_s) as session:
        yield session

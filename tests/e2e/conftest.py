"""A started reference target per test: `@pytest.mark.parametrize("target", ["good"], indirect=True)`.

The seeded row count is the test module's ROWS (default 3000).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from upgate.embedded.postgres import PostgresServer
from upgate.fixtures.demo import DemoTarget, start_target, stop_target


@pytest.fixture
def target(request: pytest.FixtureRequest, pg_server: PostgresServer, tmp_path: Path) -> Iterator[DemoTarget]:
    started = start_target(request.param, pg_server, tmp_path, rows=getattr(request.module, "ROWS", 3000))
    try:
        yield started
    finally:
        stop_target(started, pg_server)

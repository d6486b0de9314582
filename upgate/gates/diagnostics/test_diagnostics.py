"""Diagnostics: what an operator looks at when a gate failed (the guide's troubleshooting checklist).

The pipeline runs this family after any failed phase; its findings are evidence and never change the
verdict. A gate here fails when it finds something to act on (a long transaction, a lock wait, little
connection headroom); the log tail, the port owners and the list of failed gates are always attached.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import pytest

from upgate.checks.diagnostics import (
    connection_headroom,
    failed_gates,
    lock_waits,
    long_transactions,
    port_owners,
    tail_logs,
)
from upgate.checks.secrets import redact

pytestmark = pytest.mark.upgate_component("diagnostics")


@pytest.fixture
def conn(db_url, config) -> Iterator[psycopg.Connection]:
    try:
        connection = psycopg.connect(db_url, autocommit=True,
                                     connect_timeout=int(max(2, config.database.connect_timeout_s)))
    except psycopg.Error as exc:
        pytest.fail(f"database {redact(db_url)} does not answer: {redact(str(exc).strip())}", pytrace=False)
    with connection:
        yield connection


def test_failed_gates_listed(run_dir, evidence):
    files = sorted(p for p in run_dir.path.glob("gates-*.json") if not p.name.startswith("gates-diagnostics"))
    result = failed_gates(files)
    evidence("failed_gates", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("diagnostics", "database")
def test_no_long_transaction(conn, config, evidence):
    result = long_transactions(conn, config.diagnostics.long_transaction_s)
    evidence("long_transactions", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("diagnostics", "database")
def test_no_session_waits_for_a_lock(conn, evidence):
    result = lock_waits(conn)
    evidence("lock_waits", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("diagnostics", "database")
def test_connection_headroom(conn, evidence):
    result = connection_headroom(conn)
    evidence("connections", result)
    assert result.ok, result.summary


def test_service_log_tail(run_dir, config, evidence):
    base = config.source.parent
    paths = sorted(run_dir.logs.glob("service-*.log")) + [p if p.is_absolute() else base / p
                                                          for p in config.diagnostics.log_files]
    if not paths:
        pytest.skip("service logs not configured (no service-*.log in the run's logs/, no diagnostics.log_files)")
    result = tail_logs(paths, config.diagnostics.log_lines)
    evidence("log_tail", result)
    assert result.ok, result.summary


def _ports(config) -> list[int]:
    urls = [config.database.url]
    if config.app:
        urls.append(config.app.base_url)
    if config.monitoring:
        urls += [config.monitoring.redis_url, config.monitoring.prometheus_url]
    ports = set()
    for url in filter(None, urls):
        try:
            port = urlsplit(url).port
        except ValueError:
            continue
        if port:
            ports.add(port)
    for host in config.hosts:
        ports.update(int(p) for p in host.ports if isinstance(p, int) or str(p).isdigit())
    return sorted(ports)


def test_port_owners(config, evidence):
    ports = _ports(config)
    if not ports:
        pytest.skip("no TCP port configured (database, app, monitoring or hosts)")
    result = port_owners(ports)
    evidence("port_owners", result)
    assert result.ok, result.summary

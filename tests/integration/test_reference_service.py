"""The reference target for real: seeded PostgreSQL, the service as a process, the demo migrations.

.venv/bin/pytest -q tests/integration/test_reference_service.py
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from upgate.embedded.postgres import PostgresServer
from upgate.fixtures.reference import (
    PLANS,
    SCENARIO_BUILDS,
    SCENARIOS,
    apply_sql_file,
    fetch_json,
    free_port,
    migrations,
    read_pidfile,
    start_service,
    stop_pid,
    wait_ready,
)
from upgate.fixtures.seed import create_schema, seed
from upgate.fixtures.service import V1_COLUMNS, V2_COLUMNS


@dataclass
class RunningService:
    build: str
    port: int
    proc: subprocess.Popen[bytes]
    pidfile: Path
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return fetch_json(self.base_url + path)

    def post(self, path: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("POST", path, body=json.dumps(payload), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()


StartService = Callable[..., RunningService]


@pytest.fixture
def seeded_url(pg_url: str) -> str:
    create_schema(pg_url)
    seed(pg_url, rows=300)
    return pg_url


@pytest.fixture
def start(tmp_path: Path) -> Iterator[StartService]:
    """Factory: start a build on a free port (waiting for /ready unless told not to); all stopped afterwards."""
    started: list[RunningService] = []

    def _start(database_url: str, build: str = "v1", wait: bool = True) -> RunningService:
        port = free_port()
        name = f"{build}-{len(started)}"
        service = RunningService(
            build,
            port,
            start_service(database_url, port, build, tmp_path / f"{name}.pid", tmp_path / f"{name}.log"),
            tmp_path / f"{name}.pid",
            tmp_path / f"{name}.log",
        )
        started.append(service)
        if wait:
            wait_ready(service.base_url, timeout=20.0, proc=service.proc)
        else:
            _wait_health(service)
        return service

    try:
        yield _start
    finally:
        for service in started:
            stop_pid(service.proc.pid, timeout=10.0)


def _wait_health(service: RunningService, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert service.proc.poll() is None, service.log_path.read_text()
        try:
            if service.get("/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{service.base_url}/health never answered: {service.log_path.read_text()}")


def _apply(database_url: str, scenario: str, direction: str = "up") -> None:
    for path in migrations(scenario, direction):
        apply_sql_file(database_url, path)


def _new_log(**overrides: Any) -> dict[str, Any]:
    payload = {
        "session_id": str(uuid.uuid4()),
        "agent": "tester",
        "role": "user",
        "content": "Does the round trip keep every field intact, including unicode like café?",
        "metadata": {"source": "integration-test"},
        "tokens": 17,
    }
    payload.update(overrides)
    return payload


def test_seed_is_deterministic_and_realistic(pg_server: PostgresServer, seeded_url: str) -> None:
    other = pg_server.create_database("t")
    try:
        create_schema(other)
        assert seed(other, rows=300) == 300
        query = "SELECT md5(string_agg(concat_ws('|', id, session_id, agent, role, content, metadata, tokens, created_at), '/' ORDER BY id)) FROM episodic_logs"
        with psycopg.connect(seeded_url) as a, psycopg.connect(other) as b:
            assert a.execute(query).fetchone() == b.execute(query).fetchone()
            lengths = [n for (n,) in a.execute("SELECT length(content) FROM episodic_logs")]
        assert min(lengths) < 20 and max(lengths) > 100
        assert sum(n > 40 for n in lengths) > len(lengths) / 2
    finally:
        pg_server.drop_database(other)


def test_v1_is_healthy_and_ready(seeded_url: str, start: StartService) -> None:
    service = start(seeded_url, "v1")
    assert service.get("/health") == (200, {"status": "ok", "build": "v1", "version": "v1"})
    status, body = service.get("/ready")
    assert status == 200 and body["status"] == "ready"
    assert read_pidfile(service.pidfile) == service.proc.pid


def test_logs_round_trip(seeded_url: str, start: StartService) -> None:
    service = start(seeded_url, "v1")
    payload = _new_log()
    status, created = service.post("/logs", payload)
    assert status == 201, created
    assert {k: created[k] for k in payload} == payload
    assert service.get(f"/logs/{created['id']}") == (200, created)

    status, page = service.get("/logs?limit=5&after_id=10")
    assert status == 200
    assert [item["id"] for item in page["items"]] == [11, 12, 13, 14, 15]
    assert set(page["items"][0]) == set(V1_COLUMNS)

    assert service.get("/logs/999999")[0] == 404
    assert service.get("/logs?limit=nope")[0] == 400
    assert service.post("/logs", {"agent": "x"})[0] == 400


def test_metrics_count_requests(seeded_url: str, start: StartService) -> None:
    service = start(seeded_url, "v1")
    for _ in range(3):
        service.get("/health")
    service.get("/logs/999999")
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=5)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    lines = text.splitlines()
    assert 'upgate_ref_requests_total{path="/health",status="200"} 3' in lines
    assert 'upgate_ref_requests_total{path="/logs/{id}",status="404"} 1' in lines
    assert 'upgate_ref_build_info{build="v1",version="v1"} 1' in lines
    assert "upgate_ref_up 1" in lines
    assert "# TYPE upgate_ref_request_duration_seconds histogram" in lines
    count = next(line for line in lines if line.startswith("upgate_ref_request_duration_seconds_count "))
    inf = next(
        line for line in lines if line.startswith('upgate_ref_request_duration_seconds_bucket{le="+Inf"}')
    )
    assert count.split()[-1] == inf.split()[-1] and int(count.split()[-1]) >= 5  # /ready polls count too


def test_keep_alive_health_has_no_latency_floor(seeded_url: str, start: StartService) -> None:
    service = start(seeded_url, "v1")
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=5)
    latencies = []
    try:
        for _ in range(50):
            began = time.perf_counter()
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            latencies.append(time.perf_counter() - began)
            assert response.status == 200
    finally:
        conn.close()
    p50_ms = statistics.median(latencies) * 1000
    assert p50_ms < 5.0, f"p50 {p50_ms:.1f} ms on a keep-alive connection: Nagle/delayed-ACK floor?"


def test_v2_waits_for_its_columns(seeded_url: str, start: StartService) -> None:
    service = start(seeded_url, "v2", wait=False)
    status, body = service.get("/ready")
    assert status == 503
    assert body["missing_columns"] == ["cache_hit", "similarity_score", "last_verified"]
    assert "cache_hit, similarity_score, last_verified" in body["reason"]

    _apply(seeded_url, "good")
    assert wait_ready(service.base_url, timeout=10.0)["build"] == "v2"
    status, page = service.get("/logs?limit=3")
    assert status == 200 and set(page["items"][0]) == set(V2_COLUMNS)
    status, created = service.post("/logs", _new_log(cache_hit=True, similarity_score=0.5))
    assert status == 201 and created["cache_hit"] is True and created["similarity_score"] == 0.5


def test_good_migration_round_trips(seeded_url: str) -> None:
    def columns() -> list[str]:
        with psycopg.connect(seeded_url) as conn:
            return [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'episodic_logs' ORDER BY ordinal_position"
                )
            ]

    _apply(seeded_url, "good")
    assert columns() == list(V2_COLUMNS)
    _apply(seeded_url, "good", "down")
    assert columns() == list(V1_COLUMNS)


def test_broken_ready_build_never_gets_ready(seeded_url: str, start: StartService) -> None:
    _apply(seeded_url, "broken-deploy")
    service = start(seeded_url, "v2-broken-ready", wait=False)
    assert service.get("/health")[0] == 200
    status, body = service.get("/ready")
    assert status == 503 and "cache warmup never completes" in body["reason"]
    with pytest.raises(TimeoutError, match="cache warmup never completes"):
        wait_ready(service.base_url, timeout=1.0)


def test_contract_break_renames_content(seeded_url: str, start: StartService) -> None:
    _apply(seeded_url, "contract-break")
    service = start(seeded_url, "v2-contract-break")
    status, item = service.get("/logs/1")
    assert status == 200 and "text" in item and "content" not in item


def test_slow_build_is_several_times_slower(seeded_url: str, start: StartService) -> None:
    _apply(seeded_url, "slow")

    def samples_ms(service: RunningService) -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=5)
        samples = []
        for _ in range(15):
            began = time.perf_counter()
            conn.request("GET", "/logs?limit=100")
            conn.getresponse().read()
            samples.append((time.perf_counter() - began) * 1000)
        conn.close()
        return samples

    normal, slow = samples_ms(start(seeded_url, "v2")), samples_ms(start(seeded_url, "v2-slow"))
    # The 60 ms floor is certain; the ratio is loose because a busy CI box adds noise to both.
    assert min(slow) >= 60.0, f"fastest v2-slow read {min(slow):.1f} ms"
    assert statistics.median(slow) > 1.5 * statistics.median(normal), (
        f"v2 {statistics.median(normal):.1f} ms, v2-slow {statistics.median(slow):.1f} ms"
    )


def test_blocked_migration_drops_metadata(seeded_url: str, start: StartService) -> None:
    _apply(seeded_url, "blocked")
    service = start(seeded_url, "v1", wait=False)
    status, body = service.get("/ready")
    assert status == 503 and body["missing_columns"] == ["metadata"]
    _apply(seeded_url, "blocked", "down")
    with psycopg.connect(seeded_url) as conn:
        assert conn.execute("SELECT count(*) FROM episodic_logs WHERE metadata <> '{}'").fetchone() == (0,)


def test_sigterm_stops_cleanly(seeded_url: str, start: StartService) -> None:
    service = start(seeded_url, "v1")
    assert service.pidfile.exists()
    service.proc.terminate()
    assert service.proc.wait(timeout=10) == 0
    assert not service.pidfile.exists()
    log = service.log_path.read_text()
    assert "listening on" in log and "stopped" in log
    assert "GET /health" not in log  # request lines stay quiet


def test_stop_pid_reaps_its_own_child(seeded_url: str, start: StartService) -> None:
    service = start(seeded_url, "v1")
    pid = service.proc.pid
    assert stop_pid(pid, timeout=10.0) is True
    assert not Path(f"/proc/{pid}").exists()  # reaped, not left a zombie
    assert stop_pid(pid) is True  # already gone


def test_destructive_migration_really_loses_data(pg_url: str) -> None:
    create_schema(pg_url)
    seed(pg_url, rows=6000)
    snapshot = "SELECT id, content FROM episodic_logs ORDER BY id"
    with psycopg.connect(pg_url) as conn:
        before: dict[int, str] = dict(conn.execute(snapshot).fetchall())
    _apply(pg_url, "destructive")
    with psycopg.connect(pg_url) as conn:
        after: dict[int, str] = dict(conn.execute(snapshot).fetchall())
    lost = before.keys() - after.keys()
    truncated = [k for k in after if after[k] != before[k]]
    assert 3 <= len(lost) <= 40, f"{len(lost)} rows deleted"
    assert 5 <= len(truncated) <= 60, f"{len(truncated)} rows changed"
    assert all(len(after[k]) == 32 and before[k].startswith(after[k]) for k in truncated)

    _apply(pg_url, "destructive", "down")
    with psycopg.connect(pg_url) as conn:
        assert len(conn.execute(snapshot).fetchall()) == len(after)  # the down migration brings nothing back


def test_every_scenario_has_paired_migrations() -> None:
    assert sorted(SCENARIOS) == sorted(SCENARIO_BUILDS)
    for scenario in SCENARIOS:
        ups, downs = migrations(scenario, "up"), migrations(scenario, "down")
        assert [p.name.removesuffix(".up.sql") for p in ups] == [
            p.name.removesuffix(".down.sql") for p in downs[::-1]
        ]
        for path in ups + downs:
            text = path.read_text().upper()
            assert "BEGIN;" not in text and "COMMIT;" not in text, path
    assert (PLANS / "destructive" / "migrations" / "002_backfill_cache_stats.up.sql").exists()


def test_ready_answers_while_a_migration_holds_the_table(seeded_url: str, start: StartService) -> None:
    service = start(seeded_url, "v1")
    with psycopg.connect(seeded_url) as locker:
        locker.execute("LOCK TABLE episodic_logs IN ACCESS EXCLUSIVE MODE")
        began = time.perf_counter()
        status, _ = service.get("/ready")
        assert status == 200 and time.perf_counter() - began < 1.0
        locker.rollback()

"""Pre phase (this file is under pre/): the service answers its own smoke checks, and what the post phase
compares against is recorded in the run's baseline."""

from __future__ import annotations

import pytest

TABLE = "episodic_logs"  # the reference service's table; yours is whatever your service stores


@pytest.mark.upgate_component("database")
def test_the_service_table_answers_a_query(db_connect, run_dir, evidence):
    with db_connect() as conn:
        (count,) = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    run_dir.save_baseline("user/row_count", {"table": TABLE, "rows": count})
    evidence("row count", {"table": TABLE, "rows": count})
    assert count >= 0


@pytest.mark.upgate_component("app")
def test_the_first_logs_are_recorded(app_http, run_dir, evidence):
    response = app_http.get("/logs", params={"limit": 5})
    assert response.status_code == 200, f"GET /logs answered {response.status_code}: {response.text[:200]}"
    items = response.json()["items"]
    run_dir.save_baseline("user/first_logs", items)
    evidence("first logs", items)
    assert items, "GET /logs?limit=5 returned no item: nothing to compare after the upgrade"

"""Post phase (this file is under post/): the guide's post-upgrade functionality tests, as gates.

Database queries, the API endpoints, a data operation through the API, and a model call. Each asserts
with a message a person can act on; the model call runs only when a model endpoint is configured.
"""

from __future__ import annotations

import uuid

import pytest
import requests

TABLE = "episodic_logs"


@pytest.mark.upgate_component("database")
def test_database_queries_answer(db_connect, run_dir, evidence):
    with db_connect() as conn:
        (count,) = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    before = run_dir.load_baseline("user/row_count")
    evidence("row count", {"before": before, "after": count})
    assert before is not None, "no baseline row count: run the pre phase first"
    assert count >= before["rows"], f"{TABLE}: {before['rows']} rows before the upgrade, {count} after"


@pytest.mark.upgate_component("app")
@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
def test_api_endpoint_answers(app_http, path, evidence):
    response = app_http.get(path)
    evidence("answer", {"path": path, "status": response.status_code})
    assert response.status_code == 200, f"GET {path} answered {response.status_code}: {response.text[:200]}"


@pytest.mark.upgate_component("app", "database")
def test_a_log_written_through_the_api_reads_back(app_http, db_connect, evidence):
    new = {"session_id": str(uuid.uuid4()), "agent": "upgate", "role": "system", "content": "post-upgrade smoke",
           "tokens": 3}
    created = app_http.post("/logs", json=new)
    assert created.status_code == 201, f"POST /logs answered {created.status_code}: {created.text[:200]}"
    log_id = created.json()["id"]
    try:
        read = app_http.get(f"/logs/{log_id}")
        evidence("written and read", {"id": log_id, "status": read.status_code})
        assert read.status_code == 200, f"GET /logs/{log_id} answered {read.status_code} right after it was written"
        assert read.json()["content"] == new["content"], f"log {log_id} reads back other content: {read.json()}"
    finally:  # leave the data as it was: the row this gate wrote goes again
        with db_connect() as conn:
            conn.execute(f"DELETE FROM {TABLE} WHERE id = %s", (log_id,))


@pytest.mark.upgate_component("models.endpoint")
def test_the_model_answers_a_prompt(config, evidence):
    for model in (m for m in config.models if m.endpoint):
        url = model.endpoint.rstrip("/") + model.generate_path
        response = requests.post(url, json={"prompt": "Hello, world!", "max_new_tokens": 8}, timeout=model.timeout_s)
        evidence(f"{model.name} answer", {"status": response.status_code, "body": response.text[:500]})
        assert response.status_code == 200, f"{model.name}: POST {url} answered {response.status_code}"

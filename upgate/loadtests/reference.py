"""The reference service's default load: health, reads and writes of `episodic_logs` (Locust user classes).

    $ locust -f loadtests/reference.py --headless -u 10 -r 10 -t 10s -H http://127.0.0.1:8080

The performance gate runs this file as a library (`loadtests/runner.py`, in a child process); the request
names below are the endpoints the gate compares one by one between the baseline and the candidate.
Task weights: 1 health : 4 list : 4 get-by-id : 1 insert : 1 update : 1 delete (a read-mostly API that
also changes and removes existing rows: live write traffic for an upgrade to keep, docs/live-traffic.md).
An update changes `tokens` of an entry the user has read; a delete removes an entry this user created
earlier (reads keep finding the entries they list).
"""

from __future__ import annotations

import random
import uuid

from locust import FastHttpUser, between, task

AGENTS = ("planner", "researcher", "coder", "reviewer", "support-bot")


class LogsReader(FastHttpUser):
    """One client of the reference service: checks health, lists a page, opens entries."""

    abstract = True

    # The gate replaces this with constant_throughput(rate_per_user) so the offered load is fixed.
    wait_time = between(0.05, 0.15)
    ids: list[int]

    def on_start(self) -> None:
        self.ids = []
        self.session_id = str(uuid.uuid4())
        with self.client.get("/logs?limit=100", name="GET /logs (on start)", catch_response=True) as response:
            self._remember(response)

    def _remember(self, response: object) -> None:
        try:
            items = response.json().get("items", [])  # type: ignore[attr-defined]
        except Exception:
            return
        self.ids = [int(item["id"]) for item in items if "id" in item] or self.ids

    @task(1)
    def health(self) -> None:
        self.client.get("/health", name="GET /health")

    @task(4)
    def list_logs(self) -> None:
        after = random.choice(self.ids) if self.ids else 0
        self.client.get(f"/logs?limit=20&after_id={after}", name="GET /logs")

    @task(4)
    def get_log(self) -> None:
        if not self.ids:
            self.list_logs()
            return
        self.client.get(f"/logs/{random.choice(self.ids)}", name="GET /logs/{id}")


class ReferenceUser(LogsReader):
    """The default load: the reader's tasks plus new entries, updates of existing ones and deletes."""

    created: list[int]

    def on_start(self) -> None:
        super().on_start()
        self.created = []

    @task(1)
    def write_log(self) -> None:
        with self.client.post(
            "/logs",
            json={
                "session_id": self.session_id,
                "agent": random.choice(AGENTS),
                "role": "user",
                "content": "load test turn from upgate's performance gate",
                "metadata": {"source": "upgate-loadtest"},
                "tokens": random.randint(5, 200),
            },
            name="POST /logs",
            catch_response=True,
        ) as response:
            try:
                self.created.append(int(response.json()["id"]))
            except Exception:
                pass

    @task(1)
    def update_log(self) -> None:
        if not self.ids:
            return
        with self.client.patch(f"/logs/{random.choice(self.ids)}", json={"tokens": random.randint(5, 200)},
                               name="PATCH /logs/{id}", catch_response=True) as response:
            if response.status_code == 404:  # another user (or a migration) removed it: not a failure
                response.success()

    @task(1)
    def delete_log(self) -> None:
        if not self.created:
            return
        with self.client.delete(f"/logs/{self.created.pop(0)}", name="DELETE /logs/{id}",
                                catch_response=True) as response:
            if response.status_code == 404:
                response.success()


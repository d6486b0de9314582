"""A plain file (not under pre/ or post/): it would run in post only; the marker adds rollback verification.

After an upgrade, and again after a rollback, the logs the old version served read back unchanged.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.upgate_phase("post", "rollback"), pytest.mark.upgate_component("app")]


def test_the_first_logs_read_back(app_http, run_dir, phase, evidence):
    before = run_dir.load_baseline("user/first_logs")
    assert before, "no baseline of the first logs: run the pre phase first"
    changed = []
    for item in before:
        now = app_http.get(f"/logs/{item['id']}")
        if now.status_code != 200 or now.json().get("content") != item["content"]:
            changed.append(item["id"])
    evidence("first logs", {"phase": phase, "checked": [i["id"] for i in before], "changed": changed})
    assert not changed, f"logs {changed} no longer read back as they did before the upgrade ({phase})"

"""The reference plans while the Locust profile reads, inserts, updates and deletes rows through the service
(`upgate demo --scenario live-locust-*`): the verdicts are the ones without load, live writes never damage.
Each test takes ~20 s (marker `live`)."""

from __future__ import annotations

import pytest

from tests.e2e.support import run_upgate
from upgate.fixtures.live_load import locust_load

pytestmark = [pytest.mark.e2e, pytest.mark.live]

ROWS = 3000


def _say(message: str) -> None:
    print(message)


def _writes(stats: dict) -> int:
    return sum(s["requests"] - s["failures"] for name, s in stats.items() if name.split()[0] in ("POST", "PATCH",
                                                                                                 "DELETE"))


@pytest.mark.quick
@pytest.mark.parametrize("target", ["live-locust-good"], indirect=True)
def test_good_plan_under_locust_writes_is_upgraded(target, tmp_path):
    with locust_load(target.base_url, tmp_path, _say) as stats:
        proc, summary = run_upgate(target, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert _writes(stats) > 0, stats
    live = summary["live"]
    assert live["mode"] == "decode" and live["unknown_xids"] == [] and live["transactions"].get("live", 0) > 0


@pytest.mark.parametrize("target", ["live-locust-destructive"], indirect=True)
def test_destructive_plan_under_locust_writes_is_rolled_back_keeping_them(target, tmp_path):
    with locust_load(target.base_url, tmp_path, _say) as stats:
        proc, summary = run_upgate(target, tmp_path)
    assert proc.returncode == 20, proc.stdout[-3000:]
    assert _writes(stats) > 0, stats
    live = summary["live"]
    assert live["kept"]["discarded"] == 0 and live["kept"]["kept"] == live["kept"]["live"] > 0

"""`upgate init` against the demo target: the config it writes, plus the migrate and deploy keys the demo knows,
gives `upgate run` the same verdict as the demo's own plan."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

from tests.e2e.support import run_upgate
from upgate.embedded.postgres import PostgresServer
from upgate.fixtures.demo import SCENARIOS, DemoTarget, start_target, stop_target

pytestmark = pytest.mark.e2e

ROWS = 2000


def upgate(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "MONITORING_URL")}
    return subprocess.run([sys.executable, "-m", "upgate.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=environ | env, timeout=600)


def init_config(target: DemoTarget, folder: Path) -> Path:
    """`upgate init` on the running target (Redis and Prometheus from the environment, as an operator has them),
    then the plan's [migrate] and [deploy] appended: what the demo knows and init cannot."""
    plan = tomllib.loads(target.config.read_text())
    out = folder / "service" / "upgate.toml"  # beside the demo's own upgate.toml, which init must not touch
    out.parent.mkdir()
    env = {"REDIS_URL": plan["monitoring"]["redis_url"], "MONITORING_URL": plan["monitoring"]["prometheus_url"]}
    made = upgate("init", "--database-url", target.database_url, "--app-url", target.base_url, "--output", str(out),
                  "--name", "reference-service", cwd=folder, env=env)
    assert made.returncode == 0, made.stdout + made.stderr
    written = tomllib.loads(out.read_text())
    assert written["integrity"]["tables"] == ["episodic_logs"] and written["integrity"]["keys"] == {
        "episodic_logs": ["id"]}
    assert written["app"]["health_path"] == "/health" and written["app"]["ready_path"] == "/ready"
    assert written["app"]["metrics_path"] == "/metrics"
    assert written["monitoring"] == {"redis_url": env["REDIS_URL"], "prometheus_url": env["MONITORING_URL"]}
    checked = upgate("check-config", "--config", str(out), cwd=folder, env={})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with out.open("a", encoding="utf-8") as fh:
        fh.write("\n# Added by the test: what the demo knows about its plan.\n")
        fh.write(tomli_w.dumps({"migrate": plan["migrate"], "deploy": plan["deploy"]}))
    return out


# make test keeps destructive (an init config that gated nothing would pass good); good is in the long tier.
@pytest.mark.parametrize("scenario", [pytest.param("good", marks=pytest.mark.slow), "destructive"])
def test_the_init_config_gives_the_demo_plans_verdict(scenario: str, pg_server: PostgresServer,
                                                       tmp_path: Path) -> None:
    folder = tmp_path / "init"
    folder.mkdir()
    target = start_target(scenario, pg_server, folder, rows=ROWS)
    try:
        config = init_config(target, folder)
        proc = upgate("run", "--config", str(config), "--reports", str(folder / "reports"), cwd=folder, env={})
    finally:
        stop_target(target, pg_server)
    expected = SCENARIOS[scenario].expect
    assert proc.returncode == {"UPGRADED": 0, "ROLLED_BACK": 20}[expected.value], proc.stdout[-4000:] + proc.stderr
    assert f"VERDICT: {expected.value}" in proc.stdout
    if scenario != "good":
        return
    # The demo's own plan on a target of its own, side by side.
    own_folder = tmp_path / "own"
    own_folder.mkdir()
    own = start_target(scenario, pg_server, own_folder, rows=ROWS)
    try:
        own_proc, summary = run_upgate(own, own_folder)
    finally:
        stop_target(own, pg_server)
    assert own_proc.returncode == proc.returncode and summary["verdict"] == expected.value

"""`upgate demo`: a real gated upgrade of the reference service, on embedded defaults, cleaned up after.

    >>> outcome = run_demo("destructive", rows=100_000)     # doctest: +SKIP
    >>> outcome.exit_code
    20

Each scenario is a plan under `fixtures/plans/<name>/`: its migrations and an `upgate.toml.in` template
whose ${placeholders} the demo fills with the target it started (database URL, port, pidfile, python).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from string import Template

from upgate.config import load_config
from upgate.console import Console
from upgate.embedded import PostgresServer, embedded_postgres, find_pg_tool
from upgate.errors import UpgateError, Verdict
from upgate.pipeline import RunOptions, RunOutcome, run
from upgate.steps.deploy.process import stop_pid


@dataclass(frozen=True)
class Scenario:
    description: str
    expect: Verdict


SCENARIOS: dict[str, Scenario] = {
    "good": Scenario("v1 -> v2, the guide's add-columns migration: UPGRADED", Verdict.UPGRADED),
    "destructive": Scenario("a backfill that deletes and truncates rows: integrity names them, restore, ROLLED_BACK",
                            Verdict.ROLLED_BACK),
    "broken-deploy": Scenario("a v2 whose /ready never turns healthy: ROLLED_BACK, v1 serving again",
                              Verdict.ROLLED_BACK),
    "blocked": Scenario("a migration that drops a column without allowing it: BLOCKED, nothing touched",
                        Verdict.BLOCKED),
    "model-good": Scenario("the served model is swapped for a slightly retrained one, within the drift "
                           "thresholds: UPGRADED", Verdict.UPGRADED),
    "model-regression": Scenario("the new model's answers drift past the thresholds: the old model is swapped "
                                 "back and serves again, ROLLED_BACK", Verdict.ROLLED_BACK),
    "slow": Scenario("v2-slow is ~3x slower on reads: the performance gate (Locust, Mann-Whitney U) names the "
                     "endpoints, ROLLED_BACK", Verdict.ROLLED_BACK),
    "contract-break": Scenario("v2 renames a response field of /logs: the API contract gate names it, ROLLED_BACK",
                               Verdict.ROLLED_BACK),
    "locking": Scenario("a migration rewrites episodic_logs under ACCESS EXCLUSIVE for longer than the plan's "
                        "lock budget: BLOCKED, estimate and budget printed", Verdict.BLOCKED),
}


@dataclass
class DemoTarget:
    """A running reference target: where it lives and the config that gates it."""

    folder: Path
    database_url: str
    base_url: str
    pidfile: Path
    config: Path
    pgdata: Path | None

    def save(self) -> None:
        data = {k: str(v) if v is not None else None for k, v in asdict(self).items()}
        (self.folder / "target.json").write_text(json.dumps(data, indent=2) + "\n")


def plans_folder() -> Path:
    from fixtures.reference import PLANS

    return Path(PLANS)


def write_config(scenario: str, folder: Path, database_url: str, port: int, pidfile: Path, **extra: str) -> Path:
    plan = plans_folder() / scenario
    template = Template((plan / "upgate.toml.in").read_text(encoding="utf-8"))
    text = template.substitute(
        database_url=database_url,
        base_url=f"http://127.0.0.1:{port}",
        port=port,
        pidfile=str(pidfile),
        python=sys.executable,
        plan=str(plan),
        workdir=str(Path(__file__).resolve().parent.parent),
        bin_dir=str(Path(find_pg_tool("pg_dump")).parent),
        **extra,
    )
    target = folder / "upgate.toml"
    target.write_text(text, encoding="utf-8")
    return target


def _say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def start_target(scenario: str, server: PostgresServer, folder: Path, rows: int) -> DemoTarget:
    """Create and seed a database, start the reference service v1 on a free port, write the plan's config."""
    from fixtures.reference import free_port, start_service, wait_ready
    from fixtures.seed import create_schema, seed

    database_url = server.create_database("upgate_demo")
    create_schema(database_url)
    t0 = time.monotonic()
    _say(f"seeding {rows:,} rows into episodic_logs ...")
    seed(database_url, rows=rows)
    _say(f"seeded in {time.monotonic() - t0:.1f} s")
    port = free_port()
    pidfile = folder / "service.pid"
    base_url = f"http://127.0.0.1:{port}"
    from fixtures.model_target import prepare_models

    models = prepare_models(scenario, folder)  # model scenarios: the v1 model is served by /generate
    start_service(database_url, port, "v1", pidfile, folder / "service-v1.log",
                  extra_args=("--model-path", models["model_live"]) if models else ())
    wait_ready(base_url, timeout=30.0)
    _say(f"reference service v1 ready at {base_url} (pid {pidfile.read_text().strip()})")
    from fixtures.monitoring import start_monitoring

    monitoring = start_monitoring(folder, f"{base_url}/metrics")
    _say(f"monitoring: redis {monitoring['redis_url']}, prometheus {monitoring['prometheus_url']}")
    config = write_config(scenario, folder, database_url, port, pidfile, **(models or {}), **monitoring)
    return DemoTarget(folder, database_url, base_url, pidfile, config, None)


def stop_target(target: DemoTarget, server: PostgresServer | None) -> None:
    from fixtures.monitoring import stop_monitoring

    stop_monitoring(target.folder)
    try:
        pid = int(target.pidfile.read_text().strip())
        stop_pid(pid, 10.0)
    except (OSError, ValueError):
        pass
    if server is not None:
        with contextlib.suppress(Exception):
            server.drop_database(target.database_url)


@contextlib.contextmanager
def _server(keep: bool, root: Path | None = None) -> Iterator[PostgresServer]:
    url = os.environ.pop("DATABASE_URL", None)  # the demo's config names its own database
    if url:
        yield PostgresServer(url=url, bin_dir=None, embedded=False)
        return
    with embedded_postgres(root=root, keep=keep) as server:
        yield server


def run_demo(scenario: str, rows: int = 100_000, reports: Path = Path("reports")) -> RunOutcome:
    if scenario not in SCENARIOS:
        raise UpgateError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    folder = Path(tempfile.mkdtemp(prefix=f"upgate-demo-{scenario}-"))
    _say(f"scenario '{scenario}': {SCENARIOS[scenario].description}")
    try:
        with _server(keep=False) as server:
            _say("PostgreSQL " + ("embedded (pgserver)" if server.embedded else "from DATABASE_URL"))
            target = start_target(scenario, server, folder, rows)
            try:
                outcome = run(load_config(target.config), RunOptions(reports=reports, console=Console()))
            finally:
                stop_target(target, server)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    expected = SCENARIOS[scenario].expect
    mark = "as expected" if outcome.verdict == expected else f"UNEXPECTED (expected {expected.value})"
    _say(f"scenario '{scenario}' ended {outcome.verdict.value}, exit {outcome.exit_code}: {mark}")
    return outcome


def serve(scenario: str, rows: int = 100_000) -> DemoTarget:
    """Start a target and leave it running, for `pytest gates/pre --upgate-config <config>` by hand."""
    folder = Path(tempfile.mkdtemp(prefix="upgate-demo-serve-"))
    with _server(keep=True, root=folder / "pgdata") as server:
        target = start_target(scenario, server, folder, rows)
    target.pgdata = folder / "pgdata" if server.embedded else None
    target.save()
    print(f"config: {target.config}")
    print(f"  pytest gates/pre --upgate-config {target.config}")
    print(f"  upgate run --config {target.config}")
    print(f"stop it with: upgate demo --stop {folder}")
    return target


def stop_served(folder: Path) -> None:
    state = folder / "target.json"
    if not state.exists():
        raise UpgateError(f"{state}: not a folder made by `upgate demo --serve`")
    data = json.loads(state.read_text())
    target = DemoTarget(folder=folder, database_url=data["database_url"], base_url=data["base_url"],
                        pidfile=Path(data["pidfile"]), config=Path(data["config"]),
                        pgdata=Path(data["pgdata"]) if data.get("pgdata") else None)
    stop_target(target, None)
    if target.pgdata:
        subprocess.run([find_pg_tool("pg_ctl"), "-D", str(target.pgdata), "stop", "-m", "fast"],
                       capture_output=True, check=False)
    shutil.rmtree(folder, ignore_errors=True)
    print(f"stopped and removed {folder}")

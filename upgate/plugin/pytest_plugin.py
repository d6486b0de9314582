"""The gate fixtures and options: config, run folder, phase, evidence, baseline. No check logic here.

    $ pytest gates/pre --upgate-config upgate.toml                  # a new run folder under reports/runs/
    $ pytest gates/post --upgate-config upgate.toml                 # the latest run folder's baseline
    $ pytest gates/post --upgate-run-dir reports/runs/<id> --upgate-phase rollback
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from upgate.checks.result import CheckResult
from upgate.checks.secrets import redact
from upgate.config import AppConfig, Config, HostConfig, MonitoringConfig, find_config_path, load_config
from upgate.core.runs import RunDir, resolve_run
from upgate.errors import ConfigError
from upgate.plugin.api import app_http, db_connect  # noqa: F401  (the public fixtures, registered with this plugin)

if TYPE_CHECKING:
    from upgate.checks.migrations import Migration
    from upgate.checks.perf import LoadProfile
    from upgate.checks.rehearsal import Rehearsal
    from upgate.steps.migrate import Migrator

PHASES = ("pre", "post", "preview", "rollback", "diagnostics")

_results_key = pytest.StashKey[list[dict[str, Any]]]()
_evidence_key = pytest.StashKey[dict[str, list[str]]]()
_run_key = pytest.StashKey[RunDir]()
_phase_key = pytest.StashKey[str]()
_started_key = pytest.StashKey[float]()
_config_key = pytest.StashKey[Config]()
_not_gated_key = pytest.StashKey[dict[str, dict[str, Any]]]()
_user_key = pytest.StashKey[set[str]]()  # nodeids of the user's own gates
_phase_given_key = pytest.StashKey[bool]()  # the phase was given or follows from a shipped phase folder


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("upgate", "upgate gates")
    group.addoption("--upgate-config", default=None, help="upgate.toml to gate against (else UPGATE_CONFIG, ./upgate.toml)")
    group.addoption("--upgate-run-dir", default=None,
                    help="run folder for baseline and evidence (pre: a new one; post: the latest one)")
    group.addoption("--upgate-reports", default="reports", help="reports folder holding runs/ (default: reports)")
    group.addoption("--upgate-phase", default=None, choices=PHASES,
                    help="pre, post, preview (post gates against a candidate before traffic moves) or rollback "
                         "(post gates verifying a rollback against the baseline)")
    group.addoption("--upgate-no-extra", action="store_true", default=False,
                    help="run the shipped gates only, without the config's [gates] extra")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_results_key] = []
    config.stash[_evidence_key] = {}
    config.stash[_not_gated_key] = {}
    config.stash[_user_key] = set()
    config.addinivalue_line("markers", "upgate_component(*families): the gate families it needs (upgate/plugin/"
                            "families.py); deselected when one is not configured; the first is its Allure story")
    config.addinivalue_line("markers", "upgate_phase(*phases): the phases a user gate runs in (pre, post, "
                            "rollback); default: post, or pre under a pre/ folder")
    gating = config.getoption("upgate_config") is not None or any(_arg_phase(str(a)) for a in config.args)
    if gating:
        # Validate now, so a bad file is one clean "ERROR:" line instead of an error per gate.
        path = find_config_path(config.getoption("upgate_config"))
        try:
            config.stash[_config_key] = load_config(path)
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
        config.stash[_phase_key] = _phase_from_args(config)
        config.stash[_run_key] = _resolve_run_dir(config, config.stash[_phase_key])
        _add_user_gates(config)


def _arg_phase(arg: str) -> str | None:
    """The phase a command-line argument names: a gates/<phase> path, or upgate.gates.<phase> for --pyargs."""
    from upgate.plugin.user_gates import dotted_phase

    return dotted_phase(arg) or _phase_of(Path(arg.split("::")[0]).resolve())


def _add_user_gates(config: pytest.Config) -> None:
    """A session running a phase of the shipped gates runs the config's `[gates] extra` too (the same session)."""
    from upgate.plugin.user_gates import extra_args, runs_a_phase_folder

    cfg, phase = config.stash[_config_key], config.stash[_phase_key]
    shipped_phase = runs_a_phase_folder(config.args, cfg)
    config.stash[_phase_given_key] = config.getoption("upgate_phase") is not None or shipped_phase
    if shipped_phase and phase != "diagnostics" and not config.getoption("upgate_no_extra"):
        config.args.extend(extra_args(cfg, config.args))


def _phase_of(item_path: Path) -> str | None:
    parts = item_path.parts
    if "gates" in parts:
        idx = len(parts) - 1 - parts[::-1].index("gates")
        if idx + 1 < len(parts) and parts[idx + 1] in ("pre", "post", "diagnostics"):
            return parts[idx + 1]
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _select_user_gates(config, items)
    _deselect_unconfigured(config, items)
    explicit = config.getoption("upgate_phase")
    users = config.stash.get(_user_key, set())
    session_phase = config.stash.get(_phase_key, None)
    for item in items:
        user = item.nodeid in users
        folder_phase = _phase_of(Path(str(item.path)))
        if folder_phase is None and not user:
            continue
        phase = explicit or (session_phase if user else folder_phase) or "post"
        family = Path(str(item.path)).stem.removeprefix("test_")
        item.add_marker(pytest.mark.allure_label(phase, label_type="epic"))
        item.add_marker(pytest.mark.allure_label(family, label_type="feature"))
        item.add_marker(pytest.mark.allure_label(phase, label_type="parentSuite"))
        component = item.get_closest_marker("upgate_component")
        story = component.args[0] if component and component.args else family
        item.add_marker(pytest.mark.allure_label(story, label_type="story"))
        if user:
            item.add_marker(pytest.mark.allure_label("user gate", label_type="tag"))


def _select_user_gates(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Note which items are the user's own gates, and keep those of this phase (silently deselect the others)."""
    from upgate.plugin.user_gates import MARKER, check_phases, default_phase, is_user_gate

    cfg = config.stash.get(_config_key, None)
    if cfg is None:
        return
    phase = config.stash[_phase_key]
    users = config.stash[_user_key]
    keep: list[pytest.Item] = []
    other_phase: list[pytest.Item] = []
    for item in items:
        path = Path(str(item.path))
        if not is_user_gate(path, cfg):
            keep.append(item)
            continue
        users.add(item.nodeid)
        marker = item.get_closest_marker(MARKER)
        try:
            phases = check_phases(marker.args, item.nodeid) if marker else (default_phase(path, cfg.gates.extra),)
        except ValueError as exc:
            item.stash[_bad_family_key] = str(exc)
            keep.append(item)
            continue
        if config.stash.get(_phase_given_key, False) and phase not in phases:
            other_phase.append(item)
        else:
            keep.append(item)
    if other_phase:
        config.hook.pytest_deselected(items=other_phase)
        items[:] = keep


_bad_family_key = pytest.StashKey[str]()


def _deselect_unconfigured(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Gates of a family the config leaves out are deselected, not skipped: listed once as "not gated"."""
    from upgate.plugin.families import FAMILIES, MARKER, UnknownFamily, check_names, unconfigured

    cfg = config.stash.get(_config_key, None)
    if cfg is None:
        return
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    not_gated = config.stash[_not_gated_key]
    for item in items:
        marker = item.get_closest_marker(MARKER)
        names = [str(a) for a in marker.args] if marker else []
        try:
            check_names(names, item.nodeid)
        except UnknownFamily as exc:
            item.stash[_bad_family_key] = str(exc)  # fails at setup, naming the marker: never silently run
            keep.append(item)
            continue
        missing = unconfigured(names, cfg)
        if not missing:
            keep.append(item)
            continue
        dropped.append(item)
        for name in missing:
            entry = not_gated.setdefault(name, {"configure": FAMILIES[name].configure, "gates": 0})
            entry["gates"] += 1
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    not_gated = config.stash.get(_not_gated_key, {})
    if not_gated:
        terminalreporter.write_sep("-", "upgate: not gated (not configured; their gates were deselected)")
        for name, entry in sorted(not_gated.items()):
            terminalreporter.write_line(f"{name:<22} {entry['gates']:>3} gate(s); to gate it: {entry['configure']}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Allure: the phase is a parameter, so a post gate and its re-run proving a rollback are two tests
    in the report (not one test and its retry)."""
    if _bad_family_key in item.stash:
        pytest.fail(item.stash[_bad_family_key], pytrace=False)
    phase = item.config.stash.get(_phase_key, None)
    if phase is None or (_phase_of(Path(str(item.path))) is None and item.nodeid not in item.config.stash[_user_key]):
        return
    try:
        import allure

        allure.dynamic.parameter("phase", phase)
    except Exception:  # allure-pytest not active: nothing to label
        pass


# --- session fixtures ---------------------------------------------------------------------------


def need_extra(extra: str, what: str) -> None:
    """Fail the gate (never skip: the component was configured) with the pip command installing `extra`."""
    from upgate.extras import MissingExtra, require

    try:
        require(extra, what)
    except MissingExtra as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def config(pytestconfig: pytest.Config) -> Config:
    """The validated upgate.toml; a bad file stops the session with one clean error line."""
    if _config_key in pytestconfig.stash:
        return pytestconfig.stash[_config_key]
    path = find_config_path(pytestconfig.getoption("upgate_config"))
    try:
        return load_config(path)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


def _phase_from_args(config: pytest.Config) -> str:
    explicit = config.getoption("upgate_phase", None)
    if explicit:
        return str(explicit)
    for arg in config.args:
        found = _arg_phase(arg)
        if found:
            return found
    return "pre"


@pytest.fixture(scope="session")
def phase(pytestconfig: pytest.Config) -> str:
    """pre, post, or rollback (the post gates proving a rollback against the baseline)."""
    if _phase_key not in pytestconfig.stash:
        pytestconfig.stash[_phase_key] = _phase_from_args(pytestconfig)
    return pytestconfig.stash[_phase_key]


@pytest.fixture(scope="session")
def run_dir(pytestconfig: pytest.Config, phase: str) -> RunDir:
    """The run folder: --upgate-run-dir, else a new one for pre and the latest one for post."""
    if _run_key not in pytestconfig.stash:
        pytestconfig.stash[_run_key] = _resolve_run_dir(pytestconfig, phase)
    return pytestconfig.stash[_run_key]


def _resolve_run_dir(config: pytest.Config, phase: str) -> RunDir:
    """pre: --upgate-run-dir (created) or a new run folder; post, rollback: the named run or the latest."""
    explicit = config.getoption("upgate_run_dir")
    reports = Path(config.getoption("upgate_reports"))
    if phase == "pre":
        if not explicit:
            return RunDir.create(reports)
        run = RunDir(Path(explicit).resolve())
        run.baseline.mkdir(parents=True, exist_ok=True)
        return run
    try:
        return resolve_run(explicit, reports)
    except ConfigError as exc:
        option = f"--upgate-run-dir {explicit}: " if explicit else ""
        raise pytest.UsageError(f"{option}{exc}") from None


@pytest.fixture(scope="session")
def baseline_dir(run_dir: RunDir) -> Path:
    run_dir.baseline.mkdir(parents=True, exist_ok=True)
    return run_dir.baseline


@pytest.fixture(scope="session")
def db_url(config: Config) -> str:
    if not config.database.url:
        pytest.skip("database not configured ([database] url or DATABASE_URL)")
    return config.database.url


@pytest.fixture(scope="session")
def pg_tools(config: Config) -> Callable[[str], str]:
    from upgate.embedded.postgres import find_pg_tool

    def tool(name: str) -> str:
        try:
            return find_pg_tool(name, config.database.bin_dir)
        except FileNotFoundError as exc:
            pytest.fail(str(exc), pytrace=False)

    return tool


# --- evidence -----------------------------------------------------------------------------------


@pytest.fixture
def evidence(request: pytest.FixtureRequest, run_dir: RunDir, phase: str) -> Callable[..., None]:
    """Attach evidence to this gate: a CheckResult or any JSON-serialisable value (Allure + gates json).

    Files are `evidence/<phase>-<gate>-<label>.json`: a rollback's proof never overwrites the post gate's figures.
    """
    names = request.config.stash[_evidence_key].setdefault(request.node.nodeid, [])

    def attach(name: str, data: CheckResult | Any) -> None:
        payload = data.to_json() if isinstance(data, CheckResult) else data
        text = redact(json.dumps(payload, indent=2, default=str, sort_keys=True))
        names.append(name)
        folder = run_dir.path / "evidence"
        folder.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{phase}-{request.node.name}-{name}")
        (folder / f"{safe}.json").write_text(text + "\n", encoding="utf-8")
        try:
            import allure

            allure.attach(text, name=name, attachment_type=allure.attachment_type.JSON)
        except Exception:  # allure not active: the evidence file above is the record
            pass

    return attach


# --- results file the wrapper reads -------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" or report.failed or report.skipped:
        _record(item.config, report)
    return report


def _record(config: pytest.Config, report: pytest.TestReport) -> None:
    message = ""
    if report.skipped and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2]).removeprefix("Skipped: ")
    elif report.failed:
        message = _failure_message(report)
    outcome = "error" if report.failed and report.when != "call" else report.outcome
    config.stash[_results_key].append({
        "nodeid": report.nodeid,
        "source": "user" if report.nodeid in config.stash.get(_user_key, set()) else "upgate",
        "outcome": outcome,
        "seconds": round(report.duration, 3),
        "message": redact(message),
        "evidence": config.stash[_evidence_key].get(report.nodeid, []),
    })


def _failure_message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = str(crash.message) if crash is not None else str(report.longrepr)
    text = text.removeprefix("Failed: ").removeprefix("AssertionError: ")
    # The first paragraph is the gate's message; pytest's assertion rewrite adds the rest.
    return text.split("\nassert ")[0].strip()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_started_key] = time.time()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    run = config.stash.get(_run_key, None)
    if run is None:
        explicit = config.getoption("upgate_run_dir", None)
        if not explicit or not Path(explicit).is_dir():
            return
        run = RunDir(Path(explicit).resolve())
    phase = config.stash.get(_phase_key, None) or _phase_from_args(config)
    results = config.stash[_results_key]
    counts: dict[str, int] = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    run.write_json(run.gate_results(phase).name, {
        "phase": phase,
        "exitstatus": int(exitstatus),
        "counts": counts,
        "seconds": round(time.time() - config.stash.get(_started_key, time.time()), 3),
        "gates": results,
        "not_gated": config.stash.get(_not_gated_key, {}),
    })
    _allure_not_gated(config, phase)


def _allure_not_gated(config: pytest.Config, phase: str) -> None:
    """`not.gated.<phase>` in the Allure results' environment.properties (kept beside what is there)."""
    folder = config.getoption("allure_report_dir", None)
    not_gated = config.stash.get(_not_gated_key, {})
    if not folder or not not_gated:
        return
    path = Path(folder) / "environment.properties"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    key = f"not.gated.{phase}"
    lines = [line for line in lines if not line.startswith(key + "=")]
    lines.append(f"{key}={', '.join(sorted(not_gated))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- components ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def app(config: Config) -> AppConfig:
    if config.app is None:
        pytest.skip("app not configured ([app] base_url or UPGATE_APP_URL)")
    return config.app


@pytest.fixture(scope="session")
def load_profile(config: Config, app: AppConfig) -> LoadProfile:
    """The [performance] Locust profile against the app (the same one for baseline and candidate)."""
    from upgate.checks.perf import SHIPPED_LOCUSTFILE, LoadProfile

    perf = config.performance
    if perf is None:
        pytest.skip("performance not configured ([performance])")
    need_extra("perf", "the performance gates ([performance])")
    return LoadProfile(
        host=perf.host or app.base_url, locustfile=str(perf.locustfile or SHIPPED_LOCUSTFILE),
        user_classes=tuple(perf.user_classes), users=perf.users, spawn_rate=perf.spawn_rate,
        rate_per_user=perf.rate_per_user, warmup_s=perf.warmup_s, duration_s=perf.duration_s,
        local_workers=perf.workers, remote_workers=tuple(perf.remote_workers), worker_command=perf.worker_command,
        master_bind_host=perf.master_bind_host, master_host=perf.master_host, master_port=perf.master_port,
        worker_timeout_s=perf.worker_timeout_s, cpus=tuple(perf.generator_cpus))


@pytest.fixture(scope="session")
def target_pidfile(config: Config) -> Path | None:
    """The target's pidfile for resource impact: [performance] pidfile, else [deploy] pidfile; None if neither."""
    return (config.performance.pidfile if config.performance else None) or (
        config.deploy.pidfile if config.deploy else None)


@pytest.fixture(scope="session")
def migrator(config: Config) -> Migrator:
    """The configured migration tool ([migrate] kind: sql, command, alembic)."""
    from upgate.errors import StepFailed
    from upgate.steps.migrate import migrator_for

    if config.migrate is None:
        pytest.skip("migration not configured ([migrate])")
    try:
        return migrator_for(config)
    except StepFailed as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def migrations(config: Config, migrator: Migrator) -> list[Migration]:
    """The SQL files of a `kind = "sql"` plan (what squawk lints)."""
    from upgate.checks.migrations import load_migrations

    assert config.migrate is not None
    if config.migrate.kind != "sql" or config.migrate.directory is None:
        pytest.skip(f"no SQL files to lint: migrate.kind = {config.migrate.kind!r} runs the application's own tool")
    return load_migrations(config.migrate.directory)


@pytest.fixture(scope="session")
def rehearsal(db_url: str, migrator: Migrator, config: Config, pg_tools: Callable[[str], str],
              run_dir: RunDir) -> Rehearsal:
    """The plan rehearsed on one sampled clone (up, down if any, up), watched and timed; kept in the baseline."""
    from upgate.checks.rehearsal import rehearse_migration

    assert config.migrate is not None
    migrator.log_dir = run_dir.logs
    result = rehearse_migration(db_url, migrator, pg_tools("pg_dump"), psql=pg_tools("psql"),
                                allowed_destructive=config.migrate.allow_destructive,
                                sample_rows=config.migration_safety.sample_rows,
                                sample_tables=config.migrate.sample_tables)
    run_dir.save_baseline("rehearsal", result.to_json())
    return result


@pytest.fixture(scope="session")
def dry_run(rehearsal: Rehearsal) -> Rehearsal:
    """The rehearsal, under the name gates written before it had one use."""
    return rehearsal


@pytest.fixture(scope="session")
def monitoring(config: Config) -> MonitoringConfig:
    if config.monitoring is None:
        pytest.skip("monitoring not configured ([monitoring] or REDIS_URL / MONITORING_URL)")
    return config.monitoring


@pytest.fixture(scope="session")
def redis_url(config: Config) -> str:
    if config.monitoring is None or not config.monitoring.redis_url:
        pytest.skip("redis not configured ([monitoring] redis_url or REDIS_URL)")
    return config.monitoring.redis_url


@pytest.fixture(scope="session")
def prometheus_url(config: Config) -> str:
    if config.monitoring is None or not config.monitoring.prometheus_url:
        pytest.skip("prometheus not configured ([monitoring] prometheus_url or MONITORING_URL)")
    return config.monitoring.prometheus_url


@pytest.fixture(scope="session")
def infra_host(gated_host: HostConfig) -> Any:
    """The testinfra host of a `[[hosts]]` entry (connects lazily; test_host_answers proves it)."""
    from upgate.checks.hosts import connect_host

    return connect_host(gated_host.spec, sudo=gated_host.sudo)


def _integrity_tables(config: pytest.Config) -> list[str]:
    """The tables the integrity gates parametrize over: from the baseline after pre, else config/DB."""
    cfg = config.stash.get(_config_key, None)
    phase = config.stash.get(_phase_key, None)
    run = config.stash.get(_run_key, None)
    if cfg is None or run is None or not cfg.database.url:
        return []
    if phase in ("post", "preview", "rollback"):
        folder = run.baseline / "fingerprints"
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        return [json.loads(f.read_text(encoding="utf-8"))["table"] for f in files]
    if cfg.integrity.tables != "all":
        return list(cfg.integrity.tables)
    import psycopg

    from upgate.checks.integrity import list_tables, split_excluded

    try:
        with psycopg.connect(cfg.database.url, connect_timeout=int(cfg.database.connect_timeout_s)) as conn:
            return split_excluded(list_tables(conn), cfg.integrity.excluded())[0]
    except psycopg.Error:
        return ["(database unreachable)"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "gated_host" in metafunc.fixturenames:
        cfg = metafunc.config.stash.get(_config_key, None)
        hosts = list(cfg.hosts) if cfg is not None else []
        if hosts:
            ids = [re.sub(r"[^\w.@-]+", "_", h.label).strip("_") or "host" for h in hosts]
            metafunc.parametrize("gated_host", hosts, ids=ids, scope="session")
        else:
            metafunc.parametrize("gated_host", [pytest.param(None, marks=pytest.mark.skip(
                reason="hosts not configured ([[hosts]] spec = \"local://\" ...)"), id="no-hosts")])
    if "gated_table" in metafunc.fixturenames:
        tables = _integrity_tables(metafunc.config)
        if tables:
            metafunc.parametrize("gated_table", tables, scope="session")
        else:
            metafunc.parametrize("gated_table", [pytest.param(None, id="no-tables", marks=pytest.mark.skip(
                reason="no table to gate: database not configured, or no baseline fingerprints in the run folder"))])

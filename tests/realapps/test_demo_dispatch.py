"""`upgate demo` runs the real-app scenarios as it runs the reference service's: listed in --help and --list
(the Makefile's one source), `--serve`/`--stop`, and an unreachable package index is a clean usage error."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.realapps.support import need_venv
from upgate.cli import main
from upgate.fixtures import realapps
from upgate.fixtures.demo import REFERENCE_SCENARIOS, SCENARIOS
from upgate.fixtures.realapps.observe import listening_pids, serving_versions
from upgate.fixtures.reference import free_port

ROOT = Path(__file__).resolve().parents[2]


def demo(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "upgate.cli", "demo", *args], cwd=cwd, capture_output=True,
                          text=True, env={**environ, **(env or {})}, timeout=900)


def test_list_and_help_name_every_scenario_once(capsys) -> None:
    assert main(["demo", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed == list(SCENARIOS) == [*REFERENCE_SCENARIOS, *realapps.SCENARIOS]
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = capsys.readouterr().out
    for name in listed:
        assert re.search(rf"^  {re.escape(name)} +\S", help_text, re.M), name


def test_makefile_takes_the_scenarios_from_the_list() -> None:
    make = subprocess.run(["make", "-n", "demo-all"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "upgate demo --list" in make.stdout
    shown = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in SCENARIOS:
        assert name in shown.split(), name


@pytest.mark.slow  # the long tier (make test-slow): pip's own retries against a dead index
def test_an_unreachable_package_index_is_a_usage_error_naming_the_app(tmp_path) -> None:
    dead = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    environ.update(UPGATE_REALAPPS_CACHE=str(tmp_path / "cache"), PIP_CONFIG_FILE=os.devnull, PIP_RETRIES="0",
                   PIP_TIMEOUT="2", PIP_INDEX_URL=f"http://127.0.0.1:{dead}/simple", PIP_NO_CACHE_DIR="1")
    proc = subprocess.run([sys.executable, "-m", "upgate.cli", "demo", "--scenario", "gunicorn-deploy-good"],
                          cwd=tmp_path, capture_output=True, text=True, env=environ, timeout=600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "scenario 'gunicorn-deploy-good' cannot start: cannot install gunicorn from the package index" \
        in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.realapps
def test_demo_runs_a_real_app_scenario(tmp_path) -> None:
    need_venv("gunicorn")
    proc = demo("--scenario", "gunicorn-deploy-good", "--reports", str(tmp_path / "reports"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "scenario 'gunicorn-deploy-good' ended UPGRADED, exit 0: as expected" in proc.stdout


@pytest.mark.realapps
def test_serve_leaves_the_old_version_running_and_stop_removes_it(tmp_path) -> None:
    need_venv("gunicorn")
    served = demo("--scenario", "gunicorn-deploy-leftover-worker", "--serve", cwd=tmp_path)
    assert served.returncode == 0, served.stdout + served.stderr
    folder = Path(re.search(r"upgate demo --stop (\S+)", served.stdout).group(1))  # type: ignore[union-attr]
    try:
        target = realapps.load_target(folder)
        assert serving_versions(target.base_url, target.version_key) == {"v1-escaping"}
        assert f"config: {target.config}" in served.stdout
    finally:
        stopped = demo("--stop", str(folder), cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert listening_pids(target.port) == set(), "a process of the served target (the escaped daemon?) still listens"
    assert not folder.exists()

"""The CI workflows parse, and the deploy gate maps every upgate exit code to a job outcome."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import yaml

from upgate.errors import EXIT_CODES

WORKFLOWS = Path(__file__).resolve().parents[2] / ".github" / "workflows"


def load(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    assert True in doc or "on" in doc, f"{name}: no trigger"  # YAML 1.1 reads a bare `on` as True
    return doc


def test_ci_runs_make_test():
    steps = load("ci.yml")["jobs"]["test"]["steps"]
    assert any(s.get("run", "").strip() == "make test" for s in steps)


def test_deploy_gate_maps_each_exit_code_and_uploads_the_reports():
    doc = load("deploy-gate.yml")
    steps = doc["jobs"]["upgrade"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "upgate run" in runs and "upgate report" in runs
    mapping = next(s["run"] for s in steps if s.get("name", "").startswith("Map the exit code"))
    handled = {int(c) for c in re.findall(r"^\s*(\d+)\)", mapping, re.M)}
    assert set(EXIT_CODES.values()) <= handled
    uploads = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    paths = "\n".join(s["with"]["path"] for s in uploads)
    assert "allure-results" in paths and "allure-report" in paths
    assert all(s.get("if") == "always()" for s in uploads)
    assert doc["jobs"]["page"]["if"].endswith("== '30'")


def _demo_step() -> str:
    steps = load("ci.yml")["jobs"]["test"]["steps"]
    return next(s["run"] for s in steps if s.get("name", "").startswith("Demo scenarios"))


def _run_demo_step(tmp_path: Path, codes: dict[str, int]) -> subprocess.CompletedProcess[str]:
    """The step as GitHub runs it (`bash -e`), with an `upgate` that exits with `codes[scenario]`."""
    stub = tmp_path / "upgate"
    table = " ".join(f"{k}) exit {v};;" for k, v in codes.items())
    stub.write_text(f'#!/usr/bin/env bash\ncase "$3" in {table} *) exit 99;; esac\n')
    stub.chmod(0o755)
    script = tmp_path / "step.sh"
    script.write_text(_demo_step())
    return subprocess.run(["bash", "-e", str(script)], env={**os.environ, "UPGATE": str(stub)}, capture_output=True,
                          text=True, timeout=60)


def test_demo_step_passes_when_every_scenario_ends_as_expected(tmp_path):
    done = _run_demo_step(tmp_path, {"good": 0, "destructive": 20, "broken-deploy": 20, "blocked": 10})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "destructive exit 20 (expected 20)" in done.stdout


def test_demo_step_fails_on_a_wrong_exit_code_and_runs_every_scenario(tmp_path):
    done = _run_demo_step(tmp_path, {"good": 0, "destructive": 0, "broken-deploy": 20, "blocked": 10})
    assert done.returncode != 0
    assert "demo destructive exited 0, expected 20" in done.stdout
    assert "blocked exit 10 (expected 10)" in done.stdout  # the scenarios after the wrong one still ran
def test_deploy_gate_installs_upgate_with_the_extras_the_config_needs():
    doc = load("deploy-gate.yml")
    env = doc["jobs"]["upgrade"]["env"]
    assert "UPGATE_EXTRAS" in env and "TORCH_INDEX_URL" in env
    install = next(s["run"] for s in doc["jobs"]["upgrade"]["steps"] if s.get("name", "").startswith("Install upgate"))
    assert '[$UPGATE_EXTRAS]' in install and 'pip install "$spec"' in install
    assert install.index("torch==2.13.0") < install.index('pip install "$spec"')  # the CPU build first


def test_readme_and_docs_link_only_inside_the_repository():
    root = WORKFLOWS.parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            assert "://" not in target, f"{page.name}: link outside the repository: {target}"
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
    assert len((root / "README.md").read_text().splitlines()) < 250

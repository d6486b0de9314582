"""The CI workflows parse, and the deploy gate maps every upgate exit code to a job outcome."""

from __future__ import annotations

import re
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

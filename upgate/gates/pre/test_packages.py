"""Pre-gate: the Python environment [packages] upgrades. Its installed set is recorded (the rollback's proof),
the app's own tests pass before anything changes, and the candidate resolves (pip's dry run)."""

from __future__ import annotations

import pytest

from upgate.checks.packages import PipFailed, candidate_args, installed_set, pip, run_app_tests

pytestmark = pytest.mark.upgate_component("packages")


@pytest.fixture(scope="module")
def packages(config):
    if config.packages is None:
        pytest.skip("packages not configured ([packages])")
    return config.packages


def test_installed_packages_recorded(packages, run_dir, evidence):
    try:
        found = installed_set(packages.python)
    except PipFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    run_dir.save_baseline("packages", found.to_json())
    evidence("installed", found.to_json())
    assert found.pins, f"{packages.python}: pip lists no installed distribution"


def test_app_tests_pass_before_the_upgrade(packages, config, evidence):
    if not packages.test:
        pytest.skip("no app test command ([packages] test)")
    result = run_app_tests(packages.test, packages.test_workdir or config.source.parent, packages.test_timeout_s)
    evidence("app tests", result)
    assert result.ok, f"{result.summary} (before anything changed: the post gate could not tell the upgrade broke it)"


def test_candidate_resolves(packages, evidence):
    args = candidate_args(packages.requirements, packages.install)
    try:
        out = pip(packages.python, ["install", "--dry-run", *args], packages.pip_timeout_s)
    except PipFailed as exc:
        pytest.fail(f"the candidate does not install: {exc}", pytrace=False)
    would = [line for line in out.splitlines() if line.startswith("Would install")]
    evidence("dry run", {"args": args, "would_install": would})

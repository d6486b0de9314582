"""Post-gate: after [packages] installed the candidate, the app's own tests pass and no installed package's
requirement is broken; after a rollback, the installed set is exactly the one recorded before."""

from __future__ import annotations

import pytest

from upgate.checks.compat import pip_check
from upgate.checks.packages import InstalledSet, PipFailed, compare_installed, installed_set, run_app_tests

pytestmark = pytest.mark.upgate_component("packages")


@pytest.fixture(scope="module")
def packages(config):
    if config.packages is None:
        pytest.skip("packages not configured ([packages])")
    return config.packages


def test_app_tests_pass(packages, config, evidence):
    if not packages.test:
        pytest.skip("no app test command ([packages] test)")
    result = run_app_tests(packages.test, packages.test_workdir or config.source.parent, packages.test_timeout_s)
    evidence("app tests", result)
    assert result.ok, result.summary


def test_no_broken_requirements(packages, evidence):
    result = pip_check(str(packages.python))
    evidence("pip check", result)
    assert result.ok, result.summary


def test_installed_set_is_the_recorded_one_after_a_rollback(packages, phase, run_dir, evidence):
    if phase != "rollback":
        pytest.skip("the candidate changed the installed set on purpose (compared after a rollback only)")
    recorded = run_dir.load_baseline("packages")
    if recorded is None:
        pytest.fail(f"{run_dir.baseline_file('packages')}: no recorded package set; run the pre gates first",
                    pytrace=False)
    try:
        now = installed_set(packages.python)
    except PipFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    result = compare_installed(InstalledSet.from_json(recorded), now)
    evidence("installed set", result)
    assert result.ok, result.summary

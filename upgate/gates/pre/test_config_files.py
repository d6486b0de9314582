"""Pre-gate: the config files [config] changes. Each is recorded by checksum (the rollback's proof), and the
change computes and validates before anything is written."""

from __future__ import annotations

import hashlib

import pytest

from upgate.errors import ConfigError
from upgate.steps.config import planned_changes

pytestmark = pytest.mark.upgate_component("config")


@pytest.fixture(scope="module")
def config_step(config):
    if config.config_files is None:
        pytest.skip("config files not configured ([config])")
    return config.config_files


def test_config_files_recorded(config_step, run_dir, evidence):
    missing = [str(p) for p in config_step.paths() if not p.is_file()]
    assert not missing, f"config file(s) not found: {', '.join(missing)}"
    recorded = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in config_step.paths()}
    run_dir.save_baseline("config_files", recorded)
    evidence("sha256", recorded)


def test_config_change_validates(config_step, evidence):
    try:
        planned = planned_changes(config_step)
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)
    evidence("changes", {str(p.file): {"changes": p.changes, "valid": p.validation.summary} for p in planned})
    invalid = [p.validation.summary for p in planned if not p.validation.ok]
    assert not invalid, f"the migrated config would not validate: {'; '.join(invalid)}"

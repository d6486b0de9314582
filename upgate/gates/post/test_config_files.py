"""Post-gate: after [config], each file is as the migration leaves it (applying it again changes nothing) and
validates; after a rollback, each file's bytes are the ones recorded before (sha256)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from upgate.errors import ConfigError
from upgate.steps.config import planned_changes

pytestmark = pytest.mark.upgate_component("config")


@pytest.fixture(scope="module")
def config_step(config):
    if config.config_files is None:
        pytest.skip("config files not configured ([config])")
    return config.config_files


def test_config_files_migrated_and_valid(config_step, phase, evidence):
    if phase == "rollback":
        pytest.skip("after a rollback the files must be the recorded ones (test_config_files_as_recorded)")
    try:
        planned = planned_changes(config_step)
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)
    pending = [f"{p.file}: {', '.join(p.changes)}" for p in planned if p.changed]
    invalid = [p.validation.summary for p in planned if not p.validation.ok]
    evidence("config files", {"pending": pending, "invalid": invalid})
    assert not pending, f"config not migrated: {'; '.join(pending)}"
    assert not invalid, f"migrated config does not validate: {'; '.join(invalid)}"


def test_config_files_as_recorded_after_a_rollback(config_step, phase, run_dir, evidence):
    if phase != "rollback":
        pytest.skip("the migration changed the files on purpose (compared after a rollback only)")
    recorded = run_dir.load_baseline("config_files")
    if recorded is None:
        pytest.fail(f"{run_dir.baseline_file('config_files')}: no recorded checksums; run the pre gates first",
                    pytrace=False)
    differ = [path for path, digest in recorded.items()
              if not Path(path).is_file() or hashlib.sha256(Path(path).read_bytes()).hexdigest() != digest]
    evidence("sha256", {"recorded": recorded, "differ": differ})
    assert not differ, f"config file(s) not as before the upgrade: {', '.join(differ)}"

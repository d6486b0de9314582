"""The run-folder API: atomic baseline artifacts and one resolver of "which run"."""

from __future__ import annotations

import pytest

from upgate.core.runs import RunDir, RunSummary, StepRecord, resolve_run
from upgate.errors import ConfigError


def test_baseline_artifacts_round_trip_and_absent_ones_read_as_none(tmp_path):
    run = RunDir.create(tmp_path)
    path = run.save_baseline("fingerprints/episodic_logs", {"rows": 3})
    assert path == run.baseline / "fingerprints" / "episodic_logs.json"
    assert run.load_baseline("fingerprints/episodic_logs") == {"rows": 3}
    assert run.load_baseline("schema") is None
    assert not list(run.baseline.rglob("*.tmp"))
    with pytest.raises(ValueError, match="inside baseline"):
        run.save_baseline("../summary", {})


def test_a_corrupt_artifact_names_the_file(tmp_path):
    run = RunDir.create(tmp_path)
    run.baseline_file("schema").write_text("{not json")
    with pytest.raises(ConfigError, match="schema.json: not valid JSON"):
        run.load_baseline("schema")


def test_which_run_by_latest_id_or_folder(tmp_path):
    with pytest.raises(ConfigError, match="no run folder under .*run the pre gates first"):
        resolve_run("latest", tmp_path)
    first, second = RunDir.create(tmp_path), RunDir(tmp_path / "runs" / "99999999-999999-ffff")
    second.path.mkdir(parents=True)
    assert resolve_run(None, tmp_path) == resolve_run("latest", tmp_path) == RunDir(second.path.resolve())
    assert resolve_run(first.run_id, tmp_path).path == first.path
    assert resolve_run(str(first.path), tmp_path / "elsewhere").path == first.path
    with pytest.raises(ConfigError, match="no run folder 'nope'"):
        resolve_run("nope", tmp_path)


def test_summary_is_a_typed_record_with_the_json_shape_reports_read():
    summary = RunSummary(run_id="r", target="t", from_version="v1", to_version="v2", verdict="UPGRADED",
                         exit_code=0, reason="ok", started_at="2026-01-01T00:00:00+00:00", seconds=1.0,
                         config="upgate.toml", config_sha256=None, steps=[StepRecord("backup", "ok", 0.5)])
    data = summary.to_json()
    assert data["steps"] == [{"name": "backup", "status": "ok", "seconds": 0.5}]
    assert data["rollback"]["triggered"] is False and data["rollback"]["ladder"] == []

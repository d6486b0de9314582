"""The warm gate worker: gate modules imported once, each phase a fresh fork that inherits nothing from the last."""

from __future__ import annotations

import psutil
import pytest

from upgate.core.gating import GateWorker

LEAKY_GATE = """
import os
from pathlib import Path

Path(os.environ["UPGATE_TEST_MARKER"]).open("a").write("imported\\n")
STATE = []


def test_starts_fresh():
    assert STATE == [], "module state of an earlier phase"
    assert "UPGATE_TEST_LEAK" not in os.environ, "environment of an earlier phase"
    assert os.getpgid(0) == os.getpid(), "a phase leads its own process group"
    STATE.append(1)
    os.environ["UPGATE_TEST_LEAK"] = "1"
"""


def _args(tmp_path, folder):
    config = tmp_path / "upgate.toml"
    config.write_text('[target]\nname = "worker-test"\n')
    (tmp_path / "run").mkdir(exist_ok=True)
    return [str(folder), "--upgate-config", str(config), "--upgate-run-dir", str(tmp_path / "run"),
            "--import-mode=importlib", "-p", "no:cacheprovider", "--rootdir", str(folder.parent), "-v"]


def test_phases_are_fresh_forks_of_one_warm_import(tmp_path, monkeypatch):
    gates = tmp_path / "gates"
    (gates / "pre").mkdir(parents=True)
    (gates / "pre" / "test_leak.py").write_text(LEAKY_GATE)
    marker = tmp_path / "imports"
    monkeypatch.setenv("UPGATE_TEST_MARKER", str(marker))
    worker = GateWorker.start(gates)
    assert worker is not None
    try:
        args = _args(tmp_path, gates / "pre")
        for _ in range(3):
            lines: list[str] = []
            assert worker.run(gates, args, lines.append) == 0, "".join(lines)
            assert any("test_starts_fresh PASSED" in line for line in lines)
        assert worker.phases == 3 and worker.alive()
        assert marker.read_text() == "imported\n", "the gate module was imported again for a phase"
    finally:
        worker.close()
    assert not psutil.pid_exists(worker.proc.pid) or psutil.Process(worker.proc.pid).status() == "zombie"


def test_a_failing_phase_reports_its_status(tmp_path):
    gates = tmp_path / "gates"
    (gates / "post").mkdir(parents=True)
    (gates / "post" / "test_fails.py").write_text("def test_no():\n    assert False, 'named failure'\n")
    with GateWorker.start(gates) as worker:
        lines: list[str] = []
        status = worker.run(gates, _args(tmp_path, gates / "post"), lines.append)
    assert status == 1 and "named failure" in "".join(lines), "".join(lines)


MODEL_GATE = """
import sys


def test_the_model_stack_came_imported():
    assert "torch" in sys.modules and "transformers.models.gpt2.modeling_gpt2" in sys.modules, "imported by the phase"
"""


@pytest.mark.slow  # the long tier (make test-slow): a speed property (torch imported once a run), seconds of imports
def test_a_configured_local_model_is_imported_once_for_every_phase(tmp_path):
    """torch, transformers and the checkpoint's architecture module are imported by the worker (seconds, once
    per run), so that each phase's fork loads only the weights."""
    from upgate.fixtures.tiny_model import cached_model

    gates = tmp_path / "gates"
    (gates / "post").mkdir(parents=True)
    (gates / "post" / "test_model.py").write_text(MODEL_GATE)
    with GateWorker.start(gates, [(cached_model("v1"), "causal-lm")]) as worker:
        assert worker is not None
        for _ in range(2):
            lines: list[str] = []
            assert worker.run(gates, _args(tmp_path, gates / "post"), lines.append) == 0, "".join(lines)
    with GateWorker.start(gates) as worker:  # no model configured: nothing of it is imported
        assert worker is not None
        lines = []
        assert worker.run(gates, _args(tmp_path, gates / "post"), lines.append) == 1, "".join(lines)

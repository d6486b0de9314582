"""Without [[models]] the model gates are not gated (deselected, listed once), and `pytest gates/pre` never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from upgate.config import load_config

ROOT = Path(__file__).parents[2]

PROBE = """
import sys, pytest
rc = pytest.main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "transformers", "tokenizers", "safetensors") if m in sys.modules)
print("HEAVY", ",".join(heavy) or "none", "RC", int(rc))
"""


def test_pre_gates_without_models_are_not_gated_and_never_import_torch(tmp_path):
    config = tmp_path / "upgate.toml"
    config.write_text('[target]\nname = "svc"\n')
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", PROBE, "upgate/gates/pre", "--upgate-config", str(config),
                           "--upgate-run-dir", str(run_dir), "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "HEAVY none" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
    results = json.loads((run_dir / "gates-pre.json").read_text())
    assert not [g for g in results["gates"] if "test_models.py" in g["nodeid"]]
    assert results["not_gated"]["models"]["configure"] == "[[models]] with a path and/or an endpoint"


def test_models_config_env_override_and_paths(tmp_path):
    config = tmp_path / "upgate.toml"
    config.write_text('[target]\nname = "svc"\n\n[[models]]\nname = "mistral-7b"\nendpoint = "http://a:1"\n'
                      'prompts = "p.txt"\nthresholds = { min_exact_match = 0.9 }\n\n'
                      '[[models]]\nname = "yi-coder"\npath = "models/yi"\n\n'
                      '[model_upgrade]\nmodel = "yi-coder"\nlive = "models/yi"\ncandidate = "releases/yi-2"\n')
    cfg = load_config(config, environ={"MISTRAL_7B_URL": "http://mistral:8000"})
    assert cfg.models[0].endpoint == "http://mistral:8000" and cfg.models[0].prompts == tmp_path / "p.txt"
    assert cfg.models[0].thresholds.min_exact_match == 0.9
    assert cfg.models[1].path == tmp_path / "models" / "yi"
    assert cfg.model_upgrade and cfg.model_upgrade.candidate == tmp_path / "releases" / "yi-2"
    assert cfg.gated_components()["models"] is True


def test_model_upgrade_must_name_a_model(tmp_path):
    import pytest

    from upgate.errors import ConfigError

    config = tmp_path / "upgate.toml"
    config.write_text('[target]\nname = "svc"\n\n[model_upgrade]\nmodel = "nope"\nlive = "a"\ncandidate = "b"\n')
    with pytest.raises(ConfigError, match="model_upgrade.model 'nope' is not a \\[\\[models\\]\\] name"):
        load_config(config)
    config.write_text('[target]\nname = "svc"\n\n[[models]]\nname = "m"\n')
    with pytest.raises(ConfigError, match="needs a path, an endpoint, or both"):
        load_config(config)

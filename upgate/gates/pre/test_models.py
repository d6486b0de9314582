"""Pre-gate: every configured model loads here and answers; its answers become the baseline.

A model upgrade's candidate passes the same compatibility check before anything is switched.
"""

from __future__ import annotations

import pytest

from upgate.checks.inference import check_compatibility, check_endpoint, check_smoke, generate_over_http
from upgate.plugin.models import model_folder, prompts_of, run_local, save_endpoint

pytestmark = pytest.mark.upgate_component("models")


def test_model_checkpoint_is_compatible(local_model, evidence):
    result = check_compatibility(local_model.path, name=local_model.name)
    evidence("compatibility", result)
    assert result.ok, result.summary


def test_model_answers_the_prompt_set(local_model, run_dir, phase, evidence):
    """Load, run the prompt set (greedy), no NaN/inf, non-empty answers; stored as the baseline."""
    compat = check_compatibility(local_model.path, name=local_model.name)
    assert compat.ok, f"not loaded: {compat.summary}"
    outputs = run_local(local_model)
    result = check_smoke(outputs, local_model.name, local_model.thresholds.max_prompt_latency_s)
    outputs.save(model_folder(run_dir.path, phase, local_model.name) / "local")
    evidence("smoke", result)
    assert result.ok, result.summary


def test_model_endpoint_answers(endpoint_model, evidence):
    m = endpoint_model
    result = check_endpoint(m.endpoint, prompts_of(m)[0], m.health_path, m.generate_path, m.max_new_tokens,
                            m.timeout_s, m.name)
    evidence("endpoint", result)
    assert result.ok, result.summary


def test_endpoint_answers_recorded(endpoint_model, run_dir, phase, evidence):
    m = endpoint_model
    try:
        texts, latencies = generate_over_http(m.endpoint, prompts_of(m), m.generate_path, m.max_new_tokens,
                                              m.timeout_s)
    except (ValueError, OSError) as exc:
        pytest.fail(f"{m.name}: {exc}", pytrace=False)
    save_endpoint(model_folder(run_dir.path, phase, m.name), texts, latencies)
    evidence("endpoint answers", {"continuations": texts, "latencies_s": latencies})
    assert all(t.strip() for t in texts), f"{m.name}: the endpoint returned empty text for some prompts"


def test_upgrade_candidate_is_compatible(config, model, evidence):
    """The model_upgrade candidate loads here (metadata only) before anything is switched."""
    upgrade = config.model_upgrade
    if upgrade is None or upgrade.model != model.name:
        pytest.skip(f"model '{model.name}': no model_upgrade configured for it")
    result = check_compatibility(upgrade.candidate, name=f"{model.name} candidate {upgrade.candidate}")
    evidence("candidate compatibility", result)
    assert result.ok, result.summary

"""Pre-gate: every configured model loads here and answers; its answers become the baseline.

A model upgrade's candidate is checked before anything is switched, without loading its weights: files and
memory, every tensor against the architecture its config.json declares (and the live checkpoint's), NaN/inf
in the weights, its tokenizer against the model type and the live token->id mapping. Any of these blocks.
"""

from __future__ import annotations

import pytest

from upgate.checks.inference import check_compatibility, check_endpoint, check_smoke, generate_over_http
from upgate.checks.model_compat import check_tensors_match_architecture, check_weights_finite
from upgate.checks.tokenizers import check_token_ids, check_tokenizer_fits_model
from upgate.plugin.models import model_folder, prompts_of, run_local, save_endpoint
from upgate.plugin.pytest_plugin import need_extra

pytestmark = pytest.mark.upgate_component("models")


@pytest.fixture
def candidate(config, model):
    """The [model_upgrade] candidate folder of this model."""
    upgrade = config.model_upgrade
    if upgrade is None or upgrade.model != model.name:
        pytest.skip(f"model '{model.name}': no model_upgrade configured for it")
    need_extra("models", f"[model_upgrade] of model '{model.name}'")
    return upgrade.candidate


@pytest.mark.upgate_component("models", "models.local")
def test_model_checkpoint_is_compatible(local_model, evidence):
    result = check_compatibility(local_model.path, name=local_model.name)
    evidence("compatibility", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("models", "models.local")
def test_model_answers_the_prompt_set(local_model, run_dir, phase, evidence):
    """Load (the loader's report is evidence), run the prompt set, no NaN/inf; stored as the baseline."""
    compat = check_compatibility(local_model.path, name=local_model.name)
    assert compat.ok, f"not loaded: {compat.summary}"
    outputs = run_local(local_model)
    result = check_smoke(outputs, local_model.name, local_model.thresholds.max_prompt_latency_s)
    outputs.save(model_folder(run_dir.path, phase, local_model.name) / "local")
    evidence("loader report", outputs.load_report)
    evidence("smoke", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("models", "models.endpoint")
@pytest.mark.model_tasks("causal-lm")
def test_model_endpoint_answers(endpoint_model, evidence):
    m = endpoint_model
    result = check_endpoint(m.endpoint, prompts_of(m)[0], m.health_path, m.generate_path, m.max_new_tokens,
                            m.timeout_s, m.name)
    evidence("endpoint", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("models", "models.endpoint")
@pytest.mark.model_tasks("causal-lm")
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


@pytest.mark.upgate_component("models", "model_upgrade")
def test_upgrade_candidate_is_compatible(model, candidate, evidence):
    """The candidate's files are whole and fit in memory here (metadata only)."""
    result = check_compatibility(candidate, name=f"{model.name} candidate {candidate}")
    evidence("candidate compatibility", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("models", "model_upgrade")
def test_candidate_tensors_match_the_architecture(model, candidate, evidence):
    """Every tensor the declared architecture needs, with its shape, and no foreign one (headers only)."""
    result = check_tensors_match_architecture(candidate, model.task, live=model.path,
                                              name=f"{model.name} candidate {candidate}")
    evidence("candidate tensors", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("models", "model_upgrade")
def test_candidate_weights_are_finite(model, candidate, evidence):
    result = check_weights_finite(candidate, name=f"{model.name} candidate {candidate}")
    evidence("candidate finite weights", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("models", "model_upgrade")
def test_candidate_tokenizer_fits_the_model(model, candidate, evidence):
    """The tokenizer is the kind the model type uses: same class family, algorithm and pre-tokenizer as live."""
    result = check_tokenizer_fits_model(candidate, live=model.path, name=f"{model.name} candidate tokenizer")
    evidence("candidate tokenizer kind", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("models", "model_upgrade")
def test_candidate_keeps_the_token_ids(local_model, candidate, evidence):
    """Every token of the live tokenizer has the same id in the candidate's (embedding rows are read by id)."""
    result = check_token_ids(local_model.path, candidate, name=f"{local_model.name} candidate tokenizer")
    evidence("candidate token ids", result)
    assert result.ok, result.summary

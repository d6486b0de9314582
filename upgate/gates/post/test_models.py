"""Post-gate: every configured model still loads and answers like the baseline, within the thresholds.

Only the gates that mean something for a model's task run (others are deselected): causal-lm compares greedy
continuations, the token distributions (KL) and perplexity; classification compares labels and the label
distribution; embedding compares vectors by cosine. In the rollback phase the thresholds are identity: the old
model must be back, answer for answer.
"""

from __future__ import annotations

import pytest

from upgate.checks.inference import (
    check_compatibility,
    check_divergence,
    check_exact_match,
    check_label_agreement,
    check_latency,
    check_perplexity,
    check_smoke,
    generate_over_http,
)
from upgate.gates.pre.test_models import test_model_endpoint_answers  # noqa: E402, F401  (the same gate, run again)
from upgate.plugin.models import (
    load_baseline,
    load_endpoint,
    model_folder,
    prompts_of,
    run_local,
    save_endpoint,
    thresholds_for,
)

pytestmark = pytest.mark.upgate_component("models")

_runs: dict[str, object] = {}


@pytest.fixture
def thresholds(model, phase):
    return thresholds_for(model, phase)


@pytest.fixture
def baseline(local_model, run_dir):
    return load_baseline(run_dir.path, local_model.name)


@pytest.fixture
def current(local_model, baseline, run_dir, phase):
    """The live model run once per session over the baseline's sequences (so distributions compare)."""
    key = f"{phase}:{local_model.name}"
    if key not in _runs:
        compat = check_compatibility(local_model.path, name=local_model.name)
        if not compat.ok:
            pytest.fail(f"not loaded: {compat.summary}", pytrace=False)
        outputs = run_local(local_model, score_ids=baseline.scored_ids or None)
        outputs.save(model_folder(run_dir.path, phase, local_model.name) / "local")
        _runs[key] = outputs
    return _runs[key]


@pytest.mark.upgate_component("models", "models.local")
def test_model_checkpoint_is_compatible(local_model, evidence):
    result = check_compatibility(local_model.path, name=local_model.name)
    evidence("compatibility", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("models", "models.local")
def test_model_answers_the_prompt_set(local_model, current, evidence):
    """Every weight came from the checkpoint (the loader's report), finite outputs, an answer per prompt."""
    result = check_smoke(current, local_model.name, local_model.thresholds.max_prompt_latency_s)
    evidence("loader report", current.load_report)
    evidence("smoke", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("models", "models.local")
@pytest.mark.model_tasks("causal-lm")
def test_greedy_continuations_match_baseline(local_model, baseline, current, thresholds, evidence):
    result = check_exact_match(baseline.continuations, current.continuations, thresholds.min_exact_match,
                               local_model.name)
    evidence("exact match", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("models", "models.local")
@pytest.mark.model_tasks("classification")
def test_labels_agree_with_baseline(local_model, baseline, current, thresholds, evidence):
    result = check_label_agreement(baseline.continuations, current.continuations, thresholds.min_label_agreement,
                                   local_model.name)
    evidence("label agreement", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("models", "models.local")
@pytest.mark.model_tasks("causal-lm", "classification")
def test_output_distribution_close_to_baseline(local_model, baseline, current, thresholds, evidence):
    result = check_divergence(baseline, current, thresholds, local_model.name)
    evidence("divergence", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("models", "models.local")
@pytest.mark.model_tasks("embedding")
def test_embeddings_close_to_baseline(local_model, baseline, current, thresholds, evidence):
    result = check_divergence(baseline, current, thresholds, local_model.name)
    evidence("cosine", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("models", "models.local", "models.reference_text")
@pytest.mark.model_tasks("causal-lm")
def test_perplexity_within_threshold(local_model, baseline, current, thresholds, evidence):
    if local_model.reference_text is None:
        pytest.skip(f"model '{local_model.name}': perplexity not configured (models.reference_text)")
    result = check_perplexity(baseline.perplexity, current.perplexity, thresholds.max_perplexity_ratio,
                              local_model.name)
    evidence("perplexity", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("models", "models.local")
def test_latency_within_threshold(local_model, baseline, current, thresholds, evidence):
    result = check_latency(baseline.latencies_s, current.latencies_s, thresholds.max_latency_ratio,
                           local_model.name)
    evidence("latency", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("models", "models.endpoint")
@pytest.mark.model_tasks("causal-lm")
def test_endpoint_continuations_match_baseline(endpoint_model, run_dir, phase, thresholds, evidence):
    m = endpoint_model
    before = load_endpoint(run_dir.path, m.name)
    try:
        texts, latencies = generate_over_http(m.endpoint, prompts_of(m), m.generate_path, m.max_new_tokens,
                                              m.timeout_s)
    except (ValueError, OSError) as exc:
        pytest.fail(f"{m.name}: {exc}", pytrace=False)
    save_endpoint(model_folder(run_dir.path, phase, m.name), texts, latencies)
    result = check_exact_match(before["continuations"], texts, thresholds.min_exact_match, f"{m.name} endpoint")
    evidence("endpoint exact match", result)
    assert result.ok, result.summary

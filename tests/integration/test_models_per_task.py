"""Only the gates that mean something for a model's task are collected; messages speak the task's words."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from upgate.checks.inference import (
    DriftThresholds,
    check_divergence,
    check_label_agreement,
    check_smoke,
    run_model,
)

ROOT = Path(__file__).parents[2]


def collected(tmp_path: Path, task: str, reference: bool) -> tuple[list[str], str]:
    config = tmp_path / "upgate.toml"
    config.write_text('[target]\nname = "svc"\n\n[[models]]\nname = "m"\npath = "m"\nendpoint = "http://127.0.0.1:9"\n'
                      f'task = "{task}"\n' + ('reference_text = "ref.txt"\n' if reference else ""))
    (tmp_path / "run").mkdir()
    proc = subprocess.run([sys.executable, "-m", "pytest", "upgate/gates/post/test_models.py", "--collect-only", "-q",
                           "--upgate-config", str(config), "--upgate-run-dir", str(tmp_path / "run"),
                           "--upgate-phase", "post", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    names = sorted({line.split("::")[1].split("[")[0] for line in proc.stdout.splitlines() if "::" in line})
    return names, proc.stdout


@pytest.mark.parametrize(("task", "expected"), [
    ("embedding", ["test_embeddings_close_to_baseline", "test_latency_within_threshold",
                   "test_model_answers_the_prompt_set", "test_model_checkpoint_is_compatible"]),
    ("classification", ["test_labels_agree_with_baseline", "test_latency_within_threshold",
                        "test_model_answers_the_prompt_set", "test_model_checkpoint_is_compatible",
                        "test_output_distribution_close_to_baseline"]),
    ("causal-lm", ["test_endpoint_continuations_match_baseline", "test_greedy_continuations_match_baseline",
                   "test_latency_within_threshold", "test_model_answers_the_prompt_set",
                   "test_model_checkpoint_is_compatible", "test_model_endpoint_answers",
                   "test_output_distribution_close_to_baseline", "test_perplexity_within_threshold"]),
])
def test_post_gates_collected_per_task(tmp_path, task, expected):
    names, out = collected(tmp_path, task, reference=True)
    assert names == expected, out
    if task != "causal-lm":
        assert "deselected" in out


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A small BERT sequence classifier saved here (random weights: the label gates only compare runs)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("classifier")
    words = "[PAD] [UNK] [CLS] [SEP] the upgrade starts with pre gates model answers rollback".split()
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=3, id2label={0: "keep", 1: "upgrade", 2: "rollback"},
                        label2id={"keep": 0, "upgrade": 1, "rollback": 2})
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_classification_speaks_of_labels(classifier):
    prompts = ["the upgrade starts", "the model answers", "rollback with pre gates"]
    a = run_model(classifier, prompts, task="classification")
    b = run_model(classifier, prompts, task="classification")
    smoke = check_smoke(a, "clf")
    assert smoke.ok and "3 prompts classified" in smoke.summary, smoke.summary
    agreement = check_label_agreement(a.continuations, b.continuations, 0.9, "clf")
    assert agreement.ok and "label agreement with the baseline for 3/3 prompts" in agreement.summary
    kl = check_divergence(a, b, DriftThresholds(max_mean_kl=1e-9), "clf")
    assert kl.ok and "label distribution KL divergence" in kl.summary and "nats/token" not in kl.summary
    assert set(a.continuations) <= {"keep", "upgrade", "rollback"}
    assert json.dumps(a.load_report)  # serialisable evidence

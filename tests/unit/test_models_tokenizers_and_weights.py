"""Tokenizers compared by meaning, and the streamed NaN/inf scan, on small files made here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from upgate.checks.model_compat import check_weights_finite, summarize_names
from upgate.checks.tokenizers import (
    check_same_tokenizer,
    check_token_ids,
    check_tokenizer_fits_model,
    read_tokenizer,
)

WORDS = "the upgrade starts with the pre gates and the model answers every prompt of the baseline".split()


def wordpiece(folder: Path, vocab: list[str] | None = None) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tokens = vocab or ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *sorted(set(WORDS))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"), pretty=True)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                              "unk_token": "[UNK]", "cls_token": "[CLS]"}))
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": len(tokens)}))
    return folder


def test_reserialised_tokenizer_is_the_same_tokenizer(tmp_path):
    live = wordpiece(tmp_path / "live")
    again = tmp_path / "again"
    shutil.copytree(live, again)
    data = json.loads((again / "tokenizer.json").read_text())
    (again / "tokenizer.json").write_text(json.dumps(data, separators=(",", ":"), sort_keys=True))
    assert (again / "tokenizer.json").read_bytes() != (live / "tokenizer.json").read_bytes()
    result = check_same_tokenizer(live, again)
    assert result.ok, result.summary
    assert read_tokenizer(live).identity == read_tokenizer(again).identity


def test_special_token_or_normalizer_change_is_named(tmp_path):
    live = wordpiece(tmp_path / "live")
    other = tmp_path / "other"
    shutil.copytree(live, other)
    data = json.loads((other / "tokenizer.json").read_text())
    data["normalizer"]["lowercase"] = False
    (other / "tokenizer.json").write_text(json.dumps(data))
    (other / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                             "unk_token": "[UNK]", "cls_token": "[SEP]"}))
    result = check_same_tokenizer(live, other)
    assert not result.ok
    assert "normalizer" in result.summary and "special tokens" in result.summary


def test_permuted_ids_block_naming_the_tokens(tmp_path):
    live = wordpiece(tmp_path / "live")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *sorted(set(WORDS), reverse=True)]
    permuted = wordpiece(tmp_path / "permuted", tokens)
    result = check_token_ids(live, permuted)
    assert not result.ok
    assert "tokens have another id than in the live tokenizer" in result.summary and "'and'" in result.summary
    assert check_token_ids(live, live).ok


def test_added_tokens_after_the_live_ones_pass(tmp_path):
    live = wordpiece(tmp_path / "live")
    grown = wordpiece(tmp_path / "grown", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *sorted(set(WORDS)), "rollback"])
    result = check_token_ids(live, grown)
    assert result.ok and "1 tokens added" in result.summary


def test_byte_level_bpe_in_a_wordpiece_model_is_foreign(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    live = wordpiece(tmp_path / "live")
    foreign = tmp_path / "foreign"
    shutil.copytree(live, foreign)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([" ".join(WORDS)] * 5, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    tok.save(str(foreign / "tokenizer.json"))
    (foreign / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    result = check_tokenizer_fits_model(foreign, live)
    assert not result.ok
    assert "GPT2Tokenizer in a bert checkpoint" in result.summary and "BPE tokenizer where" in result.summary
    assert check_tokenizer_fits_model(live, live).ok


def _safetensors(path: Path, arrays: dict[str, np.ndarray], dtype_names: dict[str, str]) -> None:
    """A .safetensors file written by hand (numpy has no bfloat16: its bits are given as uint16)."""
    header: dict[str, object] = {}
    offset = 0
    blobs = []
    for name, arr in arrays.items():
        raw = arr.tobytes()
        header[name] = {"dtype": dtype_names[name], "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_nan_and_inf_found_by_bit_pattern_in_every_float_dtype(tmp_path, dtype):
    values = np.linspace(-2, 2, 4096, dtype=np.float32)
    values[[7, 9]] = np.nan
    values[100] = np.inf
    if dtype == "F32":
        bad = values
    elif dtype == "F16":
        bad = values.astype(np.float16)
    else:
        bad = (values.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16 = the top half of float32
    clean = np.ones(10, dtype=np.float32)
    _safetensors(tmp_path / "model.safetensors", {"a.weight": clean, "b.weight": bad, "ids": np.arange(5)},
                 {"a.weight": "F32", "b.weight": dtype, "ids": "I64"})
    result = check_weights_finite(tmp_path)
    assert not result.ok
    assert result.summary.endswith("NaN/inf in 1 tensors: b.weight (2 NaN, 1 inf)"), result.summary


def test_finite_weights_pass(tmp_path):
    _safetensors(tmp_path / "model.safetensors", {"w": np.zeros((64, 64), np.float32)}, {"w": "F32"})
    assert check_weights_finite(tmp_path).ok


def test_names_are_listed_then_grouped_by_layer():
    few = ["encoder.layer.0.attention.self.query.bias", "pooler.dense.bias"]
    assert summarize_names(few) == ", ".join(few)
    many = [f"encoder.layer.{i}.{p}" for i in range(6, 12) for p in ("a.weight", "a.bias")]
    assert summarize_names(many) == "encoder.layer.{6..11}.* (12 tensors)"

"""Tokenizers compared by meaning: what a tokenizer does with text, never the bytes of its files.

    >>> check_same_tokenizer(Path("models/live"), Path("releases/v2")).summary      # doctest: +SKIP
    'tokenizer: same behaviour as the live one (WordPiece, 30522 tokens, special tokens, normalizer, ...)'
    >>> check_token_ids(Path("models/live"), Path("releases/v2")).ok                # doctest: +SKIP
    True

A tokenizer's meaning is its algorithm and options, vocabulary (token -> id), merges, added and special
tokens, normalizer, pre-tokenizer, post-processor and decoder, plus the ids it gives a probe text.
`tokenizer.json` is parsed and re-serialised by the installed `tokenizers` before comparing, so two files
written by different library versions (field order, defaults spelled out or not, merges as "a b" or
["a", "b"]) compare equal when they behave the same.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from upgate.checks.result import CheckResult

# Casing, accents, digits, punctuation, whitespace runs, CJK, emoji, a URL and a special-token-looking word:
# the places where two tokenizers with the same vocabulary still disagree.
PROBE_TEXT = ("The Upgrade  starts: café déjà-vu, naïve façade; 12,345.67 tokens\t(v2.0) -- "
              "don't STOP!! 東京 へ 🚀 https://example.org/a?b=c [MASK] <|endoftext|> end")

_SPECIAL_ROLES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Class names that say nothing about the algorithm: compared by tokenizer.json's model instead.
_GENERIC_CLASSES = {"PreTrainedTokenizerFast", "PreTrainedTokenizer", "TokenizersBackend", ""}
# The parts of tokenizer.json that are runtime settings of one caller, not the tokenizer.
_NOT_MEANING = ("truncation", "padding", "version")


@dataclass
class TokenizerMeaning:
    """What a tokenizer does, read from its folder (tokenizer.json, else vocab.txt / vocab.json + merges.txt)."""

    folder: str
    kind: str  # WordPiece, BPE, Unigram, WordLevel; "vocab.txt" etc. for a slow-only tokenizer
    tokenizer_class: str
    vocab: dict[str, int]
    components: dict[str, Any] = field(default_factory=dict)
    probe_ids: list[int] | None = None

    def digests(self) -> dict[str, str]:
        """One sha256 per component (vocab, merges, special tokens, normalizer, ...), of canonical JSON."""
        parts = {"vocab": self.vocab, **self.components, "probe_ids": self.probe_ids}
        return {k: _digest(v) for k, v in sorted(parts.items())}

    @property
    def identity(self) -> str:
        return _digest(self.digests())

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "tokenizer_class": self.tokenizer_class, "tokens": len(self.vocab),
                "identity": self.identity, "components": self.digests()}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> Any:
    """A special token as its text: "[CLS]", or {"content": "[CLS]", ...} written by newer versions."""
    if isinstance(value, dict):
        return value.get("content")
    if isinstance(value, list):
        return sorted(str(_token_text(v)) for v in value)
    return value


def special_tokens(folder: Path) -> dict[str, Any]:
    """Role -> token text from special_tokens_map.json and tokenizer_config.json (either may hold them)."""
    roles: dict[str, Any] = {}
    for source in (_json(folder / "special_tokens_map.json"), _json(folder / "tokenizer_config.json")):
        for role in (*_SPECIAL_ROLES, "additional_special_tokens", "extra_special_tokens"):
            text = _token_text(source.get(role))
            if text not in (None, [], {}):
                roles["additional_special_tokens" if role == "extra_special_tokens" else role] = text
    return roles


def tokenizer_class(folder: Path) -> str:
    return str(_json(folder / "tokenizer_config.json").get("tokenizer_class") or "")


def class_family(name: str) -> str | None:
    """BertTokenizerFast -> Bert; a generic class (PreTrainedTokenizerFast, TokenizersBackend) -> None."""
    if name in _GENERIC_CLASSES:
        return None
    return name.removesuffix("Fast").removesuffix("Tokenizer") or None


def read_tokenizer(folder: Path, probe: bool = True) -> TokenizerMeaning:
    """The meaning of the tokenizer in `folder`; raises ValueError naming the file when none is readable."""
    tok_file = folder / "tokenizer.json"
    cls = tokenizer_class(folder)
    if tok_file.exists():
        from tokenizers import Tokenizer

        try:
            canonical = json.loads(Tokenizer.from_file(str(tok_file)).to_str())
        except Exception as exc:
            raise ValueError(f"{tok_file}: not a tokenizer the installed tokenizers library reads ({exc})") from None
        model = dict(canonical.get("model") or {})
        kind = str(model.pop("type", "?"))
        raw_vocab = model.pop("vocab", {})
        if isinstance(raw_vocab, list):  # Unigram: [[piece, score], ...], ids are positions
            vocab = {str(p[0]): i for i, p in enumerate(raw_vocab)}
            model["scores"] = [p[1] for p in raw_vocab]
        else:
            vocab = {str(k): int(v) for k, v in dict(raw_vocab).items()}
        merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model.pop("merges", []) or []]
        added = sorted(({"id": int(t["id"]), "content": t["content"], "special": bool(t.get("special")),
                         "normalized": bool(t.get("normalized")), "lstrip": bool(t.get("lstrip")),
                         "rstrip": bool(t.get("rstrip")), "single_word": bool(t.get("single_word"))}
                        for t in canonical.get("added_tokens") or []), key=lambda t: t["id"])
        for t in added:
            vocab.setdefault(t["content"], t["id"])
        components: dict[str, Any] = {
            "model_options": model, "merges": merges, "added_tokens": added,
            "special_tokens": special_tokens(folder),
            **{k: canonical.get(k) for k in ("normalizer", "pre_tokenizer", "post_processor", "decoder")},
        }
        meaning = TokenizerMeaning(str(folder), kind, cls, vocab, components)
    else:
        meaning = _read_slow(folder, cls)
    if probe:
        meaning.probe_ids = probe_ids(folder)
    return meaning


def _read_slow(folder: Path, cls: str) -> TokenizerMeaning:
    """A tokenizer without tokenizer.json: its vocabulary files, line by line."""
    config = _json(folder / "tokenizer_config.json")
    options = {k: config.get(k) for k in ("do_lower_case", "strip_accents", "tokenize_chinese_chars",
                                          "add_prefix_space") if k in config}
    special = special_tokens(folder)
    if (folder / "vocab.txt").exists():
        lines = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
        return TokenizerMeaning(str(folder), "vocab.txt", cls, {t: i for i, t in enumerate(lines)},
                                {"model_options": options, "special_tokens": special})
    if (folder / "vocab.json").exists():
        vocab = {str(k): int(v) for k, v in json.loads((folder / "vocab.json").read_text(encoding="utf-8")).items()}
        merges_file = folder / "merges.txt"
        merges = [line.split(" ", 1) for line in merges_file.read_text(encoding="utf-8").splitlines()
                  if line and not line.startswith("#version")] if merges_file.exists() else []
        for token, idx in _json(folder / "added_tokens.json").items():
            vocab.setdefault(token, int(idx))
        return TokenizerMeaning(str(folder), "vocab.json", cls, vocab,
                                {"model_options": options, "merges": merges, "special_tokens": special})
    models = sorted(p.name for p in folder.glob("*.model"))
    if models:  # sentencepiece: the model file's bytes are its meaning
        digest = hashlib.sha256((folder / models[0]).read_bytes()).hexdigest()
        return TokenizerMeaning(str(folder), "sentencepiece", cls, {},
                                {"sentencepiece": digest, "model_options": options, "special_tokens": special})
    raise ValueError(f"{folder}: no tokenizer (tokenizer.json, vocab.txt, vocab.json or a sentencepiece .model)")


def probe_ids(folder: Path) -> list[int] | None:
    """The ids the tokenizer gives PROBE_TEXT as the model server loads it (transformers' AutoTokenizer).

    tokenizer_config.json options (lower-casing, prefix space) can change what a fast tokenizer does, so the
    probe goes through the same loader a server uses; None when the tokenizer cannot be loaded that way.
    """
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return [int(i) for i in tokenizer(PROBE_TEXT)["input_ids"]]
    except Exception:  # the meaning components still compare; the probe is a second opinion
        return None


@dataclass(frozen=True)
class VocabDiff:
    moved: list[tuple[str, int, int]]  # token, live id, candidate id
    removed: list[tuple[str, int]]
    added: list[tuple[str, int]]

    @property
    def breaking(self) -> bool:
        return bool(self.moved or self.removed)


def diff_vocab(live: dict[str, int], candidate: dict[str, int]) -> VocabDiff:
    # Ordinary words first in messages: "[unused3]" moving says less to a reader than "the".
    moved = sorted(((t, i, candidate[t]) for t, i in live.items() if t in candidate and candidate[t] != i),
                   key=lambda x: (not x[0].isalpha(), x[1]))
    removed = sorted(((t, i) for t, i in live.items() if t not in candidate), key=lambda x: x[1])
    added = sorted(((t, i) for t, i in candidate.items() if t not in live), key=lambda x: x[1])
    return VocabDiff(moved, removed, added)


def _tokens(items: list[tuple[Any, ...]], n: int = 5) -> str:
    return ", ".join(repr(t[0]) + (f" {t[1]}->{t[2]}" if len(t) == 3 else f" (id {t[1]})") for t in items[:n]) + (
        f" and {len(items) - n} more" if len(items) > n else "")


def compare_meanings(live: TokenizerMeaning, candidate: TokenizerMeaning) -> list[str]:
    """The components that differ, in words ([] when the two behave the same)."""
    a, b = live.digests(), candidate.digests()
    differ = []
    if live.kind != candidate.kind:
        differ.append(f"algorithm {live.kind} -> {candidate.kind}")
    for key in sorted(set(a) | set(b)):
        if key == "probe_ids" and (live.probe_ids is None or candidate.probe_ids is None):
            continue
        if a.get(key) != b.get(key):
            differ.append({"vocab": f"vocabulary ({len(live.vocab)} -> {len(candidate.vocab)} tokens)",
                           "probe_ids": "ids of the probe text"}.get(key, key.replace("_", " ")))
    return differ


def check_same_tokenizer(live: Path, candidate: Path, name: str = "tokenizer") -> CheckResult:
    """Do two tokenizer folders behave the same? Bytes may differ (re-serialised, re-saved); meaning may not."""
    try:
        a, b = read_tokenizer(live), read_tokenizer(candidate)
    except ValueError as exc:
        return CheckResult(False, f"{name}: {exc}", {})
    differ = compare_meanings(a, b)
    evidence = {"live": a.describe(), "candidate": b.describe(), "differs": differ}
    if differ:
        return CheckResult(False, f"{name}: behaves differently from the live tokenizer: {'; '.join(differ)}",
                           evidence)
    return CheckResult(True, f"{name}: same behaviour as the live tokenizer ({b.kind}, {len(b.vocab)} tokens, "
                             "special tokens, normalizer, pre-tokenizer"
                             + (", probe text ids" if a.probe_ids is not None else "") + " equal)", evidence)


def check_token_ids(live: Path, candidate: Path, name: str = "tokenizer") -> CheckResult:
    """Every live token keeps its id in the candidate (embedding rows are indexed by id); added tokens may follow."""
    try:
        a, b = read_tokenizer(live, probe=False), read_tokenizer(candidate, probe=False)
    except ValueError as exc:
        return CheckResult(False, f"{name}: {exc}", {})
    diff = diff_vocab(a.vocab, b.vocab)
    evidence = {"live_tokens": len(a.vocab), "candidate_tokens": len(b.vocab), "moved": len(diff.moved),
                "removed": len(diff.removed), "added": len(diff.added),
                "first_moved": [list(m) for m in diff.moved[:20]], "first_removed": [list(r) for r in diff.removed[:20]],
                "first_added": [list(x) for x in diff.added[:20]]}
    problems = []
    if diff.moved:
        problems.append(f"{len(diff.moved)} of {len(a.vocab)} tokens have another id than in the live tokenizer "
                        f"({_tokens(diff.moved)})")
    if diff.removed:
        problems.append(f"{len(diff.removed)} live tokens are missing ({_tokens(diff.removed)})")
    if problems:
        return CheckResult(False, f"{name}: token->id mapping differs from the live tokenizer: " + "; ".join(problems)
                           + ": the model would read other tokens than the text says", evidence)
    extra = f", {len(diff.added)} tokens added after them" if diff.added else ""
    return CheckResult(True, f"{name}: all {len(a.vocab)} live tokens keep their ids{extra}", evidence)


def expected_tokenizer_classes(model_type: str) -> set[str]:
    """Tokenizer class families transformers pairs with a model type (empty when unknown)."""
    try:
        from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES
    except ImportError:
        return set()
    entry = TOKENIZER_MAPPING_NAMES.get(model_type)
    names = entry if isinstance(entry, (tuple, list)) else (entry,)
    return {f for n in names if n for f in [class_family(str(n))] if f}


def check_tokenizer_fits_model(candidate: Path, live: Path | None = None, name: str = "tokenizer") -> CheckResult:
    """The candidate's tokenizer is the kind its model was trained with: same class family and algorithm as the
    live one when the model type is unchanged, else a class transformers pairs with the model type (a warning)."""
    config = _json(candidate / "config.json")
    model_type = str(config.get("model_type") or "")
    try:
        cand = read_tokenizer(candidate, probe=False)
    except ValueError as exc:
        return CheckResult(False, f"{name}: {exc}", {})
    evidence: dict[str, Any] = {"model_type": model_type, "tokenizer_class": cand.tokenizer_class, "kind": cand.kind}
    problems: list[str] = []
    warnings: list[str] = []
    family = class_family(cand.tokenizer_class)
    live_type = str(_json(live / "config.json").get("model_type") or "") if live else ""
    if live is not None and live_type == model_type:
        try:
            ref = read_tokenizer(live, probe=False)
        except ValueError as exc:
            return CheckResult(False, f"{name}: live model's tokenizer unreadable: {exc}", evidence)
        evidence.update(live_tokenizer_class=ref.tokenizer_class, live_kind=ref.kind)
        live_family = class_family(ref.tokenizer_class)
        if family and live_family and family != live_family:
            problems.append(f"tokenizer class {cand.tokenizer_class} in a {model_type} checkpoint whose live "
                            f"tokenizer is {ref.tokenizer_class}")
        if cand.kind != ref.kind:
            problems.append(f"a {cand.kind} tokenizer where the live {model_type} model uses {ref.kind}")
        for part in ("pre_tokenizer", "normalizer"):
            a, b = ref.components.get(part), cand.components.get(part)
            if _kind_of(a) != _kind_of(b):
                problems.append(f"{part.replace('_', '-')} {_kind_of(b)} where the live tokenizer has {_kind_of(a)}")
    else:
        expected = expected_tokenizer_classes(model_type)
        evidence["expected_families"] = sorted(expected)
        if family and expected and family not in expected:
            warnings.append(f"tokenizer class {cand.tokenizer_class} is not one transformers pairs with "
                            f"model type {model_type} ({', '.join(sorted(expected))})")
    if problems:
        return CheckResult(False, f"{name}: foreign tokenizer: " + "; ".join(problems), evidence, tuple(warnings))
    return CheckResult(True, f"{name}: {cand.tokenizer_class or cand.kind} ({cand.kind}) fits model type "
                             f"{model_type or '?'}", evidence, tuple(warnings))


def _kind_of(component: Any) -> str:
    """The type of a normalizer/pre-tokenizer (Sequence of types spelled out), "none" when absent."""
    if not isinstance(component, dict):
        return "none"
    if component.get("type") == "Sequence":
        inner = component.get("pretokenizers") or component.get("normalizers") or []
        return "Sequence[" + ", ".join(_kind_of(c) for c in inner) + "]"
    return str(component.get("type", "?"))

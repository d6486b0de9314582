"""Model checks: is a checkpoint loadable here, does it answer sanely, does it answer like the baseline.

    >>> check_compatibility(Path("models/tiny-gpt")).summary           # doctest: +SKIP
    'tiny-gpt: gpt2 GPT2LMHeadModel, vocab 320 (tokenizer 320), float32 0.5 MiB, fits in 21.3 GiB free'
    >>> outputs = run_model(Path("models/tiny-gpt"), ["The upgrade starts with"])   # doctest: +SKIP
    >>> check_smoke(outputs).ok                                         # doctest: +SKIP
    True

`check_compatibility` reads only metadata (config, tokenizer files, safetensors headers): it never
imports torch. `run_model` imports torch and transformers when called, never at import time, so a
gate module that imports this one costs nothing when no model is configured.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from upgate.checks import http
from upgate.checks.model_compat import SafetensorsFile as SafetensorsFile  # re-exported; home: model_compat
from upgate.checks.model_compat import read_safetensors
from upgate.checks.result import CheckResult
from upgate.checks.secrets import redact

TASKS = ("causal-lm", "embedding", "classification")
# Weights plus activations, allocator slack and the framework itself, for a CPU load.
_MEMORY_FACTOR = 1.2
_MEMORY_OVERHEAD = 512 * 2**20


# --- compatibility (metadata only) ------------------------------------------------------------------------


def tokenizer_vocab_size(folder: Path) -> tuple[int | None, str]:
    """(vocabulary size including added tokens, tokenizer class) from the tokenizer files, without transformers."""
    cls = ""
    tok_config = folder / "tokenizer_config.json"
    if tok_config.exists():
        cls = str(json.loads(tok_config.read_text(encoding="utf-8")).get("tokenizer_class") or "")
    if (folder / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size(with_added_tokens=True), cls
    if (folder / "vocab.json").exists():
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        added = folder / "added_tokens.json"
        extra = json.loads(added.read_text(encoding="utf-8")) if added.exists() else {}
        return len(set(vocab.values()) | set(extra.values())), cls
    return None, cls


def installed_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in ("torch", "transformers", "tokenizers", "safetensors"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def check_compatibility(folder: Path, name: str | None = None, available_bytes: int | None = None,
                        versions: dict[str, str | None] | None = None) -> CheckResult:
    """Can this checkpoint load here? Reads config, tokenizer and safetensors headers only (no weights, no torch)."""
    name = name or folder.name
    problems: list[str] = []
    warnings: list[str] = []
    versions = installed_versions() if versions is None else versions
    evidence: dict[str, Any] = {"path": str(folder), "installed": versions}
    config_file = folder / "config.json"
    if not folder.is_dir():
        return CheckResult(False, f"{name}: model directory {folder} does not exist", evidence)
    if not config_file.exists():
        return CheckResult(False, f"{name}: {folder} has no config.json: not a transformers checkpoint", evidence)
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        return CheckResult(False, f"{name}: config.json is not valid JSON ({exc})", evidence)
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    vocab = config.get("vocab_size")
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    evidence.update(model_type=model_type, architectures=architectures, vocab_size=vocab, dtype=dtype,
                    saved_with=config.get("transformers_version"))
    if not model_type:
        problems.append("config.json has no model_type")

    try:
        tok_size, tok_class = tokenizer_vocab_size(folder)
    except Exception as exc:  # a corrupt tokenizer.json: name it rather than crash the gate
        tok_size, tok_class = None, ""
        problems.append(f"tokenizer files unreadable: {exc}")
    evidence.update(tokenizer_vocab_size=tok_size, tokenizer_class=tok_class)
    if tok_size is None and not any("tokenizer" in p for p in problems):
        problems.append("no tokenizer (tokenizer.json or vocab.json) in the model directory")

    shards = sorted(folder.glob("*.safetensors"))
    files = [read_safetensors(p) for p in shards]
    evidence["safetensors"] = [{"file": f.name, "bytes": f.size, "expected_bytes": f.expected_size,
                                "tensors": len(f.tensors), "error": f.error} for f in files]
    if not shards:
        legacy = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        problems.append("no .safetensors weights" + (f" (only pickle checkpoints {', '.join(legacy)}: loading "
                                                      "them runs code; convert to safetensors)" if legacy else ""))
    index = folder / "model.safetensors.index.json"
    if index.exists():
        wanted = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        missing = sorted(wanted - {p.name for p in shards})
        if missing:
            problems.append(f"shards listed in the index are missing: {', '.join(missing)}")
    problems += [f.error for f in files if f.error]

    if vocab is not None and tok_size is not None:
        if tok_size > int(vocab):
            problems.append(f"tokenizer/model vocab mismatch: the tokenizer has {tok_size} tokens, the model's "
                            f"vocab_size is {vocab}: ids >= {vocab} have no embedding row (wrong tokenizer for "
                            "these weights?)")
        elif tok_size < int(vocab):
            warnings.append(f"model vocab_size {vocab} > tokenizer's {tok_size}: {int(vocab) - tok_size} padding rows")
    embed_rows = _embedding_rows(files)
    evidence["embedding_rows"] = embed_rows
    if embed_rows is not None and vocab is not None and embed_rows != int(vocab):
        problems.append(f"config vocab_size {vocab} != embedding matrix rows {embed_rows} in the weights")

    saved = config.get("transformers_version")
    have = versions.get("transformers")
    if saved and have:
        if _version_tuple(saved)[:1] > _version_tuple(have)[:1]:
            problems.append(f"saved with transformers {saved}, installed {have}: a newer major version; "
                            "upgrade transformers before this model")
        elif _version_tuple(saved)[:2] > _version_tuple(have)[:2]:
            warnings.append(f"saved with transformers {saved}, newer than the installed {have}")
    if not versions.get("torch"):
        problems.append("torch is not installed")
    elif dtype in ("float16", "bfloat16"):
        warnings.append(f"dtype {dtype} on CPU: expect slow inference")

    weight_bytes = sum(f.weight_bytes for f in files)
    need = int(weight_bytes * _MEMORY_FACTOR) + _MEMORY_OVERHEAD
    available = available_memory_bytes() if available_bytes is None else available_bytes
    evidence.update(weight_bytes=weight_bytes, memory_needed_bytes=need, memory_available_bytes=available)
    if available is not None and weight_bytes and need > available:
        problems.append(f"needs about {need / 2**30:.1f} GiB of memory to load, {available / 2**30:.1f} GiB available")

    if problems:
        return CheckResult(False, f"{name}: " + "; ".join(problems), evidence, tuple(warnings))
    fits = f", fits in {available / 2**30:.1f} GiB free" if available is not None else ""
    summary = (f"{name}: {model_type} {'/'.join(architectures) or '?'}, vocab {vocab} (tokenizer {tok_size}), "
               f"{dtype} {weight_bytes / 2**20:.1f} MiB{fits}")
    return CheckResult(True, summary, evidence, tuple(warnings))


def _embedding_rows(files: list[SafetensorsFile]) -> int | None:
    for f in files:
        for key, meta in f.tensors.items():
            if re.search(r"(wte|embed_tokens|word_embeddings|tok_embeddings)\.weight$", key):
                return int(meta["shape"][0])
    return None


# --- running a model (imports torch) -----------------------------------------------------------------------

_TASK_VERB = {"causal-lm": "answered", "embedding": "embedded", "classification": "classified"}


@dataclass
class ModelOutputs:
    """What a model answered to the prompt set: the baseline pre-gates store, and post-gates compare to.

    Vectors are float32 in memory exactly as they are saved, so a baseline compares with its own saved copy
    at zero divergence (float64 in memory against float32 on disk differed by ~1e-8 nats).
    """

    task: str
    prompts: list[str]
    # causal-lm: greedy continuations; classification: the predicted label per prompt; embedding: "".
    continuations: list[str] = field(default_factory=list)
    # Token ids scored for the distributions (prompt + greedy continuation).
    scored_ids: list[list[int]] = field(default_factory=list)
    # The tokenizer by meaning (checks.tokenizers): equal identities tokenize every text the same way.
    tokenizer_identity: str = ""
    tokenizer: dict[str, Any] = field(default_factory=dict)
    # causal-lm: per sequence, log-probabilities (positions x vocab); classification: (1 x labels);
    # embedding: (1 x hidden) mean-pooled vectors.
    vectors: list[np.ndarray] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    perplexity: float | None = None
    load_s: float = 0.0
    non_finite: list[int] = field(default_factory=list)
    # The loader's own report: missing (initialised at random), unexpected (dropped), mismatched keys, warnings.
    load_report: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in self.__dict__.items() if k != "vectors"}
        (folder / "outputs.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        np.savez_compressed(folder / "vectors.npz", *[v.astype(np.float32) for v in self.vectors])

    @classmethod
    def load(cls, folder: Path) -> ModelOutputs:
        meta = json.loads((folder / "outputs.json").read_text(encoding="utf-8"))
        known = set(cls.__dataclass_fields__)
        with np.load(folder / "vectors.npz") as data:
            vectors = [data[f"arr_{i}"] for i in range(len(data.files))]
        return cls(**{k: v for k, v in meta.items() if k in known and k != "vectors"}, vectors=vectors)

    def summary_json(self) -> dict[str, Any]:
        return {"task": self.task, "prompts": len(self.prompts), "continuations": self.continuations,
                "latencies_s": self.latencies_s, "perplexity": self.perplexity, "load_s": self.load_s,
                "non_finite": self.non_finite, "load_report": self.load_report,
                "tokenizer_identity": self.tokenizer_identity}


def load_prompts(path: Path) -> list[str]:
    """One prompt per line (blank lines and # comments skipped), or a JSON list of strings."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return [str(p) for p in json.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage()[:2000])


def load_checkpoint(folder: Path, task: str) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, loader report) from a local folder; the report is what transformers would print.

    Mismatched shapes do not raise: they are loaded as re-initialised weights and named in the report, so the
    smoke gate fails with the names instead of "look at the above report" that nobody sees.
    """
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    root = logging.getLogger("transformers")
    captured = _Captured()
    saved_handlers, saved_level, saved_propagate = root.handlers[:], root.level, root.propagate
    root.handlers, root.propagate = [captured], False
    root.setLevel(logging.WARNING)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model, info = _auto_class(task).from_pretrained(folder, local_files_only=True, output_loading_info=True,
                                                        ignore_mismatched_sizes=True)
    finally:
        root.handlers, root.propagate = saved_handlers, saved_propagate
        root.setLevel(saved_level)
    mismatched = []
    for entry in info.get("mismatched_keys") or []:
        if isinstance(entry, (tuple, list)) and len(entry) == 3:
            mismatched.append({"name": str(entry[0]), "checkpoint": list(entry[1]), "model": list(entry[2])})
        else:
            mismatched.append({"name": str(entry)})
    report = {"architecture": type(model).__name__, "missing": sorted(map(str, info.get("missing_keys") or [])),
              "unexpected": sorted(map(str, info.get("unexpected_keys") or [])), "mismatched": mismatched,
              "errors": [str(e)[:500] for e in info.get("error_msgs") or []], "log": captured.lines[:50]}
    return model, tokenizer, report


def run_model(folder: Path, prompts: list[str], task: str = "causal-lm", max_new_tokens: int = 16,
              reference_text: str | None = None, score_ids: list[list[int]] | None = None,
              threads: int | None = 1) -> ModelOutputs:
    """Load a checkpoint (CPU, local files only) and run the prompt set through it.

    causal-lm: greedy continuation per prompt (timed), log-probabilities over the sequences in
    `score_ids` (the baseline's, so distributions compare position by position) or else over prompt +
    own continuation, and perplexity on `reference_text`. One intra-op thread by default: on a shared
    CPU, OpenMP threads contending with other processes make latency figures swing by 10x or more.
    """
    import torch

    from upgate.checks.tokenizers import read_tokenizer

    if threads:
        torch.set_num_threads(threads)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    t0 = time.perf_counter()
    folder = folder.resolve()  # once: a symlink swapped mid-load cannot mix two releases
    model, tokenizer, report = load_checkpoint(folder, task)
    model.eval()
    out = ModelOutputs(task=task, prompts=list(prompts), load_s=round(time.perf_counter() - t0, 3),
                       load_report=report)
    try:
        meaning = read_tokenizer(folder)
        out.tokenizer_identity, out.tokenizer = meaning.identity, meaning.describe()
    except ValueError as exc:
        out.tokenizer = {"error": str(exc)}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        if prompts:  # one untimed pass: the first call pays for lazy initialisation, not the model
            warm = tokenizer(prompts[0], return_tensors="pt")
            model(**warm)
        for i, prompt in enumerate(prompts):
            encoded = tokenizer(prompt, return_tensors="pt")
            ids = encoded["input_ids"]
            started = time.perf_counter()
            if task == "causal-lm":
                generated = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                           max_new_tokens=max_new_tokens, pad_token_id=pad)
                out.latencies_s.append(round(time.perf_counter() - started, 5))
                new_ids = generated[0, ids.shape[1]:].tolist()
                out.continuations.append(str(tokenizer.decode(new_ids, skip_special_tokens=True)))
                seq = score_ids[i] if score_ids is not None else generated[0].tolist()
                logits = model(torch.tensor([seq])).logits[0]
                vector = torch.log_softmax(logits.double(), dim=-1)
                out.scored_ids.append(list(seq))
            elif task == "embedding":
                hidden = model(**encoded).last_hidden_state[0]
                out.latencies_s.append(round(time.perf_counter() - started, 5))
                logits = hidden
                vector = hidden.mean(dim=0, keepdim=True).double()
                out.continuations.append("")
            else:
                logits = model(**encoded).logits
                out.latencies_s.append(round(time.perf_counter() - started, 5))
                vector = torch.log_softmax(logits.double(), dim=-1)
                label = int(logits[0].argmax())
                out.continuations.append(str(model.config.id2label.get(label, label)))
            if not bool(torch.isfinite(logits).all()):
                out.non_finite.append(i)
            out.vectors.append(vector.numpy().astype(np.float32))
        if task == "causal-lm" and reference_text:
            ids = tokenizer(reference_text, return_tensors="pt")["input_ids"][:, : _max_positions(model)]
            loss = model(ids, labels=ids).loss
            out.perplexity = round(float(math.exp(float(loss))), 4) if torch.isfinite(loss) else float("inf")
    return out


def preload(folder: Path, task: str) -> None:
    """Import what loading this checkpoint needs (torch, transformers, its architecture's module), loading no
    weights: the gate worker does it once per run, so that each phase's fork starts with it imported."""
    from transformers import AutoConfig, AutoTokenizer  # noqa: F401

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    _auto_class(task)._model_mapping[type(config)]  # the architecture's module, imported on first lookup


def _auto_class(task: str) -> Any:
    import transformers

    return {"causal-lm": transformers.AutoModelForCausalLM, "embedding": transformers.AutoModel,
            "classification": transformers.AutoModelForSequenceClassification}[task]


def _max_positions(model: Any) -> int:
    cfg = model.config
    return int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 512)


def _names(items: list[Any], n: int = 6) -> str:
    shown = [str(i) for i in items[:n]]
    return ", ".join(shown) + (f" and {len(items) - n} more" if len(items) > n else "")


def check_smoke(outputs: ModelOutputs, name: str = "model", max_latency_s: float | None = None) -> CheckResult:
    """The loader initialised nothing at random, finite outputs, a non-empty answer per prompt (causal-lm), latency."""
    problems: list[str] = []
    warnings: list[str] = []
    report = outputs.load_report
    if report.get("missing"):
        problems.append(f"the loader initialised {len(report['missing'])} weights itself (random or zero), missing "
                        f"from the checkpoint: {_names(report['missing'])}")
    if report.get("mismatched"):
        shown = [f"{m['name']} {m.get('checkpoint', '?')} vs model {m.get('model', '?')}" for m in report["mismatched"]]
        problems.append(f"{len(shown)} weights had the wrong shape and were re-initialised: {_names(shown, 4)}")
    if report.get("errors"):
        problems.append(f"loader errors: {_names(report['errors'], 2)}")
    if report.get("unexpected"):
        warnings.append(f"{len(report['unexpected'])} checkpoint tensors unused by {report.get('architecture')}: "
                        f"{_names(report['unexpected'])}")
    if not outputs.prompts:
        problems.append("the prompt set is empty")
    if outputs.non_finite:
        problems.append(f"NaN/inf in the outputs for prompts {', '.join(str(i + 1) for i in outputs.non_finite)}")
    if outputs.task == "causal-lm":
        empty = [i + 1 for i, c in enumerate(outputs.continuations) if not c.strip()]
        if empty:
            problems.append(f"empty decoded output for prompts {', '.join(map(str, empty))}")
    if outputs.perplexity is not None and not math.isfinite(outputs.perplexity):
        problems.append("perplexity on the reference text is not finite")
    worst = max(outputs.latencies_s, default=0.0)
    median = float(np.median(outputs.latencies_s)) if outputs.latencies_s else 0.0
    if max_latency_s is not None and worst > max_latency_s:
        problems.append(f"slowest prompt took {worst:.3f} s > {max_latency_s:.3f} s")
    evidence = {**outputs.summary_json(), "median_latency_s": round(median, 5), "max_latency_s": worst}
    if problems:
        return CheckResult(False, f"{name}: " + "; ".join(problems), evidence, tuple(warnings))
    ppl = f", perplexity {outputs.perplexity:.2f}" if outputs.perplexity is not None else ""
    verb = _TASK_VERB.get(outputs.task, "answered")
    return CheckResult(True, f"{name}: {len(outputs.prompts)} prompts {verb}, median {median * 1000:.1f} ms/prompt"
                             f" (load {outputs.load_s:.2f} s, every weight from the checkpoint){ppl}", evidence,
                       tuple(warnings))


# --- drift against the baseline ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftThresholds:
    min_exact_match: float = 0.75
    max_mean_kl: float = 0.1
    min_cosine: float = 0.98
    max_perplexity_ratio: float = 1.25
    max_latency_ratio: float | None = 3.0
    min_label_agreement: float = 0.9


def check_exact_match(baseline: list[str], current: list[str], minimum: float, name: str = "model") -> CheckResult:
    """causal-lm: share of prompts whose greedy continuation is identical to the baseline's."""
    return _agreement(baseline, current, minimum, name, "greedy continuations match the baseline")


def check_label_agreement(baseline: list[str], current: list[str], minimum: float, name: str = "model") -> CheckResult:
    """classification: share of prompts given the same label as in the baseline."""
    return _agreement(baseline, current, minimum, name, "label agreement with the baseline")


def _agreement(baseline: list[str], current: list[str], minimum: float, name: str, what: str) -> CheckResult:
    pairs = list(zip(baseline, current, strict=False))
    if not pairs or len(baseline) != len(current):
        return CheckResult(False, f"{name}: {len(current)} answers to compare with {len(baseline)} baseline answers "
                                  "(prompt set changed since the baseline?)", {})
    same = [a == b for a, b in pairs]
    rate = sum(same) / len(same)
    differing = [{"prompt": i + 1, "baseline": a, "current": b} for i, (a, b) in enumerate(pairs) if a != b]
    evidence = {"agreement": round(rate, 4), "minimum": minimum, "differing": differing[:20]}
    ok = rate >= minimum
    verb = ">=" if ok else "<"
    return CheckResult(ok, f"{name}: {what} for {sum(same)}/{len(same)} prompts ({rate:.0%} {verb} {minimum:.0%})",
                       evidence)


def mean_kl(baseline: list[np.ndarray], current: list[np.ndarray]) -> float:
    """Mean over positions of KL(baseline || current), both given as log-probabilities (summed in float64)."""
    total, count = 0.0, 0
    for p_log, q_log in zip(baseline, current, strict=True):
        p_log = p_log.astype(np.float64)
        q_log = q_log.astype(np.float64)
        kl = (np.exp(p_log) * (p_log - q_log)).sum(axis=-1)
        total += float(kl.sum())
        count += kl.shape[0]
    return total / max(count, 1)


def cosine_similarities(baseline: list[np.ndarray], current: list[np.ndarray]) -> list[float]:
    sims = []
    for b, c in zip(baseline, current, strict=True):
        b1, c1 = b.ravel().astype(np.float64), c.ravel().astype(np.float64)
        denom = float(np.linalg.norm(b1) * np.linalg.norm(c1)) or 1.0
        sims.append(float(b1 @ c1) / denom)
    return sims


def check_divergence(baseline: ModelOutputs, current: ModelOutputs, thresholds: DriftThresholds,
                     name: str = "model") -> CheckResult:
    """causal-lm: mean KL(baseline || current) per token; classification: KL of the label distribution;
    embedding: cosine similarity per prompt. Tokenizers are compared by meaning, never by file bytes."""
    shapes_b = [v.shape for v in baseline.vectors]
    shapes_c = [v.shape for v in current.vectors]
    if shapes_b != shapes_c:
        return CheckResult(False, f"{name}: outputs not comparable with the baseline (shapes {shapes_c[:1]} vs "
                                  f"{shapes_b[:1]}): vocabulary, labels or prompt set changed", {})
    if (baseline.task == "causal-lm" and baseline.tokenizer_identity and current.tokenizer_identity
            and baseline.tokenizer_identity != current.tokenizer_identity):
        before = baseline.tokenizer.get("components", {})
        after = current.tokenizer.get("components", {})
        differ = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        return CheckResult(False, f"{name}: the tokenizer behaves differently since the baseline ("
                                  f"{', '.join(differ) or 'identity'} changed): distributions over token ids are not "
                                  "comparable", {"baseline": baseline.tokenizer, "current": current.tokenizer})
    if baseline.task == "embedding":
        sims = cosine_similarities(baseline.vectors, current.vectors)
        worst = min(sims, default=1.0)
        ok = worst >= thresholds.min_cosine
        return CheckResult(ok, f"{name}: embedding cosine similarity to the baseline min {worst:.6f}, mean "
                               f"{float(np.mean(sims)):.6f} ({'>=' if ok else '<'} {thresholds.min_cosine})",
                           {"cosine": [round(s, 8) for s in sims], "min_cosine": thresholds.min_cosine})
    kl = mean_kl(baseline.vectors, current.vectors)
    ok = math.isfinite(kl) and kl <= thresholds.max_mean_kl
    verb = "<=" if ok else ">"
    evidence = {"mean_kl": kl, "max_mean_kl": thresholds.max_mean_kl}
    if baseline.task == "classification":
        return CheckResult(ok, f"{name}: label distribution KL divergence from the baseline {kl:.6f} nats per prompt "
                               f"({verb} {thresholds.max_mean_kl})", evidence)
    return CheckResult(ok, f"{name}: mean KL divergence from the baseline {kl:.6f} nats/token "
                           f"({verb} {thresholds.max_mean_kl})", evidence)


def check_perplexity(baseline: float | None, current: float | None, max_ratio: float,
                     name: str = "model") -> CheckResult:
    """causal-lm: perplexity on the reference text against the baseline's (both must have been measured)."""
    if baseline is None or current is None:
        return CheckResult(False, f"{name}: perplexity not measured ({'baseline' if baseline is None else 'current'}"
                                  " run had no reference text)", {})
    ratio = current / baseline if baseline > 0 else float("inf")
    ok = math.isfinite(ratio) and ratio <= max_ratio
    return CheckResult(ok, f"{name}: perplexity on the reference text {current:.2f} vs baseline {baseline:.2f} "
                           f"(x{ratio:.3f} {'<=' if ok else '>'} x{max_ratio})",
                       {"baseline": baseline, "current": current, "ratio": ratio, "max_ratio": max_ratio})


def check_latency(baseline: list[float], current: list[float], max_ratio: float | None,
                  name: str = "model") -> CheckResult:
    """Median latency per prompt against the baseline's (medians: robust to a noisy neighbour)."""
    b = float(np.median(baseline)) if baseline else 0.0
    c = float(np.median(current)) if current else 0.0
    ratio = c / b if b > 0 else 1.0
    evidence = {"baseline_median_s": b, "current_median_s": c, "ratio": ratio, "max_ratio": max_ratio}
    if max_ratio is None:
        return CheckResult(True, f"{name}: median latency {c * 1000:.1f} ms vs baseline {b * 1000:.1f} ms "
                                 f"(x{ratio:.2f}, not gated)", evidence)
    ok = ratio <= max_ratio
    return CheckResult(ok, f"{name}: median latency {c * 1000:.1f} ms vs baseline {b * 1000:.1f} ms "
                           f"(x{ratio:.2f} {'<=' if ok else '>'} x{max_ratio})", evidence)


# --- HTTP endpoint ------------------------------------------------------------------------------------------


def _post_json(url: str, payload: dict[str, Any], timeout_s: float) -> tuple[int, Any]:
    """(status, JSON body or the text's start); OSError naming what went wrong when nothing answered."""
    answer = http.post_json(url, payload, timeout_s)
    if not answer.answered:
        raise OSError(f"POST {answer.url}: no answer ({answer.error})")
    try:
        return int(answer.status or 0), answer.json()
    except ValueError:
        return int(answer.status or 0), answer.text[:200]


def generated_text(body: Any) -> str | None:
    """The generated text of a /generate answer: {"text"}, {"generated_text"}, or [{"generated_text"}] (TGI)."""
    if isinstance(body, list) and body:
        body = body[0]
    if isinstance(body, dict):
        for key in ("text", "generated_text", "completion", "output"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return None


def generate_over_http(base_url: str, prompts: list[str], generate_path: str = "/generate",
                       max_new_tokens: int = 16, timeout_s: float = 30.0) -> tuple[list[str], list[float]]:
    """Greedy continuations from an HTTP endpoint (POST {"prompt", "max_new_tokens"}), with latency per prompt."""
    url = base_url.rstrip("/") + generate_path
    texts: list[str] = []
    latencies: list[float] = []
    for prompt in prompts:
        started = time.perf_counter()
        status, body = _post_json(url, {"prompt": prompt, "max_new_tokens": max_new_tokens, "do_sample": False},
                                  timeout_s)
        latencies.append(round(time.perf_counter() - started, 5))
        text = generated_text(body)
        if status != 200 or text is None:
            raise ValueError(f"POST {redact(url)} answered {status}: {redact(str(body))[:200]}")
        texts.append(text)
    return texts, latencies


def check_endpoint(base_url: str, prompt: str, health_path: str = "/health", generate_path: str = "/generate",
                   max_new_tokens: int = 8, timeout_s: float = 30.0, name: str = "model") -> CheckResult:
    """The endpoint's health answers 200 and a /generate round trip returns non-empty text."""
    health = base_url.rstrip("/") + health_path
    shown = redact(base_url)
    evidence: dict[str, Any] = {"endpoint": shown}
    answer = http.get(health, timeout_s)
    if not answer.answered:
        return CheckResult(False, f"{name}: endpoint {redact(health)} unreachable: {answer.error}", evidence)
    evidence["health_status"] = answer.status
    if not 200 <= (answer.status or 0) < 300:
        return CheckResult(False, f"{name}: {redact(health)} answered {answer.status}", evidence)
    try:
        texts, latencies = generate_over_http(base_url, [prompt], generate_path, max_new_tokens, timeout_s)
    except (ValueError, OSError) as exc:
        return CheckResult(False, f"{name}: /generate round trip failed: {redact(str(exc))}", evidence)
    evidence.update(prompt=prompt, text=texts[0], latency_s=latencies[0])
    if not texts[0].strip():
        return CheckResult(False, f"{name}: {shown}{generate_path} returned empty text", evidence)
    return CheckResult(True, f"{name}: {shown} healthy, {generate_path} answered {len(texts[0])} chars in "
                             f"{latencies[0] * 1000:.0f} ms", evidence)

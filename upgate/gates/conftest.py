"""Fixtures shared by the pre and post gates of a family (pytest finds this file for every gate below it)."""

from __future__ import annotations

import pytest

from upgate.plugin.models import deselect_by_task, parametrize_models
from upgate.plugin.pytest_plugin import need_extra


def pytest_configure(config):
    config.addinivalue_line("markers", "model_tasks(*tasks): a model gate that means something only for these tasks")


def pytest_collection_modifyitems(config, items):
    """Model gates of another task than the model's are deselected (not run, not shown as passed)."""
    deselect_by_task(config, items)


def pytest_generate_tests(metafunc):
    """`model_name` runs over the configured [[models]]; one skipped case when there are none."""
    parametrize_models(metafunc)


@pytest.fixture
def model(config, model_name):
    return config.model(model_name)


@pytest.fixture
def local_model(model):
    if model.path is None:
        pytest.skip(f"model '{model.name}': local checkpoint not configured (models.path)")
    need_extra("models", f"model '{model.name}' (a local checkpoint, models.path)")
    return model


@pytest.fixture
def endpoint_model(model):
    if model.endpoint is None:
        pytest.skip(f"model '{model.name}': endpoint not configured (models.endpoint or its _URL variable)")
    return model

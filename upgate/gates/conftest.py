"""Fixtures shared by the pre and post gates of a family (pytest finds this file for every gate below it)."""

from __future__ import annotations

import pytest

from upgate.plugin.models import parametrize_models


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
    return model


@pytest.fixture
def endpoint_model(model):
    if model.endpoint is None:
        pytest.skip(f"model '{model.name}': endpoint not configured (models.endpoint or its _URL variable)")
    return model

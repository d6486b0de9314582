"""The docker deploy step on its own: a live container started by testcontainers, the candidate previewed,
promoted, undone; the engine is asked directly what runs (marker `docker`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from upgate.config import AppConfig, Config, DeployConfig, TargetConfig
from upgate.core.journal import Journal
from upgate.core.runs import RunDir
from upgate.fixtures.images import CONTAINER_PORT, ensure_docker, ensure_service_image
from upgate.fixtures.images.target import socket_mounts
from upgate.fixtures.reference import PLANS, apply_sql_file, fetch_json, free_port
from upgate.fixtures.seed import create_schema, seed
from upgate.steps.base import StepContext
from upgate.steps.deploy.docker import DockerDeploy, state_from_journal

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def images() -> None:
    why = ensure_docker()
    if why:
        pytest.skip(why)
    for build in ("v1", "v2"):
        ensure_service_image(build)


@pytest.fixture
def live(images: None, pg_url: str) -> Iterator[tuple[str, int]]:
    """upgate-ref:v1 as the live container, through testcontainers (no reaper: it would be pulled from a registry)."""
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    testcontainers_config.ryuk_disabled = True
    create_schema(pg_url)
    seed(pg_url, rows=50)
    port = free_port()
    container = DockerContainer("upgate-ref:v1").with_env("DATABASE_URL", pg_url)
    container.ports[f"{CONTAINER_PORT}/tcp"] = ("127.0.0.1", port)  # loopback only (with_bind_ports binds 0.0.0.0)
    for mount in socket_mounts(pg_url):
        container = container.with_volume_mapping(mount.split(":")[0], mount.split(":")[0], "rw")
    container.start()
    name = container.get_wrapped_container().name
    from upgate.fixtures.reference import wait_ready

    wait_ready(f"http://127.0.0.1:{port}", timeout=30)
    try:
        yield name, port
    finally:
        import docker

        client = docker.from_env()
        for c in client.containers.list(all=True, filters={"name": name}):
            c.remove(force=True)


def _step(name: str, port: int, tmp_path: Path) -> tuple[DockerDeploy, StepContext]:
    app = AppConfig(base_url=f"http://127.0.0.1:{port}", ready_path="/ready")
    deploy = DeployConfig(kind="docker", container=name, image="upgate-ref:v2", ready_timeout_s=30)
    config = Config(target=TargetConfig(name="t"), app=app, deploy=deploy)
    run = RunDir.create(tmp_path / "reports")
    ctx = StepContext(config, run, Journal(run.journal))
    return DockerDeploy(deploy, app), ctx


def test_preview_then_promote_then_undo(live: tuple[str, int], pg_url: str, tmp_path: Path) -> None:
    import docker

    name, port = live
    client = docker.from_env()
    previous_image = client.containers.get(name).attrs["Image"]
    step, ctx = _step(name, port, tmp_path)
    step.prepare(ctx)
    apply_sql_file(pg_url, PLANS / "good" / "migrations" / "001_add_cache_columns.up.sql")  # v2 reads its columns
    step.do(ctx)
    preview = step.preview_url()
    assert preview and fetch_json(f"{preview}/health")[1]["build"] == "v2"
    assert fetch_json(f"http://127.0.0.1:{port}/health")[1]["build"] == "v1"  # traffic has not moved
    candidate_env = client.containers.get(f"{name}-candidate").attrs["Config"]["Env"]
    assert "UPGATE_REF_BUILD=v2" in candidate_env and "UPGATE_REF_BUILD=v1" not in candidate_env
    step.promote(ctx)
    assert fetch_json(f"http://127.0.0.1:{port}/health")[1]["build"] == "v2"
    kept = client.containers.get(step.name_previous)
    assert kept.status == "exited" and kept.attrs["Image"] == previous_image
    # `upgate rollback` rebuilds the step from the journal alone
    again = DockerDeploy(step.deploy, step.app, state_from_journal(Journal(ctx.run.journal).read()))
    again.stop_new(ctx)
    again.start_previous(ctx)
    serving = client.containers.get(name)
    assert serving.attrs["Image"] == previous_image and serving.status == "running"
    assert fetch_json(f"http://127.0.0.1:{port}/health")[1]["build"] == "v1"


def test_a_missing_candidate_image_blocks_before_anything(live: tuple[str, int], tmp_path: Path) -> None:
    from upgate.errors import StepFailed

    name, port = live
    step, ctx = _step(name, port, tmp_path)
    step.deploy = step.deploy.model_copy(update={"image": "upgate-ref:does-not-exist"})
    with pytest.raises(StepFailed, match="not in the local engine"):
        step.prepare(ctx)

"""Pre-gate: the app's container is healthy before anything changes (runs again as a post-gate).

Gated: `[deploy] kind = "docker"` (the container `[deploy] container`) or `"compose"` (the project
service's container); in the preview phase, the candidate beside it. The image id recorded here is what
a rollback must serve again; after an upgrade the live container must run the candidate image.
"""

from __future__ import annotations

import pytest

from upgate.checks.containers import check_container, check_image

pytestmark = pytest.mark.upgate_component("containers")


@pytest.fixture(scope="session")
def docker_client(config):
    if config.deploy is None or config.deploy.kind not in ("docker", "compose"):
        pytest.skip("containers not configured ([deploy] kind = \"docker\" or \"compose\")")
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:
        pytest.fail(f"no Docker engine answers: {exc}", pytrace=False)
    return client


@pytest.fixture(scope="session")
def gated_container(config, docker_client, phase):
    """The name of the container serving in this phase (preview: the candidate)."""
    deploy = config.deploy
    if deploy.kind == "docker":
        return f"{deploy.container}-candidate" if phase == "preview" else deploy.container
    from upgate.steps.deploy.compose import LABEL_PROJECT, LABEL_SERVICE, project_name

    project = project_name(deploy.compose_files, deploy.project)
    if phase == "preview":
        return f"{project}-{deploy.container}-candidate"
    running = docker_client.containers.list(filters={"label": [f"{LABEL_PROJECT}={project}",
                                                               f"{LABEL_SERVICE}={deploy.container}"]})
    if len(running) != 1:
        pytest.fail(f"compose project {project} service {deploy.container}: {len(running)} running containers, "
                    "expected one", pytrace=False)
    return running[0].name


def test_container_healthy(docker_client, gated_container, phase, run_dir, evidence):
    baseline = run_dir.load_baseline("containers") or {}
    same = baseline.get("container_id")
    result = check_container(docker_client, gated_container)
    if phase != "pre" and same and result.evidence.get("id") == same:
        result = check_container(docker_client, gated_container, baseline.get("restarts"))
    evidence("container", result)
    if phase == "pre" and result.evidence.get("id"):
        run_dir.save_baseline("containers", {"container_id": result.evidence["id"],
                                             "image_id": result.evidence["image_id"],
                                             "restarts": result.evidence["restarts"]})
    assert result.ok, result.summary


def test_serving_image(config, docker_client, gated_container, phase, run_dir, evidence):
    if phase == "pre":
        pytest.skip("the image id serving now is the baseline (recorded by test_container_healthy)")
    baseline = run_dir.load_baseline("containers") or {}
    if phase == "rollback":
        if not baseline.get("image_id"):
            pytest.fail("no baseline image id in the run folder (pre gates not run?)", pytrace=False)
        result = check_image(docker_client, gated_container, baseline["image_id"], "the previous image, as recorded "
                             "before the upgrade")
    else:
        import docker.errors

        try:
            expected = docker_client.images.get(config.deploy.image).id
        except docker.errors.ImageNotFound:
            pytest.fail(f"[deploy] image {config.deploy.image} is not in the local engine", pytrace=False)
        result = check_image(docker_client, gated_container, expected, f"the candidate {config.deploy.image}")
    evidence("image", result)
    assert result.ok, result.summary

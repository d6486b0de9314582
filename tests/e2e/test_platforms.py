"""`upgate run` on the reference service in containers and on Kubernetes, checked from outside upgate.

Containers (marker `docker`): a Docker engine is needed (started when absent and we are root, else
skipped with the reason); the images are built once and cached in dockerd (the first run builds the
Debian base with debootstrap: about a minute). Kubernetes (marker `kubernetes`): the fake cluster of
upgate/fixtures/k8s, or the current kubeconfig's cluster with UPGATE_K8S_KIND=1 (the CI kind job).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import run_upgate
from upgate.checks.kube import KubeClient, selector_string
from upgate.embedded.postgres import PostgresServer
from upgate.fixtures.demo import DemoTarget, start_target, stop_target

ROWS = 500

pytestmark = pytest.mark.e2e


@pytest.fixture
def platform(request: pytest.FixtureRequest, pg_server: PostgresServer, tmp_path: Path) -> Iterator[DemoTarget]:
    """The scenario's v1 started where it deploys (a container, a compose project, a cluster)."""
    scenario: str = request.param
    if scenario.startswith(("docker-", "compose-")):
        from upgate.fixtures.images import ensure_docker

        why = ensure_docker()
        if why:
            pytest.skip(why)
        if scenario.startswith("compose-"):
            from upgate.errors import StepFailed
            from upgate.steps.deploy.compose import compose_cli

            try:
                compose_cli([])
            except StepFailed as exc:
                pytest.skip(str(exc))
    target = start_target(scenario, pg_server, tmp_path / "target", rows=ROWS)
    try:
        yield target
    finally:
        stop_target(target, pg_server)


def _container(target: DemoTarget) -> dict[str, Any]:
    from upgate.fixtures.images.target import describe_container, live_container

    return describe_container(live_container(json.loads((target.folder / "platform.json").read_text())))


def _cluster(target: DemoTarget) -> tuple[KubeClient, dict[str, Any]]:
    state = json.loads((target.folder / "k8s" / "platform.json").read_text())
    return KubeClient(state["kubeconfig"]), state


@pytest.mark.docker
@pytest.mark.parametrize("platform", ["docker-good"], indirect=True)
def test_docker_good_upgrades_onto_the_live_port(platform: DemoTarget, tmp_path: Path) -> None:
    before = _container(platform)
    proc, summary = run_upgate(platform, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    after = _container(platform)
    assert after["name"] == before["name"] and after["running"]
    assert after["image"] == "upgate-ref:v2" and after["image_id"] != before["image_id"]
    assert summary["deploy"]["previous_image_id"] == before["image_id"]
    # `upgate rollback` of the upgraded run, from its journal alone: the kept container was removed when the
    # run ended, so the previous image id is started again in a new container with the live one's settings.
    from tests.e2e.support import upgate

    undo = upgate("rollback", "--config", str(platform.config), "--reports", str(tmp_path / "reports"), cwd=tmp_path)
    assert undo.returncode == 20, undo.stdout[-3000:]
    back = _container(platform)
    assert back["image_id"] == before["image_id"] and back["running"] and back["name"] == before["name"]


@pytest.mark.docker
@pytest.mark.parametrize("platform", ["docker-preview-bad", pytest.param("compose-preview-bad", marks=pytest.mark.slow)],
                         indirect=True)
def test_preview_failure_never_touches_the_live_container(platform: DemoTarget, tmp_path: Path) -> None:
    before = _container(platform)
    proc, summary = run_upgate(platform, tmp_path)
    assert proc.returncode == 20, proc.stdout[-3000:]
    assert "preview-gates failed before traffic moved" in summary["reason"]
    after = _container(platform)
    assert (after["name"], after["image_id"]) == (before["name"], before["image_id"]), "the live container changed"
    assert summary["downtime"]["failed"] == 0, summary["downtime"]
    assert not any(r["name"] == "promote" for r in summary["steps"])


@pytest.mark.docker
@pytest.mark.parametrize("platform", ["docker-promotion-bad", pytest.param("compose-promotion-bad", marks=pytest.mark.slow)],
                         indirect=True)
def test_promotion_failure_serves_the_previous_image_id(platform: DemoTarget, tmp_path: Path) -> None:
    before = _container(platform)
    proc, summary = run_upgate(platform, tmp_path)
    assert proc.returncode == 20, proc.stdout[-3000:]
    assert summary["reason"].startswith("post-gates failed"), summary["reason"]
    after = _container(platform)
    assert after["image_id"] == before["image_id"] and after["running"] and after["health"] == "healthy"
    from upgate.fixtures.reference import fetch_json

    status, body = fetch_json(f"{platform.base_url}/health")
    assert (status, body.get("build")) == (200, "v1")


@pytest.mark.kubernetes
@pytest.mark.parametrize("platform", ["k8s-blue-green-good"], indirect=True)
def test_blue_green_good_switches_with_no_failed_probe(platform: DemoTarget, tmp_path: Path) -> None:
    proc, summary = run_upgate(platform, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    kube, _state = _cluster(platform)
    service = kube.get("services", "default", "upgate-ref")
    assert service["spec"]["selector"]["version"] == "green"
    assert kube.get("deployments", "default", "upgate-ref-blue")["spec"]["replicas"] == 0
    downtime = summary["downtime"]
    print(f"blue-green good: {downtime['failed']} failed of {downtime['probes']} probes, "
          f"downtime {downtime['downtime_s']:.2f} s")
    assert downtime["failed"] == 0, downtime


@pytest.mark.kubernetes
@pytest.mark.parametrize("platform", ["k8s-blue-green-bad"], indirect=True)
def test_blue_green_bad_puts_the_selector_back_on_blue(platform: DemoTarget, tmp_path: Path) -> None:
    proc, summary = run_upgate(platform, tmp_path)
    assert proc.returncode == 20, proc.stdout[-3000:]
    kube, _state = _cluster(platform)
    selector = kube.get("services", "default", "upgate-ref")["spec"]["selector"]
    assert selector_string(selector) == "app=upgate-ref,version=blue"
    assert kube.get("deployments", "default", "upgate-ref-green")["spec"]["replicas"] == 0
    assert kube.get("deployments", "default", "upgate-ref-blue")["spec"]["replicas"] == 2


@pytest.mark.kubernetes
@pytest.mark.slow  # the long tier (make test-slow): a rollout that must time out; make test keeps blue-green good and bad
@pytest.mark.parametrize("platform", ["k8s-rolling-bad"], indirect=True)
def test_rolling_bad_restores_the_previous_template(platform: DemoTarget, tmp_path: Path) -> None:
    proc, summary = run_upgate(platform, tmp_path)
    assert proc.returncode == 20, proc.stdout[-3000:]
    assert "progress deadline" in summary["reason"]
    kube, _state = _cluster(platform)
    deployment = kube.get("deployments", "default", "upgate-ref")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "upgate-ref:v1"
    pods = kube.list("pods", "default", "app=upgate-ref")
    assert {p["spec"]["containers"][0]["image"] for p in pods if "deletionTimestamp" not in p["metadata"]} == \
        {"upgate-ref:v1"}


@pytest.mark.kubernetes
@pytest.mark.parametrize("platform", ["k8s-node-drain-blocked"], indirect=True)
def test_drain_blocked_by_a_budget_names_the_pods(platform: DemoTarget, tmp_path: Path) -> None:
    kube, _state = _cluster(platform)
    from upgate.fixtures.k8s.target import kind_mode

    node = "kind-worker" if kind_mode() else "node-1"
    on_node = [p["metadata"]["name"] for p in kube.list("pods", "default", fields=f"spec.nodeName={node}")]
    proc, summary = run_upgate(platform, tmp_path)
    assert proc.returncode == 10, proc.stdout[-3000:]
    assert on_node and all(name in summary["reason"] for name in on_node), summary["reason"]
    assert not kube.get("nodes", None, node)["spec"].get("unschedulable"), "the node was cordoned"


@pytest.mark.kubernetes
@pytest.mark.slow  # the long tier (make test-slow): make test keeps the node drain blocked by its budget
@pytest.mark.parametrize("platform", ["k8s-node-upgrade-good"], indirect=True)
def test_node_upgrade_good(platform: DemoTarget, tmp_path: Path) -> None:
    proc, summary = run_upgate(platform, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    kube, _state = _cluster(platform)
    assert summary["steps"][-2]["name"] in ("node-upgrade", "post-gates")
    nodes = {n["metadata"]["name"]: n for n in kube.list("nodes")}
    upgraded = [n for n in nodes.values() if n["status"]["nodeInfo"]["kubeletVersion"] == "v1.31.0"]
    assert len(upgraded) == 1 and not upgraded[0]["spec"].get("unschedulable")

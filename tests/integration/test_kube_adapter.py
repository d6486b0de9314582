"""The Kubernetes adapter's building blocks against the fake cluster (real pods: reference-service processes).

The official client's transport talks to upgate/fixtures/k8s; what only a real cluster proves runs in the
kind job (docs/containers.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from upgate.checks.kube import KubeClient, KubeError, check_nodes, check_pods, rollout_state
from upgate.errors import StepFailed
from upgate.fixtures.k8s import manifests
from upgate.fixtures.k8s.cluster import Cluster, free_port
from upgate.fixtures.seed import create_schema, seed
from upgate.steps.deploy.kubernetes import wait_rollout

pytestmark = pytest.mark.kubernetes


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path / "cluster") as started:
        yield started


@pytest.fixture
def workload(cluster: Cluster, pg_url: str) -> tuple[KubeClient, int]:
    create_schema(pg_url)
    seed(pg_url, rows=50)
    kube = KubeClient(cluster.kubeconfig)
    port = free_port()
    manifests.apply(kube, "default", [manifests.deployment("web", "upgate-ref:v1", pg_url, None, replicas=2,
                                                           progress_deadline_s=8),
                                      manifests.service("web", port, None), manifests.budget("web", 2)])
    manifests.wait_available(kube, "default", "web")
    return kube, port


def test_errors_are_the_api_status(cluster: Cluster) -> None:
    kube = KubeClient(cluster.kubeconfig)
    with pytest.raises(KubeError) as missing:
        kube.get("deployments", "default", "nope")
    assert missing.value.code == 404 and missing.value.reason == "NotFound"


def test_service_traffic_reaches_ready_pods(workload: tuple[KubeClient, int]) -> None:
    from upgate.fixtures.reference import fetch_json

    kube, port = workload
    status, body = fetch_json(f"http://127.0.0.1:{port}/health")
    assert (status, body["build"]) == (200, "v1")
    assert check_pods(kube, "default", "app=upgate-ref").ok


def test_eviction_respects_the_budget_and_names_it(workload: tuple[KubeClient, int]) -> None:
    kube, _port = workload
    pod = kube.list("pods", "default", "app=upgate-ref")[0]["metadata"]["name"]
    with pytest.raises(KubeError) as refused:
        kube.evict("default", pod, dry_run=True)
    assert refused.value.code == 429
    causes = refused.value.body["details"]["causes"]
    assert "needs 2 healthy pods" in causes[0]["message"]
    kube.patch("poddisruptionbudgets", "default", "web", {"spec": {"minAvailable": 1}})
    kube.evict("default", pod, dry_run=True)  # allowed now, and nothing deleted
    assert "deletionTimestamp" not in kube.get("pods", "default", pod)["metadata"]


def test_a_stalled_rollout_names_its_pods(workload: tuple[KubeClient, int]) -> None:
    kube, _port = workload
    deployment = kube.get("deployments", "default", "web")
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "upgate-ref:v2-broken-ready"
    kube.replace("deployments", deployment)
    with pytest.raises(StepFailed) as stalled:
        wait_rollout(kube, "default", "web", timeout_s=60)
    assert "progress deadline" in str(stalled.value) and "Readiness probe failed" in str(stalled.value)
    assert not rollout_state(kube.get("deployments", "default", "web"))[0]


def test_unknown_image_is_a_failed_pull_event(workload: tuple[KubeClient, int]) -> None:
    kube, _port = workload
    manifests.apply(kube, "default", [manifests.deployment("other", "registry.example/app:9.9", "postgresql://x/y",
                                                           "x", replicas=1)])
    import time

    deadline = time.monotonic() + 10
    while True:
        result = check_pods(kube, "default", "app=upgate-ref,version=x")
        if "ErrImagePull" in result.summary or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not result.ok and "ErrImagePull" in result.summary and "Failed to pull image" in result.summary


def test_cordoned_node_is_named(cluster: Cluster) -> None:
    kube = KubeClient(cluster.kubeconfig)
    assert check_nodes(kube).ok
    kube.patch("nodes", None, "node-2", {"spec": {"unschedulable": True}})
    result = check_nodes(kube)
    assert not result.ok and "node-2 cordoned" in result.summary


def test_watch_streams_changes(cluster: Cluster) -> None:
    import threading

    kube = KubeClient(cluster.kubeconfig)
    threading.Timer(0.5, lambda: kube.patch("nodes", None, "node-1", {"metadata": {"labels": {"x": "1"}}})).start()
    seen = [(kind, obj["metadata"]["name"]) for kind, obj in kube.watch("nodes", None,
                                                                        fields="metadata.name=node-1", timeout_s=2)]
    assert ("ADDED", "node-1") in seen and ("MODIFIED", "node-1") in seen

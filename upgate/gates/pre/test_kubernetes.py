"""Pre-gate: the workload on Kubernetes is healthy before anything changes (runs again as a post-gate).

What is gated is what the live Service selects (in the preview phase: what the preview Service selects,
the candidate); without a Service, the configured Deployment. Restarts counted here are the baseline
the post gates compare against.
"""

from __future__ import annotations

import pytest

from upgate.checks.kube import (
    KubeClient,
    KubeError,
    check_deployment,
    check_nodes,
    check_pods,
    check_service,
    selector_string,
)

pytestmark = pytest.mark.upgate_component("kubernetes")


@pytest.fixture(scope="session")
def kube_config(config):
    if config.kubernetes is None:
        pytest.skip("kubernetes not configured ([kubernetes])")
    return config.kubernetes


@pytest.fixture(scope="session")
def kube(kube_config):
    try:
        return KubeClient(kube_config.kubeconfig, kube_config.context, kube_config.request_timeout_s)
    except KubeError as exc:
        pytest.fail(f"[kubernetes]: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def serving(kube, kube_config, phase):
    """(label selector, what it comes from) of the pods that serve in this phase."""
    name = kube_config.preview_service if phase == "preview" else kube_config.service
    try:
        if name:
            selector = (kube.get("services", kube_config.namespace, name).get("spec") or {}).get("selector") or {}
            return selector_string(selector), f"service/{name}"
        if kube_config.deployment:
            deployment = kube.get("deployments", kube_config.namespace, kube_config.deployment)
            labels = (deployment["spec"].get("selector") or {}).get("matchLabels") or {}
            return selector_string(labels), f"deployment/{kube_config.deployment}"
    except KubeError as exc:
        pytest.fail(f"[kubernetes] {exc}", pytrace=False)
    pytest.skip("no workload to gate ([kubernetes] service or deployment)")


def test_service_selects_ready_pods(kube, kube_config, phase, evidence):
    name = kube_config.preview_service if phase == "preview" else kube_config.service
    if not name:
        pytest.skip("no Service configured ([kubernetes] service)")
    result = check_service(kube, kube_config.namespace, name)
    evidence("service", result)
    assert result.ok, result.summary


def test_deployment_rolled_out(kube, kube_config, serving, evidence):
    selector, source = serving
    labels = dict(term.split("=", 1) for term in selector.split(",") if "=" in term)
    deployments = [d for d in kube.list("deployments", kube_config.namespace)
                   if int(d["spec"].get("replicas", 1)) > 0 and all(
                       ((d["spec"]["template"].get("metadata") or {}).get("labels") or {}).get(k) == v
                       for k, v in labels.items())]
    assert deployments, f"no Deployment with replicas runs the pods {source} selects ({selector})"
    results = [check_deployment(kube, kube_config.namespace, d["metadata"]["name"]) for d in deployments]
    evidence("deployments", [r.to_json() for r in results])
    failed = [r.summary for r in results if not r.ok]
    assert not failed, "; ".join(failed)


def test_pods_healthy(kube, kube_config, serving, phase, run_dir, evidence):
    selector, _source = serving
    baseline = run_dir.load_baseline("kubernetes") or {}
    result = check_pods(kube, kube_config.namespace, selector, baseline.get("restarts"))
    evidence("pods", result)
    if phase == "pre":
        run_dir.save_baseline("kubernetes", {"restarts": result.evidence.get("restarts", {})})
    assert result.ok, result.summary


def test_nodes_ready(kube, evidence):
    result = check_nodes(kube)
    evidence("nodes", result)
    assert result.ok, result.summary

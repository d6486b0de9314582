"""Is the workload on Kubernetes healthy? Replicas available, pods not restarting or crash-looping, no failed
pulls or probes, nodes Ready.

    >>> kube = KubeClient(kubeconfig="~/.kube/config")                        # doctest: +SKIP
    >>> check_deployment(kube, "default", "web").summary                      # doctest: +SKIP
    'deployment default/web: 3/3 replicas available and updated (generation 4 observed)'
    >>> check_pods(kube, "default", "app=web,version=green").ok               # doctest: +SKIP

`KubeClient` is the connection: the official `kubernetes` client's transport (kubeconfig, context,
TLS, tokens) speaking plain JSON, so objects stay the API's own dicts. Checks take it and return a
`CheckResult`; they never read config.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from upgate.checks.result import CheckResult

Obj = dict[str, Any]

_PATHS = {"pods": "api/v1", "services": "api/v1", "nodes": "api/v1", "events": "api/v1", "namespaces": "api/v1",
          "deployments": "apis/apps/v1", "replicasets": "apis/apps/v1", "poddisruptionbudgets": "apis/policy/v1"}
#: Pod waiting reasons that mean the container cannot run as it is.
STUCK_REASONS = ("CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError",
                 "InvalidImageName", "RunContainerError")
#: Event reasons that name a failed pull, a failed probe or a crash.
BAD_EVENTS = ("Failed", "BackOff", "Unhealthy", "FailedScheduling", "ErrImagePull")


class KubeError(Exception):
    """The API answered an error (its Status message), or could not be reached."""

    def __init__(self, code: int, message: str, reason: str = "", body: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.body = code, reason, body or {}


class KubeClient:
    """JSON over the official client's connection; `path()` builds the REST path of any resource used here."""

    def __init__(self, kubeconfig: str | Path | None = None, context: str | None = None,
                 timeout_s: float = 10.0) -> None:
        from kubernetes import client, config

        self.timeout_s = timeout_s
        try:
            if kubeconfig is not None:
                self.api = config.new_client_from_config(config_file=str(Path(kubeconfig).expanduser()),
                                                         context=context)
            else:
                try:
                    self.api = config.new_client_from_config(context=context)
                except config.ConfigException:
                    config.load_incluster_config()
                    self.api = client.ApiClient()
        except (config.ConfigException, OSError) as exc:
            where = kubeconfig or "KUBECONFIG / ~/.kube/config / in-cluster"
            raise KubeError(0, f"no usable Kubernetes configuration ({where}): {exc}") from None
        self.server = self.api.configuration.host

    @staticmethod
    def path(resource: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        out = "/" + _PATHS[resource]
        if namespace:
            out += f"/namespaces/{quote(namespace)}"
        out += f"/{resource}"
        if name:
            out += f"/{quote(name)}"
        if sub:
            out += f"/{sub}"
        return out

    def call(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
             content_type: str = "application/json", timeout_s: float | None = None, stream: bool = False) -> Any:
        """One request; the parsed JSON answer (or the raw response when `stream`). KubeError on an error status."""
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json", "Content-Type": content_type}
        request = self.api.param_serialize(method, path, query_params=list((query or {}).items()),
                                           header_params=headers, body=body, auth_settings=["BearerToken"])
        try:
            response = self.api.call_api(*request, _request_timeout=timeout_s or self.timeout_s)
        except ApiException as exc:
            raise _error(exc.status or 0, exc.body) from None
        except Exception as exc:  # urllib3: refused, timed out, TLS
            raise KubeError(0, f"{self.server}{path}: {type(exc).__name__}: {exc}") from None
        if stream:
            if not 200 <= response.status < 300:
                response.read()
                raise _error(response.status, response.data)
            return response.response
        response.read()
        if not 200 <= response.status < 300:
            raise _error(response.status, response.data)
        return json.loads(response.data or b"{}")

    def get(self, resource: str, namespace: str | None, name: str) -> Obj:
        return self.call("GET", self.path(resource, namespace, name))

    def find(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        try:
            return self.get(resource, namespace, name)
        except KubeError as exc:
            if exc.code == 404:
                return None
            raise

    def list(self, resource: str, namespace: str | None = None, labels: str | None = None,
             fields: str | None = None) -> list[Obj]:
        query = {k: v for k, v in (("labelSelector", labels), ("fieldSelector", fields)) if v}
        return list(self.call("GET", self.path(resource, namespace), query).get("items") or [])

    def watch(self, resource: str, namespace: str | None, fields: str | None = None, labels: str | None = None,
              timeout_s: float = 5.0) -> Iterator[tuple[str, Obj]]:
        """(type, object) events until the server closes the watch after `timeout_s`."""
        from kubernetes.watch.watch import iter_resp_lines

        query: dict[str, Any] = {"watch": "true", "timeoutSeconds": max(1, int(timeout_s))}
        query.update({k: v for k, v in (("labelSelector", labels), ("fieldSelector", fields)) if v})
        response = self.call("GET", self.path(resource, namespace), query, timeout_s=timeout_s + 5, stream=True)
        try:
            for line in iter_resp_lines(response):
                if line:
                    event = json.loads(line)
                    yield event.get("type", ""), event.get("object") or {}
        finally:
            response.release_conn()

    def replace(self, resource: str, obj: Obj) -> Obj:
        meta = obj["metadata"]
        return self.call("PUT", self.path(resource, meta.get("namespace"), meta["name"]), body=obj)

    def patch(self, resource: str, namespace: str | None, name: str, patch: Obj, sub: str | None = None) -> Obj:
        return self.call("PATCH", self.path(resource, namespace, name, sub), body=patch,
                         content_type="application/merge-patch+json")

    def create(self, resource: str, namespace: str | None, obj: Obj) -> Obj:
        return self.call("POST", self.path(resource, namespace), body=obj)

    def evict(self, namespace: str, name: str, dry_run: bool = False) -> None:
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}}
        if dry_run:
            body["deleteOptions"] = {"dryRun": ["All"]}
        self.call("POST", self.path("pods", namespace, name, "eviction"), {"dryRun": "All"} if dry_run else None,
                  body=body)


def _error(code: int, data: Any) -> KubeError:
    try:
        body = json.loads(data) if isinstance(data, bytes | str) and data else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = body.get("message") or (data.decode(errors="replace")[:200] if isinstance(data, bytes) else str(data))
    return KubeError(code, str(message), str(body.get("reason", "")), body)


def selector_string(selector: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def condition(obj: Obj, kind: str) -> Obj:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


def rollout_state(deployment: Obj) -> tuple[bool, str]:
    """(done, what) as `kubectl rollout status` tells it; raises nothing, says why it is not done."""
    meta, spec, status = deployment["metadata"], deployment.get("spec") or {}, deployment.get("status") or {}
    name = meta["name"]
    desired = int(spec.get("replicas", 1))
    if int(status.get("observedGeneration", 0)) < int(meta.get("generation", 1)):
        return False, f"deployment {name}: waiting for the controller to observe generation {meta.get('generation')}"
    progressing = condition(deployment, "Progressing")
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return False, f"deployment {name} exceeded its progress deadline: {progressing.get('message', '')}"
    updated = int(status.get("updatedReplicas", 0))
    total = int(status.get("replicas", 0))
    available = int(status.get("availableReplicas", 0))
    if updated < desired:
        return False, f"deployment {name}: {updated} of {desired} new replicas updated"
    if total > updated:
        return False, f"deployment {name}: {total - updated} old replicas pending termination"
    if available < updated:
        return False, f"deployment {name}: {available} of {updated} updated replicas available"
    return True, f"deployment {name}: {available}/{desired} replicas available and updated"


def pod_problems(pod: Obj) -> list[str]:
    """Why a pod does not serve: not Ready, waiting (CrashLoopBackOff, ErrImagePull...), restarted."""
    name = pod["metadata"]["name"]
    out = []
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            out.append(f"{name}: {waiting['reason']}" + (f" ({waiting.get('message')})" if waiting.get("message") else ""))
        if int(status.get("restartCount", 0)):
            out.append(f"{name}: restarted {status['restartCount']} time(s)")
    if condition(pod, "Ready").get("status") != "True" and "deletionTimestamp" not in pod["metadata"]:
        out.append(f"{name}: not Ready")
    return out


def pod_events(kube: KubeClient, namespace: str, pods: list[Obj]) -> list[str]:
    """Warning events of failed pulls, probes, back-offs and scheduling for these pods, named in each line.

    A failed probe counts only for a pod that is not Ready now (one failure while starting is not a fault)."""
    names = {p["metadata"]["name"]: p for p in pods}
    out = []
    for event in kube.list("events", namespace):
        involved = event.get("involvedObject") or {}
        pod = names.get(involved.get("name", ""))
        if pod is None or event.get("type") != "Warning" or event.get("reason") not in BAD_EVENTS:
            continue
        if event.get("reason") == "Unhealthy" and condition(pod, "Ready").get("status") == "True":
            continue
        count = int(event.get("count") or 1)
        out.append(f"{involved['name']}: {event['reason']}: {event.get('message', '')}" + (f" (x{count})" if count > 1 else ""))
    return out


def check_deployment(kube: KubeClient, namespace: str, name: str) -> CheckResult:
    """The Deployment has rolled out: generation observed, every replica updated and available."""
    try:
        deployment = kube.get("deployments", namespace, name)
    except KubeError as exc:
        return CheckResult(False, f"deployment {namespace}/{name} cannot be read: {exc}", {"error": str(exc)})
    done, what = rollout_state(deployment)
    status = deployment.get("status") or {}
    evidence = {"name": name, "namespace": namespace, "replicas": deployment["spec"].get("replicas", 1),
                "available": status.get("availableReplicas", 0), "updated": status.get("updatedReplicas", 0),
                "generation": deployment["metadata"].get("generation"),
                "observed_generation": status.get("observedGeneration"),
                "images": [c.get("image") for c in deployment["spec"]["template"]["spec"]["containers"]]}
    return CheckResult(done, f"{namespace}/{what}" if done else what, evidence)


def check_pods(kube: KubeClient, namespace: str, selector: str, baseline_restarts: dict[str, int] | None = None,
               ) -> CheckResult:
    """Every pod the selector picks is Ready, none waits in CrashLoopBackOff or ErrImagePull, none restarted
    (beyond `baseline_restarts`, by pod name), and no Warning event names a failed pull or probe."""
    try:
        pods = [p for p in kube.list("pods", namespace, selector) if "deletionTimestamp" not in p["metadata"]]
        events = pod_events(kube, namespace, pods)
    except KubeError as exc:
        return CheckResult(False, f"pods {selector} in {namespace} cannot be listed: {exc}", {"error": str(exc)})
    baseline = baseline_restarts or {}
    restarts = {p["metadata"]["name"]: sum(int(s.get("restartCount", 0)) for s in
                                           (p.get("status") or {}).get("containerStatuses") or []) for p in pods}
    problems = []
    for pod in pods:
        for problem in pod_problems(pod):
            if "restarted" in problem and restarts[pod["metadata"]["name"]] <= baseline.get(pod["metadata"]["name"], 0):
                continue
            problems.append(problem)
    problems += events
    evidence = {"selector": selector, "namespace": namespace, "pods": sorted(restarts), "restarts": restarts,
                "problems": problems}
    if not pods:
        return CheckResult(False, f"no pod matches {selector} in {namespace}", evidence)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        return CheckResult(False, f"{len(pods)} pod(s) {selector}: {shown}", evidence)
    return CheckResult(True, f"{len(pods)} pod(s) {selector} Ready, no restarts, no failed pulls or probes", evidence)


def check_nodes(kube: KubeClient) -> CheckResult:
    """Every node is Ready and schedulable (a node left cordoned after an upgrade is named)."""
    try:
        nodes = kube.list("nodes")
    except KubeError as exc:
        return CheckResult(False, f"nodes cannot be listed: {exc}", {"error": str(exc)})
    problems = []
    versions = {}
    for node in nodes:
        name = node["metadata"]["name"]
        versions[name] = ((node.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion")
        ready = condition(node, "Ready")
        if ready.get("status") != "True":
            problems.append(f"{name} not Ready ({ready.get('reason', 'no Ready condition')})")
        if (node.get("spec") or {}).get("unschedulable"):
            problems.append(f"{name} cordoned (unschedulable)")
    evidence = {"nodes": versions, "problems": problems}
    if not nodes:
        return CheckResult(False, "the cluster lists no node", evidence)
    if problems:
        return CheckResult(False, f"{len(problems)} node problem(s): {'; '.join(problems)}", evidence)
    return CheckResult(True, f"{len(nodes)} node(s) Ready and schedulable "
                             f"({', '.join(f'{n} {v}' for n, v in sorted(versions.items()))})", evidence)


def check_service(kube: KubeClient, namespace: str, name: str) -> CheckResult:
    """The Service selects at least one Ready pod (its endpoints would not be empty)."""
    try:
        service = kube.get("services", namespace, name)
        selector = (service.get("spec") or {}).get("selector") or {}
        pods = kube.list("pods", namespace, selector_string(selector)) if selector else []
    except KubeError as exc:
        return CheckResult(False, f"service {namespace}/{name} cannot be read: {exc}", {"error": str(exc)})
    ready = [p["metadata"]["name"] for p in pods if condition(p, "Ready").get("status") == "True"
             and "deletionTimestamp" not in p["metadata"]]
    evidence = {"service": name, "selector": selector, "ready_pods": ready}
    if not ready:
        return CheckResult(False, f"service {namespace}/{name} selects no Ready pod (selector "
                                  f"{selector_string(selector) or 'empty'})", evidence)
    return CheckResult(True, f"service {namespace}/{name} ({selector_string(selector)}) selects {len(ready)} Ready "
                             f"pod(s)", evidence)

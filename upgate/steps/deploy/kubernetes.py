"""Deploy on Kubernetes through the official client: a rolling update, or the guide's blue-green switch.

    [deploy]
    kind = "kubernetes"
    strategy = "blue-green"            # or "rolling"
    image = "registry/app:v2"

    [kubernetes]
    namespace = "prod"
    service = "app"                    # the live Service; its selector names the colour that serves
    preview_service = "app-preview"    # blue-green: selects the candidate before promotion
    preview_url = "http://app-preview.example:8080"
    deployment = "app"                 # rolling: the Deployment patched

rolling: the Deployment's container image is replaced (optimistic concurrency on resourceVersion),
then waited for as `kubectl rollout status` does (observed generation, updated and available replicas,
ProgressDeadlineExceeded). Undo puts the previous pod template back (`kubectl rollout undo`: the old
ReplicaSet's template) and waits for that rollout.

blue-green: the Deployment the live Service selects is blue; green is its copy with the colour label
switched and the candidate image, created (or replaced) beside it and waited for; the preview Service
is pointed at green and the pipeline gates green there; `promote` switches the live Service's selector;
after the post gates pass, `retire` scales blue to 0 (after `scale_down_delay_s`). Undo switches the
selector back to blue (scaled up again first when it was retired) and scales green to 0.
"""

from __future__ import annotations

import copy
import time
from typing import Any, ClassVar

from upgate.checks.health import probe_http
from upgate.checks.kube import (
    KubeClient,
    KubeError,
    Obj,
    pod_events,
    pod_problems,
    rollout_state,
    selector_string,
)
from upgate.config import AppConfig, Config, DeployConfig, KubernetesConfig
from upgate.errors import StepFailed
from upgate.steps.base import Record, StepContext, StepPlan, records_for, started
from upgate.steps.deploy.base import Deployer

_SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields", "selfLink")


def kube_client(k8s: KubernetesConfig) -> KubeClient:
    try:
        return KubeClient(k8s.kubeconfig, k8s.context, k8s.request_timeout_s)
    except KubeError as exc:
        raise StepFailed(f"[kubernetes]: {exc}") from None


def other_color(color: str) -> str:
    return "blue" if color == "green" else "green"


def wait_rollout(kube: KubeClient, namespace: str, name: str, timeout_s: float,
                 say: Any = None) -> str:
    """Wait as `kubectl rollout status` does (a watch on the Deployment); StepFailed naming the pods' problems
    when the progress deadline passes or `timeout_s` does."""
    deadline = time.monotonic() + timeout_s
    last = "no status yet"
    while True:
        deployment = kube.get("deployments", namespace, name)
        done, last = rollout_state(deployment)
        if done:
            return last
        if "progress deadline" in last or time.monotonic() >= deadline:
            raise StepFailed(f"{last}{_pod_detail(kube, namespace, deployment)}")
        try:
            for _kind, _obj in kube.watch("deployments", namespace, fields=f"metadata.name={name}",
                                          timeout_s=min(5.0, max(1.0, deadline - time.monotonic()))):
                done, last = rollout_state(_obj) if _obj.get("metadata") else (False, last)
                if done or "progress deadline" in last:
                    break
        except KubeError:
            time.sleep(0.5)  # a watch the server refused: read again


def _pod_detail(kube: KubeClient, namespace: str, deployment: Obj) -> str:
    labels = (deployment["spec"].get("selector") or {}).get("matchLabels") or {}
    try:
        pods = [p for p in kube.list("pods", namespace, selector_string(labels))
                if "deletionTimestamp" not in p["metadata"]]
        image = deployment["spec"]["template"]["spec"]["containers"][0].get("image")
        new = [p for p in pods if p["spec"]["containers"][0].get("image") == image]
        problems = [x for p in new for x in pod_problems(p)] + pod_events(kube, namespace, new)
    except KubeError:
        return ""
    return ("; pods: " + "; ".join(dict.fromkeys(problems))[:800]) if problems else ""


class KubernetesDeploy(Deployer):
    """One class for both strategies: the journal says which parts ran (module docstring)."""

    kind: ClassVar[str] = "kubernetes"
    #: The pipeline's name for `prepare` (recording what runs, checking it is settled), shown when it blocks.
    prepare_label: ClassVar[str] = "deploy check"

    def __init__(self, deploy: DeployConfig, app: AppConfig | None, k8s: KubernetesConfig,
                 state: dict[str, Any] | None = None) -> None:
        super().__init__(deploy, app)
        self.k8s = k8s
        self._kube: KubeClient | None = None
        self.state: dict[str, Any] = dict(state or {})
        self.record.update(strategy=deploy.strategy, namespace=k8s.namespace)

    @classmethod
    def from_config(cls, config: Config) -> KubernetesDeploy:
        assert config.deploy is not None and config.kubernetes is not None
        return cls(config.deploy, config.app, config.kubernetes)

    @property
    def kube(self) -> KubeClient:
        if self._kube is None:
            self._kube = kube_client(self.k8s)
        return self._kube

    @property
    def ns(self) -> str:
        return self.k8s.namespace

    @property
    def blue_green(self) -> bool:
        return self.deploy.strategy == "blue-green"

    def plan(self) -> StepPlan:
        if self.blue_green:
            return StepPlan(self.name, (
                f"blue: the Deployment service/{self.k8s.service} selects now (namespace {self.ns})",
                f"green: blue's copy with {self.k8s.color_label}=<other colour> and image {self.deploy.image}; "
                "wait until every replica is available",
                f"point service/{self.k8s.preview_service} at green; preview-gates against {self.k8s.preview_url}",
                f"promote: switch service/{self.k8s.service}'s selector to green",
                f"retire (after the post gates): scale blue to 0 after {self.k8s.scale_down_delay_s:g} s"),
                (f"switch service/{self.k8s.service} back to blue (scaled up first if it was retired), scale green "
                 "to 0 (before the database is undone)",
                 "then wait until blue is available and the live URL answers"))
        return StepPlan(self.name, (
            f"replace the image of deployment/{self.k8s.deployment} (namespace {self.ns}) with {self.deploy.image}",
            "wait like `kubectl rollout status`: generation observed, replicas updated and available, "
            "progress deadline"),
            ("put the previous pod template back (the old ReplicaSet's, as `kubectl rollout undo`) before the "
             "database is undone",
             "then wait until that rollout is complete and the live URL answers"))

    # --- shared -------------------------------------------------------------------------------------

    def _container(self, template: Obj) -> Obj:
        containers = template["spec"]["containers"]
        if self.deploy.container:
            found = next((c for c in containers if c["name"] == self.deploy.container), None)
            if found is None:
                raise StepFailed(f"[deploy] container {self.deploy.container!r} is not in the pod template "
                                 f"(containers: {', '.join(c['name'] for c in containers)})")
            return found
        return containers[0]

    def _timeout(self, deployment: Obj) -> float:
        deadline = deployment["spec"].get("progressDeadlineSeconds")
        return float(deadline) + 30 if deadline else self.k8s.rollout_timeout_s

    def _wait_live(self, which: str, any_answer: bool = False) -> str:
        """The live ready URL answers 2xx (`any_answer`: answers at all; the post gates judge what)."""
        if self.app is None:
            return "no [app]: live URL not checked"
        url = self.app.url(self.app.ready_path)
        deadline = time.monotonic() + self.deploy.ready_timeout_s
        while True:
            answer = probe_http(url, timeout_s=2.0)
            if answer.ok or (any_answer and answer.evidence.get("status") is not None):
                return f"{url} answered {answer.evidence.get('status')} ({which})"
            if time.monotonic() >= deadline:
                raise StepFailed(f"{url} not ready after {self.deploy.ready_timeout_s:g} s ({which}): {answer.summary}")
            time.sleep(0.1)

    def _replace(self, resource: str, name: str, change: Any) -> Obj:
        """Read, change, replace; again on a 409 Conflict (someone else wrote in between)."""
        for _attempt in range(5):
            obj = self.kube.get(resource, self.ns, name)
            change(obj)
            try:
                return self.kube.replace(resource, obj)
            except KubeError as exc:
                if exc.code != 409:
                    raise
        raise StepFailed(f"{resource}/{name}: five conflicting writes in a row; someone else is changing it")

    # --- plan check ---------------------------------------------------------------------------------

    def prepare(self, ctx: StepContext) -> None:
        try:
            self._prepare_blue_green(ctx) if self.blue_green else self._prepare_rolling(ctx)
        except KubeError as exc:
            raise StepFailed(f"[kubernetes] {exc}") from None

    def _prepare_rolling(self, ctx: StepContext) -> None:
        assert self.k8s.deployment
        deployment = self.kube.find("deployments", self.ns, self.k8s.deployment)
        if deployment is None:
            raise StepFailed(f"[kubernetes] deployment {self.k8s.deployment!r} not found in namespace {self.ns}")
        done, what = rollout_state(deployment)
        if not done:
            raise StepFailed(f"the live deployment is not settled before the upgrade: {what}")
        container = self._container(deployment["spec"]["template"])
        revision = deployment["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision")
        self.state.update(previous_template=deployment["spec"]["template"], previous_revision=revision,
                          previous_image=container.get("image"), generation=deployment["metadata"].get("generation"))
        ctx.journal.write(self.name, "recorded", strategy="rolling", deployment=self.k8s.deployment,
                          previous_revision=revision, previous_image=container.get("image"))
        self.record.update(deployment=self.k8s.deployment, previous_image=container.get("image"),
                           previous_revision=revision, candidate_image=self.deploy.image)

    def _prepare_blue_green(self, ctx: StepContext) -> None:
        assert self.k8s.service and self.k8s.preview_service
        service = self.kube.find("services", self.ns, self.k8s.service)
        if service is None:
            raise StepFailed(f"[kubernetes] service {self.k8s.service!r} not found in namespace {self.ns}")
        if self.kube.find("services", self.ns, self.k8s.preview_service) is None:
            raise StepFailed(f"[kubernetes] preview_service {self.k8s.preview_service!r} not found in namespace "
                             f"{self.ns}: create it (a copy of {self.k8s.service} under another name and port)")
        selector = dict((service.get("spec") or {}).get("selector") or {})
        color = selector.get(self.k8s.color_label)
        if not color:
            raise StepFailed(f"service {self.k8s.service} selects {selector_string(selector) or 'nothing'}: its "
                             f"selector needs the colour label {self.k8s.color_label!r} ([kubernetes] color_label)")
        serving = [d for d in self.kube.list("deployments", self.ns)
                   if all(((d["spec"]["template"].get("metadata") or {}).get("labels") or {}).get(k) == v
                          for k, v in selector.items()) and int(d["spec"].get("replicas", 1)) > 0]
        if self.k8s.deployment:
            serving = [d for d in serving if d["metadata"]["name"] == self.k8s.deployment] or serving
        if len(serving) != 1:
            raise StepFailed(f"service {self.k8s.service} ({selector_string(selector)}) selects the pods of "
                             f"{len(serving)} deployments ({', '.join(d['metadata']['name'] for d in serving) or 'none'})"
                             "; expected exactly one (blue)")
        blue = serving[0]
        done, what = rollout_state(blue)
        if not done:
            raise StepFailed(f"blue is not settled before the upgrade: {what}")
        green_color = other_color(color)
        name = blue["metadata"]["name"]
        green_name = name.replace(color, green_color) if color in name else f"{name}-{green_color}"
        self.state.update(selector=selector, blue=name, blue_color=color, green=green_name, green_color=green_color,
                          blue_replicas=int(blue["spec"].get("replicas", 1)),
                          previous_image=self._container(blue["spec"]["template"]).get("image"))
        ctx.journal.write(self.name, "recorded", strategy="blue-green", **{k: self.state[k] for k in (
            "selector", "blue", "blue_color", "green", "green_color", "blue_replicas", "previous_image")})
        self.record.update(blue=name, green=green_name, previous_image=self.state["previous_image"],
                           candidate_image=self.deploy.image, service=self.k8s.service)
        ctx.say("deploy", f"blue: deployment/{name} ({self.k8s.color_label}={color}, "
                          f"{self.state['blue_replicas']} replicas, {self.state['previous_image']}); green will be "
                          f"deployment/{green_name}")

    # --- do -----------------------------------------------------------------------------------------

    def do(self, ctx: StepContext) -> None:
        try:
            self._green_up(ctx) if self.blue_green else self._roll(ctx)
        except KubeError as exc:
            raise StepFailed(f"kubernetes: {exc}") from None

    def _roll(self, ctx: StepContext) -> None:
        assert self.k8s.deployment

        def set_image(deployment: Obj) -> None:
            self._container(deployment["spec"]["template"])["image"] = self.deploy.image

        ctx.journal.write(self.name, "patching", deployment=self.k8s.deployment, image=self.deploy.image)
        updated = self._replace("deployments", self.k8s.deployment, set_image)
        self.state["patched"] = True
        ctx.journal.write(self.name, "patched", generation=updated["metadata"].get("generation"))
        ctx.say("deploy", f"deployment/{self.k8s.deployment}: image {self.deploy.image} (generation "
                          f"{updated['metadata'].get('generation')}); waiting for the rollout")
        what = wait_rollout(self.kube, self.ns, self.k8s.deployment, self._timeout(updated))
        ctx.journal.write(self.name, "rolled-out", detail=what)
        self.record["rollout"] = what
        ctx.say("deploy", what)

    def _green_manifest(self, blue: Obj) -> Obj:
        color_label, green_color = self.k8s.color_label, self.state["green_color"]
        green = copy.deepcopy(blue)
        green.pop("status", None)
        meta = green["metadata"]
        for key in _SERVER_FIELDS:
            meta.pop(key, None)
        meta.get("annotations", {}).pop("deployment.kubernetes.io/revision", None)
        meta["name"] = self.state["green"]
        meta.setdefault("labels", {})[color_label] = green_color
        green["spec"]["selector"].setdefault("matchLabels", {})[color_label] = green_color
        green["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {})[color_label] = green_color
        green["spec"]["replicas"] = self.state["blue_replicas"]
        self._container(green["spec"]["template"])["image"] = self.deploy.image
        return green

    def _green_up(self, ctx: StepContext) -> None:
        blue = self.kube.get("deployments", self.ns, self.state["blue"])
        green = self._green_manifest(blue)
        existing = self.kube.find("deployments", self.ns, self.state["green"])
        ctx.journal.write(self.name, "creating-green", green=self.state["green"], image=self.deploy.image,
                          replaced=existing is not None)
        self.state["green_started"] = True
        if existing is None:
            created = self.kube.create("deployments", self.ns, green)
        else:
            if existing["spec"]["selector"] != green["spec"]["selector"]:
                raise StepFailed(f"deployment {self.state['green']} exists with another selector: remove it by hand")
            green["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            created = self.kube.replace("deployments", green)
        ctx.say("deploy", f"green: deployment/{self.state['green']} with {self.deploy.image}, "
                          f"{self.state['blue_replicas']} replicas; waiting until available")
        what = wait_rollout(self.kube, self.ns, self.state["green"], self._timeout(created))
        ctx.journal.write(self.name, "green-available", detail=what)
        preview_selector = {**self.state["selector"], self.k8s.color_label: self.state["green_color"]}
        assert self.k8s.preview_service
        self.kube.patch("services", self.ns, self.k8s.preview_service, {"spec": {"selector": preview_selector}})
        ctx.journal.write(self.name, "preview-switched", service=self.k8s.preview_service, selector=preview_selector)
        detail = self._wait_url(self.preview_url() or "", "green on the preview service")
        ctx.say("deploy", f"{what}; {detail}")
        self.record.update(green_rollout=what, preview_url=self.preview_url())

    def _wait_url(self, base_url: str, which: str) -> str:
        path = self.app.ready_path if self.app else "/"
        url = base_url.rstrip("/") + path
        deadline = time.monotonic() + self.deploy.ready_timeout_s
        while True:
            answer = probe_http(url, timeout_s=2.0)
            if answer.ok:
                return f"{url} answered {answer.evidence.get('status')} ({which})"
            if time.monotonic() >= deadline:
                raise StepFailed(f"{url} not ready after {self.deploy.ready_timeout_s:g} s ({which}): {answer.summary}")
            time.sleep(0.1)

    # --- promotion ----------------------------------------------------------------------------------

    def preview_url(self) -> str | None:
        if not self.blue_green or not self.state.get("green_started") or self.state.get("promoted"):
            return None
        return self.k8s.preview_url

    def promote(self, ctx: StepContext) -> None:
        assert self.k8s.service
        selector = {**self.state["selector"], self.k8s.color_label: self.state["green_color"]}
        ctx.journal.write(self.name, "promoting", service=self.k8s.service, selector=selector)
        self.state["promoted"] = True
        self.kube.patch("services", self.ns, self.k8s.service, {"spec": {"selector": selector}})
        self.state["promoted_at"] = time.monotonic()
        detail = self._wait_live("green serving", any_answer=True)
        ctx.journal.write(self.name, "promoted", selector=selector, detail=detail)
        ctx.say("deploy", f"service/{self.k8s.service} now selects {selector_string(selector)}; {detail}")
        self.record.update(promoted=True, live_selector=selector)

    def retire(self, ctx: StepContext) -> None:
        if not self.blue_green or not self.state.get("promoted"):
            return
        waited = time.monotonic() - float(self.state.get("promoted_at", time.monotonic()))
        if waited < self.k8s.scale_down_delay_s:
            ctx.say("deploy", f"blue keeps running {self.k8s.scale_down_delay_s - waited:.0f} s more "
                              "(scale_down_delay_s), then it is scaled to 0")
            time.sleep(self.k8s.scale_down_delay_s - waited)
        self.kube.patch("deployments", self.ns, self.state["blue"], {"spec": {"replicas": 0}})
        ctx.journal.write(self.name, "retired", blue=self.state["blue"])
        ctx.say("deploy", f"deployment/{self.state['blue']} scaled to 0 (kept for `upgate rollback`)")
        self.record["retired"] = self.state["blue"]

    # --- undo ---------------------------------------------------------------------------------------

    def stop_new(self, ctx: StepContext) -> None:
        try:
            self._stop_green(ctx) if self.blue_green else self._undo_template(ctx)
        except KubeError as exc:
            raise StepFailed(f"kubernetes: {exc}") from None

    def start_previous(self, ctx: StepContext) -> None:
        try:
            if self.blue_green:
                name = self.state["blue"]
                what = wait_rollout(self.kube, self.ns, name, self.k8s.rollout_timeout_s)
                service = self.kube.get("services", self.ns, self.k8s.service or "")
                selector = (service.get("spec") or {}).get("selector") or {}
                if selector.get(self.k8s.color_label) != self.state["blue_color"]:
                    raise StepFailed(f"service {self.k8s.service} selects {selector_string(selector)}, not blue")
            else:
                assert self.k8s.deployment
                name = self.k8s.deployment
                what = wait_rollout(self.kube, self.ns, name, self.k8s.rollout_timeout_s)
        except KubeError as exc:
            raise StepFailed(f"kubernetes: {exc}") from None
        detail = self._wait_live("previous version")
        ctx.journal.write(self.name, "ready", which="previous", detail=f"{what}; {detail}")
        ctx.say("deploy", f"{what}; {detail}")
        self.record["ready_previous"] = f"{what}; {detail}"

    def _stop_green(self, ctx: StepContext) -> None:
        blue, green = self.state["blue"], self.state["green"]
        if self.state.get("promoted"):
            current = self.kube.get("deployments", self.ns, blue)
            if int(current["spec"].get("replicas", 0)) == 0:
                ctx.say("deploy", f"blue was retired: scaling deployment/{blue} back to {self.state['blue_replicas']}")
                self.kube.patch("deployments", self.ns, blue, {"spec": {"replicas": self.state["blue_replicas"]}})
                wait_rollout(self.kube, self.ns, blue, self.k8s.rollout_timeout_s)
            assert self.k8s.service
            self.kube.patch("services", self.ns, self.k8s.service, {"spec": {"selector": self.state["selector"]}})
            ctx.journal.write(self.name, "switched-back", service=self.k8s.service, selector=self.state["selector"])
            ctx.say("deploy", f"service/{self.k8s.service} back on {selector_string(self.state['selector'])}")
        if self.kube.find("deployments", self.ns, green) is not None:
            self.kube.patch("deployments", self.ns, green, {"spec": {"replicas": 0}})
            ctx.journal.write(self.name, "green-scaled-down", green=green)
            ctx.say("deploy", f"deployment/{green} scaled to 0")
        self.record["live_selector"] = self.state["selector"]

    def _undo_template(self, ctx: StepContext) -> None:
        assert self.k8s.deployment
        template = self.state.get("previous_template") or self._template_of_revision()
        if template is None:
            raise StepFailed(f"the previous pod template of deployment/{self.k8s.deployment} (revision "
                             f"{self.state.get('previous_revision')}) is gone: no ReplicaSet holds it any more")

        def put_back(deployment: Obj) -> None:
            deployment["spec"]["template"] = copy.deepcopy(template)

        updated = self._replace("deployments", self.k8s.deployment, put_back)
        ctx.journal.write(self.name, "template-restored", revision=self.state.get("previous_revision"),
                          generation=updated["metadata"].get("generation"))
        ctx.say("deploy", f"deployment/{self.k8s.deployment}: previous pod template back (revision "
                          f"{self.state.get('previous_revision')}, image {self.state.get('previous_image')})")

    def _template_of_revision(self) -> Obj | None:
        """The pod template of the recorded revision, from its ReplicaSet (`upgate rollback` from a journal)."""
        assert self.k8s.deployment
        deployment = self.kube.get("deployments", self.ns, self.k8s.deployment)
        labels = (deployment["spec"].get("selector") or {}).get("matchLabels") or {}
        for rs in self.kube.list("replicasets", self.ns, selector_string(labels)):
            annotations = rs["metadata"].get("annotations") or {}
            if annotations.get("deployment.kubernetes.io/revision") == str(self.state.get("previous_revision")):
                template = copy.deepcopy(rs["spec"]["template"])
                template.get("metadata", {}).get("labels", {}).pop("pod-template-hash", None)
                return template
        return None

    @classmethod
    def from_journal(cls, config: Config, records: list[Record], ctx: StepContext) -> KubernetesDeploy | None:
        if config.deploy is None or config.deploy.kind != cls.kind or config.kubernetes is None or \
                not started(records, cls.name):
            return None
        state: dict[str, Any] = {}
        for r in records_for(records, cls.name):
            event = r.get("event")
            if event == "recorded":
                state.update({k: v for k, v in r.items() if k not in ("ts", "step", "event", "strategy")})
            elif event == "patching":
                state["patched"] = True
            elif event == "creating-green":
                state["green_started"] = True
            elif event == "promoting":
                state["promoted"] = True
        if not (state.get("patched") or state.get("green_started")):
            return None
        return cls(config.deploy, config.app, config.kubernetes, state)

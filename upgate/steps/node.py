"""Upgrade one Kubernetes node (the guide's node upgrade procedure): cordon, drain, upgrade, uncordon, Ready.

    [node_upgrade]
    node = "node-1"
    command = ["ssh", "node-1", "sudo apt-get update && sudo apt-get upgrade -y"]

`prepare` (before anything is touched) asks the Eviction API, as a dry run, whether each pod on the node
may go; a PodDisruptionBudget that keeps refusing for `precheck_timeout_s` blocks the run, naming the
pods and the budget's message. `do` cordons, evicts every pod (DaemonSet pods stay, as
`kubectl drain --ignore-daemonsets`; a 429 is retried, as kubectl does, until `drain_timeout_s`, then
the pods still refused are named), waits until they are gone, runs `command`, uncordons and waits until
the node is Ready. Undo uncordons (the evicted pods were rescheduled by their controllers).
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any, ClassVar

from upgate.checks.kube import KubeClient, KubeError, Obj, condition
from upgate.config import Config, KubernetesConfig, NodeUpgradeConfig
from upgate.errors import StepFailed
from upgate.steps.base import Record, Step, StepContext, StepPlan, records_for, started
from upgate.steps.deploy.kubernetes import kube_client


class NodeUpgradeStep(Step):
    name: ClassVar[str] = "node-upgrade"
    label: ClassVar[str] = "node upgrade"
    #: The pipeline's name for `prepare` (the dry-run drain), shown when it blocks.
    prepare_label: ClassVar[str] = "node-upgrade check"

    def __init__(self, node: NodeUpgradeConfig, k8s: KubernetesConfig, cordoned: bool = False) -> None:
        self.node = node
        self.k8s = k8s
        self.cordoned = cordoned
        self._kube: KubeClient | None = None
        self.record: dict[str, Any] = {"node": node.node}

    @classmethod
    def from_config(cls, config: Config) -> NodeUpgradeStep:
        assert config.node_upgrade is not None and config.kubernetes is not None
        return cls(config.node_upgrade, config.kubernetes)

    @property
    def kube(self) -> KubeClient:
        if self._kube is None:
            self._kube = kube_client(self.k8s)
        return self._kube

    def plan(self) -> StepPlan:
        n = self.node.node
        return StepPlan(self.name, (
            f"dry-run evictions of the pods on node {n}: a PodDisruptionBudget that refuses blocks the run",
            f"cordon {n}; evict its pods through the Eviction API (PodDisruptionBudgets respected, 429 retried "
            f"for {self.node.drain_timeout_s:g} s); wait until they are gone",
            f"run {' '.join(self.node.command)}",
            f"uncordon {n}; wait until it is Ready"), (f"uncordon {n}",))

    def summary(self) -> dict[str, Any] | None:
        return dict(self.record)

    # --- parts --------------------------------------------------------------------------------------

    def _pods(self) -> list[Obj]:
        pods = self.kube.list("pods", None, fields=f"spec.nodeName={self.node.node}")
        out = []
        for pod in pods:
            owners = pod["metadata"].get("ownerReferences") or []
            if self.node.ignore_daemonsets and any(o.get("kind") == "DaemonSet" for o in owners):
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            out.append(pod)
        return out

    def _refused(self, pods: list[Obj], dry_run: bool) -> dict[str, str]:
        """Evict each pod (or ask, with dry_run); the pods refused, with the API's reason."""
        refused = {}
        for pod in pods:
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            if "deletionTimestamp" in pod["metadata"]:
                continue
            try:
                self.kube.evict(ns, name, dry_run=dry_run)
            except KubeError as exc:
                if exc.code == 404:
                    continue
                causes = (exc.body.get("details") or {}).get("causes") or []
                refused[f"{ns}/{name}"] = "; ".join(c.get("message", "") for c in causes) or str(exc)
        return refused

    def prepare(self, ctx: StepContext) -> None:
        try:
            node = self.kube.find("nodes", None, self.node.node)
            if node is None:
                known = ", ".join(n["metadata"]["name"] for n in self.kube.list("nodes"))
                raise StepFailed(f"[node_upgrade] node {self.node.node!r} not found (nodes: {known or 'none'})")
            self.record["version_before"] = ((node.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion")
            deadline = time.monotonic() + self.node.precheck_timeout_s
            while True:
                pods = self._pods()
                refused = self._refused(pods, dry_run=True)
                if not refused or time.monotonic() >= deadline:
                    break
                time.sleep(1.0)
        except KubeError as exc:
            raise StepFailed(f"[kubernetes] {exc}") from None
        self.record["pods"] = [p["metadata"]["name"] for p in pods]
        if refused:
            ctx.journal.write(self.name, "drain-blocked", pods=sorted(refused))
            raise StepFailed(f"draining node {self.node.node} would violate a PodDisruptionBudget: "
                             f"{len(refused)} pod(s) cannot be evicted: "
                             + "; ".join(f"{pod} ({why})" for pod, why in sorted(refused.items())))
        ctx.say("node", f"{self.node.node}: {len(pods)} pod(s) to evict, every eviction allowed now (dry run)")

    def do(self, ctx: StepContext) -> None:
        n = self.node.node
        try:
            ctx.journal.write(self.name, "cordoning", node=n)
            self.cordoned = True
            self.kube.patch("nodes", None, n, {"spec": {"unschedulable": True}})
            ctx.say("node", f"{n} cordoned")
            self._drain(ctx)
        except KubeError as exc:
            raise StepFailed(f"kubernetes: {exc}") from None
        self._upgrade(ctx)
        try:
            self.kube.patch("nodes", None, n, {"spec": {"unschedulable": None}})
            self.cordoned = False
            ctx.journal.write(self.name, "uncordoned", node=n)
            ready = self._wait_ready()
        except KubeError as exc:
            raise StepFailed(f"kubernetes: {exc}") from None
        ctx.say("node", ready)
        self.record["ready"] = ready

    def _drain(self, ctx: StepContext) -> None:
        deadline = time.monotonic() + self.node.drain_timeout_s
        evicted: set[str] = set()
        while True:
            pods = self._pods()
            waiting = [p for p in pods if "deletionTimestamp" not in p["metadata"]]
            refused = self._refused(waiting, dry_run=False)
            evicted |= {f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in waiting} - set(refused)
            left = self._pods()
            if not left:
                break
            if time.monotonic() >= deadline:
                names = sorted(refused) or sorted(f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in left)
                raise StepFailed(f"drain of {self.node.node} did not finish in {self.node.drain_timeout_s:g} s: "
                                 f"{len(left)} pod(s) left: "
                                 + "; ".join(f"{p} ({refused.get(p, 'still terminating')})" for p in names))
            time.sleep(0.5 if refused else 0.1)
        ctx.journal.write(self.name, "drained", node=self.node.node, evicted=sorted(evicted))
        self.record["evicted"] = sorted(evicted)
        ctx.say("node", f"{self.node.node} drained: {len(evicted)} pod(s) evicted")

    def _upgrade(self, ctx: StepContext) -> None:
        ctx.run.logs.mkdir(parents=True, exist_ok=True)
        log_path = ctx.run.logs / f"node-upgrade-{self.node.node}.log"
        ctx.journal.write(self.name, "upgrading", node=self.node.node, command=self.node.command)
        ctx.say("node", f"running {' '.join(self.node.command)}")
        try:
            with log_path.open("ab") as log:
                proc = subprocess.run(self.node.command, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                      env={**os.environ, **self.node.env}, timeout=self.node.command_timeout_s,
                                      check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StepFailed(f"the node upgrade command failed: {exc} (log: {log_path})") from None
        ctx.journal.write(self.name, "upgraded", node=self.node.node, exit_code=proc.returncode)
        if proc.returncode != 0:
            raise StepFailed(f"the node upgrade command exited {proc.returncode} (log: {log_path})")

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + self.node.ready_timeout_s
        time.sleep(0.2)
        while True:
            node = self.kube.get("nodes", None, self.node.node)
            ready = condition(node, "Ready")
            if ready.get("status") == "True":
                version = ((node.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion")
                self.record["version_after"] = version
                return f"{self.node.node} Ready and schedulable (kubelet {version})"
            if time.monotonic() >= deadline:
                raise StepFailed(f"node {self.node.node} not Ready {self.node.ready_timeout_s:g} s after its upgrade: "
                                 f"{ready.get('reason', '?')} {ready.get('message', '')}")
            time.sleep(0.5)

    def undo(self, ctx: StepContext) -> None:
        if not self.cordoned:
            return
        try:
            self.kube.patch("nodes", None, self.node.node, {"spec": {"unschedulable": None}})
        except KubeError as exc:
            raise StepFailed(f"uncordon {self.node.node} failed: {exc}") from None
        self.cordoned = False
        ctx.journal.write(self.name, "uncordoned", node=self.node.node)
        ctx.say("rollback", f"{self.node.node} uncordoned")

    @property
    def undo_label(self) -> str:
        return f"uncordon {self.node.node}"

    @classmethod
    def from_journal(cls, config: Config, records: list[Record], ctx: StepContext) -> NodeUpgradeStep | None:
        if config.node_upgrade is None or config.kubernetes is None or not started(records, cls.name):
            return None
        mine = records_for(records, cls.name)
        cordoned = False
        for r in mine:
            if r.get("event") == "cordoning":
                cordoned = True
            elif r.get("event") == "uncordoned":
                cordoned = False
        if not any(r.get("event") == "cordoning" for r in mine):
            return None
        return cls(config.node_upgrade, config.kubernetes, cordoned=cordoned)

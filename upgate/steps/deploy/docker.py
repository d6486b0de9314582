"""Deploy a container: the candidate on a preview port first, gated there, then promoted onto the live port.

    [deploy]
    kind = "docker"
    container = "refsvc"               # the live container, as `docker ps` names it
    image = "upgate-ref:v2"            # the candidate (a local tag or an image id: nothing is pulled)
    preview_port = 0                   # host port of the preview (0: a free one)

What runs now is recorded first (image *id*, not just the tag; the env, ports, mounts and labels given
to the container, apart from what its image sets). `do` starts the candidate beside it as
`<container>-candidate`, publishing the same container port on the preview port, with the same env,
mounts and network; the pipeline gates that preview, then `promote` stops the live container (kept,
stopped, as `<container>-previous-<run>` until the run ends), starts the candidate's copy under the live
name and port, and waits for it. Health is Docker's healthcheck when the image has one, else the app's
ready URL; either way the live URL must answer from the new container.

Undo: stop the new container; then start the previous one again (the kept container, or a new one from
the recorded image id when it is gone), and prove the live port serves that image id.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from upgate.checks.health import probe_http
from upgate.config import AppConfig, Config, DeployConfig
from upgate.errors import StepFailed
from upgate.steps.base import Record, StepContext, StepPlan, records_for, started
from upgate.steps.deploy.base import Deployer

#: Label on every container upgate starts: which run, and which role it plays.
LABEL_RUN = "upgate.run"
LABEL_ROLE = "upgate.role"


@dataclass
class Snapshot:
    """The live container as it ran before the upgrade: enough to start its image id again."""

    name: str
    id: str
    image_id: str
    image_ref: str
    container_port: str  # "8080/tcp"
    host_ip: str
    host_port: int
    env_keys: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    has_healthcheck: bool = False
    network_mode: str = "default"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def docker_client(timeout_s: float = 60.0) -> Any:
    """The Docker Engine API client (DOCKER_HOST, else the local socket); StepFailed when no engine answers."""
    import docker

    try:
        client = docker.from_env(timeout=int(timeout_s))
        client.ping()
    except Exception as exc:
        raise StepFailed(f"no Docker engine answers ({exc}); start dockerd or set DOCKER_HOST") from None
    return client


def user_settings(container: Any, image: Any) -> dict[str, Any]:
    """What was given to `container` beyond its image's defaults: env, labels, command, entrypoint, user...

    Copying a container's whole Config.Env would carry the *old image's* ENV (its version, its PATH) into
    the new image; only the entries the image does not set are the operator's."""
    cfg = container.attrs["Config"]
    img = image.attrs.get("Config") or {}
    image_env = set(img.get("Env") or [])
    image_labels = img.get("Labels") or {}
    out: dict[str, Any] = {
        "environment": [e for e in cfg.get("Env") or [] if e not in image_env],
        "labels": {k: v for k, v in (cfg.get("Labels") or {}).items()
                   if image_labels.get(k) != v and not k.startswith(("upgate.", "com.docker.compose."))},
    }
    for key, arg in (("Cmd", "command"), ("Entrypoint", "entrypoint"), ("User", "user"),
                     ("WorkingDir", "working_dir")):
        if cfg.get(key) and cfg.get(key) != img.get(key):
            out[arg] = cfg[key]
    if cfg.get("Healthcheck") and cfg.get("Healthcheck") != img.get("Healthcheck"):
        out["healthcheck"] = cfg["Healthcheck"]
    host = container.attrs["HostConfig"]
    out["volumes"] = list(host.get("Binds") or [])
    if host.get("RestartPolicy", {}).get("Name"):
        out["restart_policy"] = {"Name": host["RestartPolicy"]["Name"],
                                 "MaximumRetryCount": host["RestartPolicy"].get("MaximumRetryCount", 0)}
    network = host.get("NetworkMode") or "default"
    if network not in ("default", "bridge"):
        out["network"] = network
    for key, arg in (("ExtraHosts", "extra_hosts"), ("CapAdd", "cap_add"), ("Tmpfs", "tmpfs")):
        if host.get(key):
            out[arg] = host[key]
    return out


class DockerDeploy(Deployer):
    """Preview, promote, keep the previous container; the pipeline gates in between (module docstring)."""

    kind: ClassVar[str] = "docker"
    #: The pipeline's name for `prepare` (recording what runs, checking the image), shown when it blocks.
    prepare_label: ClassVar[str] = "deploy check"

    def __init__(self, deploy: DeployConfig, app: AppConfig | None, state: dict[str, Any] | None = None) -> None:
        super().__init__(deploy, app)
        self._client: Any = None
        state = state or {}
        self.live: Snapshot | None = Snapshot.from_json(state["live"]) if state.get("live") else None
        self.run_id: str | None = state.get("run_id")
        self.candidate_id: str | None = state.get("candidate_id")
        self.preview_port: int | None = state.get("preview_port")
        self.promoted: bool = bool(state.get("promoted"))  # the live name/port was handed to the candidate
        self.new_id: str | None = state.get("new_id")
        self.retired: bool = bool(state.get("retired"))

    # --- names --------------------------------------------------------------------------------------

    @property
    def name_live(self) -> str:
        assert self.deploy.container
        return self.deploy.container

    @property
    def name_candidate(self) -> str:
        return f"{self.name_live}-candidate"

    @property
    def name_previous(self) -> str:
        return f"{self.name_live}-previous-{self.run_id}"

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client()
        return self._client

    def plan(self) -> StepPlan:
        port = f"port {self.port}" if self.port else "the live port"
        return StepPlan(self.name, (
            f"record container {self.name_live} (image id, env, ports, mounts, labels)",
            f"start {self.deploy.image} as {self.name_candidate} on a preview port; wait healthy",
            "preview-gates: the post gates against the preview, before traffic moves",
            f"promote: stop {self.name_live} (kept as {self.name_live}-previous-<run>), start the candidate on "
            f"{port}; wait ready from it",
            "retire (after the post gates pass): remove the kept previous container"),
            ("stop the candidate (preview, or the promoted container) before the database is undone",
             f"then start the previous image id again under {self.name_live} on {port}, ready from it"))

    # --- the protocol -------------------------------------------------------------------------------

    def prepare(self, ctx: StepContext) -> None:
        """Record what runs now; refuse a plan that cannot work before anything is touched."""
        import docker.errors

        self.run_id = ctx.run.run_id
        try:
            container = self.client.containers.get(self.name_live)
        except docker.errors.NotFound:
            raise StepFailed(f"[deploy] container {self.name_live!r}: no such container (docker ps -a)") from None
        if container.status != "running":
            raise StepFailed(f"[deploy] container {self.name_live!r} is {container.status}, not running: there is "
                             "no live version to upgrade from")
        try:
            candidate = self.client.images.get(self.deploy.image)
        except docker.errors.ImageNotFound:
            raise StepFailed(f"[deploy] image {self.deploy.image!r} is not in the local engine (docker images); "
                             "build or pull it before the run") from None
        self.live = self._snapshot(container)
        if self.live.network_mode == "host":
            raise StepFailed(f"container {self.name_live} uses the host network: a preview cannot listen beside it "
                             "on another port; publish its port instead (-p HOST:CONTAINER)")
        ctx.journal.write(self.name, "recorded", run_id=self.run_id, live=self.live.to_json(),
                          candidate_image_id=candidate.id)
        self.record.update(previous_image_id=self.live.image_id, previous_image=self.live.image_ref,
                           candidate_image_id=candidate.id, candidate_image=self.deploy.image)
        ctx.say("deploy", f"live: {self.name_live} runs {self.live.image_ref} ({_short(self.live.image_id)}) "
                          f"on {self.live.host_ip}:{self.live.host_port}")

    def _snapshot(self, container: Any) -> Snapshot:
        ports = container.attrs["HostConfig"].get("PortBindings") or {}
        wanted = f"{self.deploy.container_port}/tcp" if self.deploy.container_port else None
        published = {k: v for k, v in ports.items() if v}
        if wanted is None:
            if len(published) != 1:
                raise StepFailed(f"container {container.name} publishes {len(published)} ports "
                                 f"({', '.join(published) or 'none'}): set [deploy] container_port")
            wanted = next(iter(published))
        if wanted not in published:
            raise StepFailed(f"container {container.name} does not publish {wanted} "
                             f"(it publishes {', '.join(published) or 'nothing'})")
        binding = published[wanted][0]
        host_port = int(binding.get("HostPort") or 0)
        if self.port and host_port != self.port:
            raise StepFailed(f"container {container.name} publishes {wanted} on host port {host_port}, but the "
                             f"app's port is {self.port} ([app] base_url / [deploy] port)")
        image = self.client.images.get(container.attrs["Image"])
        health = container.attrs["Config"].get("Healthcheck") or (image.attrs.get("Config") or {}).get("Healthcheck")
        return Snapshot(
            name=container.name, id=container.id, image_id=container.attrs["Image"],
            image_ref=container.attrs["Config"].get("Image", ""), container_port=wanted,
            host_ip=binding.get("HostIp") or "0.0.0.0", host_port=host_port,
            env_keys=sorted(e.split("=", 1)[0] for e in user_settings(container, image)["environment"]),
            labels=dict(container.labels), has_healthcheck=bool(health and health.get("Test") not in (None, ["NONE"])),
            network_mode=container.attrs["HostConfig"].get("NetworkMode") or "default")

    def do(self, ctx: StepContext) -> None:
        assert self.live is not None, "prepare() records the live container first"
        self._remove_if_ours(self.name_candidate)
        base = self.client.containers.get(self.live.id)
        settings = self._settings_from(base, role="candidate", run_id=ctx.run.run_id)
        settings["ports"] = {self.live.container_port: (self.deploy.preview_host, self.deploy.preview_port or None)}
        ctx.journal.write(self.name, "starting", which="candidate", image=self.deploy.image)
        container = self.client.containers.run(self.deploy.image, name=self.name_candidate, detach=True, **settings)
        self.candidate_id = container.id
        container.reload()
        binding = (container.ports.get(self.live.container_port) or [{}])[0]
        self.preview_port = int(binding.get("HostPort") or 0)
        ctx.journal.write(self.name, "started", which="candidate", id=container.id, preview_port=self.preview_port)
        ctx.say("deploy", f"candidate {self.name_candidate} ({self.deploy.image}) on {self.preview_url()}")
        detail = self._wait_ready(container, self.preview_url(), "candidate")
        ctx.journal.write(self.name, "ready", which="candidate", detail=detail)
        self.record.update(preview_url=self.preview_url(), ready_candidate=detail)

    def preview_url(self) -> str | None:
        if self.preview_port is None or self.promoted:
            return None
        return f"http://{self.deploy.preview_host}:{self.preview_port}"

    def promote(self, ctx: StepContext) -> None:
        assert self.live is not None and self.candidate_id is not None
        old = self.client.containers.get(self.live.id)
        candidate = self.client.containers.get(self.candidate_id)
        settings = self._settings_from(old, role="live", run_id=ctx.run.run_id)
        settings["ports"] = {self.live.container_port: (self.live.host_ip, self.live.host_port)}
        # Created before the old one stops: only the stop and the start stand between two answering versions.
        self._remove_if_ours(f"{self.name_live}-next")
        new = self.client.containers.create(self.deploy.image, name=f"{self.name_live}-next", **settings)
        ctx.journal.write(self.name, "promoting", previous=self.live.id, previous_name=self.name_previous,
                          new_id=new.id)
        old.rename(self.name_previous)
        self.promoted, self.new_id = True, new.id
        t0 = time.monotonic()
        old.stop(timeout=int(self.deploy.stop_timeout_s))
        ctx.journal.write(self.name, "previous-stopped", id=self.live.id, name=self.name_previous)
        new.start()
        new.rename(self.name_live)
        detail = self._wait_ready(new, self.app.base_url if self.app else None, "promoted", any_answer=True)
        gap = round(time.monotonic() - t0, 3)
        ctx.journal.write(self.name, "promoted", id=new.id, detail=detail, switch_s=gap)
        ctx.say("deploy", f"promoted: {self.name_live} runs {self.deploy.image} ({_short(new.image.id)}); "
                          f"{self.name_previous} kept, stopped; switch took {gap:.2f} s")
        candidate.stop(timeout=int(self.deploy.stop_timeout_s))
        candidate.remove()
        self.record.update(promoted=True, switch_s=gap, ready_promoted=detail, live_image_id=new.image.id)

    def retire(self, ctx: StepContext) -> None:
        if not self.promoted or self.retired:
            return
        self._remove_if_ours(self.name_previous, force=True)
        self.retired = True
        ctx.journal.write(self.name, "retired", name=self.name_previous)
        ctx.say("deploy", f"removed the kept previous container {self.name_previous} (its image stays)")

    def stop_new(self, ctx: StepContext) -> None:
        import docker.errors

        ctx.run.logs.mkdir(parents=True, exist_ok=True)
        for ident, which in ((self.candidate_id, "candidate"), (self.new_id if self.promoted else None, "promoted")):
            if not ident:
                continue
            try:
                container = self.client.containers.get(ident)
            except docker.errors.NotFound:
                continue
            (ctx.run.logs / f"container-{which}.log").write_bytes(container.logs(tail=500))
            container.stop(timeout=int(self.deploy.stop_timeout_s))
            if which == "promoted" and not self._kept_previous():
                # The kept previous container is gone (retired): this one's settings recreate it.
                ctx.journal.write(self.name, "stopped", which=which, id=ident)
                ctx.say("deploy", f"stopped the {which} container {_short(ident)} (kept: its settings start the "
                                  "previous image again)")
                continue
            container.remove()
            ctx.journal.write(self.name, "removed", which=which, id=ident)
            ctx.say("deploy", f"stopped and removed the {which} container {_short(ident)} (logs: logs/container-"
                              f"{which}.log)")

    def _kept_previous(self) -> bool:
        import docker.errors

        if self.live is None:
            return False
        try:
            self.client.containers.get(self.live.id)
            return True
        except docker.errors.NotFound:
            return False

    def start_previous(self, ctx: StepContext) -> None:
        import docker.errors

        assert self.live is not None
        if not self.promoted:
            container = self.client.containers.get(self.live.id)  # never switched: it must still serve
            if container.status != "running":
                container.start()
        else:
            try:
                container = self.client.containers.get(self.live.id)
                if container.name != self.name_live:
                    container.rename(self.name_live)
                container.start()
                how = f"the kept container {_short(self.live.id)}"
            except docker.errors.NotFound:
                container = self._recreate_previous(ctx)
                how = f"a new container from image {_short(self.live.image_id)} (the kept one was gone)"
            ctx.journal.write(self.name, "previous-started", id=container.id, how=how)
            ctx.say("deploy", f"started {how} as {self.name_live}")
        detail = self._wait_ready(container, self.app.base_url if self.app else None, "previous")
        container.reload()
        if container.attrs["Image"] != self.live.image_id:
            raise StepFailed(f"{self.name_live} runs image {_short(container.attrs['Image'])}, not the previous "
                             f"{_short(self.live.image_id)}")
        ctx.journal.write(self.name, "ready", which="previous", detail=detail, image_id=self.live.image_id)
        self.record.update(ready_previous=detail, live_image_id=self.live.image_id)

    def _recreate_previous(self, ctx: StepContext) -> Any:
        """The kept container is gone (retired, removed by hand): the previous image id with the settings
        the live container has now (they were copied from the previous one at promotion)."""
        assert self.live is not None
        import docker.errors

        source = None
        for ident in (self.new_id, self.name_live):
            try:
                source = self.client.containers.get(ident) if ident else None
            except docker.errors.NotFound:
                source = None
            if source is not None:
                break
        settings = self._settings_from(source, role="live", run_id=ctx.run.run_id) if source is not None else {}
        if source is not None:
            source.remove(force=True)
        settings["ports"] = {self.live.container_port: (self.live.host_ip, self.live.host_port)}
        settings.setdefault("labels", {}).update({k: v for k, v in self.live.labels.items()
                                                  if not k.startswith("upgate.")})
        return self.client.containers.run(self.live.image_id, name=self.name_live, detach=True, **settings)

    # --- parts --------------------------------------------------------------------------------------

    def _settings_from(self, container: Any, role: str, run_id: str) -> dict[str, Any]:
        image = self.client.images.get(container.attrs["Image"])
        settings = user_settings(container, image)
        env = [e for e in settings["environment"] if e.split("=", 1)[0] not in self.deploy.env]
        settings["environment"] = env + [f"{k}={v}" for k, v in self.deploy.env.items()]
        settings["labels"] = {**settings["labels"], LABEL_RUN: run_id, LABEL_ROLE: role}
        return settings

    def _remove_if_ours(self, name: str, force: bool = False) -> None:
        """Remove a leftover container of that name that upgate started (never one it did not)."""
        import docker.errors

        try:
            container = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        if LABEL_ROLE not in container.labels and not force:
            raise StepFailed(f"a container named {name} exists and was not started by upgate: remove or rename it")
        container.remove(force=True)

    def _wait_ready(self, container: Any, base_url: str | None, which: str, any_answer: bool = False) -> str:
        """Docker's healthcheck when the image has one, and the app's ready URL at `base_url`; a container
        that exits fails at once with its last log lines. `any_answer`: once healthy, any HTTP answer on the
        URL will do (after promotion: the post gates judge what it answers)."""
        assert self.live is not None
        ready_path = self.app.ready_path if self.app else None
        url = (base_url.rstrip("/") + ready_path) if base_url and ready_path else None
        deadline = time.monotonic() + self.deploy.ready_timeout_s
        last = "no answer yet"
        while True:
            container.reload()
            state = container.attrs["State"]
            if state["Status"] in ("exited", "dead"):
                tail = container.logs(tail=5).decode(errors="replace").strip().replace("\n", " | ")
                raise StepFailed(f"the {which} container {_short(container.id)} exited with code "
                                 f"{state.get('ExitCode')} before it was ready: {tail}")
            health = (state.get("Health") or {}).get("Status")
            healthy = health in (None, "healthy")
            if health == "unhealthy":
                logs = (state.get("Health") or {}).get("Log") or [{}]
                last = f"healthcheck unhealthy: {str(logs[-1].get('Output', '')).strip()[:200]}"
            elif health is not None and not healthy:
                last = f"healthcheck {health}"
            if healthy:
                if url is None:
                    return f"container {_short(container.id)} {health or 'running'} (no [app] to probe)"
                answer = probe_http(url, timeout_s=2.0)
                if answer.ok or (any_answer and health and answer.evidence.get("status") is not None):
                    return (f"{url} answered {answer.evidence.get('status')} from {which} container "
                            f"{_short(container.id)}" + (" (healthcheck healthy)" if health else ""))
                last = answer.summary
            if time.monotonic() >= deadline:
                raise StepFailed(f"the {which} container {_short(container.id)} ({container.attrs['Config']['Image']}) "
                                 f"not ready after {self.deploy.ready_timeout_s:g} s: {last}")
            time.sleep(0.1)

    @classmethod
    def from_journal(cls, config: Config, records: list[Record], ctx: StepContext) -> DockerDeploy | None:
        if config.deploy is None or config.deploy.kind != cls.kind or not started(records, cls.name):
            return None
        state = state_from_journal(records_for(records, cls.name))
        return cls(config.deploy, config.app, state) if state else None


def state_from_journal(mine: list[Record]) -> dict[str, Any] | None:
    """What a container deploy did, as its journal records say (None: nothing was started)."""
    state: dict[str, Any] = {}
    for r in mine:
        event = r.get("event")
        if event == "recorded":
            state.update(live=r.get("live"), run_id=r.get("run_id"))
        elif event == "started" and r.get("which") == "candidate":
            state.update(candidate_id=r.get("id"), preview_port=r.get("preview_port"))
        elif event == "promoting":
            state.update(promoted=True, new_id=r.get("new_id"))
        elif event == "retired":
            state["retired"] = True
    if not state.get("candidate_id") and not state.get("promoted"):
        return None
    return state


def _short(ident: str | None) -> str:
    return (ident or "?").removeprefix("sha256:")[:12]

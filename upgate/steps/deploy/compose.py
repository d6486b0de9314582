"""Deploy one service of a Compose project: preview beside it, then `compose up` with the candidate image.

    [deploy]
    kind = "compose"
    compose_files = ["compose.yaml"]
    project = "refsvc"            # empty: the first file's folder name, as compose names it
    container = "app"             # the compose service to upgrade
    image = "upgate-ref:v2"

The preview is the Docker kind's (upgate/steps/deploy/docker.py): the service's running container is
recorded (image id, env, mounts, network) and the candidate runs beside it on a preview port, outside
the project (no compose labels), for the preview gates. Promotion is compose's own: an override file in
the run folder (`compose.upgate.yml`, `image:` of the service) and `compose up -d --no-deps <service>`,
so the project's networks, volumes and dependencies stay compose's. Compose replaces the service's
container; what is kept is the previous *image id*, and undo runs `compose up` with that id.
Afterwards, change the image in the project's own files (or its `${TAG}`): the next plain `compose up`
reads them, not upgate's override.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import yaml

from upgate.errors import StepFailed
from upgate.steps.base import StepContext, StepPlan
from upgate.steps.deploy.docker import DockerDeploy, _short

LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"


def compose_cli(explicit: list[str]) -> list[str]:
    """`[deploy] compose_command`, else `docker compose` when the plugin answers, else `docker-compose`."""
    if explicit:
        return list(explicit)
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise StepFailed("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose, "
                     "or set [deploy] compose_command)")


def project_name(files: list[Path], explicit: str | None) -> str:
    """The project name compose uses: `[deploy] project`, else the first file's folder, normalised as compose does."""
    if explicit:
        return explicit
    return re.sub(r"[^a-z0-9_-]", "", files[0].resolve().parent.name.lower())


class ComposeDeploy(DockerDeploy):
    kind: ClassVar[str] = "compose"

    @property
    def service(self) -> str:
        assert self.deploy.container
        return self.deploy.container

    @property
    def project(self) -> str:
        return project_name(self.deploy.compose_files, self.deploy.project)

    @property
    def name_live(self) -> str:
        if self.live is not None:
            return self.live.name
        return f"{self.project}-{self.service}"

    @property
    def name_candidate(self) -> str:
        return f"{self.project}-{self.service}-candidate"

    def plan(self) -> StepPlan:
        files = ", ".join(str(f) for f in self.deploy.compose_files)
        return StepPlan(self.name, (
            f"record service {self.service} of compose project {self.project} ({files}): image id, env, mounts",
            f"start {self.deploy.image} beside it on a preview port (outside the project); wait healthy",
            "preview-gates: the post gates against the preview, before traffic moves",
            f"promote: compose up -d --no-deps {self.service} with image {self.deploy.image} (override file in the "
            "run folder); wait ready from the new container"),
            ("stop the candidate (preview, or the promoted container) before the database is undone",
             f"then compose up -d --no-deps {self.service} with the previous image id, ready from it"))

    def _live_container(self) -> Any:
        found = self.client.containers.list(all=True, filters={"label": [f"{LABEL_PROJECT}={self.project}",
                                                                         f"{LABEL_SERVICE}={self.service}"]})
        running = [c for c in found if c.status == "running"]
        if len(running) != 1:
            raise StepFailed(f"compose project {self.project!r} service {self.service!r}: {len(running)} running "
                             f"containers ({', '.join(c.name for c in found) or 'none'}); expected one "
                             "([deploy] project, container)")
        return running[0]

    def prepare(self, ctx: StepContext) -> None:
        import docker.errors

        self.run_id = ctx.run.run_id
        compose_cli(self.deploy.compose_command)
        missing = [str(f) for f in self.deploy.compose_files if not f.is_file()]
        if missing:
            raise StepFailed(f"[deploy] compose_files: {', '.join(missing)} not found")
        container = self._live_container()
        try:
            candidate = self.client.images.get(self.deploy.image)
        except docker.errors.ImageNotFound:
            raise StepFailed(f"[deploy] image {self.deploy.image!r} is not in the local engine (docker images); "
                             "build or pull it before the run") from None
        self.live = self._snapshot(container)
        ctx.journal.write(self.name, "recorded", run_id=self.run_id, live=self.live.to_json(),
                          candidate_image_id=candidate.id, project=self.project)
        self.record.update(previous_image_id=self.live.image_id, previous_image=self.live.image_ref,
                           candidate_image_id=candidate.id, candidate_image=self.deploy.image, project=self.project)
        ctx.say("deploy", f"live: {self.project}/{self.service} ({self.live.name}) runs {self.live.image_ref} "
                          f"({_short(self.live.image_id)}) on {self.live.host_ip}:{self.live.host_port}")

    def _compose_up(self, ctx: StepContext, image: str, label: str) -> None:
        override = ctx.run.path / "compose.upgate.yml"
        override.write_text(yaml.safe_dump({"services": {self.service: {"image": image}}}), encoding="utf-8")
        files = [a for f in self.deploy.compose_files for a in ("-f", str(f))]
        argv = [*compose_cli(self.deploy.compose_command), "-p", self.project, *files, "-f", str(override),
                "up", "-d", "--no-deps", "--no-build", self.service]
        ctx.run.logs.mkdir(parents=True, exist_ok=True)
        ctx.journal.write(self.name, "compose-up", label=label, image=image, argv=argv)
        with (ctx.run.logs / f"compose-{label}.log").open("ab") as log:
            proc = subprocess.run(argv, cwd=self.deploy.compose_files[0].resolve().parent, stdout=log, stderr=log,
                                  stdin=subprocess.DEVNULL, timeout=self.deploy.ready_timeout_s + 120, check=False)
        if proc.returncode != 0:
            raise StepFailed(f"{' '.join(argv[:2])} up ({label}) exited {proc.returncode} (log: logs/compose-{label}.log)")

    def promote(self, ctx: StepContext) -> None:
        assert self.live is not None and self.candidate_id is not None
        ctx.journal.write(self.name, "promoting", previous=self.live.id, image=self.deploy.image)
        self.promoted = True
        self._compose_up(ctx, self.deploy.image or "", "promote")
        new = self._live_container()
        self.new_id = new.id
        detail = self._wait_ready(new, self.app.base_url if self.app else None, "promoted", any_answer=True)
        ctx.journal.write(self.name, "promoted", id=new.id, detail=detail)
        ctx.say("deploy", f"promoted: {self.project}/{self.service} runs {self.deploy.image} ({_short(new.image.id)})")
        candidate = self.client.containers.get(self.candidate_id)
        candidate.stop(timeout=int(self.deploy.stop_timeout_s))
        candidate.remove()
        self.record.update(promoted=True, ready_promoted=detail, live_image_id=new.image.id)

    def retire(self, ctx: StepContext) -> None:
        """Compose already replaced the previous container; its image stays for `upgate rollback`."""

    def stop_new(self, ctx: StepContext) -> None:
        if self.promoted and not self.new_id:
            try:
                self.new_id = self._live_container().id
            except StepFailed:
                pass
        super().stop_new(ctx)

    def start_previous(self, ctx: StepContext) -> None:
        assert self.live is not None
        if not self.promoted:
            super().start_previous(ctx)
            return
        self._compose_up(ctx, self.live.image_id, "previous")
        container = self._live_container()
        detail = self._wait_ready(container, self.app.base_url if self.app else None, "previous")
        container.reload()
        if container.attrs["Image"] != self.live.image_id:
            raise StepFailed(f"{self.project}/{self.service} runs image {_short(container.attrs['Image'])}, not the "
                             f"previous {_short(self.live.image_id)}")
        ctx.journal.write(self.name, "ready", which="previous", detail=detail, image_id=self.live.image_id)
        self.record.update(ready_previous=detail, live_image_id=self.live.image_id)

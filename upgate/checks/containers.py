"""Is the container healthy? Running, its Docker healthcheck healthy, not restarting, the image it should run.

    >>> client = docker.from_env()                                       # doctest: +SKIP
    >>> check_container(client, "refsvc").summary                        # doctest: +SKIP
    'container refsvc runs upgate-ref:v2 (3f2a9c1b7e44), running, healthy, 0 restarts'
    >>> check_image(client, "refsvc", expected_id="sha256:3f2a...").ok   # doctest: +SKIP

`client` is a `docker.DockerClient` (the Engine API); a container is named as `docker ps` shows it.
"""

from __future__ import annotations

import time
from typing import Any

from upgate.checks.result import CheckResult


def _get(client: Any, name: str) -> tuple[Any, CheckResult | None]:
    import docker.errors

    try:
        return client.containers.get(name), None
    except docker.errors.NotFound:
        return None, CheckResult(False, f"container {name} does not exist (docker ps -a)", {"name": name})
    except docker.errors.APIError as exc:
        return None, CheckResult(False, f"container {name} cannot be inspected: {exc}", {"name": name})


def check_container(client: Any, name: str, baseline_restarts: int | None = None) -> CheckResult:
    """Running, healthy when the image has a healthcheck, not OOM-killed, no restart beyond `baseline_restarts`."""
    container, failed = _get(client, name)
    if failed:
        return failed
    waited = _settle(container)
    state = container.attrs["State"]
    health = (state.get("Health") or {}).get("Status")
    restarts = int(container.attrs.get("RestartCount", 0))
    evidence = {"name": name, "id": container.id, "image": container.attrs["Config"]["Image"],
                "image_id": container.attrs["Image"], "status": state.get("Status"), "health": health,
                "waited_for_health_s": waited,
                "restarts": restarts, "oom_killed": state.get("OOMKilled"), "exit_code": state.get("ExitCode")}
    short = container.attrs["Image"].removeprefix("sha256:")[:12]
    problems = []
    if state.get("Status") != "running":
        problems.append(f"{state.get('Status')} (exit code {state.get('ExitCode')})")
    if health not in (None, "healthy"):
        last = ((state.get("Health") or {}).get("Log") or [{}])[-1].get("Output", "")
        problems.append(f"healthcheck {health}" + (f": {str(last).strip()[:160]}" if last else ""))
    if state.get("OOMKilled"):
        problems.append("killed for memory (OOMKilled)")
    if restarts > (baseline_restarts or 0):
        problems.append(f"restarted {restarts} time(s)")
    what = f"container {name} runs {evidence['image']} ({short})"
    if problems:
        return CheckResult(False, f"{what}: {'; '.join(problems)}", evidence)
    return CheckResult(True, f"{what}, running, {health or 'no healthcheck'}, {restarts} restarts", evidence)


def _settle(container: Any, cap_s: float = 120.0) -> float:
    """While Docker still says the healthcheck is `starting`, wait (at most what the image's healthcheck can take
    to decide: start period + (retries + 1) intervals, capped): a container just started is not yet unhealthy."""
    check = container.attrs.get("Config", {}).get("Healthcheck") or {}
    ns = 1e-9
    limit = (check.get("StartPeriod", 0) * ns + (check.get("Retries", 3) + 1) * (check.get("Interval", 0) * ns or 30.0))
    deadline = time.monotonic() + min(cap_s, limit)
    started = time.monotonic()
    while ((container.attrs["State"].get("Health") or {}).get("Status") == "starting"
           and time.monotonic() < deadline):
        time.sleep(0.5)
        container.reload()
    return round(time.monotonic() - started, 1)


def check_image(client: Any, name: str, expected_id: str, why: str) -> CheckResult:
    """The container runs the image id expected (the candidate after an upgrade, the previous one after a rollback)."""
    container, failed = _get(client, name)
    if failed:
        return failed
    actual = container.attrs["Image"]
    evidence = {"name": name, "image_id": actual, "expected_id": expected_id, "image": container.attrs["Config"]["Image"]}
    if actual != expected_id:
        return CheckResult(False, f"container {name} runs image {actual.removeprefix('sha256:')[:12]}, not "
                                  f"{expected_id.removeprefix('sha256:')[:12]} ({why})", evidence)
    return CheckResult(True, f"container {name} runs image {actual.removeprefix('sha256:')[:12]} ({why})", evidence)

"""The gunicorn side of the harness: an arbiter with 2 forked workers; stopping the whole tree frees the
port; the escaping build leaves a daemon outside the tree that keeps serving v1 on the port."""

from __future__ import annotations

import subprocess
import time

import pytest

from upgate.fixtures.realapps import targets
from upgate.fixtures.realapps.observe import (
    listening_pids,
    port_owners,
    process_tree,
    serving_versions,
    terminate,
    wait_http,
)
from upgate.fixtures.realapps.targets import RealAppTarget, gunicorn_app_command

pytestmark = pytest.mark.realapps


@pytest.mark.parametrize("realapp", ["gunicorn-deploy-good"], indirect=True)
def test_arbiter_and_two_workers_all_stop_with_the_tree(realapp: RealAppTarget) -> None:
    owners = port_owners(realapp.port, realapp.pidfile)
    assert owners.leader is not None and len(owners.tree) == 3, owners.describe()
    assert owners.listeners and owners.listeners <= owners.tree - {owners.leader}, owners.describe()  # workers listen
    assert serving_versions(realapp.base_url, "build") == {"v1"}
    terminate(set(owners.tree))
    assert listening_pids(realapp.port) == set()
    assert serving_versions(realapp.base_url, "build", samples=2) == {"down"}


@pytest.mark.parametrize("realapp", ["gunicorn-deploy-leftover-worker"], indirect=True)
def test_escaping_build_leaves_v1_serving_outside_the_tree(realapp: RealAppTarget, venv) -> None:
    owners = port_owners(realapp.port, realapp.pidfile)
    assert realapp.escape_pidfile and realapp.escape_pidfile.exists()
    escaped = {int(p) for p in realapp.escape_pidfile.read_text().split()}
    assert owners.foreign == escaped, owners.describe()
    terminate(set(owners.tree))  # even the whole tree: the daemon is not in it
    assert listening_pids(realapp.port) == escaped
    assert serving_versions(realapp.base_url, "build") == {"v1-escaping"}
    # A v2 started beside it binds (SO_REUSEPORT) and serves, but v1 still answers some connections.
    pidfile = realapp.folder / "v2.pid"
    with (realapp.folder / "v2.log").open("ab") as log:
        proc = subprocess.Popen(gunicorn_app_command(venv("gunicorn"), "v2", realapp.port, pidfile),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # /ready answers at once, from the leftover: readiness by URL alone cannot tell who answered.
        wait_http(realapp.base_url + "/ready", timeout=30, alive=lambda: proc.poll() is None)
        deadline = time.monotonic() + 30
        while not listening_pids(realapp.port) & process_tree(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert wait_for_both(realapp.base_url) == {"v1-escaping", "v2"}
        assert port_owners(realapp.port, pidfile).foreign == escaped
    finally:
        terminate(process_tree(proc.pid))
        proc.wait()


def wait_for_both(base_url: str) -> set[str]:
    seen: set[str] = set()
    for _ in range(5):
        seen |= serving_versions(base_url, "build", samples=20)
        if {"v1-escaping", "v2"} <= seen:
            break
    return seen - {"down"}


def test_a_start_that_fails_half_way_stops_what_it_started(venv, pg_server, tmp_path, monkeypatch) -> None:
    venv("gunicorn")
    spawned: list[subprocess.Popen[bytes]] = []
    real_spawn = targets._spawn

    def spawn(*args, **kwargs):
        proc = real_spawn(*args, **kwargs)
        spawned.append(proc)
        return proc

    def broken_plan(*args, **kwargs):
        raise RuntimeError("plan template broken")

    monkeypatch.setattr(targets, "_spawn", spawn)
    monkeypatch.setattr(targets, "render_plan", broken_plan)
    with pytest.raises(RuntimeError, match="plan template broken"):
        targets.start_target("gunicorn-deploy-leftover-worker", pg_server, tmp_path / "t")
    assert len(spawned) == 1
    escaped = {int(p) for p in (tmp_path / "t" / "escaped.pids").read_text().split()}
    assert escaped and not process_tree(spawned[0].pid)
    assert not any(process_tree(pid) for pid in escaped), "the escaped daemon outlived a failed start"

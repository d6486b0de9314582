"""Pre-gate: the deploy can take the old version out of service, before anything is touched.

A process deploy stops the process tree its pidfile names; a listener on the app's port outside that
tree (a worker that escaped, a stale pidfile) would keep serving the old version after the stop.
"""

from __future__ import annotations

import pytest

from upgate.checks.processes import check_port_owners
from upgate.steps.deploy.base import app_port

pytestmark = pytest.mark.upgate_component("deploy")


@pytest.fixture(scope="module")
def process_deploy(config):
    deploy = config.deploy
    if deploy is None:
        pytest.skip("deploy not configured ([deploy])")
    if deploy.kind != "process" or deploy.pidfile is None:
        pytest.skip(f"deploy.kind = {deploy.kind!r}: the deploy command decides what it stops")
    if not deploy.check_listener:
        pytest.skip("[deploy] check_listener = false: a proxy holds the port, listeners are not the app's")
    return deploy


def test_only_the_deployed_process_tree_listens(config, process_deploy, evidence):
    port = app_port(config.app, process_deploy)
    if port is None:
        pytest.skip("no port to check: neither [deploy] port nor [app] base_url")
    result = check_port_owners(port, process_deploy.pidfile)
    evidence("port_owners", result)
    assert result.ok, result.summary

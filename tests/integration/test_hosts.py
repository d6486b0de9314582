"""Host checks through testinfra's local backend, for real: the reference service's process, port, files."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from upgate.checks.hosts import (
    FileExpectation,
    MountExpectation,
    PackageExpectation,
    check_files,
    check_free_memory,
    check_mounts,
    check_packages,
    check_ports,
    check_processes,
    check_reachable,
    check_services,
    connect_host,
)
from upgate.fixtures.reference import free_port, start_service, stop_pid, wait_ready
from upgate.fixtures.seed import create_schema, seed


@dataclass
class Service:
    port: int
    pid: int
    pidfile: Path


@pytest.fixture(scope="module")
def service(pg_server, tmp_path_factory) -> Iterator[Service]:
    url = pg_server.create_database("hosts")
    folder = tmp_path_factory.mktemp("svc")
    create_schema(url)
    seed(url, rows=50)
    port = free_port()
    proc = start_service(url, port, "v1", folder / "service.pid", folder / "service.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout=30.0)
        yield Service(port, proc.pid, folder / "service.pid")
    finally:
        stop_pid(proc.pid, 10.0)
        pg_server.drop_database(url)


@pytest.fixture(scope="module")
def host():
    return connect_host("local://")


def test_local_host_answers(host):
    result = check_reachable(host, "local")
    assert result.ok and result.evidence["uname"].startswith("Linux")


def test_reference_service_process_found_and_absent_one_named(host, service):
    result = check_processes(host, ["upgate.fixtures.service", f"--port {service.port}"], "local")
    assert result.ok, result.summary
    assert service.pid in result.evidence["running"]["upgate.fixtures.service"]
    missing = check_processes(host, ["upgate.fixtures.service", "no-such-daemon-xyz"], "local")
    assert not missing.ok and "'no-such-daemon-xyz'" in missing.summary


def test_service_port_listening_and_a_free_port_not(host, service):
    result = check_ports(host, [service.port, f"tcp://127.0.0.1:{service.port}"], "local")
    assert result.ok, result.summary
    closed = free_port()
    down = check_ports(host, [service.port, closed], "local")
    assert not down.ok and f"not listening: {closed}" in down.summary


def test_pidfile_present_with_mode_and_wrong_mode_named(host, service, tmp_path):
    mode = f"{service.pidfile.stat().st_mode & 0o7777:04o}"
    assert check_files(host, [FileExpectation(str(service.pidfile), mode=mode)], "local").ok
    wrong = "0600" if mode != "0600" else "0644"
    result = check_files(host, [FileExpectation(str(service.pidfile), mode=wrong),
                                FileExpectation(str(tmp_path / "absent.conf"))], "local")
    assert not result.ok
    assert f"has mode {mode}, expected {wrong}" in result.summary and "absent.conf missing" in result.summary


def test_mount_free_space_against_a_floor(host, tmp_path):
    assert check_mounts(host, [MountExpectation(str(tmp_path), 0.001)], "local").ok
    result = check_mounts(host, [MountExpectation(str(tmp_path), 10**9)], "local")
    assert not result.ok and "GiB free" in result.summary


def test_free_memory_floor(host):
    assert check_free_memory(host, 1, "local").ok
    assert not check_free_memory(host, 10**9, "local").ok


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="no dpkg on this machine")
def test_packages_installed_at_version(host):
    result = check_packages(host, [PackageExpectation("bash")], "local")
    assert result.ok, result.summary
    version = result.evidence["packages"][0]["version"]
    assert check_packages(host, [PackageExpectation("bash", version.split(".")[0] + ".*")], "local").ok
    bad = check_packages(host, [PackageExpectation("bash", "0.0.1"), PackageExpectation("no-such-pkg-xyz")], "local")
    assert not bad.ok and "expected 0.0.1" in bad.summary and "no-such-pkg-xyz not installed" in bad.summary


def test_service_not_running_is_named(host):
    result = check_services(host, ["no-such-service-xyz"], "local")
    assert not result.ok and "no-such-service-xyz" in result.summary


def test_unreachable_ssh_host_fails_naming_it():
    host = connect_host("ssh://nobody@127.0.0.1:1?timeout=2")
    result = check_reachable(host, "ssh-box")
    assert not result.ok and result.summary.startswith("ssh-box:")

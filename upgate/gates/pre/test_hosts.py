"""Pre-gate: every `[[hosts]]` entry is as expected, through testinfra (runs again as a post-gate).

One test per kind of expectation, parametrized over the configured hosts; an expectation a host does
not declare is skipped with the reason.
"""

from __future__ import annotations

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
)

pytestmark = pytest.mark.upgate_component("hosts")


def _declared(gated_host, what):
    value = getattr(gated_host, what)
    if value in (None, []):
        pytest.skip(f"{gated_host.label}: {what} not configured")
    return value


def test_host_answers(gated_host, infra_host, evidence):
    result = check_reachable(infra_host, gated_host.label)
    evidence("reachable", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("hosts.processes")
def test_expected_processes_running(gated_host, infra_host, evidence):
    result = check_processes(infra_host, _declared(gated_host, "processes"), gated_host.label)
    evidence("processes", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("hosts.ports")
def test_expected_ports_listening(gated_host, infra_host, evidence):
    result = check_ports(infra_host, _declared(gated_host, "ports"), gated_host.label)
    evidence("ports", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("hosts.services")
def test_expected_services_running(gated_host, infra_host, evidence):
    result = check_services(infra_host, _declared(gated_host, "services"), gated_host.label)
    evidence("services", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("hosts.mounts")
def test_mounts_have_free_space(gated_host, infra_host, evidence):
    mounts = [MountExpectation(m.path, m.min_free_gb) for m in _declared(gated_host, "mounts")]
    result = check_mounts(infra_host, mounts, gated_host.label)
    evidence("mounts", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("hosts.files")
def test_expected_files_present(gated_host, infra_host, evidence):
    files = [FileExpectation(f.path, f.mode, f.owner) for f in _declared(gated_host, "files")]
    result = check_files(infra_host, files, gated_host.label)
    evidence("files", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("hosts.packages")
def test_expected_packages_installed(gated_host, infra_host, evidence):
    packages = [PackageExpectation(p.name, p.version) for p in _declared(gated_host, "packages")]
    result = check_packages(infra_host, packages, gated_host.label)
    evidence("packages", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("hosts.min_free_memory_mb")
def test_host_has_free_memory(gated_host, infra_host, evidence):
    result = check_free_memory(infra_host, _declared(gated_host, "min_free_memory_mb"), gated_host.label)
    evidence("memory", result)
    assert result.ok, result.summary

"""Pre-gate: compatibility. Installed packages meet the declared constraints, the upgrade's candidate
requirements conflict with neither the constraints nor what installed packages need, `pip check` is
clean, the PostgreSQL server is in the supported range, and the application's config files validate."""

from __future__ import annotations

import sys
import warnings

import psycopg
import pytest

from upgate.checks.appconfig import ConfigSpec, load_config_file, read_rules, validate_config
from upgate.checks.compat import (
    check_candidate,
    check_installed,
    check_server_version,
    environment_fingerprint,
    inspect_environment,
    pip_check,
    read_requirements,
    table_requirements,
)

pytestmark = pytest.mark.upgate_component("compat")


@pytest.fixture(scope="session")
def compat(config):
    if config.compat is None:
        pytest.skip("compatibility not configured ([compat])")
    return config.compat


@pytest.fixture(scope="session")
def declared(compat):
    if not compat.requirements and not compat.constraints:
        pytest.skip("package constraints not configured (compat.requirements, compat.constraints)")
    try:
        found = [d for path in compat.requirements for d in read_requirements(path)]
        return found + table_requirements(compat.constraints)
    except ValueError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def python_env(compat):
    python = str(compat.python or sys.executable)
    try:
        return inspect_environment(python)
    except RuntimeError as exc:
        pytest.fail(f"compat.python: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def environment_unchanged(compat, phase, run_dir):
    """After the pre-gates: why the interpreter and its installed set provably did not change (None: they may
    have). The pre-gates record the fingerprint the later phases compare with."""
    python = str(compat.python or sys.executable)
    try:
        now = environment_fingerprint(python)
    except RuntimeError:
        return None
    if phase == "pre":
        run_dir.save_baseline("compat-environment", {"python": python, "fingerprint": now})
        return None
    before = run_dir.load_baseline("compat-environment") or {}
    if before.get("python") == python and before.get("fingerprint") == now:
        return (f"unchanged since the pre-gates passed: {python}, its version and the metadata of every installed "
                f"distribution (fingerprint {now[:12]})")
    return None


@pytest.mark.upgate_component("compat.constraints")
def test_installed_packages_meet_constraints(declared, environment_unchanged, evidence, request):
    if environment_unchanged:
        pytest.skip(environment_unchanged)
    result = check_installed(declared, request.getfixturevalue("python_env"))
    evidence("installed", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("compat.candidate")
def test_candidate_requirements_compatible(compat, python_env, evidence, request):
    if not compat.candidate:
        pytest.skip("candidate requirements not configured (compat.candidate)")
    declared = request.getfixturevalue("declared") if (compat.requirements or compat.constraints) else []
    try:
        candidate = [d for path in compat.candidate for d in read_requirements(path)]
    except ValueError as exc:
        pytest.fail(str(exc), pytrace=False)
    result = check_candidate(candidate, declared, python_env)
    evidence("candidate", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("compat.pip_check")
def test_pip_check_clean(compat, evidence, request):
    if not compat.pip_check or not (compat.python or compat.requirements or compat.constraints or compat.candidate):
        pytest.skip("package checks not configured (compat.python, requirements, constraints or candidate)")
    unchanged = request.getfixturevalue("environment_unchanged")
    if unchanged:
        pytest.skip(unchanged)
    result = pip_check(str(compat.python or sys.executable))
    evidence("pip check", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("compat.postgres", "database")
def test_postgres_version_supported(compat, db_url, config, evidence):
    if not compat.postgres:
        pytest.skip("supported PostgreSQL range not configured (compat.postgres)")
    try:
        with psycopg.connect(db_url, connect_timeout=int(config.database.connect_timeout_s)) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error as exc:
        pytest.fail(f"database unreachable, cannot read its version: {str(exc).strip().splitlines()[0]}",
                    pytrace=False)
    result = check_server_version(str(row[0]) if row else "", compat.postgres)
    evidence("postgres version", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("compat.app_config")
def test_app_config_files_valid(compat, evidence):
    if not compat.app_config:
        pytest.skip("application config files not configured ([[compat.app_config]])")
    failed = []
    for entry in compat.app_config:
        spec = ConfigSpec(list(entry.required), dict(entry.types), dict(entry.deprecated))
        try:
            if entry.rules:
                spec = spec.merged(read_rules(entry.rules)[1])
            result = validate_config(load_config_file(entry.path, entry.format), spec, str(entry.path))
        except ValueError as exc:
            failed.append(str(exc))
            continue
        evidence(f"config {entry.path.name}", result)
        for text in result.warnings:
            warnings.warn(text, UserWarning, stacklevel=1)
        if not result.ok:
            failed.append(result.summary)
    assert not failed, "; ".join(failed)

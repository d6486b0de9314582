"""Package compatibility with `packaging`: requirements files, range overlap, conflicts named with both
sides; against this interpreter's real environment and real `pip check`."""

from __future__ import annotations

import sys

import pytest
from packaging.specifiers import SpecifierSet

from upgate.checks.compat import (
    Distribution,
    Environment,
    check_candidate,
    check_installed,
    check_server_version,
    inspect_environment,
    pip_check,
    read_requirements,
    specifiers_overlap,
    table_requirements,
)


@pytest.mark.parametrize(("a", "b", "overlap"), [
    (">=3.1,<4", "==3.2.*", True),
    (">3.1", "<3.2", True),
    (">=3", "<3", False),
    ("==2.0", ">=3", False),
    ("~=1.4", ">=1.5,<1.6", True),
    ("==3.*", "<3", False),
    ("", "<1", True),
])
def test_specifiers_overlap(a, b, overlap):
    assert specifiers_overlap(SpecifierSet(a), SpecifierSet(b)) is overlap


def test_requirements_file_follows_includes_and_skips_options(tmp_path):
    (tmp_path / "base.txt").write_text("packaging>=20  # comment\n")
    (tmp_path / "req.txt").write_text("-r base.txt\n--index-url https://example.invalid/simple\n\n"
                                      "pydantic>=2,<3\nwinthing ; sys_platform == 'win32'\n-e .\n")
    found = read_requirements(tmp_path / "req.txt")
    assert [d.describe() for d in found] == [
        "packaging>=20 (base.txt:1)", "pydantic<3,>=2 (req.txt:4)", 'winthing; sys_platform == "win32" (req.txt:5)']


def test_bad_requirement_names_file_and_line(tmp_path):
    (tmp_path / "req.txt").write_text("ok>=1\nnot a valid ==== line\n")
    with pytest.raises(ValueError, match=r"req.txt:2"):
        read_requirements(tmp_path / "req.txt")


def test_this_interpreter_meets_its_own_requirements():
    env = inspect_environment(sys.executable)
    assert env.get("packaging") is not None and env.get("pydantic") is not None
    declared = table_requirements({"packaging": ">=20", "pydantic": ">=2"}) + table_requirements(
        {"not-installed-upgate-probe": ""})
    result = check_installed(declared, env)
    assert not result.ok
    assert result.evidence["problems"] == [
        "not-installed-upgate-probe is not installed, but upgate.toml compat.constraints.not-installed-upgate-probe "
        "requires not-installed-upgate-probe"]


def test_installed_version_outside_constraint_is_named(tmp_path):
    env = inspect_environment(sys.executable)
    version = env.get("packaging").version
    (tmp_path / "req.txt").write_text(f"packaging<{version}\n")
    result = check_installed(read_requirements(tmp_path / "req.txt"), env)
    assert not result.ok
    assert f"packaging {version} is installed, but req.txt:1 requires packaging<{version}" in result.summary


def test_candidate_conflicts_name_both_sides(tmp_path):
    env = Environment("python", {
        "pydantic": Distribution("pydantic", "2.7.0"),
        "pydantic-settings": Distribution("pydantic-settings", "2.1.0", ("pydantic>=2.3,<3",)),
        "fastapi": Distribution("fastapi", "0.110.0", ("pydantic>=1.7,<3", "httpx; extra == 'all'")),
    }, {"python_version": "3.11", "sys_platform": "linux"})
    (tmp_path / "v2.txt").write_text("pydantic>=3\nhttpx>=0.27\n")
    declared = table_requirements({"pydantic": ">=2,<4"})
    result = check_candidate(read_requirements(tmp_path / "v2.txt"), declared, env)
    assert not result.ok
    assert result.evidence["conflicts"] == [
        "pydantic: candidate v2.txt:1 wants >=3 but installed pydantic-settings 2.1.0 requires <3,>=2.3",
        "pydantic: candidate v2.txt:1 wants >=3 but installed fastapi 0.110.0 requires <3,>=1.7",
    ]
    assert "httpx: new (>=0.27)" in result.evidence["changes"]


def test_candidate_within_constraints_passes(tmp_path):
    env = inspect_environment(sys.executable)
    (tmp_path / "v2.txt").write_text("packaging>=20\n")
    result = check_candidate(read_requirements(tmp_path / "v2.txt"), table_requirements({"packaging": ">=20"}), env)
    assert result.ok, result.summary


def test_candidate_outside_declared_constraint_is_named(tmp_path):
    (tmp_path / "v2.txt").write_text("psycopg==4.0\n")
    env = Environment("python", {}, {})
    result = check_candidate(read_requirements(tmp_path / "v2.txt"), table_requirements({"psycopg": ">=3.1,<4"}), env)
    assert result.evidence["conflicts"] == [
        "psycopg: candidate v2.txt:1 wants ==4.0 but upgate.toml compat.constraints.psycopg allows only <4,>=3.1"]


def test_pip_check_on_this_interpreter():
    result = pip_check(sys.executable)
    assert result.ok, result.summary


@pytest.mark.parametrize(("version", "supported", "ok"), [
    ("16.4 (Debian 16.4-1.pgdg120+1)", ">=14,<17", True),
    ("13.12", ">=14,<17", False),
    ("17.0", ">=14,<17", False),
])
def test_server_version_range(version, supported, ok):
    result = check_server_version(version, supported)
    assert result.ok is ok, result.summary
    if not ok:
        assert "outside the supported range >=14,<17" in result.summary

"""The cached app venvs: built once, published atomically, reused, never half-published."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from upgate.fixtures.realapps.venvs import (
    APPS,
    AppEnv,
    VenvBuildFailed,
    VenvUnavailable,
    ensure_venv,
    venv_key,
)

BARE = AppEnv("bare", ())  # no packages: exercises venv + publish without the network


@pytest.mark.slow  # the long tier (make test-slow): builds a venv; make test keeps the cache key and the unknown app
def test_venv_is_published_once_and_reused(tmp_path: Path) -> None:
    first = ensure_venv("bare", root=tmp_path, env=BARE)
    assert first.is_symlink() and (first / "bin" / "python").exists()
    built_in = first.resolve()
    assert built_in.name.startswith(f"{first.name}.build-")
    again = ensure_venv("bare", root=tmp_path, env=BARE)
    assert again == first and again.resolve() == built_in
    out = subprocess.run([str(first / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out).resolve() == built_in


@pytest.mark.slow  # the long tier (make test-slow): two venv builds at once; make test keeps one published
def test_concurrent_builds_publish_one_venv(tmp_path: Path) -> None:
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_venv("bare", root=tmp_path, env=BARE)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    builds = [p for p in tmp_path.iterdir() if ".build-" in p.name]
    assert builds == [results[0].resolve()], f"one build folder expected, found {builds}"


@pytest.mark.slow  # the long tier (make test-slow): pip's failure on a missing project
def test_failed_install_publishes_nothing(tmp_path: Path) -> None:
    broken = AppEnv("broken", (str(tmp_path / "no-such-project"),))
    with pytest.raises((VenvBuildFailed, VenvUnavailable)):
        ensure_venv("broken", root=tmp_path, env=broken)
    key = venv_key(broken)
    assert not (tmp_path / key).exists()
    assert not [p for p in tmp_path.iterdir() if ".build-" in p.name or ".link-" in p.name]


def test_cache_key_follows_the_pins() -> None:
    a = AppEnv("x", ("optuna==2.10.1",))
    b = AppEnv("x", ("optuna==5.0.0",))
    assert venv_key(a) != venv_key(b)
    assert venv_key(a) == venv_key(AppEnv("x", ("optuna==2.10.1",)))


def test_unknown_app_is_named() -> None:
    with pytest.raises(KeyError, match="no app environment named 'nope'"):
        ensure_venv("nope")


@pytest.mark.realapps
@pytest.mark.parametrize("name", sorted(APPS))
def test_app_venv_has_its_pinned_versions(name: str, venv) -> None:
    python = venv(name) / "bin" / "python"
    frozen = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True,
                            check=True).stdout.lower().splitlines()
    for requirement in APPS[name].requirements:
        assert requirement.lower() in frozen, f"{name}: {requirement} not installed ({frozen})"

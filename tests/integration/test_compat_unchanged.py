"""The compat gates after the pre-gates are skipped only when the interpreter's installed set provably did not
change: its fingerprint covers the metadata of every distribution on the interpreter's sys.path."""

from __future__ import annotations

import sys

from upgate.checks.compat import environment_fingerprint


def _python_with(tmp_path, folder):
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{folder}" exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def test_fingerprint_is_stable_and_sees_an_installed_distribution(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    python = _python_with(tmp_path, site)
    before = environment_fingerprint(python)
    assert environment_fingerprint(python) == before
    dist = site / "newpkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: newpkg\nVersion: 1.0\n")
    installed = environment_fingerprint(python)
    assert installed != before
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: newpkg\nVersion: 1.0\nRequires-Dist: other\n")
    assert environment_fingerprint(python) != installed  # the same version re-installed with other requirements

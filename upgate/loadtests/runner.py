"""Run one Locust profile as a library and write its raw samples as JSON (a child process of the perf gate).

    $ python loadtests/runner.py --spec spec.json               # local runner, or master with workers
    $ python loadtests/runner.py --spec spec.json --worker      # one worker of that master

Importing locust monkey-patches the interpreter with gevent, so this file only ever runs in its own
process: `checks.perf.run_load` writes the spec, starts it, and reads the result back. It prints one
`UPGATE {json}` line when the measured window starts and one when it ends (the parent samples the
target's CPU and memory between the two). Samples from the warm-up are dropped.

Spec keys: host, locustfile, user_classes, users, spawn_rate, rate_per_user, warmup_s, duration_s,
local_workers, expect_workers, master_bind_host, master_host, master_port, worker_timeout_s,
worker_commands, cpus, csv_prefix, out, and optionally targets ({label: url}).

With `targets`, every user class runs once per target at the same time (`users` users each), so two
versions get the same load in the same seconds; samples come back per target
(`{"targets": {label: endpoints}}`). Every sample keeps its offset from the window's start (`t`, s),
so the parent can cut the window into segments.
"""
# ruff: noqa: I001  (locust first: importing it monkey-patches the interpreter with gevent)

from __future__ import annotations

import locust

import argparse
import csv
import importlib.util
import inspect
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gevent
from locust import User
from locust.env import Environment
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

FLUSH = "upgate_flush"
SAMPLES = "upgate_samples"


def say(event: str, **data: Any) -> None:
    print("UPGATE " + json.dumps({"event": event, "t": time.time(), **data}), flush=True)


def load_user_classes(locustfile: str, names: list[str]) -> list[type[User]]:
    """The named User classes of the locustfile, else every concrete one it defines itself."""
    path = Path(locustfile).resolve()
    sys.path.insert(0, str(path.parent))  # as `locust -f` does: sibling files import by name
    spec = importlib.util.spec_from_file_location(f"upgate_locustfile_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if names:
        missing = [n for n in names if not inspect.isclass(getattr(module, n, None))]
        if missing:
            raise SystemExit(f"{path}: no user class {', '.join(missing)}")
        return [getattr(module, n) for n in names]
    found = [
        obj for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, User) and not obj.abstract and obj.__module__ == module.__name__
    ]
    if not found:
        raise SystemExit(f"{path}: defines no concrete Locust User class")
    return found


Sample = tuple[float, str, float, bool, str]  # (wall time it ended, name, ms, failed, target label)
TARGET_KEY = "upgate_target"


class Recorder:
    """Every request's latency, by request name and target, stamped with the wall time it ended."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.errors: dict[str, int] = {}

    def on_request(self, request_type: str, name: str, response_time: float, exception: Any = None,
                   context: dict[str, Any] | None = None, **_: Any) -> None:
        key = name if name.startswith(request_type + " ") else f"{request_type} {name}"
        target = str((context or {}).get(TARGET_KEY, ""))
        self.samples.append((time.time(), key, float(response_time), exception is not None, target))
        if exception is not None:
            message = f"{target + ': ' if target else ''}{key}: {type(exception).__name__}: {str(exception)[:200]}"
            self.errors[message] = self.errors.get(message, 0) + 1

    def drain(self) -> list[Sample]:
        taken, self.samples = self.samples, []
        return taken


def poisson_throughput(rate: float) -> Any:
    """A wait_time giving `rate` task starts per second per user, at random (Poisson) moments. Locust's
    constant_throughput locks every user to the phase it was spawned at for the whole run: when the phases happen
    to bunch, requests arrive in bursts and queue, and one run measures 2-3x the latency of the next on the
    same build. Random arrivals offer the same load without a run-long pattern."""

    def wait_time(user: User) -> float:
        now = time.monotonic()
        due = max(getattr(user, "_upgate_due", now), now - 1 / rate) + random.expovariate(rate)
        user._upgate_due = due  # type: ignore[attr-defined]
        return max(0.0, due - now)

    return wait_time


def per_target(classes: list[type[User]], targets: dict[str, str]) -> list[type[User]]:
    """One copy of every user class per target, pointed at it and tagging its requests with the label."""
    copies: list[type[User]] = []
    for label, url in targets.items():
        for cls in classes:
            def context(self: User, _label: str = label, _base: Any = cls.context) -> dict[str, Any]:
                return {**_base(self), TARGET_KEY: _label}

            copies.append(type(f"{cls.__name__}_{label}", (cls,), {"host": url, "context": context,
                                                                      "__module__": cls.__module__}))
    return copies


def make_environment(spec: dict[str, Any]) -> Environment:
    classes = load_user_classes(spec["locustfile"], spec.get("user_classes") or [])
    rate = float(spec.get("rate_per_user") or 0)
    if rate > 0:
        for cls in classes:
            cls.wait_time = poisson_throughput(rate)
    if spec.get("targets"):  # each copy keeps its own host: Locust lets the environment's host override them all
        return Environment(user_classes=per_target(classes, dict(spec["targets"])), host=None)
    return Environment(user_classes=classes, host=spec["host"])


def pin(cpus: list[int]) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))


def run_worker(spec: dict[str, Any]) -> int:
    env = make_environment(spec)
    recorder = Recorder()
    env.events.request.add_listener(recorder.on_request)
    runner = env.create_worker_runner(spec["master_host"], int(spec["master_port"]))

    def flush(environment: Environment, msg: Any, **_: Any) -> None:
        runner._send_stats()  # Locust's own stats first, so the master's CSV is complete
        runner.send_message(SAMPLES, {"samples": recorder.drain(), "errors": recorder.errors,
                                      "cpu_warning": bool(runner.cpu_warning_emitted)})

    runner.register_message(FLUSH, flush)
    runner.greenlet.join()
    return 0


def window(samples: list[Sample], start: float, end: float, target: str = "") -> dict[str, dict[str, Any]]:
    """The samples of one target that ended inside [start, end], by name: latencies, offsets, failures."""
    by_name: dict[str, dict[str, Any]] = {}
    for t, name, ms, failed, label in sorted(samples):
        if start <= t <= end and label == target:
            entry = by_name.setdefault(name, {"ms": [], "t": [], "failures": 0})
            if failed:
                entry["failures"] += 1
            else:
                entry["ms"].append(round(ms, 3))
                entry["t"].append(round(t - start, 3))
    return by_name


def write_csv(env: Environment, prefix: str) -> list[str]:
    writer = StatsCSV(env, PERCENTILES_TO_REPORT)
    written = []
    for suffix, method in (("stats", writer.requests_csv), ("failures", writer.failures_csv)):
        path = f"{prefix}_{suffix}.csv"
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            method(csv.writer(fh))
        written.append(path)
    return written


def start_workers(spec: dict[str, Any], spec_path: str) -> list[subprocess.Popen[bytes]]:
    procs = []
    for _ in range(int(spec.get("local_workers") or 0)):
        procs.append(subprocess.Popen([sys.executable, __file__, "--spec", spec_path, "--worker"],
                                      stdin=subprocess.DEVNULL))
    for command in spec.get("worker_commands") or []:
        procs.append(subprocess.Popen(command, shell=True, stdin=subprocess.DEVNULL))
    return procs


def run_main(spec: dict[str, Any], spec_path: str) -> int:
    env = make_environment(spec)
    distributed = int(spec.get("expect_workers") or 0) > 0
    recorder = Recorder()
    worker_batches: dict[str, dict[str, Any]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    result: dict[str, Any] = {"locust_version": locust.__version__, "mode": "master" if distributed else "local"}
    if distributed:
        runner: Any = env.create_master_runner(spec.get("master_bind_host", "127.0.0.1"), int(spec["master_port"]))

        def on_samples(environment: Environment, msg: Any, **_: Any) -> None:
            worker_batches[msg.node_id] = msg.data

        runner.register_message(SAMPLES, on_samples)
        procs = start_workers(spec, spec_path)
        deadline = time.monotonic() + float(spec.get("worker_timeout_s", 30))
        while runner.worker_count < int(spec["expect_workers"]):
            if time.monotonic() > deadline:
                say("error", message=f"{runner.worker_count} of {spec['expect_workers']} Locust workers "
                                     f"connected within {spec.get('worker_timeout_s', 30)} s")
                runner.quit()
                for p in procs:
                    p.terminate()
                return 3
            gevent.sleep(0.1)
        result["worker_ids"] = sorted(c.id for c in runner.clients.all)
    else:
        runner = env.create_local_runner()
        env.events.request.add_listener(recorder.on_request)

    copies = max(1, len(spec.get("targets") or {}))
    runner.start(int(spec["users"]) * copies, float(spec["spawn_rate"]) * copies)
    gevent.sleep(float(spec["warmup_s"]))
    env.stats.reset_all()
    start = time.time()
    say("measure_start", users=int(spec["users"]))
    gevent.sleep(float(spec["duration_s"]))
    end = time.time()
    say("measure_end")

    samples = recorder.drain()
    errors = dict(recorder.errors)
    cpu_warning = bool(runner.cpu_warning_emitted)
    if distributed:
        runner.send_message(FLUSH)
        deadline = time.monotonic() + 15
        while len(worker_batches) < runner.worker_count and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for batch in worker_batches.values():
            samples.extend(tuple(s) for s in batch["samples"])
            for k, v in batch["errors"].items():
                errors[k] = errors.get(k, 0) + v
            cpu_warning = cpu_warning or batch["cpu_warning"]
        cpu_warning = cpu_warning or bool(runner.worker_cpu_warning_emitted)
        result["workers_reported"] = len(worker_batches)
    runner.stop()
    if spec.get("csv_prefix"):
        result["csv"] = write_csv(env, spec["csv_prefix"])
    runner.quit()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    result.update({
        "window_s": round(end - start, 3), "measure_start": start, "measure_end": end,
        "errors": errors, "cpu_warning": cpu_warning,
        "workers": int(spec.get("expect_workers") or 0),
    })
    if spec.get("targets"):
        result["targets"] = {label: window(samples, start, end, label) for label in spec["targets"]}
    else:
        result["endpoints"] = window(samples, start, end)
    tmp = Path(spec["out"] + ".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    tmp.replace(spec["out"])
    say("done")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="JSON file of the profile (written by checks.perf)")
    parser.add_argument("--worker", action="store_true", help="run as a worker of the spec's master")
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    pin(spec.get("cpus") or [])
    return run_worker(spec) if args.worker else run_main(spec, args.spec)


if __name__ == "__main__":
    sys.exit(main())

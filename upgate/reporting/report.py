"""Reports QA can read: what a run leaves in its folder, and `upgate report RUN` on top of it.

    >>> finalize_run(run, summary, config)             # doctest: +SKIP  (the pipeline calls it after summary.json)
    >>> build_report(run).html                         # doctest: +SKIP
    PosixPath('reports/runs/20261125-101500-ab12/allure-report/index.html')

`finalize_run` adds to the run folder: `charts/*.png` (downtime timeline, latency histograms when the
performance gate left stats), `perf/*.csv` (Locust-style stats), `metrics.prom`, and in
`allure-results/`: `environment.properties`, `categories.json`, `allurerc.json` and one result for the
run itself (its steps, the charts, the CSVs and summary.json attached) beside the gates' results.
`build_report` re-does that, always writes `junit.xml` (every phase in one file) and `summary.json`
(from the gate results when the run was made by hand), and builds the HTML report with the `allure`
npm package (Allure 3) when Node is present. Reporting never changes a verdict: each part that fails
becomes a warning.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from upgate.checks.secrets import redact
from upgate.core.runs import RunDir
from upgate.reporting.loadstats import LoadRun, load_load_runs, locust_csvs

if TYPE_CHECKING:
    from upgate.config import Config
    from upgate.reporting.console import Console

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Where `make report-tools` (or `upgate report --install-allure`) puts the allure npm package.
ALLURE_HOME = PROJECT_ROOT / ".tools" / "allure"
ALLURE_PACKAGE = "allure@3"

# Allure categories: the first that matches wins. Regexes are written for both Java (Allure 2) and
# JavaScript (Allure 3): no inline flags, `[\s\S]` instead of DOTALL.
CATEGORIES: list[dict[str, Any]] = [
    {
        "name": "Data loss",
        "description": "Preserved rows lost or changed: the zero-data-loss promise was broken (and rolled back).",
        "matchedStatuses": ["failed", "broken"],
        "messageRegex": r"[\s\S]*([1-9][0-9]* rows? lost|[1-9][0-9]* changed|data loss|restored? (from )?the backup)[\s\S]*",
    },
    {
        "name": "Infrastructure problem",
        "description": "A component could not be reached or a tool could not run: fix the environment, not the product.",
        "matchedStatuses": ["failed", "broken"],
        "messageRegex": r"[\s\S]*(unreachable|not reachable|[Cc]onnection (refused|reset)|could not connect|"
                        r"timed? ?out|[Tt]imeout|[Nn]ame or service not known|[Nn]o route to host|"
                        r"[Pp]ermission denied|[Nn]o space left|holds the lock|lock is held|pg_dump|pg_restore|"
                        r"backup failed|pytest could not run|not found on PATH|[Nn]o such file)[\s\S]*",
    },
    {
        "name": "Infrastructure problem",
        "description": "A gate's setup broke before it could assert (status broken).",
        "matchedStatuses": ["broken"],
    },
    {
        "name": "Product defect",
        "description": "The new version or its migration does not meet a gate: fix the product or the plan.",
        "matchedStatuses": ["failed"],
    },
]

_STATUS = {"ok": "passed", "failed": "failed", "running": "broken"}


def categorize(status: str, message: str) -> str | None:
    """The category Allure will show for a result (first match wins, as in Allure), or None."""
    for category in CATEGORIES:
        if status not in category.get("matchedStatuses", [status]):
            continue
        regex = category.get("messageRegex")
        if regex is None or re.fullmatch(regex, message or ""):
            return str(category["name"])
    return None


@dataclass
class ReportOutcome:
    run: RunDir
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    html: Path | None = None

    def add(self, path: Path | None) -> None:
        if path is not None:
            self.files.append(path)


def _guard(outcome: ReportOutcome, what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # a report part failing must never change a verdict
        outcome.warnings.append(f"{what}: {type(exc).__name__}: {redact(str(exc))}")
        return None


# --- what a run leaves behind ---------------------------------------------------------------------


def finalize_run(run: RunDir, summary: dict[str, Any], config: Config | None = None) -> ReportOutcome:
    """Charts, stats CSVs, Allure environment/categories/run result, and metrics (textfile and push)."""
    from upgate.reporting import metrics

    outcome = ReportOutcome(run)
    run.allure_results.mkdir(parents=True, exist_ok=True)
    load_runs: list[LoadRun] = _guard(outcome, "performance stats", lambda: load_load_runs(run)) or []
    charts: list[Path] = _guard(outcome, "charts", lambda: write_charts(run, summary, load_runs)) or []
    outcome.files.extend(charts)
    csvs: list[Path] = _guard(outcome, "stats csv", lambda: write_stats_csv(run, load_runs)) or []
    outcome.files.extend(csvs)
    outcome.add(_guard(outcome, "environment.properties",
                       lambda: write_environment(run.allure_results, environment(summary, config))))
    outcome.add(_guard(outcome, "categories.json", lambda: write_categories(run.allure_results)))
    outcome.add(_guard(outcome, "allurerc.json", lambda: write_allure_config(run, summary)))
    outcome.add(_guard(outcome, "allure run result",
                       lambda: write_run_result(run, summary, charts, sorted(set(csvs + locust_csvs(run))))))

    def signals() -> Path:
        registry = metrics.build_registry(summary, load_runs, metrics.probe_latencies(run.path / "downtime.json"),
                                          finished_at=time.time())
        path = metrics.write_textfile(registry, run.path / "metrics.prom")
        reporting = config.reporting if config is not None else None
        if reporting and reporting.textfile_dir:
            metrics.write_textfile(registry, Path(reporting.textfile_dir) / "upgate.prom")
        if reporting and reporting.pushgateway_url:
            try:
                metrics.push(registry, reporting.pushgateway_url, reporting.pushgateway_job,
                             str(summary.get("target") or "unknown"), reporting.push_timeout_s)
            except Exception as exc:
                outcome.warnings.append(f"pushgateway {redact(reporting.pushgateway_url)}: {exc}")
        return path

    outcome.add(_guard(outcome, "metrics", signals))
    return outcome


def write_charts(run: RunDir, summary: dict[str, Any], load_runs: list[LoadRun]) -> list[Path]:
    from upgate.extras import require
    from upgate.reporting import charts

    out: list[Path] = []
    downtime_file = run.path / "downtime.json"
    if downtime_file.exists() or load_runs:
        require("charts", "charts (downtime.json and the perf stats hold the same figures)")
    if downtime_file.exists():
        data = json.loads(downtime_file.read_text(encoding="utf-8"))
        out.append(charts.render_downtime(data, run.path / "charts" / "downtime.png",
                                          budget_s=summary.get("downtime_budget_s")))
    if load_runs:
        out.append(charts.render_latency(load_runs, run.path / "charts" / "latency.png"))
    return out


def write_stats_csv(run: RunDir, load_runs: list[LoadRun]) -> list[Path]:
    """One row per load run in Locust's column names, for runs that left JSON rather than Locust CSVs."""
    if not load_runs or all(r.source.suffix == ".csv" for r in load_runs):
        return []
    path = run.path / "perf" / "load_stats.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Name", "Request Count", "Failure Ratio", "Requests/s", "50%", "95%", "99%", "Samples",
                         "Source"])
        for r in load_runs:
            writer.writerow([r.label, r.requests if r.requests is not None else "", _fmt(r.error_rate),
                             _fmt(r.rps), _fmt(r.quantile_ms(0.5)), _fmt(r.quantile_ms(0.95)),
                             _fmt(r.quantile_ms(0.99)), len(r.samples_ms), r.source.relative_to(run.path)])
    return [path]


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


def environment(summary: dict[str, Any], config: Config | None = None) -> dict[str, str]:
    """What QA needs to know about where and what was gated (secrets redacted)."""
    from upgate import __version__ as upgate_version

    env: dict[str, str] = {
        "run.id": str(summary.get("run_id", "")),
        "target": str(summary.get("target", "")),
        "version.from": str(summary.get("from_version") or ""),
        "version.to": str(summary.get("to_version") or ""),
        "verdict": str(summary.get("verdict", "")),
        "exit.code": str(summary.get("exit_code", "")),
        "started.at": str(summary.get("started_at", "")),
        "host": socket.gethostname(),
        "upgate.version": str(upgate_version),
        "python": platform.python_version(),
        "config": str(summary.get("config", "")),
        "config.sha256": str(summary.get("config_sha256") or ""),
        "gated": ", ".join(k for k, v in (summary.get("gated") or {}).items() if v),
        "not.gated": ", ".join(sorted(summary.get("not_gated") or {})),
    }
    if config is not None:
        if config.database.url:
            env["database"] = config.database.url
        if config.app is not None:
            env["app.base_url"] = config.app.base_url
    return {k: redact(v) for k, v in env.items() if v != ""}


def write_environment(folder: Path, env: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "environment.properties"
    lines = [f"{_prop_escape(k)}={_prop_escape(v, value=True)}" for k, v in env.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _prop_escape(text: str, value: bool = False) -> str:
    out = text.replace("\\", "\\\\").replace("\n", "\\n")
    if not value:
        out = out.replace("=", "\\=").replace(":", "\\:").replace(" ", "\\ ")
    return out


def read_properties(path: Path) -> dict[str, str]:
    """Read back a flat .properties file (the subset write_environment writes)."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith(("#", "!")):
            continue
        key, _, value = line.partition("=")
        while key.endswith("\\") and value is not None:  # an escaped '=' inside the key
            more_key, _, value = value.partition("=")
            key = key[:-1] + "=" + more_key
        out[key.replace("\\ ", " ").replace("\\:", ":")] = value.replace("\\n", "\n").replace("\\\\", "\\")
    return out


def write_categories(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "categories.json"
    path.write_text(json.dumps(CATEGORIES, indent=2) + "\n", encoding="utf-8")
    return path


def write_allure_config(run: RunDir, summary: dict[str, Any]) -> Path:
    """allurerc.json for Allure 3: the report's name, the categories above, one self-contained HTML file."""
    name = (f"upgate {summary.get('target', '')} {summary.get('from_version') or '?'} -> "
            f"{summary.get('to_version') or '?'}: {summary.get('verdict', '')} ({run.run_id})")
    config = {
        "name": name,
        "output": str(run.path / "allure-report"),
        "categories": CATEGORIES,
        "plugins": {"awesome": {"options": {"singleFile": True, "reportName": name,
                                            "groupBy": ["epic", "feature", "story"]}}},
    }
    path = run.path / "allurerc.json"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def _run_status(verdict: str) -> str:
    return {"UPGRADED": "passed", "BLOCKED": "failed", "ROLLED_BACK": "failed", "NEEDS_ATTENTION": "broken"}.get(
        verdict, "unknown")


def _ms(iso: str | None) -> int | None:
    if not iso:
        return None
    try:
        return int(datetime.fromisoformat(iso).timestamp() * 1000)
    except ValueError:
        return None


def write_run_result(run: RunDir, summary: dict[str, Any], charts: list[Path], csvs: list[Path]) -> Path:
    """One Allure result for the run itself: its steps in order, the verdict, and the charts attached.

    The uuid derives from the run id, so writing it again (by `upgate report`) replaces it.
    """
    folder = run.allure_results
    folder.mkdir(parents=True, exist_ok=True)
    rid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"upgate-run:{run.run_id}"))
    verdict = str(summary.get("verdict", "UNKNOWN"))
    start = _ms(summary.get("started_at")) or int(run.path.stat().st_mtime * 1000)
    stop = start + int(1000 * float(summary.get("seconds") or 0))

    attachments = []

    def attach(name: str, src: Path, mime: str) -> None:
        suffix = src.suffix
        target = f"{uuid.uuid5(uuid.NAMESPACE_URL, f'{rid}:{name}')}-attachment{suffix}"
        shutil.copyfile(src, folder / target)
        attachments.append({"name": name, "source": target, "type": mime})

    for chart in charts:
        attach(f"chart: {chart.stem}", chart, "image/png")
    for table in csvs:
        attach(f"stats: {table.name}", table, "text/csv")
    summary_file = run.summary
    if summary_file.exists():
        attach("summary.json", summary_file, "application/json")
    downtime_file = run.path / "downtime.json"
    if downtime_file.exists():
        attach("downtime.json (probe timeline)", downtime_file, "application/json")

    steps = []
    clock = start
    for step in summary.get("steps") or []:
        seconds = float(step.get("seconds") or 0)
        status = _STATUS.get(str(step.get("status")), "unknown")
        entry: dict[str, Any] = {"name": str(step.get("name")), "status": status, "stage": "finished",
                                 "start": clock, "stop": clock + int(seconds * 1000)}
        if step.get("error"):
            entry["statusDetails"] = {"message": redact(str(step["error"]))}
        steps.append(entry)
        clock += int(seconds * 1000)

    downtime = summary.get("downtime") or {}
    rollback = summary.get("rollback") or {}
    target = str(summary.get("target", ""))
    name = f"upgrade {target} {summary.get('from_version') or '?'} -> {summary.get('to_version') or '?'}: {verdict}"
    full_name = f"upgate.run#{target}"
    parameters = [
        {"name": "run id", "value": run.run_id, "excluded": True},
        {"name": "verdict", "value": verdict, "excluded": True},
        {"name": "downtime", "value": f"{downtime.get('downtime_s', 0):.2f} s (longest "
                                      f"{downtime.get('longest_outage_s', 0):.2f} s)", "excluded": True},
    ]
    if rollback.get("triggered"):
        parameters.append({"name": "rollback", "value": f"{rollback.get('seconds', 0):.2f} s, "
                                                        f"{'verified' if rollback.get('verified') else 'NOT verified'}",
                           "excluded": True})
    result: dict[str, Any] = {
        "uuid": rid,
        "historyId": hashlib.md5(full_name.encode()).hexdigest(),
        "testCaseId": hashlib.md5(full_name.encode()).hexdigest(),
        "fullName": full_name,
        "name": name,
        "status": _run_status(verdict),
        "stage": "finished",
        "statusDetails": {"message": redact(str(summary.get("reason", "")))},
        "description": _description(summary),
        "start": start,
        "stop": stop,
        "steps": steps,
        "attachments": attachments,
        "parameters": parameters,
        "labels": [
            {"name": "epic", "value": "run"},
            {"name": "feature", "value": "pipeline"},
            {"name": "story", "value": target or "target"},
            {"name": "parentSuite", "value": "run"},
            {"name": "suite", "value": "pipeline"},
            {"name": "severity", "value": "critical"},
            {"name": "host", "value": socket.gethostname()},
            {"name": "framework", "value": "upgate"},
        ],
    }
    path = folder / f"{rid}-result.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def _description(summary: dict[str, Any]) -> str:
    lines = [f"**Verdict:** {summary.get('verdict')} (exit {summary.get('exit_code')})", "",
             redact(str(summary.get("reason", ""))), ""]
    downtime = summary.get("downtime")
    if downtime:
        lines.append(f"**Downtime:** {downtime.get('downtime_s', 0):.2f} s, longest outage "
                     f"{downtime.get('longest_outage_s', 0):.2f} s (budget {summary.get('downtime_budget_s')} s)")
    rollback = summary.get("rollback") or {}
    if rollback.get("triggered"):
        ladder = "; ".join(f"{r['rung']}: {'ok' if r['ok'] else 'FAILED'}" for r in rollback.get("ladder", []))
        lines.append(f"**Rollback:** {rollback.get('seconds', 0):.2f} s, "
                     f"{'verified' if rollback.get('verified') else 'NOT verified'}; {ladder}")
    if summary.get("live"):
        from upgate.reporting.console import live_line

        lines.append(f"**Live traffic:** {live_line(summary['live'])}")
    repair = (summary.get("rollback") or {}).get("repair")
    if repair:
        lines.append(f"**Repair:** {repair.get('rows', 0)} rows from the {repair.get('source')} in "
                     f"{repair.get('seconds', 0):.2f} s: " + "; ".join(
                         f"{t['table']} {t['updated']} updated, {t['inserted']} inserted, {t['deleted']} deleted"
                         for t in repair.get("tables", [])))
    for step in summary.get("plan") or []:  # what each step said it would do, and how it is undone
        lines.append(f"**Plan, {step['step']}:** {'; '.join(step['does'])} (undo: {'; '.join(step['undo'])})")
    gated = ", ".join(k for k, v in (summary.get("gated") or {}).items() if v)
    lines.append(f"**Gated:** {gated or 'nothing'}")
    category = categorize(_run_status(str(summary.get("verdict"))), str(summary.get("reason", "")))
    if category:
        lines.append(f"**Category:** {category}")
    return "\n".join(lines)


def report_run(run: RunDir, summary: dict[str, Any], config: Config, console: Console | None = None) -> ReportOutcome:
    """The pipeline's last act: what `finalize_run` writes, junit.xml, and the HTML when [reporting] html."""
    outcome = ReportOutcome(run)
    try:
        outcome = finalize_run(run, summary, config)
        outcome.add(_guard(outcome, "junit.xml", lambda: write_junit(run)))
        if config.reporting.html:
            binary = find_allure()
            if binary is None:
                outcome.warnings.append("[reporting] html: no Allure 3 CLI found (run `make report-tools`)")
            else:
                outcome.html = _guard(outcome, "HTML report", lambda: generate_html(run, binary))
    except Exception as exc:
        outcome.warnings.append(f"report: {type(exc).__name__}: {redact(str(exc))}")
    if console is not None:
        for warning in outcome.warnings:
            console.step("report", f"warning: {warning}")
        where = f"HTML {outcome.html}" if outcome.html else f"HTML: upgate report {run.run_id}"
        console.step("report", f"charts/, metrics.prom, junit.xml, allure-results/ in {run.path}; {where}")
    return outcome


# --- upgate report RUN ----------------------------------------------------------------------------


def resolve_run(spec: str | None, reports: Path) -> RunDir:
    """A run folder from a path, a run id under reports/runs, or 'latest' / nothing."""
    if spec and spec != "latest":
        path = Path(spec)
        if path.is_dir():
            return RunDir(path.resolve())
        candidate = Path(reports) / "runs" / spec
        if candidate.is_dir():
            return RunDir(candidate.resolve())
        raise FileNotFoundError(f"{spec}: no such run folder (give a path or a run id under {reports}/runs)")
    latest = RunDir.latest(Path(reports))
    if latest is None:
        raise FileNotFoundError(f"no run folder under {reports}/runs")
    return latest


def ensure_summary(run: RunDir) -> dict[str, Any]:
    """summary.json as the pipeline wrote it, or one made from the gate results of a run made by hand."""
    if run.summary.exists():
        data: dict[str, Any] = json.loads(run.summary.read_text(encoding="utf-8"))
        return data
    gates: dict[str, Any] = {}
    for phase in ("pre", "post", "rollback"):
        file = run.gate_results(phase)
        if file.exists():
            g = json.loads(file.read_text(encoding="utf-8"))
            failures = [x for x in g.get("gates", []) if x.get("outcome") in ("failed", "error")]
            gates[phase] = {"passed": g.get("exitstatus") == 0 and g.get("counts", {}).get("passed", 0) > 0,
                            "counts": g.get("counts", {}), "failures": failures}
    passed = bool(gates) and all(v["passed"] for v in gates.values())
    summary: dict[str, Any] = {
        "run_id": run.run_id,
        "target": "",
        "verdict": "GATES_PASSED" if passed else "GATES_FAILED",
        "exit_code": 0 if passed else 1,
        "reason": "gates run by hand (no `upgate run` summary): " + ", ".join(
            f"{p} {'passed' if v['passed'] else 'failed'}" for p, v in gates.items()),
        "gates": gates,
        "steps": [],
        "written_by": "upgate report",
    }
    run.write_json("summary.json", summary)
    return summary


def write_junit(run: RunDir) -> Path:
    """Every phase's JUnit XML in one `junit.xml` (each phase a testsuite named after it)."""
    root = ET.Element("testsuites", name=f"upgate {run.run_id}")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    files = sorted(run.path.glob("junit-*.xml"), key=lambda p: _phase_order(p.stem.removeprefix("junit-")))
    for file in files:
        phase = file.stem.removeprefix("junit-")
        try:
            tree = ET.parse(file)
        except ET.ParseError:
            continue
        doc = tree.getroot()
        suites = [doc] if doc.tag == "testsuite" else list(doc.iter("testsuite"))
        for suite in suites:
            suite.set("name", phase)
            for case in suite.iter("testcase"):
                case.set("classname", f"{phase}.{case.get('classname', '')}".rstrip("."))
            for key in totals:
                totals[key] += int(suite.get(key, "0") or 0)
            root.append(suite)
    if not files:  # gates-<phase>.json is written even when pytest's junit was not asked for
        for file in sorted(run.path.glob("gates-*.json"), key=lambda p: _phase_order(p.stem.removeprefix("gates-"))):
            root.append(_suite_from_gates(file.stem.removeprefix("gates-"),
                                          json.loads(file.read_text(encoding="utf-8")), totals))
    for key, value in totals.items():
        root.set(key, str(value))
    path = run.path / "junit.xml"
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def _phase_order(phase: str) -> tuple[int, str]:
    order = {"pre": 0, "post": 1, "rollback-1": 2, "rollback": 3}
    return order.get(phase, 9), phase


def _suite_from_gates(phase: str, data: dict[str, Any], totals: dict[str, int]) -> ET.Element:
    suite = ET.Element("testsuite", name=phase, time=str(data.get("seconds", 0)))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for gate in data.get("gates", []):
        module, _, test = str(gate["nodeid"]).partition("::")
        case = ET.SubElement(suite, "testcase", classname=f"{phase}.{module.removesuffix('.py').replace('/', '.')}",
                             name=test, time=str(gate.get("seconds", 0)))
        counts["tests"] += 1
        outcome = gate.get("outcome")
        if outcome == "failed":
            ET.SubElement(case, "failure", message=str(gate.get("message", "")))
            counts["failures"] += 1
        elif outcome == "error":
            ET.SubElement(case, "error", message=str(gate.get("message", "")))
            counts["errors"] += 1
        elif outcome == "skipped":
            ET.SubElement(case, "skipped", message=str(gate.get("message", "")))
            counts["skipped"] += 1
    for key, value in counts.items():
        suite.set(key, str(value))
        totals[key] += value
    return suite


def find_allure(explicit: str | None = None) -> str | None:
    """The Allure 3 CLI: --allure, $UPGATE_ALLURE, the project-local install, then PATH."""
    for candidate in (explicit, os.environ.get("UPGATE_ALLURE"), str(ALLURE_HOME / "node_modules" / ".bin" / "allure")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("allure")
    if found and _allure_major(found) >= 3:
        return found
    return None


def _allure_major(binary: str) -> int:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
        return int(out.strip().split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0


def install_allure(home: Path = ALLURE_HOME, timeout_s: float = 300) -> str:
    """`npm install allure@3` into a project-local folder (nothing global); returns the CLI path."""
    npm = shutil.which("npm")
    if not npm or not shutil.which("node"):
        raise FileNotFoundError("Node.js and npm are needed for the HTML report (JUnit and summary.json are written)")
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([npm, "install", "--prefix", str(home), "--no-audit", "--no-fund", "--silent",
                           ALLURE_PACKAGE], capture_output=True, text=True, timeout=timeout_s)
    binary = home / "node_modules" / ".bin" / "allure"
    if proc.returncode != 0 or not binary.exists():
        raise RuntimeError(f"npm install {ALLURE_PACKAGE} failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return str(binary)


def generate_html(run: RunDir, allure: str, timeout_s: float = 300) -> Path:
    """`allure generate` (Allure 3) over the run's allure-results into allure-report/ (one index.html)."""
    output = run.path / "allure-report"
    if output.exists():
        shutil.rmtree(output)
    config = run.path / "allurerc.json"
    cmd = [allure, "generate", str(run.allure_results), "--output", str(output)]
    if config.exists():
        cmd[2:2] = ["--config", str(config)]
    env = {**os.environ, "NO_COLOR": "1", "CI": os.environ.get("CI", "true")}
    proc = subprocess.run(cmd, cwd=run.path, capture_output=True, text=True, timeout=timeout_s, env=env)
    log = run.logs / "allure-generate.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("$ " + " ".join(cmd) + "\n" + proc.stdout + proc.stderr, encoding="utf-8")
    index = output / "index.html"
    if proc.returncode != 0 or not index.exists():
        raise RuntimeError(f"allure generate failed (exit {proc.returncode}); see {log}")
    return index


def build_report(run: RunDir, html: bool = True, allure: str | None = None, install: bool = True,
                 config: Config | None = None) -> ReportOutcome:
    """Everything `finalize_run` writes, plus junit.xml, summary.json and (with Node) the HTML report."""
    summary = ensure_summary(run)
    if config is None and summary.get("config"):
        config = _try_config(Path(str(summary["config"])))
    outcome = finalize_run(run, summary, config)
    outcome.add(_guard(outcome, "junit.xml", lambda: write_junit(run)))
    outcome.add(run.summary)
    if html:
        binary = find_allure(allure)
        if binary is None and install:
            binary = _guard(outcome, "installing the allure npm package", install_allure)
        if binary is None:
            if not any("allure" in w for w in outcome.warnings):
                outcome.warnings.append("HTML report skipped: no Allure 3 CLI (run `make report-tools`, or install "
                                        "Node.js and npm); JUnit and summary.json are written")
        else:
            outcome.html = _guard(outcome, "HTML report", lambda: generate_html(run, binary))
            outcome.add(outcome.html)
    return outcome


def _try_config(path: Path) -> Config | None:
    from upgate.config import load_config

    try:
        return load_config(path)
    except Exception:
        return None

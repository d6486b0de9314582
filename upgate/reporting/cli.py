"""`upgate report RUN` and `upgate history`: parse arguments, call upgate.report / upgate.history, print.

    $ upgate report latest                  # junit.xml, summary.json, charts, allure-report/index.html
    $ upgate history --reports reports      # success rate vs 95 %, downtime and rollback per run, trends, chart
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

COMMANDS = ("report", "history")


def add_commands(sub: Any) -> None:
    report = sub.add_parser(
        "report", help="build a run's reports: JUnit XML, summary.json, charts, metrics, Allure HTML",
        description="Write junit.xml (every phase), summary.json, charts/*.png, metrics.prom and the Allure "
                    "extras into the run folder, then build allure-report/index.html with the allure npm "
                    "package (Allure 3) when Node.js is present (installed on first use into .tools/allure).",
        epilog="exit: 0 written (HTML skipped with a warning when Node.js is absent); 1 a part failed; "
               "2 no such run folder")
    report.add_argument("run", nargs="?", default="latest", help="run folder, run id under REPORTS/runs, or latest")
    report.add_argument("--reports", default="reports", help="folder holding runs/ (default: reports)")
    report.add_argument("--no-html", action="store_true", help="skip the Allure HTML report")
    report.add_argument("--no-install", action="store_true", help="never run npm to install the allure package")
    report.add_argument("--allure", help="path of the Allure 3 CLI (default: $UPGATE_ALLURE, .tools/allure, PATH)")
    report.add_argument("--strict", action="store_true", help="exit 1 when the HTML report could not be built")

    history = sub.add_parser(
        "history", help="past runs: success rate vs the 95 %% target, downtime and rollback time, trends",
        epilog="exit: 0 (also below target; use --fail-below to gate on it); 1 below target with --fail-below")
    history.add_argument("--reports", default="reports", help="folder holding runs/ (default: reports)")
    history.add_argument("--target", help="only runs of this target name")
    history.add_argument("--last", type=int, help="only the last N runs")
    history.add_argument("--target-rate", type=float, default=0.95, help="success-rate target (default 0.95)")
    history.add_argument("--chart", help="PNG path (default: REPORTS/history.png); 'none' for no chart")
    history.add_argument("--json", action="store_true", help="print JSON instead of the table")
    history.add_argument("--fail-below", action="store_true", help="exit 1 when the success rate is below target")


def main(args: argparse.Namespace) -> int:
    if args.command == "report":
        return _report(args)
    return _history(args)


def _report(args: argparse.Namespace) -> int:
    from upgate.reporting.audit import AuditLog, audit_path
    from upgate.reporting.report import build_report, resolve_run

    try:
        run = resolve_run(args.run, Path(args.reports))
    except FileNotFoundError as exc:
        print(f"upgate report: {exc}", file=sys.stderr)
        return 2
    outcome = build_report(run, html=not args.no_html, allure=args.allure, install=not args.no_install)
    for path in outcome.files:
        print(f"  wrote {path}")
    for warning in outcome.warnings:
        print(f"  warning: {warning}")
    if outcome.html:
        print(f"HTML report: {outcome.html}  (one self-contained file: open it in a browser)")
    summary = json.loads(run.summary.read_text(encoding="utf-8")) if run.summary.exists() else {}
    try:
        AuditLog(audit_path(None, run.path), run_id=run.run_id, target=summary.get("target")).record(
            "report", "end", verdict=summary.get("verdict"), config_sha256=summary.get("config_sha256"),
            html=str(outcome.html) if outcome.html else None, warnings=len(outcome.warnings))
    except OSError as exc:
        print(f"  warning: audit log: {exc}")
    failed = any(not w.startswith("HTML report skipped") for w in outcome.warnings)
    if args.strict and outcome.html is None and not args.no_html:
        failed = True
    return 1 if failed else 0


def _charts_available(asked: str | None) -> bool:
    """matplotlib (the `charts` extra): a chart asked for by path needs it; the default one is left out, said why."""
    from upgate.extras import MissingExtra, require

    try:
        require("charts", "the history chart")
    except MissingExtra as exc:
        if asked:
            raise
        print(f"upgate: {exc}", file=sys.stderr)
        return False
    return True


def _history(args: argparse.Namespace) -> int:
    from upgate.reporting.history import format_table, load_history

    reports = Path(args.reports)
    history = load_history(reports, target=args.target, last=args.last, target_rate=args.target_rate)
    chart = None
    if args.chart != "none" and history.records and not _charts_available(args.chart):
        args.chart = "none"
    if args.chart != "none" and history.records:
        from upgate.reporting.charts import render_history

        chart = render_history(history.records, Path(args.chart) if args.chart else reports / "history.png",
                               target_rate=args.target_rate)
    if args.json:
        data = history.to_json()
        data["chart"] = str(chart) if chart else None
        print(json.dumps(data, indent=2, default=str))
    else:
        print(format_table(history))
        if chart:
            print(f"chart {chart}")
    if args.fail_below and history.meets_target is False:
        return 1
    return 0

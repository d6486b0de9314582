"""`upgate`: parse arguments, call the library, exit with the verdict's code. Nothing else lives here.

    $ upgate run --config upgate.toml        # 0 upgraded, 10 blocked, 20 rolled back, 30 needs attention, 2 usage
    $ upgate demo --scenario destructive
    $ upgate backup --config upgate.toml      # emergency: everything, verified, in one folder
    $ upgate recover --config upgate.toml     # emergency: stop, restore, start previous, verify
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from upgate.errors import EXIT_CODES, ConfigError, UpgateError, Verdict, exit_code

EPILOG = """exit codes:
  0   UPGRADED         pre-gates, every step of the plan and post-gates passed
  10  BLOCKED          pre-gates (or lock, or backup) failed; nothing was touched
                       (upgate rollback: the run had touched nothing, nothing to undo)
  20  ROLLED_BACK      a step or post-gate failed; rollback done and verified against the baseline
  30  NEEDS_ATTENTION  rollback could not be proven; read the run folder's summary.json and journal
  2   usage or configuration error; nothing ran
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upgate",
        description="Gate an upgrade: pre-gates, backup, migrate, deploy, post-gates; proven rollback on failure.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a gated upgrade from a config file", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", "-c", help="upgate.toml (default: $UPGATE_CONFIG, then ./upgate.toml)")
    run.add_argument("--reports", default="reports", help="folder for run folders (default: reports)")
    run.add_argument("--quiet", "-q", action="store_true", help="print only the verdict lines")

    undo = sub.add_parser(
        "rollback", help="undo a run from its journal (e.g. one killed half-way) and prove it",
        description="Rebuild what the run did from its journal and undo it with the same ladder as `upgate run`: "
                    "stop the new version, undo the database (down migrations, or restore the verified backup "
                    "when there is no down, it failed, or the schema still differs), swap a model back, start "
                    "the previous version, verify against the baseline.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    undo.add_argument("--config", "-c", help="the upgate.toml the run used")
    undo.add_argument("--run", default="latest", metavar="RUN",
                      help="the run: its folder, its id under --reports, or 'latest' (default)")
    undo.add_argument("--reports", default="reports", help="folder holding runs/ (default: reports)")

    backup = sub.add_parser(
        "backup", help="emergency backup: verified database dump, config files, model folders, recent logs",
        description="Write one timestamped folder: the database (pg_dump -Fd verified by a full read, the schema "
                    "snapshot and the row fingerprints of the gated tables), upgate.toml and the app's config files, "
                    "the model folders, the tail of the service logs, and manifest.json with every file's sha256 "
                    "(read back before the command ends).",
        epilog="exit codes:\n  0   the backup is complete and verified (its folder is printed)\n"
               "  30  no verified backup (what failed is printed)\n  2   usage or configuration error",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    backup.add_argument("--config", "-c", help="upgate.toml (default: $UPGATE_CONFIG, then ./upgate.toml)")
    backup.add_argument("--output", "-o", default="backups",
                        help="folder the timestamped emergency-* folder goes into (default: backups)")
    backup.add_argument("--reports", default="reports", help="folder holding runs/, for the newest run's logs")

    recover = sub.add_parser(
        "recover", help="emergency recovery from `upgate backup`: stop, restore, start the previous version, verify",
        description="Check the backup's manifest (a changed file: nothing is touched), then stop the app, restore "
                    "the database (a fresh database, schema checked, swapped in by rename), put back the config "
                    "files whose bytes differ, start the previous version ([deploy] previous / rollback_command), "
                    "and verify the app's health, the schema and every table's fingerprint against the backup's.",
        epilog="exit codes:\n  0   RECOVERED: restored and verified against the backup\n"
               "  30  NEEDS_ATTENTION: not verified; read the recovery's folder (printed)\n"
               "  2   usage or configuration error; nothing ran",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    recover.add_argument("--config", "-c", help="upgate.toml (default: $UPGATE_CONFIG, then ./upgate.toml)")
    recover.add_argument("--from", dest="source", metavar="DIR",
                         help="the backup folder (default: the newest emergency-* under backups/)")
    recover.add_argument("--reports", default="reports", help="folder for the recovery's journal (recoveries/)")
    init = sub.add_parser(
        "init", help="write a starter upgate.toml from what the database and the app answer",
        description="Inspect the database (tables, keys, the migration tool's bookkeeping table) and probe the app "
                    "(health, readiness, metrics endpoints), read REDIS_URL and MONITORING_URL, and write a "
                    "commented starter config. Never writes over an existing file (exit 2).")
    init.add_argument("--database-url", help="the database to gate (its password is not written)")
    init.add_argument("--app-url", help="the app's base URL, e.g. http://127.0.0.1:8000")
    init.add_argument("--output", "-o", default="upgate.toml", type=Path, help="default: ./upgate.toml")
    init.add_argument("--name", help="[target] name (default: the output folder's name)")

    check = sub.add_parser("check-config", help="validate a config file and print what would be gated")
    check.add_argument("--config", "-c", help="upgate.toml (default: $UPGATE_CONFIG, then ./upgate.toml)")

    from upgate.fixtures.demo import SCENARIOS

    width = max(map(len, SCENARIOS)) + 2
    demo = sub.add_parser(
        "demo", help="a real gated upgrade of the reference service, or of a real app, on embedded PostgreSQL",
        description="Start PostgreSQL (embedded unless DATABASE_URL is set) and the scenario's target at its old "
                    "version (the reference service seeded with episodic_logs, or a third-party app installed from "
                    "PyPI into a cached venv), and run the scenario's plan through `upgate run`.",
        epilog="scenarios:\n" + "\n".join(f"  {n:<{width}} {s.description}" for n, s in SCENARIOS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--scenario", "-s", default="good", choices=list(SCENARIOS), metavar="SCENARIO",
                      help="one of the scenarios below (default: good)")
    demo.add_argument("--list", action="store_true", help="print every scenario's name, one a line, and exit")
    demo.add_argument("--rows", type=int, default=100_000,
                      help="rows seeded into episodic_logs (default 100000; real apps write their own data)")
    demo.add_argument("--reports", default="reports", help="folder for run folders (default: reports)")
    demo.add_argument("--serve", action="store_true",
                      help="only start the target (PostgreSQL + the old version), print its config path and leave "
                           "it running")
    demo.add_argument("--stop", metavar="FOLDER", help="stop a target left running by --serve")

    appconf = sub.add_parser("config", help="the application's config files: migrate with rules, validate")
    appconf_sub = appconf.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    cm = appconf_sub.add_parser(
        "migrate", help="apply migration rules: timestamped backup, write, validate, restore the backup on failure",
        epilog="exit: 0 migrated and valid (or nothing to change); 1 the result did not validate (backup "
               "restored); 2 the file or the rules cannot be read")
    cm.add_argument("file", type=Path, help="the application's config file (JSON, TOML or YAML)")
    cm.add_argument("--rules", required=True, type=Path, help="rules file: [[rule]] entries and a [validate] table")
    cm.add_argument("--dry-run", action="store_true", help="print the changes and the validation; write nothing")
    cv = appconf_sub.add_parser("validate", help="validate a config file against a rules file's [validate] table")
    cv.add_argument("file", type=Path)
    cv.add_argument("--rules", required=True, type=Path)

    from upgate.reporting import cli as cli_reports

    cli_reports.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _tolerate_closed_stdout()
    try:
        if args.command in ("run", "demo") and not getattr(args, "stop", None):
            writable_folder(Path(args.reports), "--reports")
        if args.command == "run":
            return _run(args)
        if args.command == "rollback":
            return _rollback(args)
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "backup":
            return _backup(args)
        if args.command == "recover":
            return _recover(args)
        if args.command == "init":
            return _init(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "config":
            return _app_config(args)
        if args.command in ("report", "history"):
            from upgate.reporting import cli as cli_reports

            return cli_reports.main(args)
    except ConfigError as exc:
        print(f"upgate: configuration error: {exc}", file=sys.stderr)
        return EXIT_CODES[Verdict.USAGE_ERROR]
    except UpgateError as exc:
        print(f"upgate: {exc}", file=sys.stderr)
        return exit_code(exc.verdict)
    except OSError as exc:  # a path the user gave that cannot be used; the run itself never gets here
        where = f" {exc.filename}" if exc.filename else ""
        print(f"upgate: error:{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CODES[Verdict.USAGE_ERROR]
    parser.print_help()
    return EXIT_CODES[Verdict.USAGE_ERROR]


def writable_folder(path: Path, option: str) -> Path:
    """`path` as a folder upgate can write in (or create: its parent exists and is writable); ConfigError says
    why not. Nothing is created here: a bad config found next must leave no trace."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: is a file, not a folder")
    if not path.exists():
        parent = path.resolve().parent
        if not parent.is_dir():
            raise ConfigError(f"{option} {path}: its parent folder {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            why = "Read-only file system" if os.statvfs(parent).f_flag & os.ST_RDONLY else "Permission denied"
            raise ConfigError(f"{option} {path}: cannot create it: {why} ({parent})")
        return path
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write there: {exc.strerror}") from None
    return path


class _ClosedStdoutTolerant:
    """stdout that survives its reader going away (`upgate check-config | head`, a closed terminal).

    The first failed write points the file descriptor at /dev/null, so nothing after it (nor Python's
    own flush at exit) raises: a run keeps going, and rolls back if it must, with nobody reading.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            self._detach()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            self._detach()

    def _detach(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _tolerate_closed_stdout() -> None:
    if not isinstance(sys.stdout, _ClosedStdoutTolerant) and hasattr(sys.stdout, "fileno"):
        try:
            sys.stdout.fileno()
        except (OSError, ValueError):
            return  # captured (tests): nothing to guard
        sys.stdout = _ClosedStdoutTolerant(sys.stdout)


def _run(args: argparse.Namespace) -> int:
    from upgate.config import load_config
    from upgate.core.pipeline import RunOptions, run
    from upgate.reporting.console import Console

    config = load_config(args.config)
    outcome = run(config, RunOptions(reports=Path(args.reports), console=Console(quiet=args.quiet)))
    if args.quiet:
        print(f"{outcome.verdict.value} (exit {outcome.exit_code}): {outcome.reason}")
    return outcome.exit_code


def _rollback(args: argparse.Namespace) -> int:
    from upgate.config import load_config
    from upgate.core.recovery import rollback_run
    from upgate.core.runs import resolve_run

    config = load_config(args.config)
    # No write check here: a full or read-only disk must not stop a rollback (its records are best-effort).
    return rollback_run(config, resolve_run(args.run, Path(args.reports))).exit_code


def _backup(args: argparse.Namespace) -> int:
    from upgate.config import load_config
    from upgate.core.emergency import emergency_backup
    from upgate.errors import StepFailed

    config = load_config(args.config)
    try:
        folder = emergency_backup(config, Path(args.output), Path(args.reports),
                                  say=lambda label, message: print(f"{label}: {message}", flush=True))
    except StepFailed as exc:
        print(f"upgate backup: NO verified backup: {exc}", file=sys.stderr)
        return EXIT_CODES[Verdict.NEEDS_ATTENTION]
    print(f"backup: {folder}")
    print(f"  recover with: upgate recover --config {config.source} --from {folder}")
    return 0


def _recover(args: argparse.Namespace) -> int:
    from upgate.config import load_config
    from upgate.core.emergency import DEFAULT_OUTPUT, latest_backup, recover

    config = load_config(args.config)
    folder = Path(args.source) if args.source else latest_backup(DEFAULT_OUTPUT)
    return recover(config, folder, Path(args.reports)).exit_code


def _check_config(args: argparse.Namespace) -> int:
    from upgate.checks.secrets import redact
    from upgate.config import load_config

    config = load_config(args.config)
    print(f"{config.source}: valid")
    for name, on in config.gated_components().items():
        print(f"  {name:<9} {'gated' if on else 'not configured (not gated: its gates are deselected)'}")
    if config.database.url:
        print(f"  database  {redact(config.database.url)}")
        tables = config.integrity.tables
        print(f"  integrity tables: {'all' if tables == 'all' else ', '.join(tables)}")
        if tables == "all":
            print(f"  integrity excluded (exclude + extend_exclude): {', '.join(config.integrity.excluded())}")
    from upgate.extras import EXTRAS, missing_modules, needed_extras

    for extra, asker in needed_extras(config).items():
        missing = missing_modules(extra)
        if missing:  # its gates will fail (it was asked for), not skip
            print(f"  {asker} needs {', '.join(missing)}: {EXTRAS[extra].pip}")
    return 0


def _init(args: argparse.Namespace) -> int:
    import os

    from upgate.init import discover, refuse_existing, render, write_starter

    if not args.database_url and not args.app_url:
        raise ConfigError("upgate init needs --database-url, --app-url, or both")
    refuse_existing(args.output)  # before probing anything
    found = discover(args.database_url, args.app_url, os.environ)
    name = args.name or args.output.resolve().parent.name or "service"
    write_starter(args.output, render(found, name))
    print(f"wrote {args.output}: {len(found.tables)} table(s) gated"
          + (f", migrations by {found.tool}" if found.tool else "")
          + (f", app health {found.health_path}" if found.health_path else ""))
    for note in found.notes:
        print(f"  note: {note}")
    print(f"next: upgate check-config --config {args.output}")
    return 0


def _app_config(args: argparse.Namespace) -> int:
    from upgate.checks.appconfig import load_config_file, read_rules, validate_config
    from upgate.steps.config_migrate import migrate_config_file

    if args.config_command == "validate":
        try:
            _rules, spec = read_rules(args.rules)
            result = validate_config(load_config_file(args.file), spec, str(args.file))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for warning in result.warnings:
            print(f"warning: {warning}")
        print(("valid: " if result.ok else "INVALID: ") + result.summary)
        return 0 if result.ok else 1
    outcome = migrate_config_file(args.file, args.rules, dry_run=args.dry_run)
    for change in outcome.changes or ["nothing to change"]:
        print(f"  {change}")
    for warning in outcome.warnings:
        print(f"warning: {warning}")
    if outcome.backup:
        print(f"backup: {outcome.backup}")
    if args.dry_run:
        print(f"dry run, nothing written; the result would be {'valid' if outcome.ok else 'INVALID'}: "
              f"{outcome.validation.summary}")
    elif outcome.restored:
        print(f"INVALID after migration, {args.file} restored from the backup: {outcome.validation.summary}")
    elif outcome.written:
        print(f"migrated {args.file}: {outcome.validation.summary}")
    else:
        print(f"{args.file} unchanged: {outcome.validation.summary}")
    return 0 if outcome.ok else 1


def _demo(args: argparse.Namespace) -> int:
    from upgate.extras import require
    from upgate.fixtures import demo

    if args.list:
        print("\n".join(demo.list_scenarios()))
        return 0
    require("embedded", "upgate demo (embedded PostgreSQL and Redis, the reference service)")
    if args.stop:
        demo.stop_served(Path(args.stop))
        return 0
    if args.serve:
        demo.serve(args.scenario, rows=args.rows)
        return 0
    outcome = demo.run_demo(args.scenario, rows=args.rows, reports=Path(args.reports))
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())

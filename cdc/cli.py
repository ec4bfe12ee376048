"""The `softcart-sync` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import structlog

from cdc.logs import configure
from cdc.metrics import version
from cdc.settings import Settings, as_toml, effective, load_settings, settings_help
from transform.errors import ConfigError, SoftcartError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

DESCRIPTION = """\
softcart-sync streams the SoftCart sales database from MySQL/MariaDB into PostgreSQL staging
through the binlog (change data capture): every insert, update and delete, exactly once, across
crashes and restarts.

Quick start, with no database of your own:   softcart-sync demo
Against your servers: set SOFTCART_SOURCE_URL and SOFTCART_STAGING_URL (or write them in a TOML
file given with --config), then `softcart-sync check`, then `softcart-sync run`.
"""

EPILOG = """\
settings to start with (environment variables override the --config TOML file, whose keys are the
lower-case names without the SOFTCART_ prefix):
{settings}
`softcart-sync settings` lists all {count} with their meaning and default; `softcart-sync settings
--toml` writes the ones in force as a settings file.

exit codes: 0 success, 1 failure (a check failed, a fatal error), 2 bad settings or arguments.
"""

#: The settings --help shows (the rest: `softcart-sync settings`)
ESSENTIAL = ("source_url", "staging_url", "warehouse_url", "source_tables", "pipeline_name", "metrics_listen")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="softcart-sync", description=DESCRIPTION,
        epilog=EPILOG.format(settings=settings_help(ESSENTIAL), count=len(Settings.model_fields)),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML file with settings")
    p.add_argument("--version", action="version", version=f"softcart-sync {version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _daemon_commands(sub)
    _dev_commands(sub)
    _state_commands(sub)
    _warehouse_commands(sub)
    _reconcile_commands(sub)
    _config_anywhere(p)
    return p


def _daemon_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Run the daemon and check what it needs."""
    sub.add_parser("run", help="run the daemon: snapshot once, then stream the binlog into staging",
                   description="Run the daemon. With no stored position it takes a consistent snapshot of "
                   "the configured tables, then streams the binlog from exactly that point; with a stored "
                   "position it resumes there. SIGTERM or SIGINT stops it cleanly; a second one at once.")
    sub.add_parser("check", help="validate settings, connections, binlog settings, privileges, tables",
                   description="Check everything `run` needs, one line per check; exit 0 only when all pass.")


def _dev_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Seed data and the demo (cdc/dev/)."""
    ss = sub.add_parser("setup-source", help="create sales.sales_data if missing and load the seed CSV files",
                        description="The seed's step 1: create the source database and table if missing "
                        "and load OLD.csv (rowid,product_id,customer_id,price,quantity,timestamp) and NEW.csv "
                        "(the same without timestamp; the server stamps the load time). Idempotent; a malformed "
                        "line loads nothing of its file.")
    ss.add_argument("old", type=Path, metavar="OLD.csv")
    ss.add_argument("new", type=Path, metavar="NEW.csv")
    gen = sub.add_parser("generate-data", help="write seed-shaped OLD.csv and NEW.csv files of any size")
    gen.add_argument("old", type=Path, metavar="OLD.csv")
    gen.add_argument("new", type=Path, metavar="NEW.csv")
    gen.add_argument("--old-rows", type=int, default=10000, help="rows in OLD.csv (default 10000)")
    gen.add_argument("--new-rows", type=int, default=1000, help="rows in NEW.csv (default 1000)")
    gen.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    gen.add_argument("--products", type=int, default=500, help="distinct product ids (default 500)")
    demo = sub.add_parser("demo", help="run everything on private servers and watch changes arrive",
                          description="Start private MariaDB and PostgreSQL servers under --dir, load seed-shaped "
                          "data, run the daemon, make live inserts, updates and deletes and show them arriving "
                          "in staging. Ctrl-C stops everything.")
    demo.add_argument("--dir", type=Path, default=Path("softcart-demo"), help="where the servers live")
    demo.add_argument("--rows", type=int, default=20000, help="rows loaded before streaming starts")
    demo.add_argument("--rate", type=float, default=20.0, help="live source transactions per second")
    demo.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: on Ctrl-C)")
    demo.add_argument("--source", choices=["mariadb", "mysql"], default="mariadb",
                      help="the source server: MariaDB (the host's), or MySQL 9.7 (built once by deploy/mysql-root.sh"
                           " as root, ~30 s)")


def _state_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The star schema, the snapshot, the pipeline's state."""
    rb = sub.add_parser("rebuild", help="recompute the star schema from staging (or --check it)",
                        description="Recompute star.dimdate, star.factsales and the aggregates (star.sales_by_day, "
                                    "star.sales_by_month_product) from staging, "
                        "from scratch, in one transaction (safe while the daemon runs: it waits). With --check, "
                        "compare the incremental tables with a from-scratch computation without changing "
                        "anything; print the differences and exit 1 if there are any.")
    rb.add_argument("--check", action="store_true", help="compare only, change nothing")
    rs = sub.add_parser("resnapshot", help="copy tables again: online while the daemon runs, or a whole new snapshot",
                        description="With TABLE names: copy those tables again online, in chunks, while the "
                        "daemon streams on (MariaDB; the running daemon takes the request up within seconds, a "
                        "stopped one at its start; `status` shows the progress). Without: with the daemon "
                        "running, the same for every table; with it stopped (e.g. after the binlog was purged), "
                        "replace staging, the star schema and the stored position with a new consistent "
                        "snapshot, in one PostgreSQL transaction (readers see the old data until it commits); "
                        "the warehouse gets a full reload at the next flush.")
    rs.add_argument("tables", nargs="*", metavar="TABLE", help="a table of SOFTCART_SOURCE_TABLES")
    st = sub.add_parser("status", help="position, lag, last commit, dead letters, snapshot (from PostgreSQL)",
                        description="What the pipeline has done, read from staging, whether or not the daemon runs.")
    st.add_argument("--json", action="store_true", help="machine-readable output")


def _warehouse_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The warehouse and its batches."""
    sub.add_parser("flush", help="run one flush to the warehouse and exit",
                   description="Batch the star schema's pending changes into the spool and load every pending "
                   "batch into the warehouse (SOFTCART_WAREHOUSE_URL), in order. Exit 0 when all loaded, 1 when "
                   "a batch failed or the warehouse could not be reached (the batches stay pending).")
    wh = sub.add_parser("warehouse", help="warehouse administration")
    whsub = wh.add_subparsers(dest="warehouse_command", metavar="ACTION", required=True)
    whsub.add_parser("init", help="create the warehouse tables, keys, ledger and reporting views")
    bt = sub.add_parser("batches", help="list, show, retry or replay CSV batches",
                        description="Batches move pending -> loaded, or -> failed with the warehouse's error. "
                        "Fix the cause of a failure, then `batches retry ID`. `batches replay ID` loads a batch "
                        "again (the warehouse ledger skips it if it is there already).")
    btsub = bt.add_subparsers(dest="batches_command", metavar="ACTION", required=True)
    ls = btsub.add_parser("list", help="recent batches with their state")
    ls.add_argument("--state", choices=["pending", "loaded", "failed"])
    ls.add_argument("--limit", type=int, default=50)
    for action, text in (("show", "a batch's manifest and state"), ("retry", "put a failed batch back in line"),
                         ("replay", "load a batch again (idempotent)")):
        a = btsub.add_parser(action, help=text)
        a.add_argument("batch_id", type=int, metavar="ID")


def _reconcile_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The reconcile, and the settings."""
    rc = sub.add_parser(
        "reconcile", help="compare source, staging, star schema and warehouse, and repair drift",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare, inside the databases, each source table with staging, the star schema with a "
                    "rebuild from staging, and the warehouse with the star schema; repair what differs through "
                    "the daemon's own apply path. Safe while the daemon runs (it must be running, or caught up: "
                    "staging is compared only once it has applied what the source held).",
        epilog="exit codes: 0 everything agreed, 1 drift found (and repaired unless --dry-run), 2 could not "
               "complete.\nsettings: SOFTCART_RECONCILE_SEGMENT_ROWS, _FANOUT, _FETCH_ROWS, _WAIT_SECONDS, "
               "_TEXTFILE (node_exporter), _PUSHGATEWAY.")
    rc.add_argument("--dry-run", action="store_true", help="report differences, change nothing")
    rc.add_argument("--json", action="store_true", help="print the report as JSON")
    rc.add_argument("--level", action="append", choices=("source", "star", "warehouse"),
                    help="compare only this level (repeatable; default: all three)")
    se = sub.add_parser("settings", help="list every setting with its default (or --toml: the settings in force)",
                        description="List every setting with its default. With --toml, print the settings in "
                        "force (from the environment and --config) as a settings file: what differs from the "
                        "defaults as keys, the rest commented out; URLs without their password, no password.")
    se.add_argument("--toml", action="store_true", help="print the settings in force as a TOML settings file")


def _config_anywhere(parser: argparse.ArgumentParser) -> None:
    """--config after the command too (`softcart-sync run --config FILE`), at every level."""
    for action in parser._actions:  # argparse keeps its subparsers there
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument("--config", type=Path, metavar="FILE", default=argparse.SUPPRESS,
                                   help="TOML file with settings (also before the command)")
                _config_anywhere(child)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "settings" and not args.toml:
        print(settings_help())
        return EXIT_OK
    if args.command == "generate-data":
        from cdc.dev.seed import generate

        generate(args.old, args.new, args.old_rows, args.new_rows, args.seed, products=args.products)
        print(f"wrote {args.old_rows} rows to {args.old} and {args.new_rows} rows to {args.new}")
        return EXIT_OK
    if args.command == "demo":
        from cdc.dev.demo import run_demo

        configure("info", "console" if sys.stderr.isatty() else "json")
        return run_demo(args.dir, args.rows, args.rate, args.duration, args.source)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"softcart-sync: bad settings: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "settings":
        print(as_toml(settings), end="")
        return EXIT_OK
    configure(settings.log_level, settings.log_format, sys.stdout if args.command == "run" else None)
    try:
        return _COMMANDS[args.command](settings, args)
    except ConfigError as exc:
        print(f"softcart-sync: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SoftcartError as exc:
        print(f"softcart-sync: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.service import run_service

    structlog.get_logger("softcart").info("settings", **effective(settings))
    crash_point = os.environ.get("SOFTCART_TEST_CRASH_POINT", "")  # fault-injection tests only
    return run_service(settings, crash_point=crash_point)  # 0 stopped, 1 failed, 2 a wrong setting


def _check(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.ops.check import run_checks

    return EXIT_OK if run_checks(settings, print) else EXIT_FAILED


def _setup_source(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.dev.seed import MalformedLine, setup_source

    try:
        old, new = setup_source(settings, args.old, args.new)
    except MalformedLine as exc:
        print(f"softcart-sync: malformed input, nothing loaded from that file: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"loaded {args.old}: {old} new rows; {args.new}: {new} new rows "
          f"into {settings.source.database}.sales_data")
    return EXIT_OK


def _rebuild(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.ops.star_ops import check_star, rebuild_star

    if args.check:
        diffs = check_star(settings)
        for line in diffs:
            print(line)
        print("star schema equals a rebuild from scratch" if not diffs else f"{len(diffs)} difference(s) shown")
        return EXIT_OK if not diffs else EXIT_FAILED
    facts, invalid = rebuild_star(settings)
    print(f"rebuilt the star schema: {facts} facts; {invalid} sales rows make no fact (see softcart.dead_letter)")
    return EXIT_OK


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.ops.status import read_status, render, to_json

    status = read_status(settings)
    print(to_json(status) if args.json else render(status))
    return EXIT_OK


def _resnapshot(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.capture.online import request_copies
    from cdc.pipeline import Pipeline, daemon_running

    running = not args.tables and settings.online_copy != "off" and daemon_running(settings)
    tables = list(args.tables) or (list(settings.source_tables) if running else [])
    if tables:
        estimates = request_copies(settings, tables)
        for name in tables:
            print(f"{name}: online copy requested (~{estimates.get(name, 0)} rows); `softcart-sync status` shows"
                  " its progress")
        return EXIT_OK
    position = Pipeline(settings).resnapshot()
    print(f"new snapshot taken; streaming will resume at {position}")
    return EXIT_OK


def _flush(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.flushing import open_flusher

    crash_point = os.environ.get("SOFTCART_TEST_CRASH_POINT", "")  # fault-injection tests only
    flusher = open_flusher(settings, crash_point)
    try:
        result = flusher.flush()
    finally:
        flusher.close()
    made = f"created batch {result.created}" if result.created else "nothing new to batch"
    print(f"{made}; loaded {result.loaded}, already in the warehouse {result.skipped}, failed {result.failed}, "
          f"waiting behind a failed batch {result.waiting}")
    return EXIT_OK if not result.failed and not result.waiting else EXIT_FAILED


def _warehouse(settings: Settings, args: argparse.Namespace) -> int:
    from loader.backends import open_warehouse

    warehouse = open_warehouse(settings.warehouse_config)
    try:
        warehouse.init()
    finally:
        warehouse.close()
    print(f"warehouse {settings.warehouse.display if settings.warehouse else ''}: tables, ledger and views ready")
    return EXIT_OK


def _batches(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.ops.batches import run_batches

    return run_batches(settings, args)


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.ops.reconcile import LEVELS, Reconciler
    from cdc.ops.reconcile_report import export_metrics

    levels = tuple(lv for lv in LEVELS if lv in args.level) if args.level else LEVELS
    report = Reconciler(settings, dry_run=args.dry_run, levels=levels).run()
    print(report.as_json() if args.json else report.text())
    for problem in export_metrics(settings, report):
        print(f"softcart-sync: {problem}", file=sys.stderr)
    return report.exit_code


_COMMANDS = {
    "run": _run, "check": _check, "setup-source": _setup_source, "rebuild": _rebuild, "status": _status,
    "flush": _flush, "warehouse": _warehouse, "batches": _batches, "resnapshot": _resnapshot,
    "reconcile": _reconcile,
}

if __name__ == "__main__":
    sys.exit(main())

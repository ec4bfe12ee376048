"""`softcart-sync demo`: the whole stream on private servers, with live changes, in one command."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

import psycopg
import pymysql

from cdc.dev.localservers import MariaDBServer, MySQLServer, PostgresServer, free_port
from cdc.dev.seed import generate, setup_source
from cdc.flushing import FlushProgress, flush_loop
from cdc.http import HealthServer
from cdc.pipeline import Pipeline
from cdc.service import readiness
from cdc.settings import Settings, load_settings
from loader.backends import open_warehouse
from loader.pg import pg_connect

CATCH_UP_SECONDS = 60


def _traversable_by_others(path: Path) -> bool:
    return all(not (p.exists() and not p.stat().st_mode & stat.S_IXOTH) for p in [path, *path.parents])


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(base: Path, rows: int, rate: float, duration: float, source: str = "mariadb") -> int:
    base = base.resolve()
    base.mkdir(parents=True, exist_ok=True)
    pg_base = base / "postgres"
    if os.geteuid() == 0 and not _traversable_by_others(base):
        # PostgreSQL runs as 'postgres', which must be able to reach its folder.
        pg_base = Path(tempfile.mkdtemp(prefix="softcart-demo-pg-"))
        pg_base.chmod(0o755)
    maria, kind = _source_server(base, source)
    pg = PostgresServer(pg_base)
    stop = threading.Event()  # everything
    changes_stop = threading.Event()  # the change generator and the watch: then staging catches up

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGTERM or changes_stop.is_set():  # a second Ctrl-C, or a kill: no waiting
            stop.set()
        changes_stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        _say(f"1. Starting a private {kind} (binlog on, ROW format) in {maria.base}")
        maria.start()
        _say(f"   listening on 127.0.0.1:{maria.port}")
        _say(f"2. Starting a private PostgreSQL (the staging warehouse) in {pg.base}")
        pg.start()
        _say(f"   listening on 127.0.0.1:{pg.port}")
        settings = _demo_settings(maria, pg, base)
        _say_settings(settings, maria.url(), pg.url("softcart"), pg.url("warehouse"))
        old, new = base / "sales_old.csv", base / "sales_new.csv"
        generate(old, new, rows, max(1, rows // 10))
        _say(f"3. Loading the SoftCart source: {rows} historical sales ({old.name}) and {max(1, rows // 10)} "
             f"new ones ({new.name}) into sales.sales_data, as the old ETL's first step did")
        setup_source(settings, old, new)
        _say("4. Starting the daemon: it snapshots sales_data into staging.sales_data and builds the star schema"
             " (star.factsales, star.dimdate, star.sales_by_day, star.sales_by_month_product), then tails the"
             " binlog; every 5 s it flushes"
             " the star schema's changes as CSV batches (" + str(base / "spool") + ") into the warehouse"
             " (a PostgreSQL database standing in for DB2)")
        pipeline, started, errors = _start_daemon(settings, stop)
        _say(f"5. Making live changes in {kind} (~{rate:g} transactions/s: inserts, updates, deletes)."
             " Watch staging follow. Ctrl-C stops everything.\n")
        changes_failed: list[BaseException] = []
        caught_up = _live(maria.port, settings, pipeline, started, rate, duration, (changes_stop, stop), changes_failed)
        if errors or changes_failed:
            _say(f"the daemon failed: {errors[0]}" if errors else f"the change generator failed: {changes_failed[0]}")
            return 1
        if not caught_up and not stop.is_set():
            _say(f"staging did not reach the source's row count within {CATCH_UP_SECONDS} s of the last"
                 " change: see `softcart-sync status` and the daemon's log above")
            return 1
        _say("\nStopped. The servers' data stays in " + str(base) + " (delete it to start afresh).")
        return 0
    finally:
        stop.set()
        pg.stop()
        maria.stop()
        if pg_base != base / "postgres":
            shutil.rmtree(pg_base, ignore_errors=True)


def _live(port: int, settings: Settings, pipeline: Pipeline, started: threading.Event, rate: float,
          duration: float, stops: tuple[threading.Event, threading.Event], failed: list[BaseException]) -> bool:
    """Live changes and a line every two seconds until the duration is over or Ctrl-C; then the
    changes stop and staging is waited for (True: it met the source's row count)."""
    changes_stop, stop = stops
    counts = {"insert": 0, "update": 0, "delete": 0}
    generator = threading.Thread(target=_changes, args=(port, rate, changes_stop, stop, counts, failed),
                                 name="changes", daemon=True)
    generator.start()
    _watch(port, settings, pipeline, counts, changes_stop, stop, duration, started)
    changes_stop.set()
    generator.join(timeout=30)
    return not stop.is_set() and _catch_up(port, settings, CATCH_UP_SECONDS, stop)


def _source_server(base: Path, source: str) -> tuple[MariaDBServer | MySQLServer, str]:
    """The demo's source server and its kind's name. MySQL's data lives in the MySQL root, named
    after the demo's folder: kept across runs as MariaDB's is in the folder."""
    if source == "mysql":
        return MySQLServer(base / "mysql", name="demo-" + hashlib.sha256(str(base).encode()).hexdigest()[:12]), "MySQL"
    return MariaDBServer(base / "mariadb"), "MariaDB"


def _start_daemon(settings: Settings, stop: threading.Event) -> tuple[Pipeline, threading.Event,
                                                                     list[BaseException]]:
    """The daemon's two threads in this process: the pipeline (its error, if any, in the list) and
    the flusher (it starts once ``started`` is set)."""
    pipeline = Pipeline(settings)
    errors: list[BaseException] = []

    def daemon() -> None:
        try:
            pipeline.run(stop)
        except BaseException as exc:  # noqa: BLE001 - shown by the demo
            errors.append(exc)
            stop.set()

    threading.Thread(target=daemon, name="daemon", daemon=True).start()
    started = threading.Event()
    progress = FlushProgress()
    threading.Thread(target=flush_loop, args=(settings, stop, started, pipeline.metrics, "", progress),
                     name="flusher", daemon=True).start()
    host, port = settings.metrics_address  # the daemon's own endpoints, for status and curl
    http = HealthServer(host, port, pipeline.metrics.registry,
                        lambda: readiness(pipeline.state, time.time(), settings, progress))
    http.start()

    def serve_until_stopped() -> None:
        stop.wait()
        http.stop()

    threading.Thread(target=serve_until_stopped, name="http-stop", daemon=True).start()
    return pipeline, started, errors


def _demo_settings(maria: MariaDBServer | MySQLServer, pg: PostgresServer, base: Path) -> Settings:
    """The demo's settings: staging and a warehouse standing in for DB2, two databases of the
    private PostgreSQL (made, and the warehouse's tables created, if missing)."""
    admin = pg_connect(load_settings(source_url=maria.url(), staging_url=pg.url()).staging_config, autocommit=True)
    for db in ("softcart", "warehouse"):
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
            admin.execute(f"CREATE DATABASE {db}")
    admin.close()
    settings = load_settings(source_url=maria.url(), staging_url=pg.url("softcart"),
                             warehouse_url=pg.url("warehouse"), spool_dir=base / "spool",
                             flush_interval_seconds=5, log_level="warning", metrics_listen=f"127.0.0.1:{free_port()}")
    warehouse = open_warehouse(settings.warehouse_config)
    warehouse.init()
    warehouse.close()
    return settings


def _say_settings(settings: Settings, source: str, staging: str, warehouse: str) -> None:
    """The settings that reach the demo's servers, once: `status`, `check`, `reconcile` and
    `resnapshot` work against it from a second terminal with them."""
    _say("   From a second terminal, after these lines (the demo's own servers and daemon):")
    for name, value in (("SOURCE_URL", source), ("STAGING_URL", staging),
                        ("WAREHOUSE_URL", warehouse), ("SPOOL_DIR", str(settings.spool_dir)),
                        ("METRICS_LISTEN", settings.metrics_listen)):
        _say(f"     export SOFTCART_{name}={value}")
    _say("   try: softcart-sync status | softcart-sync check | softcart-sync reconcile --dry-run"
         f"   (metrics: http://{settings.metrics_listen}/metrics)")


def _changes(port: int, rate: float, changes_stop: threading.Event, stop: threading.Event,
             counts: dict[str, int], failed: list[BaseException]) -> None:
    """Live inserts, updates and deletes until ``changes_stop``; a failure stops the demo (in
    ``failed``)."""
    try:
        _make_changes(port, rate, changes_stop, counts)
    except BaseException as exc:  # noqa: BLE001 - shown by the demo, which stops
        failed.append(exc)
        stop.set()


def _make_changes(port: int, rate: float, stop: threading.Event, counts: dict[str, int]) -> None:
    rnd = random.Random()
    conn = pymysql.connect(host="127.0.0.1", port=port, user="root", database="sales", autocommit=True)
    with conn.cursor() as cur:  # a second run carries on after the rows the first one made
        cur.execute("SELECT COALESCE(MAX(rowid), 0) + 1 FROM sales_data")
        next_id = int((cur.fetchone() or (1,))[0])
    while not stop.wait(1.0 / rate):
        op = rnd.choices(["insert", "update", "delete"], [6, 3, 1])[0]
        with conn.cursor() as cur:
            if op == "insert":
                cur.execute("INSERT INTO sales_data (rowid, product_id, customer_id, price, quantity)"
                            " VALUES (%s, %s, %s, %s, %s)",
                            (next_id, rnd.randint(1, 500), rnd.randint(1, 10000), rnd.randint(100, 50000) / 100,
                             rnd.randint(1, 5)))
                next_id += 1
            elif op == "update":
                cur.execute("UPDATE sales_data SET quantity = quantity + 1 WHERE rowid = %s",
                            (rnd.randint(1, next_id),))
            else:
                cur.execute("DELETE FROM sales_data WHERE rowid = %s", (rnd.randint(1, next_id),))
        counts[op] += 1
    conn.close()


def _watch(port: int, settings: object, pipeline: Pipeline, counts: dict[str, int],
           changes_stop: threading.Event, stop: threading.Event, duration: float, started: threading.Event) -> None:
    """A line every two seconds until the duration is over, Ctrl-C, or the demo stops."""
    assert isinstance(settings, Settings)
    began = time.monotonic()
    header = (f"{'time':>6} {'source rows':>12} {'staging rows':>13} {'ins/upd/del made':>17}  {'lag':>6}"
              f"  {'star facts':>10}  {'warehouse facts':>15}  position")
    _say(header)
    while not (stop.is_set() or changes_stop.wait(2.0)):
        if duration and time.monotonic() - began >= duration:
            break
        source_rows = _source_rows(port)
        st = pipeline.state
        if st.started:
            started.set()
        staging_rows, facts, loaded = _count(settings, "softcart", "staging.sales_data"), \
            _count(settings, "softcart", "star.factsales"), _count(settings, "warehouse", "factsales")
        lag = f"{st.lag_seconds(time.time(), settings.heartbeat_seconds):.2f}s" if st.streaming else "-"
        made = f"{counts['insert']}/{counts['update']}/{counts['delete']}"
        _say(f"{time.monotonic() - began:6.0f} {source_rows:>12} {staging_rows:>13} {made:>17}  {lag:>6}  "
             f"{facts:>10}  {loaded:>15}  {st.position or 'snapshotting...'}")


def _catch_up(port: int, settings: Settings, seconds: float, stop: threading.Event) -> bool:
    """After the last change: wait (up to ``seconds``) for staging's row count to meet the
    source's, and say so. The source no longer changes, so equal counts are a fact, not a moment."""
    source_rows = _source_rows(port)
    deadline = time.monotonic() + seconds
    while True:
        staging_rows = _count(settings, "softcart", "staging.sales_data")
        if staging_rows == str(source_rows):
            _say(f"\nChanges stopped; staging caught up: source {source_rows} rows = staging {staging_rows} rows.")
            return True
        if stop.wait(0.5) or time.monotonic() > deadline:
            return False


def _source_rows(port: int) -> int:
    src = pymysql.connect(host="127.0.0.1", port=port, user="root", database="sales", autocommit=True)
    try:
        with src.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM sales_data")
            row = cur.fetchone()
    finally:
        src.close()
    return int(row[0]) if row else 0


def _count(settings: Settings, database: str, table: str) -> str:
    """Rows in ``table`` of the demo's PostgreSQL ``database``, or '-' before it exists."""
    url = settings.staging.display.rsplit("/", 1)[0] + "/" + database
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    except psycopg.Error:
        return "-"
    return str(row[0]) if row else "-"

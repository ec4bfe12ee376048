"""Every stage of softcart-sync on this machine, next to the seed's batch ETL on the same data.

Private MariaDB and PostgreSQL; data from the project's generator (`generate-data` +
`setup-source`); the daemon as a subprocess (`python -m cdc run`), as in production. Each run
starts from fresh servers; prints a markdown table (median of the runs, and their spread) and a
JSON line (every run's figures), and writes a PNG chart of the lag during the freshness stage
(needs matplotlib, a dev dependency).

    .venv/bin/python -m tests.bench.bench_stages [--rows 1000000] [--changes 500000] [--freshness 60]
        [--rate 5000 --rate 20000] [--runs 3] [--chart lag.png] [--shape softcart|one-date] [--peer]

The freshness stage runs at each ``--rate`` in turn (default 5,000 and 20,000 changes/s), one chart
each (``lag-5000.png``...).

The data is shaped like SoftCart's by default (``--shape softcart``): sales over two years
(about 1,370 a day for 1,000,000 rows) of 1,000 products; the changes' inserts fall on days
across those years and their updates keep each sale's day, so the star schema's aggregates are
touched all over. ``--shape one-date``: the earlier workload, 500 products, every insert and
update stamped now (the aggregates touched are one day's).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pymysql
import pymysql.cursors

from cdc.dev.localservers import MariaDBServer, PostgresServer
from loader.star import StarSchema
from transform.schema import Column, Table
from transform.star import DayZone

ROOT = Path(__file__).resolve().parents[2]
SALES = Table("sales_data", (
    Column("rowid", "int", "int(11)", False), Column("product_id", "int", "int(11)", False),
    Column("customer_id", "int", "int(11)", False), Column("price", "decimal", "decimal(12,2)", False, 12, 2),
    Column("quantity", "int", "int(11)", False), Column("timestamp", "timestamp", "timestamp", False, fsp=0),
), ("rowid",))


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdc", *args], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=3600, check=False)


class Daemon:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "cdc", "run"], env={**os.environ, **self.env},
                                         cwd=ROOT, stdout=out, stderr=out)

    def peak_rss_mb(self) -> float:
        """Peak RSS of the daemon plus its binlog reader process (the sum of both peaks)."""
        assert self.proc is not None
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        total = 0.0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            total += sum(int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
        return total

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(120)


@dataclass(frozen=True)
class Shape:
    """What the generated sales look like (see the module's text)."""

    name: str
    products: int
    spread: bool  # inserts and updates over two years' days (else: stamped now)

    @staticmethod
    def of(name: str) -> Shape:
        return SOFTCART if name == "softcart" else ONE_DATE


SOFTCART, ONE_DATE = Shape("softcart", 1000, True), Shape("one-date", 500, False)
FIRST_DAY, DAYS = dt.datetime(2020, 1, 1), 2 * 365


def load_source(maria: MariaDBServer, pg: PostgresServer, base: Path, rows: int,
                extra: dict[str, str] | None = None, shape: Shape = SOFTCART) -> dict[str, str]:
    """The daemon's environment (databases staging and warehouse must exist), with ``rows`` rows of
    the project's generator in the source and the warehouse's tables created."""
    env = {"SOFTCART_SOURCE_URL": maria.url(database="sales"), "SOFTCART_STAGING_URL": pg.url("staging"),
           "SOFTCART_WAREHOUSE_URL": pg.url("warehouse"), "SOFTCART_SPOOL_DIR": str(base / "spool"),
           "SOFTCART_FLUSH_INTERVAL_SECONDS": "5", "SOFTCART_METRICS_LISTEN": "127.0.0.1:0",
           "SOFTCART_LOG_LEVEL": "warning", **(extra or {})}
    old, new = base / "OLD.csv", base / "NEW.csv"
    assert cli(env, "generate-data", str(old), str(new), "--old-rows", str(rows), "--new-rows", "0",
               "--products", str(shape.products)).returncode == 0
    loaded = cli(env, "setup-source", str(old), str(new))
    assert loaded.returncode == 0, loaded.stderr
    assert cli(env, "warehouse", "init").returncode == 0
    return env


def wait_flushed(stg: psycopg.Connection[Any], timeout: float = 3600) -> None:
    """Until the outbox is empty and every batch is in the warehouse (polled every 100 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = stg.execute("SELECT (SELECT count(*) FROM softcart.outbox)"
                          " + (SELECT count(*) FROM softcart.batch WHERE state <> 'loaded')").fetchone()
        if row is not None and row[0] == 0:
            return
        time.sleep(0.1)  # polling the daemon's flusher, with the deadline above
    raise TimeoutError("the warehouse was not loaded")


def snapshot_phases(log: Path, rows: int) -> dict[str, float]:
    """From the daemon's JSON log: the staging copy's rate (snapshot start to its last table) and
    the seconds the star schema's build took after it."""
    at: dict[str, float] = {}
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") in ("snapshot_started", "snapshot_table_done", "snapshot_star_schema_built"):
            at[event["event"]] = dt.datetime.fromisoformat(event["timestamp"]).timestamp()
    if len(at) < 3:
        return {}
    return {"snapshot_staging_copy_rows_per_s": rows / (at["snapshot_table_done"] - at["snapshot_started"]),
            "snapshot_star_build_seconds": at["snapshot_star_schema_built"] - at["snapshot_table_done"]}


def source_end(src: pymysql.connections.Connection) -> tuple[str, int]:
    with src.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
    return str(row[0]), int(row[1])


def wait_caught_up(src: pymysql.connections.Connection, stg: psycopg.Connection[Any], timeout: float = 3600) -> float:
    """Seconds until staging's saved position reaches the source's end (polled every 50 ms)."""
    started = time.monotonic()
    target = source_end(src)
    while time.monotonic() - started < timeout:
        try:
            row = stg.execute("SELECT binlog_file, binlog_pos FROM softcart.position").fetchone()
        except psycopg.errors.UndefinedTable:
            row = None
        if row is not None and (row[0], row[1]) >= target:
            return time.monotonic() - started
        time.sleep(0.05)  # polling the daemon's progress, with the deadline above
    raise TimeoutError("the daemon did not catch up")


def write_changes(src: pymysql.connections.Connection, n: int, first_new: int, max_id: int,
                  seed: int, shape: Shape = SOFTCART) -> dict[str, int]:
    """n row changes, 70% inserts, 20% updates, 10% deletes, in transactions of 1 to 200 changes."""
    rnd = random.Random(seed)
    minutes = DAYS * 24 * 60
    counts = {"insert": 0, "update": 0, "delete": 0}
    next_id = first_new
    done = 0
    with src.cursor() as cur:
        while done < n:
            size = min(n - done, rnd.choice((1, 5, 20, 50, 200)))
            inserts, updates, deletes = [], [], []
            for _ in range(size):
                p = rnd.random()
                if p < 0.7:
                    when = FIRST_DAY + dt.timedelta(minutes=rnd.randrange(minutes)) if shape.spread else None
                    inserts.append((next_id, rnd.randint(1, shape.products), rnd.randint(1, 10000),
                                    rnd.randint(100, 50000) / 100, rnd.randint(1, 5), when))
                    next_id += 1
                elif p < 0.9:
                    updates.append(rnd.randint(1, max_id))
                else:
                    deletes.append(rnd.randint(1, max_id))
            cur.execute("BEGIN")
            if inserts:
                cur.executemany("INSERT INTO sales_data (rowid, product_id, customer_id, price, quantity, timestamp)"
                                " VALUES (%s, %s, %s, %s, %s, COALESCE(%s, NOW()))", inserts)
            if updates:  # SoftCart's shape keeps each sale's day (the column's ON UPDATE would make it now)
                keep = ", timestamp = timestamp" if shape.spread else ""
                cur.execute(f"UPDATE sales_data SET quantity = quantity + 1{keep} WHERE rowid IN %s", (updates,))
            if deletes:
                cur.execute("DELETE FROM sales_data WHERE rowid IN %s", (deletes,))
            cur.execute("COMMIT")
            counts["insert"] += len(inserts)
            counts["update"] += len(updates)
            counts["delete"] += len(deletes)
            done += size
    return counts


def freshness(src_url: dict[str, Any], stg: psycopg.Connection[Any], wh: psycopg.Connection[Any], rate: int,
              seconds: float, first_id: int) -> dict[str, list[tuple[float, float]]]:
    """Steady inserts at ``rate`` rows/s; for each, (seconds since the first commit, seconds from
    its source commit to visible) in staging, in the star schema and in the warehouse."""
    commits: dict[int, float] = {}
    seen: dict[str, dict[int, float]] = {"staging": {}, "star": {}, "warehouse": {}}
    stop = threading.Event()

    def writer() -> None:
        conn = pymysql.connect(**src_url, autocommit=True)
        next_id, per_txn = first_id, max(1, rate // 100)
        started = time.monotonic()
        with conn.cursor() as cur:
            while not stop.is_set() and time.monotonic() - started < seconds:
                rows = [(i, 1, 1, 1.0, 1) for i in range(next_id, next_id + per_txn)]
                cur.executemany("INSERT INTO sales_data (rowid, product_id, customer_id, price, quantity)"
                                " VALUES (%s, %s, %s, %s, %s)", rows)
                now = time.time()
                for r in rows:
                    commits[r[0]] = now
                next_id += per_txn
                lag = next_id - first_id - rate * (time.monotonic() - started)
                if lag > 0:
                    time.sleep(lag / rate)  # pacing the load, not a synchronisation
        conn.close()

    def watcher() -> None:
        queries = {"staging": (stg, "SELECT max(rowid) FROM staging.sales_data"),
                   "star": (stg, "SELECT max(rowid) FROM star.factsales"),
                   "warehouse": (wh, "SELECT max(rowid) FROM factsales")}
        last = {k: first_id - 1 for k in queries}
        while not stop.is_set():
            for name, (conn, q) in queries.items():
                top = conn.execute(q).fetchone()[0] or 0  # type: ignore[index]
                now = time.time()
                for i in range(last[name] + 1, top + 1):
                    seen[name][i] = now
                last[name] = max(last[name], top)
            time.sleep(0.01)  # sampling visibility every 10 ms

    w = threading.Thread(target=writer)
    v = threading.Thread(target=watcher, daemon=True)
    w.start()
    v.start()
    w.join()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(seen["warehouse"]) < len(commits):
        time.sleep(0.1)  # waiting for the last flush, with a deadline
    stop.set()
    t0 = min(commits.values(), default=0.0)
    return {k: [(commits[i] - t0, seen[k][i] - commits[i]) for i in commits if i in seen[k]] for k in seen}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def baseline(src: pymysql.connections.Connection, pg_url: str, since: int) -> tuple[float, int]:
    """The seed's batch: rows with rowid > since, COPY into PostgreSQL, the star rebuilt from scratch."""
    started = time.monotonic()
    n = 0
    with psycopg.connect(pg_url, autocommit=True) as pg:
        pg.execute("CREATE SCHEMA IF NOT EXISTS staging")
        pg.execute("CREATE TABLE IF NOT EXISTS staging.sales_data (rowid integer PRIMARY KEY, product_id integer,"
                   " customer_id integer, price numeric(12,2), quantity integer, timestamp timestamptz)")
        with src.cursor(pymysql.cursors.SSCursor) as cur, pg.cursor() as pcur, \
                pcur.copy("COPY staging.sales_data FROM STDIN") as copy:
            cur.execute("SELECT rowid, product_id, customer_id, price, quantity, timestamp FROM sales_data"
                        " WHERE rowid > %s", (since,))
            for row in cur:
                copy.write_row(row)
                n += 1
        star = StarSchema(SALES, DayZone(ZoneInfo("UTC")))
        pg.execute("CREATE SCHEMA IF NOT EXISTS softcart")
        pg.execute("CREATE TABLE IF NOT EXISTS softcart.outbox (id bigserial PRIMARY KEY, tbl text NOT NULL,"
                   " k1 bigint, k2 bigint)")
        with pg.transaction():
            star.rebuild(pg)
    return time.monotonic() - started, n


def one_run(args: argparse.Namespace) -> tuple[dict[str, Any], dict[int, dict[str, list[tuple[float, float]]]]]:
    """Every stage once, on fresh servers: (figures, each rate's freshness lag samples)."""
    base = Path(tempfile.mkdtemp(prefix="softcart-bench-"))
    base.chmod(0o755)
    maria, pg = MariaDBServer(base / "mariadb"), PostgresServer(base / "pg")
    maria.start()
    pg.start()
    figures: dict[str, Any] = {}
    daemon: Daemon | None = None
    try:
        with psycopg.connect(pg.url(), autocommit=True) as c:
            c.execute("CREATE DATABASE staging")
            c.execute("CREATE DATABASE warehouse")
            c.execute("CREATE DATABASE baseline")
        shape = Shape.of(args.shape)
        env = load_source(maria, pg, base, args.rows, shape=shape)
        src = pymysql.connect(host="127.0.0.1", port=maria.port, user="root", database="sales", autocommit=True)
        stg = psycopg.connect(pg.url("staging"), autocommit=True)
        wh = psycopg.connect(pg.url("warehouse"), autocommit=True)

        # 1. Initial snapshot.
        daemon = Daemon({**env, "SOFTCART_LOG_LEVEL": "info", "SOFTCART_LOG_FORMAT": "json"}, base / "daemon.log")
        daemon.start()
        seconds = wait_caught_up(src, stg)
        figures["snapshot_rows_per_s"] = args.rows / seconds
        figures.update(snapshot_phases(base / "daemon.log", args.rows))
        wait_flushed(stg)  # the snapshot's full reload into the warehouse: not part of the catch-up
        daemon.stop()
        daemon = Daemon(env, base / "daemon.log")  # quieter from here on

        # 2. Catch-up: changes written while the daemon is stopped.
        counts = write_changes(src, args.changes, args.rows + 1, args.rows, seed=3, shape=shape)
        daemon.start()
        seconds = wait_caught_up(src, stg)
        figures["catch_up_changes_per_s"] = args.changes / seconds
        figures["catch_up_peak_rss_mb"] = daemon.peak_rss_mb()
        figures["changes"] = counts

        # 3. Freshness at each steady rate.
        top = src.cursor()
        lat: dict[int, dict[str, list[tuple[float, float]]]] = {}
        for rate in args.rates:
            top.execute("SELECT max(rowid) FROM sales_data")
            first = int(top.fetchone()[0]) + 1  # type: ignore[index]
            lat[rate] = freshness({"host": "127.0.0.1", "port": maria.port, "user": "root", "database": "sales"},
                                  stg, wh, rate, args.freshness, first)
            for stage, samples in lat[rate].items():
                values = [lag for _, lag in samples]
                for q in (50, 95, 99):
                    figures[f"freshness_{rate}_{stage}_p{q}_s"] = pct(values, q)
                figures[f"freshness_{rate}_{stage}_samples"] = len(values)

        # 5. Reconcile of the (identical) copies, next to count(*).
        started = time.monotonic()
        rc = cli(env, "reconcile", "--level", "source", "--json")
        figures["reconcile_seconds"] = time.monotonic() - started
        figures["reconcile_exit"] = rc.returncode
        started = time.monotonic()
        top.execute("SELECT count(*) FROM sales_data")
        stg.execute("SELECT count(*) FROM staging.sales_data").fetchone()
        figures["count_seconds"] = time.monotonic() - started

        # 6. A single 1,000,000-row transaction.
        top.execute("SELECT max(rowid) FROM sales_data")
        base_id = int(top.fetchone()[0])  # type: ignore[index]
        top.execute("INSERT INTO sales_data (rowid, product_id, customer_id, price, quantity)"
                    f" SELECT {base_id} + seq, seq % 500, seq % 9973, 1.00, 1 FROM seq_1_to_1000000")
        wait_caught_up(src, stg)
        figures["big_transaction_peak_rss_mb"] = daemon.peak_rss_mb()
        daemon.stop()

        # 4. Warehouse flush: with the daemon stopped, a rebuild asks for a full reload, and one
        # `softcart-sync flush` batches every star row into the spool and loads it.
        assert cli(env, "flush").returncode == 0  # what the stream left pending, first
        assert cli(env, "rebuild").returncode == 0
        started = time.monotonic()
        flushed = cli(env, "flush")
        seconds = time.monotonic() - started
        assert flushed.returncode == 0, flushed.stderr
        rows = stg.execute("SELECT rows FROM softcart.batch ORDER BY id DESC LIMIT 1").fetchone()[0]  # type: ignore[index]
        figures["warehouse_flush_rows_per_s"] = sum(rows.values()) / seconds
        figures["warehouse_flush_rows"] = rows

        # 7. The seed's batch ETL on the same data (a fresh database): initial load, then what it
        # sees of the catch-up changes (inserts only; updates and deletes are invisible to it).
        seconds, n = baseline(src, pg.url("baseline"), 0)
        figures["baseline_rows_per_s"] = n / seconds
        figures["baseline_run_seconds"] = seconds  # its freshness: its schedule's interval plus this
        figures["baseline_missed_changes"] = counts["update"] + counts["delete"]
        src.close()
        stg.close()
        wh.close()
    finally:
        if daemon is not None:
            daemon.stop()
        maria.stop()
        pg.stop()
    return figures, lat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--changes", type=int, default=500_000)
    p.add_argument("--freshness", type=float, default=60.0, help="seconds of steady load")
    p.add_argument("--rate", type=int, action="append", dest="rates",
                   help="changes/s of a freshness stage (repeat for several; default 5000 and 20000)")
    p.add_argument("--shape", choices=["softcart", "one-date"], default="softcart",
                   help="the generated sales' shape (see above)")
    p.add_argument("--runs", type=int, default=3, help="runs on fresh servers; the table shows their median")
    p.add_argument("--chart", type=Path, default=Path("bench-lag.png"),
                   help="PNG of the lag during freshness (-<rate> added to its name)")
    p.add_argument("--peer", action="store_true",
                   help="then the peer benchmark (tests.bench.bench_peer: pg_chameleon 2.0.21 and softcart-sync on"
                        " the same servers and bursts; needs root and PyPI) with as many runs, its table after ours")
    args = p.parse_args()
    args.rates = args.rates or [5000, 20000]
    runs: list[dict[str, Any]] = []
    lag: dict[int, dict[str, list[tuple[float, float]]]] = {}
    for i in range(args.runs):
        figures, lag = one_run(args)
        runs.append(figures)
        print(f"run {i + 1}/{args.runs}: {json.dumps(figures, default=str)}", file=sys.stderr, flush=True)
    print(summary_table(runs))
    print(json.dumps({"runs": runs, "median": {k: v[0] for k, v in spread(runs).items()}}, default=str))
    for rate, samples in lag.items():
        lag_chart(samples, args.chart.with_stem(f"{args.chart.stem}-{rate}"), rate)
    if args.peer:
        subprocess.run([sys.executable, "-m", "tests.bench.bench_peer", "--runs", str(args.runs)], cwd=ROOT, check=True)


def spread(runs: list[dict[str, Any]]) -> dict[str, tuple[float, float, float]]:
    """Per numeric figure: (median, lowest, highest) over the runs."""
    out = {}
    for key, first in runs[0].items():
        if isinstance(first, int | float) and not isinstance(first, bool):
            values = [float(r[key]) for r in runs if isinstance(r.get(key), int | float)]
            out[key] = (statistics.median(values), min(values), max(values))
    return out


def summary_table(runs: list[dict[str, Any]]) -> str:
    lines = [f"| figure | median of {len(runs)} | spread (lowest - highest) |", "|---|---|---|"]
    for key, (median, low, high) in spread(runs).items():
        lines.append(f"| {key} | {median:,.3f} | {low:,.3f} - {high:,.3f} |")
    for key, value in runs[-1].items():
        if isinstance(value, dict):
            lines.append(f"| {key} (last run) | {value} | |")
    return "\n".join(lines)


def lag_chart(lag: dict[str, list[tuple[float, float]]], path: Path, rate: int) -> None:
    """Lag of each inserted row over the run, per stage, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no lag chart: matplotlib is not installed (pip install -e '.[dev]')", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(10, 5))
    for stage, samples in lag.items():
        if samples:
            xs, ys = zip(*sorted(samples), strict=True)
            ax.plot(xs, ys, ".", markersize=1.5, label=f"source commit -> {stage}")
    ax.set_xlabel("seconds into the steady load")
    ax.set_ylabel("lag (s)")
    ax.set_yscale("log")
    ax.set_title(f"softcart-sync freshness at {rate:,} row changes/s (last run)")
    ax.legend(markerscale=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"lag chart: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""An online copy under load (#18): a large table added to the settings while changes stream into
it and into sales_data; prints how fast it copied, the freshness of the other table meanwhile,
the daemon's peak memory, and checks afterwards that source = staging = star rebuild = warehouse.

Private MariaDB and PostgreSQL, the daemon as a subprocess, as in production.

    .venv/bin/python -m tests.bench.bench_online [--rows 1000000] [--rate 2000] [--chunk 2000]
                                                 [--method auto|signal]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pymysql

from cdc.dev.localservers import MariaDBServer, PostgresServer
from tests.bench.bench_stages import Daemon, cli, load_source, pct, wait_caught_up, wait_flushed


def copy_done(stg: psycopg.Connection[Any]) -> bool:
    row = stg.execute("SELECT finished_at IS NOT NULL FROM softcart.online_copy WHERE source_table = 'big'"
                      ).fetchone()
    return bool(row and row[0])


def load(src_kw: dict[str, Any], rate: int, first_id: int, big_rows: int, stop: threading.Event,
         commits: dict[int, float], counts: dict[str, int]) -> None:
    """``rate`` changes/s: half inserts into sales_data (their commit times kept, for freshness),
    half updates, deletes and inserts anywhere in ``big``."""
    conn = pymysql.connect(**src_kw, autocommit=True)
    rnd, next_id, started, n = random.Random(7), first_id, time.monotonic(), 0
    with conn.cursor() as cur:
        while not stop.is_set():
            if n % 2 == 0:
                cur.execute("INSERT INTO sales_data (rowid, product_id, customer_id, price, quantity)"
                            " VALUES (%s, 1, 1, 1.00, 1)", (next_id,))
                commits[next_id] = time.time()
                next_id += 1
            else:
                k, kind = rnd.randrange(1, big_rows * 2), rnd.randrange(3)
                cur.execute(("UPDATE big SET n = n + 1 WHERE id = %s", "DELETE FROM big WHERE id = %s",
                             "INSERT IGNORE INTO big VALUES (%s, 0, 'late')")[kind], (k,))
            n += 1
            counts["changes"] = n
            ahead = n - rate * (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead / rate)  # pacing the load, not a synchronisation
    conn.close()


def watch(stg_url: str, first_id: int, stop: threading.Event, seen: dict[str, dict[int, float]]) -> None:
    """When each inserted sale became visible in staging and in the star schema (sampled every 10 ms)."""
    with psycopg.connect(stg_url, autocommit=True) as stg:
        last = {"staging": first_id - 1, "star": first_id - 1}
        queries = {"staging": "SELECT max(rowid) FROM staging.sales_data",
                   "star": "SELECT max(rowid) FROM star.factsales"}
        while not stop.is_set():
            for name, q in queries.items():
                top = (stg.execute(q).fetchone() or (0,))[0] or 0
                now = time.time()
                for i in range(last[name] + 1, top + 1):
                    seen[name][i] = now
                last[name] = max(last[name], top)
            time.sleep(0.01)  # sampling visibility every 10 ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the table added")
    ap.add_argument("--sales", type=int, default=100_000, help="rows of sales_data before")
    ap.add_argument("--rate", type=int, default=2000, help="changes/s during the copy (half to each table)")
    ap.add_argument("--chunk", type=int, default=2000, help="SOFTCART_ONLINE_COPY_CHUNK_ROWS")
    ap.add_argument("--method", choices=["auto", "signal"], default="auto",
                    help="SOFTCART_ONLINE_COPY: auto (snapshot positions, MariaDB) or signal (watermarks, as MySQL)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="softcart-bench-online-"))
    base.chmod(0o755)
    maria, pg = MariaDBServer(base / "mariadb"), PostgresServer(base / "pg")
    maria.start()
    pg.start()
    daemon: Daemon | None = None
    try:
        with psycopg.connect(pg.url(), autocommit=True) as c:
            c.execute("CREATE DATABASE staging")
            c.execute("CREATE DATABASE warehouse")
        env = load_source(maria, pg, base, args.sales)
        src_kw = {"host": "127.0.0.1", "port": maria.port, "user": "root", "database": "sales"}
        src = pymysql.connect(**src_kw, autocommit=True)
        with src.cursor() as cur:
            cur.execute("CREATE TABLE big (id INT PRIMARY KEY, n INT NOT NULL, pad VARCHAR(40))")
            cur.execute(f"INSERT INTO big SELECT seq, seq % 1000, CONCAT('row-', seq) FROM seq_1_to_{args.rows}")
        stg = psycopg.connect(pg.url("staging"), autocommit=True)
        daemon = Daemon(env, base / "daemon.log")
        daemon.start()
        wait_caught_up(src, stg)
        daemon.stop()

        env = {**env, "SOFTCART_SOURCE_TABLES": "sales_data,big", "SOFTCART_ONLINE_COPY_CHUNK_ROWS": str(args.chunk),
               "SOFTCART_ONLINE_COPY": args.method,
               "SOFTCART_LOG_LEVEL": "info", "SOFTCART_LOG_FORMAT": "json"}
        stop = threading.Event()
        commits: dict[int, float] = {}
        seen: dict[str, dict[int, float]] = {"staging": {}, "star": {}}
        counts = {"changes": 0}
        first = args.sales + 1_000_000
        threads = [threading.Thread(target=load, args=(src_kw, args.rate, first, args.rows, stop, commits, counts)),
                   threading.Thread(target=watch, args=(pg.url("staging"), first, stop, seen))]
        daemon = Daemon(env, base / "daemon.log")
        started = time.monotonic()
        daemon.start()
        for t in threads:
            t.start()
        deadline = time.monotonic() + 3600
        while not copy_done(stg) and time.monotonic() < deadline:
            time.sleep(0.1)  # polling the copy's record, with a deadline
        copy_seconds = time.monotonic() - started
        stop.set()
        threads[0].join(30)
        caught = wait_caught_up(src, stg)
        threads[1].join(30)
        wait_flushed(stg)  # the warehouse too
        rss = daemon.peak_rss_mb()
        daemon.stop()
        daemon = None
        lag = {k: [v[i] - commits[i] for i in commits if i in v] for k, v in seen.items()}
        agree = cli(env, "reconcile", "--level", "source", "--dry-run")  # segment checksums of every row
        check = cli(env, "rebuild", "--check")
        warehouse = cli(env, "reconcile", "--level", "warehouse", "--dry-run")
        figures = {
            "method": args.method, "rows": args.rows, "chunk_rows": args.chunk, "changes_per_s": args.rate,
            "copy_seconds": round(copy_seconds, 1), "copy_rows_per_s": round(args.rows / copy_seconds),
            "changes_during_copy": counts["changes"], "caught_up_after_s": round(caught, 2),
            "freshness_staging_p50_s": round(pct(lag["staging"], 50), 3),
            "freshness_staging_p99_s": round(pct(lag["staging"], 99), 3),
            "freshness_star_p99_s": round(pct(lag["star"], 99), 3), "peak_rss_mb": round(rss),
            "source_equals_staging": agree.returncode == 0, "star_equals_rebuild": check.returncode == 0,
            "warehouse_equals_star": warehouse.returncode == 0,
        }
        print("| figure | value |\n|---|---|")
        for k, v in figures.items():
            print(f"| {k} | {v} |")
        print(json.dumps(figures))
    finally:
        if daemon is not None:
            daemon.stop()
        pg.stop()
        maria.stop()


if __name__ == "__main__":
    main()

"""What the reconcile's source -> staging comparison costs: 1,000,000 identical rows, then the same
with 100 scattered differences, next to a plain count(*) of both tables. Private MariaDB and
PostgreSQL; prints a markdown table and a JSON line.

    .venv/bin/python -m tests.bench.bench_reconcile [--rows 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pymysql.cursors

from cdc.capture.mysql import read_table
from cdc.capture.snapshot import select_list
from cdc.dev.localservers import MariaDBServer, PostgresServer
from cdc.ops.compare import Limits, Side, compare_table
from cdc.ops.reconcile import _mysql_fetch, _pg_fetch
from loader.ddl import ensure_schema
from transform.fingerprint import Dialect, TableSpec, col_of, quote
from transform.values import RowConverter

DDL = """CREATE TABLE sales_data (rowid INT NOT NULL PRIMARY KEY, product_id INT NOT NULL, customer_id INT NOT NULL,
  price DECIMAL(12,2) NOT NULL, quantity INT NOT NULL, timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)"""


def timed(f: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    out = f()
    return time.perf_counter() - started, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--differences", type=int, default=100)
    p.add_argument("--segment-rows", type=int, default=Limits.segment_rows)
    p.add_argument("--fanout", type=int, default=Limits.fanout)
    p.add_argument("--fetch-rows", type=int, default=Limits.fetch_rows)
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="softcart-bench-"))
    base.chmod(0o755)
    maria, pg = MariaDBServer(base / "mariadb"), PostgresServer(base / "pg")
    maria.start()
    pg.start()
    try:
        src = pymysql.connect(host="127.0.0.1", port=maria.port, user="root", autocommit=True, charset="utf8mb4")
        with src.cursor() as cur:
            cur.execute("CREATE DATABASE bench")
            cur.execute("USE bench")
            cur.execute("SET SESSION time_zone = '+00:00'")
            cur.execute(DDL)
            cur.execute("INSERT INTO sales_data SELECT seq, seq % 500, seq % 9973, (seq % 50000) / 100, 1 + seq % 5,"
                        f" FROM_UNIXTIME(1600000000 + seq * 37) FROM seq_1_to_{args.rows}")
        table = read_table(src, "bench", "sales_data")
        stg = psycopg.connect(pg.url(), autocommit=True)
        ensure_schema(stg, {"sales_data": table})
        conv = RowConverter(table)
        with src.cursor(pymysql.cursors.SSCursor) as cur, stg.cursor() as pcur, \
                pcur.copy("COPY staging.sales_data FROM STDIN") as copy:
            cur.execute(f"SELECT {select_list(table)} FROM sales_data")
            for raw in cur:
                copy.write_row(conv.from_snapshot(raw))
        stg.execute("VACUUM ANALYZE staging.sales_data")
        cols = tuple(col_of(c) for c in table.columns)
        keys = (cols[0],)
        left = Side("source", TableSpec("`sales_data`", keys, cols, Dialect.MYSQL), _mysql_fetch(src))
        right = Side("staging", TableSpec(f"staging.{quote('sales_data', Dialect.POSTGRES)}", keys, cols,
                                          Dialect.POSTGRES), _pg_fetch(stg))
        limits = Limits(args.segment_rows, args.fanout, args.fetch_rows)
        # Where the time goes: one whole-table checksum on each side, alone.
        side_seconds = {s.name: timed(lambda s=s: s.summary(None, None))[0] for s in (left, right)}

        def count() -> None:
            with src.cursor() as cur:
                cur.execute("SELECT count(*) FROM sales_data")
            stg.execute("SELECT count(*) FROM staging.sales_data").fetchone()

        with ThreadPoolExecutor(2) as pool:
            def compare() -> int:
                return len(compare_table("sales_data", left, right, limits, pool).differences)

            counts, same, diff = [], [], []
            for _ in range(args.runs):
                counts.append(timed(count)[0])
                t, n = timed(compare)
                assert n == 0
                same.append(t)
            picked = random.Random(1).sample(range(1, args.rows + 1), args.differences)
            stg.execute("UPDATE staging.sales_data SET quantity = quantity + 1 WHERE rowid = ANY(%s)", (picked,))
            for _ in range(args.runs):
                t, n = timed(compare)
                assert n == args.differences, n
                diff.append(t)
        src.close()
        stg.close()
    finally:
        maria.stop()
        pg.stop()
    med = {k: statistics.median(v) for k, v in (("count", counts), ("identical", same), ("differences", diff))}
    print(f"| {args.rows:,} rows, source MariaDB vs staging PostgreSQL, median of {args.runs} | seconds | rows/s |")
    print("|---|---|---|")
    print(f"| count(*) on both sides | {med['count']:.2f} | {args.rows / med['count']:,.0f} |")
    print(f"| compare, identical | {med['identical']:.2f} | {args.rows / med['identical']:,.0f} |")
    print(f"| compare, {args.differences} scattered differences | {med['differences']:.2f} |"
          f" {args.rows / med['differences']:,.0f} |")
    print("one whole-table checksum, alone: " + ", ".join(f"{k} {v:.2f} s" for k, v in side_seconds.items()))
    print(json.dumps({"rows": args.rows, "side_seconds": side_seconds, "segment_rows": limits.segment_rows,
                      "fanout": limits.fanout, "fetch_rows": limits.fetch_rows,
                      "runs": {"count": counts, "identical": same, "differences": diff}, "median": med}))


if __name__ == "__main__":
    main()

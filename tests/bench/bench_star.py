"""How much the star schema adds to the staging apply: the same micro-batches of sales changes
applied through StagingWriter without it, with its deltas computed by the Python rules, and with
them computed inside PostgreSQL (SOFTCART_STAR_DELTAS=sql, the default), on a private PostgreSQL.
The sales are shaped like SoftCart's: about 1,000 products, dates over two years. Prints figures.

    .venv/bin/python -m tests.bench.bench_star [--changes 200000] [--batch 5000] [--statements]

``--statements``: then PostgreSQL's costliest statements of one more run with the deltas in SQL
(pg_stat_statements: seconds, calls, rows), to see where the star schema's time goes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from cdc.dev.localservers import PostgresServer
from loader.ddl import ensure_schema
from loader.staging import StagingWriter
from loader.star import StarSchema
from tests.bench.bench_catchup import costliest_statements
from transform.model import Op, Position, RowChange
from transform.schema import Column, Table
from transform.star import DayZone

SALES = Table("sales_data", (
    Column("rowid", "int", "int(11)", False), Column("product_id", "int", "int(11)"),
    Column("customer_id", "int", "int(11)"), Column("price", "decimal", "decimal(12,2)", False, 12, 2),
    Column("quantity", "int", "int(11)", False), Column("timestamp", "timestamp", "timestamp", False, fsp=0),
), ("rowid",))


def batches(n: int, size: int, seed: int) -> list[list[RowChange]]:
    rnd = random.Random(seed)
    rows: dict[int, tuple[Any, ...]] = {}
    next_id = 1
    out: list[list[RowChange]] = []
    batch: list[RowChange] = []
    for _ in range(n):
        kind = rnd.random()
        ts = dt.datetime(2021, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=rnd.randrange(2 * 525_600))
        if kind < 0.7 or len(rows) < 10:
            row = (next_id, rnd.randint(1, 1000), rnd.randint(1, 10000), Decimal(rnd.randint(100, 50000)) / 100,
                   rnd.randint(1, 5), ts)
            rows[next_id] = row
            next_id += 1
            batch.append(RowChange("sales_data", Op.INSERT, None, row))
        else:
            key = rnd.choice(list(rows)) if len(rows) < 2000 else next_id - rnd.randint(1, 2000)
            if key not in rows:
                continue
            old = rows[key]
            if kind < 0.9:
                new = (*old[:4], old[4] + 1, ts)
                rows[key] = new
                batch.append(RowChange("sales_data", Op.UPDATE, old, new))
            else:
                del rows[key]
                batch.append(RowChange("sales_data", Op.DELETE, old, None))
        if len(batch) >= size:
            out.append(batch)
            batch = []
    if batch:
        out.append(batch)
    return out


def run(url: str, work: list[list[RowChange]], deltas: str) -> float:
    """Seconds to apply ``work``; ``deltas``: none (no star schema), python or sql."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS staging, star, softcart CASCADE")
        ensure_schema(conn, {"sales_data": SALES})
        star = StarSchema(SALES, DayZone(ZoneInfo("UTC")), deltas_in_sql=deltas == "sql") if deltas != "none" else None
        if star:
            with conn.transaction(), conn.cursor() as cur:
                star.ensure_schema(cur)
        writer = StagingWriter(conn, {"sales_data": SALES}, "bench", star)
        started = time.perf_counter()
        for i, batch in enumerate(work):
            writer.apply(batch)
            writer.commit(Position("bin.000001", i + 4), None)
        return time.perf_counter() - started


def statements(url: str, work: list[list[RowChange]]) -> list[tuple[Any, ...]]:
    """One more run with the deltas in SQL, and its costliest statements."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        run(url, work[:1], "sql")  # the schema made before the reset
        conn.execute("SELECT pg_stat_statements_reset()")
        run(url, work, "sql")
        return costliest_statements(conn, 20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--changes", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--statements", action="store_true", help="then PostgreSQL's costliest statements (see above)")
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="softcart-bench-"))
    base.chmod(0o755)
    pg = PostgresServer(base / "pg", settings=("shared_preload_libraries=pg_stat_statements",)
                        if args.statements else ())
    pg.start()
    try:
        work = batches(args.changes, args.batch, 1)
        runs = {mode: [run(pg.url(), work, mode) for _ in range(args.runs)] for mode in ("none", "python", "sql")}
        costliest = statements(pg.url(), work) if args.statements else []
    finally:
        pg.stop()
    med = {mode: statistics.median(r) for mode, r in runs.items()}
    print(f"| apply of {args.changes} sales changes in batches of {args.batch} | median s | changes/s |"
          " star schema's share |")
    print("|---|---|---|---|")
    names = {"none": "staging only", "python": "staging + star, deltas in Python",
             "sql": "staging + star, deltas in SQL"}
    for mode, name in names.items():
        extra = "" if mode == "none" else f"{(med[mode] - med['none']) / med['none']:.2f}x the staging apply"
        print(f"| {name} | {med[mode]:.2f} | {args.changes / med[mode]:,.0f} | {extra} |")
    print("runs: " + "; ".join(f"{m} {[round(x, 2) for x in r]}" for m, r in runs.items()))
    if costliest:
        print("\nPostgreSQL's costliest statements, deltas in SQL (seconds, calls, rows, statement):")
        for row in costliest:
            print("  " + " | ".join(str(v) for v in row))


if __name__ == "__main__":
    main()

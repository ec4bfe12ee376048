"""Sales tables of every column-type set the star schema's SQL rules meet, and the odd rows for
them (hypothesis strategies), shared by the tests that hold the SQL equal to the Python rules."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import psycopg
from hypothesis import strategies as st

from transform.schema import Column, Table

PG = psycopg.Connection[Any]
BIG = 2**63


def sales(ids: str, price: tuple[str, int, int], qty: str, ts: str) -> Table:
    """A sales table with these MySQL types: ids int/bigint/bigint unsigned, price decimal(p,s) or
    double, quantity int or decimal(10,2), timestamp timestamp/datetime/date."""
    def c(name: str, t: str, **kw: Any) -> Column:
        return Column(name, t.split()[0], t, **kw)
    return Table("sales_data", (
        c("rowid", ids, nullable=False), c("product_id", ids), c("customer_id", ids),
        c("price", price[0], precision=price[1], scale=price[2]),
        c("quantity", qty, precision=10 if qty == "decimal" else None, scale=2 if qty == "decimal" else None),
        c("timestamp", ts, fsp=6 if ts != "date" else None)), ("rowid",))


KINDS = {
    "timestamp-decimal": sales("int", ("decimal", 12, 2), "int", "timestamp"),
    "datetime-wide": sales("bigint unsigned", ("decimal", 30, 6), "bigint unsigned", "datetime"),
    "date-bigint": sales("bigint", ("decimal", 31, 4), "int", "date"),
    "decimal-quantity": sales("int", ("decimal", 12, 2), "decimal", "timestamp"),
    "double-price": sales("int", ("double", 0, 0), "int", "datetime"),  # Python's rule for every row
}

PRICES = st.one_of(st.none(), st.decimals(-10**6, 10**6, places=2), st.sampled_from([
    Decimal("0.000001"), Decimal("12.34565"), Decimal("99999999999999999999999.9999"), Decimal("-0.0001"),
    Decimal("123456789012345678901234.123456")]))
QTYS = st.one_of(st.none(), st.integers(-3, 1000), st.sampled_from([0, 99, 2**40, BIG - 1, BIG, 2**64 - 1]),
                st.sampled_from([Decimal("1.50"), Decimal("2.25"), Decimal("-0.50")]))
TIMES = st.one_of(st.none(), st.datetimes(dt.datetime(1971, 1, 1), dt.datetime(2037, 12, 31)),
                  st.sampled_from([dt.datetime(2021, 3, 27, 23, 30), dt.datetime(2021, 12, 31, 23, 59, 59, 999999),
                                   dt.datetime(2021, 1, 1, 0, 0), dt.datetime(9999, 12, 31, 23, 0),
                                   dt.datetime(1, 1, 1, 0, 0)]))
IDS = st.one_of(st.integers(0, 5), st.sampled_from([BIG - 1, BIG, 2**64 - 1]))
ROWS = st.lists(st.tuples(IDS | st.none(), IDS | st.none(), PRICES, QTYS, TIMES), max_size=40)


def fill(conn: PG, table: Table, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Insert the rows the staging table can hold (each in a savepoint: a value out of the
    column's range is refused by PostgreSQL, as the source would have refused it)."""
    kept = []
    conn.execute("TRUNCATE staging.sales_data")
    for i, (product, customer, price, qty, ts) in enumerate(rows):
        if ts is not None and table.column("timestamp").data_type == "timestamp":
            ts = ts.replace(tzinfo=dt.UTC)
        try:
            with conn.transaction():
                conn.execute("INSERT INTO staging.sales_data VALUES (%s, %s, %s, %s, %s, %s)",
                             (i + 1, product, customer, price, qty, ts))
            kept.append((i + 1, product, customer, price, qty, ts))
        except (psycopg.errors.NumericValueOutOfRange, psycopg.errors.DatetimeFieldOverflow):
            pass
    return kept

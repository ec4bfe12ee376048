"""The star schema built from scratch by set-based SQL (snapshot, `rebuild`) equals the Python
reference (`transform.star`, what `rebuild --check` compares with), row for row, for the staging
column types and time zones a sales table can have, and for the rows that make no fact."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader.ddl import ensure_schema
from loader.star import StarSchema
from transform.schema import Column, Table
from transform.star import ScratchBuilder

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


def both_ways(conn: PG, star: StarSchema) -> tuple[list[tuple[Any, str]], list[str]]:
    """Rebuild in SQL; return its dead letters (sorted) and its differences from the reference."""
    with conn.transaction():
        built = star.rebuild(conn)
        differences = star.differences(conn, limit=5)
        constraints = conn.execute("SELECT conrelid::regclass::text, conname, contype FROM pg_constraint"
                                   " WHERE connamespace = 'star'::regnamespace ORDER BY 1, 2").fetchall()
        assert constraints == [("star.dimdate", "dimdate_date_key", "u"), ("star.dimdate", "dimdate_pkey", "p"),
                               ("star.factsales", "factsales_dateid_fkey", "f"),
                               ("star.factsales", "factsales_pkey", "p"),
                               ("star.sales_by_day", "sales_by_day_pkey", "p")], "the rebuild put its keys back"
        assert conn.execute("SELECT to_regclass('star.factsales_dateid')").fetchone() != (None,)
    return sorted(built.invalid), differences


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("zone", ["UTC", "Pacific/Chatham", "America/St_Johns"])
def test_sql_build_equals_the_python_reference(staging: PG, kind: str, zone: str) -> None:
    table = KINDS[kind]
    ensure_schema(staging, {table.name: table})
    star = StarSchema(table, ZoneInfo(zone))
    with staging.cursor() as cur:
        star.ensure_schema(cur)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(ROWS)
    def check(rows: list[tuple[Any, ...]]) -> None:
        kept = fill(staging, table, rows)
        invalid, differences = both_ways(staging, star)
        assert differences == [], differences
        # The dead letters are Python's reasons for exactly the rows Python refuses.
        reference = ScratchBuilder(star.zone)
        for row in staging.execute("SELECT rowid, product_id, customer_id, price, quantity, timestamp"
                                   " FROM staging.sales_data"):
            reference.add(tuple(row))
        assert invalid == sorted(reference.invalid), kept

    check()

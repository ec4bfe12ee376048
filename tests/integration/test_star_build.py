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

from loader.ddl import ensure_schema
from loader.star import StarSchema
from tests.star_cases import KINDS, ROWS, fill
from transform.star import DayZone, ScratchBuilder

PG = psycopg.Connection[Any]


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
                               ("star.sales_by_day", "sales_by_day_pkey", "p"),
                               ("star.sales_by_month_product", "sales_by_month_product_pkey", "p")], \
            "the rebuild put its keys back"
        assert conn.execute("SELECT to_regclass('star.factsales_dateid')").fetchone() != (None,)
    return sorted(built.invalid), differences


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("zone", ["UTC", "Pacific/Chatham", "America/St_Johns"])
def test_sql_build_equals_the_python_reference(staging: PG, kind: str, zone: str) -> None:
    table = KINDS[kind]
    ensure_schema(staging, {table.name: table})
    star = StarSchema(table, DayZone(ZoneInfo(zone)))
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


def test_quantities_summing_past_bigint_build_and_an_old_grain_is_made_anew(staging: PG) -> None:
    """Found by the test above (America/St_Johns, datetime-wide): two sales of one day and product
    whose quantities sum past BIGINT stopped the build ('bigint out of range'). Staging's
    aggregates sum without the warehouse's bound, as amount_total does. A staging star schema
    made before the grains changed (sales_by_day per day and product, quantity_total BIGINT) is
    made anew at the next start, and ensure_schema says it needs a build."""
    table = KINDS["datetime-wide"]
    ensure_schema(staging, {table.name: table})
    star = StarSchema(table, DayZone(ZoneInfo("America/St_Johns")))
    with staging.cursor() as cur:
        assert star.ensure_schema(cur) is True, "made: it needs a build"
        assert star.ensure_schema(cur) is False
        cur.execute("DROP TABLE star.sales_by_day")
        cur.execute("CREATE TABLE star.sales_by_day (dateid integer NOT NULL, product_id bigint NOT NULL,"
                    " sales_count bigint NOT NULL, quantity_total bigint NOT NULL, amount_total numeric(38,4)"
                    " NOT NULL, PRIMARY KEY (dateid, product_id))")  # as it was made
        assert star.ensure_schema(cur) is True, "the old grain made anew: it needs a build"
        cur.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'star'"
                    " AND table_name = 'sales_by_day' ORDER BY ordinal_position")
        assert [r[0] for r in cur.fetchall()] == ["dateid", "sales_count", "quantity_total", "amount_total"]
        assert star.ensure_schema(cur) is False
    big = 9_223_372_036_854_775_807
    moment = dt.datetime(2000, 1, 1)
    fill(staging, table, [(0, 0, Decimal("0.00"), 1, moment), (0, 0, Decimal("0.00"), big, moment)])
    invalid, differences = both_ways(staging, star)
    assert differences == [] and invalid == []
    assert staging.execute("SELECT quantity_total FROM star.sales_by_day").fetchone() == (big + 1,)
    assert staging.execute("SELECT quantity_total FROM star.sales_by_month_product").fetchone() == (big + 1,)

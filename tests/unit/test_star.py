"""Star-schema facts and deltas, without a database."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transform.star import (
    SALES_COLUMNS,
    DayZone,
    Fact,
    InvalidFact,
    ScratchBuilder,
    dim_date,
    fact_from_row,
    star_delta,
)
from transform.star_shape import AGGREGATES

UTC = DayZone(ZoneInfo("UTC"))


def sale(rowid: int = 1, product: int | None = 5, price: Any = Decimal("2.50"), qty: Any = 3,
         ts: Any = dt.datetime(2021, 6, 30, 23, 30, tzinfo=dt.UTC)) -> dict[str, Any]:
    return {"rowid": rowid, "product_id": product, "customer_id": 9, "price": price, "quantity": qty,
            "timestamp": ts}


def test_dimdate_attributes_with_sunday_as_day_one() -> None:
    d = dim_date(dt.date(2021, 8, 1))  # a Sunday
    assert d.row() == (20210801, dt.date(2021, 8, 1), 2021, 3, "Q3", 8, "August", 1, 1, "Sunday")
    assert dim_date(dt.date(2021, 8, 7)).weekday == 7 and dim_date(dt.date(2021, 8, 7)).weekdayname == "Saturday"
    assert dim_date(dt.date(2020, 12, 31)).quartername == "Q4"


def test_fact_has_exact_total_and_business_date() -> None:
    f = fact_from_row(sale(), UTC)
    assert f.total_price == Decimal("7.50") and f.dateid == 20210630
    tokyo = fact_from_row(sale(), DayZone(ZoneInfo("Asia/Tokyo")))
    assert tokyo.dateid == 20210701, "23:30 UTC is the next morning in Tokyo"


def test_a_fact_counts_in_its_day_and_in_its_month_and_product() -> None:
    f = fact_from_row(sale(), DayZone(ZoneInfo("Asia/Tokyo")))
    assert f.agg_keys() == ((20210701,), (202107, f.product_id))
    assert [t.key for t in AGGREGATES] == [("dateid",), ("monthid", "product_id")], "agg_keys' order"


def test_totals_and_sums_are_exact_beyond_28_digits() -> None:
    # 29 significant digits: the default decimal context would round the last one away and the
    # rounded total would still pass the overflow check.
    price = Decimal("99999999999999999999999.9999")
    f = fact_from_row(sale(price=price, qty=99), UTC)
    assert f.total_price == Decimal("9899999999999999999999999.9901")
    b = ScratchBuilder(UTC)
    for i in range(3):
        b.add((i, 5, 9, price, 99, dt.datetime(2021, 1, 1, tzinfo=dt.UTC)))
    for name in ("sales_by_day", "sales_by_month_product"):
        ((*_, sales, quantity, amount),) = b.aggregate(name)
        assert (sales, quantity, amount) == (3, 297, Decimal("29699999999999999999999999.9703"))


@pytest.mark.parametrize(("row", "reason"), [
    (sale(ts=None), "timestamp is NULL"),
    (sale(price=None), "price is NULL"),
    (sale(qty=None), "quantity is NULL"),
    (sale(qty=-1), "quantity is negative"),
    (sale(product=None), "product_id is NULL"),
    (sale(price=Decimal("99999999999999999999999"), qty=100000), "overflows"),
    (sale(price=Decimal("0.00001")), "price 0.00001 does not fit"),
    (sale(price=Decimal(0), qty=2**63), "quantity 9223372036854775808 does not fit a BIGINT"),
    (sale(ts=dt.datetime(9999, 12, 31, 23, 0)), "has no date in Asia/Tokyo"),
])
def test_rows_that_make_no_fact_say_why(row: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidFact, match=reason):
        fact_from_row(row, DayZone(ZoneInfo("Asia/Tokyo")))


DAYS = [dt.datetime(2021, 1, d, 12, tzinfo=dt.UTC) for d in (1, 2, 3)]
ROWS = st.fixed_dictionaries({
    "product_id": st.sampled_from([1, 2, None]), "customer_id": st.just(1),
    "price": st.sampled_from([Decimal("1.00"), Decimal("2.25"), None]),
    "quantity": st.sampled_from([0, 1, 3, -2]), "timestamp": st.sampled_from([*DAYS, None]),
})
OPS = st.lists(st.tuples(st.integers(1, 4), st.none() | ROWS), max_size=25)


def values(row: dict[str, Any] | None) -> tuple[Any, ...] | None:
    return None if row is None else tuple(row[c] for c in SALES_COLUMNS)


def scratch(state: dict[int, dict[str, Any]]) -> tuple[set[Any], set[Any], dict[str, set[Any]]]:
    b = ScratchBuilder(UTC)
    facts = {f.row() for r in state.values() if (f := b.add(values(r))) is not None}
    return facts, set(b.dimdate()), {t.name: set(b.aggregate(t.name)) for t in AGGREGATES}


@given(st.lists(OPS, max_size=6))
def test_applying_deltas_batch_by_batch_equals_a_rebuild(batches: list[list[tuple[int, Any]]]) -> None:
    state: dict[int, dict[str, Any]] = {}
    facts: dict[int, Fact] = {}
    dates: dict[int, tuple[Any, ...]] = {}
    aggs: dict[str, dict[tuple[int, ...], list[Any]]] = {t.name: {} for t in AGGREGATES}
    for batch in batches:
        for rowid, row in batch:  # a batch's net effect: last state per row
            if row is None:
                state.pop(rowid, None)
            else:
                state[rowid] = {"rowid": rowid, **row}
        touched = {rowid for rowid, _ in batch}
        delta = star_delta([(r, facts.get(r), values(state.get(r))) for r in touched], UTC)
        for d in delta.dates.values():
            dates.setdefault(d.dateid, d.row())
        for r in delta.fact_deletes:
            facts.pop(r, None)
        for r, f in delta.fact_upserts.items():
            facts[r] = f
        for name, deltas in delta.aggregates.items():
            for k, a in deltas.items():
                cur = aggs[name].setdefault(k, [0, 0, Decimal(0)])
                cur[0] += a.sales
                cur[1] += a.quantity
                cur[2] += a.amount
        # as loader.star applies it: only aggregates that lost sales are looked at for removal,
        # and only the dates whose day lost sales
        for name, deltas in delta.aggregates.items():
            for k in [k for k, a in deltas.items() if a.sales < 0 and aggs[name][k][0] == 0]:
                del aggs[name][k]
        for (dateid,) in [k for k, a in delta.aggregates["sales_by_day"].items() if a.sales < 0]:
            if (dateid,) not in aggs["sales_by_day"]:
                dates.pop(dateid, None)
        assert not (set(delta.invalid) & set(delta.fact_upserts))
    want_facts, want_dates, want_aggs = scratch(state)
    assert {f.row() for f in facts.values()} == want_facts
    assert set(dates.values()) == want_dates
    assert {name: {(*k, *a) for k, a in rows.items()} for name, rows in aggs.items()} == want_aggs


KOLKATA = ZoneInfo("Asia/Kolkata")


def test_a_datetime_is_a_wall_clock_time_in_the_sources_zone() -> None:
    """#30 item 11: on a +05:30 server a DATETIME of 23:30 is 18:00 UTC; read as UTC it was 05:00
    the next day in Kolkata, and 2,610 of 2,620 facts moved to the next day."""
    from transform.star import zone_of

    late = dt.datetime(2024, 3, 1, 23, 30)
    india = DayZone(KOLKATA, zone_of("+05:30"))
    assert fact_from_row(sale(ts=late), india).dateid == 20240301
    assert fact_from_row(sale(ts=late), DayZone(KOLKATA, dt.UTC)).dateid == 20240302, "read as UTC: the next day"
    assert fact_from_row(sale(ts=late), DayZone(ZoneInfo("UTC"), zone_of("+05:30"))).dateid == 20240301
    assert fact_from_row(sale(ts=dt.datetime(2024, 3, 1, 3, 0)), DayZone(ZoneInfo("UTC"), zone_of("+05:30"))
                         ).dateid == 20240229, "03:00 in India is the evening before in UTC"
    assert fact_from_row(sale(ts=late), DayZone(KOLKATA, KOLKATA)).dateid == 20240301, "its own zone: its own date"
    # a TIMESTAMP carries its instant: the wall zone plays no part
    aware = dt.datetime(2024, 3, 1, 20, 0, tzinfo=dt.UTC)
    assert fact_from_row(sale(ts=aware), india).dateid == fact_from_row(sale(ts=aware), DayZone(KOLKATA)).dateid


def test_the_sources_zone_is_taken_only_where_it_is_certain() -> None:
    from transform.star import wall_zone, zone_of

    assert wall_zone("source", "+05:30", "UTC") == dt.timezone(dt.timedelta(hours=5, minutes=30))
    assert wall_zone("source", "-03:00", "") == dt.timezone(-dt.timedelta(hours=3))
    assert wall_zone("source", "SYSTEM", "UTC") == ZoneInfo("UTC")
    assert wall_zone("source", "Asia/Kolkata", "UTC") == KOLKATA, "a named zone (time zone tables loaded)"
    assert wall_zone("source", "SYSTEM", "Europe/Berlin") == ZoneInfo("Europe/Berlin")
    for abbreviation in ("IST", "CEST", "CET", "EST", "PDT"):  # several zones each; summer and winter names
        assert wall_zone("source", "SYSTEM", abbreviation) is None, abbreviation
    assert wall_zone("Asia/Kolkata", "SYSTEM", "IST") == KOLKATA, "the setting wins"
    assert wall_zone("+05:30") == dt.timezone(dt.timedelta(hours=5, minutes=30))
    for bad in ("Mars/Olympus", "+25:00", "5:30x", ""):
        with pytest.raises(ValueError):
            zone_of(bad)


@given(st.datetimes(dt.datetime(1900, 1, 2), dt.datetime(2100, 12, 30)),
       st.integers(-14 * 60, 14 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m))),
       st.sampled_from(["UTC", "Asia/Kolkata", "America/St_Johns", "Pacific/Chatham", "Europe/Berlin"]))
def test_a_datetimes_date_is_that_of_its_instant(ts: dt.datetime, wall: dt.timezone, business: str) -> None:
    zone = DayZone(ZoneInfo(business), wall)
    assert zone.day(ts) == ts.replace(tzinfo=wall).astimezone(ZoneInfo(business)).date()
    assert DayZone(ZoneInfo(business), ZoneInfo(business)).day(ts) == ts.date()


def test_sql_rules_take_a_datetime_where_they_match_python_and_leave_the_rest_to_it() -> None:
    """A DATETIME written in a zone with clock changes other than the business one: the hour the
    clocks go back is two instants, read as the first by Python, the second by PostgreSQL."""
    from transform.star import zone_of
    from transform.star_sql import sql_rules

    types = {"rowid": "integer", "product_id": "integer", "customer_id": "integer", "price": "numeric",
             "quantity": "integer", "timestamp": "timestamp without time zone"}
    berlin = ZoneInfo("Europe/Berlin")
    assert sql_rules(types, DayZone(KOLKATA, zone_of("+05:30"))) is not None
    assert sql_rules(types, DayZone(berlin, berlin)) is not None
    assert sql_rules(types, DayZone(KOLKATA, berlin)) is None
    assert sql_rules({**types, "timestamp": "timestamp with time zone"}, DayZone(KOLKATA, berlin)) is not None

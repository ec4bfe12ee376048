"""The per-batch star-schema delta computed inside PostgreSQL (SOFTCART_STAR_DELTAS=sql) equals
the Python rules' (python), differentially: from the same staging and star state, the same batch
of inserts, updates and deletes through the real StagingWriter leaves the same facts, aggregates,
dates, outbox keys and dead letters, and a star schema equal to a rebuild from scratch. For every
column-type set and time zone the from-scratch build's test uses, with odd rows (NULLs, negative
quantities, prices and totals that overflow DECIMAL(31,4), dates at the ends of the calendar),
dead-letter facts that are fixed or deleted, dates gained and lost, and sales moving between days."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loader.ddl import ensure_schema
from loader.staging import StagingWriter
from loader.star import StarSchema
from tests.star_cases import IDS, KINDS, PRICES, QTYS, TIMES, fill
from transform.errors import SoftcartError
from transform.model import Op, Position, RowChange
from transform.schema import Table
from transform.star import DayZone, zone_of

PG = psycopg.Connection[Any]

#: a batch: (rowid, new values or None for a delete); rowids overlap the initial rows' and go past them
CHANGES = st.lists(st.tuples(st.integers(1, 14), st.none() | st.tuples(IDS | st.none(), IDS | st.none(), PRICES,
                                                                        QTYS, TIMES)), max_size=25)
INITIAL = st.lists(st.tuples(IDS | st.none(), IDS | st.none(), PRICES, QTYS, TIMES), max_size=10)


def _value(table: Table, ts: Any) -> Any:
    if ts is None:
        return None
    kind = table.column("timestamp").data_type
    return ts.replace(tzinfo=dt.UTC) if kind == "timestamp" else ts.date() if kind == "date" else ts


def as_staging_holds(conn: PG, table: Table, row: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The row's values in their PostgreSQL form, as the reader hands them over (a DECIMAL(12,2)
    never carries 0.000001, an INT never 1.50; a BIGINT UNSIGNED comes as a Python int though
    staging holds it as numeric), or None where the source's column could not hold them."""
    types = [r[0] for r in conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                                        " WHERE attrelid = 'staging.sales_data'::regclass AND attnum > 0"
                                        " AND NOT attisdropped ORDER BY attnum").fetchall()]
    casts = ", ".join(f"%s::{t}" for t in types)
    try:
        with conn.transaction():
            got = conn.execute(f"SELECT {casts}", row).fetchone()
    except psycopg.errors.DataError:
        return None
    assert got is not None
    return tuple(int(v) if v is not None and c.data_type in ("int", "bigint") else v
                 for v, c in zip(got, table.columns, strict=True))


def state(conn: PG) -> dict[str, Any]:
    """Everything a batch's star delta writes, in a comparable form."""
    q = conn.execute
    return {
        "facts": q("SELECT rowid, dateid, product_id, customer_id, price, quantity, total_price"
                   " FROM star.factsales ORDER BY 1").fetchall(),
        "by_day": q("SELECT * FROM star.sales_by_day ORDER BY 1").fetchall(),
        "by_month_product": q("SELECT * FROM star.sales_by_month_product ORDER BY 1, 2").fetchall(),
        "dates": q("SELECT * FROM star.dimdate ORDER BY 1").fetchall(),
        "outbox": sorted(q("SELECT tbl, k1, k2 FROM softcart.outbox_keys").fetchall(), key=repr),
        "dead_letters": q("SELECT kind, row_key, reason, resolved_at IS NULL FROM softcart.dead_letter"
                          " ORDER BY 1, 2, 3").fetchall(),
    }


def run(conn: PG, table: Table, zone: DayZone, in_sql: bool, initial: list[tuple[Any, ...]],
        changes: list[tuple[int, tuple[Any, ...] | None]]) -> tuple[dict[str, Any], str, list[str]]:
    """From a fresh staging (the initial rows) and its star schema built from scratch, one batch in
    the given mode; returns what it left, the error it stopped with (if any) and the differences
    of the star schema from a rebuild from scratch."""
    conn.execute("TRUNCATE star.factsales, star.sales_by_day, star.dimdate, softcart.outbox, softcart.dead_letter")
    kept = fill(conn, table, initial)
    star = StarSchema(table, zone, deltas_in_sql=in_sql)
    with conn.transaction():
        built = star.rebuild(conn)
    # a dead letter for every initial row that makes no fact, as the daemon would have left it
    for rowid, reason in built.invalid:
        conn.execute("INSERT INTO softcart.dead_letter (pipeline, source_table, row_key, reason, kind, position)"
                     " VALUES ('default', %s, %s, %s, 'fact', 'test')", (table.name, f"[{rowid}]", reason))
    conn.execute("DELETE FROM softcart.outbox")
    now = {r[0]: as_staging_holds(conn, table, r) for r in kept}  # the batch's before images, as the reader has them
    batch = []
    for rowid, values in changes:
        before = now.get(rowid)
        if values is None:
            if before is not None:
                batch.append(RowChange(table.name, Op.DELETE, before, None))
                del now[rowid]
            continue
        product, customer, price, qty, ts = values
        after = as_staging_holds(conn, table, (rowid, product, customer, price, qty, _value(table, ts)))
        if after is None:
            continue
        batch.append(RowChange(table.name, Op.UPDATE if before else Op.INSERT, before, after))
        now[rowid] = after
    writer = StagingWriter(conn, {table.name: table}, "default", star)
    error = ""
    try:
        writer.apply(batch)
        writer.commit(Position("mysql-bin.000001", 4))
    except (SoftcartError, psycopg.Error) as exc:
        error = f"{type(exc).__name__}: {exc}"
        writer.rollback()
    with conn.transaction():
        differences = star.differences(conn, limit=5)
    return state(conn), error, differences


#: Every column-type set in UTC, and the zones with odd offsets on the types whose date the zone moves
#: (a TIMESTAMP, a DATETIME); the other pairs (a DATE, the numeric sets: the zone moves nothing there,
#: or every row goes to Python) in the slow run.
ZONE_CASES = [pytest.param(kind, zone, marks=() if zone == "UTC" or kind in ("timestamp-decimal", "datetime-wide")
                           else pytest.mark.slow, id=f"{zone}-{kind}")
              for zone in ("UTC", "Pacific/Chatham", "America/St_Johns") for kind in KINDS]


@pytest.mark.parametrize(("kind", "zone"), ZONE_CASES)
def test_the_sql_delta_equals_the_python_rules(staging: PG, kind: str, zone: str) -> None:
    _differential(staging, KINDS[kind], DayZone(ZoneInfo(zone)))


@pytest.mark.parametrize(("zone", "wall"), [("Pacific/Chatham", "+05:30"), ("America/St_Johns", "-09:30"),
                                           ("America/St_Johns", "same")])
def test_the_sql_delta_equals_the_python_rules_for_a_datetime_written_in_the_sources_zone(
        staging: PG, zone: str, wall: str) -> None:
    """#30 item 11: a DATETIME is a wall-clock time in the source's zone (a fixed offset, or the
    business zone itself: the cases the SQL takes; the rest go to Python)."""
    table = KINDS["datetime-wide"]
    day_zone = DayZone(ZoneInfo(zone), ZoneInfo(zone) if wall == "same" else zone_of(wall))
    ensure_schema(staging, {table.name: table})
    assert StarSchema(table, day_zone).sql_delta(staging, "t") is not None, "the SQL takes it"
    staging.execute("DROP TABLE staging.sales_data")
    _differential(staging, table, day_zone)


def _differential(staging: PG, table: Table, zone: DayZone) -> None:
    ensure_schema(staging, {table.name: table})
    with staging.cursor() as cur:
        StarSchema(table, zone).ensure_schema(cur)

    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
    @given(INITIAL, CHANGES)
    # a DATETIME at the calendar's first minute, east of UTC: its instant is in year 0, past Python's
    # datetimes (the SQL vouched for it and made a fact Python can't: found by CI)
    @example([], [(1, (0, None, Decimal("0.00"), 0, dt.datetime(1, 1, 1, 0, 0)))])
    def check(initial: list[tuple[Any, ...]], changes: list[tuple[int, tuple[Any, ...] | None]]) -> None:
        python = run(staging, table, zone, False, initial, changes)
        in_sql = run(staging, table, zone, True, initial, changes)
        for part in python[0]:
            assert in_sql[0][part] == python[0][part], (part, in_sql[0][part], python[0][part])
        assert in_sql == python
        assert in_sql[2] == [], in_sql[2]  # and both equal a rebuild from scratch

    check()


def test_the_sql_delta_is_used_where_the_types_allow_and_python_elsewhere(staging: PG) -> None:
    for kind, expected in (("timestamp-decimal", True), ("double-price", False)):
        table = KINDS[kind]
        ensure_schema(staging, {table.name: table})
        star = StarSchema(table, DayZone(ZoneInfo("UTC")))
        assert (star.sql_delta(staging, "some_temp") is not None) is expected, kind
        assert StarSchema(table, DayZone(ZoneInfo("UTC")), deltas_in_sql=False).sql_delta(staging, "t") is None
        staging.execute("DROP TABLE staging.sales_data")

"""The star schema's rows and the deltas a batch of staging changes causes (pure).

From one ``sales_data`` row comes one fact: its date in the business time zone, its total price
(price x quantity, exact), and its place in each aggregate (``sales_by_day``: per day;
``sales_by_month_product``: per month and product; each sums sales, quantity, amount). A batch
changes some rows from an old state to a new one; the delta is "retract the old fact, add the new
one", summed per aggregate key, so applying deltas keeps the tables equal to a rebuild from scratch.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from transform.star_shape import AGGREGATES
from transform.star_shape import MONEY_DIGITS as MONEY_DIGITS
from transform.star_shape import MONEY_SCALE as MONEY_SCALE

#: Zone names that are UTC at every instant (a DATETIME in one of them is a UTC time).
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "GMT", "Etc/GMT", "Etc/GMT0", "Etc/GMT+0", "Etc/GMT-0",
                        "GMT0", "Zulu", "Etc/Zulu", "Universal", "Etc/Universal", "Greenwich", "Etc/Greenwich"})


@dataclass(frozen=True)
class DayZone:
    """How a sale's timestamp becomes its date. ``business``: the zone whose calendar decides the
    date (SOFTCART_BUSINESS_TIMEZONE). ``wall``: the zone a DATETIME (a wall-clock time with no zone
    of its own) was written in, the source's by default (SOFTCART_SOURCE_DATETIME_ZONE); None where
    it could not be told (a DATETIME is then refused, never guessed). A TIMESTAMP carries its instant."""

    business: ZoneInfo
    wall: dt.tzinfo | None = dt.UTC

    @property
    def key(self) -> str:
        return self.business.key

    def wall_offset(self) -> dt.timedelta | None:
        """The wall zone's offset where it is one fixed offset (UTC, +05:30); None where it varies."""
        if isinstance(self.wall, dt.timezone):
            return self.wall.utcoffset(None)
        if isinstance(self.wall, ZoneInfo) and self.wall.key in _UTC_NAMES:
            return dt.timedelta(0)
        return None

    def wall_is_business(self) -> bool:
        """Is a DATETIME already a wall-clock time of the business zone (its date is its own)?"""
        return isinstance(self.wall, ZoneInfo) and self.wall.key == self.business.key

    def refusal(self, table: str, data_type: str) -> str | None:
        """Why ``table``'s timestamp of ``data_type`` can't be dated (None: it can)."""
        if self.wall is not None or data_type != "datetime":
            return None
        return (f"{table}.timestamp is a DATETIME (a wall-clock time without a zone), and the source's time zone"
                " could not be told for certain (SYSTEM, named by an abbreviation): set"
                " SOFTCART_SOURCE_DATETIME_ZONE to the zone its DATETIMEs are written in (an IANA name such as"
                " Asia/Kolkata, or an offset such as +05:30)")

    def day(self, ts: dt.datetime) -> dt.date:
        """The business date of ``ts`` (aware: its instant; naive: a wall-clock time in ``wall``);
        OverflowError past the calendar's ends."""
        if ts.tzinfo is not None:
            return ts.astimezone(self.business).date()
        if self.wall is None:
            raise ValueError("a DATETIME's zone is not known")
        if self.wall_is_business():
            return ts.date()
        return ts.replace(tzinfo=self.wall).astimezone(self.business).date()


_OFFSET = re.compile(r"^([+-])(\d{1,2}):(\d{2})$")


def zone_of(text: str) -> dt.tzinfo:
    """An offset (``+05:30``, as MySQL writes one) or an IANA name as a zone; ValueError otherwise."""
    m = _OFFSET.match(text.strip())
    if m:
        hours, minutes = int(m[2]), int(m[3])
        if hours > 14 or minutes > 59:
            raise ValueError(f"offset {text!r} out of range")
        delta = dt.timedelta(hours=hours, minutes=minutes)
        return dt.timezone(-delta if m[1] == "-" else delta)
    try:
        return ZoneInfo(text.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {text!r}: an IANA name (Asia/Kolkata) or an offset (+05:30)") from None


def wall_zone(setting: str, time_zone: str = "", system_time_zone: str = "") -> dt.tzinfo | None:
    """The zone the source's DATETIMEs are wall-clock times in. ``setting``: an IANA name or an
    offset, or ``source``: the server's own (``@@global.time_zone``; ``SYSTEM``: the host's,
    ``@@system_time_zone``). None where the server names it by an abbreviation (IST, CEST: several
    zones, and the summer name differs from the winter one): not guessed."""
    if setting != "source":
        return zone_of(setting)
    name = system_time_zone if time_zone.upper() == "SYSTEM" else time_zone
    if _OFFSET.match(name) or name in _UTC_NAMES or "/" in name:
        try:
            return zone_of(name)
        except ValueError:
            return None
    return None


#: The columns of sales_data the star schema reads.
SALES_COLUMNS = ("rowid", "product_id", "customer_id", "price", "quantity", "timestamp")

#: total_price and price are DECIMAL(31,4): DB2's widest decimal, with the scale of money.
_MONEY_LIMIT = Decimal(10) ** (MONEY_DIGITS - MONEY_SCALE)
_BIGINT = 2**63
#: Money arithmetic is exact: products and sums of DECIMAL(31,4) values need more than the default
#: context's 28 digits, and a rounded total would pass the overflow check with a wrong value.
_EXACT = Context(prec=120)
_MONEY_STEP = Decimal(1).scaleb(-MONEY_SCALE)

_MONTHS = tuple(calendar.month_name)
_WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")


@dataclass(frozen=True)
class DimDate:
    dateid: int
    date: dt.date
    year: int
    quarter: int
    quartername: str
    month: int
    monthname: str
    day: int
    weekday: int  # 1 = Sunday ... 7 = Saturday, as DB2's and MySQL's DAYOFWEEK
    weekdayname: str

    def row(self) -> tuple[Any, ...]:
        return (self.dateid, self.date, self.year, self.quarter, self.quartername, self.month, self.monthname,
                self.day, self.weekday, self.weekdayname)


@functools.lru_cache(maxsize=4096)
def dim_date(d: dt.date) -> DimDate:
    quarter = (d.month - 1) // 3 + 1
    weekday = d.isoweekday() % 7 + 1
    return DimDate(dateid=d.year * 10000 + d.month * 100 + d.day, date=d, year=d.year, quarter=quarter,
                   quartername=f"Q{quarter}", month=d.month, monthname=_MONTHS[d.month], day=d.day,
                   weekday=weekday, weekdayname=_WEEKDAYS[weekday - 1])


@dataclass(frozen=True)
class Fact:
    rowid: int
    dateid: int
    date: dt.date
    product_id: int
    customer_id: int | None
    price: Decimal
    quantity: int
    total_price: Decimal

    def row(self) -> tuple[Any, ...]:
        return (self.rowid, self.dateid, self.product_id, self.customer_id, self.price, self.quantity,
                self.total_price)

    def agg_keys(self) -> tuple[tuple[int], tuple[int, int]]:
        """Its key in each aggregate, in AGGREGATES order (the shape's ``grouping`` in SQL)."""
        return (self.dateid,), (self.dateid // 100, self.product_id)


class InvalidFact(ValueError):
    """A sales row that can't make a valid fact; the message is the dead-letter reason."""


def _fits_money(value: Decimal) -> bool:
    return value.is_finite() and abs(value) < _MONEY_LIMIT and value == value.quantize(_MONEY_STEP, context=_EXACT)


def fact_from_row(row: Mapping[str, Any], zone: DayZone) -> Fact:
    """The fact for one sales row (a mapping of SALES_COLUMNS), or :class:`InvalidFact`."""
    return fact_from_values(tuple(row[c] for c in SALES_COLUMNS), zone)


def date_of(dateid: int) -> dt.date:
    return dt.date(dateid // 10000, dateid // 100 % 100, dateid % 100)


def fact_from_values(values: tuple[Any, ...], zone: DayZone) -> Fact:
    """The fact for one sales row given as values in SALES_COLUMNS order, or :class:`InvalidFact`."""
    rowid, product_id, customer_id, price, qty, ts = values
    if ts is None:
        raise InvalidFact("timestamp is NULL: a sale needs a date")
    if price is None:
        raise InvalidFact("price is NULL")
    if qty is None:
        raise InvalidFact("quantity is NULL")
    if qty < 0:
        raise InvalidFact(f"quantity is negative ({qty})")
    if product_id is None:
        raise InvalidFact("product_id is NULL")
    for name, v in (("rowid", rowid), ("product_id", product_id), ("customer_id", customer_id), ("quantity", qty)):
        if v is not None and not -_BIGINT <= v < _BIGINT:
            raise InvalidFact(f"{name} {v} does not fit a BIGINT")
    price = Decimal(price)
    if not _fits_money(price):
        raise InvalidFact(f"price {price} does not fit DECIMAL({MONEY_DIGITS},{MONEY_SCALE})")
    total = _EXACT.multiply(price, qty)
    if not _fits_money(total):
        raise InvalidFact(f"total_price {price} x {qty} = {total} overflows DECIMAL({MONEY_DIGITS},{MONEY_SCALE})")
    if isinstance(ts, dt.datetime):
        try:
            day = zone.day(ts)
        except OverflowError:  # 9999-12-31 23:00 UTC is in year 10000 east of UTC
            raise InvalidFact(f"timestamp {ts.isoformat()} has no date in {zone.key} (outside years 1-9999)") \
                from None
    else:
        day = ts
    dateid = day.year * 10000 + day.month * 100 + day.day
    return Fact(rowid=int(rowid), dateid=dateid, date=day, product_id=product_id, customer_id=customer_id,
                price=price, quantity=int(qty), total_price=total)


@dataclass
class AggDelta:
    sales: int = 0
    quantity: int = 0
    amount: Decimal = Decimal(0)

    def add(self, fact: Fact, sign: int) -> None:
        self.sales += sign
        self.quantity += sign * fact.quantity
        self.amount = _EXACT.add(self.amount, fact.total_price) if sign > 0 else \
            _EXACT.subtract(self.amount, fact.total_price)

    @property
    def is_zero(self) -> bool:
        return self.sales == 0 and self.quantity == 0 and self.amount == 0


@dataclass
class StarDelta:
    """What a batch does to the star schema."""

    fact_upserts: dict[int, Fact] = field(default_factory=dict)
    fact_deletes: set[int] = field(default_factory=set)
    #: per aggregate table's name, its nonzero deltas by key
    aggregates: dict[str, dict[tuple[int, ...], AggDelta]] = field(
        default_factory=lambda: {t.name: {} for t in AGGREGATES})
    dates: dict[int, DimDate] = field(default_factory=dict)
    invalid: dict[int, str] = field(default_factory=dict)  # rowid -> reason
    settled: set[int] = field(default_factory=set)  # rowids whose fact dead letters are resolved

    @property
    def shrinking(self) -> bool:
        """Some aggregate key loses sales: only those can become empty (and leave their date
        unused), so only then is removal worth looking at."""
        return any(a.sales < 0 for aggs in self.aggregates.values() for a in aggs.values())

    def add(self, fact: Fact, sign: int) -> None:
        for aggs, key in zip(self.aggregates.values(), fact.agg_keys(), strict=True):
            aggs.setdefault(key, AggDelta()).add(fact, sign)


def try_fact(values: tuple[Any, ...] | None, zone: DayZone) -> tuple[Fact | None, str | None]:
    if values is None:
        return None, None
    try:
        return fact_from_values(values, zone), None
    except InvalidFact as exc:
        return None, str(exc)


def star_delta(changes: Iterable[tuple[int, Fact | None, tuple[Any, ...] | None]], zone: DayZone) -> StarDelta:
    """The delta for ``(rowid, its current fact or None, its new values or None)`` per changed
    sales row. The current fact is what factsales holds (a valid fact of the old row); the new
    values are the row after the batch in SALES_COLUMNS order, None when it was deleted."""
    delta = StarDelta()
    for rowid, old_fact, new in changes:
        new_fact, reason = try_fact(new, zone)
        if old_fact is not None:
            delta.add(old_fact, -1)
        if new_fact is not None:
            delta.add(new_fact, +1)
            delta.fact_upserts[rowid] = new_fact
            delta.dates.setdefault(new_fact.dateid, dim_date(new_fact.date))
            delta.settled.add(rowid)
        else:
            delta.fact_deletes.add(rowid)
            if reason is not None:
                delta.invalid[rowid] = reason
            else:
                delta.settled.add(rowid)  # deleted: nothing left to fix
    delta.aggregates = {t: {k: v for k, v in aggs.items() if not v.is_zero} for t, aggs in delta.aggregates.items()}
    return delta


class ScratchBuilder:
    """The star schema from scratch: feed every sales row, stream the facts, then read the
    dimension and the aggregates (small: one row per day, one per month and product)."""

    def __init__(self, zone: DayZone) -> None:
        self.zone = zone
        self._aggs = StarDelta()
        self._dates: dict[int, DimDate] = {}
        self.invalid: list[tuple[Any, str]] = []  # (rowid, reason) of rows that make no fact
        self.facts = 0

    def add(self, values: tuple[Any, ...]) -> Fact | None:
        """Feed one sales row, values in SALES_COLUMNS order."""
        fact, reason = try_fact(values, self.zone)
        if reason is not None:
            self.invalid.append((values[0], reason))
        if fact is not None:
            self._aggs.add(fact, +1)
            self._dates.setdefault(fact.dateid, dim_date(fact.date))
        return fact

    def dimdate(self) -> list[tuple[Any, ...]]:
        return [d.row() for d in self._dates.values()]

    def aggregate(self, name: str) -> list[tuple[Any, ...]]:
        """The rows of the aggregate table ``name`` (key columns, then the measures)."""
        return [(*k, a.sales, a.quantity, a.amount) for k, a in self._aggs.aggregates[name].items()]

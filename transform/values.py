"""MySQL value -> PostgreSQL value, for rows read from the binlog and from a snapshot (pure).

The two readers hand us different Python forms of the same value (the binlog decoder returns a
``set`` for SET columns and ``None`` for zero dates, the snapshot's client returns strings), so
each column gets one converter, built once per table, that accepts both and returns the one form
staging stores. A value with no faithful PostgreSQL form raises :class:`Unrepresentable`; the
caller dead-letters the row.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from transform.schema import Column, Table

Converter = Callable[[Any], Any]

#: Why the binlog decoder returned None although the column had a value.
ZERO_DATE_REASONS = frozenset(
    {"out of date range", "out of datetime range", "out of datetime2 range"}
)
EMPTY_SET_REASON = "empty set"

_UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1)


class Unrepresentable(ValueError):
    """A source value that PostgreSQL cannot hold faithfully; the message says which and why."""


def enum_members(column_type: str) -> tuple[str, ...]:
    """The members of ``enum('a','b')`` or ``set('a','b')``, in definition order."""
    inner = column_type[column_type.index("(") + 1 : column_type.rindex(")")]
    return tuple(m.replace("''", "'").replace("\\\\", "\\") for m in re.findall(r"'((?:[^']|'')*)'", inner))


def _text(col: Column) -> Converter:
    def conv(v: Any) -> Any:
        if isinstance(v, bytes | bytearray):
            v = bytes(v).decode("utf-8")
        if "\x00" in v:
            raise Unrepresentable(f"column {col.name!r}: text contains a NUL character")
        return v

    return conv


def _set(col: Column) -> Converter:
    order = {m: i for i, m in enumerate(enum_members(col.column_type))}

    def conv(v: Any) -> Any:
        members = v.split(",") if isinstance(v, str) else list(v)
        members = [m for m in members if m != ""]
        return ",".join(sorted(members, key=lambda m: order.get(m, len(order))))

    return conv


def _json(col: Column) -> Converter:
    def decode(o: Any) -> Any:
        if isinstance(o, bytes):
            return o.decode("utf-8")
        if isinstance(o, dict):
            return {decode(k): decode(x) for k, x in o.items()}
        if isinstance(o, list):
            return [decode(x) for x in o]
        return o

    def conv(v: Any) -> Any:
        text = v if isinstance(v, str) else json.dumps(decode(v))
        if "\\u0000" in text or "\x00" in text:
            raise Unrepresentable(f"column {col.name!r}: JSON contains a NUL character")
        return text

    return conv


def _binary_fixed(col: Column) -> Converter:
    width = col.char_length or 0

    def conv(v: Any) -> Any:
        b = v.encode("utf-8") if isinstance(v, str) else bytes(v)
        # The binlog drops the trailing zero bytes of BINARY(n); MySQL itself pads with them.
        return b.ljust(width, b"\x00")

    return conv


def _bytes(v: Any) -> Any:
    return v.encode("utf-8") if isinstance(v, str) else bytes(v)


def _bit(col: Column) -> Converter:
    width = col.precision or 1

    def conv(v: Any) -> Any:
        if isinstance(v, str):
            return v.rjust(width, "0")
        if isinstance(v, int):
            return format(v, "b").rjust(width, "0")
        return format(int.from_bytes(bytes(v), "big"), "b").rjust(width, "0")

    return conv


def _zero_date(col: Column, v: Any) -> Unrepresentable:
    return Unrepresentable(f"column {col.name!r}: MySQL zero or invalid date {v!r} has no PostgreSQL form")


def _date(col: Column) -> Converter:
    def conv(v: Any) -> Any:
        if isinstance(v, dt.datetime):
            return v.date()
        if isinstance(v, dt.date):
            return v
        raise _zero_date(col, v)

    return conv


def _datetime(col: Column) -> Converter:
    def conv(v: Any) -> Any:
        if isinstance(v, dt.datetime):
            return v
        raise _zero_date(col, v)

    return conv


def _timestamp(col: Column) -> Converter:
    def conv(v: Any) -> Any:
        if not isinstance(v, dt.datetime):
            raise _zero_date(col, v)
        if v == _EPOCH:
            # TIMESTAMP 0 is MySQL's zero timestamp; its real range starts one second later.
            raise _zero_date(col, "0000-00-00 00:00:00")
        return v.replace(tzinfo=_UTC) if v.tzinfo is None else v.astimezone(_UTC)

    return conv


def _time(col: Column) -> Converter:
    def conv(v: Any) -> Any:
        if isinstance(v, dt.timedelta):
            return v
        if isinstance(v, dt.time):
            return dt.timedelta(hours=v.hour, minutes=v.minute, seconds=v.second, microseconds=v.microsecond)
        raise Unrepresentable(f"column {col.name!r}: TIME value {v!r} has no PostgreSQL form")

    return conv


def _year(v: Any) -> Any:
    # The binlog decoder adds 1900 to the stored byte, so YEAR 0000 arrives as 1900.
    year = int(v)
    return 0 if year == 1900 else year


def _identity(v: Any) -> Any:
    return v


def column_converter(col: Column) -> Converter:
    """The converter for one column (not called for NULL)."""
    t = col.data_type.lower()
    if t in ("char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum"):
        return _text(col)
    makers: dict[str, Callable[[Column], Converter]] = {
        "set": _set, "json": _json, "binary": _binary_fixed, "bit": _bit,
        "date": _date, "datetime": _datetime, "timestamp": _timestamp, "time": _time,
    }
    if t in makers:
        return makers[t](col)
    if t in ("varbinary", "tinyblob", "blob", "mediumblob", "longblob", "geometry"):
        return _bytes
    if t == "year":
        return _year
    return _identity


class RowConverter:
    """Converts whole rows of one table, from a binlog dict or a snapshot tuple."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self._names = table.column_names
        self._convs = tuple(column_converter(c) for c in table.columns)
        self._empty_set = tuple(c.data_type.lower() == "set" for c in table.columns)

    def from_binlog(self, values: Mapping[str, Any], none_reasons: Mapping[str, str]) -> tuple[Any, ...]:
        out: list[Any] = []
        for name, conv, is_set in zip(self._names, self._convs, self._empty_set, strict=True):
            v = values.get(name)
            if v is None:
                reason = none_reasons.get(name)
                if reason in ZERO_DATE_REASONS:
                    raise _zero_date(self.table.column(name), "0000-00-00")
                if reason == EMPTY_SET_REASON and is_set:
                    out.append("")
                    continue
                out.append(None)
                continue
            try:
                out.append(conv(v))
            except (UnicodeDecodeError, ValueError) as exc:
                if isinstance(exc, Unrepresentable):
                    raise
                raise Unrepresentable(f"column {name!r}: {exc}") from exc
        return tuple(out)

    def with_key_of(self, row: tuple[Any, ...], before: Mapping[str, Any]) -> tuple[Any, ...]:
        """``row`` with the primary key of the binlog image ``before``: an update's old image is
        only needed for its key, so one whose other values staging can't hold still applies."""
        out = list(row)
        for name in self.table.primary_key:
            i = self._names.index(name)
            v = before.get(name)
            out[i] = None if v is None else self._convs[i](v)
        return tuple(out)

    def from_snapshot(self, values: Sequence[Any]) -> tuple[Any, ...]:
        out: list[Any] = []
        for conv, v in zip(self._convs, values, strict=True):
            if v is None:
                out.append(None)
                continue
            try:
                out.append(conv(v))
            except (UnicodeDecodeError, ValueError) as exc:
                if isinstance(exc, Unrepresentable):
                    raise
                raise Unrepresentable(f"{exc}") from exc
        return tuple(out)

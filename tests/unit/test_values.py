"""MySQL -> PostgreSQL types and values, for both readers' forms of a value."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from transform.schema import Column, Table, UnsupportedType, pg_type
from transform.values import RowConverter, Unrepresentable, enum_members


def col(name: str, data_type: str, column_type: str | None = None, **kw: object) -> Column:
    return Column(name=name, data_type=data_type, column_type=column_type or data_type, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("column", "expected"), [
    (col("a", "tinyint", "tinyint(3) unsigned"), "smallint"),
    (col("a", "smallint", "smallint(5) unsigned"), "integer"),
    (col("a", "int", "int(10) unsigned"), "bigint"),
    (col("a", "int", "int(11)"), "integer"),
    (col("a", "bigint", "bigint(20) unsigned"), "numeric(20,0)"),
    (col("a", "decimal", "decimal(20,6)", precision=20, scale=6), "numeric(20,6)"),
    (col("a", "datetime", fsp=6), "timestamp(6)"),
    (col("a", "timestamp", fsp=3), "timestamptz(3)"),
    (col("a", "time", fsp=0), "interval(0)"),
    (col("a", "bit", "bit(10)", precision=10), "bit varying(10)"),
    (col("a", "json"), "jsonb"),
    (col("a", "enum", "enum('x','y')"), "text"),
    (col("a", "longblob"), "bytea"),
    (col("a", "year", "year(4)"), "smallint"),
])
def test_every_type_has_a_wide_enough_postgresql_type(column: Column, expected: str) -> None:
    assert pg_type(column) == expected


def test_unknown_type_is_refused_by_column_name() -> None:
    with pytest.raises(UnsupportedType, match="'weird'"):
        pg_type(col("weird", "vector", "vector(3)"))


TABLE = Table("t", (
    col("id", "int"), col("s", "set", "set('x','y','z')"), col("b", "binary", "binary(4)", char_length=4),
    col("bits", "bit", "bit(10)", precision=10), col("ts", "timestamp"), col("d", "date"),
    col("y", "year"), col("j", "json"), col("v", "varchar"),
), ("id",))


def test_binlog_and_snapshot_forms_convert_to_the_same_row() -> None:
    conv = RowConverter(TABLE)
    binlog = conv.from_binlog(
        {"id": 1, "s": {"z", "x"}, "b": b"ab", "bits": "0000000101", "ts": dt.datetime(2020, 1, 1, 12),
         "d": dt.date(2020, 2, 3), "y": 2155, "j": '{"a": 1}', "v": "h😀"}, {})
    snap = conv.from_snapshot((1, "x,z", b"ab\x00\x00", b"\x00\x05", dt.datetime(2020, 1, 1, 12),
                               dt.date(2020, 2, 3), 2155, '{"a": 1}', "h😀"))
    assert binlog == snap
    assert binlog[1] == "x,z" and binlog[2] == b"ab\x00\x00" and binlog[3] == "0000000101"
    assert binlog[4] == dt.datetime(2020, 1, 1, 12, tzinfo=dt.UTC)


def test_empty_set_is_empty_text_and_null_stays_null() -> None:
    conv = RowConverter(TABLE)
    row = conv.from_binlog({"id": 1, "s": None, "v": None}, {"s": "empty set", "v": "null"})
    assert row[1] == "" and row[8] is None


@pytest.mark.parametrize(("values", "reasons"), [
    ({"id": 1, "d": None}, {"d": "out of date range"}),
    ({"id": 1, "ts": dt.datetime(1970, 1, 1)}, {}),
    ({"id": 1, "v": "a\x00b"}, {}),
    ({"id": 1, "j": '{"a": "\\u0000"}'}, {}),
])
def test_values_without_a_faithful_form_are_refused_with_the_column(values: dict[str, object],
                                                                    reasons: dict[str, str]) -> None:
    with pytest.raises(Unrepresentable, match="column '"):
        RowConverter(TABLE).from_binlog(values, reasons)


def test_snapshot_zero_date_is_refused() -> None:
    row = [1, "", b"", b"\x00", None, "0000-00-00", None, None, None]
    with pytest.raises(Unrepresentable, match="zero or invalid date"):
        RowConverter(TABLE).from_snapshot(row)


def test_year_zero_survives_the_binlog_offset() -> None:
    assert RowConverter(TABLE).from_binlog({"id": 1, "y": 1900}, {})[6] == 0


def test_decimal_and_big_unsigned_pass_unchanged() -> None:
    t = Table("n", (col("id", "bigint", "bigint unsigned"), col("d", "decimal", "decimal(30,10)")), ("id",))
    row = RowConverter(t).from_binlog({"id": 2**64 - 1, "d": Decimal("-12345678901234567890.0123456789")}, {})
    assert row == (2**64 - 1, Decimal("-12345678901234567890.0123456789"))


def test_enum_members_parse_quotes() -> None:
    assert enum_members("set('a','it''s','c,d')") == ("a", "it's", "c,d")

"""The binlog row decoders (the C one and the generated Python one, each test run through both) on
hand-made row images, and the two held equal on arbitrary ones (the differential test against the
library on real binlogs is tests/integration/test_rowcodec.py)."""

from __future__ import annotations

import datetime as dt
import struct
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.capture.binlog_fixes import MYSQL_LATIN1, install
from transform import rowcodec
from transform.rowcodec import (
    DATE,
    LONG,
    LONGLONG,
    NEWDECIMAL,
    TIMESTAMP2,
    TINY,
    VARCHAR,
    BinlogColumn,
    compile_decoder,
    written_under_another_type,
)
from transform.schema import Column, Table

T = Table("t", (Column("id", "int", "int(11)", False), Column("v", "varchar", "varchar(10)")), ("id",))
COLS = [BinlogColumn(LONG), BinlogColumn(VARCHAR, max_length=40)]
BOTH = pytest.mark.parametrize("native", [True, False], ids=["C", "python"])


def image(nulls: int, *parts: bytes) -> bytes:
    return bytes([nulls]) + b"".join(parts)


@BOTH
def test_rows_nulls_and_a_bad_value_that_does_not_stop_the_walk(native: bool) -> None:
    decode = compile_decoder(T, COLS, native)
    assert decode is not None
    body = (image(0, struct.pack("<i", -5), b"\x03abc") + image(0b10, struct.pack("<i", 7))
            + image(0, struct.pack("<i", 8), b"\x03a\x00b") + image(0, struct.pack("<i", 9), b"\x02\xc3\xa9"))
    assert decode(body) == [((-5, "abc"), None), ((7, None), None),
                            ((8, None), "column 'v': text contains a NUL character"), ((9, "é"), None)]


def test_a_table_map_that_does_not_match_the_definition_keeps_the_library() -> None:
    assert compile_decoder(T, COLS[:1]) is None  # a column more or less
    assert compile_decoder(T, [BinlogColumn(LONGLONG), COLS[1]]) is None  # int vs bigint
    assert compile_decoder(T, [BinlogColumn(LONG, unsigned=True), COLS[1]]) is None
    assert compile_decoder(T, [COLS[0], BinlogColumn(VARCHAR, max_length=40, encoding="")]) is None


def mysql_decimal(value: Decimal, precision: int, scale: int) -> bytes:
    """MySQL's binary DECIMAL, written from its documented layout (strings/decimal.c)."""
    sizes = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)
    text = f"{value.copy_abs():.{scale}f}"  # copy_abs: no context rounding
    whole, _, frac = text.partition(".")
    whole = whole.rjust(precision - scale, "0")
    out = b""
    lead = (precision - scale) % 9
    if lead:
        out += int(whole[:lead]).to_bytes(sizes[lead], "big")
    for i in range(lead, len(whole), 9):
        out += int(whole[i:i + 9]).to_bytes(4, "big")
    for i in range(0, scale - scale % 9, 9):
        out += int(frac[i:i + 9]).to_bytes(4, "big")
    if scale % 9:
        out += int(frac[scale - scale % 9:]).to_bytes(sizes[scale % 9], "big")
    raw = bytearray(out)
    if value.is_signed():
        raw = bytearray(b ^ 0xFF for b in raw)
    raw[0] ^= 0x80
    return bytes(raw)


@BOTH
@given(st.decimals(min_value=Decimal("-99999999999999999999.9999999999"),
                   max_value=Decimal("99999999999999999999.9999999999"), places=10, allow_nan=False))
def test_decimals_decode_to_their_value_and_scale(native: bool, value: Decimal) -> None:
    t = Table("t", (Column("d", "decimal", "decimal(30,10)", precision=30, scale=10),), ("d",))
    decode = compile_decoder(t, [BinlogColumn(NEWDECIMAL, precision=30, decimals=10)], native)
    assert decode is not None
    [(row, err)] = decode(image(0, mysql_decimal(value, 30, 10)))
    assert err is None and row[0] == value and row[0].as_tuple().exponent == -10


@BOTH
def test_zero_dates_and_timestamps_are_refused_with_the_column_named(native: bool) -> None:
    t = Table("t", (Column("d", "date", "date"), Column("ts", "timestamp", "timestamp(6)", fsp=6)), ("d",))
    decode = compile_decoder(t, [BinlogColumn(DATE), BinlogColumn(TIMESTAMP2, fsp=6)], native)
    assert decode is not None
    day = (2024 << 9 | 2 << 5 | 29).to_bytes(3, "little")
    ts = (86400).to_bytes(4, "big") + (123456).to_bytes(3, "big")
    assert decode(image(0, day, ts)) == [((dt.date(2024, 2, 29), dt.datetime(1970, 1, 2, 0, 0, 0, 123456,
                                                                             tzinfo=dt.UTC)), None)]
    [(row, err)] = decode(image(0, b"\x00\x00\x00", bytes(7)))
    assert row == (None, None) and err == "column 'd': MySQL zero or invalid date '0000-00-00' has no PostgreSQL form"


def test_the_compiled_decoder_was_built() -> None:
    """The README's set-up builds it (a C compiler and Python's headers): a run without it would
    test only the Python decoder."""
    assert rowcodec.NATIVE, "transform._rowcodec is missing: pip install -e . did not build it"


@st.composite
def plan_and_body(draw: st.DrawFn) -> tuple[list[rowcodec.Step], bytes]:
    """A plan of any columns and row images of arbitrary bytes of the right lengths: values that
    are no date, invalid text, odd decimal digits, NaNs."""
    kinds = st.sampled_from([
        st.tuples(st.just(rowcodec.K_INT), st.sampled_from([1, 2, 3, 4, 8]), st.integers(0, 1)),
        st.tuples(st.just(rowcodec.K_FLOAT), st.sampled_from([4, 8]), st.just(0)),
        st.integers(1, 65).flatmap(
            lambda p: st.tuples(st.just(rowcodec.K_DECIMAL), st.just(p), st.integers(0, min(p, 30)))),
        st.tuples(st.just(rowcodec.K_TEXT), st.integers(1, 4), st.just(0)),
        st.tuples(st.just(rowcodec.K_BYTES), st.integers(1, 4), st.just(0)),
        st.tuples(st.sampled_from([rowcodec.K_DATE, rowcodec.K_DATETIME2, rowcodec.K_TIMESTAMP2]),
                  st.integers(0, 6), st.just(0)),
    ])
    names = st.sampled_from(["a", "b", "ü col", "it's"])
    encodings = st.sampled_from(["utf-8", MYSQL_LATIN1, "utf-16-be", "cp1251", "ascii"])
    plan = [(*draw(draw(kinds)), draw(names), draw(encodings)) for _ in range(draw(st.integers(1, 9)))]
    body = b""
    for _ in range(draw(st.integers(1, 3))):
        nulls = draw(st.integers(0, 2 ** len(plan) - 1)) if draw(st.booleans()) else 0
        body += nulls.to_bytes((len(plan) + 7) // 8, "little")
        for i, (kind, a, b, _, _) in enumerate(plan):
            if nulls >> i & 1:
                continue
            if kind in (rowcodec.K_TEXT, rowcodec.K_BYTES):
                raw = draw(st.binary(max_size=min(300, 2 ** (8 * a) - 1))
                           | st.text(max_size=40).map(lambda t: t.encode("utf-8")))
                body += len(raw).to_bytes(a, "little") + raw
            else:
                width = {rowcodec.K_INT: a, rowcodec.K_FLOAT: a, rowcodec.K_DATE: 3,
                         rowcodec.K_DATETIME2: 5 + (a + 1) // 2, rowcodec.K_TIMESTAMP2: 4 + (a + 1) // 2}.get(kind)
                if kind == rowcodec.K_DECIMAL:
                    width = rowcodec._decimal_reader(a, b)[1]
                body += draw(st.binary(min_size=width, max_size=width))
    return plan, body


def outcome(decode: rowcodec.RowsDecoder, body: bytes) -> str:
    try:
        return repr(decode(body))  # repr: NaN, -0.0, a Decimal's exponent and a datetime's zone count
    except Exception as exc:
        return f"raised {type(exc).__name__}"


@given(plan_and_body())
def test_the_compiled_decoder_decodes_as_the_python_one(case: tuple[list[rowcodec.Step], bytes]) -> None:
    install()  # MySQL's latin1 codec
    plan, body = case
    assert outcome(rowcodec._native.Decoder(plan), body) == outcome(rowcodec._python_decoder("t", plan), body)


def test_a_decoder_without_columns_refuses_instead_of_walking_forever() -> None:
    Decoder = rowcodec._native.Decoder
    with pytest.raises(ValueError, match="at least one column"):
        Decoder([])
    with pytest.raises(ValueError, match="without a plan"):
        Decoder.__new__(Decoder)(b"\x00")
    again = Decoder([(rowcodec.K_INT, 1, 1, "a", "")])
    again.__init__([(rowcodec.K_INT, 2, 1, "a", "")])  # a second plan replaces the first
    assert again(b"\x00\x01\x02") == [((0x201,), None)]


def build(native: bool, plan: list[rowcodec.Step]) -> rowcodec.RowsDecoder | str:
    try:
        return rowcodec._native.Decoder(plan) if native else rowcodec._python_decoder("t", plan)
    except ValueError:
        return "refused"


@given(st.lists(st.tuples(st.integers(0, 9), st.integers(-3, 200), st.integers(-3, 200), st.just("c"),
                          st.just("utf-8")), min_size=1, max_size=4),
       st.binary(max_size=300))
def test_plans_out_of_range_are_refused_by_both_decoders_and_any_bytes_decode_alike(
        plan: list[rowcodec.Step], body: bytes) -> None:
    """A table map's metadata is the server's, read from the wire: a DECIMAL of precision 144
    overflowed the compiled decoder's stack, and a scale above the precision decoded otherwise
    than the Python twin (#30, item 10). Any plan is refused by both or by neither, and the
    plans both take decode any bytes alike (or both refuse them)."""
    native, python = build(True, plan), build(False, plan)
    assert (native == "refused") == (python == "refused") == any(rowcodec.step_error(s) for s in plan)
    if not isinstance(native, str) and not isinstance(python, str):  # a body cut short: both refuse it
        assert outcome(native, body).split()[0] == outcome(python, body).split()[0]
        if not outcome(native, body).startswith("raised"):
            assert outcome(native, body) == outcome(python, body)


def test_a_decimal_beyond_the_servers_limits_is_left_to_the_library() -> None:
    table = Table("t", (Column("d", "decimal", "decimal(65,30)", True, precision=65, scale=30),), ("d",))
    for precision, decimals in ((144, 2), (10, 12), (65, 31)):
        bc = BinlogColumn(rowcodec.NEWDECIMAL, precision=precision, decimals=decimals)
        assert rowcodec.decoder_plan(table, [bc]) is None
    assert rowcodec.decoder_plan(table, [BinlogColumn(rowcodec.NEWDECIMAL, precision=65, decimals=30)]) is not None


def _col(name: str, data_type: str, column_type: str = "") -> Column:
    return Column(name, data_type, column_type or data_type)


ITEMS = Table("items", (_col("id", "int"), _col("v", "int"), _col("n", "varchar", "varchar(20)")), ("id",))


def test_a_table_map_with_a_column_of_another_kind_was_written_under_another_definition() -> None:
    """#30 item 8: rows read after a later ALTER turned an INT into text are not decoded by it."""
    why = written_under_another_type(ITEMS, [("id", LONG), ("v", LONG), ("n", LONG)])
    assert why and "column n held an integer" in why and "varchar(20)" in why
    assert written_under_another_type(ITEMS, [(None, LONG), (None, LONG), (None, LONG)]), "by place, no names"
    assert written_under_another_type(ITEMS, [("id", LONG), ("v", LONG), ("n", VARCHAR)]) is None
    assert written_under_another_type(ITEMS, [("id", LONGLONG), ("v", TINY), ("n", 252)]) is None, "same kinds"
    assert written_under_another_type(ITEMS, [(None, LONG), (None, LONG)]) is None, "other count, no names: no claim"
    assert written_under_another_type(ITEMS, [("id", LONG), ("gone", 245), ("n", VARCHAR)]) is None, "not followed"
    assert written_under_another_type(ITEMS, [("id", LONG), ("v", 245), ("n", VARCHAR)]) is None, "JSON: no claim"
    dated = Table("d", (_col("id", "int"), _col("at", "datetime", "datetime(6)")), ("id",))
    assert written_under_another_type(dated, [("id", LONG), ("at", DATE)]), "a DATE is not a DATETIME"

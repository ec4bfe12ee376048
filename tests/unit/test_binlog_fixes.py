"""TIME(fsp) binlog decoding against an encoder that follows the server's C code."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from cdc.capture.binlog_fixes import decode_time2, time2_size

MAX = dt.timedelta(hours=838, minutes=59, seconds=59)


def c_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def c_mod(a: int, b: int) -> int:
    return a - b * c_div(a, b)


def encode(value: dt.timedelta, fsp: int) -> bytes:
    """my_time_packed_to_binary(TIME_to_longlong_time_packed(value), fsp)."""
    neg = value < dt.timedelta(0)
    v = -value if neg else value
    total = v.days * 86400 + v.seconds
    hms = ((total // 3600) << 12) | (((total % 3600) // 60) << 6) | (total % 60)
    nr = (hms << 24) + v.microseconds
    nr = -nr if neg else nr
    int_part, frac_part = nr >> 24, c_mod(nr, 1 << 24)
    if fsp in (5, 6):
        return (nr + 0x800000000000).to_bytes(6, "big")
    head = (int_part + 0x800000).to_bytes(3, "big")
    if fsp in (1, 2):
        return head + (c_div(frac_part, 10000) & 0xFF).to_bytes(1, "big")
    if fsp in (3, 4):
        return head + (c_div(frac_part, 100) & 0xFFFF).to_bytes(2, "big")
    return head


def truncate(value: dt.timedelta, fsp: int) -> dt.timedelta:
    unit = 10 ** (6 - fsp)
    micros = value // dt.timedelta(microseconds=1)
    return dt.timedelta(microseconds=c_div(micros, unit) * unit)


@given(st.timedeltas(-MAX, MAX), st.integers(0, 6))
def test_time2_decodes_what_the_server_encodes(value: dt.timedelta, fsp: int) -> None:
    value = truncate(value, fsp)
    raw = encode(value, fsp)
    assert len(raw) == time2_size(fsp)
    assert decode_time2(raw, fsp) == value


def test_small_negative_fractions() -> None:
    for fsp, value in [(6, dt.timedelta(microseconds=-1)), (2, dt.timedelta(milliseconds=-10)),
                       (4, dt.timedelta(microseconds=-100)), (1, dt.timedelta(milliseconds=-1500))]:
        assert decode_time2(encode(value, fsp), fsp) == value


def test_mysql_latin1_decodes_every_byte_as_the_server_does() -> None:
    """cp1252, with the five bytes it leaves undefined kept as C1 controls (as MySQL converts them)."""
    from cdc.capture.binlog_fixes import MYSQL_LATIN1, install

    install()
    text = bytes(range(256)).decode(MYSQL_LATIN1)
    assert len(text) == 256
    assert text[0x80] == "€" and text[0xE9] == "é" and text[0x41] == "A"
    assert [text[b] for b in (0x81, 0x8D, 0x8F, 0x90, 0x9D)] == ["\x81", "\x8d", "\x8f", "\x90", "\x9d"]
    assert text.encode(MYSQL_LATIN1) == bytes(range(256))


@given(st.lists(st.tuples(st.sampled_from([None, "id", "a", "b", "c", "d"]), st.booleans()), max_size=8),
       st.one_of(st.none(), st.just("given")))
def test_our_table_init_is_the_librarys_without_its_cost(cols: list[tuple[str | None, bool]], given_key: str | None
                                                        ) -> None:
    from pymysqlreplication.column import Column
    from pymysqlreplication.table import Table

    from cdc.capture import binlog_fixes

    columns = []
    for name, primary in cols:
        c = Column.__new__(Column)
        c.__dict__.update(type=3, name=name, unsigned=False, is_primary=primary, charset_id=None)
        columns.append(c)
    ours, theirs = Table.__new__(Table), Table.__new__(Table)
    binlog_fixes._table_init(ours, 7, "sales", "t", columns, given_key, True)
    binlog_fixes._library_table_init(theirs, 7, "sales", "t", columns, given_key, True)
    assert ours.__dict__ == theirs.__dict__
    ours._private = theirs._private = 1  # type: ignore[attr-defined]  # not part of .data
    assert binlog_fixes._table_data(ours) == binlog_fixes._library_table_data.fget(theirs) == {
        "table_id": 7, "schema": "sales", "table": "t", "columns": columns, "primary_key": ours.primary_key,
        "column_name_flag": True}


def test_the_readers_filters_are_read_again_when_they_are_other_objects() -> None:
    from cdc.capture import binlog_fixes

    one = {"only_tables": ["a"], "only_schemas": ["sales"], "freeze_schema": False}
    first = binlog_fixes._filters(one)
    assert first == binlog_fixes._filters(dict(one)) and "['a']" in first and "['sales']" in first
    other = binlog_fixes._filters({**one, "only_tables": ["b"]})
    assert "['b']" in other and "['a']" not in other
    assert binlog_fixes._filters(one) == first
    one["only_tables"].append("c")  # changed in place: not last time's
    assert "['a', 'c']" in binlog_fixes._filters(one)


def _field(kind: int, value: bytes) -> bytes:
    n = len(value)
    size = bytes([n]) if n < 0xFB else b"\xfc" + n.to_bytes(2, "little")
    return bytes([kind]) + size + value


@given(st.lists(st.tuples(st.sampled_from([1, 2, 4, 8, 12, 13, 64, 0x80, 200]), st.binary(max_size=300)),
                max_size=8))
def test_optional_metadata_fields_the_library_does_not_know_are_left_out_by_their_length(
        fields: list[tuple[int, bytes]]) -> None:
    """MySQL 9's TABLE_MAP of a table with a VECTOR column carries field type 64: the library
    raised and the stream died at it. Fields it knows (1-12) stay, byte for byte, in order."""
    from cdc.capture.binlog_fixes import known_optional_metadata

    data = b"".join(_field(k, v) for k, v in fields)
    assert known_optional_metadata(data) == b"".join(_field(k, v) for k, v in fields if 1 <= k <= 12)
    if data:
        assert known_optional_metadata(data[:-1] if fields[-1][1] else data + b"\x04") is None, "cut short: as it is"

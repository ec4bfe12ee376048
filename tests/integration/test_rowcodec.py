"""The compiled row decoder (transform.rowcodec) against mysql-replication + RowConverter, on the
same real binlog: every row change must come out identical, values, errors and keys."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import threading
from decimal import Decimal
from typing import Any

import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.capture import fast_events, mysql
from cdc.capture.binlog_fixes import MYSQL_LATIN1
from cdc.capture.flavor import Flavor
from cdc.capture.source import BinlogSource
from cdc.settings import Settings
from tests.helpers import execute
from transform.model import Heartbeat, Op, Position, RowChange, TxnChunk

Conn = pymysql.connections.Connection

FAST_TYPES = """CREATE TABLE fast_types (
  id INT PRIMARY KEY,
  ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, su SMALLINT UNSIGNED, mi MEDIUMINT, mu MEDIUMINT UNSIGNED,
  i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED, f FLOAT, db DOUBLE,
  d1 DECIMAL(30,10), d2 DECIMAL(65,30), d3 DECIMAL(4,4), d4 DECIMAL(10,0), d5 DECIMAL(12,2),
  dd DATE, dt0 DATETIME, dt3 DATETIME(3), dt6 DATETIME(6), ts0 TIMESTAMP NULL DEFAULT NULL,
  ts1 TIMESTAMP(1) NULL DEFAULT NULL, ts6 TIMESTAMP(6) NULL DEFAULT NULL,
  c CHAR(10), vc VARCHAR(50), vl VARCHAR(300), l1 VARCHAR(20) CHARACTER SET latin1,
  tt TINYTEXT, tx TEXT, mt MEDIUMTEXT, tb TINYBLOB, bl BLOB
) CHARACTER SET utf8mb4"""
COLUMNS = ["id", "ti", "tu", "si", "su", "mi", "mu", "i", "iu", "bi", "bu", "f", "db", "d1", "d2", "d3", "d4", "d5",
           "dd", "dt0", "dt3", "dt6", "ts0", "ts1", "ts6", "c", "vc", "vl", "l1", "tt", "tx", "mt", "tb", "bl"]

TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=50)
LATIN1 = st.text(bytes(range(1, 256)).decode(MYSQL_LATIN1), max_size=20)  # what MySQL's latin1 holds


def dec(digits: int, places: int) -> st.SearchStrategy[Decimal]:
    top = Decimal("9" * (digits - places) + "." + "9" * places)  # exact: no context rounding
    return st.decimals(min_value=-top, max_value=top, places=places, allow_nan=False).filter(
        lambda d: d.copy_abs().compare_total(top) <= 0)


def ints(bits: int, unsigned: bool) -> st.SearchStrategy[int]:
    return st.integers(0, 2**bits - 1) if unsigned else st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


VALUES = {
    "ti": ints(8, False), "tu": ints(8, True), "si": ints(16, False), "su": ints(16, True), "mi": ints(24, False),
    "mu": ints(24, True), "i": ints(32, False), "iu": ints(32, True), "bi": ints(64, False), "bu": ints(64, True),
    "f": st.floats(width=32, allow_nan=False, allow_infinity=False),
    "db": st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300),
    "d1": dec(30, 10), "d2": dec(65, 30), "d3": dec(4, 4), "d4": dec(10, 0), "d5": dec(12, 2),
    "dd": st.dates(dt.date(1000, 1, 1), dt.date(9999, 12, 31)),
    "dt0": st.datetimes(dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31)).map(lambda d: d.replace(microsecond=0)),
    "dt3": st.datetimes(dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31)).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
    "dt6": st.datetimes(dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999)),
    "ts0": st.datetimes(dt.datetime(1970, 1, 1, 0, 0, 1), dt.datetime(2038, 1, 19, 3, 14, 7)).map(
        lambda d: d.replace(microsecond=0)),
    "ts1": st.datetimes(dt.datetime(1970, 1, 1, 0, 0, 1), dt.datetime(2038, 1, 19, 3, 14, 7)).map(
        lambda d: d.replace(microsecond=d.microsecond // 100000 * 100000)),
    "ts6": st.datetimes(dt.datetime(1970, 1, 1, 0, 0, 1), dt.datetime(2038, 1, 19, 3, 14, 7, 999999)),
    "c": TEXT.map(lambda t: t[:10].rstrip(" ")), "vc": TEXT,
    "vl": st.text(max_size=300).filter(lambda t: "\x00" not in t),
    "l1": LATIN1, "tt": TEXT, "tx": TEXT, "mt": TEXT, "tb": st.binary(max_size=50), "bl": st.binary(max_size=300),
}
ROWS = st.fixed_dictionaries({k: st.none() | v for k, v in VALUES.items()})
_ids = itertools.count(1)


def insert(source: Conn, row_id: int, row: dict[str, Any]) -> None:
    marks = ", ".join(["%s"] * len(COLUMNS))
    with source.cursor() as cur:
        cur.execute(f"INSERT INTO fast_types ({', '.join(COLUMNS)}) VALUES ({marks})",
                    [row_id, *(row[c] for c in COLUMNS[1:])])


def end_position(source: Conn) -> Position:
    with source.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
    assert row is not None
    return Position(str(row[0]), int(row[1]))


def source_of(settings: Settings, names: list[str], start: Position, **options: Any) -> BinlogSource:
    """A binlog source of the tables ``names`` from ``start``, their definitions read now."""
    conn = mysql.connect(settings)
    try:
        tables = {n: mysql.read_table(conn, settings.source.database, n) for n in names}
        flavor: Flavor = mysql.flavor(conn)
    finally:
        conn.close()
    return BinlogSource(settings, tables, flavor, start, **options)


def read(settings: Settings, start: Position, end: Position, fast: bool, native: bool | None = None
         ) -> tuple[list[RowChange], BinlogSource]:
    src = source_of(settings, ["fast_types"], start, fast_decode=fast, native=native)
    changes: list[RowChange] = []
    for item in src.chunks(threading.Event()):
        at = item.commit if isinstance(item, TxnChunk) else item.position if isinstance(item, Heartbeat) else None
        if isinstance(item, TxnChunk):
            changes.extend(item.changes)
        # Past the end: our last commit, or (events of other databases came last) an idle heartbeat.
        if at is not None and (at.file, at.pos) >= (end.file, end.pos):
            break
    return changes, src


def compiled(src: BinlogSource) -> int:
    return sum(1 for _, decoder in src._decoders.values() if decoder is not None)


def compare(settings: Settings, source: Conn, start: Position) -> list[RowChange]:
    """The same binlog read five ways: the compiled decoder in C and in Python, the library's
    decoding, and (cdc.capture.fast_events off) all through the library's event objects."""
    end = end_position(source)
    hits = fast_events.fast_event_hits
    fast, src = read(settings, start, end, fast=True)
    assert fast_events.fast_event_hits > hits  # the rows events were read by the fast path
    python, src_python = read(settings, start, end, fast=True, native=False)
    slow, _ = read(settings, start, end, fast=False)  # fast events, their rows parsed again by the library
    fast_events.fast_events = False
    try:
        hits = fast_events.fast_event_hits
        plain, _ = read(settings, start, end, fast=True)
        assert fast_events.fast_event_hits == hits
    finally:
        fast_events.fast_events = True
    assert plain == fast
    assert compiled(src) >= 1 and compiled(src_python) >= 1  # the fast path was taken, in C and in Python
    assert all(type(d).__name__ == "Decoder" for _, d in src._decoders.values() if d is not None)
    assert fast == python
    # ``raw`` (a dead letter's diagnostic text) shows each path's own decoded values.
    assert [dataclasses.replace(c, raw=None) for c in fast] == [dataclasses.replace(c, raw=None) for c in slow]
    assert [c.raw is None for c in fast] == [c.raw is None for c in slow]
    return fast


def test_limits_and_bad_values_decode_as_the_library_does(settings: Settings, source: Conn) -> None:
    execute(source, FAST_TYPES)
    settings = settings.model_copy(update={"source_tables": ["fast_types"]})
    start = end_position(source)
    low = {"ti": -128, "tu": 0, "si": -32768, "su": 0, "mi": -(2**23), "mu": 0, "i": -(2**31), "iu": 0,
           "bi": -(2**63), "bu": 0, "f": -3.4e38, "db": -1.7976931348623157e308,
           "d1": Decimal("-99999999999999999999.9999999999"), "d2": Decimal("-" + "9" * 35 + "." + "9" * 30),
           "d3": Decimal("-0.9999"), "d4": Decimal("-9999999999"), "d5": Decimal("-0.01"),
           "dd": dt.date(1000, 1, 1), "dt0": dt.datetime(1000, 1, 1), "dt3": dt.datetime(1000, 1, 1, 0, 0, 0, 1000),
           "dt6": dt.datetime(1000, 1, 1, 0, 0, 0, 1), "ts0": dt.datetime(1970, 1, 1, 0, 0, 1),
           "ts1": dt.datetime(1970, 1, 1, 0, 0, 1, 100000), "ts6": dt.datetime(1970, 1, 1, 0, 0, 1, 1),
           "c": "", "vc": "", "vl": "", "l1": "", "tt": "", "tx": "", "mt": "", "tb": b"", "bl": b""}
    high = {"ti": 127, "tu": 255, "si": 32767, "su": 65535, "mi": 2**23 - 1, "mu": 2**24 - 1, "i": 2**31 - 1,
            "iu": 2**32 - 1, "bi": 2**63 - 1, "bu": 2**64 - 1, "f": 3.4e38, "db": 1.7976931348623157e308,
            "d1": Decimal("99999999999999999999.9999999999"), "d2": Decimal("9" * 35 + "." + "9" * 30),
            "d3": Decimal("0.9999"), "d4": Decimal("9999999999"), "d5": Decimal("1234567890.10"),
            "dd": dt.date(9999, 12, 31), "dt0": dt.datetime(9999, 12, 31, 23, 59, 59),
            "dt3": dt.datetime(9999, 12, 31, 23, 59, 59, 999000), "dt6": dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
            "ts0": dt.datetime(2038, 1, 19, 3, 14, 7), "ts1": dt.datetime(2038, 1, 19, 3, 14, 7, 900000),
            "ts6": dt.datetime(2038, 1, 19, 3, 14, 7, 999999), "c": "😀" * 10, "vc": "😀" * 50, "vl": "ü" * 300,
            "l1": bytes(range(236, 256)).decode(MYSQL_LATIN1), "tt": "x" * 63, "tx": "ü" * 1000, "mt": "😀" * 5000,
            "tb": bytes(range(255)), "bl": bytes(range(256)) * 10}
    insert(source, 1, low)
    insert(source, 2, high)
    insert(source, 3, dict.fromkeys(COLUMNS[1:]))
    execute(source, "UPDATE fast_types SET i = 0, vc = 'moved' WHERE id IN (1, 2)",
            "UPDATE fast_types SET id = 30 WHERE id = 3", "DELETE FROM fast_types WHERE id = 1",
            # Values staging can't hold: each row still decodes to its end, the next row is right.
            "SET SESSION sql_mode = ''",
            "INSERT INTO fast_types (id, dd, vc) VALUES (4, '0000-00-00', 'after a zero date')",
            "INSERT INTO fast_types (id, dt6, ts6, vc) VALUES (5, '0000-00-00 00:00:00', '0000-00-00 00:00:00', 'z')",
            "INSERT INTO fast_types (id, vc, i) VALUES (6, 'nul\\0inside', 7), (7, 'fine', 8)",
            "UPDATE fast_types SET vc = 'still\\0bad' WHERE id = 7",
            "UPDATE fast_types SET dd = '2020-01-01' WHERE id = 4",  # away from the zero date: applies
            "DELETE FROM fast_types WHERE id IN (4, 5, 6)")  # rows with such values go too: by key
    changes = compare(settings, source, start)
    errors = [c for c in changes if c.error]
    assert [c.key for c in errors] == [(4,), (5,), (6,), (7,)]
    deletes = [c.before for c in changes if c.op.value == "delete" and c.before and c.before[0] in (4, 5, 6)]
    assert [d[0] for d in deletes] == [4, 5, 6] and all(v is None for d in deletes[1:] for v in d[1:])
    assert "zero or invalid date" in (errors[0].error or "") and "NUL" in (errors[2].error or "")
    assert len(changes) == 16
    fixed = [c for c in changes if c.op.value == "update" and c.after and c.after[0] == 4]
    assert len(fixed) == 1 and fixed[0].before is not None and fixed[0].before[0] == 4
    assert fixed[0].after[COLUMNS.index("dd")] == dt.date(2020, 1, 1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(rows=st.lists(ROWS, min_size=1, max_size=6), updated=st.lists(ROWS, max_size=3))
def test_generated_rows_decode_as_the_library_does(settings: Settings, source: Conn, rows: list[dict[str, Any]],
                                                   updated: list[dict[str, Any]]) -> None:
    execute(source, "CREATE TABLE IF NOT EXISTS " + FAST_TYPES.removeprefix("CREATE TABLE "))
    settings = settings.model_copy(update={"source_tables": ["fast_types"]})
    start = end_position(source)
    ids = [next(_ids) for _ in rows]
    for row_id, row in zip(ids, rows, strict=True):
        insert(source, row_id, row)
    changed = 0
    with source.cursor() as cur:
        for row_id, row in zip(ids, updated, strict=False):
            changed += cur.execute(f"UPDATE fast_types SET {', '.join(f'{c} = %s' for c in COLUMNS[1:])}"
                                   " WHERE id = %s", [*(row[c] for c in COLUMNS[1:]), row_id])
        cur.execute("DELETE FROM fast_types WHERE id = %s", (ids[0],))
    changes = compare(settings, source, start)
    assert len(changes) == len(rows) + changed + 1  # an update to the same values is not in the binlog


def test_table_maps_parsed_once_decode_as_parsed_each_time(settings: Settings, source: Conn) -> None:
    """The same table's map comes before every small transaction: kept parsed, it must decode
    exactly as a map parsed anew each time, across ALTERs (new maps) and back (an old map's bytes
    again) and for two tables of the same shape."""
    from cdc.capture import binlog_fixes

    execute(source, "CREATE TABLE t (id INT PRIMARY KEY, a VARCHAR(10), b DECIMAL(8,2))",
            "CREATE TABLE u (id INT PRIMARY KEY, a VARCHAR(10), b DECIMAL(8,2))")
    settings = settings.model_copy(update={"source_tables": ["t", "u"]})
    start = end_position(source)
    for i in range(1, 31):
        execute(source, f"INSERT INTO t (id, a, b) VALUES ({i}, 'a{i}', {i}.5)",
                f"INSERT INTO u VALUES ({i}, 'u{i}', {i})")
        if i == 10:
            execute(source, "ALTER TABLE t ADD COLUMN c INT DEFAULT 7")
        if i == 20:
            execute(source, "ALTER TABLE t DROP COLUMN c", "UPDATE t SET a = 'back' WHERE id < 5")
    end = end_position(source)

    def changes(cache: bool, kept: bool = False) -> tuple[list[tuple[Any, ...]], int]:
        if not kept:  # else: a new reader (a restart) finds the maps an earlier one parsed
            binlog_fixes.table_maps.clear()
        binlog_fixes.table_map_cache, hits = cache, binlog_fixes.table_map_hits
        try:
            out: list[tuple[Any, ...]] = []
            for item in source_of(settings, ["t", "u"], start, fast_decode=False).chunks(threading.Event()):
                if isinstance(item, TxnChunk):
                    out += [(c.table, c.op, c.before, c.after, c.absent) for c in item.changes]
                at = item.commit if isinstance(item, TxnChunk) else item.position
                if at is not None and (at.file, at.pos) >= (end.file, end.pos):
                    return out, binlog_fixes.table_map_hits - hits
            raise AssertionError("the stream ended early")
        finally:
            binlog_fixes.table_map_cache = True

    kept, hits = changes(True)
    again, all_hits = changes(True, kept=True)
    parsed, none = changes(False)
    assert hits >= 50 and all_hits > hits and none == 0, (hits, all_hits, none)
    assert kept == parsed and again == parsed and len(kept) == 64


def test_partial_row_images_read_alike_with_and_without_the_fast_path(settings: Settings, source: Conn) -> None:
    """Another client's session with binlog_row_image=MINIMAL writes rows events without every
    column: the fast path reads their header, the library their rows (the same bytes parsed again),
    and the result is what the library alone makes of them: the columns an image lacks absent, an
    insert that left its key to a default an error (a dead letter: nothing to read it back by)."""
    execute(source, "CREATE TABLE parts (id INT PRIMARY KEY DEFAULT 7, a VARCHAR(10), b INT)")
    settings = settings.model_copy(update={"source_tables": ["parts"]})
    start = end_position(source)
    execute(source, "INSERT INTO parts VALUES (1, 'a', 1), (2, 'b', 2)",
            "SET SESSION binlog_row_image = 'MINIMAL'",
            "UPDATE parts SET b = 5 WHERE id = 1", "DELETE FROM parts WHERE id = 2",
            "INSERT INTO parts (id) VALUES (3)", "INSERT INTO parts (a) VALUES ('k')",
            "SET SESSION binlog_row_image = 'FULL'", "UPDATE parts SET a = 'z' WHERE id = 3")
    end = end_position(source)

    def changes() -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for item in source_of(settings, ["parts"], start).chunks(threading.Event()):
            if isinstance(item, TxnChunk):
                out += [(c.op, c.before, c.after, c.absent, c.error) for c in item.changes]
            at = item.commit if isinstance(item, TxnChunk) else item.position
            if at is not None and (at.file, at.pos) >= (end.file, end.pos):
                return out
        raise AssertionError("the stream ended early")

    hits = fast_events.fast_event_hits
    fast = changes()
    assert fast_events.fast_event_hits - hits >= 5  # every rows event's header read by the fast path
    fast_events.fast_events = False
    try:
        plain = changes()
    finally:
        fast_events.fast_events = True
    assert fast == plain, fast
    # the columns a partial image lacks are absent (read from the source before applying); an
    # update's after image takes its key from its before image
    assert fast == [(Op.INSERT, None, (1, "a", 1), (), None), (Op.INSERT, None, (2, "b", 2), (), None),
                    (Op.UPDATE, (1, None, None), (1, None, 5), ("a",), None),
                    (Op.DELETE, (2, None, None), None, (), None),
                    (Op.INSERT, None, (3, None, None), ("a", "b"), None),
                    (Op.INSERT, None, None, (), "the row image lacks key column 'id' (binlog_row_image MINIMAL),"
                     " and nothing else gives it"),
                    (Op.UPDATE, (3, None, None), (3, "z", None), (), None)]


def test_a_fault_of_ours_while_reading_stops_and_a_closed_socket_is_retried(
        settings: Settings, source: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    """pymysql says a socket closed under it with an AttributeError on None: a lost connection,
    retried. Any other AttributeError is a fault of ours: it was retried as a lost connection
    for ever (seen with a bug in a test's stream rewriter); now it reaches the supervisor."""
    from pymysqlreplication import BinLogStreamReader

    from transform.errors import TransientError

    execute(source, "CREATE TABLE fast_types (id INT PRIMARY KEY)")
    for message, raised in (("'NoneType' object has no attribute 'settimeout'", TransientError),
                            ("'MysqlPacket' object has no attribute '_encoding'", AttributeError)):
        def fetchone(self: Any, message: str = message) -> Any:
            raise AttributeError(message)

        monkeypatch.setattr(BinLogStreamReader, "fetchone", fetchone)
        with pytest.raises(raised, match=message.split()[0]):
            next(source_of(settings, ["fast_types"], end_position(source)).chunks(threading.Event()))

"""Type fidelity through the real path (MariaDB binlog -> daemon -> PostgreSQL), and dead letters."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from decimal import Decimal
from typing import Any

import psycopg
import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.capture.mysql import read_table
from cdc.settings import Settings
from tests.helpers import (
    assert_same,
    execute,
    running_pipeline,
    source_rows,
    staging_rows,
    wait_caught_up,
    wait_pipeline_died,
    wait_until,
)

Conn = pymysql.connections.Connection
PG = psycopg.Connection[Any]

ALL_TYPES = """CREATE TABLE all_types (
  id INT PRIMARY KEY,
  ti TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT UNSIGNED, i INT, bi BIGINT, bu BIGINT UNSIGNED,
  d DECIMAL(30,10), f FLOAT, db DOUBLE,
  dd DATE, dt DATETIME(6), tm TIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, y YEAR,
  vc VARCHAR(50), tx TEXT, e ENUM('a','b','c'), s SET('x','y','z'), j JSON,
  bn BINARY(8), vb VARBINARY(20), bl BLOB, bt BIT(10)
) CHARACTER SET utf8mb4"""
COLUMNS = ["id", "ti", "si", "mi", "i", "bi", "bu", "d", "f", "db", "dd", "dt", "tm", "ts", "y", "vc", "tx", "e",
           "s", "j", "bn", "vb", "bl", "bt"]

TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=50)
FIXED = {
    "ti": st.integers(0, 255), "si": st.integers(-(2**15), 2**15 - 1), "mi": st.integers(0, 2**24 - 1),
    "i": st.integers(-(2**31), 2**31 - 1), "bi": st.integers(-(2**63), 2**63 - 1), "bu": st.integers(0, 2**64 - 1),
    "d": st.decimals(min_value=Decimal("-99999999999999999999.9999999999"),
                     max_value=Decimal("99999999999999999999.9999999999"), places=10, allow_nan=False),
    "f": st.floats(width=32, allow_nan=False, allow_infinity=False),
    "db": st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300).filter(
        lambda x: x == 0 or abs(x) > 1e-300),
    "dd": st.dates(dt.date(1000, 1, 1), dt.date(9999, 12, 31)),
    "dt": st.datetimes(dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999)),
    "tm": st.timedeltas(-dt.timedelta(hours=838, minutes=59, seconds=59),
                        dt.timedelta(hours=838, minutes=59, seconds=59)),
    "ts": st.datetimes(dt.datetime(1970, 1, 1, 0, 0, 1), dt.datetime(2038, 1, 19, 3, 14, 7)),
    "y": st.integers(1901, 2155), "vc": TEXT, "tx": TEXT, "e": st.sampled_from(["a", "b", "c"]),
    "s": st.sets(st.sampled_from(["x", "y", "z"])).map(",".join),
    "j": st.dictionaries(st.text(max_size=5).filter(lambda t: "\x00" not in t),
                         st.integers(-1000, 1000) | TEXT, max_size=3).map(json.dumps),
    "bn": st.binary(max_size=8), "vb": st.binary(max_size=20), "bl": st.binary(max_size=200),
    "bt": st.integers(0, 1023),
}
ROWS = st.fixed_dictionaries({k: st.none() | v for k, v in FIXED.items()})


def insert(source: Conn, row_id: int, row: dict[str, Any]) -> None:
    cols = ", ".join(COLUMNS)
    marks = ", ".join(["%s"] * len(COLUMNS))
    with source.cursor() as cur:
        cur.execute(f"INSERT INTO all_types ({cols}) VALUES ({marks})", [row_id, *(row[c] for c in COLUMNS[1:])])


@pytest.fixture
def typed(settings: Settings, source: Conn) -> Settings:
    execute(source, ALL_TYPES)
    return settings.model_copy(update={"source_tables": ["all_types"]})


def test_limits_of_every_type_survive_snapshot_and_stream(typed: Settings, source: Conn, staging: PG,
                                                          source_db: str) -> None:
    low = {"ti": 0, "si": -32768, "mi": 0, "i": -2147483648, "bi": -(2**63), "bu": 0,
           "d": Decimal("-99999999999999999999.9999999999"), "f": -3.4e38, "db": -1.7976931348623157e308,
           "dd": dt.date(1000, 1, 1), "dt": dt.datetime(1000, 1, 1),
           "tm": -dt.timedelta(hours=838, minutes=59, seconds=59),
           "ts": dt.datetime(1970, 1, 1, 0, 0, 1), "y": 1901, "vc": "", "tx": "", "e": "a", "s": "", "j": "[]",
           "bn": b"", "vb": b"", "bl": b"", "bt": 0}
    high = {"ti": 255, "si": 32767, "mi": 2**24 - 1, "i": 2**31 - 1, "bi": 2**63 - 1, "bu": 2**64 - 1,
            "d": Decimal("99999999999999999999.9999999999"), "f": 3.4e38, "db": 1.7976931348623157e308,
            "dd": dt.date(9999, 12, 31), "dt": dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
            "tm": dt.timedelta(hours=838, minutes=59, seconds=59), "ts": dt.datetime(2038, 1, 19, 3, 14, 7, 999999),
            "y": 2155, "vc": "😀" * 50, "tx": "ü" * 1000, "e": "c", "s": "x,y,z", "j": '{"k": [1, "😀", null]}',
            "bn": b"\xff" * 7 + b"\x00", "vb": b"\x00" * 20, "bl": bytes(range(256)), "bt": 1023}
    insert(source, 1, low)
    insert(source, 2, high)
    insert(source, 3, dict.fromkeys(COLUMNS[1:]))
    with running_pipeline(typed):
        wait_caught_up(staging, source)
        insert(source, 11, low)
        insert(source, 12, high)
        insert(source, 13, dict.fromkeys(COLUMNS[1:]))
        execute(source, "UPDATE all_types SET bn = 'ab', tm = '-00:00:00.000001' WHERE id = 2")
        wait_caught_up(staging, source)
    assert assert_same(source, staging, source_db, "all_types") == 6
    got = staging.execute("SELECT bu, bn, tm, ts, s FROM staging.all_types WHERE id = 12").fetchone()
    assert got == (2**64 - 1, b"\xff" * 7 + b"\x00", dt.timedelta(hours=838, minutes=59, seconds=59),
                   dt.datetime(2038, 1, 19, 3, 14, 7, 999999, tzinfo=dt.UTC), "x,y,z")


_ids = itertools.count(1000)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(rows=st.lists(ROWS, min_size=1, max_size=4))
def test_generated_rows_of_every_type_round_trip(typed: Settings, source: Conn, staging: PG, source_db: str,
                                                 rows: list[dict[str, Any]]) -> None:
    with running_pipeline(typed):
        for row in rows:
            insert(source, next(_ids), row)
        wait_caught_up(staging, source)
    table = read_table(source, source_db, "all_types")
    assert staging_rows(staging, table) == source_rows(source, source_db, "all_types")


def test_value_without_postgresql_form_is_dead_lettered_and_stream_goes_on(
        typed: Settings, source: Conn, staging: PG, source_db: str) -> None:
    with running_pipeline(typed):
        wait_caught_up(staging, source)
        execute(source, "SET SESSION sql_mode = ''",
                "INSERT INTO all_types (id, dd) VALUES (1, '0000-00-00')",
                "INSERT INTO all_types (id, vc) VALUES (2, 'nul\\0inside')",
                "INSERT INTO all_types (id, vc) VALUES (3, 'fine')")
        wait_caught_up(staging, source)
    assert staging.execute("SELECT id, vc FROM staging.all_types").fetchall() == [(3, "fine")]
    dead = staging.execute("SELECT source_table, row_key, reason, position FROM softcart.dead_letter"
                           " ORDER BY id").fetchall()
    assert [(d[0], d[1]) for d in dead] == [("all_types", "[1]"), ("all_types", "[2]")]
    assert "zero or invalid date" in dead[0][2] and "'dd'" in dead[0][2]
    assert "NUL" in dead[1][2] and "'vc'" in dead[1][2]
    assert all(d[3].startswith("mysql-bin.") for d in dead)


def test_row_postgresql_refuses_is_isolated_and_the_rest_of_the_batch_lands(
        typed: Settings, source: Conn, staging: PG) -> None:
    with running_pipeline(typed):
        wait_caught_up(staging, source)
        # An operator's constraint in staging that the source doesn't have.
        staging.execute("ALTER TABLE staging.all_types ADD CONSTRAINT small_i CHECK (i < 1000)")
        source.begin()
        execute(source, "INSERT INTO all_types (id, i) VALUES (1, 1), (2, 5000), (3, 3)")
        source.commit()
        wait_caught_up(staging, source)
    assert staging.execute("SELECT id FROM staging.all_types ORDER BY id").fetchall() == [(1,), (3,)]
    (reason,) = staging.execute("SELECT reason FROM softcart.dead_letter WHERE row_key = '[2]'").fetchone() or ("",)
    assert "small_i" in reason


def test_batch_where_every_row_fails_the_same_way_is_fatal_not_dead_letters(
        typed: Settings, source: Conn, staging: PG) -> None:
    from loader.pg import INSTANCE
    from transform.errors import FatalError

    fatal = pytest.raises(FatalError, match=r"every one of 3 changes to all_types failed the same way .*vc")
    with fatal, running_pipeline(typed) as pipeline:
        wait_caught_up(staging, source)
        staging.execute("ALTER TABLE staging.all_types ALTER COLUMN vc SET NOT NULL")
        source.begin()
        execute(source, "INSERT INTO all_types (id) VALUES (1), (2), (3)")
        source.commit()
        died = wait_pipeline_died(pipeline)  # the outcome tested: the pipeline stops on its own
        assert isinstance(died, FatalError), died
    # its sessions end with it (a backend leaves pg_stat_activity shortly after its client closes)
    wait_until(lambda: staging.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                       (INSTANCE,)).fetchone() == (0,), 30, "the daemon's sessions to end")
    assert staging.execute("SELECT count(*) FROM softcart.dead_letter").fetchone() == (0,)


def test_latin1_bytes_and_a_16_mb_blob_are_applied_faithfully(settings: Settings, source: Conn, staging: PG,
                                                              source_db: str) -> None:
    """Every byte value in a latin1 column (MySQL's latin1 is cp1252 with the five holes kept as
    C1 controls), through the snapshot and through the binlog, reads in staging as MySQL itself
    shows it in UTF-8; a 16 MB BLOB and an 8 MB text land whole."""
    execute(source, "CREATE TABLE odd (id INT PRIMARY KEY, l1 VARCHAR(4) CHARACTER SET latin1, big LONGBLOB,"
                    " txt LONGTEXT)")
    every_byte = [bytes([b]) for b in range(1, 256)]
    big = bytes(range(256)) * (16 * 1024 * 1024 // 256)
    with source.cursor() as cur:
        cur.executemany("INSERT INTO odd (id, l1) VALUES (%s, _binary %s)", list(enumerate(every_byte, 1)))
        cur.execute("INSERT INTO odd (id, big, txt) VALUES (1000, %s, %s)", (big, "é" * (4 * 1024 * 1024)))
    odd = settings.model_copy(update={"source_tables": ["odd"]})
    with running_pipeline(odd):
        wait_caught_up(staging, source)
        with source.cursor() as cur:
            cur.executemany("INSERT INTO odd (id, l1) VALUES (%s, _binary %s)",
                            [(2000 + i, b) for i, b in enumerate(every_byte)])
            cur.execute("INSERT INTO odd (id, big) VALUES (3000, %s)", (big[::-1],))
            cur.execute("INSERT INTO odd (id, txt) VALUES (3001, %s)", ("ü" * 4_000_000,))
        wait_caught_up(staging, source, timeout=60)
    assert assert_same(source, staging, source_db, "odd") == 2 * 255 + 3
    assert staging.execute("SELECT l1 FROM staging.odd WHERE id = 2000 + 127").fetchone() == ("€",)
    assert staging.execute("SELECT length(big) FROM staging.odd WHERE id = 3000").fetchone() == (len(big),)
    assert staging.execute("SELECT count(*) FROM softcart.dead_letter").fetchone() == (0,)


def test_an_update_away_from_a_value_staging_cannot_hold_applies(typed: Settings, source: Conn, staging: PG) -> None:
    with running_pipeline(typed):
        wait_caught_up(staging, source)
        execute(source, "SET SESSION sql_mode = ''", "INSERT INTO all_types (id, dd, vc) VALUES (1, '0000-00-00', 'a')")
        wait_caught_up(staging, source)
        assert staging.execute("SELECT count(*) FROM staging.all_types").fetchone() == (0,)
        execute(source, "UPDATE all_types SET dd = '2024-02-29', vc = 'fixed' WHERE id = 1")
        wait_caught_up(staging, source)
    rows = staging.execute("SELECT id, dd, vc FROM staging.all_types").fetchall()
    assert rows == [(1, dt.date(2024, 2, 29), "fixed")]
    assert [r[0] for r in staging.execute("SELECT row_key FROM softcart.dead_letter").fetchall()] == ["[1]"]

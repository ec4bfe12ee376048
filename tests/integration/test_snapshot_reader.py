"""The snapshot's two readers (the mariadb client piped into COPY, and pymysql) on the same source
give the same staging rows and the same dead letters."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from typing import Any

import psycopg
import pymysql
import pytest
from structlog.testing import capture_logs

from cdc.capture.mysql import read_table
from cdc.dev.localservers import PostgresServer
from cdc.pipeline import Pipeline
from cdc.settings import Settings
from tests.helpers import execute, pg_database, source_rows, staging_rows, wait_until
from transform.errors import ConfigError

Conn = pymysql.connections.Connection

TABLE = """CREATE TABLE snap (
  id INT PRIMARY KEY, ti TINYINT, bu BIGINT UNSIGNED, d DECIMAL(30,10), dd DATE, dt DATETIME(6),
  ts TIMESTAMP(6) NULL DEFAULT NULL, c CHAR(5), vc VARCHAR(300), l1 VARCHAR(20) CHARACTER SET latin1,
  tx TEXT, bl BLOB, vb VARBINARY(20)
) CHARACTER SET utf8mb4"""
ROWS = [
    (1, -128, 2**64 - 1, Decimal("-99999999999999999999.9999999999"), dt.date(1000, 1, 1),
     dt.datetime(1000, 1, 1, 0, 0, 0, 1), dt.datetime(1970, 1, 1, 0, 0, 1), "a", "tab\there\nnew\\back\rcr",
     "é\x81ÿ", "😀" * 100, bytes(range(256)), b"\x00\x01"),
    (2, 127, 0, Decimal("0.0000000001"), dt.date(9999, 12, 31), dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
     dt.datetime(2038, 1, 19, 3, 14, 7, 999999), "", "", "", "", b"", b""),
    (3, None, None, None, None, None, None, None, None, None, None, None, None),
    (4, 0, 1, Decimal("1.5"), dt.date(2024, 2, 29), dt.datetime(2024, 2, 29, 12, 0), dt.datetime(2024, 2, 29, 12, 0),
     "\\N", "\\N", "N", "\\.", b"\\N", b"\t"),
]


def _snapshot(settings: Settings, postgres: PostgresServer, db: str, reader: str) -> psycopg.Connection[Any]:
    s = settings.model_copy(update={"source_tables": ["snap"], "star_table": "", "snapshot_reader": reader,
                                    "staging_url": settings.staging_url.__class__(postgres.url(db))})
    with capture_logs() as logs:
        Pipeline(s).resnapshot()
    assert [e["reader"] for e in logs if e["event"] == "snapshot_started"] == [
        "mariadb client" if reader == "client" else "pymysql"]
    return psycopg.connect(postgres.url(db), autocommit=True)


def test_client_reader_and_pymysql_give_the_same_staging_and_dead_letters(
        settings: Settings, source: Conn, source_db: str, postgres: PostgresServer) -> None:
    execute(source, TABLE)
    with source.cursor() as cur:
        cur.executemany("INSERT INTO snap VALUES (" + ", ".join(["%s"] * 13) + ")", ROWS)
    expected = source_rows(source, source_db, "snap")  # before the rows staging can't hold
    execute(source, "SET SESSION sql_mode = ''",
            "INSERT INTO snap (id, dd, vc) VALUES (5, '0000-00-00', 'zero date')",
            "INSERT INTO snap (id, dt) VALUES (6, '2020-00-10 00:00:00')",
            "INSERT INTO snap (id, vc) VALUES (7, 'nul\\0inside')", "INSERT INTO snap (id, vc) VALUES (8, 'fine')")
    table = read_table(source, source_db, "snap")
    results = []
    for reader in ("client", "pymysql"):
        with pg_database(postgres, f"snap_{reader}_{source_db}") as db:
            pg = _snapshot(settings, postgres, db, reader)
            rows = staging_rows(pg, table)
            dead = pg.execute("SELECT row_key, reason FROM softcart.dead_letter ORDER BY row_key").fetchall()
            pg.close()
        results.append((rows, dead))
    (client_rows, client_dead), (lib_rows, lib_dead) = results
    assert client_rows == lib_rows
    assert [r[0] for r in client_rows] == [1, 2, 3, 4, 8]
    assert client_rows[:4] == expected
    assert client_dead == lib_dead
    assert [k for k, _ in client_dead] == ["[5]", "[6]", "[7]"]


def test_client_reader_asked_for_where_it_cannot_read_is_a_config_error(
        settings: Settings, source: Conn, source_db: str, postgres: PostgresServer) -> None:
    execute(source, "CREATE TABLE snap (id INT PRIMARY KEY, t TIME)")
    with pg_database(postgres, f"snap_time_{source_db}") as db, pytest.raises(ConfigError, match="SNAPSHOT_READER"):
        _snapshot(settings, postgres, db, "client")


def test_client_failing_mid_copy_falls_back_to_pymysql_with_nothing_doubled(
        settings: Settings, source: Conn, source_db: str, postgres: PostgresServer) -> None:
    # The client's SELECT of the second table is killed on the server while it streams (held up,
    # deterministically, by the apply lock the test holds: the snapshot can't start its COPY and
    # the client's pipe fills). Everything copied so far, the first table's dead letter included,
    # is rolled back; pymysql takes a new snapshot of both.
    execute(source, "CREATE TABLE snap (id INT PRIMARY KEY, dd DATE, vc VARCHAR(100))",
            "CREATE TABLE snap2 (id INT PRIMARY KEY, vc VARCHAR(100))",
            "SET SESSION sql_mode = ''", "INSERT INTO snap VALUES (1, '0000-00-00', 'zero date'), (2, NULL, 'ok')",
            "INSERT INTO snap2 SELECT seq, REPEAT('x', 80) FROM seq_1_to_60000")
    with pg_database(postgres, f"snap_kill_{source_db}") as db:
        s = settings.model_copy(update={"source_tables": ["snap", "snap2"], "star_table": "",
                                        "snapshot_reader": "auto",
                                        "staging_url": settings.staging_url.__class__(postgres.url(db))})
        done: list[BaseException | None] = []

        def snapshot() -> None:
            try:
                Pipeline(s).resnapshot()
                done.append(None)
            except BaseException as exc:
                done.append(exc)

        with psycopg.connect(postgres.url(db), autocommit=True) as holder, capture_logs() as logs:
            holder.execute("SELECT pg_advisory_lock(hashtext('softcart-sync apply ' || %s))", (s.pipeline_name,))
            worker = threading.Thread(target=snapshot, daemon=True)
            worker.start()
            with source.cursor() as cur:
                def streaming() -> Any:  # the server blocked writing snap2's rows: the pipe is full
                    cur.execute("SELECT id FROM information_schema.processlist WHERE command = 'Query'"
                                " AND info LIKE 'SELECT IF(%%FROM `snap2`' AND state = 'Writing to net'")
                    return cur.fetchone()
                (query_id,) = wait_until(streaming, 60, "the client's copy of snap2 to stream")
                cur.execute(f"KILL QUERY {int(query_id)}")
            holder.execute("SELECT pg_advisory_unlock(hashtext('softcart-sync apply ' || %s))", (s.pipeline_name,))
            worker.join(120)
        assert done == [None], done
        assert [(e["event"], e.get("reader")) for e in logs if e["event"] in ("snapshot_started",
                                                                             "snapshot_client_failed")] == [
            ("snapshot_started", "mariadb client"), ("snapshot_client_failed", None), ("snapshot_started", "pymysql")]
        with psycopg.connect(postgres.url(db), autocommit=True) as stg:
            assert stg.execute("SELECT count(*), sum(id) FROM staging.snap2").fetchone() == (60000, sum(range(60001)))
            assert stg.execute("SELECT id FROM staging.snap").fetchall() == [(2,)]
            assert stg.execute("SELECT source_table, row_key FROM softcart.dead_letter").fetchall() == [("snap", "[1]")]

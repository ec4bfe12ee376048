"""Row changes of every kind reach staging, in order, exactly once."""

from __future__ import annotations

import multiprocessing
from typing import Any

import psycopg
import pymysql
import pytest

from cdc.pipeline import Pipeline
from cdc.settings import Settings
from loader.ddl import ensure_schema
from loader.pg import pg_connect
from tests.helpers import SALES_DDL, assert_same, execute, running_pipeline, wait_caught_up
from transform.errors import FatalError

pytestmark = pytest.mark.both_sources

Conn = pymysql.connections.Connection
PG = psycopg.Connection[Any]


def seed_sales(source: Conn, rows: int = 10) -> None:
    execute(source, SALES_DDL)
    with source.cursor() as cur:
        cur.executemany("INSERT INTO sales_data VALUES (%s, %s, %s, %s, %s, '2021-03-04 05:06:07')",
                        [(i, i % 7, i % 11, f"{i}.25", i % 5 + 1) for i in range(1, rows + 1)])


def test_snapshot_then_inserts_updates_deletes_arrive(settings: Settings, source: Conn, staging: PG,
                                                       source_db: str) -> None:
    seed_sales(source)
    with running_pipeline(settings):
        wait_caught_up(staging, source)
        assert_same(source, staging, source_db, "sales_data")
        execute(source,
                "INSERT INTO sales_data VALUES (100, 1, 2, 3.50, 4, '2022-01-01 00:00:00')",
                "INSERT INTO sales_data VALUES (101, 1, 2, 3.50, 4, '2022-01-01 00:00:00'),"
                " (102, 1, 2, 3.50, 4, '2022-01-01 00:00:00')",
                "UPDATE sales_data SET quantity = quantity + 10 WHERE rowid <= 5",
                "UPDATE sales_data SET rowid = 200 WHERE rowid = 6",
                "DELETE FROM sales_data WHERE rowid IN (7, 8, 101)")
        wait_caught_up(staging, source)
    n = assert_same(source, staging, source_db, "sales_data")
    assert n == 10 + 3 - 3
    moved = staging.execute("SELECT rowid FROM staging.sales_data WHERE rowid IN (6, 200)").fetchall()
    assert moved == [(200,)]


def test_reader_in_its_own_process_streams_the_same_and_ends_with_the_pipeline(
        settings: Settings, source: Conn, staging: PG, source_db: str) -> None:
    seed_sales(source)
    with running_pipeline(settings.model_copy(update={"reader": "process"})):
        wait_caught_up(staging, source)
        execute(source, "INSERT INTO sales_data VALUES (100, 1, 2, 3.50, 4, '2022-01-01 00:00:00')",
                "UPDATE sales_data SET quantity = quantity + 10 WHERE rowid <= 5",
                "UPDATE sales_data SET rowid = 200 WHERE rowid = 6", "DELETE FROM sales_data WHERE rowid IN (7, 8)")
        wait_caught_up(staging, source)  # streamed, so through the reader process
        readers = [p for p in multiprocessing.active_children() if p.name == "softcart-sync binlog reader"]
        assert len(readers) == 1 and readers[0].is_alive()
    assert assert_same(source, staging, source_db, "sales_data") == 10 + 1 - 2
    readers[0].join(10)
    assert not readers[0].is_alive()


def test_library_decoding_streams_the_same_without_the_fast_path(settings: Settings, source: Conn, staging: PG,
                                                                 source_db: str) -> None:
    """SOFTCART_BINLOG_DECODING=library: every event through mysql-replication (the fast path,
    on by default, reads none of them), and the same result."""
    from cdc.capture import fast_events

    seed_sales(source)
    try:
        for decoding, fast in (("library", False), ("fast", True)):
            hits = fast_events.fast_event_hits
            with running_pipeline(settings.model_copy(update={"binlog_decoding": decoding})):
                wait_caught_up(staging, source)
                execute(source, "INSERT INTO sales_data VALUES (100, 1, 2, 3.50, 4, '2022-01-01 00:00:00')",
                        "UPDATE sales_data SET quantity = quantity + 10 WHERE rowid <= 5",
                        "DELETE FROM sales_data WHERE rowid IN (7, 8, 100)")
                wait_caught_up(staging, source)
            assert (fast_events.fast_event_hits > hits) is fast, decoding
            assert assert_same(source, staging, source_db, "sales_data") == 8
    finally:
        fast_events.fast_events = True


def test_transaction_spanning_tables_commits_as_one(settings: Settings, source: Conn, staging: PG,
                                                     source_db: str) -> None:
    seed_sales(source, 3)
    execute(source, "CREATE TABLE customers (id BIGINT UNSIGNED PRIMARY KEY, name VARCHAR(50))")
    settings = settings.model_copy(update={"source_tables": ["sales_data", "customers"]})
    with running_pipeline(settings):
        wait_caught_up(staging, source)
        source.begin()
        execute(source, "INSERT INTO customers VALUES (18446744073709551615, 'max')",
                "UPDATE sales_data SET customer_id = 99 WHERE rowid = 1",
                "INSERT INTO customers VALUES (1, 'one')", "DELETE FROM customers WHERE id = 1",
                "INSERT INTO customers VALUES (1, 'uno')", "UPDATE customers SET name = 'eins' WHERE id = 1")
        source.commit()
        wait_caught_up(staging, source)
    assert_same(source, staging, source_db, "sales_data")
    assert_same(source, staging, source_db, "customers")
    assert staging.execute("SELECT name FROM staging.customers ORDER BY id").fetchall() == [("eins",), ("max",)]


def test_composite_and_text_keys(settings: Settings, source: Conn, staging: PG, source_db: str) -> None:
    execute(source, "CREATE TABLE pairs (a VARCHAR(10), b INT, v TEXT, PRIMARY KEY (b, a))",
            "INSERT INTO pairs VALUES ('x', 1, 'one'), ('y', 1, 'two')")
    settings = settings.model_copy(update={"source_tables": ["pairs"]})
    with running_pipeline(settings):
        wait_caught_up(staging, source)
        execute(source, "UPDATE pairs SET a = 'z' WHERE a = 'x'", "INSERT INTO pairs VALUES ('x', 1, 'again')",
                "DELETE FROM pairs WHERE a = 'y'")
        wait_caught_up(staging, source)
    assert assert_same(source, staging, source_db, "pairs") == 2


def test_restart_resumes_from_saved_position_without_duplicates(settings: Settings, source: Conn, staging: PG,
                                                                 source_db: str) -> None:
    execute(source, "CREATE TABLE counters (id INT PRIMARY KEY, n INT NOT NULL)",
            "INSERT INTO counters VALUES (1, 0), (2, 0)")
    settings = settings.model_copy(update={"source_tables": ["counters"]})
    with running_pipeline(settings):
        wait_caught_up(staging, source)
        for _ in range(20):
            execute(source, "UPDATE counters SET n = n + 1")
        wait_caught_up(staging, source)
    for _ in range(30):  # while the daemon is down
        execute(source, "UPDATE counters SET n = n + 1 WHERE id = 1")
    execute(source, "INSERT INTO counters VALUES (3, 7)")
    with running_pipeline(settings) as p:
        wait_caught_up(staging, source)
        assert p.state.snapshot_rows == {}, "a stored position must not trigger a new snapshot"
    assert staging.execute("SELECT id, n FROM staging.counters ORDER BY id").fetchall() == [(1, 50), (2, 20), (3, 7)]


def test_table_without_primary_key_is_refused_by_name(settings: Settings, source: Conn) -> None:
    execute(source, "CREATE TABLE loose (a INT, b INT)")
    settings = settings.model_copy(update={"source_tables": ["loose"]})
    with pytest.raises(FatalError, match=r"loose has no primary key"):
        Pipeline(settings).prepare()


def test_missing_table_is_refused_by_name(settings: Settings, source: Conn) -> None:
    settings = settings.model_copy(update={"source_tables": ["nope"]})
    with pytest.raises(FatalError, match=r"\.nope does not exist"):
        Pipeline(settings).prepare()


def test_staging_schema_creation_is_idempotent_and_adds_new_columns(settings: Settings, source: Conn,
                                                                   staging: PG) -> None:
    seed_sales(source, 1)
    pipeline = Pipeline(settings)
    tables, _ = pipeline.prepare()
    with pg_connect(settings.staging_config) as pg:
        ensure_schema(pg, tables)
        ensure_schema(pg, tables)
        execute(source, "ALTER TABLE sales_data ADD COLUMN note VARCHAR(20)")
        tables, _ = pipeline.prepare()
        ensure_schema(pg, tables)
    cols = staging.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = 'staging'"
                           " AND table_name = 'sales_data' ORDER BY ordinal_position").fetchall()
    assert [c[0] for c in cols][-1] == "note"
    pk = staging.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                         " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'staging.sales_data'::regclass"
                         " AND i.indisprimary").fetchall()
    assert pk == [("rowid",)]


def test_star_table_named_but_not_synced_is_refused(settings: Settings, source: Conn) -> None:
    from cdc.pipeline import star_schema
    from transform.errors import ConfigError

    execute(source, "CREATE TABLE other (id INT PRIMARY KEY)")
    explicit = settings.model_copy(update={"source_tables": ["other"], "star_table": "sales_data"})
    explicit.model_fields_set.add("star_table")
    tables, _ = Pipeline(explicit).prepare()
    with pytest.raises(ConfigError, match="SOFTCART_STAR_TABLE 'sales_data' is not among SOFTCART_SOURCE_TABLES"):
        star_schema(explicit, tables)
    implicit = settings.model_copy(update={"source_tables": ["other"]})
    assert star_schema(implicit, tables) is None


def test_identifiers_with_quotes_semicolons_and_backticks_cannot_inject(settings: Settings, source: Conn,
                                                                       staging: PG, source_db: str) -> None:
    name = 'we`ird;"t\'x'
    col = 'co`l;"q\'x); DROP TABLE x; --'
    qt, qc = "`" + name.replace("`", "``") + "`", "`" + col.replace("`", "``") + "`"
    execute(source, f"CREATE TABLE {qt} (id INT PRIMARY KEY, {qc} VARCHAR(20))",
            f"INSERT INTO {qt} VALUES (1, 'a'), (2, 'b')")
    settings = settings.model_copy(update={"source_tables": [name]})
    with running_pipeline(settings):
        wait_caught_up(staging, source)
        execute(source, f"UPDATE {qt} SET {qc} = 'c' WHERE id = 1", f"DELETE FROM {qt} WHERE id = 2",
                f"INSERT INTO {qt} VALUES (3, 'd')")
        wait_caught_up(staging, source)
    assert assert_same(source, staging, source_db, name) == 2
    from psycopg import sql

    got = staging.execute(sql.SQL("SELECT id, {} FROM staging.{} ORDER BY id").format(
        sql.Identifier(col), sql.Identifier(name))).fetchall()
    assert got == [(1, "c"), (3, "d")]

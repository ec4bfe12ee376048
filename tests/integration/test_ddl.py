"""Schema changes in the source, on real servers: staging follows what it safely can, rows before
and after each change land right; a change it can't follow stops that table only, with the
statement and the position, and a resnapshot takes it again."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pymysql
import pytest

from cdc.capture.snapshot import take_snapshot
from cdc.ops.reconcile import Reconciler
from cdc.ops.star_ops import check_star
from cdc.pipeline import Pipeline
from cdc.settings import Settings
from loader.pg import pg_connect
from tests.helpers import SALES_DDL, assert_same, cli, execute, running_pipeline, wait_caught_up, wait_until
from transform.errors import TransientError

# every test here on MariaDB and on MySQL (#31)
pytestmark = pytest.mark.both_sources

Conn = pymysql.connections.Connection
PG = psycopg.Connection[Any]

ITEMS = "CREATE TABLE items (id INT PRIMARY KEY, a INT, b VARCHAR(10), price DECIMAL(8,2))"
OTHER = "CREATE TABLE other (id INT PRIMARY KEY, v INT)"


def staging_columns(staging: PG, table: str) -> list[str]:
    return [r[0] for r in staging.execute("SELECT column_name FROM information_schema.columns WHERE table_schema ="
                                          " 'staging' AND table_name = %s ORDER BY ordinal_position",
                                          (table,)).fetchall()]


def test_staging_follows_safe_changes_and_stops_only_the_table_it_cannot_follow(
        settings: Settings, settings_env: dict[str, str], source: Conn, staging: PG, source_db: str) -> None:
    execute(source, SALES_DDL, ITEMS, OTHER,
            "INSERT INTO items VALUES (1, 10, 'x', 1.50), (2, 20, NULL, 2.25)",
            "INSERT INTO sales_data VALUES (1, 5, 6, 9.99, 2, '2024-03-01 10:00:00')")
    # With online copies off a stopped table stays stopped until a resnapshot (with them on it is
    # copied again online: test_online_copy.py)
    s = settings.model_copy(update={"source_tables": ["sales_data", "items", "other"], "online_copy": "off"})
    env = {**settings_env, "SOFTCART_SOURCE_TABLES": "sales_data,items,other", "SOFTCART_ONLINE_COPY": "off"}

    def same(*tables: str) -> None:
        wait_caught_up(staging, source)
        for t in tables:
            assert_same(source, staging, source_db, t)

    with running_pipeline(s):
        same("items")
        # Added at the end with a default: existing rows have it in the source, so in staging too.
        execute(source, "ALTER TABLE items ADD COLUMN c VARCHAR(20) NOT NULL DEFAULT 'dflt'",
                "INSERT INTO items (id, a, b, price, c) VALUES (3, 30, 'y', 3.00, 'new')")
        same("items")
        # Added in the middle: staging matches columns by name.
        execute(source, "ALTER TABLE items ADD COLUMN m INT DEFAULT 7 AFTER id",
                "INSERT INTO items (id, m, a, b, price, c) VALUES (4, 8, 40, 'z', 4.00, 'n4')",
                "UPDATE items SET m = 9 WHERE id = 1")
        same("items")
        execute(source, "ALTER TABLE items DROP COLUMN b", "UPDATE items SET a = 11 WHERE id = 1")
        same("items")
        assert "b" not in staging_columns(staging, "items")
        execute(source, "ALTER TABLE items RENAME COLUMN a TO a2", "UPDATE items SET a2 = 12 WHERE id = 1")
        same("items")
        assert staging.execute("SELECT a2 FROM staging.items WHERE id = 2").fetchone() == (20,)  # kept, renamed
        execute(source, "ALTER TABLE items MODIFY price DECIMAL(12,3)", "UPDATE items SET price = 1.125 WHERE id = 1")
        same("items")
        execute(source, "TRUNCATE items", "INSERT INTO items (id, a2, price) VALUES (5, 50, 5.5)")
        same("items")
        # The star table, a column added before the ones the star schema reads.
        execute(source, "ALTER TABLE sales_data ADD COLUMN note TEXT AFTER product_id",
                "INSERT INTO sales_data (rowid, product_id, note, customer_id, price, quantity, timestamp)"
                " VALUES (2, 7, 'hi', 8, 1.25, 4, '2024-03-02 11:00:00')")
        same("sales_data")
        assert check_star(s) == []
        assert staging.execute("SELECT total_price FROM star.factsales WHERE rowid = 2").fetchone() == (5,)
        # Narrowing can't be followed: items stops; the other tables stream on.
        execute(source, "ALTER TABLE items MODIFY a2 TINYINT",
                "INSERT INTO items (id, a2, price) VALUES (6, 1, 6.0)", "INSERT INTO other VALUES (1, 1)")
        same("other")
        stopped = staging.execute("SELECT source_table, reason, statement, position FROM softcart.stopped_table"
                                  ).fetchall()
        assert [(r[0], r[2]) for r in stopped] == [("items", "ALTER TABLE items MODIFY a2 TINYINT")]
        assert re.search(r"changed from int(\(11\))? to tinyint(\(4\))?", stopped[0][1]), stopped  # MySQL: no widths
        assert re.search(r"^(mysql-bin|binlog)\.", stopped[0][3]), stopped
        assert staging.execute("SELECT count(*) FROM staging.items WHERE id = 6").fetchone() == (0,)
        shown = cli("status", env=env).stdout  # the operator sees it, with why and the way out
        assert "STOPPED        items: not followed since " in shown, shown
        assert re.search(r"changed from int(\(11\))? to tinyint(\(4\))?", shown), shown
        assert "statement: ALTER TABLE items MODIFY a2 TINYINT" in shown, shown
        assert "its rows are skipped; `softcart-sync resnapshot` (daemon stopped) takes it again" in shown, shown
        execute(source, "INSERT INTO other VALUES (2, 2)", "INSERT INTO sales_data VALUES"
                " (3, 1, 'x', 1, 2.00, 1, '2024-03-03 12:00:00')")
        same("other", "sales_data")
        report = Reconciler(s, levels=("source",)).run()
        assert report.exit_code == 0 and [t.table for t in report.tables] == ["sales_data", "other"], report.text()
        assert "items is not followed since a schema change" in report.text()
        # With online copies off, no table is copied next to the running daemon: it says so.
        online = cli("resnapshot", "items", env=env)
        assert online.returncode == 2 and "SOFTCART_ONLINE_COPY=off" in online.stderr \
            and "stop the daemon and run `softcart-sync resnapshot`" in online.stderr, online.stderr
    # The way out: a new snapshot takes the stopped table again.
    out = cli("resnapshot", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    with running_pipeline(s):
        execute(source, "INSERT INTO items (id, a2, price) VALUES (7, 2, 7.0)")
        same("items", "other", "sales_data")
    assert staging.execute("SELECT count(*) FROM softcart.stopped_table").fetchone() == (0,)
    assert "STOPPED" not in cli("status", env=env).stdout
    assert check_star(s) == []


def test_dropped_recreated_and_renamed_tables(settings: Settings, source: Conn, staging: PG, source_db: str) -> None:
    execute(source, ITEMS, OTHER, "CREATE TABLE spare (id INT PRIMARY KEY, a INT, b VARCHAR(10), price DECIMAL(8,2))",
            "INSERT INTO items VALUES (1, 10, 'x', 1.50)", "INSERT INTO other VALUES (1, 1), (2, 2)",
            "INSERT INTO spare VALUES (9, 90, 's', 9.00)")
    s = settings.model_copy(update={"source_tables": ["items", "other"], "star_table": ""})
    with running_pipeline(s):
        wait_caught_up(staging, source)
        execute(source, "DROP TABLE other")
        wait_caught_up(staging, source)
        assert staging.execute("SELECT count(*) FROM staging.other").fetchone() == (0,)
        execute(source, "CREATE TABLE other (id INT PRIMARY KEY, v BIGINT, w TEXT)",
                "INSERT INTO other VALUES (3, 30, 'new')")
        wait_caught_up(staging, source)
        assert_same(source, staging, source_db, "other")
        execute(source, "RENAME TABLE items TO items_old")
        wait_caught_up(staging, source)
        assert staging.execute("SELECT count(*) FROM staging.items").fetchone() == (0,)
        execute(source, "RENAME TABLE spare TO items")  # rows the binlog never carried: can't follow
        execute(source, "INSERT INTO other VALUES (4, 40, 'still')")
        wait_caught_up(staging, source)
        assert_same(source, staging, source_db, "other")
        reason = staging.execute("SELECT reason FROM softcart.stopped_table WHERE source_table = 'items'").fetchone()
        assert reason == ("another table was renamed into items: its rows are not in the binlog",)


def test_a_change_made_while_the_daemon_is_stopped_is_followed_at_its_statement(
        settings: Settings, source: Conn, staging: PG, source_db: str) -> None:
    """The daemon resumes with the definitions staging follows, not the source's current ones, so
    a rename and a drop made while it was down are followed in order, values kept."""
    execute(source, ITEMS, "INSERT INTO items VALUES (1, 10, 'x', 1.50), (2, 20, 'y', 2.50)")
    s = settings.model_copy(update={"source_tables": ["items"], "star_table": ""})
    with running_pipeline(s):
        wait_caught_up(staging, source)
    execute(source, "UPDATE items SET a = 11 WHERE id = 1",  # before the change, in the old shape
            "ALTER TABLE items RENAME COLUMN a TO qty, DROP COLUMN b, ADD COLUMN z INT DEFAULT 5",
            "UPDATE items SET qty = 21 WHERE id = 2")
    with running_pipeline(s):
        wait_caught_up(staging, source)
        assert_same(source, staging, source_db, "items")
    assert staging_columns(staging, "items") == ["id", "qty", "price", "z"]
    assert staging.execute("SELECT id, qty, z FROM staging.items ORDER BY id").fetchall() == [(1, 11, 5), (2, 21, 5)]


def items_streamed(settings: Settings, source: Conn, staging: PG, *columns: str) -> Settings:
    """``items`` (id and INT ``columns``, 20 rows, each value its id) followed alone and caught up,
    then the daemon stopped: what follows is read as a lag. Returns the settings that follow it."""
    execute(source, f"CREATE TABLE items (id INT PRIMARY KEY, {', '.join(f'{c} INT' for c in columns)})",
            "INSERT INTO items VALUES " + ", ".join("(" + ", ".join([str(i)] * (len(columns) + 1)) + ")"
                                                    for i in range(1, 21)))
    s = settings.model_copy(update={"source_tables": ["items"], "star_table": ""})
    with running_pipeline(s):
        wait_caught_up(staging, source)
    return s


def test_rows_replayed_across_several_alters_are_decoded_as_they_were_written(
        settings: Settings, source: Conn, staging: PG, source_db: str) -> None:
    # A lag across two ALTERs: at the first, the source's definition is already the last one. The
    # rows between were written with another (each binlog table map says which): decoded by name,
    # a column they don't carry is read from the source, never set to NULL; a dropped column's
    # value never lands in another of the same type and place.
    s = items_streamed(settings, source, staging, "v")
    execute(source, "ALTER TABLE items ADD COLUMN c INT DEFAULT 5",
            "UPDATE items SET v = v + 100 WHERE id <= 3", "INSERT INTO items (id, v, c) VALUES (100, 100, 7)",
            "UPDATE items SET c = 50 WHERE id = 4",
            "ALTER TABLE items ADD COLUMN d INT DEFAULT 9",
            "UPDATE items SET v = -1 WHERE id = 5",
            "ALTER TABLE items DROP COLUMN c, ADD COLUMN e INT DEFAULT 3",
            "UPDATE items SET v = -2 WHERE id = 6", "INSERT INTO items (id, v) VALUES (101, 101)")
    with running_pipeline(s):
        wait_caught_up(staging, source)
        assert_same(source, staging, source_db, "items")
    assert staging_columns(staging, "items") == ["id", "v", "d", "e"]
    rows = staging.execute("SELECT id, v, d, e FROM staging.items WHERE id IN (1, 4, 100, 101) ORDER BY id").fetchall()
    assert rows == [(1, 101, 9, 3), (4, 4, 9, 3), (100, 100, 9, 3), (101, 101, 9, 3)]


def test_rows_replayed_across_alters_that_turn_a_column_into_text_are_never_decoded_by_the_later_type(
        settings: Settings, source: Conn, staging: PG, source_db: str) -> None:
    """#30 item 8. A lag across a safe ALTER and one that turns an INT column into text: at the
    first, the source's definition is already the last one, and the rows between (integers in the
    binlog's table map) were converted by the text one: a TypeError at the same position on every
    restart. Rows whose table map disagrees with the followed definition on a column's type are
    not decoded by it: the table stops and is copied again online; the stream goes on. The stop is
    where the type change was first seen (the first ALTER), and it says the change is a later
    statement's."""
    s = items_streamed(settings, source, staging, "v", "n")
    execute(source, "ALTER TABLE items ADD COLUMN c INT DEFAULT 5",
            "UPDATE items SET n = n + 100 WHERE id <= 3", "INSERT INTO items (id, v, n) VALUES (100, 100, 100)",
            "ALTER TABLE items MODIFY n VARCHAR(20)",
            "UPDATE items SET n = CONCAT(n, 'x') WHERE id = 4", "INSERT INTO items (id, v, n) VALUES (101, 1, 'y')")
    with running_pipeline(s) as pipeline:
        wait_until(lambda: staging.execute(
            "SELECT 1 FROM softcart.stopped_table s JOIN softcart.online_copy c USING (pipeline, source_table)"
            " WHERE s.source_table = 'items' AND s.taken_up_at IS NOT NULL AND c.finished_at IS NOT NULL"
        ).fetchone() is not None, 90, "items stopped, taken up again and copied")
        wait_caught_up(staging, source)
        assert_same(source, staging, source_db, "items")
        assert pipeline.state.restarts == 0
    ((statement, reason),) = staging.execute("SELECT statement, reason FROM softcart.stopped_table"
                                             " WHERE source_table = 'items'").fetchall()
    assert statement == "ALTER TABLE items ADD COLUMN c INT DEFAULT 5"
    assert re.search(r"column n changed from int(\(11\))? to varchar\(20\)", reason), reason
    assert "not by this statement" in reason, reason
    assert staging.execute("SELECT n FROM staging.items WHERE id IN (1, 4, 101) ORDER BY id").fetchall() == [
        ("101",), ("4x",), ("y",)]


def test_a_table_altered_as_the_snapshot_opens_is_copied_with_the_definition_in_force(
        settings: Settings, source: Conn, staging: PG, source_db: str) -> None:
    execute(source, "CREATE TABLE items (id INT PRIMARY KEY, v INT)", "INSERT INTO items VALUES (1, 1), (2, 2)")
    s = settings.model_copy(update={"source_tables": ["items"], "star_table": ""})
    pipeline = Pipeline(s)
    tables, flavor = pipeline.prepare()  # the definitions, read before the snapshot opens
    execute(source, "ALTER TABLE items ADD COLUMN w INT DEFAULT 4")  # its statement lies before the snapshot
    with pg_connect(s.staging_config, autocommit=True) as pg:
        writer, _ = pipeline.open_writer(pg, tables)
        with pytest.raises(TransientError, match="definition of source table items changed"):
            take_snapshot(s, tables, flavor, writer)
    with running_pipeline(s):  # the daemon's next try reads them again
        wait_caught_up(staging, source)
        assert_same(source, staging, source_db, "items")
    assert staging_columns(staging, "items") == ["id", "v", "w"]

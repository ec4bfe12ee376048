"""Star schema -> CSV batches -> warehouse, exactly once (PostgreSQL warehouse backend end to end;
the DB2 backend against the real ibm_db driver)."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from cdc.dev.localservers import free_port
from cdc.settings import Settings, load_settings
from loader.backends import open_warehouse
from loader.db2_warehouse import DB2Warehouse
from loader.spool import Spool
from tests.helpers import (
    SALES_DDL,
    Daemons,
    assert_warehouse_equals_star,
    cli,
    execute,
    running_pipeline,
    wait_caught_up,
)
from transform.errors import FatalError, TransientError

Conn = pymysql.connections.Connection
PG = psycopg.Connection[Any]


def mixed_changes(source: Conn, n: int = 300) -> None:
    with source.cursor() as cur:
        cur.executemany("INSERT INTO sales_data VALUES (%s, %s, 1, %s, %s, %s)",
                        [(i, i % 13, f"{i % 50}.25", i % 4, f"2021-0{1 + i % 9}-1{i % 10} 10:00:00")
                         for i in range(1, n + 1)])
        cur.execute("UPDATE sales_data SET quantity = quantity + 2, timestamp = '2022-02-02 02:02:02'"
                    " WHERE rowid % 7 = 0")
        cur.execute("DELETE FROM sales_data WHERE rowid % 11 = 0")
        cur.execute("UPDATE sales_data SET rowid = rowid + 100000 WHERE rowid % 17 = 0")


def test_stream_then_flush_makes_the_warehouse_equal_to_the_star_schema(
        wh_settings: Settings, wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG) -> None:
    execute(source, SALES_DDL)
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    with running_pipeline(wh_settings):
        wait_caught_up(staging, source)
        mixed_changes(source)
        wait_caught_up(staging, source)
    out = cli("flush", env=wh_env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert assert_warehouse_equals_star(staging, warehouse) > 300
    again = cli("flush", env=wh_env)
    assert again.returncode == 0 and "nothing new to batch" in again.stdout
    with running_pipeline(wh_settings):
        execute(source, "DELETE FROM sales_data WHERE rowid < 50",
                "UPDATE sales_data SET price = price + 1, timestamp = timestamp WHERE rowid BETWEEN 50 AND 80")
        wait_caught_up(staging, source)
    assert cli("flush", env=wh_env).returncode == 0
    assert_warehouse_equals_star(staging, warehouse)
    (monthly,) = warehouse.execute("SELECT count(*) FROM monthly_sales").fetchone() or (0,)
    assert monthly > 0
    spool = Path(wh_env["SOFTCART_SPOOL_DIR"])
    loaded = sorted(p.name for p in (spool / "loaded").iterdir())
    assert len(loaded) >= 2 and not any((spool / "pending").iterdir())
    manifest = (spool / "loaded" / loaded[0] / "manifest.json").read_text()
    assert '"sha256"' in manifest and '"source_position": "mysql-bin.' in manifest
    # A rebuild's full reload replaces the (non-empty) warehouse tables.
    warehouse.execute("INSERT INTO sales_by_day VALUES (20000101, 1, 1, 1)")  # stray rows it must clear
    warehouse.execute("INSERT INTO sales_by_month_product VALUES (200001, 1, 1, 1, 1)")
    assert cli("rebuild", env=wh_env).returncode == 0
    assert cli("flush", env=wh_env).returncode == 0
    assert_warehouse_equals_star(staging, warehouse)


def test_staging_star_and_warehouse_tables_are_the_one_shape(
        wh_settings: Settings, wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG) -> None:
    """The star schema's shape is defined once (transform/star_shape.py): the tables the daemon
    makes in staging and `warehouse init` makes in the warehouse have its columns, in its order,
    with its types, nullability, keys and references, as the catalog reports them."""
    from transform.star_shape import TABLES

    def catalog(conn: PG, schema: str, table: str) -> list[tuple[str, str, bool]]:
        return [(r[0], r[1], r[2]) for r in conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), NOT attnotnull FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (f"{schema}.{table}",))]

    def constraints(conn: PG, schema: str, table: str) -> set[str]:
        return {r[0].replace(f"{schema}.", "") for r in conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass"
            " AND contype IN ('p', 'f')", (f"{schema}.{table}",))}

    execute(source, SALES_DDL)
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    with running_pipeline(wh_settings):
        wait_caught_up(staging, source)
    for t in TABLES:
        want = {f"PRIMARY KEY ({', '.join(t.key)})",
                *(f"FOREIGN KEY ({r.column}) REFERENCES {r.table}({r.target})" for r in t.references)}
        staged = catalog(staging, "star", t.name)
        assert staged[:len(t.schema)] == [(c.name, c.staging, c.nullable) for c in t.schema], t.name
        assert [c for c, _, _ in staged[len(t.schema):]] == [e.split()[0] for e in t.staging_extra]
        assert catalog(warehouse, "public", t.name) == [
            (c.name, c.warehouse.replace("varchar", "character varying"), c.nullable) for c in t.schema], t.name
        assert constraints(staging, "star", t.name) == want
        assert constraints(warehouse, "public", t.name) == want


def test_a_staging_made_anew_under_an_existing_warehouse_loads_its_batches(
        wh_settings: Settings, wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG) -> None:
    execute(source, SALES_DDL)
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    with running_pipeline(wh_settings):
        mixed_changes(source, 60)
        wait_caught_up(staging, source)
    assert cli("flush", env=wh_env).returncode == 0
    with running_pipeline(wh_settings):
        execute(source, "UPDATE sales_data SET quantity = quantity + 1, timestamp = timestamp WHERE rowid < 20")
        wait_caught_up(staging, source)
    assert cli("flush", env=wh_env).returncode == 0
    assert_warehouse_equals_star(staging, warehouse)
    ledger = [r[0] for r in warehouse.execute("SELECT batch_id FROM softcart_ledger ORDER BY batch_id")]
    assert len(ledger) == 2
    # staging lost and made again (a new host, an empty database): its batch numbers start at 1,
    # which the warehouse's ledger holds
    staging.execute("DROP SCHEMA softcart CASCADE; DROP SCHEMA staging CASCADE; DROP SCHEMA star CASCADE")
    execute(source, "DELETE FROM sales_data WHERE rowid < 10", "INSERT INTO sales_data VALUES"
            " (900, 1, 1, 9.99, 2, '2023-03-03 03:03:03')")
    with running_pipeline(wh_settings):  # a new snapshot: a full reload for the warehouse
        wait_caught_up(staging, source)
    out = cli("flush", env=wh_env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "loaded 1, already in the warehouse 0" in out.stdout, out.stdout
    assert_warehouse_equals_star(staging, warehouse)
    again = [r[0] for r in warehouse.execute("SELECT batch_id FROM softcart_ledger ORDER BY batch_id")]
    assert again[:2] == ledger and len(again) == 3 and again[2] > ledger[-1]
    (batch_id,) = staging.execute("SELECT id FROM softcart.batch WHERE state = 'loaded'").fetchone() or (0,)
    assert batch_id == again[2]
    spool = Path(wh_env["SOFTCART_SPOOL_DIR"])
    manifest = json.loads((spool / "loaded" / f"b{batch_id:012d}" / "manifest.json").read_text())
    assert manifest["batch_id"] == batch_id and manifest["full_reload"]


def test_a_ledger_holding_a_batch_number_for_another_batch_renumbers_ours(
        wh_settings: Settings, wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG) -> None:
    # staging restored from a backup older than the warehouse: the ledger has batches past ours
    execute(source, SALES_DDL)
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    with running_pipeline(wh_settings):
        mixed_changes(source, 40)
        wait_caught_up(staging, source)
    assert cli("flush", env=wh_env).returncode == 0
    (nxt,) = staging.execute("SELECT last_value + is_called::int FROM softcart.batch_id_seq").fetchone() or (0,)
    warehouse.execute("INSERT INTO softcart_ledger (batch_id, pipeline, rows_loaded, batch_uid)"
                      " VALUES (%s, 'x', 0, 'a batch of the staging before the restore')", (nxt,))
    with running_pipeline(wh_settings):
        execute(source, "DELETE FROM sales_data WHERE rowid < 10")
        wait_caught_up(staging, source)
    out = cli("flush", env=wh_env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert_warehouse_equals_star(staging, warehouse)
    assert warehouse.execute("SELECT count(*) FROM softcart_ledger WHERE batch_id > %s", (nxt,)).fetchone() == (1,)


def test_batches_are_iso_csv_whatever_the_staging_servers_date_style(
        wh_settings: Settings, wh_env: dict[str, str], source: Conn, staging: PG, staging_db: str,
        warehouse: PG, warehouse_db: str) -> None:
    # The batch's CSV is written by PostgreSQL (COPY), so its dates would follow the server's
    # DateStyle (a German one writes 13.05.2021), and psycopg parses ISO dates only.
    for db in (staging_db, warehouse_db):
        staging.execute(f'ALTER DATABASE "{db}" SET DateStyle = \'German, DMY\'')
    execute(source, SALES_DDL, "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 1, '2021-05-13 10:00:00'),"
                               " (2, 2, 9, 2.50, 3, '2021-12-01 23:00:00')")
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    with running_pipeline(wh_settings):
        wait_caught_up(staging, source)
    out = cli("flush", env=wh_env)
    assert out.returncode == 0, out.stdout + out.stderr
    spool = Path(wh_env["SOFTCART_SPOOL_DIR"])
    (batch,) = (spool / "loaded").iterdir()
    assert "2021-05-13" in (batch / "dimdate.csv").read_text()
    assert_warehouse_equals_star(staging, warehouse)
    assert warehouse.execute("SELECT date FROM dimdate ORDER BY 1").fetchall() == [
        (dt.date(2021, 5, 13),), (dt.date(2021, 12, 1),)]
    checked = cli("reconcile", env=wh_env)  # reads dates from all three
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_batch_file_changed_on_disk_is_refused_before_anything_commits(
        wh_settings: Settings, tmp_path: Path, warehouse: PG) -> None:
    wh = open_warehouse(wh_settings.warehouse_config)
    wh.init()
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    batch = spool.write(7, {"dimdate": b"U,20210101,2021-01-01,2021,1,Q1,1,January,1,6,Friday\n"}, {})
    with (batch.path / "dimdate.csv").open("ab") as f:
        f.write(b"U,20210102,2021-01-02,2021,1,Q1,1,January,2,7,Saturday\n")
    with pytest.raises(FatalError, match=r"dimdate\.csv does not match its sha256"):
        wh.load(batch)
    wh.close()
    assert warehouse.execute("SELECT count(*) FROM dimdate").fetchone() == (0,)
    assert warehouse.execute("SELECT count(*) FROM softcart_ledger").fetchone() == (0,)


def test_sale_moving_to_a_new_date_in_one_batch_keeps_the_foreign_key(
        wh_settings: Settings, wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG) -> None:
    execute(source, SALES_DDL, "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 1, '2021-05-05 10:00:00')")
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    with running_pipeline(wh_settings):
        wait_caught_up(staging, source)
    assert cli("flush", env=wh_env).returncode == 0
    with running_pipeline(wh_settings):
        execute(source, "UPDATE sales_data SET timestamp = '2021-06-06 10:00:00' WHERE rowid = 1")
        wait_caught_up(staging, source)
    out = cli("flush", env=wh_env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert warehouse.execute("SELECT dateid FROM dimdate").fetchall() == [(20210606,)]
    assert_warehouse_equals_star(staging, warehouse)


def test_a_refused_full_reload_holds_back_every_later_batch_until_retried(
        wh_settings: Settings, wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG) -> None:
    # A full reload lists no keys (it touches them all): a later batch on other keys must still
    # wait behind it, or the reload would undo that batch's changes when it finally loads.
    execute(source, SALES_DDL, "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 500, '2021-01-01 00:00:00'),"
                               " (2, 2, 1, 1.00, 1, '2021-01-02 00:00:00')")
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    warehouse.execute("ALTER TABLE factsales ADD CONSTRAINT small_qty CHECK (quantity < 100)")
    with running_pipeline(wh_settings):
        wait_caught_up(staging, source)
    assert cli("rebuild", env=wh_env).returncode == 0  # asks for a full reload
    failed = cli("flush", env=wh_env)
    assert failed.returncode == 1 and "failed 1" in failed.stdout, failed.stdout
    assert staging.execute("SELECT full_reload FROM softcart.batch WHERE state = 'failed'").fetchall() == [(True,)]
    with running_pipeline(wh_settings):
        execute(source, "UPDATE sales_data SET quantity = 3, timestamp = timestamp WHERE rowid = 2")
        wait_caught_up(staging, source)
    waiting = cli("flush", env=wh_env)
    assert waiting.returncode == 1 and "waiting behind a failed batch 1" in waiting.stdout, waiting.stdout
    assert warehouse.execute("SELECT count(*) FROM factsales").fetchone() == (0,)
    warehouse.execute("ALTER TABLE factsales DROP CONSTRAINT small_qty")
    (failed_id,) = staging.execute("SELECT id FROM softcart.batch WHERE state = 'failed'").fetchone() or (0,)
    assert cli("batches", "retry", str(failed_id), env=wh_env).returncode == 0
    assert_warehouse_equals_star(staging, warehouse)
    assert warehouse.execute("SELECT quantity FROM factsales WHERE rowid = 2").fetchone() == (3,)


def test_crash_between_warehouse_commit_and_marking_loaded_applies_nothing_twice(
        wh_settings: Settings, wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG) -> None:
    execute(source, SALES_DDL)
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    with running_pipeline(wh_settings):
        mixed_changes(source, 100)
        wait_caught_up(staging, source)
    crashed = cli("flush", env={**wh_env, "SOFTCART_TEST_CRASH_POINT": "after-warehouse-commit"})
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    assert staging.execute("SELECT state FROM softcart.batch").fetchall() == [("pending",)]
    assert warehouse.execute("SELECT count(*) FROM softcart_ledger").fetchone() == (1,)
    healed = cli("flush", env=wh_env)
    assert healed.returncode == 0 and "already in the warehouse 1" in healed.stdout, healed.stdout
    assert staging.execute("SELECT state FROM softcart.batch").fetchall() == [("loaded",)]
    assert warehouse.execute("SELECT count(*) FROM softcart_ledger").fetchone() == (1,)
    assert_warehouse_equals_star(staging, warehouse)


def test_rejected_batch_fails_blocks_its_keys_and_loads_after_retry(
        wh_settings: Settings, wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG) -> None:
    execute(source, SALES_DDL, "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 1, '2021-01-01 00:00:00'),"
                               " (2, 2, 1, 1.00, 1, '2021-01-02 00:00:00')")
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    with running_pipeline(wh_settings):
        wait_caught_up(staging, source)
    assert cli("flush", env=wh_env).returncode == 0
    warehouse.execute("ALTER TABLE factsales ADD CONSTRAINT small_qty CHECK (quantity < 100)")
    with running_pipeline(wh_settings):
        execute(source, "UPDATE sales_data SET quantity = 500, timestamp = timestamp WHERE rowid = 1")
        wait_caught_up(staging, source)
    failed = cli("flush", env=wh_env)
    assert failed.returncode == 1 and "failed 1" in failed.stdout
    (err,) = staging.execute("SELECT error FROM softcart.batch WHERE state = 'failed'").fetchone() or ("",)
    assert "small_qty" in err
    with running_pipeline(wh_settings):  # a sale of another day and product: no key in common
        execute(source, "INSERT INTO sales_data VALUES (3, 9, 1, 2.00, 1, '2022-06-01 00:00:00')")
        wait_caught_up(staging, source)
    apart = cli("flush", env=wh_env)
    assert "loaded 1" in apart.stdout, apart.stdout
    assert warehouse.execute("SELECT quantity FROM factsales WHERE rowid = 3").fetchone() == (1,), \
        "a batch sharing no key with the failed one loads"
    with running_pipeline(wh_settings):
        execute(source, "UPDATE sales_data SET quantity = 7, timestamp = timestamp WHERE rowid = 1",
                "UPDATE sales_data SET quantity = 3, timestamp = timestamp WHERE rowid = 2")
        wait_caught_up(staging, source)
    waiting = cli("flush", env=wh_env)
    assert waiting.returncode == 1 and "waiting behind a failed batch 1" in waiting.stdout, waiting.stdout
    assert warehouse.execute("SELECT quantity FROM factsales WHERE rowid = 1").fetchone() == (1,), \
        "a newer batch for the same key must not overtake the failed one"
    warehouse.execute("ALTER TABLE factsales DROP CONSTRAINT small_qty")
    (failed_id,) = staging.execute("SELECT id FROM softcart.batch WHERE state = 'failed'").fetchone() or (0,)
    retried = cli("batches", "retry", str(failed_id), env=wh_env)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert_warehouse_equals_star(staging, warehouse)
    assert warehouse.execute("SELECT quantity FROM factsales WHERE rowid = 1").fetchone() == (7,)
    listing = cli("batches", "list", env=wh_env).stdout
    assert "loaded" in listing and "failed" not in listing.split("\n", 1)[1]


def test_unreachable_warehouse_keeps_batches_pending_then_loads_them_in_order(
        wh_settings: Settings, wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG) -> None:
    execute(source, SALES_DDL)
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    down = {**wh_env, "SOFTCART_WAREHOUSE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere",
            "SOFTCART_CONNECT_TIMEOUT_SECONDS": "2"}
    for round_ in range(3):
        with running_pipeline(wh_settings):
            execute(source, f"INSERT INTO sales_data VALUES ({round_ + 1}, 1, 1, 1.00, {round_ + 1},"
                            " '2021-01-01 00:00:00')", "UPDATE sales_data SET quantity = quantity + 1,"
                            " timestamp = timestamp")
            wait_caught_up(staging, source)
        out = cli("flush", env=down)
        assert out.returncode == 1 and "warehouse" in out.stderr
    assert staging.execute("SELECT count(*) FROM softcart.batch WHERE state = 'pending'").fetchone() == (3,)
    assert len(list((Path(wh_env["SOFTCART_SPOOL_DIR"]) / "pending").iterdir())) == 3
    status = json.loads(cli("status", "--json", env=wh_env).stdout)
    assert status["batches"]["pending"]["count"] == 3
    assert cli("flush", env=wh_env).returncode == 0
    ledger = [r[0] for r in warehouse.execute("SELECT batch_id FROM softcart_ledger ORDER BY loaded_at, batch_id")]
    assert ledger == sorted(ledger) and len(ledger) == 3
    assert_warehouse_equals_star(staging, warehouse)


def test_daemon_flushes_on_its_interval_in_its_own_thread(wh_settings: Settings, wh_env: dict[str, str],
                                                           source: Conn, staging: PG, warehouse: PG,
                                                           tmp_path: Path, daemons: Daemons) -> None:
    from tests.helpers import wait_until

    execute(source, SALES_DDL)
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    daemon = daemons({**wh_env, "SOFTCART_FLUSH_INTERVAL_SECONDS": "1"}, tmp_path / "daemon.log")
    daemon.start()
    daemon.wait_streaming()
    mixed_changes(source, 200)
    wait_caught_up(staging, source)

    def equal() -> bool:
        try:
            assert_warehouse_equals_star(staging, warehouse)
            return True
        except AssertionError:
            return False

    try:
        wait_until(equal, 60, "the warehouse to follow the star schema")
    except AssertionError as exc:
        tail = "\n".join(daemon.log.read_text().splitlines()[-15:])
        raise AssertionError(f"{exc}\ndaemon log:\n{tail}") from None
    assert daemon.stop(30) == 0


# DB2: the real driver against endpoints that fail ------------------------------------------------


def db2_settings(port: int) -> Settings:
    return load_settings(environ={}, source_url="mysql://u@127.0.0.1/sales", staging_url="postgresql://u@h/db",
                         warehouse_url=f"db2://db2inst1:Secret-Db2-pw@127.0.0.1:{port}/SALESDW",
                         connect_timeout_seconds=2)


def test_a_fault_of_ours_in_the_flush_thread_stops_the_daemon_with_exit_1_naming_it(
        wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG, tmp_path: Path) -> None:
    """Not a warehouse error (retried and seen) nor a lost connection (started afresh): an error the
    classifier calls a fault of ours reaches the supervisor, which stops the daemon (exit 1: systemd
    restarts it), instead of looping on it with a log line. Here staging's flush state lost a column
    under the flusher; the next start, with it back, loads what waited."""
    from tests.helpers import running_daemon, wait_until

    execute(source, SALES_DDL)
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    env = {**wh_env, "SOFTCART_FLUSH_INTERVAL_SECONDS": "1"}
    log = tmp_path / "daemon.log"
    with running_daemon(env, log) as daemon:
        staging.execute("ALTER TABLE softcart.flush_state RENAME COLUMN last_outbox_id TO renamed")
        try:
            execute(source, "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 1, '2021-01-01 00:00:00')")
            assert daemon.proc is not None
            assert daemon.proc.wait(60) == 1
        finally:
            staging.execute("ALTER TABLE softcart.flush_state RENAME COLUMN renamed TO last_outbox_id")
    fatal = [json.loads(line) for line in log.read_text().splitlines()
             if line.startswith("{") and '"event": "fatal"' in line]
    assert fatal and "the flush thread failed: UndefinedColumn" in fatal[-1]["error"]
    with running_daemon(env, tmp_path / "again.log") as again:
        wait_caught_up(staging, source)
        wait_until(lambda: warehouse.execute("SELECT count(*) FROM factsales").fetchone() == (1,), 60,
                   "the waiting change in the warehouse")
        assert again.stop(30) == 0
    assert_warehouse_equals_star(staging, warehouse)


def test_db2_closed_port_is_a_transient_error_without_the_password(tmp_path: Path) -> None:
    s = db2_settings(free_port())
    assert s.warehouse is not None
    wh = DB2Warehouse(s.warehouse, "default", 2)
    spool = Spool(tmp_path)
    spool.prepare()
    batch = spool.write(1, {}, {})
    with pytest.raises(TransientError) as err:
        wh.load(batch)
    assert "SQL30081N" in str(err.value) and "Secret-Db2-pw" not in str(err.value)


def test_db2_listener_that_never_answers_times_out_instead_of_hanging(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[Any] = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in range(8)], daemon=True).start()
    s = db2_settings(server.getsockname()[1])
    assert s.warehouse is not None
    wh = DB2Warehouse(s.warehouse, "default", 2)
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    batch = spool.write(1, {}, {})
    started = time.monotonic()
    with pytest.raises(TransientError):
        wh.load(batch)
    assert time.monotonic() - started < 30
    server.close()


DB2_DSN = os.environ.get("SOFTCART_TEST_DB2_DSN")


@pytest.mark.skipif(not DB2_DSN, reason="no DB2 here: set SOFTCART_TEST_DB2_DSN=db2://user:pw@host:port/DB "
                                        "to run the warehouse tests against a real DB2")
def test_real_db2_loads_a_batch_once(tmp_path: Path) -> None:
    from cdc.settings import parse_url

    ep = parse_url("warehouse_url", DB2_DSN or "", ("db2",))
    wh = DB2Warehouse(ep, "test", 10)
    wh.init()
    spool = Spool(tmp_path)
    spool.prepare()
    text = "U,20210101,2021-01-01,2021,1,Q1,1,January,1,6,Friday\n"
    batch = spool.write(int(time.time()), {"dimdate": text}, {})
    assert wh.load(batch) is True
    assert wh.load(batch) is False
    # `check` reads the log's three parameters and judges a full reload against them (#32 item 1)
    found = {what.split(" (")[0]: (ok, what) for ok, what, _ in wh.check(reload_rows=1000)}
    assert "warehouse log space for a full reload of 1,000 rows" in found, found
    assert "LOGFILSIZ" in found["warehouse log space for a full reload of 1,000 rows"][1]
    wh.close()


def _db2_rows(n: int) -> dict[str, Any]:
    """A full reload of ``n`` facts over a year of dates, as CSV chunks made as they are written."""
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(365)]

    def dim() -> Any:
        for d in days:
            q = (d.month - 1) // 3 + 1
            yield (f"U,{d:%Y%m%d},{d.isoformat()},{d.year},{q},Q{q},{d.month},{d:%B},{d.day},{d.isoweekday() % 7 + 1},"
                   f"{d:%A}\n").encode()

    def facts() -> Any:
        for start in range(1, n + 1, 10000):
            yield "".join(f"U,{i},{days[i % 365]:%Y%m%d},{i % 1000},{i % 500},1.2500,2,2.5000\n"
                          for i in range(start, min(n, start + 9999) + 1)).encode()

    def by_day() -> Any:
        yield "".join(f"U,{d:%Y%m%d},10,20,25.0000\n" for d in days[:30]).encode()

    def by_month_product() -> Any:
        yield "".join(f"U,{m},{p},1,2,2.5000\n" for m in range(202401, 202413) for p in range(25)).encode()

    return {"dimdate": dim(), "factsales": facts(), "sales_by_day": by_day(),
            "sales_by_month_product": by_month_product()}


@pytest.mark.skipif(not DB2_DSN, reason="no DB2 here: set SOFTCART_TEST_DB2_DSN=db2://user:pw@host:port/DB "
                                        "to run the warehouse tests against a real DB2")
def test_real_db2_full_reload_merge_deletes_rejects_replay_and_time_limit(tmp_path: Path) -> None:
    """The first run on a real Db2 proves the whole load path: a full reload of
    SOFTCART_TEST_DB2_ROWS facts (1,000,000 by default), its replay skipped, a MERGE with deletes,
    a refused row named by key with nothing applied, and a statement past its time limit retried."""
    import ibm_db

    from cdc.settings import parse_url
    from loader.db2_warehouse import connection_string
    from loader.warehouse import BatchRejected

    ep = parse_url("warehouse_url", DB2_DSN or "", ("db2",))
    schema = os.environ.get("SOFTCART_TEST_DB2_SCHEMA", "")
    n = int(os.environ.get("SOFTCART_TEST_DB2_ROWS", "1000000"))
    wh = DB2Warehouse(ep, "test", 10, schema=schema)
    wh.init()
    spool = Spool(tmp_path)
    spool.prepare()
    base = int(time.time() * 1000)

    def count(table: str, where: str = "") -> int:
        return int(wh.fetch(f'SELECT COUNT(*) FROM "{table.upper()}" {where}', ())[0][0])

    try:
        full = spool.write(base, _db2_rows(n), {"full_reload": True, "batch_uid": f"full-{base}"})
        assert wh.load(full) is True
        assert (count("dimdate"), count("factsales"), count("sales_by_day"), count("sales_by_month_product")) \
            == (365, n, 30, 300)
        assert wh.load(full) is False  # the replay: the ledger has it
        changes = "".join(f"U,{i},20240102,{i},{i},9.0000,1,9.0000\n" for i in range(1, 101)) + \
            "".join(f"D,{i},,,,,,\n" for i in range(101, 151))
        merge = spool.write(base + 1, {"factsales": changes}, {"batch_uid": f"merge-{base}"})
        assert wh.load(merge) is True
        assert count("factsales") == n - 50 and count("factsales", 'WHERE "PRICE" = 9') == 100
        bad = spool.write(base + 2, {"factsales": "U,1,20240102,1,1,1.0000,1,1.0000\n"
                                                  "U,2,20240102,1,1,1e40,1,1.0000\n"}, {"batch_uid": f"bad-{base}"})
        with pytest.raises(BatchRejected, match=r"factsales row 2 \(rowid=2\)"):
            wh.load(bad)
        assert count("factsales", 'WHERE "PRICE" = 9') == 100  # nothing of it applied
        holder = ibm_db.connect(connection_string(ep, 10, ep.query, schema=schema), "", "")
        ibm_db.autocommit(holder, ibm_db.SQL_AUTOCOMMIT_OFF)
        ibm_db.exec_immediate(holder, 'LOCK TABLE "FACTSALES" IN EXCLUSIVE MODE')
        limited = DB2Warehouse(ep, "test", 10, statement_timeout=2, schema=schema)
        late = spool.write(base + 3, {"factsales": "U,3,20240102,3,3,7.0000,1,7.0000\n"}, {"batch_uid": f"late-{base}"})
        try:
            with pytest.raises(TransientError):
                limited.load(late)
        finally:
            ibm_db.rollback(holder)
            ibm_db.close(holder)
        assert limited.load(late) is True
        limited.close()
    finally:
        wh.close()


def test_daemon_with_the_warehouse_away_shows_the_backlog_then_drains_it(
        wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG, tmp_path: Path, daemons: Daemons) -> None:
    from tests.helpers import metrics_port, sample, wait_until

    execute(source, SALES_DDL)
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    away = {**wh_env, "SOFTCART_WAREHOUSE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere",
            "SOFTCART_FLUSH_INTERVAL_SECONDS": "1", "SOFTCART_RETRY_MAX_SECONDS": "2"}
    daemon = daemons(away, tmp_path / "away.log")
    daemon.start()
    daemon.wait_streaming()
    port = metrics_port(daemon)
    for i in range(3):
        execute(source, f"INSERT INTO sales_data VALUES ({i + 1}, 1, 1, 1.00, 1, '2021-01-0{i + 1} 00:00:00')")
        wait_caught_up(staging, source)
        wait_until(lambda n=i + 1: sample(port, "softcart_spool_pending_batches") >= n, 60,
                   "a pending batch per round")
    assert sample(port, "softcart_connected", endpoint="warehouse") == 0
    wait_until(lambda: sample(port, "softcart_spool_oldest_pending_age_seconds") > 0, 30, "the backlog's age")
    assert daemon.stop(30) == 0
    back = daemons({**wh_env, "SOFTCART_FLUSH_INTERVAL_SECONDS": "1"}, tmp_path / "back.log")
    back.start()
    back.wait_streaming()
    port = metrics_port(back)
    wait_until(lambda: sample(port, "softcart_spool_pending_batches") == 0
               and sample(port, "softcart_warehouse_batches_loaded_total") >= 3, 60, "the backlog to drain")
    spooled = sum(sum(r[0].values()) for r in staging.execute("SELECT rows FROM softcart.batch"))
    assert spooled > 0 and sample(port, "softcart_warehouse_rows_loaded_total") == spooled
    assert back.stop(30) == 0
    assert_warehouse_equals_star(staging, warehouse)
    ledger = [r[0] for r in warehouse.execute("SELECT batch_id FROM softcart_ledger ORDER BY loaded_at, batch_id")]
    assert ledger == sorted(ledger)


def test_unwritable_spool_is_a_clear_error_and_the_outbox_keeps_its_rows(
        wh_settings: Settings, wh_env: dict[str, str], source: Conn, staging: PG, tmp_path: Path) -> None:
    import shutil

    from loader.backends import open_warehouse
    from loader.flush import Flusher
    from loader.pg import pg_connect

    execute(source, SALES_DDL, "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 1, '2021-01-01 00:00:00')")
    with running_pipeline(wh_settings):
        wait_caught_up(staging, source)
    outbox_before = staging.execute("SELECT count(*) FROM softcart.outbox").fetchone()
    # A spool folder that can't be made at all: named by the error, nothing flushed.
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the spool should be")
    out = cli("flush", env={**wh_env, "SOFTCART_SPOOL_DIR": str(blocked)})
    assert out.returncode != 0 and f"SOFTCART_SPOOL_DIR {blocked}" in out.stdout + out.stderr
    # A spool that breaks while a batch is written (disk full): the transaction rolls back.
    spool = Spool(Path(wh_env["SOFTCART_SPOOL_DIR"]))
    spool.prepare()
    shutil.rmtree(spool.root / "tmp")
    (spool.root / "tmp").write_text("no room")
    with pg_connect(wh_settings.staging_config, autocommit=True) as conn:
        flusher = Flusher(conn, spool, open_warehouse(wh_settings.warehouse_config), "default")
        with pytest.raises(TransientError, match="cannot write batch"):
            flusher.create_batch()
    assert staging.execute("SELECT count(*) FROM softcart.outbox").fetchone() == outbox_before
    assert staging.execute("SELECT count(*) FROM softcart.batch").fetchone() == (0,)
    assert staging.execute("SELECT COALESCE(max(last_outbox_id), 0) FROM softcart.flush_state").fetchone() == (0,)


def test_a_batch_failing_to_load_is_seen_with_its_attempts_and_error_and_a_missing_warehouse_names_the_fix(
        wh_settings: Settings, wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG) -> None:
    execute(source, SALES_DDL, "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 1, '2021-01-01 00:00:00')")
    with running_pipeline(wh_settings):
        wait_caught_up(staging, source)
    # no `warehouse init` yet: not a traceback retried forever, but the fix, named
    out = cli("flush", env=wh_env)
    assert out.returncode != 0 and "softcart-sync warehouse init" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    down = {**wh_env, "SOFTCART_WAREHOUSE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere",
            "SOFTCART_CONNECT_TIMEOUT_SECONDS": "2"}
    assert cli("flush", env=wh_env).returncode == 0  # the first load numbers and loads it
    with running_pipeline(wh_settings):
        execute(source, "UPDATE sales_data SET quantity = 2, timestamp = timestamp")
        wait_caught_up(staging, source)
    for _ in range(2):
        assert cli("flush", env=down).returncode == 1
    status = json.loads(cli("status", "--json", env=wh_env).stdout)
    retrying = status["batches"]["pending"]["retrying"]
    assert retrying["attempts"] == 2 and "127.0.0.1" in retrying["last_error"], retrying
    shown = json.loads(cli("batches", "show", str(retrying["batch"]), env=wh_env).stdout)
    assert shown["attempts"] == 2 and shown["failing_since"] and shown["error"]
    text = cli("status", env=wh_env).stdout
    assert f"batch {retrying['batch']} failing since" in text and "(2 attempts)" in text
    assert cli("flush", env=wh_env).returncode == 0
    status = json.loads(cli("status", "--json", env=wh_env).stdout)
    assert "retrying" not in status["batches"].get("pending", {})
    assert_warehouse_equals_star(staging, warehouse)


def test_a_warehouse_statement_past_its_time_limit_is_cut_off_retried_and_seen(
        wh_settings: Settings, wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG,
        postgres: Any, warehouse_db: str) -> None:
    execute(source, SALES_DDL, "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 1, '2021-01-01 00:00:00')")
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    with running_pipeline(wh_settings):
        wait_caught_up(staging, source)
    limited = {**wh_env, "SOFTCART_WAREHOUSE_STATEMENT_TIMEOUT_SECONDS": "1"}
    with psycopg.connect(postgres.url(warehouse_db)) as holder:  # a BI query holding the fact table
        holder.execute("LOCK TABLE factsales IN ACCESS EXCLUSIVE MODE")
        out = cli("flush", env=limited)
        assert out.returncode == 1 and "57014" in out.stderr and "statement timeout" in out.stderr, out.stderr
    status = json.loads(cli("status", "--json", env=wh_env).stdout)
    assert status["batches"]["pending"]["retrying"]["attempts"] == 1
    assert cli("flush", env=limited).returncode == 0
    assert_warehouse_equals_star(staging, warehouse)


def test_the_warehouse_schema_setting_puts_init_the_loader_and_the_reconcile_in_that_schema(
        wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG) -> None:
    env = {**wh_env, "SOFTCART_WAREHOUSE_SCHEMA": "sales_dw"}
    execute(source, SALES_DDL, "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 1, '2021-01-01 00:00:00')")
    assert cli("warehouse", "init", env=env).returncode == 0
    with running_pipeline(load_settings(environ={}, **{k.removeprefix("SOFTCART_").lower(): v
                                                       for k, v in env.items()})):
        wait_caught_up(staging, source)
    out = cli("flush", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert warehouse.execute("SELECT count(*) FROM sales_dw.factsales").fetchone() == (1,)
    assert warehouse.execute("SELECT to_regclass('public.factsales')").fetchone() == (None,)
    # the ledger counts the batch's rows, as the Db2 backend does (not the rows a MERGE touched)
    (counted,) = staging.execute("SELECT sum(v::bigint) FROM softcart.batch, jsonb_each_text(rows) AS r(k, v)"
                                 ).fetchone() or (0,)
    assert warehouse.execute("SELECT sum(rows_loaded) FROM sales_dw.softcart_ledger").fetchone() == (counted,)
    warehouse.execute("DELETE FROM sales_dw.factsales")
    fixed = cli("reconcile", "--level", "warehouse", env=env)
    assert fixed.returncode == 1, fixed.stdout + fixed.stderr  # found in that schema, and repaired
    assert warehouse.execute("SELECT count(*) FROM sales_dw.factsales").fetchone() == (1,)


def test_a_flush_run_with_another_spool_folder_is_refused_while_batches_wait_in_the_pipelines(
        wh_settings: Settings, wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG,
        tmp_path: Path) -> None:
    execute(source, SALES_DDL, "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 1, '2021-01-01 00:00:00')")
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    with running_pipeline(wh_settings):
        wait_caught_up(staging, source)
    down = {**wh_env, "SOFTCART_WAREHOUSE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere",
            "SOFTCART_CONNECT_TIMEOUT_SECONDS": "2"}
    assert cli("flush", env=down).returncode == 1  # a batch waits in the pipeline's spool
    daemons = Path(wh_env["SOFTCART_SPOOL_DIR"]).resolve()
    shell = {**wh_env, "SOFTCART_SPOOL_DIR": str(tmp_path / "spool-of-a-shell")}
    with running_pipeline(wh_settings):
        execute(source, "UPDATE sales_data SET quantity = 5, timestamp = timestamp")
        wait_caught_up(staging, source)
    out = cli("flush", env=shell)
    assert out.returncode != 0 and f"are in {daemons}" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert staging.execute("SELECT count(*) FROM softcart.batch").fetchone() == (1,)  # none recorded there
    assert cli("flush", env=wh_env).returncode == 0
    assert_warehouse_equals_star(staging, warehouse)
    assert cli("flush", env=shell).returncode == 0  # nothing waits: that folder may become the pipeline's


OLD_GRAIN = ("CREATE TABLE {}sales_by_day (dateid integer NOT NULL, product_id bigint NOT NULL, sales_count bigint"
             " NOT NULL, quantity_total bigint NOT NULL, amount_total numeric(31,4) NOT NULL,"
             " PRIMARY KEY (dateid, product_id))")


def test_an_installation_of_the_old_aggregate_grain_is_upgraded_by_a_restart_and_warehouse_init(
        wh_settings: Settings, wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG) -> None:
    """Before the aggregates' grains changed, sales_by_day was per (day, product) in staging and in
    the warehouse (with the reporting views over it), and sales_by_month_product did not exist.
    `warehouse init` makes the warehouse's anew (views too); the daemon's next start makes staging's
    anew, rebuilds the star schema and sends the warehouse a full reload."""
    execute(source, SALES_DDL)
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    with running_pipeline(wh_settings):
        mixed_changes(source, 100)
        wait_caught_up(staging, source)
    staging.execute("DROP TABLE star.sales_by_day, star.sales_by_month_product")
    staging.execute(OLD_GRAIN.format("star."))
    staging.execute("INSERT INTO star.sales_by_day VALUES (20000101, 1, 1, 1, 1)")
    warehouse.execute("DROP VIEW monthly_sales, quarterly_sales, sales_by_product")
    warehouse.execute("DROP TABLE sales_by_day, sales_by_month_product")
    warehouse.execute(OLD_GRAIN.format(""))
    warehouse.execute("CREATE VIEW sales_by_product AS SELECT s.product_id, d.year, sum(s.amount_total)"
                      " AS total_sales FROM sales_by_day s JOIN dimdate d ON d.dateid = s.dateid"
                      " GROUP BY s.product_id, d.year")
    out = cli("warehouse", "init", env=wh_env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert warehouse.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'sales_by_day'"
                             " AND column_name = 'product_id'").fetchone() == (0,)
    with running_pipeline(wh_settings):
        execute(source, "INSERT INTO sales_data VALUES (900, 3, 1, 2.00, 1, '2021-06-01 10:00:00')")
        wait_caught_up(staging, source)  # past the start, so past the rebuild it makes before streaming
    assert staging.execute("SELECT count(*) FROM star.sales_by_day WHERE dateid = 20000101").fetchone() == (0,)
    assert cli("rebuild", "--check", env=wh_env).returncode == 0
    assert cli("flush", env=wh_env).returncode == 0
    assert assert_warehouse_equals_star(staging, warehouse) > 100
    by_product = warehouse.execute("SELECT sum(total_sales) FROM sales_by_product").fetchone()
    assert by_product == warehouse.execute("SELECT sum(total_price) FROM factsales").fetchone()


def test_a_ledger_number_taken_by_another_batch_meanwhile_is_not_taken_for_this_one(
        wh_settings: Settings, warehouse: psycopg.Connection[Any], tmp_path: Path) -> None:
    """The load checks the ledger first; another loader may commit the same number in between,
    and the ledger insert then meets its row. That was counted as this batch loaded, whatever
    the other batch was: its data rolled back and never loaded (#30 item 13). Now the uids tell:
    the same batch is a replay, another batch is BatchIdTaken."""
    from loader.warehouse import LEDGER, BatchIdTaken
    from tests.helpers import wait_until

    wh = open_warehouse(wh_settings.warehouse_config)
    wh.init()
    spool = Spool(tmp_path)
    spool.prepare()
    batch = spool.write(7, {"dimdate": "U,20210101,2021-01-01,2021,1,Q1,1,January,1,6,Friday\n"}, {})
    other = psycopg.connect(warehouse.info.dsn)
    other.execute(f"INSERT INTO {LEDGER} (batch_id, pipeline, rows_loaded, batch_uid) VALUES (%s, %s, 0, %s)",
                  (batch.batch_id, wh_settings.pipeline_name, "another-batch"))  # not committed yet
    outcome: list[object] = []

    def load() -> None:
        try:
            outcome.append(wh.load(batch))
        except Exception as exc:
            outcome.append(exc)

    t = threading.Thread(target=load)
    t.start()
    wait_until(lambda: warehouse.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                                         " 'softcart-sync-flush' AND wait_event_type = 'Lock'").fetchone() == (1,),
               30, "the load waiting on the other loader's ledger row")
    other.commit()
    t.join(30)
    other.close()
    assert len(outcome) == 1 and isinstance(outcome[0], BatchIdTaken), outcome
    assert warehouse.execute("SELECT count(*) FROM dimdate").fetchone() == (0,)
    wh.close()


def test_a_load_queued_behind_another_sessions_lock_gives_up_after_the_lock_wait(
        wh_settings: Settings, warehouse: psycopg.Connection[Any], tmp_path: Path) -> None:
    """A dashboard's or a DBA's lock on a warehouse table: the load waits at most
    SOFTCART_WAREHOUSE_LOCK_WAIT_SECONDS, then fails as transient (retried, and seen) instead of
    waiting until the hour's receive limit (#32 item 3)."""
    from loader.backends import open_warehouse

    s = wh_settings.model_copy(update={"warehouse_lock_wait_seconds": 1.0})
    wh = open_warehouse(s.warehouse_config)
    wh.init()
    spool = Spool(tmp_path)
    spool.prepare()
    batch = spool.write(3, {"dimdate": "U,20210101,2021-01-01,2021,1,Q1,1,January,1,6,Friday\n"}, {})
    locker = psycopg.connect(warehouse.info.dsn)
    locker.execute("LOCK TABLE dimdate IN ACCESS EXCLUSIVE MODE")
    started = time.monotonic()
    try:
        with pytest.raises(TransientError, match="lock"):
            wh.load(batch)
        assert time.monotonic() - started < 30, "gave up after the lock wait, not the receive limit"
    finally:
        locker.rollback()
        locker.close()
    assert wh.load(batch) is True  # once the lock is gone
    wh.close()

"""The per-pipeline locks on real PostgreSQL: every staging write transaction waits for the apply
lock (so a reconcile repair and a daemon batch never interleave), a warehouse load waits for
the flush lock (so two loaders never race on a batch), and a batch of the outbox waits for the
writers in flight but does not hold them back while it is built."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from cdc.settings import Settings
from loader.backends import open_warehouse
from loader.checkpoint import lock_apply
from loader.ddl import ensure_schema
from loader.flush import Flusher
from loader.spool import Spool
from loader.staging import StagingWriter
from loader.star import StarSchema, enqueue
from tests.helpers import SALES_DDL, execute, running_pipeline, wait_caught_up, wait_until
from transform.errors import TransientError
from transform.schema import Column, Table
from transform.star import SALES_COLUMNS, DayZone

PG = psycopg.Connection[Any]


def _waits_on_advisory_lock(staging: PG, pid: int) -> bool:
    row = staging.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory' AND NOT granted",
                          (pid,)).fetchone()
    return bool(row and row[0])


def _blocked_until_released(staging: PG, url: str, key: str, work: Callable[[PG], None]) -> None:
    """Hold ``key``'s advisory lock elsewhere; ``work`` on its own connection must wait for it,
    then finish once it is released."""
    holder = psycopg.connect(url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
    conn = psycopg.connect(url, autocommit=True)
    done = threading.Event()

    def run() -> None:
        work(conn)
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_until(lambda: _waits_on_advisory_lock(staging, conn.info.backend_pid), 30, "the work to wait for the lock")
    assert not done.is_set()
    holder.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
    assert done.wait(30), "the work did not go on once the lock was released"
    t.join(30)
    conn.close()
    holder.close()


def test_every_staging_write_transaction_waits_for_the_apply_lock(staging: PG, settings: Settings) -> None:
    def write(conn: PG) -> None:
        writer = StagingWriter(conn, {}, settings.pipeline_name)
        writer.begin()
        writer.rollback()

    _blocked_until_released(staging, staging.info.dsn, f"softcart-sync apply {settings.pipeline_name}", write)


def test_a_warehouse_load_waits_for_the_flush_lock(staging: PG, wh_settings: Settings, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    warehouse = open_warehouse(wh_settings.warehouse_config)

    ensure_schema(staging, {})

    def load(conn: PG) -> None:
        Flusher(conn, spool, warehouse, wh_settings.pipeline_name).load_pending()

    _blocked_until_released(staging, staging.info.dsn, f"softcart-sync flush {wh_settings.pipeline_name}", load)
    warehouse.close()


def _outbox_ready(staging: PG, wh_settings: Settings) -> None:
    ensure_schema(staging, {})
    sales = Table("sales_data", tuple(Column(c, "int", "int") for c in SALES_COLUMNS), ("rowid",))
    with staging.cursor() as cur:
        StarSchema(sales, DayZone(wh_settings.zone)).ensure_schema(cur)


def _flusher(staging: PG, wh_settings: Settings, tmp_path: Path) -> Flusher:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    conn = psycopg.connect(staging.info.dsn, autocommit=True)
    return Flusher(conn, spool, open_warehouse(wh_settings.warehouse_config), wh_settings.pipeline_name)


def test_a_batch_waits_for_outbox_writers_in_flight_and_takes_their_rows(staging: PG, wh_settings: Settings,
                                                                          tmp_path: Path) -> None:
    _outbox_ready(staging, wh_settings)
    writer = psycopg.connect(staging.info.dsn, autocommit=True)
    writer.execute("BEGIN")
    lock_apply(writer, wh_settings.pipeline_name)
    with writer.cursor() as cur:
        enqueue(cur, [("factsales", (7,))])  # its id is taken now, its commit comes later
    flusher = _flusher(staging, wh_settings, tmp_path)
    made: list[int | None] = []
    t = threading.Thread(target=lambda: made.append(flusher.create_batch()), daemon=True)
    t.start()
    wait_until(lambda: _waits_on_advisory_lock(staging, flusher.conn.info.backend_pid), 30,
               "the batch maker to wait for the writer")
    writer.execute("COMMIT")
    t.join(30)
    assert made and made[0] is not None
    assert flusher.batch_keys(made[0]) == {("factsales", ("7",))}  # the keys its spooled files hold
    assert staging.execute("SELECT count(*) FROM softcart.outbox").fetchone() == (0,)
    writer.close()
    flusher.conn.close()


def test_writers_go_on_while_a_batch_is_built(staging: PG, wh_settings: Settings, tmp_path: Path) -> None:
    _outbox_ready(staging, wh_settings)
    with staging.cursor() as cur:
        enqueue(cur, [("factsales", (1,))])
    staging.execute("INSERT INTO softcart.flush_state (pipeline) VALUES (%s)", (wh_settings.pipeline_name,))
    # Hold the batch maker inside its transaction, after its snapshot: on the flush_state row.
    holder = psycopg.connect(staging.info.dsn, autocommit=True)
    holder.execute("BEGIN")
    holder.execute("SELECT * FROM softcart.flush_state FOR UPDATE")
    flusher = _flusher(staging, wh_settings, tmp_path)
    made: list[int | None] = []
    t = threading.Thread(target=lambda: made.append(flusher.create_batch()), daemon=True)
    t.start()
    pid = flusher.conn.info.backend_pid
    wait_until(lambda: staging.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted",
                                       (pid,)).fetchone() == (1,), 30, "the batch maker to be inside its transaction")
    # A writer's whole transaction (apply lock, outbox rows, commit) is not held back.
    writer = psycopg.connect(staging.info.dsn, autocommit=True)
    writer.execute("SET lock_timeout = '5s'")
    with writer.transaction(), writer.cursor() as cur:
        lock_apply(writer, wh_settings.pipeline_name)
        enqueue(cur, [("factsales", (2,))])
    holder.execute("ROLLBACK")
    t.join(30)
    assert made and made[0] is not None
    # The batch took what was committed before its snapshot; the later row waits for the next one.
    assert flusher.batch_keys(made[0]) == {("factsales", ("1",))}
    assert staging.execute("SELECT k1 FROM softcart.outbox").fetchall() == [(2,)]
    for c in (writer, holder, flusher.conn):
        c.close()


def test_a_loader_lock_held_too_long_is_a_named_error_not_an_endless_wait(
        staging: PG, wh_settings: Settings, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    ensure_schema(staging, {})
    holder = psycopg.connect(staging.info.dsn, autocommit=True, application_name="stuck-loader")
    holder.execute("SELECT pg_advisory_lock(hashtext('softcart-sync flush ' || %s))", (wh_settings.pipeline_name,))
    (pid,) = holder.execute("SELECT pg_backend_pid()").fetchone() or (0,)
    conn = psycopg.connect(staging.info.dsn, autocommit=True)
    try:
        flusher = Flusher(conn, spool, open_warehouse(wh_settings.warehouse_config), wh_settings.pipeline_name,
                          lock_wait_seconds=1)
        with pytest.raises(TransientError) as err:
            flusher.load_pending()
        text = str(err.value)
        assert f"pid {pid} (stuck-loader" in text and f"pg_terminate_backend({pid})" in text
        assert "SOFTCART_LOCK_WAIT_SECONDS" in text
        holder.close()  # the holder gone, the same flusher goes on
        assert flusher.load_pending() == (0, 0, 0, 0)
        assert conn.execute("SHOW lock_timeout").fetchone() == ("0",)
    finally:
        conn.close()
        if not holder.closed:
            holder.close()


def test_a_writer_waiting_for_the_apply_lock_is_not_taken_for_a_silent_network_and_waits_a_bounded_time(
        settings: Settings, source: Any, staging: PG) -> None:
    execute(source, SALES_DDL)
    s = settings.model_copy(update={"read_timeout_seconds": 1.0, "lock_wait_seconds": 4.0, "retry_max_seconds": 1.0})
    with running_pipeline(s) as p:
        wait_caught_up(staging, source)
        holder = psycopg.connect(staging.info.dsn, autocommit=True, application_name="long-rebuild")
        holder.execute("BEGIN")
        lock_apply(holder, s.pipeline_name)  # a rebuild holding the apply lock
        with capture_logs() as logs:
            execute(source, "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 1, '2021-01-01 00:00:00')")
            wait_until(lambda: any(e["event"] == "pipeline_retrying" for e in logs), 30, "the lock wait's limit")
            events = [e["event"] for e in logs]
            retry = next(e for e in logs if e["event"] == "pipeline_retrying")
        assert "writer_waiting_for_lock" in events and "staging_unresponsive" not in events
        assert "held for over 4 s" in retry["error"] and "long-rebuild" in retry["error"]
        assert "pg_terminate_backend" in retry["error"]
        holder.execute("ROLLBACK")
        holder.close()
        wait_caught_up(staging, source)
        assert p.state.restarts >= 1
    assert staging.execute("SELECT count(*) FROM staging.sales_data").fetchone() == (1,)

"""The per-pipeline locks on real PostgreSQL: every staging write transaction waits for the apply
lock (so a reconcile repair and a daemon batch never interleave), and a warehouse load waits for
the flush lock (so two loaders never race on a batch)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from cdc.settings import Settings
from loader.backends import open_warehouse
from loader.ddl import ensure_schema
from loader.flush import Flusher
from loader.spool import Spool
from loader.staging import StagingWriter
from tests.helpers import wait_until

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
    warehouse = open_warehouse(wh_settings)

    ensure_schema(staging, {})

    def load(conn: PG) -> None:
        Flusher(conn, spool, warehouse, wh_settings.pipeline_name).load_pending()

    _blocked_until_released(staging, staging.info.dsn, f"softcart-sync flush {wh_settings.pipeline_name}", load)
    warehouse.close()

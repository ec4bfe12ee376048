"""The binlog purged beyond the saved position: a clear fatal error, then a way out."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pymysql
import pytest

from cdc.dev.localservers import MariaDBServer
from cdc.settings import Settings
from tests.helpers import SALES_DDL, assert_same, cli, execute, running_pipeline, wait_caught_up, wait_until

Conn = pymysql.connections.Connection
PG = psycopg.Connection[Any]


def purge_past(mariadb: MariaDBServer, source: Conn, saved_file: str) -> str:
    """Rotate the binlog twice, with changes in between, and purge everything before the last file."""
    root = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", autocommit=True)

    def no_replica_reading() -> bool:
        # A stopped daemon's dump thread lingers on the server until its next heartbeat finds the
        # socket closed; the server won't purge a file a dump thread still reads.
        with root.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'")
            return bool(cur.fetchone()[0] == 0)

    wait_until(no_replica_reading, 30, "stopped daemons' dump threads to end")
    with root.cursor() as cur:
        cur.execute("FLUSH BINARY LOGS")
        execute(source, "INSERT INTO sales_data VALUES (100, 1, 1, 1.00, 1, '2021-01-01 00:00:00')",
                "UPDATE sales_data SET quantity = 9, timestamp = timestamp WHERE rowid = 1")

    def purged() -> list[str] | None:
        # MariaDB purges only up to its binlog checkpoint, which follows InnoDB's log flush (about
        # once a second here, later after a crash recovery): rotate and ask again until the file
        # is gone.
        with root.cursor() as cur:
            cur.execute("FLUSH BINARY LOGS")
            cur.execute("SHOW MASTER STATUS")
            cur.execute("PURGE BINARY LOGS TO %s", (str(cur.fetchone()[0]),))
            cur.execute("SHOW BINARY LOGS")
            kept = [str(r[0]) for r in cur.fetchall()]
        if saved_file in kept:
            time.sleep(0.5)  # pace the rotations; wait_until holds the deadline
            return None
        return kept

    kept: list[str] = wait_until(purged, 60, "the purge to remove the saved position's file")
    root.close()
    return kept[0]


@pytest.fixture
def streamed_then_stopped(settings: Settings, source: Conn, staging: PG) -> None:
    execute(source, SALES_DDL, "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 1, '2021-01-01 00:00:00')")
    with running_pipeline(settings):
        wait_caught_up(staging, source)


def test_purged_position_is_fatal_naming_both_positions_then_resnapshot_recovers(
        streamed_then_stopped: None, mariadb: MariaDBServer, settings_env: dict[str, str], settings: Settings,
        source: Conn, staging: PG, source_db: str) -> None:
    (saved,) = staging.execute("SELECT binlog_file || ':' || binlog_pos FROM softcart.position").fetchone() or ("",)
    oldest = purge_past(mariadb, source, saved.split(":")[0])
    out = cli("run", env=settings_env, timeout=40)
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert f"saved position {saved}" in text and f"oldest available is {oldest}:4" in text
    assert "softcart-sync resnapshot" in text
    fixed = cli("resnapshot", env=settings_env, timeout=40)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    with running_pipeline(settings):
        wait_caught_up(staging, source)
    assert_same(source, staging, source_db, "sales_data")
    assert staging.execute("SELECT quantity FROM star.factsales WHERE rowid = 1").fetchone() == (9,)


def test_auto_resnapshot_takes_a_new_snapshot_by_itself(
        streamed_then_stopped: None, mariadb: MariaDBServer, settings: Settings, source: Conn, staging: PG,
        source_db: str) -> None:
    (saved,) = staging.execute("SELECT binlog_file FROM softcart.position").fetchone() or ("",)
    purge_past(mariadb, source, saved)
    with running_pipeline(settings.model_copy(update={"auto_resnapshot": True})) as p:
        wait_caught_up(staging, source)
        # the snapshot's position is in staging a moment before take_snapshot returns and the gauge
        # is cleared: read at once it raced (a clean clone's run saw 1.0)
        wait_until(lambda: p.metrics.binlog_purged._value.get() == 0, 30, "softcart_binlog_position_purged 0")
    assert_same(source, staging, source_db, "sales_data")


def test_resnapshot_refuses_while_the_daemon_runs_unless_it_can_copy_online(
        settings: Settings, settings_env: dict[str, str], source: Conn, staging: PG) -> None:
    """A whole new snapshot needs the daemon stopped; next to a running daemon, `resnapshot` copies
    every table online instead (#18) where online copies are on."""
    execute(source, SALES_DDL)
    with running_pipeline(settings):
        wait_caught_up(staging, source)
        out = cli("resnapshot", env={**settings_env, "SOFTCART_ONLINE_COPY": "off"}, timeout=40)
        online = cli("resnapshot", env=settings_env, timeout=40)
    assert out.returncode == 2 and "stop it first" in out.stderr
    assert online.returncode == 0 and "sales_data: online copy requested" in online.stdout, online.stderr

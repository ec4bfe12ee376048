"""`softcart-sync run` as systemd sees it: sd_notify, watchdog, metrics, health, signals."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from cdc.dev.localservers import MariaDBServer, PostgresServer
from tests.helpers import (
    SALES_DDL,
    Daemons,
    NotifySocket,
    assert_same,
    cli,
    execute,
    get,
    metrics_port,
    paused,
    sample,
    wait_caught_up,
    wait_until,
)

Conn = pymysql.connections.Connection
PG = psycopg.Connection[Any]


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.close()


def test_ready_status_watchdog_and_metrics_under_load(settings_env: dict[str, str], source: Conn, staging: PG,
                                                      notify: NotifySocket, tmp_path: Path, daemons: Daemons) -> None:
    execute(source, SALES_DDL)
    env = {**settings_env, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    daemon = daemons(env, tmp_path / "daemon.log")
    daemon.start()
    wait_until(lambda: "READY=1" in notify.fields(), 60, "READY=1")
    port = metrics_port(daemon)
    daemon.wait_streaming()
    assert get(port, "/healthz")[0] == 200
    wait_until(lambda: get(port, "/readyz")[0] == 200, 30, "/readyz to say ready")
    before = sample(port, "softcart_rows_applied_total")
    with source.cursor() as cur:
        for i in range(200):
            cur.execute("INSERT INTO sales_data VALUES (%s, 1, 1, 1.00, 1, '2021-01-01 00:00:00')", (i,))
    wait_caught_up(staging, source)
    wait_until(lambda: sample(port, "softcart_rows_applied_total") >= before + 200, 30, "the counter to move")
    assert sample(port, "softcart_binlog_row_events_total", table="sales_data", operation="insert") >= 200
    assert sample(port, "softcart_connected", endpoint="source") == 1
    assert sample(port, "softcart_queue_capacity_chunks") > 0
    assert sample(port, "softcart_star_rows_changed_total") >= 200
    assert sample(port, "softcart_last_commit_timestamp_seconds", stage="staging") > time.time() - 60
    # Idle and caught up: heartbeats keep the lag at zero.
    wait_until(lambda: sample(port, "softcart_replication_lag_seconds") == 0, 30, "lag 0 when idle")
    fields = notify.fields()
    assert any(f.startswith("STATUS=streaming at mysql-bin.") for f in fields), fields
    # Pings keep coming (every half WATCHDOG_USEC): polled, since a fast run gets here within one.
    wait_until(lambda: notify.fields().count("WATCHDOG=1") >= 2, 10, "a second watchdog ping")
    assert daemon.stop(30) == 0
    assert "STOPPING=1" in notify.fields()


def test_sigterm_under_load_exits_0_in_time_and_loses_nothing(mariadb: MariaDBServer, source_db: str,
                                                              settings_env: dict[str, str], source: Conn,
                                                              staging: PG, tmp_path: Path, daemons: Daemons) -> None:
    execute(source, SALES_DDL)
    daemon = daemons(settings_env, tmp_path / "daemon.log")
    daemon.start()
    daemon.wait_streaming()
    stop = threading.Event()
    writer = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", database=source_db,
                             autocommit=True)

    def load() -> None:
        i = 0
        with writer.cursor() as cur:
            while not stop.is_set():
                cur.executemany("INSERT INTO sales_data VALUES (%s, 1, 1, 2.00, 1, '2021-01-01 00:00:00')",
                                [(i + k,) for k in range(50)])
                cur.execute("UPDATE sales_data SET quantity = quantity + 1 WHERE rowid < %s", (i // 2,))
                i += 50

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        wait_until(lambda: (staging.execute("SELECT count(*) FROM staging.sales_data").fetchone() or (0,))[0] > 500,
                   60, "the stream to be under load")
        started = time.monotonic()
        assert daemon.stop(30) == 0
        assert time.monotonic() - started < 30
    finally:
        stop.set()
        t.join(30)
        writer.close()
    daemon.start()
    daemon.wait_streaming()
    wait_caught_up(staging, source)
    assert daemon.stop(30) == 0
    assert_same(source, staging, source_db, "sales_data")


def test_stalled_postgres_stops_the_watchdog_and_turns_readyz_unhealthy(
        postgres: PostgresServer, settings_env: dict[str, str], source: Conn, staging: PG,
        notify: NotifySocket, tmp_path: Path, daemons: Daemons) -> None:
    execute(source, SALES_DDL)
    env = {**settings_env, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000",
           "SOFTCART_STALL_SECONDS": "3"}
    daemon = daemons(env, tmp_path / "daemon.log")
    daemon.start()
    daemon.wait_streaming()
    port = metrics_port(daemon)
    wait_until(lambda: get(port, "/readyz")[0] == 200, 30, "ready")
    with paused(postgres):
        execute(source, "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 1, '2021-01-01 00:00:00')")
        wait_until(lambda: get(port, "/readyz")[0] == 503, 30, "/readyz to report the stall")
        assert "stalled" in get(port, "/readyz")[1]
        notify.drain()
        mark = time.monotonic()
        wait_until(lambda: time.monotonic() - mark > 3, 10, "three seconds of watching")
        pings = [m for t, m in notify.messages if t > mark and "WATCHDOG=1" in m]
        assert pings == [], "a stalled pipeline must not ping the watchdog"
    wait_until(lambda: get(port, "/readyz")[0] == 200, 60, "ready again after PostgreSQL resumes")
    wait_caught_up(staging, source)
    assert daemon.stop(30) == 0


CANARY = "Canary-Pa55word-7731"


def test_canary_password_never_appears_in_logs_metrics_or_status(
        mariadb: MariaDBServer, postgres: PostgresServer, source_db: str, staging_db: str,
        settings_env: dict[str, str], source: Conn, staging: PG, tmp_path: Path, daemons: Daemons) -> None:
    execute(source, SALES_DDL, f"CREATE USER IF NOT EXISTS 'canary'@'%' IDENTIFIED BY '{CANARY}'",
            "GRANT ALL PRIVILEGES ON *.* TO 'canary'@'%'")
    pw_file = tmp_path / "staging-password"
    pw_file.write_text(CANARY + "\n")
    env = {**settings_env,
           "SOFTCART_SOURCE_URL": f"mysql://canary:{CANARY}@127.0.0.1:{mariadb.port}/{source_db}",
           "SOFTCART_STAGING_PASSWORD_FILE": str(pw_file), "SOFTCART_LOG_LEVEL": "debug"}
    daemon = daemons(env, tmp_path / "daemon.log")
    daemon.start()
    daemon.wait_streaming()
    port = metrics_port(daemon)
    execute(source, "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 1, NULL)")
    wait_caught_up(staging, source)
    _, metrics_text = get(port, "/metrics")
    _, ready_text = get(port, "/readyz")
    assert daemon.stop(30) == 0
    outputs = [cli(*args, env=env, timeout=60) for args in (["status"], ["status", "--json"], ["check"], ["settings"])]
    bad_pw = cli("check", timeout=60, env={**env, "SOFTCART_SOURCE_URL":
                                           f"mysql://canary:{CANARY}x@127.0.0.1:{mariadb.port}/{source_db}"})
    texts = [daemon.log.read_text(), metrics_text, ready_text, bad_pw.stdout + bad_pw.stderr]
    texts += [o.stdout + o.stderr for o in outputs]
    assert "access denied" in bad_pw.stdout
    assert all(CANARY not in t for t in texts)
    assert "dead letters" in outputs[0].stdout, "the status output was produced"
    # the effective settings are logged at start, URLs without their password
    assert '"event": "settings"' in texts[0] and f'"source_url": "mysql://canary@127.0.0.1:{mariadb.port}/' in texts[0]

"""softcart_replication_lag_seconds on real servers: milliseconds under a light load (it was the
binlog timestamp's second: 0.5 s typical while the freshness was 20 ms), 0 when idle, and
growing while the writer or the reader is stalled."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import psycopg
import pymysql
from pydantic import SecretStr

from cdc.dev.localservers import MariaDBServer
from cdc.pipeline import Pipeline
from cdc.settings import Settings
from loader.checkpoint import lock_apply
from tests.helpers import SALES_DDL, PausableProxy, execute, running_pipeline, wait_caught_up, wait_until

Conn = pymysql.connections.Connection
PG = psycopg.Connection[Any]


def lag(p: Pipeline) -> float:
    value = p.metrics.registry.get_sample_value("softcart_replication_lag_seconds")
    assert value is not None
    return value


def test_lag_under_a_light_load_is_milliseconds_not_the_binlog_second(
        settings: Settings, source: Conn, staging: PG, mariadb: MariaDBServer, source_db: str) -> None:
    execute(source, SALES_DDL)
    with running_pipeline(settings) as p:
        wait_until(lambda: p.state.streaming, 60, "streaming")
        stop = threading.Event()

        def load() -> None:
            conn = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", database=source_db,
                                   autocommit=True)
            n = 0
            while not stop.is_set():
                n += 1
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO sales_data VALUES (%s, 1, 1, 1.00, 1, '2024-01-01 10:00:00')", (n,))
                stop.wait(0.02)  # about 50 transactions a second
            conn.close()

        t = threading.Thread(target=load, daemon=True)
        t.start()
        samples: list[float] = []
        try:
            wait_until(lambda: p.state.transactions_applied > 20, 60, "the load to flow")

            def sampled() -> bool:
                samples.append(lag(p))
                return len(samples) >= 60

            wait_until(sampled, 60, "60 samples of the lag")
        finally:
            stop.set()
            t.join(30)
        wait_caught_up(staging, source)
        # binlog timestamps truncate to the second: a lag read from them has a median near 0.5 s
        assert statistics.median(samples) < 0.25, samples
        wait_until(lambda: lag(p) == 0, 30, "lag 0 when idle and caught up")


def test_lag_and_queue_depth_grow_while_the_writer_waits_and_drop_once_it_commits(
        settings: Settings, source: Conn, staging: PG) -> None:
    execute(source, SALES_DDL)
    s = settings.model_copy(update={"lock_wait_seconds": 60.0})
    with running_pipeline(s) as p:
        wait_until(lambda: p.state.streaming, 60, "streaming")
        holder = psycopg.connect(staging.info.dsn, autocommit=True)
        try:
            holder.execute("BEGIN")
            lock_apply(holder, s.pipeline_name)
            held = time.monotonic()
            execute(source, "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 1, '2024-01-01 10:00:00')")
            wait_until(lambda: lag(p) >= 3, 30, "the lag to grow while the writer waits")
            assert lag(p) <= time.monotonic() - held + 1.5  # and not more than it has waited
            for n in range(2, 6):
                execute(source, f"INSERT INTO sales_data VALUES ({n}, 1, 1, 1.00, 1, '2024-01-01 10:00:00')")
            # the queue's depth is counted at scrape too: it shows the backlog behind the waiting writer
            wait_until(lambda: (p.metrics.registry.get_sample_value("softcart_queue_depth_chunks") or 0) >= 1, 30,
                       "the queue depth to show the waiting transactions")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        wait_caught_up(staging, source)
        wait_until(lambda: lag(p) < 1, 30, "the lag to drop once committed")


def test_lag_grows_while_the_reader_hears_nothing(
        settings: Settings, source: Conn, staging: PG, mariadb: MariaDBServer, source_db: str) -> None:
    execute(source, SALES_DDL)
    proxy = PausableProxy(mariadb.port)
    s = settings.model_copy(update={"source_url": SecretStr(f"mysql://root@127.0.0.1:{proxy.port}/{source_db}"),
                                    "read_timeout_seconds": 30.0})
    try:
        with running_pipeline(s) as p:
            wait_until(lambda: p.state.streaming and lag(p) == 0, 60, "streaming and caught up")
            with proxy.paused():
                execute(source, "INSERT INTO sales_data VALUES (1, 1, 1, 1.00, 1, '2024-01-01 10:00:00')")
                wait_until(lambda: lag(p) >= 3, 30, "the lag to grow while nothing comes (heartbeats: 1 s)")
            wait_caught_up(staging, source)
            wait_until(lambda: lag(p) == 0, 30, "lag 0 again")
    finally:
        proxy.close()

"""Servers killed and restarted under load: the daemon reconnects with backoff, resumes at its
saved position, and loses or doubles nothing."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import psycopg
import pymysql

from cdc.dev.localservers import MariaDBServer, PostgresServer
from tests.helpers import Daemons, OutageLoad, assert_fault_free, execute, wait_caught_up, wait_until

Conn = pymysql.connections.Connection
PG = psycopg.Connection[Any]


class Counters:
    """Counter increments and inserts, one transaction at a time."""

    def __init__(self) -> None:
        self.rnd = random.Random(5)
        self.next_id = 1000

    def __call__(self, cur: Any) -> None:
        # The id is taken before the commit: a commit whose answer the outage lost may have happened,
        # and inserting its id again would fail on every try from then on.
        self.next_id += 1
        lo = self.rnd.randint(1, 200)
        cur.execute("UPDATE counters SET n = n + 1 WHERE id BETWEEN %s AND %s", (lo, lo + 20))
        cur.execute("INSERT INTO counters VALUES (%s, 0)", (self.next_id,))


def start_load(mariadb: MariaDBServer, database: str) -> OutageLoad:
    return OutageLoad(mariadb.port, database, Counters(), pause=0.005).start()


def test_mariadb_killed_and_restarted_mid_stream_loses_nothing(
        mariadb: MariaDBServer, source_db: str, source: Conn, staging: PG, settings_env: dict[str, str],
        tmp_path: Path, daemons: Daemons) -> None:
    execute(source, "CREATE TABLE counters (id INT PRIMARY KEY, n BIGINT NOT NULL)")
    with source.cursor() as cur:
        cur.executemany("INSERT INTO counters VALUES (%s, 0)", [(i,) for i in range(1, 201)])
    daemon = daemons({**settings_env, "SOFTCART_SOURCE_TABLES": "counters", "SOFTCART_RETRY_MAX_SECONDS": "2",
                     "SOFTCART_READ_TIMEOUT_SECONDS": "5"}, tmp_path / "daemon.log")
    daemon.start()
    load = start_load(mariadb, source_db)
    try:
        daemon.wait_streaming()
        for kill in (True, False):  # SIGKILL, then a clean restart
            load.wait_for(100, "load before the fault")
            mariadb.kill() if kill else mariadb.stop()
            time.sleep(0.5)  # the outage itself, not a synchronisation
            mariadb.start()
        load.wait_for(100, "load after the faults")
        load.finish()
        source = pymysql.connect(host="127.0.0.1", port=mariadb.port, user="root", database=source_db,
                                 autocommit=True)  # the fixture's connection died with the server
        wait_caught_up(staging, source, timeout=120)
        assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon must ride out the outages"
        assert daemon.stop(30) == 0
    finally:
        load.finish()
        if mariadb.proc is None:
            mariadb.start()
    assert_fault_free("mariadb killed and restarted", "MariaDB SIGKILL 1, restart 1", source, staging, source_db,
                      "counters")
    assert "pipeline_retrying" in daemon.log.read_text()


def test_postgres_killed_mid_batch_and_restarted_loses_nothing(
        mariadb: MariaDBServer, postgres: PostgresServer, source_db: str, source: Conn, staging_db: str,
        settings_env: dict[str, str], tmp_path: Path, daemons: Daemons) -> None:
    execute(source, "CREATE TABLE counters (id INT PRIMARY KEY, n BIGINT NOT NULL)")
    with source.cursor() as cur:
        cur.executemany("INSERT INTO counters VALUES (%s, 0)", [(i,) for i in range(1, 201)])
    daemon = daemons({**settings_env, "SOFTCART_SOURCE_TABLES": "counters", "SOFTCART_RETRY_MAX_SECONDS": "2"},
                    tmp_path / "daemon.log")
    daemon.start()
    load = start_load(mariadb, source_db)
    try:
        daemon.wait_streaming()
        for kill in (True, False):
            load.wait_for(100, "load before the fault")
            postgres.kill() if kill else postgres.stop()
            time.sleep(0.5)  # the outage itself, not a synchronisation
            postgres.start()
        load.wait_for(100, "load after the faults")
        load.finish()
        with psycopg.connect(postgres.url(staging_db), autocommit=True) as staging:
            wait_caught_up(staging, source, timeout=120)
            assert daemon.proc is not None and daemon.proc.poll() is None
            assert daemon.stop(30) == 0
            assert_fault_free("postgres killed and restarted", "PostgreSQL SIGKILL 1, restart 1", source, staging,
                              source_db, "counters")
    finally:
        load.finish()
        if postgres.proc is None:
            postgres.start()
    assert "pipeline_retrying" in daemon.log.read_text()


def test_silent_network_cut_to_the_source_is_noticed_and_recovered(
        mariadb: MariaDBServer, source_db: str, source: Conn, staging: PG, settings_env: dict[str, str],
        tmp_path: Path, daemons: Daemons) -> None:
    from tests.helpers import PausableProxy, get, metrics_port

    execute(source, "CREATE TABLE counters (id INT PRIMARY KEY, n BIGINT NOT NULL)",
            "INSERT INTO counters VALUES (1, 0)")
    proxy = PausableProxy(mariadb.port)
    env = {**settings_env, "SOFTCART_SOURCE_TABLES": "counters",
           "SOFTCART_SOURCE_URL": f"mysql://root@127.0.0.1:{proxy.port}/{source_db}",
           "SOFTCART_READ_TIMEOUT_SECONDS": "4", "SOFTCART_CONNECT_TIMEOUT_SECONDS": "2",
           "SOFTCART_RETRY_MAX_SECONDS": "2", "SOFTCART_STALL_SECONDS": "6"}
    daemon = daemons(env, tmp_path / "daemon.log")
    daemon.start()
    try:
        daemon.wait_streaming()
        port = metrics_port(daemon)
        wait_until(lambda: get(port, "/readyz")[0] == 200, 30, "ready")
        proxy.pause()
        cut_at = time.monotonic()
        for _ in range(20):
            execute(source, "UPDATE counters SET n = n + 1")
        wait_until(lambda: "pipeline_retrying" in daemon.log.read_text(), 60, "the daemon to notice the cut")
        noticed = time.monotonic() - cut_at
        assert noticed < 30, f"took {noticed:.0f} s to notice"
        wait_until(lambda: get(port, "/readyz")[0] == 503, 30, "/readyz to report it")
        proxy.resume()
        wait_caught_up(staging, source, timeout=120)
        assert daemon.stop(30) == 0
    finally:
        proxy.close()
    assert staging.execute("SELECT n FROM staging.counters").fetchone() == (20,)


def test_silent_network_cut_to_staging_is_noticed_and_recovered(
        mariadb: MariaDBServer, postgres: PostgresServer, source_db: str, staging_db: str, source: Conn,
        staging: PG, settings_env: dict[str, str], tmp_path: Path, daemons: Daemons) -> None:
    from tests.helpers import PausableProxy

    execute(source, "CREATE TABLE counters (id INT PRIMARY KEY, n BIGINT NOT NULL)",
            "INSERT INTO counters VALUES (1, 0)")
    proxy = PausableProxy(postgres.port)
    env = {**settings_env, "SOFTCART_SOURCE_TABLES": "counters",
           "SOFTCART_STAGING_URL": f"postgresql://postgres@127.0.0.1:{proxy.port}/{staging_db}",
           "SOFTCART_READ_TIMEOUT_SECONDS": "4", "SOFTCART_CONNECT_TIMEOUT_SECONDS": "2",
           "SOFTCART_RETRY_MAX_SECONDS": "2"}
    daemon = daemons(env, tmp_path / "daemon.log")
    daemon.start()
    try:
        daemon.wait_streaming()
        wait_caught_up(staging, source)
        proxy.pause()
        cut_at = time.monotonic()
        for _ in range(20):
            execute(source, "UPDATE counters SET n = n + 1")
        wait_until(lambda: "pipeline_retrying" in daemon.log.read_text(), 60, "the daemon to notice the cut")
        assert time.monotonic() - cut_at < 40
        proxy.resume()
        wait_caught_up(staging, source, timeout=120)
        assert daemon.stop(30) == 0
    finally:
        proxy.close()
    assert staging.execute("SELECT n FROM staging.counters").fetchone() == (20,)


def test_our_own_stale_session_holding_the_pipeline_lock_is_taken_over(postgres: PostgresServer,
                                                                        staging_db: str) -> None:
    """After a silent cut the server may keep our old session (and its pipeline lock) for hours:
    a holder with this process's application name is ours and is terminated; another daemon's
    lock is respected."""
    import pytest

    from cdc.pipeline import hold_pipeline_lock
    from loader.pg import INSTANCE
    from transform.errors import TransientError

    url = postgres.url(staging_db)
    stale = psycopg.connect(url, autocommit=True, application_name=INSTANCE)
    hold_pipeline_lock(stale, "p1")
    other = psycopg.connect(url, autocommit=True, application_name="softcart-sync otherhost:1")
    hold_pipeline_lock(other, "p2")
    with psycopg.connect(url, autocommit=True, application_name=INSTANCE) as fresh:
        hold_pipeline_lock(fresh, "p1")  # takes over from our stale session
        with pytest.raises(TransientError, match="another softcart-sync is running pipeline 'p2'"):
            hold_pipeline_lock(fresh, "p2")
    with pytest.raises(psycopg.OperationalError):
        stale.execute("SELECT 1")
    assert other.execute("SELECT 1").fetchone() == (1,)
    other.close()


def test_a_pipeline_lock_held_by_a_foreign_session_is_named_with_the_way_to_end_it(
        postgres: Any, staging_db: str) -> None:
    import pytest

    from cdc.pipeline import hold_pipeline_lock
    from loader.pg import INSTANCE
    from transform.errors import TransientError

    url = postgres.url(staging_db)
    with psycopg.connect(url, autocommit=True, application_name="softcart-sync deadhost:4242") as foreign:
        hold_pipeline_lock(foreign, "p3")
        (pid,) = foreign.execute("SELECT pg_backend_pid()").fetchone() or (0,)
        with psycopg.connect(url, autocommit=True, application_name=INSTANCE) as fresh, \
                pytest.raises(TransientError) as err:
            hold_pipeline_lock(fresh, "p3")
    text = str(err.value)
    assert f"held by pid {pid} (softcart-sync deadhost:4242 from 127.0.0.1" in text, text
    assert f"SELECT pg_terminate_backend({pid})" in text

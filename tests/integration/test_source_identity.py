"""The server behind a saved position: a failover to a replica resumes by GTID, a server without
our transactions and a binlog reset stop with the way out, never resume at a foreign offset.

Servers of their own (a primary, its replica with log_slave_updates, and an unrelated one), so that
RESET MASTER and replication touch no other test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from cdc.capture.flavor import mysql_gtid_normal
from cdc.capture.positions import mariadb_gtid_contains
from cdc.dev.localservers import MariaDBServer, MySQLServer
from cdc.settings import Settings, load_settings
from tests.helpers import assert_same, execute, running_pipeline, wait_caught_up, wait_pipeline_died, wait_until
from transform.errors import FatalError

Conn = pymysql.connections.Connection
PG = psycopg.Connection[Any]
DB = "ident"
ITEMS = "CREATE TABLE items (id INT PRIMARY KEY, v INT) ENGINE=InnoDB"


@pytest.fixture(scope="module")
def servers(server_root: Path) -> Iterator[dict[str, MariaDBServer]]:
    """primary (server_id 11), replica (12, replicating the primary by GTID, logging what it
    applies), other (13, unrelated)."""
    made = {"primary": MariaDBServer(server_root / "ident-primary", server_id=11),
            "replica": MariaDBServer(server_root / "ident-replica", server_id=12, extra_args=("--log-slave-updates",)),
            "other": MariaDBServer(server_root / "ident-other", server_id=13)}
    try:
        for s in made.values():
            s.start()
        with contextlib.closing(connect(made["replica"], None)) as r:
            execute(r, f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={made['primary'].port},"
                       " MASTER_USER='root', MASTER_USE_GTID=slave_pos", "START SLAVE")
        yield made
    finally:
        for s in made.values():
            if s.proc is not None:
                s.stop()


def connect(server: MariaDBServer, database: str | None = DB) -> Conn:
    return pymysql.connect(host="127.0.0.1", port=server.port, user="root", database=database, autocommit=True)


def gtid(conn: Conn) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.gtid_binlog_pos")
        row = cur.fetchone()
    return str(row[0] or "") if row else ""


def pointed_at(settings_env: dict[str, str], server: MariaDBServer, database: str = DB, **extra: str) -> Settings:
    env = {**settings_env, "SOFTCART_SOURCE_URL": server.url(database=database), "SOFTCART_SOURCE_TABLES": "items",
           "SOFTCART_STAR_TABLE": "", **extra}
    return load_settings(environ={}, **{k.removeprefix("SOFTCART_").lower(): v for k, v in env.items()})


def fatal_at_start(settings: Settings) -> str:
    with pytest.raises(FatalError) as died, running_pipeline(settings) as p:
        wait_pipeline_died(p)
    return str(died.value)


def test_a_failover_to_a_replica_resumes_by_gtid_and_an_unrelated_server_is_refused(
        servers: dict[str, MariaDBServer], settings_env: dict[str, str], staging: PG) -> None:
    primary, replica, other = servers["primary"], servers["replica"], servers["other"]
    with contextlib.closing(connect(primary, None)) as root:
        execute(root, f"CREATE DATABASE {DB}")
    src = connect(primary)
    execute(src, ITEMS, "INSERT INTO items VALUES " + ", ".join(f"({i}, {i})" for i in range(1, 51)),
            "INSERT INTO items VALUES " + ", ".join(f"({i}, {i})" for i in range(51, 101)))
    with contextlib.closing(connect(other, None)) as root:  # same tables, another history
        execute(root, f"CREATE DATABASE {DB}", f"USE {DB}", ITEMS, "INSERT INTO items VALUES (1, 1)")
    with running_pipeline(pointed_at(settings_env, primary)):
        wait_caught_up(staging, src)
    # while the daemon is stopped: more changes, replicated
    for i in range(10):
        execute(src, f"UPDATE items SET v = v + 1 WHERE id <= {10 * (i + 1)}",
                f"INSERT INTO items VALUES ({200 + i}, 0)")
    rep = connect(replica)
    wait_until(lambda: mariadb_gtid_contains(gtid(rep), gtid(src)), 60, "the replica to apply the primary's binlog")
    (saved,) = staging.execute("SELECT binlog_file || ':' || binlog_pos FROM softcart.position").fetchone() or ("",)

    # the URL pointed at a server that never had our transactions: refused, naming both servers
    text = fatal_at_start(pointed_at(settings_env, other))
    assert "server_id 11" in text and f"127.0.0.1:{other.port}, server_id 13" in text and "resnapshot" in text
    # ... also once its GTID sequence numbers pass ours: the server itself refuses the GTID
    with contextlib.closing(connect(other)) as o:
        execute(o, *[f"INSERT INTO items VALUES ({i}, 0)" for i in range(2, 8)])
    text = fatal_at_start(pointed_at(settings_env, other))
    assert "refused to stream after the saved GTID state" in text and "resnapshot" in text, text
    assert staging.execute("SELECT binlog_file || ':' || binlog_pos FROM softcart.position").fetchone() == (saved,)

    # the primary is gone; the replica takes over: resumed after our transactions by GTID (its
    # binlog has the same file names, at other offsets)
    primary.stop()
    execute(rep, "STOP SLAVE", "RESET SLAVE ALL")
    with running_pipeline(pointed_at(settings_env, replica)):
        wait_caught_up(staging, rep)
        assert_same(rep, staging, DB, "items")
        execute(rep, "DELETE FROM items WHERE id > 150", "UPDATE items SET v = -1 WHERE id = 1")
        wait_caught_up(staging, rep)
        assert_same(rep, staging, DB, "items")
    assert staging.execute("SELECT source_server_id FROM softcart.position").fetchone() == (12,)
    # and from now on it is the replica's position: a restart resumes by offset there
    execute(rep, "INSERT INTO items VALUES (300, 300)")
    with running_pipeline(pointed_at(settings_env, replica)):
        wait_caught_up(staging, rep)
        assert_same(rep, staging, DB, "items")


@pytest.fixture(scope="module")
def mysql_pair(server_root: Path) -> Iterator[dict[str, MySQLServer]]:
    """A MySQL primary (server_id 21) and its replica (22), replicating by GTID auto-position."""
    made = {"primary": MySQLServer(server_root / "ident-mysql-primary", server_id=21),
            "replica": MySQLServer(server_root / "ident-mysql-replica", server_id=22)}
    try:
        for s in made.values():
            s.start()
        with contextlib.closing(connect(made["replica"], None)) as r:
            execute(r, f"CHANGE REPLICATION SOURCE TO SOURCE_HOST='127.0.0.1', SOURCE_PORT={made['primary'].port},"
                       " SOURCE_USER='root', SOURCE_AUTO_POSITION=1, GET_SOURCE_PUBLIC_KEY=1", "START REPLICA")
        yield made
    finally:
        for s in made.values():
            s.remove()


def test_mysql_a_failover_to_a_gtid_replica_resumes_by_gtid(
        mysql_pair: dict[str, MySQLServer], settings_env: dict[str, str], staging: PG) -> None:
    """#31: MySQL's GTIDs (server uuid:sequence) carry a failover as MariaDB's domain-server-sequence
    do: the replica's binlog has other file names and offsets; the daemon resumes after its own
    transactions there, by GTID."""
    primary, replica = mysql_pair["primary"], mysql_pair["replica"]
    with contextlib.closing(connect(primary, None)) as root:
        execute(root, f"CREATE DATABASE {DB}")
    src = connect(primary)
    execute(src, ITEMS, "INSERT INTO items VALUES " + ", ".join(f"({i}, {i})" for i in range(1, 101)))
    with running_pipeline(pointed_at(settings_env, primary)):
        wait_caught_up(staging, src)
    for i in range(10):  # while the daemon is stopped: more changes, replicated
        execute(src, f"UPDATE items SET v = v + 1 WHERE id <= {10 * (i + 1)}",
                f"INSERT INTO items VALUES ({200 + i}, 0)")
    with src.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.gtid_executed")
        executed = str((cur.fetchone() or ("",))[0])
    rep = connect(replica)

    def applied() -> bool:
        with rep.cursor() as cur:
            cur.execute("SELECT GTID_SUBSET(%s, @@GLOBAL.gtid_executed)", (executed,))
            return bool((cur.fetchone() or (0,))[0])

    wait_until(applied, 60, "the replica to apply the primary's transactions")
    primary.stop()
    execute(rep, "STOP REPLICA", "RESET REPLICA ALL")
    with running_pipeline(pointed_at(settings_env, replica)):
        wait_caught_up(staging, rep)
        assert_same(rep, staging, DB, "items")
        execute(rep, "DELETE FROM items WHERE id > 150", "UPDATE items SET v = -1 WHERE id = 1")
        wait_caught_up(staging, rep)
        assert_same(rep, staging, DB, "items")
    assert staging.execute("SELECT source_server_id FROM softcart.position").fetchone() == (22,)
    src.close()
    rep.close()


def test_a_reset_binlog_stops_with_the_way_out_or_resnapshots_when_allowed(
        servers: dict[str, MariaDBServer], settings_env: dict[str, str], staging: PG) -> None:
    other = servers["other"]
    with contextlib.closing(connect(other, None)) as root:
        execute(root, "CREATE DATABASE IF NOT EXISTS resetdb", "USE resetdb", "DROP TABLE IF EXISTS items",
                ITEMS, "INSERT INTO items VALUES (1, 1), (2, 2)")
    src = pymysql.connect(host="127.0.0.1", port=other.port, user="root", database="resetdb", autocommit=True)

    def at(server: MariaDBServer, **extra: str) -> Settings:
        return pointed_at(settings_env, server, "resetdb", **extra)

    with running_pipeline(at(other)):
        for i in range(5):
            execute(src, f"INSERT INTO items VALUES ({10 + i}, {i})")
        wait_caught_up(staging, src)
    (file, pos) = staging.execute("SELECT binlog_file, binlog_pos FROM softcart.position").fetchone() or ("", 0)
    # RESET MASTER, then writes that take the same file name past the saved offset
    execute(src, "RESET MASTER", "INSERT INTO items SELECT id + 1000, v FROM items",
            "UPDATE items SET v = v + 1")
    with src.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        now_file, now_pos = cur.fetchone()[:2]
    if now_pos <= pos:  # grow the file past the saved offset in one transaction
        execute(src, "CREATE TABLE filler (id INT PRIMARY KEY, t TEXT)",
                f"INSERT INTO filler VALUES (1, REPEAT('f', {pos + 1000}))")
    assert now_file == file, "the saved position must be in the file name the reset starts again"
    text = fatal_at_start(at(other))
    assert "reset" in text and "resnapshot" in text, text
    with running_pipeline(at(other, SOFTCART_AUTO_RESNAPSHOT="true")):
        wait_caught_up(staging, src)
        assert_same(src, staging, "resetdb", "items")


def test_a_reset_binlog_whose_new_history_numbers_past_the_saved_gtids_is_a_reset_not_a_failover(
        servers: dict[str, MariaDBServer], settings_env: dict[str, str], staging: PG) -> None:
    """RESET MASTER while the daemon is stopped, then more transactions than the saved GTID state
    counts: the new history "holds" the saved sequence numbers, and the daemon took that for a
    failover and resumed after them by GTID, skipping the new history's first transactions (#30).
    The same server_id with another history at the saved offset is a reset: it stops (or takes a
    new snapshot when allowed), and nothing is skipped."""
    other = servers["other"]
    with contextlib.closing(connect(other, None)) as root:
        execute(root, "CREATE DATABASE IF NOT EXISTS resetdb2", "USE resetdb2", "DROP TABLE IF EXISTS items",
                ITEMS, "INSERT INTO items VALUES (1, 1), (2, 2)")
    src = pymysql.connect(host="127.0.0.1", port=other.port, user="root", database="resetdb2", autocommit=True)

    def at(server: MariaDBServer, **extra: str) -> Settings:
        return pointed_at(settings_env, server, "resetdb2", **extra)

    with running_pipeline(at(other)):
        execute(src, "INSERT INTO items VALUES (3, 3)")
        wait_caught_up(staging, src)
    (saved,) = staging.execute("SELECT gtid FROM softcart.position").fetchone() or ("",)
    seq = int(str(saved).split("-")[-1])
    execute(src, "RESET MASTER")
    for i in range(seq + 40):  # the new history numbers past the saved state
        execute(src, f"INSERT INTO items VALUES ({100 + i}, {i})")
    assert mariadb_gtid_contains(gtid(src), str(saved)), "the new history holds the saved sequence numbers"
    text = fatal_at_start(at(other))
    assert "another history at the saved position" in text and "RESET MASTER" in text, text
    assert staging.execute("SELECT count(*) FROM staging.items").fetchone() == (3,), "nothing applied"
    with running_pipeline(at(other, SOFTCART_AUTO_RESNAPSHOT="true")):
        wait_caught_up(staging, src)
        assert assert_same(src, staging, "resetdb2", "items") == seq + 43


@pytest.fixture
def own_mysql(server_root: Path) -> Iterator[MySQLServer]:
    """A MySQL of this test's own: it resets its binary log."""
    server = MySQLServer(server_root / "ident-mysql")
    server.start()
    yield server
    server.remove()


def test_mysql_a_reset_binlog_is_a_reset_whatever_lies_at_the_saved_offset(
        own_mysql: MySQLServer, settings_env: dict[str, str], staging: PG) -> None:
    """RESET BINARY LOGS AND GTIDS while the daemon is stopped, then a new history past the saved
    offset that holds the saved GTID set. The daemon resumed there without a word where an
    event boundary fell on the offset, and stopped with a raw 1236 "bogus data in log event"
    (which auto-resnapshot didn't take) where none did (#31 item 3). The GTID set at the saved
    offset, read from the binlog, is now compared with the saved one: another history (or no
    event boundary) is a reset, refused naming the command and the way out, and taken as a new
    snapshot when allowed."""
    from cdc.capture.mysql import mysql_gtid_at

    conn = pymysql.connect(host="127.0.0.1", port=own_mysql.port, user="root", autocommit=True)
    execute(conn, "CREATE DATABASE resetdb", "USE resetdb", ITEMS)
    at = pointed_at(settings_env, own_mysql, "resetdb", SOFTCART_ONLINE_COPY="off")
    with running_pipeline(at):
        for i in range(20):
            execute(conn, f"INSERT INTO items VALUES ({i}, {i})")
        wait_caught_up(staging, conn)
    (file, pos, saved) = staging.execute("SELECT binlog_file, binlog_pos, gtid FROM softcart.position").fetchone() \
        or ("", 0, "")
    assert mysql_gtid_at(conn, file, pos) == mysql_gtid_normal(saved), "read from the binlog: the saved state"
    execute(conn, "RESET BINARY LOGS AND GTIDS")
    for i in range(40):  # two rows a transaction: the saved offset falls elsewhere in the new history
        execute(conn, f"INSERT INTO items VALUES ({100 + 2 * i}, {i}), ({101 + 2 * i}, {i})")
    assert mysql_gtid_at(conn, file, pos) != mysql_gtid_normal(saved)
    text = fatal_at_start(at)
    assert "another history at the saved position" in text and "RESET BINARY LOGS AND GTIDS" in text, text
    assert staging.execute("SELECT count(*) FROM staging.items").fetchone() == (20,), "nothing applied"
    with running_pipeline(at.model_copy(update={"auto_resnapshot": True})):
        wait_caught_up(staging, conn)
        assert assert_same(conn, staging, "resetdb", "items") == 100
    conn.close()

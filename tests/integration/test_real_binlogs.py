"""What other clients do on the same server, read from a real MariaDB binlog: savepoints, rollbacks
with non-transactional tables, XA transactions (decided in a later batch or after a restart),
statement-format sessions, DDL in other databases, CREATE OR REPLACE and renames into our tables.
Every test ends with staging equal to the source, or the table stopped by name: never silently
wrong."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pymysql
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pymysqlreplication import BinLogStreamReader

from cdc.capture import fast_events
from cdc.dev.localservers import MariaDBServer, MySQLServer
from cdc.ops.star_ops import check_star
from cdc.settings import Settings
from loader.warehouse import TABLES
from tests.helpers import (
    SALES_DDL,
    assert_same,
    cli,
    execute,
    payload_event,
    running_pipeline,
    wait_caught_up,
    wait_until,
)

Conn = pymysql.connections.Connection
PG = psycopg.Connection[Any]
Connect = Callable[..., Conn]

ITEMS = "CREATE TABLE items (id INT PRIMARY KEY, v INT) ENGINE=InnoDB"
MLOG = "CREATE TABLE mlog (id INT PRIMARY KEY, v INT) ENGINE=MyISAM"


@pytest.fixture
def connect(source_server: MariaDBServer | MySQLServer, source_db: str) -> Iterator[Connect]:
    """Another client's connection to the source (closed at the end)."""
    opened: list[Conn] = []

    def make(database: str = source_db, autocommit: bool = True) -> Conn:
        conn = pymysql.connect(host="127.0.0.1", port=source_server.port, user="root", database=database,
                               autocommit=autocommit)
        opened.append(conn)
        return conn

    yield make
    for c in opened:
        with contextlib.suppress(pymysql.err.Error):
            c.close()
    # a test that failed half-way must not leave a prepared XA transaction holding its locks
    cleanup = make()
    with cleanup.cursor() as cur:
        cur.execute("XA RECOVER")
        for row in cur.fetchall():
            cur.execute("XA ROLLBACK %s", (row[3],))
    cleanup.close()


@pytest.fixture
def scratch(source: Conn, source_db: str) -> Iterator[str]:
    """A second database on the same server, with tables named like ours."""
    name = f"{source_db}_scratch"
    execute(source, f"CREATE DATABASE `{name}`")
    yield name
    execute(source, f"DROP DATABASE IF EXISTS `{name}`")


def mariadb(conn: Conn) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        return "mariadb" in str((cur.fetchone() or ("",))[0]).lower()


def two_tables(settings: Settings, source: Conn) -> Settings:
    execute(source, ITEMS, MLOG, "INSERT INTO items VALUES (1, 1), (2, 2)", "INSERT INTO mlog VALUES (1, 1)")
    return settings.model_copy(update={"source_tables": ["items", "mlog"], "star_table": ""})


@pytest.mark.both_sources
def test_savepoints_and_rollbacks_follow_the_server(settings: Settings, source: Conn, staging: PG,
                                                    source_db: str, connect: Connect) -> None:
    s = two_tables(settings, source)
    other = connect()
    with running_pipeline(s):
        wait_caught_up(staging, source)
        # InnoDB only: the server drops the rolled-back row itself; SAVEPOINT is in the binlog
        execute(other, "START TRANSACTION", "INSERT INTO items VALUES (10, 10)", "SAVEPOINT s1",
                "INSERT INTO items VALUES (11, 11)", "ROLLBACK TO SAVEPOINT s1", "INSERT INTO items VALUES (12, 12)",
                "COMMIT")
        # with a MyISAM table changed, ROLLBACK TO is logged after the rows it undoes: the InnoDB
        # rows since the savepoint must go, the MyISAM row stays (as on the source). MariaDB only:
        # MySQL with GTIDs on refuses a non-transactional change inside a transaction (1785)
        if mariadb(source):
            execute(other, "START TRANSACTION", "INSERT INTO items VALUES (20, 20)", "SAVEPOINT s1",
                    "UPDATE items SET v = 99 WHERE id = 1", "INSERT INTO items VALUES (21, 21)",
                    "INSERT INTO mlog VALUES (21, 21)", "ROLLBACK TO SAVEPOINT s1",
                    "INSERT INTO items VALUES (22, 22)", "COMMIT")
            execute(other, "START TRANSACTION", "DELETE FROM items WHERE id = 2", "INSERT INTO mlog VALUES (30, 30)",
                    "ROLLBACK")
        else:
            execute(other, "INSERT INTO items VALUES (20, 20), (22, 22)")
        wait_caught_up(staging, source)
        for t in ("items", "mlog"):
            assert_same(source, staging, source_db, t)
    ids = [r[0] for r in staging.execute("SELECT id FROM staging.items ORDER BY id").fetchall()]
    assert ids == [1, 2, 10, 12, 20, 22]
    assert staging.execute("SELECT v FROM staging.items WHERE id = 1").fetchone() == (1,)
    assert staging.execute("SELECT count(*) FROM softcart.stopped_table").fetchone() == (0,)


def prepare(conn: Conn, xid: str, *statements: str) -> None:
    """XA START .. XA PREPARE on ``conn``, then disconnect: the prepared transaction is left to
    another session's XA COMMIT or XA ROLLBACK (as a transaction manager would).

    The server detaches the prepared transaction from the session only while it ends that session,
    after our COM_QUIT has been sent: until then another session's XA COMMIT/ROLLBACK gets
    XAER_NOTA. So wait (on another connection) until the session is gone from the process list;
    the server detaches the transaction before it unlists the session."""
    execute(conn, f"XA START '{xid}'", *statements, f"XA END '{xid}'", f"XA PREPARE '{xid}'")
    session = conn.thread_id()
    watcher = pymysql.connect(host=conn.host, port=conn.port, user=conn.user, autocommit=True)
    conn.close()
    try:
        def gone() -> bool:
            with watcher.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (session,))
                row = cur.fetchone()
            return row is not None and row[0] == 0
        wait_until(gone, 30, f"the session that prepared XA {xid} to end")
    finally:
        watcher.close()


@pytest.mark.both_sources
def test_xa_transactions_apply_at_commit_even_after_a_restart_and_never_at_rollback(
        settings: Settings, source: Conn, staging: PG, source_db: str, connect: Connect) -> None:
    s = two_tables(settings, source)
    with running_pipeline(s) as p:
        wait_caught_up(staging, source)
        prepare(connect(), "x1", "INSERT INTO items VALUES (100, 100)")
        execute(source, "XA ROLLBACK 'x1'")
        prepare(connect(), "x2", "INSERT INTO items VALUES (200, 200)", "UPDATE items SET v = 7 WHERE id = 1")
        execute(source, "INSERT INTO items VALUES (3, 3)")  # committed while x2 waits
        wait_caught_up(staging, source)
        # rows held for an undecided XA transaction are not counted as applied
        assert wait_until(lambda: p.state.rows_applied, 30, "the batch's counters") == 1
        assert_same(source, staging, source_db, "items")  # x2 is not visible on the source yet
        assert staging.execute("SELECT count(*) FROM softcart.xa_pending").fetchone() == (1,)
    # the daemon stops with x2 prepared; its position is past the prepare
    execute(source, "XA COMMIT 'x2'")
    execute(connect(), "XA START 'x3'", "INSERT INTO items VALUES (300, 300)", "XA END 'x3'",
            "XA COMMIT 'x3' ONE PHASE")
    with running_pipeline(s):
        wait_caught_up(staging, source)
        assert_same(source, staging, source_db, "items")
    assert staging.execute("SELECT v FROM staging.items WHERE id IN (1, 200) ORDER BY id").fetchall() == [(7,), (200,)]
    assert staging.execute("SELECT count(*) FROM staging.items WHERE id = 100").fetchone() == (0,)
    assert staging.execute("SELECT count(*) FROM softcart.xa_pending").fetchone() == (0,)


@pytest.mark.both_sources
def test_statement_format_dml_stops_its_table_and_the_others_stream_on(
        settings: Settings, settings_env: dict[str, str], source: Conn, staging: PG, source_db: str,
        connect: Connect) -> None:
    s = two_tables(settings, source)
    stmt = connect()
    execute(stmt, "SET SESSION binlog_format = 'STATEMENT'")
    with running_pipeline(s):
        wait_caught_up(staging, source)
        execute(stmt, "UPDATE items SET v = v + 1 WHERE id = 1")
        execute(source, "INSERT INTO mlog VALUES (2, 2)", "INSERT INTO items VALUES (5, 5)")
        wait_caught_up(staging, source)
        assert_same(source, staging, source_db, "mlog")
        stopped = staging.execute("SELECT source_table, reason, statement FROM softcart.stopped_table").fetchall()
        assert [(r[0], r[2]) for r in stopped] == [("items", "UPDATE items SET v = v + 1 WHERE id = 1")]
        assert "STATEMENT binlog format" in stopped[0][1]
    # resnapshot takes it again
    out = cli("resnapshot", env={**settings_env, "SOFTCART_SOURCE_TABLES": "items,mlog", "SOFTCART_STAR_TABLE": ""})
    assert out.returncode == 0, out.stdout + out.stderr
    assert staging.execute("SELECT count(*) FROM softcart.stopped_table").fetchone() == (0,)
    with running_pipeline(s):
        execute(source, "UPDATE items SET v = 50 WHERE id = 5")
        wait_caught_up(staging, source)
        for t in ("items", "mlog"):
            assert_same(source, staging, source_db, t)


@pytest.mark.both_sources
def test_ddl_is_scoped_by_its_default_database(settings: Settings, source: Conn, staging: PG, source_db: str,
                                               connect: Connect, scratch: str) -> None:
    s = two_tables(settings, source)
    other = connect(database=scratch)
    with running_pipeline(s):
        wait_caught_up(staging, source)
        # a same-named table in another database, by unqualified name: none of ours changes
        execute(other, "CREATE TABLE items (id INT PRIMARY KEY, w TEXT)", "INSERT INTO items VALUES (1, 'x')",
                "TRUNCATE items", "ALTER TABLE items ADD COLUMN z INT", "DROP TABLE items",
                f"CREATE TABLE `{source_db}`.spare (id INT PRIMARY KEY, v INT)",
                f"INSERT INTO `{source_db}`.spare VALUES (7, 7)")
        execute(source, "INSERT INTO items VALUES (4, 4)")
        wait_caught_up(staging, source)
        assert_same(source, staging, source_db, "items")
        assert staging.execute("SELECT count(*) FROM staging.items").fetchone() == (3,)
        # but a qualified name from another database is ours
        execute(other, f"TRUNCATE `{source_db}`.items")
        wait_caught_up(staging, source)
        assert staging.execute("SELECT count(*) FROM staging.items").fetchone() == (0,)
        # CREATE OR REPLACE (MariaDB's; DROP and CREATE on MySQL) replaces: the old rows go, the
        # new definition is followed
        execute(source, "INSERT INTO mlog VALUES (5, 5)",
                *(["CREATE OR REPLACE TABLE mlog (id INT PRIMARY KEY, v INT, w TEXT) ENGINE=MyISAM"] if mariadb(source)
                  else ["DROP TABLE mlog", "CREATE TABLE mlog (id INT PRIMARY KEY, v INT, w TEXT) ENGINE=MyISAM"]),
                "INSERT INTO mlog VALUES (6, 6, 'six')")
        wait_caught_up(staging, source)
        assert_same(source, staging, source_db, "mlog")
        # a table renamed into ours by ALTER TABLE ... RENAME: its rows were never in the binlog
        execute(source, "DROP TABLE items", "ALTER TABLE spare RENAME TO items")
        execute(source, "INSERT INTO mlog VALUES (8, 8, 'eight')")
        wait_caught_up(staging, source)
        assert_same(source, staging, source_db, "mlog")
        reason = staging.execute("SELECT reason FROM softcart.stopped_table WHERE source_table = 'items'").fetchone()
        assert reason == ("another table was renamed into items: its rows are not in the binlog",)


def copied(staging: PG, table: str, online: str) -> bool:
    """The table's online copy is done (with online copies off: it was copied before the stream
    resumed, and no online copy was recorded)."""
    row = staging.execute("SELECT finished_at IS NOT NULL FROM softcart.online_copy WHERE source_table = %s",
                          (table,)).fetchone()
    return bool(row and row[0]) if online == "auto" else row is None


@pytest.mark.parametrize("online", ["off", "auto"], ids=["copied-before-streaming", "copied-online"])
def test_a_table_added_to_the_settings_is_copied_before_it_streams_and_copied_again_when_re_added(
        online: str, settings: Settings, source: Conn, staging: PG, source_db: str, connect: Connect) -> None:
    execute(source, ITEMS, "INSERT INTO items VALUES (1, 1), (2, 2)",
            "CREATE TABLE extra (id INT PRIMARY KEY, v INT) ENGINE=InnoDB",
            "INSERT INTO extra VALUES " + ", ".join(f"({i}, {i})" for i in range(1, 501)))
    only_items = settings.model_copy(update={"source_tables": ["items"], "star_table": ""})
    both = settings.model_copy(update={"source_tables": ["items", "extra"], "star_table": "", "online_copy": online,
                                       "online_copy_chunk_rows": 64})
    with running_pipeline(only_items):
        wait_caught_up(staging, source)
    # While the daemon is stopped (its position falls behind): changes to extra, a statement-format
    # one among them, and an XA transaction prepared now and committed once the daemon runs again.
    # The copy taken at start has what came before it; the stream must not apply it again (the
    # statement would stop the table) nor lose what comes after (the XA COMMIT).
    execute(source, "UPDATE extra SET v = v + 1 WHERE id < 10", "DELETE FROM extra WHERE id BETWEEN 20 AND 29")
    execute(connect(), "SET SESSION binlog_format = 'STATEMENT'", "UPDATE extra SET v = 0 WHERE id = 30")
    prepare(connect(), "xe", "INSERT INTO extra VALUES (1000, 1000)", "UPDATE extra SET v = -1 WHERE id = 31")
    execute(source, "INSERT INTO items VALUES (3, 3)")
    with running_pipeline(both):
        wait_until(lambda: copied(staging, "extra", online), 60, "the copy")
        wait_caught_up(staging, source)
        for t in ("items", "extra"):
            assert_same(source, staging, source_db, t)
        execute(source, "XA COMMIT 'xe'", "UPDATE extra SET v = 7 WHERE id = 40")
        wait_caught_up(staging, source)
        assert_same(source, staging, source_db, "extra")
    assert staging.execute("SELECT v FROM staging.extra WHERE id IN (31, 1000) ORDER BY id").fetchall() == [
        (-1,), (1000,)]
    assert staging.execute("SELECT count(*) FROM softcart.stopped_table").fetchone() == (0,)
    # removed from the settings, changed while not followed, added back: copied again, nothing stale
    with running_pipeline(only_items):
        execute(source, "DELETE FROM extra WHERE id > 400", "UPDATE extra SET v = 5 WHERE id = 1",
                "INSERT INTO items VALUES (4, 4)")
        wait_caught_up(staging, source)
    execute(source, "INSERT INTO extra VALUES (2000, 2000)")
    with running_pipeline(both):
        wait_until(lambda: copied(staging, "extra", online), 60, "the copy")
        wait_caught_up(staging, source)
        for t in ("items", "extra"):
            assert_same(source, staging, source_db, t)


@pytest.mark.both_sources
def test_partial_row_images_of_another_session_apply_whole(settings: Settings, source: Conn, staging: PG,
                                                           source_db: str, connect: Connect) -> None:
    """Another client's session with binlog_row_image MINIMAL (or NOBLOB) writes row images that
    lack the columns its statements left alone (and an update's key, in its after image). Staging
    and the star schema get whole rows: the columns an image lacks are read from the source by key
    before the batch applies; a row the source no longer has by then is removed (a later change
    removes it anyway). Nothing is dead-lettered, nothing is NULL that the source holds."""
    execute(source, SALES_DDL,
            "CREATE TABLE notes (id INT PRIMARY KEY, a VARCHAR(10) NOT NULL DEFAULT 'd', b INT, body TEXT)",
            *(f"INSERT INTO sales_data VALUES ({k}, {k}, {k}, {k}.5, {k}, '2024-03-0{k} 10:00:00')"
              for k in range(1, 7)),
            "INSERT INTO notes VALUES (1, 'x', 1, 'one'), (2, 'y', 2, 'two'), (3, 'z', 3, 'three')")
    s = settings.model_copy(update={"source_tables": ["sales_data", "notes"]})
    with running_pipeline(s):
        wait_caught_up(staging, source)
    minimal, noblob = connect(), connect()
    execute(minimal, "SET SESSION binlog_row_image = 'MINIMAL'")
    execute(noblob, "SET SESSION binlog_row_image = 'NOBLOB'")
    # while the daemon is stopped, so that by the time it reads them some rows are gone
    execute(minimal, "UPDATE sales_data SET quantity = quantity + 10 WHERE rowid <= 2",
            "UPDATE sales_data SET price = 99 WHERE rowid = 3",
            "UPDATE sales_data SET rowid = 100 WHERE rowid = 4",
            "INSERT INTO sales_data (rowid, product_id, customer_id, quantity) VALUES (7, 7, 7, 7)",
            "INSERT INTO notes (id) VALUES (10)", "UPDATE notes SET b = 7 WHERE id = 1",
            "UPDATE notes SET b = 8 WHERE id = 3")
    execute(noblob, "UPDATE notes SET b = 9 WHERE id = 2")
    execute(source, "DELETE FROM sales_data WHERE rowid = 3", "DELETE FROM notes WHERE id = 3",
            "UPDATE notes SET a = 'later' WHERE id = 1")
    # a batch per transaction: each partial image is filled in a batch of its own
    with running_pipeline(s.model_copy(update={"batch_max_rows": 1})):
        wait_caught_up(staging, source)
        for t in ("sales_data", "notes"):
            assert_same(source, staging, source_db, t)
        execute(minimal, "UPDATE sales_data SET customer_id = 42 WHERE rowid = 5", "UPDATE notes SET b = 0")
        wait_caught_up(staging, source)
        for t in ("sales_data", "notes"):
            assert_same(source, staging, source_db, t)
        # an XA transaction's partial images are held at its prepare and filled when its commit applies them
        xa = connect()
        execute(xa, "SET SESSION binlog_row_image = 'MINIMAL'")
        prepare(xa, "px", "UPDATE sales_data SET quantity = 77 WHERE rowid = 6", "UPDATE notes SET b = 5 WHERE id = 10")
        wait_caught_up(staging, source)
        assert staging.execute("SELECT count(*) FROM softcart.xa_pending").fetchone() == (1,)
        execute(source, "XA COMMIT 'px'")
        wait_caught_up(staging, source)
        for t in ("sales_data", "notes"):
            assert_same(source, staging, source_db, t)
    assert staging.execute("SELECT count(*) FROM softcart.dead_letter").fetchone() == (0,)
    assert staging.execute("SELECT quantity FROM star.factsales WHERE rowid IN (1, 2, 6, 100) ORDER BY rowid"
                           ).fetchall() == [(11,), (12,), (77,), (4,)]
    assert check_star(s) == []


@pytest.mark.both_sources
def test_partial_images_fill_the_columns_the_source_still_has(settings: Settings, source: Conn, staging: PG,
                                                              source_db: str, connect: Connect) -> None:
    """A partial image read after a later ALTER dropped one of the columns it lacks: the others are
    still read from the source (the dropped one goes with the ALTER, replayed after it)."""
    execute(source, "CREATE TABLE wide (id INT PRIMARY KEY, v INT, c1 INT, c2 INT)",
            "INSERT INTO wide VALUES (1, 1, 10, 20), (2, 2, 11, 21)")
    s = settings.model_copy(update={"source_tables": ["wide"], "star_table": ""})
    with running_pipeline(s):
        wait_caught_up(staging, source)
    minimal = connect()
    execute(minimal, "SET SESSION binlog_row_image = 'MINIMAL'", "UPDATE wide SET v = 5 WHERE id = 1",
            "UPDATE wide SET c2 = 22 WHERE id = 2")
    execute(source, "ALTER TABLE wide DROP COLUMN c1")
    with running_pipeline(s):
        wait_caught_up(staging, source)
        assert_same(source, staging, source_db, "wide")
    assert staging.execute("SELECT count(*) FROM softcart.dead_letter").fetchone() == (0,)


@pytest.mark.parametrize("decoding", ["fast", "library"])
def test_compressed_binlog_events_are_read_as_written(settings: Settings, source: Conn, staging: PG,
                                                     source_db: str, decoding: str) -> None:
    """MariaDB's log_bin_compress (a global a DBA may turn on at any time) writes each row event
    and statement of at least log_bin_compress_min_len bytes zlib-compressed, as event types of
    its own, which mysql-replication doesn't know: the stream skipped them without a word. Each is
    read as its uncompressed form: rows of every kind, many to an event, and a long ALTER the
    stream must follow; with the reader's fast path and without it."""
    execute(source, "CREATE TABLE docs (id INT PRIMARY KEY, title VARCHAR(40), body TEXT)",
            "INSERT INTO docs VALUES (1, 'one', 'before')")
    s = settings.model_copy(update={"source_tables": ["docs"], "star_table": "", "binlog_decoding": decoding})
    seen = fast_events.compressed_events
    with running_pipeline(s):
        wait_caught_up(staging, source)
        execute(source, "SET GLOBAL log_bin_compress = ON", "SET GLOBAL log_bin_compress_min_len = 10")
        try:
            execute(source, "INSERT INTO docs VALUES " + ", ".join(
                        f"({k}, 'title {k}', '{'lorem ipsum ' * (k % 50)}')" for k in range(2, 300)),
                    "UPDATE docs SET body = CONCAT(body, ' and after') WHERE id % 3 = 0",
                    "DELETE FROM docs WHERE id % 7 = 0",
                    "ALTER TABLE docs ADD COLUMN rating INT NOT NULL DEFAULT 3 COMMENT '" + "long " * 60 + "'",
                    "UPDATE docs SET rating = id % 5, title = CONCAT('t', id) WHERE id > 100")
            wait_caught_up(staging, source)
        finally:
            execute(source, "SET GLOBAL log_bin_compress = OFF", "SET GLOBAL log_bin_compress_min_len = 256")
        assert_same(source, staging, source_db, "docs")
    assert fast_events.compressed_events - seen >= 5  # the rows events and the ALTER, at least


class Repacker:
    """The stream as MySQL 8 with binlog_transaction_compression=ON sends it: each transaction's
    events after its GTID event, through its XID, inside one TRANSACTION_PAYLOAD_EVENT (zstd; the
    events without checksums and with 0 as their end position, as the server writes them; the
    payload at the XID's end). No MySQL 8 runs here: MariaDB's real events are repacked into that
    form on their way into the daemon (``tests.helpers.payload_event``, whose form was checked
    against a recorded MySQL 8.0.32 binlog)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.payloads = 0
        connect = BinLogStreamReader._BinLogStreamReader__connect_to_stream  # type: ignore[attr-defined]

        def connect_to_stream(reader: Any) -> None:
            connect(reader)
            conn = reader._stream_connection
            conn._read_packet = self._reading(conn._read_packet)

        monkeypatch.setattr(BinLogStreamReader, "_BinLogStreamReader__connect_to_stream", connect_to_stream)

    def _reading(self, read: Callable[..., Any]) -> Callable[..., Any]:
        held: list[bytes] | None = None

        def read_packet(*args: Any) -> Any:
            nonlocal held
            while True:
                pkt = read(*args)
                data = pkt._data
                if len(data) < 24 or data[0] != 0:
                    return pkt
                kind = data[5]
                if kind == 162 and not data[20 + 12] & 1:  # a MariaDB GTID that opens a transaction
                    held = []
                    return pkt
                if held is None:
                    return pkt
                event = bytes(data[1:-4])  # without the OK byte and the checksum
                held.append(event[:9] + len(event).to_bytes(4, "little") + bytes(4) + event[17:])
                if kind == 16 or (kind == 2 and event.endswith(b"COMMIT")):
                    self.payloads += 1
                    packed = payload_event(held, int.from_bytes(data[14:18], "little"),
                                           int.from_bytes(data[1:5], "little"), int.from_bytes(data[6:10], "little"))
                    held = None
                    return type(pkt)(b"\x00" + packed, None)

        return read_packet


@pytest.mark.parametrize("decoding", ["fast", "library"])
def test_mysql_8_compressed_transactions_are_read_as_their_events(
        settings: Settings, source: Conn, staging: PG, source_db: str, decoding: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MySQL 8's binlog_transaction_compression (global, or a session's) writes each transaction's
    events inside one zstd TRANSACTION_PAYLOAD_EVENT, which mysql-replication doesn't read (its
    reader skipped them without a word). Each is read as the events inside it, at the payload's
    position: rows of every kind, transactions over two tables, one larger than the reader's
    slices, and a restart that resumes after the last payload applied; with the reader's fast path
    and without it."""
    repacker = Repacker(monkeypatch)
    execute(source, ITEMS, SALES_DDL, "INSERT INTO items VALUES (1, 1), (2, 2)")
    s = settings.model_copy(update={"source_tables": ["items", "sales_data"], "binlog_decoding": decoding,
                                    "chunk_rows": 500})
    seen = fast_events.compressed_transactions
    with running_pipeline(s):
        wait_caught_up(staging, source)
        execute(source, "INSERT INTO items VALUES " + ", ".join(f"({k}, {k})" for k in range(3, 2003)),
                "UPDATE items SET v = v + 1 WHERE id % 3 = 0", "DELETE FROM items WHERE id % 7 = 0",
                "START TRANSACTION", "INSERT INTO sales_data VALUES (1, 1, 1, 2.50, 3, '2024-05-01 10:00:00')",
                "UPDATE items SET id = 5000 WHERE id = 1", "COMMIT")
        wait_caught_up(staging, source)
    assert repacker.payloads >= 4  # the statements above, one transaction each
    with running_pipeline(s):  # resumes after the last payload applied: nothing twice
        execute(source, "UPDATE sales_data SET quantity = quantity + 1", "INSERT INTO items VALUES (6000, 6)")
        wait_caught_up(staging, source)
    assert assert_same(source, staging, source_db, "items") == 2002 - 2002 // 7 + 1
    assert assert_same(source, staging, source_db, "sales_data") == 1
    assert check_star(s) == []
    assert fast_events.compressed_transactions - seen == repacker.payloads


# All of it at once: other clients doing ordinary things, drawn by hypothesis -----------------

_KEYS = st.integers(1, 30)
_ROW_OPS = st.lists(st.tuples(st.sampled_from(["ins", "upd", "del", "mlog", "sale"]), _KEYS, st.integers(0, 99)),
                    min_size=1, max_size=4)
_STEP = st.one_of(
    st.tuples(st.just("txn"), _ROW_OPS),
    st.tuples(st.just("savepoint"), _ROW_OPS, _ROW_OPS, _ROW_OPS),
    st.tuples(st.just("rollback"), _ROW_OPS),
    st.tuples(st.just("xa"), _ROW_OPS, st.sampled_from(["commit", "rollback", "later"])),
    st.tuples(st.just("other_db"), st.sampled_from(["create", "truncate", "drop", "alter"])),
    st.tuples(st.just("alter"), st.integers(0, 2)),
    st.tuples(st.just("image"), st.sampled_from(["MINIMAL", "NOBLOB", "FULL"])),  # partial row images
)


#: a same-named table's life in another database: none of it is ours
_OTHER_DB = {
    "create": ["CREATE TABLE IF NOT EXISTS items (id INT PRIMARY KEY, w TEXT)",
               "INSERT IGNORE INTO items VALUES (1, 'x')"],
    "truncate": ["CREATE TABLE IF NOT EXISTS items (id INT PRIMARY KEY, w TEXT)", "TRUNCATE items"],
    "drop": ["DROP TABLE IF EXISTS items", "DROP TABLE IF EXISTS sales_data"],
    "alter": ["CREATE TABLE IF NOT EXISTS mlog (id INT PRIMARY KEY)",
              "ALTER TABLE mlog ADD COLUMN IF NOT EXISTS z INT"],
}


def _row_sql(op: str, k: int, v: int) -> str:
    if op == "ins":
        return f"INSERT INTO items (id, v) VALUES ({k}, {v}) ON DUPLICATE KEY UPDATE v = {v}"
    if op == "upd":
        return f"UPDATE items SET v = {v} WHERE id = {k}"
    if op == "del":
        return f"DELETE FROM items WHERE id = {k}"
    if op == "mlog":
        return f"REPLACE INTO mlog VALUES ({k}, {v})"
    return (f"INSERT INTO sales_data VALUES ({k}, {v % 7}, {v % 5}, {v}.25, {1 + v % 3}, '2024-0{1 + k % 9}-1{v % 10}"
            f" 10:00:00') ON DUPLICATE KEY UPDATE quantity = {1 + v % 4}, timestamp = timestamp")


def test_mixed_client_sessions_end_with_source_staging_star_and_warehouse_equal(
        wh_settings: Settings, wh_env: dict[str, str], source: Conn, staging: PG, warehouse: PG, source_db: str,
        connect: Connect, scratch: str) -> None:
    execute(source, ITEMS, MLOG, SALES_DDL, "INSERT INTO items VALUES (1, 1)")
    s = wh_settings.model_copy(update={"source_tables": ["items", "mlog", "sales_data"]})
    assert cli("warehouse", "init", env=wh_env).returncode == 0
    session = connect(autocommit=False)
    other = connect(database=scratch)
    xa_left: list[str] = []
    counter = iter(range(1, 10**6))
    added: list[str] = []

    staging.prepare_threshold = None  # our reads of staging tables whose columns change: no cached plans
    for conn in (source, session, other):  # a step waiting on a lock fails the test, never hangs it
        execute(conn, "SET SESSION innodb_lock_wait_timeout = 10", "SET SESSION lock_wait_timeout = 10")

    def run_step(step: tuple[Any, ...]) -> None:
        kind = step[0]
        while xa_left:  # decided in a later transaction than its prepare, before its locks get in the way
            execute(source, f"XA COMMIT '{xa_left.pop()}'")
        if kind == "txn":
            execute(session, "START TRANSACTION", *(_row_sql(*o) for o in step[1]), "COMMIT")
        elif kind == "savepoint":
            execute(session, "START TRANSACTION", *(_row_sql(*o) for o in step[1]), "SAVEPOINT s1",
                    *(_row_sql(*o) for o in step[2]), "ROLLBACK TO SAVEPOINT s1", *(_row_sql(*o) for o in step[3]),
                    "COMMIT")
        elif kind == "rollback":
            execute(session, "START TRANSACTION", *(_row_sql(*o) for o in step[1]), "ROLLBACK")
        elif kind == "xa":
            n = next(counter)
            xid = f"mx{n}"
            # a branch that changed nothing is rolled back by the server at disconnect: one write always
            prepare(connect(), xid, *(_row_sql(*o) for o in step[1] if o[0] != "mlog"),
                    f"INSERT INTO items (id, v) VALUES ({100 + n % 20}, {n}) ON DUPLICATE KEY UPDATE v = {n}")
            if step[2] == "later":
                xa_left.append(xid)
            else:
                execute(source, f"XA {step[2].upper()} '{xid}'")
        elif kind == "other_db":
            execute(other, *_OTHER_DB[step[1]])
        elif kind == "image":
            execute(session, f"SET SESSION binlog_row_image = '{step[1]}'")
        elif kind == "alter":
            if step[1] == 0 and len(added) < 3:
                name = f"c{next(counter)}"
                execute(source, f"ALTER TABLE items ADD COLUMN {name} INT DEFAULT {len(added) + 1}")
                added.append(name)
            elif step[1] == 1 and added:
                execute(source, f"ALTER TABLE items DROP COLUMN {added.pop(0)}")
            else:
                execute(source, "ALTER TABLE mlog MODIFY v BIGINT")

    with running_pipeline(s):
        @given(st.lists(_STEP, min_size=3, max_size=12))
        @hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def sessions(steps: list[tuple[Any, ...]]) -> None:
            with source.cursor() as cur:  # an example that failed half-way may have left one prepared
                cur.execute("XA RECOVER")
                for row in cur.fetchall():
                    cur.execute("XA ROLLBACK %s", (row[3],))
            xa_left.clear()
            session.rollback()  # likewise a transaction
            for step in steps:
                run_step(step)
            while xa_left:
                execute(source, f"XA COMMIT '{xa_left.pop()}'")
            wait_caught_up(staging, source)
            for t in ("items", "mlog", "sales_data"):
                assert_same(source, staging, source_db, t)
            assert staging.execute("SELECT count(*) FROM softcart.stopped_table").fetchone() == (0,)

        sessions()
    assert check_star(s) == []
    out = cli("flush", env=wh_env)
    assert out.returncode == 0, out.stdout + out.stderr
    for t in TABLES:
        cols = ", ".join(t.columns)
        assert sorted(warehouse.execute(f"SELECT {cols} FROM {t.name}").fetchall()) == \
            sorted(staging.execute(f"SELECT {cols} FROM star.{t.name}").fetchall()), t.name


@pytest.mark.both_sources
def test_a_partial_image_read_after_a_later_rename_of_a_column_it_lacks_keeps_that_columns_value(
        settings: Settings, source: Conn, staging: PG, source_db: str, connect: Connect) -> None:
    """A partial image read after a later ALTER renamed one of the columns it lacks: the source
    has no column of that name any more, and the fill left it NULL, which the upsert wrote and the
    RENAME kept: the values were lost (#30, item 7). The statement didn't set that column, so it
    keeps the row's value; a row inserted with a partial image and the column set later in the
    same transaction keeps that later value."""
    execute(source, "CREATE TABLE wide (id INT PRIMARY KEY, v INT, c1 INT, c2 INT)",
            "INSERT INTO wide VALUES (1, 1, 10, 20), (2, 2, 11, 21)")
    s = settings.model_copy(update={"source_tables": ["wide"], "star_table": ""})
    with running_pipeline(s):
        wait_caught_up(staging, source)
    minimal = connect()
    execute(minimal, "SET SESSION binlog_row_image = 'MINIMAL'", "UPDATE wide SET v = 5 WHERE id = 1",
            "BEGIN", "UPDATE wide SET v = 6, c1 = 12 WHERE id = 2", "UPDATE wide SET v = 7 WHERE id = 2", "COMMIT")
    execute(source, "ALTER TABLE wide RENAME COLUMN c1 TO c1_renamed")
    with running_pipeline(s):
        wait_caught_up(staging, source)
        assert_same(source, staging, source_db, "wide")
    assert staging.execute("SELECT id, v, c1_renamed, c2 FROM staging.wide ORDER BY id").fetchall() == [
        (1, 5, 10, 20), (2, 7, 12, 21)]
    assert staging.execute("SELECT count(*) FROM softcart.dead_letter").fetchone() == (0,)


@pytest.mark.both_sources
def test_a_partial_image_whose_fill_reads_a_value_staging_cannot_hold_is_dead_lettered_not_deleted(
        settings: Settings, source: Conn, staging: PG, source_db: str, connect: Connect) -> None:
    """The fill of a partial image reads the source's current row; when that row holds a value
    staging can't hold (a zero date, set by a later change), the change was made a delete of the
    row, as for a row the source no longer has: the row vanished from staging (#30, item 13). Now
    the change is dead-lettered and staging keeps the row; a later fix applies as usual."""
    execute(source, "CREATE TABLE wide (id INT PRIMARY KEY, v INT, d DATE)",
            "INSERT INTO wide VALUES (1, 1, '2024-01-01'), (2, 2, '2024-01-02')")
    s = settings.model_copy(update={"source_tables": ["wide"], "star_table": ""})
    with running_pipeline(s):
        wait_caught_up(staging, source)
    minimal = connect()
    execute(minimal, "SET SESSION binlog_row_image = 'MINIMAL'", "UPDATE wide SET v = 5 WHERE id = 1")
    execute(source, "SET SESSION sql_mode = ''", "UPDATE wide SET d = '0000-00-00' WHERE id = 1")
    with running_pipeline(s):
        wait_caught_up(staging, source)
        assert staging.execute("SELECT id, v, d::text FROM staging.wide ORDER BY id").fetchall() == [
            (1, 1, "2024-01-01"), (2, 2, "2024-01-02")], "kept as it was"
        assert staging.execute("SELECT row_key FROM softcart.dead_letter WHERE resolved_at IS NULL").fetchall() \
            == [("[1]",)], "the newest dead letter of the key"
        execute(source, "UPDATE wide SET d = '2024-05-05' WHERE id = 1")
        wait_caught_up(staging, source)
        assert_same(source, staging, source_db, "wide")
    assert staging.execute("SELECT count(*) FROM softcart.dead_letter WHERE resolved_at IS NULL").fetchone() == (0,)


@pytest.mark.both_sources
@pytest.mark.parametrize("away", ["DROP TABLE wide", "ALTER TABLE wide RENAME TO wide_old"])
def test_a_partial_image_of_a_table_dropped_or_renamed_away_since_follows_the_statement(
        settings: Settings, source: Conn, staging: PG, source_db: str, connect: Connect, away: str) -> None:
    """A partial image whose fill finds its table gone (a later DROP or RENAME, the daemon still
    behind it): the read failed with 1146 and the daemon stopped for good at that position (#30
    item 13). The change applies with the row's values (the fill reads nothing), and the
    statement is followed when the stream gets there: the table's rows go, the others stream on.
    The table is dropped while the fill's read waits on a lock its session holds, so the read
    meets the table gone, every time."""
    execute(source, "CREATE TABLE wide (id INT PRIMARY KEY, v INT, c INT)", "CREATE TABLE other (id INT PRIMARY KEY)",
            "INSERT INTO wide VALUES (1, 1, 10), (2, 2, 20)")
    s = settings.model_copy(update={"source_tables": ["wide", "other"], "star_table": "", "online_copy": "off"})
    with running_pipeline(s):
        wait_caught_up(staging, source)
    execute(connect(), "SET SESSION binlog_row_image = 'MINIMAL'", "UPDATE wide SET v = 5 WHERE id = 1")
    locker = connect()
    execute(locker, "LOCK TABLES wide WRITE")
    with running_pipeline(s) as pipeline:
        def fill_waiting() -> bool:
            with source.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE STATE LIKE"
                            " 'Waiting for table metadata lock' AND INFO LIKE 'SELECT%%wide%%'")
                return bool((cur.fetchone() or (0,))[0])

        wait_until(fill_waiting, 60, "the fill's read to wait on the lock")
        execute(locker, away, "UNLOCK TABLES")
        execute(source, "INSERT INTO other VALUES (1)")
        wait_caught_up(staging, source)
        assert pipeline.state.restarts == 0
    assert staging.execute("SELECT count(*) FROM staging.wide").fetchone() == (0,)
    assert staging.execute("SELECT id FROM staging.other").fetchall() == [(1,)]

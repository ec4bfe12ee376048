"""The initial consistent snapshot: every configured table copied as of one binlog position.

The copy runs inside one ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` on the source (no global
read lock held while copying) and inside one PostgreSQL transaction on staging, which also saves
the position: a crash during the snapshot leaves nothing behind, and the next start takes it again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pymysql.cursors
import structlog
from psycopg import sql

from cdc.capture.extract import ClientReader, client_reader
from cdc.capture.flavor import Flavor, snapshot_position
from cdc.capture.mysql import connect, read_table
from cdc.settings import Settings
from loader.ddl import META, STAGING, record_snapshot
from loader.staging import StagingWriter
from transform.errors import ConfigError, SourceColumnGone, SourceTableGone, TransientError
from transform.fingerprint import Dialect, quote
from transform.model import Position
from transform.schema import Table
from transform.values import RowConverter, Unrepresentable

log = structlog.get_logger(__name__)


def quote_mysql(name: str) -> str:
    return quote(name, Dialect.MYSQL)


def select_list(table: Table) -> str:
    """The SELECT list that reads every column losslessly.

    MySQL prints a FLOAT with six significant digits; widening it to DOUBLE first yields the exact
    stored value, the same one the binlog carries.
    """
    return ", ".join(f"({quote_mysql(c.name)} + 0E0)" if c.data_type == "float" else quote_mysql(c.name)
                     for c in table.columns)


class SourceRows:
    """Rows read from the source by key for a backfill (loader.applier.SourceRows), on a
    connection of its own."""

    def __init__(self, settings: Settings) -> None:
        self._conn = connect(settings)

    def select(self, part: Table, keys: list[tuple[Any, ...]] | None) -> Iterator[tuple[Any, ...]]:
        where: str = ""
        params: tuple[Any, ...] = ()
        if keys is not None:
            key_list = ", ".join(quote_mysql(k) for k in part.primary_key)
            one = "(" + ", ".join(["%s"] * len(part.primary_key)) + ")"
            where = f" WHERE ({key_list}) IN ({', '.join([one] * len(keys))})"
            params = tuple(v for k in keys for v in k)
        with self._conn.cursor(pymysql.cursors.SSCursor) as cur:
            try:
                cur.execute(f"SELECT {select_list(part)} FROM {quote_mysql(part.name)}{where}", params)
            except pymysql.err.OperationalError as exc:
                if exc.args and exc.args[0] == 1054:  # unknown column
                    raise SourceColumnGone(f"{part.name}: {exc.args[1]}") from None
                raise
            except pymysql.err.ProgrammingError as exc:
                if exc.args and exc.args[0] == 1146:  # no such table
                    raise SourceTableGone(f"{part.name}: {exc.args[1]}") from None
                raise
            yield from cur

    def close(self) -> None:
        self._conn.close()


def open_snapshot(conn: pymysql.connections.Connection, flavor: Flavor) -> Position:
    """Start the snapshot transaction on ``conn`` and return the binlog position it sees."""
    plan = flavor.snapshot_statements()
    with conn.cursor() as cur:
        for stmt in plan.lock:
            cur.execute(stmt)
        try:
            for stmt in plan.begin:
                cur.execute(stmt)
            cur.execute(plan.position)
            file, pos = snapshot_position(flavor.mariadb, list(cur.fetchall()))
            gtid = _gtid_at(cur, flavor, file, pos)
        finally:
            for stmt in plan.unlock:
                cur.execute(stmt)
    return Position(file, pos, gtid)


def binlog_end(conn: pymysql.connections.Connection, flavor: Flavor) -> Position:
    """Where the source's binlog ends now (no lock: what committed before it is visible to any
    read that starts after this returns)."""
    with conn.cursor() as cur:
        cur.execute(flavor.binlog_status_sql)
        file, pos = snapshot_position(False, list(cur.fetchall()))
        return Position(file, pos, _gtid_at(cur, flavor, file, pos))


def _gtid_at(cur: Any, flavor: Flavor, file: str, pos: int) -> str:
    """The GTID state at ``file``:``pos`` (MySQL: the server's now, read in the same instant)."""
    if flavor.mariadb:
        return _mariadb_gtid(cur, file, pos)
    cur.execute(flavor.gtid_sql)
    row = cur.fetchone()
    return _one_line(row[0] if row else None)


def take_snapshot(settings: Settings, tables: dict[str, Table], flavor: Flavor,
                  writer: StagingWriter, progress: Any = None, added: bool = False) -> Position:
    """Copy ``tables`` as of one binlog position, returned. ``added``: tables added to a pipeline
    that streams already: the pipeline's position stays where it is (the stream resumes there,
    and leaves these tables' events up to the returned position out: see Assembler's fences);
    only their stopped state and, for the star schema's table, the star schema are made anew."""
    conn = connect(settings)
    client = client_reader(settings, conn, flavor, list(tables.values())) if settings.snapshot_reader != "pymysql" \
        else None
    if client is None and settings.snapshot_reader == "client":
        conn.close()
        raise ConfigError("SOFTCART_SNAPSHOT_READER=client, but the mariadb client can't read this source "
                          "(it needs a MariaDB source without TLS, tables of common types, and the mariadb "
                          "command on PATH): set it to auto or pymysql")
    try:
        position: Position | None = None
        if client is not None:
            try:
                with conn.cursor() as cur:
                    position = client.position(flavor, lambda file, pos: _mariadb_gtid(cur, file, pos))
            except TransientError as exc:
                _give_up_client(settings, client, exc)
                client = None
        if position is None:
            position = open_snapshot(conn, flavor)
        _same_definitions(settings, conn, tables)
        log.info("snapshot_started", position=str(position), tables=list(tables),
                 reader="mariadb client" if client else "pymysql")
        _begin_copy(settings, writer, tables)
        mark = writer.pending_dead_letters
        try:
            with writer.conn.transaction():  # a savepoint: a failed client read leaves nothing
                _copy_all(settings, conn, client, tables, writer, position, progress)
        except TransientError as exc:
            if client is None:
                raise
            _give_up_client(settings, client, exc)
            client = None
            writer.forget_dead_letters(mark)
            position = open_snapshot(conn, flavor)
            log.info("snapshot_started", position=str(position), tables=list(tables), reader="pymysql")
            _copy_all(settings, conn, None, tables, writer, position, progress)
        if writer.star is not None and (not added or writer.star.table.name in tables):
            _build_star(writer, position)
        if added:
            writer.commit(None, None, origin=f"snapshot {position}")
        else:
            writer.commit(position, None)
        log.info("snapshot_finished", position=str(position), tables=list(tables))
        return position
    finally:
        if client is not None:
            client.close()
        conn.close()


def _begin_copy(settings: Settings, writer: StagingWriter, tables: dict[str, Table]) -> None:
    """Open the copy's transaction on staging: the tables emptied, followed again (stopped ones
    included), their definitions saved."""
    writer.begin()
    with writer.conn.cursor() as cur:
        for t in tables:
            cur.execute(sql.SQL("TRUNCATE {}.{}").format(sql.Identifier(STAGING), sql.Identifier(t)))
        # The copy reads every row again: what is still bad is dead-lettered anew.
        cur.execute(sql.SQL("UPDATE {}.dead_letter SET resolved_at = now() WHERE pipeline = %s"
                            " AND source_table = ANY(%s) AND resolved_at IS NULL").format(sql.Identifier(META)),
                    (settings.pipeline_name, list(tables)))
    writer.follow(tables.values())


def _build_star(writer: StagingWriter, position: Position) -> None:
    """The star schema from the copy, in its transaction; a row that makes no fact is dead-lettered."""
    assert writer.star is not None
    built = writer.star.rebuild(writer.conn)
    for rowid, reason in built.invalid:
        writer.dead_letter(writer.star.table.name, (rowid,), f"no valid fact: {reason}", None, kind="fact")
    log.info("snapshot_star_schema_built", facts=built.facts, invalid=len(built.invalid), position=str(position))


def _same_definitions(settings: Settings, conn: pymysql.connections.Connection, tables: dict[str, Table]) -> None:
    """The definitions the copy uses were read before the snapshot opened: read them again now
    that it is open. A DDL in between (its statement lies before the snapshot's position, so the
    stream will never bring it) means another try; a DDL after the snapshot opened makes InnoDB
    refuse the copy's read (1412, table definition changed), which is transient too."""
    for name, table in tables.items():
        now = read_table(conn, settings.source.database, name)
        if now != table:
            raise TransientError(f"the definition of source table {name} changed while the snapshot started;"
                                 " taking it again")


def _copy_all(settings: Settings, conn: pymysql.connections.Connection, client: ClientReader | None,
              tables: dict[str, Table], writer: StagingWriter, position: Position, progress: Any) -> None:
    for i, table in enumerate(tables.values()):
        if client is not None:
            rows = _client_copy(client, table, writer, position, progress)
        else:
            rows = _copy_table(settings, conn, table, writer, position, progress)
        with writer.conn.cursor() as cur:
            record_snapshot(cur, settings.pipeline_name, table.name, rows, str(position))
        log.info("snapshot_table_done", table=table.name, rows=rows, tables_done=i + 1,
                 tables_total=len(tables), position=str(position))


def _give_up_client(settings: Settings, client: ClientReader, exc: TransientError) -> None:
    """The mariadb client failed: re-raise when it was asked for, else close it (pymysql reads)."""
    if settings.snapshot_reader == "client":
        raise exc
    log.warning("snapshot_client_failed", error=str(exc), fix="reading with pymysql; set "
                "SOFTCART_SNAPSHOT_READER=pymysql to skip the client")
    client.close()


def _mariadb_gtid(cur: Any, file: str, pos: int) -> str:
    """MariaDB's GTID state at a binlog position."""
    cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
    row = cur.fetchone()
    return _one_line(row[0] if row else None)


def _one_line(gtid: Any) -> str:
    """A GTID set as one line (MySQL breaks long ones)."""
    return str(gtid or "").replace("\n", "")


def _client_copy(client: ClientReader, table: Table, writer: StagingWriter, position: Position,
                 progress: Any) -> int:
    started = time.monotonic()
    copied = 0
    writer.begin()
    with writer.conn.cursor() as cur, cur.copy(sql.SQL("COPY {}.{} ({}) FROM STDIN").format(
            sql.Identifier(STAGING), sql.Identifier(table.name),
            sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names))) as copy:
        def write(data: bytes) -> None:
            nonlocal copied
            copy.write(data)
            before, copied = copied, copied + data.count(b"\n")
            if progress is not None and copied // 100000 != before // 100000:
                progress(table.name, copied)

        dead: list[tuple[list[Any], str, str]] = []  # kept only once the whole read succeeds
        rows = client.copy(table, write, lambda key, reason, row: dead.append((list(key), reason, row)))
    for key, reason, row in dead:
        writer.dead_letter(table.name, key, reason, row)
    rate = rows / max(time.monotonic() - started, 1e-6)
    log.info("snapshot_progress", table=table.name, rows=rows, rows_per_second=round(rate), position=str(position))
    return rows


def _copy_table(settings: Settings, conn: pymysql.connections.Connection, table: Table,
                writer: StagingWriter, position: Position, progress: Any) -> int:
    conv = RowConverter(table)
    cols = select_list(table)
    key_idx = table.key_indexes()
    chunk = settings.snapshot_chunk_rows
    copied = 0
    started = time.monotonic()
    with conn.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute(f"SELECT {cols} FROM {quote_mysql(table.name)}")

        def converted(batch: list[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
            for raw in batch:
                try:
                    yield conv.from_snapshot(raw)
                except Unrepresentable as exc:
                    writer.dead_letter(table.name, [raw[i] for i in key_idx], str(exc), repr(raw)[:10000])

        while True:
            batch = cur.fetchmany(chunk)
            if not batch:
                break
            copied += writer.copy_rows(table, converted(list(batch)))
            rate = copied / max(time.monotonic() - started, 1e-6)
            log.info("snapshot_progress", table=table.name, rows=copied, rows_per_second=round(rate),
                     position=str(position))
            if progress is not None:
                progress(table.name, copied)
    return copied


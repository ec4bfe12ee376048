"""The copier of online copies: reads a table in primary-key chunks, each in a consistent snapshot
of its own, and hands each chunk to the applier through the ChunkGate (loader/online.py says the
method and why it is exact). No table lock, no long transaction on the source (one snapshot per
chunk), memory bounded by a chunk; other tables stream on meanwhile.

Two methods (``copy_method``). On MariaDB a consistent snapshot names its binlog position without a
lock: each chunk is read as of that position, and nothing is written on the source. MySQL reports
it only under FLUSH TABLES WITH READ LOCK, which an online copy must not take once per chunk: there
(and with SOFTCART_ONLINE_COPY=signal) DBLog's watermarks, rows of ``softcart_signal`` written
around each chunk's read (``ensure_signal_table`` makes the table, or says what to grant).
"""

from __future__ import annotations

import pickle
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import psycopg
import pymysql
import structlog
from psycopg import sql

from cdc.capture.flavor import Flavor
from cdc.capture.mysql import connect, read_table
from cdc.capture.snapshot import binlog_end, open_snapshot, quote_mysql, select_list
from cdc.errors import as_ours
from cdc.settings import Settings
from loader.ddl import (
    META,
    forget_copy,
    load_definitions,
    record_snapshot,
    request_copy,
    retakes_due,
    stopped_tables,
)
from loader.online import SIGNAL_COLUMNS, SIGNAL_TABLE, Chunk, ChunkGate, key_part, order_by
from loader.pg import pg_connect
from loader.staging import StagingWriter
from transform.errors import ConfigError, FatalError, TransientError
from transform.fingerprint import Dialect, col_of, range_where
from transform.model import Position
from transform.schema import Table
from transform.values import RowConverter

log = structlog.get_logger(__name__)

Key = tuple[Any, ...]


def copy_method(setting: str, flavor: Flavor) -> str:
    """How tables are copied online: "snapshot" (a MariaDB snapshot's position per chunk, no write
    on the source), "signal" (watermark rows written on the source: MySQL, or when asked), or ""
    (SOFTCART_ONLINE_COPY=off: copied before the stream resumes)."""
    if setting == "off":
        return ""
    return "snapshot" if setting == "auto" and flavor.mariadb else "signal"


SIGNAL_DDL = (f"CREATE TABLE {SIGNAL_TABLE} (pipeline VARCHAR(63) NOT NULL, kind VARCHAR(4) NOT NULL,"
              " watermark CHAR(32) NOT NULL, written_at DATETIME(6) NOT NULL, PRIMARY KEY (pipeline, kind))"
              " ENGINE=InnoDB")


def signal_ddl(database: str) -> str:
    """The statement that makes the watermark table in ``database`` (for an administrator)."""
    return SIGNAL_DDL.replace("CREATE TABLE ", f"CREATE TABLE {database}.", 1)


def ensure_signal_table(settings: Settings) -> Table:
    """The watermark method's table on the source, made if it is not there; its definition (the
    binlog reader decodes its rows). Without the right to make or write it, says what to grant."""
    db = settings.source.database
    grant = (f"as an administrator, run: {signal_ddl(db)};"
             f" GRANT SELECT, INSERT, UPDATE ON {db}.{SIGNAL_TABLE} TO <the account of SOFTCART_SOURCE_URL>")
    conn = connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                        (db, SIGNAL_TABLE))
            if cur.fetchone() is None:
                try:
                    cur.execute(SIGNAL_DDL)
                except pymysql.err.MySQLError as exc:
                    if exc.args and exc.args[0] in (1142, 1044):  # no CREATE right
                        raise ConfigError(f"online copies by watermarks need the table {db}.{SIGNAL_TABLE}"
                                          f" on the source: {grant} (or set SOFTCART_ONLINE_COPY=off)") from None
                    raise
                log.info("signal_table_created", table=f"{db}.{SIGNAL_TABLE}")
        table = read_table(conn, db, SIGNAL_TABLE)
    finally:
        conn.close()
    if table.column_names != SIGNAL_COLUMNS:
        raise ConfigError(f"{db}.{SIGNAL_TABLE} on the source has columns {', '.join(table.column_names)}, not"
                          f" {', '.join(SIGNAL_COLUMNS)}: drop it, and the daemon makes it anew ({grant})")
    return table


def write_watermark(conn: pymysql.connections.Connection, settings: Settings, kind: str, watermark: str) -> None:
    """One watermark on the source (its own transaction: the connection is in autocommit)."""
    try:
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {SIGNAL_TABLE} (pipeline, kind, watermark, written_at)"
                        " VALUES (%s, %s, %s, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE watermark = %s,"
                        " written_at = UTC_TIMESTAMP(6)", (settings.pipeline_name, kind, watermark, watermark))
    except pymysql.err.MySQLError as exc:
        if exc.args and exc.args[0] in (1142, 1044):
            raise ConfigError(f"the source account may not write {settings.source.database}.{SIGNAL_TABLE}"
                              f" (online copies by watermarks): GRANT SELECT, INSERT, UPDATE ON"
                              f" {settings.source.database}.{SIGNAL_TABLE} TO it, or set"
                              " SOFTCART_ONLINE_COPY=off") from None
        raise


@dataclass
class Copy:
    """One table's online copy: where its next chunk starts (None: at the start)."""

    table: Table
    next_source: Key | None = None
    next_staging: Key | None = None
    rows_estimated: int = 0
    rows_copied: int = 0
    started_at: Any = None  # which request this copy answers (a new one starts it again)
    finished: bool = False  # its last chunk is applied (committed with the open batch)


def pending_copies(conn: Any, pipeline: str, tables: dict[str, Table]) -> dict[str, Copy]:
    """The online copies not finished yet (after a restart: resumed where their last chunk ended)."""
    out = {}
    for name, next_key, estimated, copied, started_at in conn.execute(
            sql.SQL("SELECT source_table, next_key, rows_estimated, rows_copied, started_at FROM {}.online_copy"
                    " WHERE pipeline = %s AND finished_at IS NULL ORDER BY started_at, source_table")
            .format(sql.Identifier(META)), (pipeline,)).fetchall():
        if name in tables:
            source, staging = pickle.loads(next_key) if next_key is not None else (None, None)  # noqa: S301 - ours
            out[name] = Copy(tables[name], source, staging, int(estimated), int(copied), started_at)
    return out


def start_copies(cur: Any, pipeline: str, tables: dict[str, Table], estimates: dict[str, int],
                 rebuild_star: Collection[str] = ()) -> None:
    """Record the online copies of ``tables`` (from the start), in the caller's transaction;
    ``rebuild_star``: those whose star schema is rebuilt when their copy ends."""
    for name in tables:
        request_copy(cur, pipeline, name, estimates.get(name, 0), name in rebuild_star)


def estimate_rows(conn: pymysql.connections.Connection, database: str, names: list[str]) -> dict[str, int]:
    """The source's estimate of each table's rows (InnoDB's statistics: for progress and ETA only).
    MySQL 8+ serves TABLE_ROWS from a cache kept for a day (information_schema_stats_expiry): a
    table filled since it was cached showed 3 rows of 250,000. This session asks for InnoDB's own
    (MariaDB has no such cache, nor the variable)."""
    if not names:
        return {}
    with conn.cursor() as cur:
        try:
            cur.execute("SET SESSION information_schema_stats_expiry = 0")
        except pymysql.err.MySQLError as exc:
            if not exc.args or exc.args[0] != 1193:  # unknown system variable: MariaDB
                raise
        cur.execute("SELECT TABLE_NAME, TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
                    f" AND TABLE_NAME IN ({', '.join(['%s'] * len(names))})", (database, *names))
        return {str(r[0]): int(r[1] or 0) for r in cur.fetchall()}


def read_chunk(conn: pymysql.connections.Connection, table: Table, lo: Key | None, rows: int
               ) -> tuple[list[tuple[Any, ...]], Key | None]:
    """Up to ``rows`` rows from key ``lo`` on, in key order, and the key the next chunk starts at
    (None: this was the last), inside the open snapshot."""
    keys = [col_of(table.column(k)) for k in table.primary_key]
    where, params = range_where(keys, lo, None, Dialect.MYSQL)
    with conn.cursor() as cur:
        cur.execute(f"SELECT {select_list(table)} FROM {quote_mysql(table.name)} WHERE {where}"
                    f" ORDER BY {order_by(table, Dialect.MYSQL)} LIMIT {int(rows) + 1}", params)
        got = list(cur.fetchall())
    if len(got) <= rows:
        return got, None
    picks = table.key_indexes()
    return got[:rows], tuple(got[rows][i] for i in picks)


def request_copies(settings: Settings, names: list[str]) -> dict[str, int]:
    """Record online copies of ``names`` (``softcart-sync resnapshot TABLE...``): a running daemon
    takes them up within seconds, a stopped one at its start; a table stopped by a schema change
    is taken up again with the source's definition (the daemon restarts its stream for it).
    Returns the source's row estimates."""
    unknown = [n for n in names if n not in settings.source_tables]
    if unknown:
        raise ConfigError(f"not among SOFTCART_SOURCE_TABLES ({', '.join(settings.source_tables)}): "
                          f"{', '.join(unknown)}; add a table there first (the daemon copies it at its start)")
    if settings.online_copy == "off":
        raise ConfigError("SOFTCART_ONLINE_COPY=off: stop the daemon and run `softcart-sync resnapshot` (all tables)")
    conn = connect(settings)
    try:
        estimates = estimate_rows(conn, settings.source.database, names)
    finally:
        conn.close()
    with pg_connect(settings.staging_config, autocommit=True) as pg:
        followed = load_definitions(pg, settings.pipeline_name)
        stopped = set(stopped_tables(pg, settings.pipeline_name)) & set(names)
        new = [n for n in names if n not in followed]
        if new:
            raise ConfigError(f"not copied yet: {', '.join(new)} (the daemon copies a table of SOFTCART_SOURCE_TABLES"
                              " at its start; start it)")
        with pg.transaction(), pg.cursor() as cur:
            start_copies(cur, settings.pipeline_name, {n: followed[n] for n in names}, estimates)
    log.info("online_copy_requested", tables=names, rows_estimated=estimates, stopped=sorted(stopped))
    return estimates


def retake_stopped(settings: Settings, pg: psycopg.Connection[Any], writer: StagingWriter, tables: dict[str, Table],
                   flavor: Flavor, current: dict[str, Table]) -> None:
    """Tables stopped by a schema change (a copy is asked with the stop, so that a running
    daemon starts its stream anew for them) are followed again with the source's definition
    now, their staging tables made anew, and copied online as a table added is; the star
    schema of such a table is rebuilt when its copy ends."""
    if not copy_method(settings.online_copy, flavor):
        return
    due = retakes_due(pg, settings.pipeline_name)  # a table stopped again and again waits its turn
    retake = {name: current[name] for name in writer.stopped if name in current and name in due}
    for name, new in list(retake.items()):
        try:
            writer.replace_table(new)
        except FatalError as exc:  # the star schema can't follow it: it stays stopped
            retake.pop(name)
            forget_copy(pg, settings.pipeline_name, name)  # asked no more (or each start would)
            log.error("table_not_taken_up", table=name, reason=str(exc),
                      fix="make the source table fit again, then `softcart-sync resnapshot` (daemon stopped)")
    if not retake:
        return
    tables.update(retake)
    star = writer.star.table.name if writer.star is not None else ""
    log.warning("tables_taken_up_again", tables=list(retake), note="stopped by a schema change: staging tables made"
                " anew with the source's definitions, copied online while the stream goes on")
    start_online_copies(settings, writer, retake, flavor, rebuild_star=[star] if star in retake else [],
                        taken_up=True)


def start_online_copies(settings: Settings, writer: StagingWriter, added: dict[str, Table], flavor: Flavor,
                        rebuild_star: list[str] | None = None, taken_up: bool = False) -> None:
    """Tables added to the settings (or taken up again) are followed from the stream's position
    on, and copied online while it goes on (``OnlineCopier``): recorded, with their definitions,
    in one transaction, so a restart resumes them."""
    conn = connect(settings)
    try:
        estimates = estimate_rows(conn, settings.source.database, list(added))
        # Where the copy starts: every chunk is read past it, so what the binlog says of these
        # tables up to it (a statement-format change, a DDL from before they were added) is in
        # the copy already, and the stream leaves it out (the fences, as for a table copied
        # before the stream resumes).
        if copy_method(settings.online_copy, flavor) == "snapshot":
            start = open_snapshot(conn, flavor)
            conn.rollback()
        else:  # no lock: every chunk's low watermark is written after this
            start = binlog_end(conn, flavor)
    finally:
        conn.close()
    pipeline = settings.pipeline_name
    writer.follow(added.values(), taken_up)
    with writer.conn.cursor() as cur:
        start_copies(cur, pipeline, added, estimates, rebuild_star or ())
        for name in added:
            record_snapshot(cur, pipeline, name, 0, str(start))
    writer.commit(None, None, origin="tables added")
    log.info("tables_added", tables=list(added), note="copied online while the stream goes on",
             rows_estimated=estimates)


class OnlineCopier:
    """Copies what ``pending()`` says is to copy (recorded in staging), one table after the other,
    a chunk at a time, and asks again every couple of seconds, until ``stop``."""

    def __init__(self, settings: Settings, flavor: Flavor, pending: Callable[[], dict[str, Copy]],
                 gate: ChunkGate, method: str = "snapshot") -> None:
        self.settings = settings
        self.flavor = flavor
        self.method = method  # copy_method's
        self.pending = pending
        self.gate = gate

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``. A lost connection to either side is retried with capped backoff (the
        copy resumes at its last applied chunk: its progress is in staging); the stream is not
        stopped for it. A fault of ours reaches the supervisor."""
        delay = 1.0
        while not stop.is_set():
            try:
                if self._round(stop):
                    return
                delay = 1.0
            except Exception as raw:
                exc = as_ours(raw)
                if not isinstance(exc, TransientError):
                    raise exc from raw
                self.gate.cancel()
                log.warning("online_copy_retrying", error=str(exc), retry_in_seconds=delay)
                stop.wait(delay)  # the backoff, not a synchronisation
                delay = min(delay * 2, self.settings.retry_max_seconds)

    def _round(self, stop: threading.Event) -> bool:
        """Copy what is pending now, or wait a poll's time for a request; True when stopping."""
        copies = self.pending()
        if not copies:
            stop.wait(2.0)  # the poll for requests (resnapshot TABLE), not a synchronisation
            return False
        conn = connect(self.settings)
        self.gate.active = True
        try:
            for name, copy in copies.items():
                log.info("online_copy_started", table=name, resumed_at=str(copy.next_source),
                         rows_estimated=copy.rows_estimated)
                if not self._copy(conn, copy, stop):
                    return True
        finally:
            self.gate.active = False
            conn.close()
        self._committed([(n, c.started_at) for n, c in copies.items() if c.finished], stop)
        return False

    def _committed(self, done: list[tuple[str, Any]], stop: threading.Event) -> None:
        """Until the batch holding these copies' last chunks is committed (bounded): read before it,
        a copy still looked pending and was started again from its last committed chunk, the last
        chunk copied twice (a second start and finish in the log, on MySQL under load)."""
        deadline = time.monotonic() + max(5.0, 10 * self.settings.batch_max_seconds)
        while done and time.monotonic() < deadline and not stop.is_set():
            pending = self.pending()
            if not any(name in pending and pending[name].started_at == at for name, at in done):
                return
            stop.wait(0.05)  # a poll with a deadline, for the commit

    def _copy(self, conn: pymysql.connections.Connection, copy: Copy, stop: threading.Event) -> bool:
        """Every chunk of one table; False when stopping."""
        s = self.settings
        key_conv = RowConverter(key_part(copy.table))
        started, logged = time.monotonic(), 0.0
        while not stop.is_set():
            began = time.monotonic()
            handed = self._signalled(conn, copy, key_conv) if self.method == "signal" else self._snapshot(conn, copy,
                                                                                                          key_conv)
            if handed is None:
                continue  # the applier did not stop in time: ask again
            chunk, ticket = handed
            if ticket is None or not self.gate.wait_applied(ticket, stop):
                if stop.is_set() or self.gate.closed:
                    return False
                if self.gate.given_up:
                    log.error("online_copy_given_up", table=copy.table.name, reason=self.gate.given_up)
                    self.gate.given_up = ""
                    return True  # the next table
                continue  # cancelled: read it again
            if self.gate.stale:
                log.info("online_copy_restarted", table=copy.table.name, note="requested again: from the start")
                return True  # the next round takes it up from its new record
            copy.rows_copied += len(chunk.rows)
            copy.next_source, copy.next_staging = chunk.next_source, chunk.hi
            if time.monotonic() - logged > 10 or chunk.hi is None:
                logged = time.monotonic()
                log.info("online_copy_progress", table=copy.table.name, rows_copied=copy.rows_copied,
                         rows_estimated=copy.rows_estimated, seconds=round(logged - started, 1))
            if chunk.hi is None:
                copy.finished = True
                return True
            if s.online_copy_rows_per_second > 0:  # the throttle: pace the next chunk
                stop.wait(max(0.0, len(chunk.rows) / s.online_copy_rows_per_second - (time.monotonic() - began)))
        return False

    def _snapshot(self, conn: pymysql.connections.Connection, copy: Copy, key_conv: RowConverter
                  ) -> tuple[Chunk, int | None] | None:
        """The snapshot method: one chunk read as of a snapshot's position, handed over (None: the
        applier did not stop in time)."""
        chunk = self._read(conn, copy, key_conv)
        return None if chunk is None else (chunk, self.gate.deliver(chunk))

    def _read(self, conn: pymysql.connections.Connection, copy: Copy, key_conv: RowConverter) -> Chunk | None:
        """One chunk in a snapshot of its own, the applier held at a transaction boundary while the
        snapshot opens (None: it did not stop in time)."""
        if not self.gate.request():
            return None
        try:
            position: Position = open_snapshot(conn, self.flavor)
        except BaseException:
            self.gate.cancel()
            raise
        self.gate.open(position)
        try:
            rows, next_source = read_chunk(conn, copy.table, copy.next_source, self.settings.online_copy_chunk_rows)
            with conn.cursor() as cur:
                cur.execute("COMMIT")
        except BaseException:
            self.gate.cancel()
            raise
        hi = tuple(key_conv.from_snapshot(next_source)) if next_source is not None else None
        return Chunk(copy.table.name, position, copy.table.column_names, copy.next_staging, hi, next_source,
                     tuple(tuple(r) for r in rows), started_at=copy.started_at)

    def _signalled(self, conn: pymysql.connections.Connection, copy: Copy, key_conv: RowConverter
                   ) -> tuple[Chunk, int | None]:
        """The watermark method: a low watermark, one chunk read as the source has it now, handed
        over, then a high watermark; the applier applies it when the stream brings the latter."""
        watermark = uuid.uuid4().hex
        self.gate.expect(watermark, copy.table.name)
        try:
            write_watermark(conn, self.settings, "low", watermark)
            rows, next_source = read_chunk(conn, copy.table, copy.next_source, self.settings.online_copy_chunk_rows)
            hi = tuple(key_conv.from_snapshot(next_source)) if next_source is not None else None
            chunk = Chunk(copy.table.name, Position("", 0, ""), copy.table.column_names, copy.next_staging, hi,
                          next_source, tuple(tuple(r) for r in rows), watermark, copy.started_at)
            ticket = self.gate.deliver(chunk)
            write_watermark(conn, self.settings, "high", watermark)
        except BaseException:
            self.gate.cancel()
            raise
        return chunk, ticket

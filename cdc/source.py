"""The binlog source: wraps ``BinLogStreamReader`` and yields our own :class:`TxnChunk` values.

Transactions are cut into chunks of at most ``chunk_rows`` rows, so memory stays bounded whatever a
transaction's size; only a transaction's last chunk carries its restart position.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pymysql
import structlog
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import (
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XidEvent,
)
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from cdc import binlog_fixes
from cdc.errors import FatalError, TransientError
from cdc.flavor import Flavor, gtid_advance
from cdc.model import Heartbeat, Op, Position, RowChange, SchemaChange, TxnChunk
from cdc.mysql import classify, connect, connection_settings, read_table, report_name
from cdc.settings import Settings
from transform.ddl import statement_kind, tables_named
from transform.schema import Table
from transform.values import RowConverter, Unrepresentable

log = structlog.get_logger(__name__)

binlog_fixes.install()

_EVENTS = [GtidEvent, MariadbGtidEvent, QueryEvent, XidEvent, RotateEvent, HeartbeatLogEvent,
           WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent]


class BinlogSource:
    """Reads whole transactions from ``start`` on, for the configured tables only."""

    def __init__(self, settings: Settings, tables: dict[str, Table], flavor: Flavor, start: Position) -> None:
        self._settings = settings
        self._tables = dict(tables)  # ours: a schema change updates it before the writer has caught up
        self._converters = {name: RowConverter(t) for name, t in tables.items()}
        self._flavor = flavor
        self._start = start
        self._reader: BinLogStreamReader | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Safe from another thread: unblocks a pending read."""
        with self._lock:
            if self._reader is not None:
                # Closing a broken socket may fail; we are done with it either way.
                with contextlib.suppress(Exception):
                    self._reader.close()

    def chunks(self, stop: threading.Event) -> Iterator[TxnChunk | Heartbeat | SchemaChange]:
        s = self._settings
        with self._lock:
            self._reader = BinLogStreamReader(
                connection_settings=connection_settings(s),
                server_id=s.server_id, blocking=True, resume_stream=True,
                log_file=self._start.file, log_pos=self._start.pos,
                only_schemas=[s.source.database], only_tables=list(self._tables),
                only_events=_EVENTS, slave_heartbeat=s.heartbeat_seconds, enable_logging=False,
                report_slave=report_name(s),  # in SHOW SLAVE HOSTS, so a server_id clash can be seen
            )
        try:
            yield from self._events(stop)
        except pymysql.err.MySQLError as exc:
            if stop.is_set():
                return
            raise classify(exc, s) from None
        except (OSError, EOFError, AttributeError) as exc:
            if stop.is_set():
                return
            raise TransientError(f"source connection lost: {exc}") from None
        finally:
            self.close()

    def _events(self, stop: threading.Event) -> Iterator[TxnChunk | Heartbeat | SchemaChange]:
        reader = self._reader
        assert reader is not None
        file, gtid = self._start.file, self._start.gtid
        changes: list[RowChange] = []
        in_txn = False
        limit = self._settings.chunk_rows
        for event in reader:
            if stop.is_set():
                return
            if isinstance(event, RotateEvent):
                if in_txn:
                    raise TransientError("source connection restarted inside a transaction; resuming "
                                         "from the last committed position")
                file = event.next_binlog
                continue
            if isinstance(event, HeartbeatLogEvent):
                if not in_txn:
                    at = Position(file, int(reader.log_pos), gtid) if event.ident == file and reader.log_pos else None
                    yield Heartbeat(float(event.timestamp) if event.timestamp else 0.0, at)
                continue
            if isinstance(event, MariadbGtidEvent | GtidEvent):
                in_txn = True
                gtid = gtid_advance(self._flavor.mariadb, gtid, str(event.gtid))
                continue
            if isinstance(event, QueryEvent):
                query = _query_text(event)
                if query.upper() == "BEGIN":
                    in_txn = True
                    continue
                # COMMIT of a non-transactional table, or a DDL: a transaction boundary.
                in_txn = False
                at = Position(file, int(reader.log_pos), gtid)
                change = self._ddl(query, at, float(event.timestamp)) if query.upper() != "COMMIT" else None
                yield change or TxnChunk(tuple(changes), at, float(event.timestamp))
                changes = []
                continue
            if isinstance(event, XidEvent):
                in_txn = False
                yield TxnChunk(tuple(changes), Position(file, int(reader.log_pos), gtid), float(event.timestamp))
                changes = []
                continue
            self._rows(event, changes)
            if len(changes) >= limit:
                yield TxnChunk(tuple(changes), None, float(event.timestamp))
                changes = []

    def _ddl(self, query: str, at: Position, event_time: float) -> SchemaChange | None:
        """A statement on followed tables: their definitions are read again from the source (rows
        after it decode with them) and the writer gets a SchemaChange to make staging follow."""
        kind = statement_kind(query)
        names = tables_named(query, self._settings.source.database, self._settings.source_tables) if kind else []
        if not names:
            return None
        conn = connect(self._settings)
        try:
            tables: list[tuple[str, Table | None]] = []
            for name in names:
                try:
                    new: Table | None = read_table(conn, self._settings.source.database, name)
                except FatalError:
                    new = None  # gone (dropped, renamed away), or no longer usable: the writer decides
                tables.append((name, new))
                if new is not None:
                    self._tables[name] = new
                    self._converters[name] = RowConverter(new)
        finally:
            conn.close()
        log.info("source_ddl", statement=query[:500], tables=names, position=str(at))
        return SchemaChange(query[:10000], kind or "", at, event_time, tuple(tables))

    def _rows(self, event: Any, out: list[RowChange]) -> None:
        table = event.table
        conv = self._converters.get(table)
        if conv is None:
            raise FatalError(f"binlog row event for unexpected table {event.schema}.{table}")
        for row in event.rows:
            if isinstance(event, WriteRowsEvent):
                out.append(_change(conv, table, Op.INSERT, None, (row["values"], row["none_sources"])))
            elif isinstance(event, DeleteRowsEvent):
                out.append(_change(conv, table, Op.DELETE, (row["values"], row["none_sources"]), None))
            else:
                out.append(_change(conv, table, Op.UPDATE,
                                   (row["before_values"], row["before_none_sources"]),
                                   (row["after_values"], row["after_none_sources"])))


def _query_text(event: Any) -> str:
    q = event.query
    return (q.decode("utf-8", "replace") if isinstance(q, bytes) else str(q)).strip()


def _change(conv: RowConverter, table: str, op: Op, before: tuple[Any, Any] | None,
            after: tuple[Any, Any] | None) -> RowChange:
    try:
        b = conv.from_binlog(*before) if before else None
        a = conv.from_binlog(*after) if after else None
    except Unrepresentable as exc:
        raw = (after or before)
        assert raw is not None
        key = _raw_key(conv.table, raw[0], before)
        return RowChange(table, op, None, None, error=str(exc), raw=repr(raw[0])[:10000], key=key)
    return RowChange(table, op, b, a)


def _raw_key(table: Table, values: dict[str, Any], before: tuple[Any, Any] | None) -> tuple[Any, ...]:
    source = before[0] if before else values
    return tuple(source.get(k) for k in table.primary_key)

"""The binlog source: wraps ``BinLogStreamReader`` and yields our own :class:`TxnChunk` values.

Transactions are cut into chunks of at most ``chunk_rows`` rows, so memory stays bounded whatever a
transaction's size; only a transaction's last chunk carries its restart position.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterable, Iterator
from importlib.metadata import version
from typing import Any

import pymysql
import structlog
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.constants.NONE_SOURCE import COLS_BITMAP
from pymysqlreplication.event import (
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XAPrepareEvent,
    XidEvent,
)
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    PartialUpdateRowsEvent,
    RowsEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from cdc.capture import binlog_fixes, fast_events
from cdc.capture.assemble import Assembler, Ddl, xid_text
from cdc.capture.flavor import Flavor, gtid_advance
from cdc.capture.mysql import (
    classify,
    connect,
    connection_settings,
    nontransactional_tables,
    read_table,
    report_name,
    server_variables,
)
from cdc.settings import Settings
from transform.binlog_events import ROWS_EVENTS
from transform.errors import FatalError, TableGone, TableUnusable, TransientError
from transform.model import Heartbeat, Op, Position, RowChange, SchemaChange, TxnChunk
from transform.rowcodec import BinlogColumn, RowsDecoder, compile_decoder, written_under_another_type
from transform.schema import Table
from transform.values import RowConverter, Unrepresentable

log = structlog.get_logger(__name__)

binlog_fixes.install()
#: compressed events (MariaDB's log_bin_compress, MySQL's binlog_transaction_compression) are read
#: only where fast_events sits in the library's place: without it they would be skipped
_READS_COMPRESSED = fast_events.install()

_EVENTS = [GtidEvent, MariadbGtidEvent, QueryEvent, XidEvent, XAPrepareEvent, RotateEvent, HeartbeatLogEvent,
           WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, PartialUpdateRowsEvent, fast_events.TransactionPayload]
#: why a table stops at a MySQL partial JSON update (its after image holds JSON diffs, not values)
PARTIAL_JSON = ("a partial JSON update changed it (MySQL's binlog_row_value_options=PARTIAL_JSON, set globally or "
                "by a client's session): its after images hold changes to JSON documents, not the documents")


def _closed_socket(exc: AttributeError) -> bool:
    """pymysql's way of saying its socket was closed under it (``self._sock`` is None)."""
    return str(exc).startswith("'NoneType' object has no attribute")


def _unpacked(events: Iterable[Any]) -> Iterator[Any]:
    """The stream's events, a compressed transaction's (MySQL's ``fast_events.TransactionPayload``)
    in its place: the reader's position stays at the payload's end while they are read."""
    for event in events:
        if type(event) is fast_events.TransactionPayload:
            yield from event.events()
        else:
            yield event


class BinlogSource:
    """Reads whole transactions from ``start`` on, for the configured tables only."""

    def __init__(self, settings: Settings, tables: dict[str, Table], flavor: Flavor, start: Position,
                 fast_decode: bool = True, fences: dict[str, Position] | None = None,
                 signal: Table | None = None, native: bool | None = None) -> None:
        """``signal``: a table whose rows are read too but that is not followed (its statements
        are not ours to follow): the online copies' watermarks."""
        self._settings = settings
        self._followed = list(tables)
        tables = {**tables, signal.name: signal} if signal is not None else tables
        self._fast_decode = fast_decode  # False: every row through the library (tests compare both)
        self._native = native  # our decoders: C or Python (None: C where built; tests compare them)
        self._decoders: dict[tuple[str, int, tuple[Any, ...]], tuple[Table, RowsDecoder | None]] = {}
        # see _plan: table map, table, absent columns, decoder, why the rows can't be decoded
        self._plans: dict[str, tuple[Any, Table, tuple[str, ...] | None, RowsDecoder | None, str | None]] = {}
        self._tables = dict(tables)  # ours: a schema change updates it before the writer has caught up
        self._converters = {name: RowConverter(t) for name, t in tables.items()}
        self._flavor = flavor
        self._start = start
        self._fences = dict(fences or {})  # see Assembler
        self._reader: BinLogStreamReader | None = None
        self._lock = threading.Lock()
        self._assembler: Assembler  # made by chunks(), with what the server says at the start

    def close(self) -> None:
        """Safe from another thread: unblocks a pending read."""
        with self._lock:
            if self._reader is not None:
                # Closing a broken socket may fail; we are done with it either way.
                with contextlib.suppress(Exception):
                    self._reader.close()

    def chunks(self, stop: threading.Event) -> Iterator[TxnChunk | Heartbeat | SchemaChange]:
        s = self._settings
        if not _READS_COMPRESSED:
            raise FatalError(f"mysql-replication {version('mysql-replication')} builds its packet wrappers with other"
                             " arguments than 1.0.17's, so compressed binlog events (MariaDB's log_bin_compress, "
                             "MySQL's binlog_transaction_compression) would be skipped without a word: install "
                             "mysql-replication 1.0.17 (pip install 'mysql-replication==1.0.17')")
        conn = connect(s)
        try:
            nontransactional = nontransactional_tables(conn, s.source.database)
            fold_case = server_variables(conn, ["lower_case_table_names"]).get("lower_case_table_names", "0") != "0"
        finally:
            conn.close()
        self._assembler = Assembler(s.source.database, self._followed, s.chunk_rows,
                                    s.chunk_rows * s.queue_chunks, nontransactional, fold_case, self._fences)
        with self._lock:
            self._reader = BinLogStreamReader(
                connection_settings=connection_settings(s),
                server_id=s.server_id, blocking=True, resume_stream=True, **self._where(),
                only_schemas=[s.source.database], only_tables=list(self._tables),
                only_events=_EVENTS, slave_heartbeat=s.heartbeat_seconds, enable_logging=False,
                report_slave=report_name(s),  # in SHOW SLAVE HOSTS, so a server_id clash can be seen
            )
        try:
            yield from self._events(stop)
        except pymysql.err.MySQLError as exc:
            if stop.is_set():
                return
            if not self._start.file and exc.args and exc.args[0] == 1236:
                raise FatalError(f"source {s.source.display} refused to stream after the saved GTID state"
                                 f" {self._start.gtid} ({exc.args[1] if len(exc.args) > 1 else exc}): it is not the"
                                 " server the position was read from nor a replica of it; take a new snapshot with"
                                 " `softcart-sync resnapshot` (daemon stopped)") from None
            raise classify(exc, s) from None
        except (OSError, EOFError, AttributeError) as exc:
            if stop.is_set():
                return
            if isinstance(exc, AttributeError) and not _closed_socket(exc):
                raise  # a fault of ours (the supervisor stops with it), not a lost connection to retry
            raise TransientError(f"source connection lost: {exc}") from None
        finally:
            self.close()

    def _where(self) -> dict[str, Any]:
        """Where the stream starts: the saved file and offset, or (a start with no file) after a
        GTID state, on another server found to hold it."""
        if self._start.file:
            return {"log_file": self._start.file, "log_pos": self._start.pos}
        return {"auto_position": self._start.gtid, "is_mariadb": self._flavor.mariadb}

    def _events(self, stop: threading.Event) -> Iterator[TxnChunk | Heartbeat | SchemaChange]:
        """The binlog's events, grouped into whole transactions by :class:`cdc.capture.assemble.Assembler`."""
        reader = self._reader
        assert reader is not None
        asm = self._assembler
        file, gtid = self._start.file, self._start.gtid
        for event in _unpacked(reader):
            if stop.is_set():
                return
            if isinstance(event, RotateEvent):
                if asm.in_txn:
                    raise TransientError("source connection restarted inside a transaction; resuming "
                                         "from the last committed position")
                file = event.next_binlog
                continue
            if isinstance(event, HeartbeatLogEvent):
                if not asm.in_txn:
                    at = Position(file, int(reader.log_pos), gtid) if event.ident == file and reader.log_pos else None
                    yield Heartbeat(float(event.timestamp) if event.timestamp else 0.0, at)
                continue
            when = float(event.timestamp)
            if isinstance(event, MariadbGtidEvent):
                gtid = gtid_advance(self._flavor.mariadb, gtid, str(event.gtid))
                items = asm.gtid(int(event.flags))
            elif isinstance(event, GtidEvent):
                gtid = gtid_advance(self._flavor.mariadb, gtid, str(event.gtid))
                items = asm.gtid(None)
            elif isinstance(event, QueryEvent):
                schema = event.schema.decode("utf-8", "replace") if isinstance(event.schema, bytes) else event.schema
                items = asm.query(_query_text(event), schema or None, Position(file, int(reader.log_pos), gtid), when)
            elif isinstance(event, XidEvent):
                items = asm.xid(Position(file, int(reader.log_pos), gtid), when)
            elif isinstance(event, XAPrepareEvent):
                xid = xid_text(event.xid_gtrid, event.xid_bqual, int(event.xid_format_id))
                items = asm.xa_prepare(xid, bool(event.one_phase), Position(file, int(reader.log_pos), gtid), when)
            elif isinstance(event, PartialUpdateRowsEvent):
                items = asm.unreadable(event.table, PARTIAL_JSON, Position(file, int(reader.log_pos), gtid))
            else:
                changes: list[RowChange] = []
                try:
                    why = self._rows(event, changes)
                except NotImplementedError as exc:  # a column type the library can't read (MySQL 9's VECTOR)
                    why = f"its rows can't be read from the binlog: {exc}"
                at = Position(file, int(reader.log_pos), gtid)
                items = asm.unreadable(event.table, why, at) if why else asm.rows(changes, when, at)
            if items:
                now = time.time()
                for item in items:
                    if isinstance(item, Ddl):
                        yield self._ddl(item)
                    elif isinstance(item, TxnChunk):
                        yield dataclasses.replace(item, received_at=now)
                    else:
                        yield item

    def _ddl(self, ddl: Ddl) -> SchemaChange:
        """A statement on followed tables: their definitions are read again from the source (rows
        after it decode with them) and the writer gets a SchemaChange to make staging follow."""
        names = list(ddl.tables)
        conn = connect(self._settings)
        try:
            tables: list[tuple[str, Table | None]] = []
            unusable: list[tuple[str, str]] = []
            for name in names:
                try:
                    new: Table | None = read_table(conn, self._settings.source.database, name)
                except TableGone:
                    new = None  # dropped or renamed away (by this statement or a later one): the writer decides
                except TableUnusable as exc:
                    new = None  # there, but not to be followed as it is now: the writer stops it
                    unusable.append((name, str(exc)))
                tables.append((name, new))
                if new is not None:
                    self._tables[name] = new
                    self._converters[name] = RowConverter(new)
            self._assembler.nontransactional = nontransactional_tables(conn, self._settings.source.database)
        finally:
            conn.close()
        log.info("source_ddl", statement=ddl.statement[:500], kind=ddl.kind, tables=names, position=str(ddl.position))
        return SchemaChange(ddl.statement, ddl.kind, ddl.position, ddl.event_time, tuple(tables), tuple(unusable))

    def _rows(self, event: Any, out: list[RowChange]) -> str | None:
        """The event's changes into ``out``; or, where its table map has a column of another kind
        than the followed definition (rows written before a later type change), none and why:
        the table stops there (#30 item 8)."""
        table = event.table
        conv = self._converters.get(table)
        if conv is None:
            raise FatalError(f"binlog row event for unexpected table {event.schema}.{table}")
        absent, decoder, retyped = self._plan(event)
        if retyped:
            return retyped
        if absent is not None:  # written under another definition: by name, through the library
            first = len(out)
            self._library_rows(conv, table, event, out)
            if absent:
                out[first:] = [dataclasses.replace(c, absent=tuple(dict.fromkeys((*absent, *c.absent))))
                               if c.after is not None and c.error is None else c for c in out[first:]]
            return None
        if decoder is not None and self._full_images(event):
            body = event.__dict__.get("softcart_body")  # read by the fast path (cdc.capture.fast_events)
            if body is None:
                body = event.packet.read(event.event_size - event.packet.read_bytes)
            self._decoded(table, event, decoder(body), out)
            return None
        self._library_rows(conv, table, event, out)
        return None

    @staticmethod
    def _library_rows(conv: RowConverter, table: str, event: Any, out: list[RowChange]) -> None:
        """The library's decoding (by the table map's column names), converted to staging's form."""
        event = fast_events.library_event(event)
        for row in event.rows:
            if isinstance(event, WriteRowsEvent):
                out.append(_change(conv, table, Op.INSERT, None, (row["values"], row["none_sources"])))
            elif isinstance(event, DeleteRowsEvent):
                out.append(_change(conv, table, Op.DELETE, (row["values"], row["none_sources"]), None))
            else:
                out.append(_change(conv, table, Op.UPDATE,
                                   (row["before_values"], row["before_none_sources"]),
                                   (row["after_values"], row["after_none_sources"])))

    def _absent(self, event: Any) -> tuple[str, ...] | None:
        """None when the event's table map (its column names, binlog_row_metadata=FULL) is the
        followed definition; else the followed columns it lacks. A table map says what the table
        was at that binlog position: after a lag across several ALTERs the definition read at the
        first one is the source's current, not the one these rows were written with."""
        tm = event.table_map.get(event.table_id)
        if tm is None or not getattr(tm, "column_name_flag", False):
            return None  # no names in the binlog: the followed definition is all there is
        names = tuple(c.name for c in event.columns)
        held = self._tables[event.table].column_names
        if names == held:
            return None
        present = set(names)
        return tuple(n for n in held if n not in present)

    def _plan(self, event: Any) -> tuple[tuple[str, ...] | None, RowsDecoder | None, str | None]:
        """How this event's rows decode: :meth:`_absent`, the compiled decoder (None: the library
        decodes them), and why they can't be (written under another column type), worked out once
        per table map. While a table's map is the same bytes the library hands back the same map
        object (``binlog_fixes``), so on a stream of small transactions this is one look-up per
        event; a schema change replaces our Table."""
        tm = event.table_map.get(event.table_id)
        table = self._tables[event.table]
        plan = self._plans.get(event.table)
        if plan is None or plan[0] is not tm or plan[1] is not table:
            named = tm is not None and getattr(tm, "column_name_flag", False)
            retyped = written_under_another_type(table, [(c.name if named else None, c.type) for c in event.columns])
            absent = self._absent(event)
            decoder = self._decoder(event) if absent is None and retyped is None and self._fast_decode else None
            plan = self._plans[event.table] = (tm, table, absent, decoder, retyped)
        return plan[2], plan[3], plan[4]

    @staticmethod
    def _full_images(event: Any) -> bool:
        """Whether the event's row images are whole (every column present) and of a kind the
        compiled decoders read; else the library decodes it."""
        if event.event_type not in ROWS_EVENTS or not event.complete:
            return False
        full = (1 << event.number_of_columns) - 1
        return int.from_bytes(event.columns_present_bitmap, "little") == full and (
            not isinstance(event, UpdateRowsEvent) or int.from_bytes(event.columns_present_bitmap2, "little") == full)

    def _decoder(self, event: Any) -> RowsDecoder | None:
        """The compiled decoder for this event's table map (made on first sight), or None when the
        library must decode it: a type we don't compile, an unknown charset."""
        table = self._tables[event.table]
        signature = tuple(_signature(c) for c in event.columns)
        key = (event.table, event.table_id, signature)
        cached = self._decoders.get(key)
        if cached is None or cached[0] is not table:
            decoder = compile_decoder(table, [_binlog_column(c) for c in event.columns], self._native)
            cached = self._decoders[key] = (table, decoder)
        return cached[1]

    def _decoded(self, name: str, event: Any, rows: list[tuple[tuple[Any, ...], str | None]],
                 out: list[RowChange]) -> None:
        table = self._tables[name]
        if isinstance(event, UpdateRowsEvent):
            keys = table.key_indexes()
            for i in range(0, len(rows), 2):
                (before, e1), (after, e2) = rows[i], rows[i + 1]
                if e1 and not e2 and all(before[k] is not None for k in keys):
                    # an update away from a value staging can't hold: the old image's key is enough
                    before = tuple(before[j] if j in keys else v for j, v in enumerate(after))
                    e1 = None
                if e1 or e2:
                    out.append(_bad(table, Op.UPDATE, str(e2 or e1), after, before))
                else:
                    out.append(RowChange(name, Op.UPDATE, before, after))
            return
        op = Op.INSERT if isinstance(event, WriteRowsEvent) else Op.DELETE
        keys = table.key_indexes()
        for row, err in rows:
            if err and op is Op.DELETE and all(row[k] is not None for k in keys):
                # a delete needs the key alone (the library's path keeps the key alone too)
                out.append(RowChange(name, op, tuple(v if j in keys else None for j, v in enumerate(row)), None))
            elif err:
                out.append(_bad(table, op, err, row, None))
            elif op is Op.INSERT:
                out.append(RowChange(name, op, None, row))
            else:
                out.append(RowChange(name, op, row, None))




def _signature(c: Any) -> tuple[Any, ...]:
    return (c.type, c.unsigned, getattr(c, "max_length", 0), getattr(c, "length_size", 0),
            getattr(c, "precision", 0), getattr(c, "decimals", 0), getattr(c, "fsp", 0), c.character_set_name)


def _binlog_column(c: Any) -> BinlogColumn:
    """The library's table-map column as ours; the encoding is empty for a charset Python has no
    codec for (BLOB's "binary"; a text column in one keeps the library path)."""
    encoding = "utf-8"  # the library's choice too when the table map names no charset
    if c.character_set_name is not None:
        encoding = RowsEvent.charset_to_encoding(c.character_set_name)
        try:
            codecs.lookup(encoding)
        except LookupError:
            encoding = ""
    return BinlogColumn(type=c.type, unsigned=bool(c.unsigned), max_length=getattr(c, "max_length", 0) or 0,
                        length_size=getattr(c, "length_size", 0) or 0, precision=getattr(c, "precision", 0) or 0,
                        decimals=getattr(c, "decimals", 0) or 0, fsp=getattr(c, "fsp", 0) or 0, encoding=encoding)


def _bad(table: Table, op: Op, reason: str, row: tuple[Any, ...], before: tuple[Any, ...] | None) -> RowChange:
    """A row change whose values staging can't hold: dead-lettered with the reason and its key."""
    raw = dict(zip(table.column_names, row, strict=True))
    key_row = before if before is not None else row
    key = tuple(key_row[i] for i in table.key_indexes())
    return RowChange(table.name, op, None, None, error=reason, raw=repr(raw)[:10000], key=key)


def _query_text(event: Any) -> str:
    q = event.query
    return (q.decode("utf-8", "replace") if isinstance(q, bytes) else str(q)).strip()


def _change(conv: RowConverter, table: str, op: Op, before: tuple[Any, Any] | None,
            after: tuple[Any, Any] | None) -> RowChange:
    try:
        a = conv.from_binlog(*after) if after else None
        try:
            b = conv.from_binlog(*before) if before else None
        except Unrepresentable:
            if before is None or (a is None and op is not Op.DELETE):
                raise
            # an update away from a value staging can't hold, or a delete of such a row: the old
            # image is only needed for its key
            b = conv.with_key_of(a if a is not None else (None,) * len(conv.table.columns), before[0])
    except Unrepresentable as exc:
        raw = (after or before)
        assert raw is not None
        key = _raw_key(conv.table, raw[0], before)
        return RowChange(table, op, None, None, error=str(exc), raw=repr(raw[0])[:10000], key=key)
    if a is not None and after is not None and COLS_BITMAP in after[1].values():
        return _partial(conv.table, table, op, b, a, after[1])
    return RowChange(table, op, b, a)


def _partial(t: Table, table: str, op: Op, before: tuple[Any, ...] | None, after: tuple[Any, ...],
             reasons: dict[str, str]) -> RowChange:
    """An after image without some columns (another session's ``binlog_row_image`` MINIMAL or
    NOBLOB: only the columns the statement set, and a before image of the key alone): those are
    ``absent``, for the applier to read from the source by key before applying; an update's key,
    where its after image lacks it (unchanged), is its before image's."""
    missing = {name for name, why in reasons.items() if why == COLS_BITMAP}
    row = list(after)
    for i in t.key_indexes():
        name = t.column_names[i]
        if name in missing:
            if before is None:  # an insert that left its key to a default: nothing to read it by
                return RowChange(table, op, None, None, error=f"the row image lacks key column {name!r}"
                                 " (binlog_row_image MINIMAL), and nothing else gives it",
                                 raw=repr(dict(zip(t.column_names, after, strict=True)))[:10000],
                                 key=tuple(after[j] for j in t.key_indexes()))
            row[i] = before[i]
    absent = tuple(n for n in t.column_names if n in missing and n not in t.primary_key)
    return RowChange(table, op, before, tuple(row), absent=absent)


def _raw_key(table: Table, values: dict[str, Any], before: tuple[Any, Any] | None) -> tuple[Any, ...]:
    source = before[0] if before else values
    return tuple(source.get(k) for k in table.primary_key)

"""The reader's fast path for the two events an OLTP stream is mostly made of.

An application that changes one row per statement writes, per row, a TABLE_MAP event and a rows
event. mysql-replication builds a packet wrapper and an event object for each, through layers of
generic code (keyword arguments, a ``read`` per field, a server query cache look-up): that was
most of the reader's time on such a stream. :func:`install` puts :func:`_wrap` in the place
``BinLogStreamReader.fetchone`` builds its wrapper from, and it reads those two events directly:

- a TABLE_MAP whose bytes were parsed before (``binlog_fixes.table_maps``) becomes that parse
  again without any of the library's objects;
- a WRITE/UPDATE/DELETE rows event of a followed table becomes the library's event class, with
  the fields the source reads (table, columns, bitmaps) and the row images as bytes
  (``softcart_body``) for the compiled row decoder.

It is also where a compressed event (MariaDB's ``log_bin_compress``: statements and row images of
at least ``log_bin_compress_min_len`` bytes, zlib) becomes its plain form before anything reads
it, fast path or not, and where MySQL 8's compressed transaction (``binlog_transaction_compression``:
a transaction's events in one zstd payload) becomes a :class:`TransactionPayload` whose events the
source reads in its place: mysql-replication knows neither, and its reader skipped them silently
(a multi-row statement's rows, a long ALTER, whole transactions).

Every other event, and any rows event ``transform.binlog_events`` does not read whole, is the
library's as before; and where the source must decode a fast event's rows through the library
after all (partial row images, a table map from another definition), :func:`library_event`
parses the very same bytes the library's way. The tests read the same binlogs with and without
the fast path (``fast_events``) and hold them equal.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Iterator
from typing import Any

from pymysql.protocol import MysqlPacket
from pymysqlreplication import binlogstream
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from cdc.capture import binlog_fixes
from transform.binlog_events import (
    CHECKSUM_SIZE,
    COMPRESSED,
    EVENT_HEADER_SIZE,
    PACKET_HEADER,
    ROWS_EVENTS,
    TABLE_MAP_EVENT,
    TRANSACTION_PAYLOAD_EVENT,
    CompressedEventError,
    Payload,
    PayloadError,
    inner_packet,
    payload,
    payload_events,
    rows_header,
    uncompressed_packet,
)
from transform.errors import FatalError

fast_events = True  # tests read the same binlog with and without it
fast_event_hits = 0
compressed_events = 0  # read as their plain form (tests)
compressed_transactions = 0  # MySQL 8's, read as the events inside them (tests)
_CLASSES = {"write": WriteRowsEvent, "update": UpdateRowsEvent, "delete": DeleteRowsEvent}
_ROW_CLASSES = {t: _CLASSES[kind] for t, kind in ROWS_EVENTS.items()}
#: fetchone's arguments, in its order (mysql-replication 1.0): the fast path is installed only
#: where the library's wrapper takes exactly these.
_ARGS = ("from_packet", "table_map", "ctl_connection", "mysql_version", "use_checksum", "allowed_events",
         "only_tables", "ignored_tables", "only_schemas", "ignored_schemas", "freeze_schema",
         "ignore_decode_errors", "verify_checksum", "optional_meta_data", "enable_logging",
         "use_column_name_cache", "post_header_lengths")
_library_wrapper = binlogstream.BinLogPacketWrapper
# Where _wrap finds these among its ``*args`` (the arguments after the packet and table_map).
_USE_CHECKSUM, _ALLOWED, _FREEZE, _VERIFY, _POST_HEADERS = (_ARGS.index(n) - 2 for n in (
    "use_checksum", "allowed_events", "freeze_schema", "verify_checksum", "post_header_lengths"))
_TABLE_FILTERS = (_ARGS.index("only_tables") - 2, _ARGS.index("ignored_tables") - 2,
                  _ARGS.index("only_schemas") - 2, _ARGS.index("ignored_schemas") - 2)
_MAP_FILTERS = operator.itemgetter(*(_ARGS.index(n) - 2 for n in binlog_fixes._FILTERS))  # a map key's part


class _Wrapped:
    """What ``fetchone`` reads of a packet wrapper."""

    __slots__ = ("event", "event_type", "log_pos", "timestamp")

    def __init__(self, event_type: int, log_pos: int, timestamp: int, event: Any) -> None:
        self.event_type, self.log_pos, self.timestamp, self.event = event_type, log_pos, timestamp, event


class _Map:
    """A table map that is not handed to the caller: what ``fetchone`` reads of it."""

    __slots__ = ("table_id", "table_obj")

    def __init__(self, table_id: int, table_obj: Any) -> None:
        self.table_id, self.table_obj = table_id, table_obj

    def get_table(self) -> Any:
        return self.table_obj


def _wrap(pkt: Any, table_map: dict[int, Any], *args: Any) -> Any:
    """``BinLogPacketWrapper(pkt, table_map, *args)``, with the two events above read directly, a
    compressed event as its plain form, and a compressed MySQL transaction as a
    :class:`TransactionPayload`."""
    global fast_event_hits
    if len(pkt._data) - pkt._position >= PACKET_HEADER.size:
        kind = pkt._data[pkt._position + 5]
        if kind in COMPRESSED:
            pkt = _uncompressed(pkt, args)
        elif kind == TRANSACTION_PAYLOAD_EVENT:
            return _payload(pkt, table_map, args)
    if fast_events and len(args) == len(_ARGS) - 2 and not args[_VERIFY] and not args[_FREEZE]:
        data, at = pkt._data, pkt._position
        if len(data) - at >= PACKET_HEADER.size:
            timestamp, event_type, _, size, log_pos, _ = PACKET_HEADER.unpack_from(data, at)
            body = at + 1 + EVENT_HEADER_SIZE
            end = at + 1 + size - (CHECKSUM_SIZE if args[_USE_CHECKSUM] else 0)
            if end <= len(data):
                event = None
                if event_type == TABLE_MAP_EVENT:
                    event = _table_map(data, body, end, args)
                elif event_type in _ROW_CLASSES:
                    event = _rows(data, body, end, event_type, timestamp, table_map, pkt, args)
                if event is not None:
                    fast_event_hits += 1
                    return _Wrapped(event_type, log_pos, timestamp, event)
    return _library_wrapper(pkt, table_map, *args)


def _uncompressed(pkt: Any, args: tuple[Any, ...]) -> Any:
    """A compressed event's packet (MariaDB's ``log_bin_compress``) as its plain form's: the
    library knows no compressed event types, and its reader skipped them without a word."""
    data, at = pkt._data, pkt._position
    try:
        plain = uncompressed_packet(data, at, bool(args[_USE_CHECKSUM]),
                                    _declared(args[_POST_HEADERS], data[at + 5]))
    except CompressedEventError as exc:
        log_pos = PACKET_HEADER.unpack_from(data, at)[4]
        raise FatalError(f"the binlog event ending at position {log_pos} is compressed (log_bin_compress) in a "
                         f"form this reader doesn't know ({exc}); it can't be skipped") from None
    global compressed_events
    compressed_events += 1
    return MysqlPacket(plain, None) if plain is not None else pkt


class TransactionPayload:
    """MySQL 8's compressed transaction (``binlog_transaction_compression``, set globally or by a
    client's session) as one event of the stream: its events are inside one zstd payload, which
    mysql-replication doesn't read (its reader skipped them without a word). :meth:`events` gives
    the events inside, each read as the stream's own (fast path or library, table maps filed in
    the stream's map) when it is taken, so memory holds one event of a large transaction at a
    time; each ends where the payload ends (the server writes no position for them)."""

    def __init__(self, data: bytes, where: Payload, log_pos: int, timestamp: int, table_map: dict[int, Any],
                 args: tuple[Any, ...]) -> None:
        self.log_pos, self.timestamp = log_pos, timestamp
        self._data, self._where, self._table_map, self._args = data, where, table_map, args

    def events(self) -> Iterator[Any]:
        checksum, allowed = bool(self._args[_USE_CHECKSUM]), self._args[_ALLOWED]
        try:
            for raw in payload_events(self._data, self._where):
                wrapped = _wrap(MysqlPacket(inner_packet(raw, self.log_pos, checksum), None), self._table_map,
                                *self._args)
                event = wrapped.event
                if wrapped.event_type == TABLE_MAP_EVENT:
                    if event is not None:  # as fetchone files a table map
                        self._table_map[event.table_id] = event.get_table()
                elif event is not None and event.__class__ in allowed:
                    yield event
        except PayloadError as exc:
            raise _unknown_form(self.log_pos, exc) from None


def _payload(pkt: Any, table_map: dict[int, Any], args: tuple[Any, ...]) -> _Wrapped:
    """A compressed MySQL transaction's packet, for a reader that asks for them (the source's);
    any other caller would drop it without a word, so it stops, naming the setting."""
    data, at = pkt._data, pkt._position
    timestamp, _, _, size, log_pos, _ = PACKET_HEADER.unpack_from(data, at)
    if len(args) != len(_ARGS) - 2 or TransactionPayload not in args[_ALLOWED]:
        raise FatalError(f"the binlog transaction ending at position {log_pos} is compressed (MySQL's "
                         "binlog_transaction_compression) and this reader doesn't ask for compressed transactions")
    body = at + 1 + EVENT_HEADER_SIZE
    end = at + 1 + size - (CHECKSUM_SIZE if args[_USE_CHECKSUM] else 0)
    try:
        where = payload(data, body, end)
    except PayloadError as exc:
        raise _unknown_form(log_pos, exc) from None
    global compressed_transactions
    compressed_transactions += 1
    return _Wrapped(TRANSACTION_PAYLOAD_EVENT, log_pos, timestamp,
                    TransactionPayload(bytes(data), where, log_pos, timestamp, table_map, args))


def _unknown_form(log_pos: int, exc: PayloadError) -> FatalError:
    return FatalError(f"the binlog transaction ending at position {log_pos} is compressed (MySQL's "
                      f"binlog_transaction_compression) in a form this reader doesn't know ({exc}); it can't be"
                      " skipped")


def _table_map(data: bytes, body: int, end: int, args: tuple[Any, ...]) -> _Map | None:
    """A map parsed before: its parse again (``binlog_fixes._table_map_init`` keeps them), as
    what ``fetchone`` reads of a map to file it in its ``table_map``. The caller never sees it (it
    is no TableMapEvent): the source asks for none (``cdc.capture.source._EVENTS``)."""
    if not binlog_fixes.table_map_cache:
        return None
    filters = binlog_fixes.filters_text(_MAP_FILTERS(args))
    known = binlog_fixes.table_maps.get((bytes(data[body:end]), *filters))
    if known is None:
        return None
    binlog_fixes.table_map_hits += 1
    return _Map(known["table_id"], known["table_obj"])


def _rows(data: bytes, body: int, end: int, event_type: int, timestamp: int, table_map: dict[int, Any],
          pkt: Any, args: tuple[Any, ...]) -> Any:
    """A followed table's rows event of a plain form, its rows left as bytes."""
    cls = _ROW_CLASSES[event_type]
    if cls not in args[_ALLOWED]:
        return None
    only_tables, ignored_tables, only_schemas, ignored_schemas = (args[i] for i in _TABLE_FILTERS)
    header = rows_header(data, body, end, event_type, _declared(args[_POST_HEADERS], event_type))
    if header is None:
        return None
    table_id, columns, present, present2, images = header
    tm = table_map.get(table_id)
    if tm is None or (only_tables is not None and tm.table not in only_tables) \
            or (ignored_tables is not None and tm.table in ignored_tables) \
            or (only_schemas is not None and tm.schema not in only_schemas) \
            or (ignored_schemas is not None and tm.schema in ignored_schemas):
        return None
    event = cls.__new__(cls)
    event.__dict__.update(
        table_map=table_map, event_type=event_type, timestamp=timestamp, event_size=end - body, complete=True,
        _processed=True, packet=None, table_id=table_id, schema=tm.schema, table=tm.table, columns=tm.columns,
        number_of_columns=columns, columns_present_bitmap=present, softcart_body=data[images:end],
        softcart_call=(pkt, table_map, *args))
    if present2 is not None:
        event.columns_present_bitmap2 = present2
    return event


def _declared(post_header_lengths: Any, event_type: int) -> int | None:
    if not post_header_lengths or not 0 < event_type <= len(post_header_lengths):
        return None
    return int(post_header_lengths[event_type - 1])


def library_event(event: Any) -> Any:
    """The library's own event for ``event``: itself, or (read by the fast path) the same bytes
    parsed by the library."""
    call = event.__dict__.get("softcart_call")
    if call is None:
        return event
    pkt = call[0]  # the fast path read nothing from it: its position is still the event's start
    return _library_wrapper(MysqlPacket(pkt._data[pkt._position:], None), *call[1:]).event


def install() -> bool:
    """Put :func:`_wrap` where ``fetchone`` finds its wrapper (idempotent). False, and nothing
    changed, where the library's wrapper takes other arguments than the ones read here."""
    params = tuple(inspect.signature(_library_wrapper.__init__).parameters)[1:]
    if params != _ARGS:
        return False
    binlogstream.BinLogPacketWrapper = _wrap
    return True

"""Corrections to mysql-replication's row decoding, installed once by the source.

mysql-replication 1.0 decodes a negative TIME with a fractional part wrongly (it negates the
integer part and the fraction separately: ``-00:00:00.000001`` arrives as ``-00:00:00.999999``).
:func:`decode_time2` follows the server's own ``my_time_packed_from_binary``.

It also decodes MySQL's ``latin1`` as Python's cp1252, which has no character for the bytes 0x81,
0x8D, 0x8F, 0x90 and 0x9D: a row holding one stopped the stream. MySQL's latin1 is cp1252 with
those five kept as the C1 controls U+0081..., which is what the server itself returns in UTF-8;
:data:`MYSQL_LATIN1` is that codec.

And it is slow where it need not be: every TABLE_MAP event (one before each rows event, so one
per small transaction) builds a ``Table`` whose primary key it finds through ``Column.data``, a
dict of every attribute built anew for each of two look-ups per column: a fifth of the reader's
time on a stream of small transactions. :func:`_table_init` reads the two attributes directly;
the result is the same (``tests/unit/test_binlog_fixes.py`` holds it so), and so does
``Table.data``, asked once per rows event. And it parses each
TABLE_MAP event's column metadata anew though a table's map is the same bytes every time: what a
map's bytes parse to is kept (:func:`_table_map_init`, a few hundred maps at most), and a map
seen before costs a dictionary look-up (``tests/integration/test_rowcodec.py`` reads the same
binlog with and without it).

MySQL 9 writes TABLE_MAP optional metadata fields the library doesn't know (type 64, with a
VECTOR column): the library raised ``64 is not a valid MetadataFieldType`` and the stream died at
that event, for any table of the server. The fields are type-length-value: the ones it doesn't
know are left out by their length before it parses (:func:`known_optional_metadata`).
"""

from __future__ import annotations

import codecs
import datetime as dt
from typing import Any

from pymysqlreplication.constants import BINLOG
from pymysqlreplication.event import BinLogEvent, QueryEvent
from pymysqlreplication.row_event import MetadataFieldType, RowsEvent, TableMapEvent
from pymysqlreplication.table import Table

_TIMEF_INT_OFS = 0x800000
_TIMEF_OFS = 0x800000000000


def time2_size(fsp: int) -> int:
    return 3 + (fsp + 1) // 2


def decode_time2(raw: bytes, fsp: int) -> dt.timedelta:
    """A MySQL 5.6+ TIME(fsp) value from its binlog bytes."""
    if fsp in (5, 6):
        packed = int.from_bytes(raw[:6], "big") - _TIMEF_OFS
    else:
        intpart = int.from_bytes(raw[:3], "big") - _TIMEF_INT_OFS
        frac, scale, width = 0, 0, 0
        if fsp in (1, 2):
            frac, scale, width = raw[3], 10000, 0x100
        elif fsp in (3, 4):
            frac, scale, width = int.from_bytes(raw[3:5], "big"), 100, 0x10000
        if intpart < 0 and frac:
            # Negative values store the fraction in reverse order, for binary sorting.
            intpart += 1
            frac -= width
        packed = (intpart << 24) + frac * scale
    negative = packed < 0
    packed = abs(packed)
    hms, micro = packed >> 24, packed % (1 << 24)
    value = dt.timedelta(hours=(hms >> 12) % (1 << 10), minutes=(hms >> 6) % 64, seconds=hms % 64,
                         microseconds=micro)
    return -value if negative else value


def _read_time2(self: Any, column: Any) -> dt.timedelta:
    return decode_time2(self.packet.read(time2_size(column.fsp)), column.fsp)


MYSQL_LATIN1 = "softcart_mysql_latin1"


def _latin1_table() -> str:
    chars = []
    for b in range(256):
        try:
            chars.append(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:
            chars.append(chr(b))  # MySQL's latin1 keeps the cp1252 holes as C1 controls
    return "".join(chars)


_LATIN1_DECODE = _latin1_table()
_LATIN1_ENCODE = codecs.charmap_build(_LATIN1_DECODE)


def _search(name: str) -> codecs.CodecInfo | None:
    if name != MYSQL_LATIN1:
        return None
    return codecs.CodecInfo(
        name=MYSQL_LATIN1,
        encode=lambda text, errors="strict": codecs.charmap_encode(text, errors, _LATIN1_ENCODE),
        decode=lambda data, errors="strict": codecs.charmap_decode(data, errors, _LATIN1_DECODE))


def _charset_to_encoding(name: str) -> str:
    # The library names the column's encoding from the table map: cp1252 for MySQL's latin1.
    if name in ("latin1", "cp1252"):
        return MYSQL_LATIN1
    return str(_library_charset_to_encoding(name))


def _table_init(self: Any, table_id: Any, schema: Any, table: Any, columns: Any, primary_key: Any = None,
                column_name_flag: bool = False) -> None:
    """``Table.__init__`` as the library has it, without a dict per column look-up."""
    if primary_key is None:
        keys = [c.name for c in columns if c.is_primary]
        primary_key = "" if not keys else keys[0] if len(keys) == 1 else tuple(keys)
    self.__dict__.update({"table_id": table_id, "schema": schema, "table": table, "columns": columns,
                          "primary_key": primary_key, "column_name_flag": column_name_flag})


def _table_data(self: Any) -> dict[str, Any]:
    """``Table.data`` as the library has it (every public attribute), built once per Table: every
    rows event asks for it to find its primary key, and a Table's attributes are set once, by
    ``__init__`` (a kept map's Table serves every event of that map). Read, never changed, by
    the library."""
    data: dict[str, Any] | None = self.__dict__.get("_data")
    if data is None:
        data = self.__dict__["_data"] = {k: v for k, v in self.__dict__.items() if k[0] != "_"}
    return data


# What the base event sets for each event (its packet, time, size...): not part of a map's parse.
_PER_EVENT = frozenset(("packet", "table_map", "event_type", "timestamp", "event_size", "_post_header_lengths",
                        "_ctl_connection", "mysql_version", "_ignore_decode_errors", "_verify_checksum",
                        "_is_event_valid", "_processed", "complete", "dbms"))
_FILTERS = ("only_tables", "ignored_tables", "only_schemas", "ignored_schemas", "freeze_schema",
            "optional_meta_data", "use_column_name_cache")
_MAPS_KEPT = 512
table_maps: dict[tuple[Any, ...], dict[str, Any]] = {}  # a map's bytes (and the reader's filters) -> its parse
table_map_cache = True  # tests read the same binlog with and without it
table_map_hits = 0


def _map_key(from_packet: Any, event_size: int, kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    """The map's own bytes, or None where they can't be seen whole (then it is parsed)."""
    raw = getattr(from_packet, "packet", None)
    data, at = getattr(raw, "_data", None), getattr(raw, "_position", None)
    if not table_map_cache or data is None or at is None or kwargs.get("freeze_schema") \
            or getattr(from_packet, "_BinLogPacketWrapper__data_buffer", b"") != b"":
        return None
    return (bytes(data[at:at + event_size]), *_filters(kwargs))


_filters_seen: tuple[tuple[Any, ...], tuple[str, ...]] = ((), ())


def _filters(kwargs: dict[str, Any]) -> tuple[str, ...]:
    return filters_text(tuple(map(kwargs.get, _FILTERS)))


def filters_text(objects: tuple[Any, ...]) -> tuple[str, ...]:
    """The reader's filters (``_FILTERS``' values) as text, part of a map's key: worked out again
    only when they differ from last time's (kept as copies, so a list changed in place differs too)."""
    global _filters_seen
    seen, text = _filters_seen
    if objects != seen:
        text = tuple(repr(o) for o in objects)
        _filters_seen = (tuple(list(o) if isinstance(o, list) else o for o in objects), text)
    return text


def _table_map_init(self: Any, from_packet: Any, event_size: int, table_map: dict[int, Any], ctl_connection: Any,
                    **kwargs: Any) -> None:
    """``TableMapEvent.__init__``, parsing a map's bytes once: the same bytes again take the
    same columns and Table (nothing changes them once parsed)."""
    global table_map_hits
    key = _map_key(from_packet, event_size, kwargs)
    known = table_maps.get(key) if key is not None else None
    if known is None:
        _library_table_map_init(self, from_packet, event_size, table_map, ctl_connection, **kwargs)
        meta = getattr(self, "optional_metadata", None)
        named = meta is not None and len(getattr(meta, "column_name_list", ())) == getattr(self, "column_count", -1)
        # kept only where the map names its columns (binlog_row_metadata=FULL): without names the
        # library asks the server for them, and a rename keeps the map's bytes
        if key is not None and self._processed and named:
            if len(table_maps) >= _MAPS_KEPT:
                table_maps.clear()
            table_maps[key] = {k: v for k, v in self.__dict__.items() if k not in _PER_EVENT}
        return
    BinLogEvent.__init__(self, from_packet, event_size, table_map, ctl_connection, **kwargs)
    self.__dict__.update(known)
    table_map[self.table_id] = self.table_obj
    table_map_hits += 1


#: the optional metadata field types mysql-replication 1.0 parses (1-12)
_METADATA_KNOWN = frozenset(t.value for t in MetadataFieldType) - {MetadataFieldType.UNKNOWN_METADATA_FIELD_TYPE.value}


def _lenenc(data: bytes, i: int) -> tuple[int, int] | None:
    """A length-encoded integer at ``data[i]``: (value, bytes it takes); None: cut short or NULL."""
    if i >= len(data):
        return None
    first = data[i]
    if first < 0xFB:
        return first, 1
    width = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if width is None or i + 1 + width > len(data):
        return None
    return int.from_bytes(data[i + 1:i + 1 + width], "little"), 1 + width


def known_optional_metadata(fields: bytes) -> bytes | None:
    """A TABLE_MAP's optional metadata (type, length, value fields) without the fields of types
    the library doesn't parse; None where the bytes don't split into whole fields (then the
    library reads them as they are, and says what it finds)."""
    kept, i = bytearray(), 0
    while i < len(fields):
        size = _lenenc(fields, i + 1)
        if size is None:
            return None
        end = i + 1 + size[1] + size[0]
        if end > len(fields):
            return None
        if fields[i] in _METADATA_KNOWN:
            kept += fields[i:end]
        i = end
    return bytes(kept)


def _optional_meta_data(self: Any) -> Any:
    """``TableMapEvent._get_optional_meta_data`` on the fields it knows (see the module's text)."""
    inner = self.packet.packet  # the server's packet: its bytes up to the checksum are the fields
    data, at = inner._data, inner._position
    end = len(data) - BINLOG.BINLOG_CHECKSUM_LEN  # as the library's own loop reads them
    pushed_back = getattr(self.packet, "_BinLogPacketWrapper__data_buffer", b"")
    kept = known_optional_metadata(bytes(data[at:end])) if at < end and not pushed_back else None
    if kept is not None and len(kept) != end - at:
        inner._data = bytes(data[:at]) + kept + bytes(data[end:])
    return _library_optional_meta_data(self)


#: the query event status variables mysql-replication 1.0 reads (MySQL's 0x00-0x14, MariaDB's 0x80, 0x81)
_STATUS_VARS_KNOWN = frozenset([*range(0x15), 0x80, 0x81])


def _read_status_var(self: Any, key: int) -> None:
    """``QueryEvent._read_status_vars_value_for_key``, reading past a status variable the library
    doesn't know (MySQL 9 writes 0x15, on DML logged as statements) instead of failing the event,
    which stalled the stream at it for good. The block's length is in the event's post-header, so
    the rest of the block is skipped without a guess; nothing we read is in it (the default
    database and the statement follow the block)."""
    end = self.__dict__.get("_softcart_vars_end")
    if end is None:  # the first variable: its key byte was just read
        end = self._softcart_vars_end = self.packet.read_bytes - 1 + self.status_vars_length
    if key in _STATUS_VARS_KNOWN:
        _library_read_status_var(self, key)
        return
    self.packet.read(end - self.packet.read_bytes)


_library_read_status_var = QueryEvent._read_status_vars_value_for_key
_library_optional_meta_data = TableMapEvent._get_optional_meta_data
_library_table_init = Table.__init__
_library_table_data = Table.data
_library_table_map_init = TableMapEvent.__init__
_library_charset_to_encoding = RowsEvent.charset_to_encoding
_installed = False


def install() -> None:
    """Replace the library's TIME2 decoder, latin1 mapping, ``Table.__init__``,
    ``TableMapEvent.__init__``, its optional metadata reader and the query event's status variable
    reader with ours (idempotent)."""
    global _installed
    RowsEvent._RowsEvent__read_time2 = _read_time2
    Table.__init__ = _table_init
    Table.data = property(_table_data)
    TableMapEvent.__init__ = _table_map_init
    QueryEvent._read_status_vars_value_for_key = _read_status_var
    TableMapEvent._get_optional_meta_data = _optional_meta_data
    if not _installed:
        codecs.register(_search)
        RowsEvent.charset_to_encoding = staticmethod(_charset_to_encoding)
        _installed = True

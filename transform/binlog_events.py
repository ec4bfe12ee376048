"""The fixed parts of a binlog packet and of a rows event, read from the packet's bytes (pure).

The reader's fast path (``cdc.capture.fast_events``) reads rows events with these instead of
building mysql-replication's packet wrapper and event objects: on a stream of single-row
statements (an OLTP application's, one TABLE_MAP and one rows event per row changed) that generic
per-event work was most of the reader's time. Anything these do not know exactly (an extra
post-header, v2 extra data, 251 columns or more, a short packet) gets None, and the library
parses that event as before.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import zstandard

#: A binlog network packet's start: the OK byte, then the common event header (timestamp, type,
#: server_id, event_size, log_pos, flags), 20 bytes.
PACKET_HEADER = struct.Struct("<xIBIIIH")
EVENT_HEADER_SIZE = 19
CHECKSUM_SIZE = 4
TABLE_MAP_EVENT = 19
TRANSACTION_PAYLOAD_EVENT = 40  # MySQL 8.0.20+'s compressed transaction (binlog_transaction_compression)
#: WRITE/UPDATE/DELETE_ROWS_EVENT v1 (MariaDB) and v2 (MySQL 5.6+): post-headers of 8 and 10 bytes.
ROWS_V1 = {23: "write", 24: "update", 25: "delete"}
ROWS_V2 = {30: "write", 31: "update", 32: "delete"}
ROWS_EVENTS = {**ROWS_V1, **ROWS_V2}
_UPDATES = frozenset((24, 31))
_LENGTH_CODED = {252: 2, 253: 3, 254: 8}  # a length-coded number's first byte: how many bytes follow


def rows_header(data: bytes, at: int, end: int, event_type: int, declared: int | None
                ) -> tuple[int, int, bytes, bytes | None, int] | None:
    """The rows event of type ``event_type`` whose post-header starts at ``data[at]`` and whose
    row images end at ``data[end]`` (the checksum excluded): (table id, number of columns, the
    columns-present bitmap, the after-image's bitmap of an update, where the row images start).
    ``declared``: the post-header length the binlog's format description gives this type (None:
    none given). None where the event isn't one of the plain forms read here."""
    v2 = event_type in ROWS_V2
    if not v2 and event_type not in ROWS_V1:
        return None
    known = 10 if v2 else 8
    if (declared is not None and declared != known) or end - at < known + 1:
        return None
    if v2 and data[at + 8] | (data[at + 9] << 8) != 2:  # extra data (ndb, partitions): the library's
        return None
    table_id = int.from_bytes(data[at:at + 6], "little")
    found = _columns_and_bitmaps(data, at + known, end, event_type in _UPDATES)
    if found is None or found[0] >= 251:  # 251 columns and more: left to the library
        return None
    columns, present, present2, p = found
    return table_id, columns, present, present2, p


def _columns_and_bitmaps(data: bytes, p: int, end: int, update: bool) -> tuple[int, bytes, bytes | None, int] | None:
    """A rows event's number of columns (length-coded, at ``data[p]``) and its columns-present
    bitmap(s) (two for an update): (columns, bitmap, the update's after-image bitmap, where the row
    images start). None where they don't fit before ``end`` or the count isn't a length-coded number."""
    found = _number_at(data, p, end)
    if found is None:
        return None
    columns, p = found
    width = (columns + 7) >> 3
    present = data[p:p + width]
    p += width
    present2 = None
    if update:
        present2 = data[p:p + width]
        p += width
    return None if p > end else (columns, present, present2, p)


#: MariaDB's compressed events (``log_bin_compress``), each with the plain event type it stands
#: for: QUERY_COMPRESSED_EVENT and the v1 WRITE/UPDATE/DELETE_ROWS_COMPRESSED_EVENTs.
COMPRESSED = {165: 2, 166: 23, 167: 24, 168: 25}
QUERY_POST_HEADER = 13  # thread id, exec time, db length, error code, status vars length
_EVENT_HEADER = struct.Struct("<IBIIIH")


class CompressedEventError(ValueError):
    """A compressed event not in the form MariaDB writes (an algorithm other than zlib, lengths
    that disagree): it can't be read, and must not be skipped."""


def uncompressed_packet(data: bytes, at: int, checksum: bool, declared: int | None) -> bytes | None:
    """The binlog packet at ``data[at]`` (the OK byte, then one event) as its plain form, where the
    event is a compressed one: the same header but for its type and size, the uncompressed part of
    the body as it is, the compressed part (a statement's text, a rows event's row images)
    inflated, and a new checksum where events carry one (``checksum``). None for any other event.
    ``declared``: the post-header length the binlog's format description gives the event's type."""
    if len(data) - at < PACKET_HEADER.size:
        return None
    timestamp, event_type, server_id, size, log_pos, flags = PACKET_HEADER.unpack_from(data, at)
    plain = COMPRESSED.get(event_type)
    if plain is None:
        return None
    body = at + 1 + EVENT_HEADER_SIZE
    end = at + 1 + size - (CHECKSUM_SIZE if checksum else 0)
    if end > len(data) or end <= body:
        raise CompressedEventError(f"a compressed event of {size} bytes in a packet of {len(data) - at}")
    start = _query_text(data, body, end, declared) if plain == 2 else _row_images(data, body, end, plain, declared)
    inflated = inflate(data[start:end])
    new_size = EVENT_HEADER_SIZE + (start - body) + len(inflated) + (CHECKSUM_SIZE if checksum else 0)
    event = _EVENT_HEADER.pack(timestamp, plain, server_id, new_size, log_pos, flags) + data[body:start] + inflated
    if checksum:
        event += (zlib.crc32(event) & 0xFFFFFFFF).to_bytes(4, "little")
    return b"\x00" + event


def inflate(part: bytes) -> bytes:
    """A compressed part as MariaDB writes it: a header byte (0x80, the algorithm in bits 4-6: 0 is
    zlib, and in bits 0-2 how many bytes hold the uncompressed length), that length big-endian,
    then the zlib stream."""
    if not part or part[0] & 0xF0 != 0x80 or not 1 <= part[0] & 0x07 <= 4:
        raise CompressedEventError(f"compressed part header {part[:1].hex() or 'missing'}:"
                                   " not zlib as MariaDB writes it")
    width = part[0] & 0x07
    length = int.from_bytes(part[1:1 + width], "big")
    try:
        out = zlib.decompress(part[1 + width:])
    except zlib.error as exc:
        raise CompressedEventError(f"compressed part: {exc}") from None
    if len(out) != length:
        raise CompressedEventError(f"compressed part inflated to {len(out)} bytes, its header says {length}")
    return out


def _query_text(data: bytes, body: int, end: int, declared: int | None) -> int:
    """Where a query event's statement text starts: after the post-header, the status variables,
    and the default database's name and its NUL."""
    post = declared if declared is not None else QUERY_POST_HEADER
    if post < QUERY_POST_HEADER or end - body < post:
        raise CompressedEventError(f"a compressed query event with a post-header of {post} bytes")
    db_len = data[body + 8]
    status_len = int.from_bytes(data[body + 11:body + 13], "little")
    start = body + post + status_len + db_len + 1
    if start > end:
        raise CompressedEventError("a compressed query event shorter than its own lengths")
    return start


def _row_images(data: bytes, body: int, end: int, plain: int, declared: int | None) -> int:
    """Where a v1 rows event's row images start: after the post-header (table id, flags), the
    number of columns (length-coded) and the columns-present bitmap(s)."""
    post = declared if declared is not None else 8
    p = body + post
    if post < 8 or p >= end:
        raise CompressedEventError(f"a compressed rows event with a post-header of {post} bytes")
    found = _columns_and_bitmaps(data, p, end, plain in _UPDATES)
    if found is None:
        raise CompressedEventError(f"a compressed rows event shorter than its bitmaps, or a column count"
                                   f" starting with {data[p]}")
    return found[3]


# MySQL 8's compressed transaction -----------------------------------------------------------------

#: The fields before a TRANSACTION_PAYLOAD_EVENT's payload (MySQL's binary_log Transaction_payload
#: "on the wire"): each a type, the length of its value, the value, all length-coded numbers;
#: type 0 ends them and the payload follows. Compression types: 0 zstd, 255 none.
PAYLOAD_END, PAYLOAD_SIZE, PAYLOAD_COMPRESSION, PAYLOAD_UNCOMPRESSED_SIZE = 0, 1, 2, 3
ZSTD, UNCOMPRESSED = 0, 255


class PayloadError(ValueError):
    """A compressed transaction not in the form MySQL writes: it can't be read, and must not be
    skipped."""


@dataclass(frozen=True)
class Payload:
    """Where a TRANSACTION_PAYLOAD_EVENT's payload is (``data[start:end]``), and how it is packed."""

    compression: int
    uncompressed_size: int
    start: int
    end: int


def payload(data: bytes, body: int, end: int) -> Payload:
    """The payload of the TRANSACTION_PAYLOAD_EVENT whose body is ``data[body:end]`` (the checksum
    excluded). Fields of types this doesn't know are passed over by their length."""
    if end > len(data):
        raise PayloadError(f"an event whose body ends at byte {end} in a packet of {len(data)}")
    fields: dict[int, int] = {}
    p = body
    while True:
        kind, p = _length_coded(data, p, end)
        if kind == PAYLOAD_END:
            break
        length, p = _length_coded(data, p, end)
        if p + length > end:
            raise PayloadError(f"field {kind} of {length} bytes runs past the event")
        value, q = _length_coded(data, p, p + length)
        if q != p + length and kind in (PAYLOAD_SIZE, PAYLOAD_COMPRESSION, PAYLOAD_UNCOMPRESSED_SIZE):
            raise PayloadError(f"field {kind}: a value of {q - p} bytes where its length says {length}")
        fields[kind] = value
        p += length
    size = fields.get(PAYLOAD_SIZE, end - p)
    if p + size != end:
        raise PayloadError(f"a payload of {size} bytes where the event holds {end - p}")
    compression = fields.get(PAYLOAD_COMPRESSION)
    if compression not in (ZSTD, UNCOMPRESSED):
        raise PayloadError(f"compression type {compression} (known: 0 zstd, 255 none)")
    return Payload(compression, fields.get(PAYLOAD_UNCOMPRESSED_SIZE, -1), p, end)


def payload_events(data: bytes, where: Payload) -> Iterator[bytes]:
    """The events inside the payload, one at a time (each whole: header and body; the server
    writes them without checksums, and 0 as their end position), decompressed as they are read,
    so that memory holds one event of a large transaction at a time."""
    packed = memoryview(data)[where.start:where.end]
    read: Callable[[int], bytes]
    if where.compression == ZSTD:
        try:
            source = zstandard.ZstdDecompressor().stream_reader(packed)
        except zstandard.ZstdError as exc:
            raise PayloadError(f"zstd: {exc}") from None
        read = source.read
    else:
        read = _reader(bytes(packed))
    total = 0
    while True:
        head = _exactly(read, EVENT_HEADER_SIZE)
        if not head:
            break
        size = int.from_bytes(head[9:13], "little") if len(head) == EVENT_HEADER_SIZE else 0
        if size < EVENT_HEADER_SIZE:
            raise PayloadError(f"an inner event of {size or len(head)} bytes after {total} bytes")
        rest = _exactly(read, size - EVENT_HEADER_SIZE)
        if len(rest) != size - EVENT_HEADER_SIZE:
            raise PayloadError(f"an inner event of {size} bytes cut short after {total} bytes")
        total += size
        yield head + rest
    if where.uncompressed_size >= 0 and total != where.uncompressed_size:
        raise PayloadError(f"{total} bytes of events where the payload says {where.uncompressed_size}")


def inner_packet(event: bytes, log_pos: int, checksum: bool) -> bytes:
    """An event from a payload as a packet of the stream carries it: the OK byte, the event with
    the payload's end position (the server writes 0 there: a transaction inside a payload ends
    where the payload does) and, where the stream's events carry one (``checksum``), its CRC32
    and its size counting it."""
    size = len(event) + (CHECKSUM_SIZE if checksum else 0)
    out = event[:9] + size.to_bytes(4, "little") + log_pos.to_bytes(4, "little") + event[17:]
    if checksum:
        out += (zlib.crc32(out) & 0xFFFFFFFF).to_bytes(4, "little")
    return b"\x00" + out


def _number_at(data: bytes, p: int, end: int) -> tuple[int, int] | None:
    """The length-coded number at ``data[p]`` and where it ends; None where it doesn't fit before
    ``end`` or its first byte starts no number (251 is SQL NULL, 255 an error packet's)."""
    if p >= end:
        return None
    first = data[p]
    if first < 251:
        return first, p + 1
    width = _LENGTH_CODED.get(first)
    if width is None or p + 1 + width > end:
        return None
    return int.from_bytes(data[p + 1:p + 1 + width], "little"), p + 1 + width


def _length_coded(data: bytes, p: int, end: int) -> tuple[int, int]:
    found = _number_at(data, p, end)
    if found is None:
        raise PayloadError("fields run past the event" if p >= end else
                           f"a length-coded number starting with {data[p]} at byte {p}")
    return found


def _exactly(read: Callable[[int], bytes], n: int) -> bytes:
    """``n`` bytes from ``read`` (fewer only at the end)."""
    out = b""
    while len(out) < n:
        try:
            part = read(n - len(out))
        except zstandard.ZstdError as exc:
            raise PayloadError(f"zstd: {exc}") from None
        if not part:
            break
        out += part
    return out


def _reader(data: bytes) -> Callable[[int], bytes]:
    at = 0

    def read(n: int) -> bytes:
        nonlocal at
        part = data[at:at + n]
        at += len(part)
        return part

    return read

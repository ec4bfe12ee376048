"""The fixed parts of rows events (transform.binlog_events), on events built to the binlog's
documented layout (MySQL's rows_event.h; MariaDB writes v1, MySQL 5.6+ v2), and the fast path's
place in mysql-replication. That the fast path reads a real binlog as the library does is
tests/integration/test_rowcodec.py's."""

from __future__ import annotations

import struct
import zlib

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import payload_event
from transform.binlog_events import (
    COMPRESSED,
    PACKET_HEADER,
    ROWS_EVENTS,
    ROWS_V1,
    ROWS_V2,
    CompressedEventError,
    PayloadError,
    inner_packet,
    payload,
    payload_events,
    rows_header,
    uncompressed_packet,
)
from transform.errors import FatalError

UPDATES = {24, 31}


def rows_event(event_type: int, table_id: int, columns: int, present: bytes, present2: bytes, images: bytes,
               extra: bytes = b"") -> bytes:
    """A rows event's post-header and body: table id (6 bytes), flags (2), for v2 the extra data's
    length (2, counting itself) and the extra data, the column count, the bitmaps, the row images."""
    post = table_id.to_bytes(6, "little") + (1).to_bytes(2, "little")
    if event_type in ROWS_V2:
        post += (2 + len(extra)).to_bytes(2, "little") + extra
    return post + bytes([columns]) + present + (present2 if event_type in UPDATES else b"") + images


@st.composite
def events(draw: st.DrawFn) -> tuple[int, int, int, bytes, bytes, bytes]:
    event_type = draw(st.sampled_from(sorted(ROWS_EVENTS)))
    columns = draw(st.integers(0, 250))
    width = (columns + 7) // 8
    return (event_type, draw(st.integers(0, 2**48 - 1)), columns, draw(st.binary(min_size=width, max_size=width)),
            draw(st.binary(min_size=width, max_size=width)), draw(st.binary(max_size=200)))


@given(events(), st.binary(max_size=8), st.booleans())
def test_the_header_and_the_row_images_are_found(event: tuple[int, int, int, bytes, bytes, bytes], before: bytes,
                                                 declared: bool) -> None:
    event_type, table_id, columns, present, present2, images = event
    data = before + rows_event(*event)
    known = 10 if event_type in ROWS_V2 else 8
    got = rows_header(data, len(before), len(data), event_type, known if declared else None)
    assert got is not None
    assert got[:4] == (table_id, columns, present, present2 if event_type in UPDATES else None)
    assert data[got[4]:] == images


def test_forms_not_read_here_are_left_to_the_library() -> None:
    plain = rows_event(30, 7, 3, b"\x07", b"", b"\x00rows")
    assert rows_header(plain, 0, len(plain), 30, 10) is not None
    assert rows_header(plain, 0, len(plain), 30, 12) is None  # a longer post-header than known
    extra = rows_event(30, 7, 3, b"\x07", b"", b"\x00rows", extra=b"\x01\x05\x00")  # partition info
    assert rows_header(extra, 0, len(extra), 30, None) is None
    wide = rows_event(23, 7, 251, b"", b"", b"")  # 251 columns and more: a longer length-coded count
    assert rows_header(wide, 0, len(wide), 23, None) is None
    short = rows_event(24, 7, 16, b"\xff\xff", b"\xff\xff", b"")
    assert rows_header(short, 0, len(short) - 1, 24, None) is None  # the bitmaps run past the event
    assert rows_header(short, 0, len(short), 24, None) is not None
    assert rows_header(plain, 0, len(plain), 39, None) is None  # MySQL's partial JSON update
    assert rows_header(plain, 0, len(plain), 19, None) is None  # not a rows event


def test_the_packet_header_is_the_ok_byte_and_the_common_header() -> None:
    packet = b"\x00" + (1700000000).to_bytes(4, "little") + bytes([30]) + (5).to_bytes(4, "little") \
        + (60).to_bytes(4, "little") + (4321).to_bytes(4, "little") + (0).to_bytes(2, "little")
    assert PACKET_HEADER.unpack_from(packet, 0) == (1700000000, 30, 5, 60, 4321, 0)


def test_the_fast_path_is_in_the_library_s_place() -> None:
    """Installed only where the library's packet wrapper takes the arguments it reads; with the
    pinned mysql-replication it must be."""
    from pymysqlreplication import binlogstream

    from cdc.capture import fast_events, source  # (the source installs it)

    assert fast_events.install()
    assert binlogstream.BinLogPacketWrapper is fast_events._wrap
    # A map read by the fast path is filed in the reader's table_map but never handed out: the
    # source must not ask for TableMapEvents.
    from pymysqlreplication.row_event import TableMapEvent

    assert TableMapEvent not in source._EVENTS
    # The library hands out only the event classes asked for, compared exactly (not subclasses):
    # MySQL's partial JSON updates are asked for, so they stop their table instead of vanishing.
    from pymysqlreplication.row_event import PartialUpdateRowsEvent

    assert PartialUpdateRowsEvent in source._EVENTS


# MariaDB's compressed events (log_bin_compress), built to the layout MariaDB's replication
# protocol pages give: the compressed part is a header byte (0x80 | bytes of the length), the
# uncompressed length big-endian, the zlib stream.

def packet(event_type: int, body: bytes, checksum: bool, log_pos: int = 4321) -> bytes:
    size = 19 + len(body) + (4 if checksum else 0)
    event = (1700000000).to_bytes(4, "little") + bytes([event_type]) + (5).to_bytes(4, "little") \
        + size.to_bytes(4, "little") + log_pos.to_bytes(4, "little") + (0).to_bytes(2, "little") + body
    return b"\x00" + event + ((zlib.crc32(event) & 0xFFFFFFFF).to_bytes(4, "little") if checksum else b"")


def compressed(part: bytes, width: int) -> bytes:
    return bytes([0x80 | width]) + len(part).to_bytes(width, "big") + zlib.compress(part)


def query_head(db: bytes, status: bytes) -> bytes:
    """A query event's post-header (thread id, exec time, db length, error code, status vars
    length), status variables and default database with its NUL."""
    return (9).to_bytes(4, "little") + (0).to_bytes(4, "little") + bytes([len(db)]) + (0).to_bytes(2, "little") \
        + len(status).to_bytes(2, "little") + status + db + b"\x00"


@given(st.sampled_from(sorted(ROWS_V1)), st.integers(0, 300), st.binary(max_size=3000), st.booleans(),
       st.integers(1, 4), st.binary(max_size=5))
def test_a_compressed_rows_event_reads_as_its_plain_form(event_type: int, columns: int, images: bytes,
                                                          checksum: bool, width: int, before: bytes) -> None:
    n = (columns + 7) // 8
    width = max(width, (len(images).bit_length() + 7) // 8)  # as many bytes as the length needs, or more
    count = bytes([columns]) if columns < 251 else b"\xfc" + columns.to_bytes(2, "little")
    head = (7).to_bytes(6, "little") + (1).to_bytes(2, "little") + count + b"\xff" * n * (2 if event_type == 24 else 1)
    plain = packet(event_type, head + images, checksum)
    kind = {v: k for k, v in COMPRESSED.items()}[event_type]
    squeezed = before + packet(kind, head + compressed(images, width), checksum)
    assert uncompressed_packet(squeezed, len(before), checksum, 8) == plain
    assert uncompressed_packet(squeezed, len(before), checksum, None) == plain


@given(st.binary(max_size=40), st.binary(max_size=30), st.text(max_size=2000), st.booleans())
def test_a_compressed_statement_reads_as_its_plain_form(db: bytes, status: bytes, query: str, checksum: bool) -> None:
    head = query_head(db.replace(b"\x00", b"_"), status)
    text = query.encode()
    assert uncompressed_packet(packet(165, head + compressed(text, 2), checksum), 0, checksum, 13) == \
        packet(2, head + text, checksum)


def test_other_events_and_forms_not_as_mariadb_writes_them() -> None:
    assert uncompressed_packet(packet(23, b"\x00" * 20, True), 0, True, 8) is None  # not compressed
    assert uncompressed_packet(packet(2, query_head(b"d", b"") + b"BEGIN", False), 0, False, 13) is None
    head = query_head(b"d", b"")
    good = compressed(b"ALTER TABLE t ADD c INT", 1)
    for part, why in ((b"\x90" + good[1:], "not zlib"), (bytes([0x80]) + good[1:], "not zlib"),
                      (good[:1] + bytes([good[1] + 1]) + good[2:], "its header says"),
                      (good[:-3], "compressed part"), (b"", "missing")):
        with pytest.raises(CompressedEventError, match=why):
            uncompressed_packet(packet(165, head + part, False), 0, False, 13)
    with pytest.raises(CompressedEventError, match="post-header"):
        uncompressed_packet(packet(165, head + good, False), 0, False, 11)
    with pytest.raises(CompressedEventError, match="shorter than its own lengths"):
        uncompressed_packet(packet(165, head[:-2], False), 0, False, 13)
    with pytest.raises(CompressedEventError, match="shorter than its bitmaps"):
        uncompressed_packet(packet(167, (7).to_bytes(8, "little") + bytes([64]) + b"\xff" * 8, False), 0, False, 8)


def inner(event_type: int, body: bytes, timestamp: int = 1700000000) -> bytes:
    """An event as MySQL writes it inside a payload: no checksum, 0 as its end position."""
    return struct.pack("<IBIIIH", timestamp, event_type, 1, 19 + len(body), 0, 0) + body


INNER = st.lists(st.tuples(st.sampled_from([2, 16, 19, 30, 31, 32]), st.binary(max_size=300)), min_size=1,
                 max_size=12).map(lambda evs: [inner(t, b) for t, b in evs])


@given(INNER, st.booleans(), st.booleans(), st.integers(4, 2**32 - 1))
def test_a_compressed_mysql_transaction_reads_as_the_events_inside_it(
        events: list[bytes], zstd: bool, checksum: bool, log_pos: int) -> None:
    event = b"\x00" + payload_event(events, log_pos, zstd=zstd, checksum=checksum)
    where = payload(event, 20, len(event) - (4 if checksum else 0))
    assert (where.compression, where.uncompressed_size) == (0 if zstd else 255, sum(map(len, events)))
    got = list(payload_events(event, where))
    assert got == events
    for raw in got:  # as the stream carries them: the payload's position, a checksum where the stream has one
        pkt = inner_packet(raw, log_pos, checksum)
        timestamp, event_type, _, size, at, _ = PACKET_HEADER.unpack_from(pkt)
        assert (timestamp, event_type, at, size) == (int.from_bytes(raw[:4], "little"), raw[4], log_pos, len(pkt) - 1)
        assert pkt[1:9] == raw[:8] and pkt[20:len(pkt) - (4 if checksum else 0)] == raw[19:]
        if checksum:
            assert pkt[-4:] == (zlib.crc32(pkt[1:-4]) & 0xFFFFFFFF).to_bytes(4, "little")


@given(INNER, st.integers(0, 3))
def test_fields_of_a_later_version_are_passed_over_and_their_order_does_not_matter(events: list[bytes], n: int) -> None:
    raw = b"".join(events)
    packed = zstandard.ZstdCompressor().compress(raw)
    fields = [bytes([3, 1 if len(raw) < 251 else 3]) + (bytes([len(raw)]) if len(raw) < 251 else
                                                          b"\xfc" + len(raw).to_bytes(2, "little")),
              bytes([2, 1, 0]), bytes([9, 2, 0xAB, 0xCD])][n % 3:] + [bytes([2, 1, 0]), bytes([7, 1, 5])][:n]
    body = b"".join(fields) + bytes([1, 3, 0xFC]) + len(packed).to_bytes(2, "little") + b"\x00" + packed
    where = payload(body, 0, len(body))
    assert where.compression == 0 and list(payload_events(body, where)) == events


def test_a_compressed_transaction_in_a_form_mysql_does_not_write_is_refused() -> None:
    good = [inner(2, b"BEGIN"), inner(16, bytes(8))]
    event = payload_event(good, 500, checksum=False)
    cases = {
        "compression type 1": event[:19] + bytes([2, 1, 1]) + event[22:],  # an algorithm MySQL doesn't write
        "payload of": event[:-1],  # shorter than its payload size says
        "zstd": event[:19] + event[19:-6] + b"\xff" * 6,  # a damaged frame
        "length-coded": event[:19] + b"\xfb",
    }
    for why, bad in cases.items():
        with pytest.raises(PayloadError, match=why):
            list(payload_events(bad, payload(bad, 19, len(bad))))
    with pytest.raises(PayloadError, match="ends at byte"):  # a packet shorter than its event says
        payload(event, 19, len(event) + 1)
    cut = payload_event([inner(2, b"BEGIN")[:21]], 500, checksum=False)  # its header says 24 bytes
    with pytest.raises(PayloadError, match="cut short"):
        list(payload_events(cut, payload(cut, 19, len(cut))))
    short = payload_event([struct.pack("<IBIIIH", 0, 2, 1, 7, 0, 0)], 500, checksum=False)  # a size under 19
    with pytest.raises(PayloadError, match="an inner event of 7 bytes"):
        list(payload_events(short, payload(short, 19, len(short))))


def test_a_compressed_transaction_for_a_reader_that_does_not_ask_for_them_stops_it_by_name() -> None:
    """Only the source reads them (its events list holds TransactionPayload); any other reader of
    the library would drop the event without a word: it stops, naming the setting."""
    from pymysql.protocol import MysqlPacket

    from cdc.capture import fast_events

    args = [None] * (len(fast_events._ARGS) - 2)
    args[fast_events._ALLOWED] = frozenset()
    with pytest.raises(FatalError, match=r"position 999 .*binlog_transaction_compression.*doesn't ask"):
        fast_events._wrap(MysqlPacket(b"\x00" + payload_event([inner(16, bytes(8))], 999), None), {}, *args)
    args[fast_events._ALLOWED] = frozenset({fast_events.TransactionPayload})
    args[fast_events._USE_CHECKSUM] = True
    wrapped = fast_events._wrap(MysqlPacket(b"\x00" + payload_event([inner(16, bytes(8))], 999), None), {}, *args)
    assert (wrapped.event_type, wrapped.log_pos) == (40, 999)
    assert isinstance(wrapped.event, fast_events.TransactionPayload)
    bad = payload_event([inner(16, bytes(8))], 999)
    bad = bad[:19] + bytes([2, 1, 3]) + bad[22:]
    with pytest.raises(FatalError, match=r"position 999 .*in a form this reader doesn't know \(compression type 3"):
        fast_events._wrap(MysqlPacket(b"\x00" + bad[:-4] + (zlib.crc32(bad[:-4]) & 0xFFFFFFFF).to_bytes(4, "little"),
                                      None), {}, *args)


def test_a_library_whose_wrapper_takes_other_arguments_stops_the_source_by_name(monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    """Compressed events are read only where the fast path sits in the library's place: a
    mysql-replication whose wrapper changed is not patched, and the source won't start."""
    import threading

    from pymysqlreplication import binlogstream

    from cdc.capture import fast_events, source
    from cdc.capture.flavor import Flavor
    from cdc.settings import load_settings
    from transform.model import Position

    class Changed:
        def __init__(self, from_packet: object, table_map: object, ctl_connection: object) -> None: ...

    before = binlogstream.BinLogPacketWrapper
    monkeypatch.setattr(fast_events, "_library_wrapper", Changed)
    assert fast_events.install() is False and binlogstream.BinLogPacketWrapper is before
    monkeypatch.setattr(source, "_READS_COMPRESSED", False)
    settings = load_settings(environ={}, source_url="mysql://u@127.0.0.1:1/sales",
                             staging_url="postgresql://u@127.0.0.1:1/staging")
    reader = source.BinlogSource(settings, {}, Flavor(True, (10, 11, 0)), Position("mysql-bin.000001", 4))
    with pytest.raises(FatalError, match=r"mysql-replication 1\.0\.\d+ builds .* would be skipped .*==1\.0\.17"):
        next(reader.chunks(threading.Event()))

"""The fixed parts of rows events (transform.binlog_events), on events built to the binlog's
documented layout (MySQL's rows_event.h; MariaDB writes v1, MySQL 5.6+ v2), and the fast path's
place in mysql-replication. That the fast path reads a real binlog as the library does is
tests/integration/test_rowcodec.py's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from transform.binlog_events import PACKET_HEADER, ROWS_EVENTS, ROWS_V2, rows_header

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

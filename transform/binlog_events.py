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

#: A binlog network packet's start: the OK byte, then the common event header (timestamp, type,
#: server_id, event_size, log_pos, flags), 20 bytes.
PACKET_HEADER = struct.Struct("<xIBIIIH")
EVENT_HEADER_SIZE = 19
CHECKSUM_SIZE = 4
TABLE_MAP_EVENT = 19
#: WRITE/UPDATE/DELETE_ROWS_EVENT v1 (MariaDB) and v2 (MySQL 5.6+): post-headers of 8 and 10 bytes.
ROWS_V1 = {23: "write", 24: "update", 25: "delete"}
ROWS_V2 = {30: "write", 31: "update", 32: "delete"}
ROWS_EVENTS = {**ROWS_V1, **ROWS_V2}
_UPDATES = frozenset((24, 31))


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
    p = at + known
    columns = data[p]
    if columns >= 251:  # a longer length-coded number
        return None
    width = (columns + 7) >> 3
    p += 1
    present = data[p:p + width]
    p += width
    present2 = None
    if event_type in _UPDATES:
        present2 = data[p:p + width]
        p += width
    if p > end:
        return None
    return table_id, columns, present, present2, p

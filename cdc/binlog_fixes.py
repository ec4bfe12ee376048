"""Corrections to mysql-replication's row decoding, installed once by the source.

mysql-replication 1.0 decodes a negative TIME with a fractional part wrongly (it negates the
integer part and the fraction separately: ``-00:00:00.000001`` arrives as ``-00:00:00.999999``).
:func:`decode_time2` follows the server's own ``my_time_packed_from_binary``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymysqlreplication.row_event import RowsEvent

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


def install() -> None:
    """Replace the library's TIME2 decoder with ours (idempotent)."""
    RowsEvent._RowsEvent__read_time2 = _read_time2

"""How far the source's binlog runs past our position, in bytes (a gauge beside the lag)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from cdc.capture import mysql
from cdc.settings import Settings
from transform.model import Position


class LagProbe:
    """How many binlog bytes the source has written past our position (asked every few seconds on
    a connection of its own; ``None`` while the source can't be asked)."""

    def __init__(self, settings: Settings, every_seconds: float = 5.0) -> None:
        self._settings = settings
        self._every = every_seconds
        self._next = 0.0
        self._last: int | None = None
        self._conn: Any = None

    def lag_bytes(self, position: Position) -> int | None:
        now = time.monotonic()
        if now < self._next:
            return self._last
        self._next = now + self._every
        try:
            if self._conn is None:
                self._conn = mysql.connect(self._settings)
            with self._conn.cursor() as cur:
                cur.execute("SHOW BINARY LOGS")
                logs = [(str(r[0]), int(r[1])) for r in cur.fetchall()]
            self._last = binlog_bytes_behind(logs, position)
        except Exception:  # noqa: BLE001 - a metric, not a reason to stop; the stream reports real faults
            self.close()
            self._last = None
        return self._last

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


def binlog_bytes_behind(logs: list[tuple[str, int]], position: Position) -> int | None:
    """Bytes from ``position`` to the end of the last binlog, given SHOW BINARY LOGS (name, size)."""
    total, seen = 0, False
    for name, size in logs:
        if name == position.file:
            seen = True
            total += max(0, size - position.pos)
        elif seen:
            total += size
    return total if seen else None

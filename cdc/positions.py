"""Is a saved position still in the source's binlog? (pure)"""

from __future__ import annotations

from cdc.model import Position


def unavailable(position: Position, logs: list[tuple[str, int]]) -> str | None:
    """Why streaming can't resume at ``position`` given SHOW BINARY LOGS (name, size), or None.

    Binlog files are numbered in order; a saved file older than the oldest one the server still
    has was purged (PURGE BINARY LOGS, or expiry while the daemon was down).
    """
    if not logs:
        return "the source reports no binary logs (is log_bin on?)"
    names = [name for name, _ in logs]
    if position.file in names:
        size = dict(logs)[position.file]
        if position.pos > size:
            return (f"the saved position {position} lies past the end of {position.file} ({size} bytes): "
                    "the source's binlog was reset or this is another server")
        return None
    oldest = f"{names[0]}:4"
    return (f"the binlog at the saved position {position} has been purged from the source; the oldest "
            f"available is {oldest}. Changes made in between are lost to the stream: take a new snapshot "
            "with `softcart-sync resnapshot` (staging stays consistent meanwhile), or set "
            "SOFTCART_AUTO_RESNAPSHOT=true to have the daemon do it")

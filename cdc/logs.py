"""structlog set-up: JSON lines for journald, readable colour on a terminal. Done once, at start.

Under systemd (``JOURNAL_STREAM`` set, the stream is the journal) each line starts with its
syslog priority, ``<3>`` for an error, which journald reads (``SyslogLevelPrefix=``, on by
default) and strips: ``journalctl -p err`` finds errors; otherwise every line would be priority 6."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

#: syslog priorities (sd-daemon(3)) of structlog's levels
_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


def with_priority(renderer: structlog.typing.Processor) -> structlog.typing.Processor:
    """``renderer``, its line prefixed with the event's syslog priority (``<3>`` for an error)."""
    def render(logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        level = str(event.get("level", method)).lower()
        line = renderer(logger, method, event)
        text = line.decode() if isinstance(line, bytes) else str(line)
        return f"<{_PRIORITY.get(level, 6)}>{text}"
    return render


def under_journald(stream: TextIO) -> bool:
    """Is ``stream`` the journal? systemd sets JOURNAL_STREAM to its device:inode."""
    spec = os.environ.get("JOURNAL_STREAM", "")
    if not spec or ":" not in spec:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    dev, _, ino = spec.partition(":")
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Logs go to ``stream`` (stderr unless told: the daemon logs to stdout, for journald)."""
    stream = stream or sys.stderr
    json_lines = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer())
    if under_journald(stream):
        renderer = with_priority(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )

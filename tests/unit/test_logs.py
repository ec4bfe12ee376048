"""Log lines under journald carry their syslog priority, so `journalctl -p err` finds errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import structlog

from cdc.logs import configure


def _log_to(path: Path, monkeypatch: pytest.MonkeyPatch, journal: bool) -> list[str]:
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        if journal:
            monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        else:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        configure("debug", "json", stream)
        log = structlog.get_logger("test")
        log.error("batch_failed", batch=3)
        log.warning("flush_retrying")
        log.info("streaming")
    structlog.reset_defaults()
    return path.read_text().splitlines()


def test_under_journald_each_line_starts_with_its_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _log_to(tmp_path / "journal", monkeypatch, journal=True)
    assert [line[:4] for line in lines] == ['<3>{', '<4>{', '<6>{']
    assert '"event": "batch_failed"' in lines[0]


def test_elsewhere_lines_are_plain_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _log_to(tmp_path / "file", monkeypatch, journal=False)
    assert all(line.startswith("{") for line in lines) and len(lines) == 3

"""The snapshot's fast reader: the ``mariadb`` client in batch mode, its output piped into COPY.

pymysql parses every value in Python (about 200,000 rows/s here, before any work of ours); the
C client prints ~600,000 rows/s. One client session opens the consistent snapshot, reports its
binlog position, then prints each table as COPY text (``transform.extract``); we only cut the
stream into tables, strip each line's ``G`` flag and pass the bytes to PostgreSQL. Lines flagged
``B`` (a value staging can't hold) become dead letters, from the same snapshot.

Used for MariaDB sources without TLS whose tables have only the types ``transform.extract``
renders; otherwise :func:`client_reader` returns None and the snapshot reads with pymysql.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pymysql

from cdc.capture.flavor import Flavor, snapshot_position
from cdc.settings import Settings
from transform.errors import TransientError
from transform.extract import INTEGER_TYPES, copy_text_select, refusal, unescape
from transform.model import Position
from transform.schema import Table

_BLOCK = 1 << 20


class ClientReader:
    """One ``mariadb`` client process holding the snapshot; ``position`` first, then ``copy`` of
    each table in the order given."""

    def __init__(self, client: str, settings: Settings, tables: list[Table], selects: dict[str, str]) -> None:
        self._settings = settings
        self._tables = tables
        self._dir = tempfile.TemporaryDirectory(prefix="softcart-snapshot-")
        ep = settings.source
        options = Path(self._dir.name) / "client.cnf"  # the password never shows in the process list
        options.touch(mode=0o600)
        options.write_text("[client]\npassword=\"{}\"\n".format(
            ep.password.get_secret_value().replace("\\", "\\\\").replace('"', '\\"')))
        script = ["SET SESSION time_zone = '+00:00'",
                  "SET SESSION sql_mode = REPLACE(@@sql_mode, 'NO_BACKSLASH_ESCAPES', '')",
                  "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                  "START TRANSACTION WITH CONSISTENT SNAPSHOT",
                  "SHOW STATUS LIKE 'binlog_snapshot_%'"]
        for i, t in enumerate(tables):
            script += [f"SELECT 'T', {i}", selects[t.name]]  # a table's marker: its index, no name in SQL
        script.append("COMMIT")
        self._proc = subprocess.Popen(
            [client, f"--defaults-extra-file={options}", "--batch", "--raw", "--skip-column-names", "--quick",
             "--default-character-set=utf8mb4", "--skip-ssl", "--max-allowed-packet=1G",
             f"--connect-timeout={max(1, int(settings.connect_timeout_seconds))}",
             "-h", ep.host, "-P", str(ep.port), "-u", ep.user, ep.database],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write((";\n".join(script) + ";\n").encode())
        self._proc.stdin.close()
        self._out = cast(io.BufferedReader, self._proc.stdout)  # Popen's pipes are buffered readers
        self._pending: list[bytes] = []  # complete lines read ahead
        self._rest = b""

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._dir.cleanup()

    def _blocks(self) -> Iterator[list[bytes]]:
        """Complete lines, a block at a time; read-ahead lines first."""
        if self._pending:
            lines, self._pending = self._pending, []
            yield lines
        while True:
            data = self._out.read1(_BLOCK)
            if not data:
                if self._rest:
                    raise self._failed("the client's output ended inside a line")
                return
            lines = (self._rest + data).split(b"\n")
            self._rest = lines.pop()
            yield lines

    def _failed(self, what: str) -> TransientError:
        self._proc.wait()
        assert self._proc.stderr is not None
        err = self._proc.stderr.read().decode("utf-8", "replace").strip()
        return TransientError(f"snapshot reader ({what}): {err or f'exit code {self._proc.returncode}'}")

    def position(self, flavor: Flavor, gtid: Callable[[str, int], str]) -> Position:
        status: list[tuple[str, str]] = []
        for lines in self._blocks():
            for i, line in enumerate(lines):
                if line.startswith(b"T\t"):
                    self._pending = lines[i:]
                    file, pos = snapshot_position(flavor.mariadb, list(status))
                    return Position(file, pos, gtid(file, pos))
                name, _, value = line.decode().partition("\t")
                status.append((name, value))
        raise self._failed("no table section")

    def copy(self, table: Table, write: Callable[[bytes], None],
             dead: Callable[[tuple[Any, ...], str, str], None]) -> int:
        """Send ``table``'s rows to ``write`` as COPY text; ``dead(key, reason, row)`` for the rest.
        The table's marker must be next; stops at the next table's marker."""
        rows = 0
        started = False
        for lines in self._blocks():
            end = len(lines)
            for i, line in enumerate(lines):
                if line.startswith(b"T\t"):
                    if started:
                        end = i
                        break
                    if line[2:] != str(self._tables.index(table)).encode():
                        raise self._failed(f"expected table {table.name}, got marker {line[2:]!r}")
                    started = True
            body = lines[:end]
            if body and body[0].startswith(b"T\t"):
                body = body[1:]
            good = [ln[2:] for ln in body if ln[:1] == b"G"]
            if good:
                write(b"\n".join(good) + b"\n")
                rows += len(good)
            if len(good) != len(body):
                for ln in body:
                    if ln[:1] == b"B":
                        self._dead_line(table, ln, dead)
            if end < len(lines):
                self._pending = lines[end:]
                return rows
        if self._proc.wait() != 0:
            raise self._failed("exit")
        return rows

    def _dead_line(self, table: Table, line: bytes, dead: Callable[[tuple[Any, ...], str, str], None]) -> None:
        values = [unescape(f) for f in line[2:].decode("utf-8", "replace").split("\t")]
        raw = dict(zip(table.column_names, values, strict=True))
        key = tuple(_key_value(table, k, raw[k]) for k in table.primary_key)
        dead(key, refusal(table, values), repr(raw)[:10000])


def _key_value(table: Table, name: str, text: str | None) -> Any:
    if text is not None and table.column(name).data_type.lower() in INTEGER_TYPES:
        return int(text)
    return text


def client_reader(settings: Settings, conn: pymysql.connections.Connection, flavor: Flavor,
                  tables: list[Table]) -> ClientReader | None:
    """The fast reader when it applies (see the module's note), else None."""
    client = shutil.which("mariadb") or shutil.which("mysql")
    if client is None or not flavor.mariadb or settings.snapshot_reader == "pymysql":
        return None
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        row = cur.fetchone()
    if row and row[1]:
        return None  # TLS in use: the library reader keeps its certificate checks
    selects = {t.name: copy_text_select(t) for t in tables}
    ready = {n: s for n, s in selects.items() if s is not None}
    if len(ready) != len(selects):
        return None
    with contextlib.suppress(Exception):
        return ClientReader(client, settings, tables, ready)
    return None

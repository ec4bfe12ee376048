"""Test helpers in one place: waiting with a deadline, running the daemon, comparing tables."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import zstandard
from prometheus_client.parser import text_string_to_metric_families

from cdc.capture.flavor import Flavor
from cdc.capture.mysql import read_table
from cdc.capture.snapshot import quote_mysql, select_list
from cdc.dev.localservers import PostgresServer
from cdc.pipeline import Pipeline
from cdc.settings import Settings
from loader.warehouse import TABLES
from transform.schema import Table
from transform.values import RowConverter

ROOT = Path(__file__).resolve().parent.parent

SALES_DDL = """CREATE TABLE sales_data (
  rowid INT NOT NULL PRIMARY KEY, product_id INT NOT NULL, customer_id INT NOT NULL,
  price DECIMAL(12,2) NOT NULL DEFAULT 0, quantity INT NOT NULL,
  timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP)"""


@contextlib.contextmanager
def pg_database(postgres: PostgresServer, name: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_until(cond: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        if PIPELINE_DIED:
            raise AssertionError(f"waiting for {what}: the pipeline died") from PIPELINE_DIED[0]
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})"
                                                                             if last_exc else ""))


def payload_event(events: list[bytes], log_pos: int, timestamp: int = 0, server_id: int = 1, zstd: bool = True,
                  checksum: bool = True) -> bytes:
    """A TRANSACTION_PAYLOAD_EVENT as MySQL 8.0.32 writes one (checked against a recorded binlog):
    its fields (compression type, uncompressed size, payload size; each a type, the value's length
    and the value, length-coded), an end mark, then ``events`` (whole, without checksums, 0 as
    their end position) one after the other, zstd-compressed."""
    def coded(n: int) -> bytes:
        return bytes([n]) if n < 251 else b"\xfc" + n.to_bytes(2, "little") if n < 1 << 16 else \
            b"\xfd" + n.to_bytes(3, "little") if n < 1 << 24 else b"\xfe" + n.to_bytes(8, "little")

    raw = b"".join(events)
    packed = zstandard.ZstdCompressor().compress(raw) if zstd else raw
    fields = b"".join(coded(kind) + coded(len(coded(value))) + coded(value)
                      for kind, value in ((2, 0 if zstd else 255), (3, len(raw)), (1, len(packed))))
    body = fields + b"\x00" + packed
    size = 19 + len(body) + (4 if checksum else 0)
    event = struct.pack("<IBIIIH", timestamp, 40, server_id, size, log_pos, 0) + body
    return event + ((zlib.crc32(event) & 0xFFFFFFFF).to_bytes(4, "little") if checksum else b"")


class OutageLoad:
    """A client of the source that carries on through server outages, as a shop's application would:
    a transaction that fails is given up (its connection closed, so a half-done transaction can't keep
    its row locks until the garbage collector finds it) and the next runs on a new connection. Every
    socket wait is bounded, so a server killed mid-handshake can't hang it, and the last errors are
    kept for a failure message. Afterwards the source is the truth, whatever a lost commit became."""

    def __init__(self, port: int, database: str, transaction: Callable[[Any], None], pause: float) -> None:
        self.port, self.database, self.transaction, self.pause = port, database, transaction, pause
        self.committed = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn: pymysql.connections.Connection | None = None
        while not self.stop.is_set():
            try:
                conn = conn or pymysql.connect(host="127.0.0.1", port=self.port, user="root", database=self.database,
                                               autocommit=False, connect_timeout=2, read_timeout=10,
                                               write_timeout=10)
                with conn.cursor() as cur:
                    self.transaction(cur)
                conn.commit()
                self.committed += 1
                self.stop.wait(self.pause)
            except pymysql.err.MySQLError as exc:
                self.errors = [*self.errors[-4:], f"{time.strftime('%H:%M:%S')} {exc!r}"]
                if conn is not None:
                    with contextlib.suppress(pymysql.err.MySQLError):
                        conn.close()
                conn = None
                self.stop.wait(0.2)

    def start(self) -> OutageLoad:
        self.thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(30)

    def wait_for(self, more: int, what: str, timeout: float = 60.0) -> None:
        """Wait until ``more`` further transactions have committed; a failure says what the load saw."""
        n = self.committed
        try:
            wait_until(lambda: self.committed >= n + more, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.committed - n} committed, load thread alive: "
                                 f"{self.thread.is_alive()}, its last errors: {self.errors}") from None


def execute(conn: pymysql.connections.Connection, *stmts: str) -> None:
    with conn.cursor() as cur:
        for s in stmts:
            cur.execute(s)


#: The error of an in-process pipeline (running_pipeline) that died: wait_until gives up at once
#: with it instead of waiting out its timeout for a pipeline that will never get there.
PIPELINE_DIED: list[BaseException] = []


_PIPELINE_THREADS: dict[int, threading.Thread] = {}


def wait_pipeline_died(pipeline: Pipeline, timeout: float = 60.0) -> BaseException:
    """For a test whose expected outcome is the pipeline stopping on an error: wait (with a
    deadline) for the thread of ``running_pipeline`` to end and return its error. ``wait_until``
    can't be used for this: it gives up as soon as the pipeline dies, so it races the outcome."""
    thread = _PIPELINE_THREADS[id(pipeline)]
    thread.join(timeout)
    assert not thread.is_alive(), f"the pipeline was still running after {timeout}s"
    assert PIPELINE_DIED, "the pipeline stopped without an error"
    return PIPELINE_DIED[0]


@contextlib.contextmanager
def running_pipeline(settings: Settings) -> Iterator[Pipeline]:
    """The daemon's pipeline in a thread of this process; stopped cleanly on exit."""
    pipeline = Pipeline(settings)
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            pipeline.run(stop)
        except BaseException as exc:
            errors.append(exc)
            PIPELINE_DIED.append(exc)

    t = threading.Thread(target=target, daemon=True)
    _PIPELINE_THREADS[id(pipeline)] = t
    t.start()
    try:
        yield pipeline
    finally:
        stop.set()
        t.join(60)
        PIPELINE_DIED.clear()
        _PIPELINE_THREADS.pop(id(pipeline), None)
    assert not t.is_alive(), "pipeline did not stop within 60 s"
    if errors:
        raise errors[0]


def source_position(conn: pymysql.connections.Connection) -> tuple[str, int]:
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        cur.execute(Flavor.from_version(str((cur.fetchone() or ("",))[0])).binlog_status_sql)
        row = cur.fetchone()
    return str(row[0]), int(row[1])


def caught_up(staging: psycopg.Connection[Any], source: pymysql.connections.Connection,
              pipeline: str = "default") -> bool:
    """Staging's saved position has reached the source's current binlog position."""
    file, pos = source_position(source)
    row = staging.execute("SELECT binlog_file, binlog_pos FROM softcart.position WHERE pipeline = %s",
                          (pipeline,)).fetchone()
    return row is not None and (row[0], row[1]) >= (file, pos)


def wait_caught_up(staging: psycopg.Connection[Any], source: pymysql.connections.Connection,
                   timeout: float = 120.0) -> None:
    wait_until(lambda: caught_up(staging, source), timeout, "staging to reach the source's binlog position")


def _norm(v: Any, pg_type: str) -> Any:
    if v is None:
        return None
    if pg_type == "real":
        return struct.unpack("f", struct.pack("f", v))[0]
    if pg_type == "jsonb":
        return json.dumps(json.loads(v) if isinstance(v, str) else v, sort_keys=True)
    return v


def source_rows(conn: pymysql.connections.Connection, database: str, name: str) -> list[tuple[Any, ...]]:
    """The source table, converted to staging's form, sorted by primary key."""
    table = read_table(conn, database, name)
    conv = RowConverter(table)
    cols = select_list(table)
    with conn.cursor() as cur:
        cur.execute(f"SELECT {cols} FROM {quote_mysql(name)}")
        rows = [conv.from_snapshot(r) for r in cur.fetchall()]
    return _normalise(table, rows)


def staging_rows(conn: psycopg.Connection[Any], table: Table) -> list[tuple[Any, ...]]:
    from psycopg import sql

    rows = conn.execute(sql.SQL("SELECT {} FROM staging.{}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names), sql.Identifier(table.name))).fetchall()
    return _normalise(table, [tuple(r) for r in rows])


def _normalise(table: Table, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    from transform.schema import pg_type

    types = [pg_type(c) for c in table.columns]
    keys = table.key_indexes()
    out = [tuple(_norm(v, t) for v, t in zip(r, types, strict=True)) for r in rows]
    return sorted(out, key=lambda r: tuple(str(r[i]) for i in keys))


def assert_same(source: pymysql.connections.Connection, staging: psycopg.Connection[Any], database: str,
                name: str) -> int:
    table = read_table(source, database, name)
    want = source_rows(source, database, name)
    got = staging_rows(staging, table)
    if want != got:
        missing = [r for r in want if r not in got][:5]
        extra = [r for r in got if r not in want][:5]
        raise AssertionError(f"{name}: source has {len(want)} rows, staging {len(got)}; "
                             f"missing/different in staging: {missing}; extra in staging: {extra}")
    return len(want)


#: Figures of the fault-injection tests, printed at the end of the run (conftest's terminal summary).
FAULT_FIGURES: list[tuple[str, str, int, int, int]] = []


def assert_fault_free(test: str, faults: str, source: pymysql.connections.Connection,
                      staging: psycopg.Connection[Any], database: str, *tables: str) -> None:
    """Compare source and staging row for row after a fault test, record the figures (faults
    injected, rows compared, rows lost, rows duplicated or wrong), then require none lost or extra."""
    rows = lost = extra = 0
    for name in tables:
        want = source_rows(source, database, name)
        got = staging_rows(staging, read_table(source, database, name))
        rows += len(want)
        lost += len(set(want) - set(got))
        extra += len(got) - len(set(got)) + len(set(got) - set(want))
    FAULT_FIGURES.append((test, faults, rows, lost, extra))
    assert lost == 0 and extra == 0, f"{test}: {lost} rows lost, {extra} duplicated or wrong of {rows}"
    for name in tables:
        assert_same(source, staging, database, name)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`softcart-sync ARGS` as a user runs it: our environment without any SOFTCART_* of its own, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SOFTCART_")}
    return subprocess.run([sys.executable, "-m", "cdc", *args], env={**base, **(env or {})}, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


class Daemon:
    """`softcart-sync run` as a real subprocess, to kill and restart."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("SOFTCART_")}, **env,
                    "SOFTCART_LOG_FORMAT": "json"}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> None:
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "cdc", "run"], env=self.env, cwd=ROOT,
                                         stdout=out, stderr=out)

    def wait_streaming(self, timeout: float = 60.0) -> None:
        """Until this run of the daemon logs that it streams (its start-up is over)."""

        def streaming() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"daemon exited; see {self.log}"
            with self.log.open("rb") as f:
                f.seek(self._log_offset)
                return b'"event": "streaming"' in f.read()

        wait_until(streaming, timeout, "the daemon to stream")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


#: What the ``daemons`` fixture gives: makes a Daemon for an environment and a log file.
Daemons = Callable[[dict[str, str], Path], Daemon]


@contextlib.contextmanager
def running_daemon(env: dict[str, str], log: Path) -> Iterator[Daemon]:
    """A daemon started and streaming; killed on the way out if the test did not stop it."""
    daemon = Daemon(env, log)
    daemon.start()
    try:
        daemon.wait_streaming()
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()


class PausableProxy:
    """A TCP proxy on loopback that can stop forwarding without closing anything: to the daemon
    it looks like a network that silently went dark."""

    def __init__(self, target_port: int) -> None:
        import socket

        self.target_port = target_port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def pause(self) -> None:
        self._flowing.clear()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        self._listener.close()

    def _accept(self) -> None:
        import socket

        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: Any, dst: Any) -> None:
        src.settimeout(None)
        while not self._closed.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            self._flowing.wait()  # paused: hold the bytes, close nothing
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()


class NotifySocket:
    """The datagram socket systemd would own; collects what the daemon says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            self.messages.append((time.monotonic(), data.decode()))
        return [m for _, m in self.messages]

    def fields(self) -> list[str]:
        return [f for m in self.drain() for f in m.split("\n")]

    def close(self) -> None:
        self.sock.close()


def metrics_port(daemon: Daemon) -> int:
    def port() -> int | None:
        for line in daemon.log.read_text().splitlines():
            if '"metrics_listening"' in line:
                return int(json.loads(line)["address"].rsplit(":", 1)[1])
        return None

    found: int = wait_until(port, 30, "the metrics listener")
    return found


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sample(port: int, name: str, **labels: str) -> float:
    _, text = get(port, "/metrics")
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


def rows(conn: psycopg.Connection[Any], table: str, schema: str = "public") -> list[tuple[Any, ...]]:
    spec = next(t for t in TABLES if t.name == table)
    cols = ", ".join(spec.columns)
    return sorted(conn.execute(f"SELECT {cols} FROM {schema}.{table}").fetchall())


def assert_warehouse_equals_star(staging: psycopg.Connection[Any], warehouse: psycopg.Connection[Any]) -> int:
    n = 0
    for t in TABLES:
        want, got = rows(staging, t.name, "star"), rows(warehouse, t.name)
        assert got == want, f"{t.name}: star {len(want)} rows, warehouse {len(got)}"
        n += len(want)
    return n


def cluster_pids(server: PostgresServer) -> list[int]:
    assert server.proc is not None
    out = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True)
    return [server.proc.pid, *(int(p) for p in out.stdout.split())]


@contextlib.contextmanager
def paused(server: PostgresServer) -> Iterator[None]:
    """The cluster's processes stopped (SIGSTOP) for the block, and continued after it, whatever
    happens: a backend that ends between the listing and its signal is skipped (it raised
    before, and left the ones already stopped stopped for every later test)."""
    stopped: list[int] = []
    try:
        for pid in cluster_pids(server):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

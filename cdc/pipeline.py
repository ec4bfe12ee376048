"""Wires the stages: binlog reader thread -> bounded queue -> staging writer thread, supervised.

The supervisor (the caller's thread) restarts both stages from the position saved in PostgreSQL
after a transient failure, with capped exponential backoff; a fatal failure ends ``run`` with the
error. Either worker's exception reaches the supervisor.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog

from cdc import mysql
from cdc.check import refuse_unready_source
from cdc.errors import ConfigError, FatalError, SoftcartError, TransientError
from cdc.flavor import Flavor
from cdc.model import Heartbeat, Position, RowChange, TxnChunk
from cdc.settings import Settings
from cdc.snapshot import take_snapshot
from cdc.source import BinlogSource
from loader.ddl import ensure_schema
from loader.pg import pg_connect
from loader.staging import StagingWriter, load_position
from loader.star import StarSchema
from transform.schema import Table

log = structlog.get_logger(__name__)

_STOP = object()


@dataclass
class PipelineState:
    """What the pipeline has done, for status, metrics and the demo (read from other threads)."""

    position: Position | None = None
    last_commit_at: float = 0.0
    last_event_time: float = 0.0
    last_heartbeat_at: float = 0.0
    rows_applied: int = 0
    transactions_applied: int = 0
    batches_committed: int = 0
    restarts: int = 0
    streaming: bool = False
    snapshot_rows: dict[str, int] = field(default_factory=dict)


def star_schema(settings: Settings, tables: dict[str, Table]) -> StarSchema | None:
    """The star schema the settings ask for, or None when it is turned off."""
    if not settings.star_table:
        return None
    if settings.star_table not in tables and "star_table" not in settings.model_fields_set:
        log.info("star_schema_off", reason=f"{settings.star_table} is not among the synced tables")
        return None
    if settings.star_table not in tables:
        raise ConfigError(f"SOFTCART_STAR_TABLE {settings.star_table!r} is not among SOFTCART_SOURCE_TABLES; "
                          "add it there, or set SOFTCART_STAR_TABLE= (empty) to turn the star schema off")
    return StarSchema(tables[settings.star_table], settings.zone)


class Pipeline:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = PipelineState()

    # Supervisor --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Stream until ``stop`` is set; raise on a fatal error."""
        delay = 0.5
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.run_once(stop)
            except TransientError as exc:
                self.state.streaming = False
                self.state.restarts += 1
                if time.monotonic() - started > 60:
                    delay = 0.5
                log.warning("pipeline_retrying", error=str(exc), retry_in_seconds=round(delay, 2),
                            position=str(self.state.position))
                stop.wait(delay)
                delay = min(delay * 2, self.settings.retry_max_seconds)
            except SoftcartError:
                self.state.streaming = False
                raise

    def prepare(self) -> tuple[dict[str, Table], Flavor]:
        """Connect to the source, read the configured tables' definitions."""
        conn = mysql.connect(self.settings)
        try:
            flavor = mysql.flavor(conn)
            refuse_unready_source(self.settings, conn, flavor)
            tables = {t: mysql.read_table(conn, self.settings.source.database, t)
                      for t in self.settings.source_tables}
        finally:
            conn.close()
        return tables, flavor

    def run_once(self, stop: threading.Event) -> None:
        tables, flavor = self.prepare()
        pg = pg_connect(self.settings, autocommit=True)
        try:
            ensure_schema(pg, tables)
            star = star_schema(self.settings, tables)
            position = load_position(pg, self.settings.pipeline_name)
            if star is not None:
                with pg.transaction(), pg.cursor() as cur:
                    created = star.ensure_schema(cur)
                    if created and position is not None:
                        log.info("star_schema_created_rebuilding", position=str(position))
                        built = star.rebuild(pg)
                        log.info("star_schema_built", facts=built.facts, invalid=len(built.invalid))
            writer = StagingWriter(pg, tables, self.settings.pipeline_name, star)
            if position is None:
                position = take_snapshot(self.settings, tables, flavor, writer, self._snapshot_progress)
            else:
                log.info("resuming", position=str(position))
            self.state.position = position
            self._stream(stop, tables, flavor, writer, position)
        except psycopg.OperationalError as exc:
            raise TransientError(f"staging connection lost: {str(exc).strip()}") from None
        finally:
            pg.close()

    def _snapshot_progress(self, table: str, rows: int) -> None:
        self.state.snapshot_rows[table] = rows

    def _stream(self, stop: threading.Event, tables: dict[str, Table], flavor: Flavor,
                writer: StagingWriter, position: Position) -> None:
        q: queue.Queue[Any] = queue.Queue(maxsize=self.settings.queue_chunks)
        inner = threading.Event()
        errors: list[BaseException] = []
        source = BinlogSource(self.settings, tables, flavor, position)

        def reader() -> None:
            try:
                for item in source.chunks(inner):
                    while not inner.is_set():
                        try:
                            q.put(item, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if inner.is_set():
                        return
            except BaseException as exc:  # noqa: BLE001 - handed to the supervisor
                errors.append(exc)
            finally:
                inner.set()

        def writer_loop() -> None:
            try:
                self._write(inner, q, writer)
            except BaseException as exc:  # noqa: BLE001 - handed to the supervisor
                errors.append(exc)
                inner.set()

        threads = [threading.Thread(target=reader, name="binlog-reader", daemon=True),
                   threading.Thread(target=writer_loop, name="staging-writer", daemon=True)]
        for t in threads:
            t.start()
        self.state.streaming = True
        log.info("streaming", position=str(position), source=flavor.name)
        try:
            while not inner.is_set():
                if stop.wait(0.2):
                    break
        finally:
            inner.set()
            source.close()
            for t in threads:
                t.join(self.settings.shutdown_timeout_seconds)
            self.state.streaming = False
        if errors:
            raise _as_ours(errors[0])

    # Writer --------------------------------------------------------------------------------------

    def _write(self, stop: threading.Event, q: queue.Queue[Any], writer: StagingWriter) -> None:
        s = self.settings
        buffer: list[RowChange] = []
        batch_rows = 0
        batch_started = 0.0
        partial = False  # inside a source transaction whose end we haven't seen
        commit: TxnChunk | None = None  # last complete transaction in the open batch
        txns = 0

        def flush() -> None:
            nonlocal buffer
            if buffer:
                writer.apply(buffer)
                buffer = []

        def do_commit() -> None:
            nonlocal batch_rows, commit, txns
            assert commit is not None and commit.commit is not None
            flush()
            writer.commit(commit.commit, commit.event_time or None)
            st = self.state
            st.position = commit.commit
            st.last_commit_at = time.time()
            if commit.event_time:
                st.last_event_time = commit.event_time
            st.rows_applied += batch_rows
            st.transactions_applied += txns
            st.batches_committed += 1
            log.debug("batch_committed", rows=batch_rows, transactions=txns, position=str(commit.commit))
            batch_rows, txns, commit = 0, 0, None

        while not stop.is_set():
            try:
                item = q.get(timeout=0.05 if commit is not None else 0.5)
            except queue.Empty:
                if commit is not None and not partial:
                    do_commit()
                continue
            if isinstance(item, Heartbeat):
                self.state.last_heartbeat_at = time.time()
                if item.event_time:
                    self.state.last_event_time = max(self.state.last_event_time, item.event_time)
                continue
            if batch_rows == 0 and commit is None and not partial:
                batch_started = time.monotonic()
            buffer.extend(item.changes)
            batch_rows += item.rows
            if len(buffer) >= s.chunk_rows:
                flush()
            if item.commit is None:
                partial = True
                continue
            partial = False
            commit = item
            txns += 1
            if (batch_rows >= s.batch_max_rows or time.monotonic() - batch_started >= s.batch_max_seconds
                    or q.empty()):
                do_commit()
        # Stopping: commit what ends at a transaction boundary, abandon a half-read transaction.
        if commit is not None and not partial:
            do_commit()
        else:
            writer.rollback()


def _as_ours(exc: BaseException) -> BaseException:
    if isinstance(exc, SoftcartError):
        return exc
    if isinstance(exc, psycopg.OperationalError):
        return TransientError(f"staging connection lost: {str(exc).strip()}")
    return FatalError(f"{type(exc).__name__}: {exc}")

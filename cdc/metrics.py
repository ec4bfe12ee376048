"""Every metric softcart-sync exports, defined in one place, on a registry the entry point owns.

Names follow Prometheus conventions: one prefix, base units, ``_total`` for counters, labels of
low cardinality only (table, operation, endpoint, stage, kind).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "softcart_"
log = structlog.get_logger(__name__)


def version() -> str:
    """The installed package's version (what `--version` and softcart_build_info say)."""
    try:
        return importlib.metadata.version("softcart-sync")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        p = PREFIX
        Info(p + "build", "The running softcart-sync", registry=r).info(
            {"version": version(), "python": platform.python_version()})
        self._flow(r, p)
        self._state(r, p)
        self.backlog = BacklogCollector()  # the warehouse backlog, read at each scrape once attached
        self.stages = StageCollector()  # each stage's stall, computed at each scrape
        r.register(self.backlog)
        r.register(self.stages)
        for endpoint in ("source", "staging", "warehouse"):
            self.connected.labels(endpoint).set(0)
        for kind in ("value", "fact"):
            self.dead_letters.labels(kind)
        for kind in ("transient", "fatal", "unexpected"):
            self.errors.labels(kind)

    def _flow(self, r: CollectorRegistry, p: str) -> None:
        """The data flow: rows and transactions, batches, lag, the queue."""
        self.events_read = Counter(p + "binlog_row_events_total", "Row changes read from the binlog",
                                   ["table", "operation"], registry=r)
        self.transactions_applied = Counter(p + "transactions_applied_total",
                                            "Source transactions committed to staging", registry=r)
        self.rows_applied = Counter(p + "rows_applied_total", "Row changes committed to staging", registry=r)
        self.batch_rows = Histogram(p + "batch_rows", "Row changes per micro-batch", registry=r,
                                    buckets=(1, 10, 100, 1000, 5000, 20000, 100000, 1000000))
        self.batch_seconds = Histogram(p + "batch_duration_seconds", "Time to apply and commit a micro-batch",
                                       registry=r, buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.lag_seconds = Gauge(p + "replication_lag_seconds",
                                 "Age of the oldest transaction received and not yet committed to staging"
                                 " (from our receipt or its binlog second, the earlier); 0 when idle and caught"
                                 " up (heartbeats), growing when stalled", registry=r)
        self.lag_bytes = Gauge(p + "replication_lag_bytes", "Binlog bytes between the applied position and "
                               "the source's current position", registry=r)
        self.queue_depth = Gauge(p + "queue_depth_chunks", "Slices waiting between reader and writer", registry=r)
        self.queue_capacity = Gauge(p + "queue_capacity_chunks", "Capacity of the reader->writer queue",
                                    registry=r)

    def _state(self, r: CollectorRegistry, p: str) -> None:
        """Connections, commits, errors, the snapshot, the position, the warehouse, readiness."""
        self.connected = Gauge(p + "connected", "1 when connected to the endpoint", ["endpoint"], registry=r)
        self.last_commit = Gauge(p + "last_commit_timestamp_seconds", "Unix time of the last successful commit",
                                 ["stage"], registry=r)
        self.star_rows = Counter(p + "star_rows_changed_total", "Fact rows upserted or deleted", registry=r)
        self.dead_letters = Counter(p + "dead_letters_total", "Rows sent to the dead-letter table",
                                    ["kind"], registry=r)
        self.errors = Counter(p + "errors_total", "Errors by kind (transient: retried; fatal: stopped; "
                              "unexpected: a stage started afresh)",
                              ["kind"], registry=r)
        self.restarts = Counter(p + "pipeline_restarts_total", "Restarts of the stages after a transient error",
                                registry=r)
        self.snapshot_rows = Gauge(p + "snapshot_rows_copied", "Rows copied by the initial snapshot", ["table"],
                                   registry=r)
        self.snapshot_tables = Gauge(p + "snapshot_tables", "Tables of the initial snapshot", ["state"],
                                     registry=r)
        self.position_file = Gauge(p + "source_position_file_number",
                                   "Sequence number of the binlog file of the applied position", registry=r)
        self.position_offset = Gauge(p + "source_position_offset_bytes",
                                     "Offset in that binlog file of the applied position", registry=r)
        self.flush_seconds = Histogram(p + "warehouse_flush_duration_seconds", "Time to load one batch", registry=r,
                                       buckets=(0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.warehouse_rows = Counter(p + "warehouse_rows_loaded_total", "Rows loaded into the warehouse",
                                      registry=r)
        self.batches_loaded = Counter(p + "warehouse_batches_loaded_total", "Batches loaded into the warehouse",
                                      registry=r)
        self.tables_stopped = Gauge(p + "tables_stopped", "Source tables no longer followed after a schema change "
                                    "staging can't follow (see the log; resnapshot takes them again)",
                                    registry=r)
        self.binlog_purged = Gauge(p + "binlog_position_purged", "1 when the saved position is no longer in the "
                                   "source's binlog (needs `softcart-sync resnapshot`)", registry=r)
        self.online_copy_rows = Gauge(p + "online_copy_rows_copied", "Rows an online copy has copied of the table"
                                      " (this run)", ["table"], registry=r)
        self.online_copy_active = Gauge(p + "online_copy_active", "1 while the table is being copied online",
                                        ["table"], registry=r)
        self.ready = Gauge(p + "ready", "1 when streaming and not stalled (what /readyz says)", registry=r)


#: The warehouse backlog's gauges: (name, help, field of loader.flush.Backlog).
BACKLOG = (
    ("outbox_pending_rows", "Star-schema keys changed and not yet in a batch", "outbox_rows"),
    ("spool_pending_batches", "Batches waiting to be loaded into the warehouse", "pending"),
    ("spool_failed_batches", "Batches the warehouse refused (need an operator)", "failed"),
    ("spool_oldest_pending_age_seconds", "Age of the oldest pending batch", "oldest_pending_seconds"),
    ("warehouse_batch_attempts", "Load attempts of the pending batch failing longest (0: none failing)", "attempts"),
    ("warehouse_batch_failing_seconds", "Seconds since the first failed load of the pending batch failing longest"
     " (0: none failing)", "failing_seconds"),
)


class BacklogCollector(Collector):
    """The backlog gauges, read from staging by whoever scrapes, on a connection of their own: the
    flush thread never sets them, so a flush thread that hangs can't freeze them (the backlog keeps
    growing on /metrics and its alerts fire). ``read`` runs the query on a connection ``connect``
    made (its connect and statement times are bounded); after a failure the next scrapes report
    ``softcart_backlog_known 0`` without trying again for ``retry_seconds``, so a staging that is
    down doesn't slow every scrape by a connect timeout."""

    def __init__(self, retry_seconds: float = 10.0, deadline_seconds: float = 1.5) -> None:
        self._connect: Callable[[], Any] | None = None
        self._read: Callable[[Any], Any] = lambda conn: None
        self._retry = retry_seconds
        #: longest a scrape waits for the read, on our own clock: a stopped server enforces no
        #: statement limit of its own (a scrape hung for a whole staging outage, #36)
        self._deadline = deadline_seconds
        self._conn: Any = None
        self._failed_at = -float("inf")
        self._lock = threading.Lock()
        self._reading: threading.Thread | None = None  # the read under way, in a thread of its own

    def attach(self, connect: Callable[[], Any], read: Callable[[Any], Any]) -> None:
        """Start reading the backlog at scrapes (only with a warehouse: there is none without)."""
        self._connect, self._read = connect, read

    def describe(self) -> Iterator[Metric]:
        yield from self._families(None, False)

    def collect(self) -> Iterator[Metric]:
        attached = self._connect is not None
        yield from self._families(self._sample() if attached else None, attached)

    def close(self) -> None:
        with self._lock:
            if self._reading is None or not self._reading.is_alive():
                self._drop()

    def _sample(self) -> Any:
        """The backlog, or None (unknown) when the read failed lately, is still waiting on staging
        from an earlier scrape, or takes longer than the deadline: the scrape answers either way."""
        with self._lock:
            if time.monotonic() - self._failed_at < self._retry:
                return None
            if self._reading is not None and self._reading.is_alive():
                return None  # an earlier read still waits on staging: never a second one
            result: list[Any] = []
            self._reading = threading.Thread(target=self._read_once, args=(result,), name="backlog-read", daemon=True)
            self._reading.start()
            reading = self._reading
        reading.join(self._deadline)
        if reading.is_alive():
            log.warning("backlog_unknown", error=f"staging did not answer within {self._deadline:g} s")
            return None
        return result[0] if result else None

    def _read_once(self, result: list[Any]) -> None:
        try:
            if self._conn is None:
                assert self._connect is not None
                self._conn = self._connect()
            result.append(self._read(self._conn))
        except Exception as exc:  # noqa: BLE001 - a scrape reports what it can't read, never fails
            log.warning("backlog_unknown", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
            with contextlib.suppress(Exception):
                self._drop()
            self._failed_at = time.monotonic()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    @staticmethod
    def _families(backlog: Any, attached: bool) -> Iterator[Metric]:
        known = GaugeMetricFamily(PREFIX + "backlog_known", "1 when the backlog gauges could be read from staging"
                                  " at this scrape (0: staging unreachable; they are left out)")
        if attached:
            known.add_metric([], 0 if backlog is None else 1)
        yield known
        for name, text, attr in BACKLOG:
            family = GaugeMetricFamily(PREFIX + name, text)
            if backlog is not None:
                family.add_metric([], float(getattr(backlog, attr)))
            yield family


class StageCollector(Collector):
    """Each stage's stall, computed at scrape from the clocks the stages keep (``views``: objects
    with stage, seconds, limit and stalled, see cdc.stages): a stage that hangs can't freeze them."""

    def __init__(self) -> None:
        self.views: Callable[[], list[Any]] = list

    def describe(self) -> Iterator[Metric]:
        yield from self._families([])

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self.views())

    @staticmethod
    def _families(views: list[Any]) -> Iterator[Metric]:
        seconds = GaugeMetricFamily(PREFIX + "stage_seconds_since_progress", "Seconds since the stage last moved"
                                    " rows or positions or proved itself idle and healthy (reader: seconds"
                                    " waiting for the source)", labels=["stage"])
        limit = GaugeMetricFamily(PREFIX + "stage_stall_limit_seconds", "Past this without progress the stage is"
                                  " stalled", labels=["stage"])
        stalled = GaugeMetricFamily(PREFIX + "stage_stalled", "1 when the stage is stalled (/readyz names it)",
                                    labels=["stage"])
        for v in views:
            seconds.add_metric([v.stage], round(v.seconds, 3))
            limit.add_metric([v.stage], v.limit)
            stalled.add_metric([v.stage], 1 if v.stalled else 0)
        yield from (seconds, limit, stalled)

"""Every metric softcart-sync exports, defined in one place, on a registry the entry point owns.

Names follow Prometheus conventions: one prefix, base units, ``_total`` for counters, labels of
low cardinality only (table, operation, endpoint, stage, kind).
"""

from __future__ import annotations

import importlib.metadata
import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

PREFIX = "softcart_"


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
                                 "Source commit time of the last applied change vs now; 0 when idle and "
                                 "caught up (heartbeats), growing when stalled", registry=r)
        self.lag_bytes = Gauge(p + "replication_lag_bytes", "Binlog bytes between the applied position and "
                               "the source's current position", registry=r)
        self.queue_depth = Gauge(p + "queue_depth_chunks", "Slices waiting between reader and writer", registry=r)
        self.queue_capacity = Gauge(p + "queue_capacity_chunks", "Capacity of the reader->writer queue",
                                    registry=r)
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
        self.outbox_pending = Gauge(p + "outbox_pending_rows", "Star-schema changes not yet in a batch", registry=r)
        self.spool_pending = Gauge(p + "spool_pending_batches", "Batches waiting to be loaded into the warehouse",
                                   registry=r)
        self.spool_failed = Gauge(p + "spool_failed_batches", "Batches the warehouse refused (need an operator)",
                                  registry=r)
        self.spool_oldest_age = Gauge(p + "spool_oldest_pending_age_seconds", "Age of the oldest pending batch",
                                      registry=r)
        self.batch_attempts = Gauge(p + "warehouse_batch_attempts", "Load attempts of the pending batch failing "
                                    "longest (0: none failing)", registry=r)
        self.batch_failing = Gauge(p + "warehouse_batch_failing_seconds", "Seconds since the first failed load of "
                                   "the pending batch failing longest (0: none failing)", registry=r)
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
        self.ready = Gauge(p + "ready", "1 when streaming and not stalled (what /readyz says)", registry=r)
        for endpoint in ("source", "staging", "warehouse"):
            self.connected.labels(endpoint).set(0)
        for kind in ("value", "fact"):
            self.dead_letters.labels(kind)
        for kind in ("transient", "fatal", "unexpected"):
            self.errors.labels(kind)

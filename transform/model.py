"""Our own frozen types for what flows through the pipeline. No library type passes the source."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from transform.schema import Table


@dataclass(frozen=True, order=True)
class Position:
    """A restart point in the source's binlog, always at a transaction boundary.

    ``file``/``pos`` point just past the COMMIT (XID) event, so resuming there starts with the next
    transaction. ``gtid`` is the server's GTID state at that point where it has one (MariaDB
    ``domain-server-seq`` list, or a MySQL GTID set), kept for operators and failover.
    """

    file: str
    pos: int
    gtid: str = ""

    def __str__(self) -> str:
        text = f"{self.file}:{self.pos}"
        return f"{text} gtid={self.gtid}" if self.gtid else text

    def order(self) -> tuple[str, int, int]:
        """Binlog order on one server: by file number (past 999999 a name gets a seventh digit,
        so names don't sort as text), then offset."""
        stem, _, number = self.file.rpartition(".")
        return (stem, int(number) if number.isdigit() else -1, self.pos)

    @classmethod
    def parse(cls, text: str) -> Position:
        """The form ``str()`` writes: ``file:pos`` with `` gtid=...`` where there is one."""
        place, _, gtid = text.partition(" gtid=")
        file, _, pos = place.rpartition(":")
        return cls(file, int(pos), gtid)


class Op(enum.Enum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True)
class RowChange:
    """One row changed in one source table, with values already in their PostgreSQL form.

    ``before`` is set for updates and deletes, ``after`` for inserts and updates (tuples in the
    table's column order). When a value could not be converted, ``error`` says why and ``raw``
    keeps the source row as text and ``key`` its primary key for the dead-letter table; such a
    change is not applied.
    """

    table: str
    op: Op
    before: tuple[Any, ...] | None
    after: tuple[Any, ...] | None
    error: str | None = None
    raw: str | None = None
    key: tuple[Any, ...] | None = None
    #: columns of the followed definition that the row image does not carry: not in the table at
    #: the image's binlog position (added later, or renamed since). ``after`` has None there; the
    #: values are read from the source by key, as for a column added (later changes replay on top)
    absent: tuple[str, ...] = ()


@dataclass(frozen=True)
class TxnChunk:
    """A slice of one source transaction, in order.

    A transaction of any size arrives as one or more chunks; only the last has ``commit`` set: the
    restart point after it. Chunks bound memory, and a huge transaction still lands in PostgreSQL
    in one transaction because the writer commits only at a ``commit``.
    """

    changes: tuple[RowChange, ...]
    commit: Position | None
    event_time: float = 0.0
    rows: int = field(default=0)
    #: when our reader had it (this host's clock, sub-second; 0: not stamped): see :meth:`origin`
    received_at: float = 0.0
    #: the changes belong to an XA transaction that is being prepared: kept in staging, not
    #: applied, until its XA COMMIT (or dropped at its XA ROLLBACK)
    hold: bool = False
    #: on the last chunk of a prepared XA transaction: the xid its held changes are kept under
    xa_prepared: str = ""
    #: an XA COMMIT / XA ROLLBACK of a transaction prepared earlier (this chunk has no changes)
    xa_commit: str = ""
    xa_rollback: str = ""
    #: a slice without ``commit``: where its last rows event ends in the binlog (None: unknown). A
    #: transaction's events are contiguous in the binlog, so one read before a boundary P ends by P
    read_at: Position | None = None
    #: tables that can't be followed from this transaction on: (table, reason, statement)
    stops: tuple[tuple[str, str, str], ...] = ()
    #: with xa_commit: tables whose rows of that transaction are in their snapshot already (copied
    #: at a position past this commit while the stream was behind): not applied again
    xa_skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", len(self.changes))

    def origin(self) -> float:
        """Our best estimate of when the source committed it, for the lag. The binlog's timestamp
        has one-second resolution: the commit was in [event_time, event_time + 1), and before we
        received it. A transaction read as it was written (caught up) is bounded by its receipt,
        so the error is our transport's latency, not a second; one read late (catching up) by
        event_time + 1, so the error is under a second of a lag that is larger."""
        if not self.received_at:
            return self.event_time
        if not self.event_time:
            return self.received_at
        return min(self.received_at, self.event_time + 1.0)


@dataclass(frozen=True)
class Heartbeat:
    """The source is alive and idle at ``event_time``. ``position`` is where its binlog ends, when
    that is a transaction boundary in the file we are reading: events we don't follow (another
    schema's DDL, a rotation) move it without a transaction of ours to save it with."""

    event_time: float
    position: Position | None = None


@dataclass(frozen=True)
class SchemaChange:
    """A statement that changed followed tables (ALTER, TRUNCATE, DROP, RENAME, CREATE), at a
    transaction boundary: for each table, its definition as the source has it right after (None
    when it is gone), read when the reader met the statement."""

    statement: str
    kind: str  # alter, truncate, drop, rename, create, replace (CREATE OR REPLACE), drop_database
    position: Position
    event_time: float
    tables: tuple[tuple[str, Table | None], ...]
    #: tables in the source whose definition after the statement can't be followed (no primary
    #: key, a type staging can't hold): (table, why); their entry in ``tables`` is None
    unusable: tuple[tuple[str, str], ...] = ()

    def emptied(self) -> bool:
        """Does the statement itself say the tables' rows are gone (DROP, TRUNCATE, RENAME away,
        CREATE OR REPLACE)? Only such positive evidence empties staging; a definition that can't
        be read after an ALTER is no evidence of anything."""
        return self.kind in ("truncate", "drop", "rename", "replace", "drop_database")


@dataclass(frozen=True)
class Endpoint:
    """A parsed database URL. ``password`` is secret; ``display`` is safe to log."""

    scheme: str
    host: str
    port: int
    user: str
    password: SecretStr
    database: str
    query: str = ""

    @property
    def display(self) -> str:
        return f"{self.scheme}://{self.user}@{self.host}:{self.port}/{self.database}"


@dataclass(frozen=True)
class StagingConfig:
    """What the loader needs to reach staging (built by cdc.settings.Settings.staging_config)."""

    endpoint: Endpoint
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 30.0
    tls: str = "prefer"
    tls_ca: Path | None = None


@dataclass(frozen=True)
class WarehouseConfig:
    """What the loader needs to reach the warehouse (built by cdc.settings.Settings.warehouse_config)."""

    endpoint: Endpoint
    pipeline: str = "default"
    connect_timeout_seconds: float = 10.0
    receive_timeout_seconds: float = 3600.0
    statement_timeout_seconds: float = 0.0
    schema: str = ""
    lock_wait_seconds: float = 60.0


@dataclass(frozen=True)
class ApplyConfig:
    """What the applier needs (built by cdc.settings.Settings.apply_config)."""

    staging: StagingConfig
    pipeline: str
    batch_max_rows: int
    batch_max_seconds: float
    chunk_rows: int
    stall_seconds: float
    lock_wait_seconds: float

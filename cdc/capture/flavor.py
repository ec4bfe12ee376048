"""What differs between MariaDB, MySQL 8.0 and MySQL 8.4 (pure; unit-tested for every flavor)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Flavor:
    """The source server's kind and version, from ``SELECT VERSION()``."""

    mariadb: bool
    version: tuple[int, int, int]

    @classmethod
    def from_version(cls, text: str) -> Flavor:
        m = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
        if not m:
            raise ValueError(f"cannot read a server version from {text!r}")
        major, minor, patch = (int(g) for g in m.groups())
        return cls(mariadb="mariadb" in text.lower(), version=(major, minor, patch))

    @property
    def name(self) -> str:
        return ("MariaDB " if self.mariadb else "MySQL ") + ".".join(map(str, self.version))

    @property
    def binlog_status_sql(self) -> str:
        """MySQL 8.2 renamed SHOW MASTER STATUS and 8.4 removed the old name."""
        if not self.mariadb and self.version >= (8, 2, 0):
            return "SHOW BINARY LOG STATUS"
        return "SHOW MASTER STATUS"

    @property
    def replica_hosts_sql(self) -> str:
        """MySQL 8.0.22 renamed SHOW SLAVE HOSTS to SHOW REPLICAS and 8.4 removed the old name."""
        if not self.mariadb and self.version >= (8, 0, 22):
            return "SHOW REPLICAS"
        return "SHOW SLAVE HOSTS"

    @property
    def has_row_metadata(self) -> bool:
        """binlog_row_metadata exists from MariaDB 10.5 and MySQL 8.0.1."""
        if self.mariadb:
            return self.version >= (10, 5, 0)
        return self.version >= (8, 0, 1)

    @property
    def gtid_sql(self) -> str:
        """The server's current GTID state."""
        return "SELECT @@GLOBAL.gtid_binlog_pos" if self.mariadb else "SELECT @@GLOBAL.gtid_executed"

    def snapshot_statements(self) -> SnapshotPlan:
        """How to open a consistent snapshot and learn the binlog position it corresponds to.

        MariaDB reports the snapshot's position in ``binlog_snapshot_file``/``_position`` without
        any lock. MySQL has no such status, so (like Debezium) it holds ``FLUSH TABLES WITH READ
        LOCK`` only for the instant between opening the snapshot and reading the position; the copy
        itself runs without a lock.
        """
        if self.mariadb:
            return SnapshotPlan(
                lock=(),
                begin=("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                       "START TRANSACTION WITH CONSISTENT SNAPSHOT"),
                position="SHOW STATUS LIKE 'binlog_snapshot_%'",
                unlock=(),
            )
        return SnapshotPlan(
            lock=("FLUSH TABLES WITH READ LOCK",),
            begin=("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                   "START TRANSACTION WITH CONSISTENT SNAPSHOT"),
            position=self.binlog_status_sql,
            unlock=("UNLOCK TABLES",),
        )


@dataclass(frozen=True)
class SnapshotPlan:
    lock: tuple[str, ...]
    begin: tuple[str, ...]
    position: str
    unlock: tuple[str, ...]


def snapshot_position(mariadb: bool, rows: list[tuple[object, ...]]) -> tuple[str, int]:
    """The (file, pos) from the result of :attr:`SnapshotPlan.position`."""
    if mariadb:
        status = {str(r[0]).lower(): str(r[1]) for r in rows}
        return status["binlog_snapshot_file"], int(status["binlog_snapshot_position"])
    if not rows:
        raise ValueError("the server reports no binary log status: is log_bin on?")
    return str(rows[0][0]), int(str(rows[0][1]))


# GTID state --------------------------------------------------------------------------------------


def mariadb_gtid_advance(state: str, gtid: str) -> str:
    """MariaDB GTID state (``domain-server-seq`` per domain, comma-separated) after ``gtid``."""
    domains: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in state.split(","))):
        domains[part.split("-", 1)[0]] = part
    domains[gtid.split("-", 1)[0]] = gtid
    return ",".join(domains[d] for d in sorted(domains, key=int))


def _mysql_sets(state: str) -> dict[str, list[list[int]]]:
    sets: dict[str, list[list[int]]] = {}
    for part in filter(None, (p.strip() for p in state.replace("\n", "").split(","))):
        uuid, *ranges = part.split(":")
        for r in ranges:
            first, _, last = r.partition("-")
            sets.setdefault(uuid.lower(), []).append([int(first), int(last or first)])
    return sets


def _mysql_text(sets: dict[str, list[list[int]]]) -> str:
    out = []
    for u in sorted(sets):
        merged: list[list[int]] = []
        for lo, hi in sorted(sets[u]):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        out.append(u + "".join(f":{lo}" if lo == hi else f":{lo}-{hi}" for lo, hi in merged))
    return ",".join(out)


def mysql_gtid_advance(state: str, gtid: str) -> str:
    """MySQL GTID set (``uuid:1-5:7,uuid2:1-3``) after adding the transaction ``uuid:n``."""
    sets = _mysql_sets(state)
    uuid, _, n_text = gtid.rpartition(":")
    sets.setdefault(uuid.lower(), []).append([int(n_text), int(n_text)])
    return _mysql_text(sets)


def mysql_gtid_normal(state: str) -> str:
    """A MySQL GTID set in one form (uuids lower-case and sorted, ranges merged), for comparing."""
    return _mysql_text(_mysql_sets(state))


def gtid_advance(mariadb: bool, state: str, gtid: str) -> str:
    return mariadb_gtid_advance(state, gtid) if mariadb else mysql_gtid_advance(state, gtid)

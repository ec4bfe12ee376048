"""Whole source transactions from binlog events, by the server's rules (pure: events in, items out).

A transaction ends only where the server ends it: an XID event, a ``COMMIT`` query, a ``ROLLBACK``
query, an XA PREPARE, or the implicit commit of a DDL statement. Inside it:

- ``SAVEPOINT`` marks a point; ``ROLLBACK TO`` undoes the transactional tables' rows logged since
  (the server writes one only when a non-transactional table was changed: their rows stay, as on
  the source); a ``ROLLBACK`` query undoes every transactional row of the transaction.
- An XA transaction's rows are logged at its ``XA PREPARE`` and become true at a later, separate
  ``XA COMMIT`` (or never, at ``XA ROLLBACK``). The assembler marks them ``hold``: the writer keeps
  them in staging under their xid with the position past the prepare, and applies or drops them when
  the decision comes, in a later batch or after a restart. ``XA COMMIT ... ONE PHASE`` is an
  ordinary transaction (MariaDB logs it so; MySQL 8 as an XA_PREPARE event with ``one_phase``).
- DML logged as a statement (a session in STATEMENT or MIXED format) names a table whose rows
  never appear as row images: that table stops, with the statement, at this transaction's commit.

Memory: a transaction's rows are held until its end, up to ``hold_rows``; past that they go out in
slices of ``chunk_rows`` (a huge transaction streams as before). A ``ROLLBACK`` or ``ROLLBACK TO``
that would need to undo rows already sent can't be followed: the tables concerned stop (named,
with the reason), never silently applied.

Recorded forms (see tests/unit/test_assemble.py): MariaDB writes no BEGIN query (its GTID event
opens the group; ``FL_STANDALONE`` marks a DDL, ``FL_PREPARED_XA`` an XA prepare) and ``XA END``
before its XA_PREPARE event; MySQL 8 writes ``BEGIN`` or ``XA START`` after the GTID event.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from transform.model import Position, RowChange, TxnChunk
from transform.statements import classify, ours

#: MariaDB's GTID event flags (sql/log_event.h)
FL_STANDALONE = 1
FL_PREPARED_XA = 64
FL_COMPLETED_XA = 128

_XA = re.compile(r"^XA\s+(START|BEGIN|END|PREPARE|COMMIT|ROLLBACK)\b\s*(.*?)\s*(ONE\s+PHASE)?\s*;?\s*$",
                 re.IGNORECASE | re.DOTALL)
_SAVEPOINT = re.compile(r"^SAVEPOINT\s+(.+?)\s*;?$", re.IGNORECASE | re.DOTALL)
_ROLLBACK_TO = re.compile(r"^ROLLBACK\s+(?:WORK\s+)?TO\s+(?:SAVEPOINT\s+)?(.+?)\s*;?$", re.IGNORECASE | re.DOTALL)
_RELEASE = re.compile(r"^RELEASE\s+SAVEPOINT\s+(.+?)\s*;?$", re.IGNORECASE | re.DOTALL)


def xid_text(gtrid: bytes, bqual: bytes, format_id: int) -> str:
    """An xid as the server writes it in XA statements: ``X'6162',X'',1``."""
    return f"X'{gtrid.hex()}',X'{bqual.hex()}',{format_id}"


def _xid(text: str) -> str:
    """An xid as written in an XA statement, in the form of :func:`xid_text`. The server writes
    ``X'..',X'..',n``; a quoted string form is read too (MySQL 5.7 wrote those)."""
    parts = [p.strip() for p in re.findall(r"X'[0-9A-Fa-f]*'|'(?:[^']|'')*'|\d+", text)]
    raw: list[bytes] = []
    fmt = 1
    for p in parts:
        if p.upper().startswith("X'"):
            raw.append(bytes.fromhex(p[2:-1]))
        elif p.startswith("'"):
            raw.append(p[1:-1].replace("''", "'").encode())
        else:
            fmt = int(p)
    gtrid = raw[0] if raw else b""
    bqual = raw[1] if len(raw) > 1 else b""
    return xid_text(gtrid, bqual, fmt)


def _ident(text: str) -> str:
    t = text.strip()
    return t[1:-1].replace("``", "`") if t.startswith("`") and t.endswith("`") else t


@dataclass(frozen=True)
class Ddl:
    """A statement that changes followed tables' definitions, at a transaction boundary."""

    statement: str
    kind: str  # alter, truncate, drop, rename, create, replace, drop_database
    tables: tuple[str, ...]
    position: Position
    event_time: float


Item = TxnChunk | Ddl


@dataclass
class _Txn:
    held: list[RowChange] = field(default_factory=list)
    sent: set[str] = field(default_factory=set)  # tables with rows already sent in slices
    savepoints: list[tuple[str, int | None]] = field(default_factory=list)  # None: sent past it
    stops: dict[str, tuple[str, str]] = field(default_factory=dict)
    xa: bool = False


class Assembler:
    """Feed it the binlog's events in order; each call returns the items that are complete."""

    def __init__(self, database: str, tables: Collection[str], chunk_rows: int, hold_rows: int,
                 nontransactional: Collection[str] = (), fold_case: bool = False,
                 fences: Mapping[str, Position] | None = None) -> None:
        """``fences``: tables copied at a snapshot position past the stream's start (a table added
        to the settings): what the binlog says of them up to that position is in their copy already,
        so their rows, statements and DDL up to it are left out (an XA transaction's rows by its
        XA COMMIT's position)."""
        self.fences = dict(fences or {})
        self.database = database
        self.tables = list(tables)
        self.chunk_rows = chunk_rows
        self.hold_rows = max(hold_rows, chunk_rows)
        self.nontransactional = set(nontransactional)
        self.fold_case = fold_case
        self._txn: _Txn | None = None

    @property
    def in_txn(self) -> bool:
        return self._txn is not None

    def copied(self, table: str, at: Position) -> bool:
        """Is what the binlog says of ``table`` at ``at`` in the table's copy already?"""
        fence = self.fences.get(table)
        return fence is not None and at.order() <= fence.order()

    def _passed(self, at: Position) -> None:
        """Past every fence: nothing to check any more."""
        if self.fences and all(at.order() > f.order() for f in self.fences.values()):
            self.fences = {}

    # Events ----------------------------------------------------------------------------------

    def gtid(self, mariadb_flags: int | None = None) -> list[Item]:
        """A GTID event. MariaDB's opens the group (no BEGIN follows) unless it is standalone;
        MySQL's (``mariadb_flags`` None) is followed by BEGIN, XA START or a DDL statement."""
        if mariadb_flags is not None and not mariadb_flags & FL_STANDALONE:
            self._txn = _Txn(xa=bool(mariadb_flags & FL_PREPARED_XA))
        return []

    def rows(self, changes: list[RowChange], event_time: float, at: Position | None = None) -> list[Item]:
        """A rows event's changes; ``at``: the event's end position (for the fences)."""
        txn = self._open()
        if self.fences and at is not None and not txn.xa:
            changes = [c for c in changes if not self.copied(c.table, at)]
        txn.held.extend(changes)
        if len(txn.held) <= self.hold_rows:
            return []
        return self._send(txn, event_time, at)

    def unreadable(self, table: str, reason: str, at: Position | None = None) -> list[Item]:
        """A rows event of ``table`` whose rows can't be read as row images (MySQL's partial JSON
        updates): the table stops at this transaction's commit, as for a statement-format change;
        ``at``: the event's end position (for the fences)."""
        txn = self._open()
        if at is None or txn.xa or not self.copied(table, at):
            txn.stops.setdefault(table, (reason, ""))
        return []

    def xid(self, at: Position, event_time: float) -> list[Item]:
        return self._end(at, event_time)

    def xa_prepare(self, xid: str, one_phase: bool, at: Position, event_time: float) -> list[Item]:
        """An XA_PREPARE event (MariaDB and MySQL 8)."""
        txn = self._open()
        if one_phase:
            txn.xa = False
            return self._end(at, event_time)
        txn.xa = True
        return self._end(at, event_time, xa_prepared=xid)

    def query(self, text: str, default_db: str | None, at: Position, event_time: float) -> list[Item]:
        q = text.strip()
        upper = q.upper().rstrip(";").strip()
        if upper in ("BEGIN", "START TRANSACTION", "BEGIN WORK"):
            self._open()
            return []
        if upper in ("COMMIT", "COMMIT WORK"):
            return self._end(at, event_time)
        if upper in ("ROLLBACK", "ROLLBACK WORK"):
            return self._rollback(at, event_time)
        if m := _XA.match(q):
            return self._xa(m[1].upper(), _xid(m[2]), bool(m[3]), at, event_time)
        if m := _SAVEPOINT.match(q):
            self._savepoint(_ident(m[1]))
            return []
        if m := _ROLLBACK_TO.match(q):
            self._rollback_to(_ident(m[1]))
            return []
        if m := _RELEASE.match(q):
            self._release(_ident(m[1]))
            return []
        return self._statement(q, default_db, at, event_time)

    # Transaction control -----------------------------------------------------------------------

    def _open(self) -> _Txn:
        if self._txn is None:
            self._txn = _Txn()  # rows with no BEGIN (CREATE ... SELECT after its statement)
        return self._txn

    def _send(self, txn: _Txn, event_time: float, at: Position | None) -> list[Item]:
        """Send what is held in slices (a huge transaction), read up to ``at``; savepoints before it
        can no longer be rolled back to exactly."""
        out: list[Item] = []
        for i in range(0, len(txn.held), self.chunk_rows):
            part = tuple(txn.held[i:i + self.chunk_rows])
            out.append(TxnChunk(part, None, event_time, hold=txn.xa, read_at=at))
        txn.sent.update(c.table for c in txn.held if c.table not in self.nontransactional)
        txn.held = []
        txn.savepoints = [(name, None) for name, _ in txn.savepoints]
        return out

    def _end(self, at: Position, event_time: float, xa_prepared: str = "") -> list[Item]:
        txn, self._txn = self._txn, None
        self._passed(at)
        if txn is None:
            return [TxnChunk((), at, event_time)]
        held = txn.held
        parts = [tuple(held[i:i + self.chunk_rows]) for i in range(0, len(held), self.chunk_rows)] or [()]
        out: list[Item] = [TxnChunk(p, None, event_time, hold=txn.xa, read_at=at) for p in parts[:-1]]
        stops = tuple((t, reason, stmt) for t, (reason, stmt) in txn.stops.items())
        out.append(TxnChunk(parts[-1], at, event_time, hold=txn.xa, xa_prepared=xa_prepared, stops=stops))
        return out

    def _undo_since(self, txn: _Txn, index: int | None, what: str, statement: str) -> None:
        """Drop the transactional rows held from ``index`` on (None: some were sent already)."""
        start = index if index is not None else 0
        txn.held = txn.held[:start] + [c for c in txn.held[start:] if c.table in self.nontransactional]
        if index is None:
            for table in sorted(txn.sent):
                txn.stops.setdefault(table, (
                    f"{what} undid rows of a transaction larger than the reader holds ({self.hold_rows} rows: "
                    "SOFTCART_CHUNK_ROWS x SOFTCART_QUEUE_CHUNKS), some already applied", statement))

    def _rollback(self, at: Position, event_time: float) -> list[Item]:
        txn = self._open()
        self._undo_since(txn, 0 if not txn.sent else None, "a ROLLBACK", "ROLLBACK")
        txn.xa = False
        return self._end(at, event_time)

    def _savepoint(self, name: str) -> None:
        txn = self._open()
        txn.savepoints = [(n, i) for n, i in txn.savepoints if n != name]
        txn.savepoints.append((name, len(txn.held)))

    def _rollback_to(self, name: str) -> None:
        txn = self._open()
        for k in range(len(txn.savepoints) - 1, -1, -1):
            if txn.savepoints[k][0] == name:
                index = txn.savepoints[k][1]
                del txn.savepoints[k + 1:]
                self._undo_since(txn, index, f"ROLLBACK TO SAVEPOINT {name}", f"ROLLBACK TO {name}")
                return
        # a savepoint we never saw: set before our start position, which is a transaction
        # boundary, so it can't be: nothing to undo

    def _release(self, name: str) -> None:
        txn = self._open()
        for k in range(len(txn.savepoints) - 1, -1, -1):
            if txn.savepoints[k][0] == name:
                del txn.savepoints[k:]
                return

    def _xa(self, verb: str, xid: str, one_phase: bool, at: Position, event_time: float) -> list[Item]:
        if verb in ("START", "BEGIN"):
            self._txn = _Txn(xa=True)
            return []
        if verb == "END":
            self._open().xa = True
            return []
        if verb == "PREPARE":  # a query form of it (the XA_PREPARE event is the usual one)
            return self.xa_prepare(xid, False, at, event_time)
        if verb == "COMMIT" and one_phase:
            return self.xa_prepare(xid, True, at, event_time)
        # XA COMMIT / XA ROLLBACK of a prepared transaction: a group of its own
        self._txn = None
        if verb == "COMMIT":
            skip = tuple(sorted(t for t in self.fences if self.copied(t, at)))
            return [TxnChunk((), at, event_time, xa_commit=xid, xa_skip=skip)]
        return [TxnChunk((), at, event_time, xa_rollback=xid)]

    # Other statements ------------------------------------------------------------------------

    def _statement(self, q: str, default_db: str | None, at: Position, event_time: float) -> list[Item]:
        stmt = classify(q)
        names = ours(stmt, default_db, self.database, self.tables, self.fold_case) if stmt else []
        names = [n for n in names if not self.copied(n, at)]
        if not names:
            # not about our tables: a standalone statement still moves the restart point
            return [] if self._txn is not None else [TxnChunk((), at, event_time)]
        assert stmt is not None
        if stmt.kind == "dml":
            txn = self._open()
            for name in names:
                txn.stops.setdefault(name, (
                    "a statement changed it in STATEMENT binlog format (a session with binlog_format "
                    "STATEMENT or MIXED): its rows are not in the binlog", q[:10000]))
            return []
        # DDL: an implicit commit. Rows before it in the same group (none in the forms servers
        # write) end with it, at its position.
        out: list[Item] = self._end(at, event_time) if self._txn is not None and (
            self._txn.held or self._txn.sent or self._txn.stops) else []
        self._txn = None
        out.append(Ddl(q[:10000], stmt.kind, tuple(names), at, event_time))
        return out

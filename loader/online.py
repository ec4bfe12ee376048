"""Online copies: a table copied in primary-key chunks while the stream goes on, each chunk applied
by the applier through the normal apply path (staging, star deltas, outbox, dead letters) in the
micro-batch that also saves the copy's progress.

The method (a variant of DBLog's watermarks that needs no write on the source): the copier
(cdc/capture/online.py) asks the applier to stop at a transaction boundary (``ChunkGate``), opens a
consistent snapshot on the source, which names its exact binlog position P (MariaDB reports it
without a lock), lets the applier go on, and reads one chunk in that snapshot: the chunk's rows
are the table's rows of its key range *at P*. Everything the applier had taken then ends before P.
The applier applies the chunk at its next transaction boundary (waiting for it only before an item
it can't prove ends by P): its key range in staging becomes the chunk (rows upserted, keys staging
has in the range and the chunk has not deleted). From then on, until the stream passes P, the
changes of transactions that end by P to keys in that range are left out (``Fence``): the chunk
has them already. Changes past P apply on top, as to any row. So a copy goes as fast as chunks
can be read, however far the stream is behind the source. If the applier must go on before the
chunk comes (the copier is slow), the chunk is cancelled and read again.

Left out by the fence only when provable: a slice of a huge transaction (read in several slices,
its end not yet seen) applies as it comes; if it ends by P its rows in the range replay over the
chunk's (full row images), so they show an older state until the stream reaches P, then the
same rows as the source.

Where the source can't name a snapshot's position without a lock (MySQL), or where asked
(``SOFTCART_ONLINE_COPY=signal``), DBLog's own method: the copier writes a low watermark (a row of
``softcart_signal``, a small table of ours on the source), reads the chunk with a plain read,
hands it over and writes a high watermark. The applier, seeing the low watermark in the stream,
notes the keys of the chunk's table that transactions committing after it change (``Window``);
at the high watermark it applies the chunk without those keys (the stream has them, newer), in
the batch that saves the high watermark's position and the copy's progress. A key nobody changed
between the two watermarks had the same row all that time, the chunk's. The copy then goes as
fast as the stream reaches each high watermark.

Key ranges are compared in the same order on both sides (binary collation for text keys,
``transform.fingerprint.range_where``), as the reconcile compares them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import pickle
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from psycopg import sql

from loader.ddl import META, STAGING
from loader.staging import StagingWriter
from transform.changes import deletion
from transform.fingerprint import Dialect, col_of, key_expr, range_where
from transform.model import Op, Position, RowChange, SchemaChange, TxnChunk
from transform.schema import Table
from transform.values import RowConverter, Unrepresentable

log = structlog.get_logger(__name__)

Key = tuple[Any, ...]

SIGNAL_TABLE = "softcart_signal"  # the watermark method's table on the source (cdc/capture/online.py)


@dataclass(frozen=True)
class Chunk:
    """One chunk of a table as the source held it at ``position``: its key range [lo, hi) (None:
    open), the columns it was read with, and its rows as the snapshot reads them."""

    table: str
    position: Position
    columns: tuple[str, ...]
    lo: Key | None  # staging's form of the bounds
    hi: Key | None
    next_source: Key | None  # the source's form of ``hi``: where the next chunk starts
    rows: tuple[tuple[Any, ...], ...]
    watermark: str = ""  # the watermark method's chunk: its watermarks' id ("": read at ``position``)
    started_at: Any = None  # the request of the copy it is part of (online_copy.started_at)


class _State(enum.Enum):
    IDLE = "idle"
    REQUESTED = "requested"  # the copier asks the applier to stop at a transaction boundary
    PAUSED = "paused"  # the applier stopped: the copier opens its snapshot now
    OPEN = "open"  # P known: the applier takes what ends by P while the copier reads the chunk
    READY = "ready"  # the chunk is here
    SIGNALLED = "signalled"  # the watermark method: the copier writes a low watermark, reads, writes a high one


def ends_by(item: TxnChunk | SchemaChange, p: Position) -> bool:
    """Does ``item`` provably end at or before P (so it is in the chunk's snapshot)? A slice
    without its transaction's end does where it was read before P: a transaction's events are
    contiguous in the binlog, and P is a transaction boundary. The rows of an XA PREPARE are not
    (their XA COMMIT comes later, anywhere)."""
    at = item.position if isinstance(item, SchemaChange) else transaction_ends_by(item)
    return at is not None and at.order() <= p.order()


def transaction_ends_by(item: TxnChunk) -> Position | None:
    """A position the transaction of ``item`` is known to end by (None: unknown): its commit,
    or for a slice without one, where it was read (a later boundary is past the whole
    transaction); never for the held rows of an XA PREPARE."""
    if item.commit is not None:
        return item.commit
    return None if item.hold else item.read_at


class ChunkGate:
    """Where the copier and the applier meet, one chunk at a time. The applier calls ``before`` at
    each transaction boundary before taking an item, ``idle`` when the queue had nothing or a
    heartbeat came, and ``applied`` once a chunk it was given is in the open batch."""

    def __init__(self, wait_seconds: float = 10.0, watermarks: bool = False) -> None:
        """``watermarks``: chunks come by the watermark method (the stream carries signal rows)."""
        self._cond = threading.Condition()
        self._state = _State.IDLE
        self._p: Position | None = None
        self._chunk: Chunk | None = None
        self._wait = wait_seconds
        self.watermarks = watermarks
        self._applied = 0  # chunks applied so far (the copier waits for its own)
        self._watermark = ""  # the watermark method: the id of the chunk's watermarks
        self._table = ""  # and its table
        self.closed = False
        self.active = False  # a copier is at work: the applier polls its queue briefly, to answer soon
        self.given_up = ""  # why the last chunk's table can't be copied online (set by cancel)
        self.stale = False  # the last chunk applied was of a copy requested again since: start it again

    @property
    def position(self) -> Position | None:
        """The position of the chunk being handed over (None: none)."""
        return self._p

    # The copier's side ---------------------------------------------------------------------------

    def request(self) -> bool:
        """Ask the applier to stop at a transaction boundary; True once it has."""
        with self._cond:
            self._state = _State.REQUESTED
            self._cond.notify_all()
            if self._cond.wait_for(lambda: self._state is not _State.REQUESTED or self.closed, self._wait) \
                    and self._state is _State.PAUSED:
                return True
            self._state = _State.IDLE
            return False

    def open(self, p: Position) -> None:
        """The snapshot is open at P: the applier may take what ends by P."""
        with self._cond:
            if self._state is _State.PAUSED:
                self._p, self._state = p, _State.OPEN
                self._cond.notify_all()

    def expect(self, watermark: str, table: str) -> None:
        """The watermark method: a low watermark ``watermark`` is about to be written for a chunk
        of ``table``; the applier notes the changes to it from there on."""
        with self._cond:
            self._state, self._chunk, self._p = _State.SIGNALLED, None, None
            self._watermark, self._table = watermark, table
            self._cond.notify_all()

    def deliver(self, chunk: Chunk) -> int | None:
        """Hand the chunk over; returns a ticket for ``wait_applied`` (None: it was cancelled)."""
        with self._cond:
            if chunk.watermark:
                if self._state is not _State.SIGNALLED or self._watermark != chunk.watermark:
                    return None
                self._chunk = chunk
                return self._applied + 1
            if self._state is not _State.OPEN or self._p != chunk.position:
                return None
            self._chunk, self._state = chunk, _State.READY
            self._cond.notify_all()
            return self._applied + 1

    def wait_applied(self, ticket: int, stop: threading.Event) -> bool:
        """Until the applier has applied the chunk of ``ticket`` (False: cancelled, or stopping)."""
        with self._cond:
            while not stop.is_set() and not self.closed:
                if self._applied >= ticket:
                    return True
                if self._state is _State.IDLE:
                    return False  # cancelled: the applier could not wait for it
                self._cond.wait(0.5)
            return False

    def cancel(self, give_up: str = "") -> None:
        """The chunk is given up (the copier's error, or the applier can't take it): the applier
        goes on. ``give_up``: why the table can't be copied online at all (the copier moves on)."""
        with self._cond:
            self._state, self._chunk, self._p, self._watermark = _State.IDLE, None, None, ""
            self.given_up = give_up
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._state, self._chunk = _State.IDLE, None
            self._cond.notify_all()

    # The applier's side --------------------------------------------------------------------------

    def before(self, item: TxnChunk | SchemaChange) -> Chunk | None:
        """At a transaction boundary, before taking ``item``: the chunk to apply first, if it is
        here, or if ``item`` may end past P (then waiting for it while the copier reads it);
        None: take the item."""
        with self._cond:
            self._pause_if_asked()
            if self._state is _State.READY:
                return self._chunk
            if self._state is _State.OPEN:
                assert self._p is not None
                return None if ends_by(item, self._p) else self._take_chunk()
            return None

    def idle(self) -> Chunk | None:
        """The queue had nothing, or a heartbeat came: the chunk, if it is here or being read
        (waiting for it: nothing else to do)."""
        with self._cond:
            self._pause_if_asked()
            if self._state is _State.OPEN:
                return self._take_chunk()
            return self._chunk if self._state is _State.READY else None

    def applied(self, stale: bool = False) -> None:
        """The chunk is in the open batch; ``stale``: its copy was requested again meanwhile."""
        with self._cond:
            self._applied += 1
            self.stale = stale
            self._state, self._chunk, self._p, self._watermark = _State.IDLE, None, None, ""
            self._cond.notify_all()

    def low_watermark(self, watermark: str) -> str | None:
        """The stream brings low watermark ``watermark``: the table whose changes to note from
        here on, if it is the chunk's being read (None: an old one, or another pipeline's)."""
        with self._cond:
            ours = self._state is _State.SIGNALLED and watermark == self._watermark
            return self._table if ours else None

    def high_watermark(self, watermark: str) -> Chunk | None:
        """The stream brings high watermark ``watermark``: its chunk, to apply now (None: not ours,
        or the copier gave it up)."""
        with self._cond:
            if self._state is _State.SIGNALLED and watermark == self._watermark:
                return self._chunk
            return None

    def _pause_if_asked(self) -> None:
        if self._state is _State.REQUESTED:
            self._state = _State.PAUSED
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._state is not _State.PAUSED, self._wait):
                self._state = _State.IDLE  # the copier did not come back: go on without it

    def _take_chunk(self) -> Chunk | None:
        """Wait (bounded) for the chunk being read; on time out it is cancelled."""
        if not self._cond.wait_for(lambda: self._state is not _State.OPEN, self._wait):
            log.warning("online_copy_chunk_cancelled", reason="the chunk did not come in time", seconds=self._wait)
            self._state, self._p = _State.IDLE, None
            self._cond.notify_all()
            return None
        return self._chunk if self._state is _State.READY else None


# Fences -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fence:
    """Chunk ``lo``..``hi`` of ``table`` is in staging as the source had it at ``position``: the
    changes of transactions that end by then, to keys in that range, are in it already."""

    table: str
    position: Position
    lo: Key | None
    hi: Key | None

    def holds(self, key: Key) -> bool:
        """Is ``key`` in the range? Python orders keys as both databases do here (numbers by value,
        text by code point: the binary order the chunks are read in)."""
        return (self.lo is None or key >= self.lo) and (self.hi is None or key < self.hi)


def fenced(changes: tuple[RowChange, ...], fences: list[Fence], key_indexes: Mapping[str, Sequence[int]]
           ) -> tuple[RowChange, ...]:
    """``changes`` (of one transaction that ends by every fence's position) without what the
    fenced chunks hold already. A primary-key change is a delete and an insert, each judged by its
    own key; a change that could not be converted (a dead letter) stays."""
    out: list[RowChange] = []
    for ch in changes:
        mine = [f for f in fences if f.table == ch.table]
        if not mine or ch.error is not None:
            out.append(ch)
            continue
        idx = key_indexes[ch.table]

        def inside(row: tuple[Any, ...] | None, fs: list[Fence] = mine, ix: Sequence[int] = idx) -> bool:
            return row is not None and any(f.holds(tuple(row[i] for i in ix)) for f in fs)

        if ch.op is Op.UPDATE and ch.before is not None and ch.after is not None \
                and [ch.before[i] for i in idx] != [ch.after[i] for i in idx]:
            if not inside(ch.before):
                out.append(RowChange(ch.table, Op.DELETE, ch.before, None))
            if not inside(ch.after):
                out.append(RowChange(ch.table, Op.INSERT, None, ch.after, absent=ch.absent))
        elif not inside(ch.after if ch.op is Op.INSERT else ch.before):
            out.append(ch)
    return tuple(out)


def fenced_item(item: TxnChunk, fences: list[Fence], key_indexes: Mapping[str, Sequence[int]]) -> TxnChunk:
    """``item`` (its transaction ends by every fence's position: :func:`transaction_ends_by`)
    without what the fenced chunks hold. A slice is judged by where it was read (its transaction
    ends by any later boundary); the rows of an XA PREPARE are held, not applied: they are judged
    when applied, at their XA COMMIT (its own position may be past a chunk's that does not have
    them)."""
    if item.hold or transaction_ends_by(item) is None or not item.changes or not fences:
        return item
    return dataclasses.replace(item, changes=fenced(item.changes, fences, key_indexes))


# The watermark method -----------------------------------------------------------------------------

SIGNAL_COLUMNS = ("pipeline", "kind", "watermark", "written_at")  # softcart_signal's, in this order


@dataclass
class Window:
    """Between a chunk's low and high watermarks: the keys of its table that transactions
    committing there change (the stream brings them newer than the chunk may have them)."""

    table: str
    watermark: str
    key_indexes: Sequence[int]
    keys: set[Key] = dataclasses.field(default_factory=set)

    def note(self, changes: Sequence[RowChange]) -> None:
        idx = self.key_indexes
        for ch in changes:
            if ch.table == self.table:
                for row in (ch.before, ch.after):
                    if row is not None:
                        self.keys.add(tuple(row[i] for i in idx))


def watermarks(item: TxnChunk, pipeline: str) -> tuple[TxnChunk, list[tuple[str, str]]]:
    """``item`` without its rows of the signal table, and the watermarks of ``pipeline`` among them
    (kind, id), in order."""
    if not any(ch.table == SIGNAL_TABLE for ch in item.changes):
        return item, []
    marks = [(str(ch.after[1]), str(ch.after[2])) for ch in item.changes
             if ch.table == SIGNAL_TABLE and ch.after is not None and ch.error is None and ch.after[0] == pipeline]
    rest = tuple(ch for ch in item.changes if ch.table != SIGNAL_TABLE)
    return dataclasses.replace(item, changes=rest), marks


# Applying a chunk ---------------------------------------------------------------------------------

def key_part(table: Table) -> Table:
    """The table's primary-key columns alone (to convert a key)."""
    return Table(table.name, tuple(table.column(k) for k in table.primary_key), table.primary_key)


def staged_keys(writer: StagingWriter, table: Table, lo: Key | None, hi: Key | None) -> list[Key]:
    """The keys staging holds in [lo, hi), in the order both sides agree on."""
    cols = [col_of(table.column(k)) for k in table.primary_key]
    where, params = range_where(cols, lo, hi, Dialect.POSTGRES)
    text = sql.SQL("SELECT {} FROM {}.{} WHERE " + where).format(
        sql.SQL(", ").join(sql.Identifier(k) for k in table.primary_key), sql.Identifier(STAGING),
        sql.Identifier(table.name))
    return [tuple(r) for r in writer.conn.execute(text, params).fetchall()]


def refusal(writer: StagingWriter, chunk: Chunk) -> tuple[str, bool] | None:
    """Why the applier can't take the chunk (and whether for good), or None."""
    table = writer.tables.get(chunk.table)
    if table is None or chunk.table in writer.stopped:
        return (f"{chunk.table} is stopped ({writer.stopped.get(chunk.table, 'not followed')}): stop the daemon and"
                " run `softcart-sync resnapshot` to take it again", True)
    if table.column_names != chunk.columns:
        return "staging follows another definition of the table now: read again", False
    return None


def apply_chunk(writer: StagingWriter, chunk: Chunk, pipeline: str, skip: Collection[Key] = ()) -> tuple[int, bool]:
    """The chunk into the open transaction (``refusal`` said none): its key range in staging made
    equal to it, but for the keys in ``skip`` (the stream has them newer), and the copy's progress
    saved. Returns the rows changed, and whether the copy was requested again since it began (its
    rows are right all the same; its progress is not saved: the new request starts over)."""
    table = writer.tables[chunk.table]
    conv, key_conv = RowConverter(table), RowConverter(key_part(table))
    picks = table.key_indexes()
    changes: list[RowChange] = []
    present: set[Key] = set(skip)
    for raw in chunk.rows:
        try:
            row = conv.from_snapshot(raw)
        except Unrepresentable as exc:
            with_key = [raw[i] for i in picks]
            with contextlib.suppress(Unrepresentable):  # its old row stays, as in a snapshot
                key = tuple(key_conv.from_snapshot(with_key))
                if key in skip:
                    continue
                present.add(key)
            writer.dead_letter(table.name, with_key, str(exc), repr(raw)[:10000])
            continue
        key = tuple(row[i] for i in picks)
        if key not in skip:
            present.add(key)
            changes.append(RowChange(table.name, Op.INSERT, None, row))
    # staging has it, the source had not: gone while we did not follow
    changes += [deletion(table, key) for key in staged_keys(writer, table, chunk.lo, chunk.hi) if key not in present]
    applied = writer.apply(changes)
    saved = writer.conn.execute(
        sql.SQL("UPDATE {}.online_copy SET next_key = %s, rows_copied = rows_copied + %s, chunks = chunks + 1,"
                " finished_at = CASE WHEN %s THEN now() END WHERE pipeline = %s AND source_table = %s"
                " AND started_at IS NOT DISTINCT FROM coalesce(%s, started_at) RETURNING rebuild_star")
        .format(sql.Identifier(META)),
        (None if chunk.hi is None else pickle.dumps((chunk.next_source, chunk.hi)), len(chunk.rows),
         chunk.hi is None, pipeline, chunk.table, chunk.started_at)).fetchone()
    if saved is None:
        return applied, True
    if chunk.hi is None:
        _finished(writer, chunk.table, pipeline, rebuild_star=bool(saved[0]))
    return applied, False


def _finished(writer: StagingWriter, table: str, pipeline: str, rebuild_star: bool) -> None:
    """The copy's last chunk is in: the table's copy record says how many rows it took; a star
    schema built from a staging table made anew is rebuilt (rows gone while it was stopped)."""
    writer.conn.execute(sql.SQL("UPDATE {0}.snapshot s SET rows_copied = c.rows_copied, finished_at = now()"
                                " FROM {0}.online_copy c WHERE s.pipeline = %s AND s.source_table = %s"
                                " AND c.pipeline = s.pipeline AND c.source_table = s.source_table")
                        .format(sql.Identifier(META)), (pipeline, table))
    star = writer.star
    if rebuild_star and star is not None and star.table.name == table:
        built = star.rebuild(writer.conn)
        log.info("star_schema_rebuilt", table=table, facts=built.facts, reason="its table was copied anew")


def order_by(table: Table, dialect: Dialect) -> str:
    """The key order both sides agree on (binary for text keys)."""
    return ", ".join(key_expr(col_of(table.column(k)), dialect) for k in table.primary_key)

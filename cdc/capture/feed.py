"""The binlog source feeding the writer, as a thread or (``SOFTCART_READER=process``) in a process
of its own, so decoding runs on one core and the writer on another.

Python runs one thread at a time per process: with the reader as a thread, decoding and the
writer's work (net changes, star deltas, COPY) take turns. Either way the reader runs
:class:`cdc.capture.source.BinlogSource` and hands items back through a bounded queue:

- a reader thread puts each item in a local buffer (it waits while the buffer holds
  ``SOFTCART_CHUNK_ROWS`` rows), a sender thread ships what has gathered, up to that many rows, as
  one message; the queue holds ``SOFTCART_QUEUE_CHUNKS`` messages, so memory stays bounded as with
  slices. While the writer is busy, messages fill up, so a backlog crosses in few, large pickles;
  when it keeps up, an item goes alone and at once.
- an error in the child (source lost, fatal) arrives as a message and is raised by :meth:`get`,
  after every item read before it.
- a child process dies with the parent (``PR_SET_PDEATHSIG``): a SIGKILLed daemon leaves no
  reader holding its replica slot.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import multiprocessing
import multiprocessing.context
import os
import queue
import signal
import threading
from dataclasses import dataclass
from typing import Any

import structlog

from cdc.capture.flavor import Flavor
from cdc.settings import Settings
from transform.errors import TransientError
from transform.model import Heartbeat, Position, SchemaChange, TxnChunk
from transform.schema import Table

Item = TxnChunk | Heartbeat | SchemaChange
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class SourceFeed:
    """Items of the binlog source, read by a thread or a child process, in order (``get``, ``empty``)."""

    def __init__(self, settings: Settings, tables: dict[str, Table], flavor: Flavor, start: Position,
                 fences: dict[str, Position] | None = None, signal: Table | None = None) -> None:
        """``signal``: the online copies' watermark table, whose rows are read too (loader/online.py)."""
        self._local: collections.deque[Item] = collections.deque()
        self._failed: BaseException | None = None
        args = (settings, tables, flavor, start, dict(fences or {}), signal)
        capacity = settings.chunk_rows  # rows gathered before the queue (its messages hold the rest)
        self._in_process = settings.reader == "process"
        if self._in_process:
            ctx = _context()
            self._messages: Any = ctx.Queue(maxsize=settings.queue_chunks)
            self._stop: Any = ctx.Event()
            self._proc: Any = ctx.Process(target=_child, name="softcart-sync binlog reader", daemon=True,
                                          args=(*args, self._messages, self._stop, capacity, True))
        else:
            self._messages = queue.Queue(maxsize=settings.queue_chunks)
            self._stop = threading.Event()
            self._proc = threading.Thread(target=_child, name="binlog-reader", daemon=True,
                                          args=(*args, self._messages, self._stop, capacity, False))

    def start(self) -> None:
        self._proc.start()

    def get(self, timeout: float) -> Item:
        """The next item; ``queue.Empty`` after ``timeout`` seconds without one; the child's error
        once every item before it was taken."""
        if not self._local:
            if self._failed is not None:
                raise self._failed
            message = self._messages.get(timeout=timeout)
            if isinstance(message, _Failed):
                self._failed = message.error
                raise message.error
            self._local.extend(message)
        return self._local.popleft()

    def empty(self) -> bool:
        return not self._local and bool(self._messages.empty())

    def qsize(self) -> int:
        """Items waiting here plus messages waiting in the pipe (each one or more items)."""
        with contextlib.suppress(NotImplementedError):
            return len(self._local) + int(self._messages.qsize())
        return len(self._local)

    def alive(self) -> bool:
        return bool(self._proc.is_alive())

    def close(self, timeout: float = 5.0) -> None:
        """Stop the child: it holds no state worth keeping (positions are the writer's)."""
        self._stop.set()
        if not self._in_process:
            if self._proc.ident is not None:
                self._proc.join(timeout)
            return
        if self._proc.pid is None:
            return
        self._proc.join(min(timeout, 0.5))
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout)
        self._messages.cancel_join_thread()  # what the child left in the pipe is of no use now
        self._messages.close()


def _context() -> multiprocessing.context.ForkServerContext:
    """A forkserver: the daemon has threads, so no plain fork of it; a fresh interpreter per
    restart (spawn) costs ~1 s of imports. The fork server starts once, imports the reader's
    modules, and forks a child per stream in milliseconds."""
    ctx = multiprocessing.get_context("forkserver")
    assert isinstance(ctx, multiprocessing.context.ForkServerContext)
    ctx.set_forkserver_preload(["cdc.capture.feed", "cdc.capture.source", "cdc.logs"])
    return ctx


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _child(settings: Settings, tables: dict[str, Table], flavor: Flavor, start: Position, fences: dict[str, Position],
           signal: Table | None, messages: Any, stop: Any, chunk_rows: int, own_process: bool) -> None:
    from cdc.capture import fast_events
    from cdc.capture.source import BinlogSource

    if own_process:
        _die_with_parent()
        if os.getppid() == 1:  # the parent died before the line above
            return
        from cdc import logs

        logs.configure(settings.log_level, settings.log_format)
    structlog.contextvars.bind_contextvars(position=str(start), reader="binlog-reader")
    handoff = _Handoff(messages, stop, chunk_rows)
    ship = threading.Thread(target=handoff.send_all, name="binlog-sender", daemon=True)
    ship.start()
    fast = settings.binlog_decoding == "fast"
    fast_events.fast_events = fast  # the process's one reader: its events, fast or the library's
    source = BinlogSource(settings, tables, flavor, start, fast_decode=fast, fences=fences, signal=signal)
    try:
        for item in source.chunks(handoff.local_stop):
            handoff.put(item)
            if stop.is_set() or handoff.local_stop.is_set():
                break
    except BaseException as exc:  # noqa: BLE001 - handed to the parent
        handoff.error = exc if _picklable(exc) else TransientError(f"binlog reader failed: {exc}")
    finally:
        handoff.finish()
        ship.join()
        source.close()


class _Handoff:
    """From the reading loop to the thread that ships its items to the parent: a buffer bounded in
    rows (``chunk_rows``), so the reader reads on while a message is sent, and no further."""

    def __init__(self, messages: Any, stop: Any, chunk_rows: int) -> None:
        self.messages, self.stop, self.chunk_rows = messages, stop, chunk_rows
        self.buffer: collections.deque[Item] = collections.deque()
        self.cond = threading.Condition()
        self.rows = 0
        self.done = False
        self.error: BaseException | None = None
        self.local_stop = threading.Event()

    def put(self, item: Item) -> None:
        """Buffer ``item``, waiting while the buffer holds ``chunk_rows`` rows."""
        with self.cond:
            while self.rows >= self.chunk_rows and not self.local_stop.is_set():
                self.cond.wait(0.5)
                if self.stop.is_set():
                    self.local_stop.set()
            self.buffer.append(item)
            self.rows += _rows(item)
            self.cond.notify_all()

    def finish(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def send_all(self) -> None:
        """Ship the buffer as messages until the reader is done (then its error, if any) or ``stop``."""
        while True:
            batch = self._take()
            if batch is None:
                self.local_stop.set()
                return
            if batch and not _put(self.messages, batch, self.stop):
                self.local_stop.set()
                return
            if not batch and self.done:
                if self.error is not None:
                    _put(self.messages, _Failed(self.error), self.stop)
                return

    def _take(self) -> list[Item] | None:
        """The next message's items (empty: the reader is done); None: stopped while waiting."""
        with self.cond:
            while not self.buffer and not self.done:
                self.cond.wait(0.5)
                if self.stop.is_set():
                    return None
            # One message holds at most chunk_rows rows (or one bigger slice): the queue's bound in
            # messages stays a bound in rows, as it was in slices.
            batch: list[Item] = []
            rows = 0
            while self.buffer and (not batch or rows + _rows(self.buffer[0]) <= self.chunk_rows):
                item = self.buffer.popleft()
                batch.append(item)
                rows += _rows(item)
            self.rows -= rows
            self.cond.notify_all()
            return batch


def _rows(item: Item) -> int:
    return item.rows if isinstance(item, TxnChunk) else 1


def _put(messages: Any, message: list[Item] | _Failed, stop: Any) -> bool:
    while not stop.is_set():
        try:
            messages.put(message, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _picklable(exc: BaseException) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own object, round-tripped
    except Exception:  # noqa: BLE001 - any failure means: send a plain error instead
        return False
    return True

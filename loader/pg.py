"""Connections to PostgreSQL (staging); failures become our errors, named and without secrets."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from transform.errors import ConfigError, TransientError
from transform.model import StagingConfig

#: This process's connections say who they are: a session of ours left behind by a network that
#: went silent can be told apart from another daemon's (see cdc.pipeline.hold_pipeline_lock).
INSTANCE = f"softcart-sync {socket.gethostname()[:30]}:{os.getpid()}"
#: Dates and timestamps as text in ISO, whatever the server's DateStyle: psycopg parses nothing
#: else, and the warehouse batches' CSV (written by COPY) must not depend on the server.
ISO_DATES = "-c DateStyle=ISO,YMD"


def cut(conn: psycopg.Connection[Any]) -> None:
    """Shut a connection's socket from another thread: the call blocked on it fails at once. For a
    network that acknowledges but never delivers (a middlebox, a stopped peer), which defeats
    keepalives and TCP's own timeouts."""
    with contextlib.suppress(OSError, psycopg.Error):
        sock = socket.fromfd(conn.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM)
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def pg_connect(config: StagingConfig, *, autocommit: bool = False) -> psycopg.Connection[tuple[Any, ...]]:
    ep = config.endpoint
    try:
        return psycopg.connect(
            host=ep.host, port=ep.port, user=ep.user, password=ep.password.get_secret_value() or None,
            dbname=ep.database, connect_timeout=max(1, int(config.connect_timeout_seconds)),
            autocommit=autocommit, application_name=INSTANCE, options=ISO_DATES,
            # A network that goes silent is an error after about SOFTCART_READ_TIMEOUT_SECONDS, not a hang.
            keepalives=1, keepalives_idle=max(1, int(config.read_timeout_seconds / 2)), keepalives_interval=2,
            keepalives_count=3, tcp_user_timeout=int(config.read_timeout_seconds * 1000),
            sslmode=config.tls, sslrootcert=str(config.tls_ca or "") or None)
    except psycopg.OperationalError as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else "connection failed"
        if "certificate verify failed" in message or "root certificate file" in message:
            raise ConfigError(f"staging {ep.display}: its TLS certificate is not trusted ({message}); check "
                              "SOFTCART_STAGING_TLS_CA, or SOFTCART_STAGING_TLS if the host name differs") from None
        if "server does not support SSL" in message:
            raise ConfigError(f"staging {ep.display} does not offer TLS, but SOFTCART_STAGING_TLS="
                              f"{config.tls}: enable ssl on the server, or lower the setting") from None
        if "password authentication failed" in message or "no password supplied" in message:
            raise ConfigError(f"staging {ep.display}: authentication failed; check SOFTCART_STAGING_PASSWORD "
                              "(or SOFTCART_STAGING_PASSWORD_FILE)") from None
        if "does not exist" in message:
            raise ConfigError(f"staging {ep.display}: {message}; fix SOFTCART_STAGING_URL") from None
        full = str(exc)
        if "invalid response to SSL negotiation" in full or "received invalid response" in full \
                or "server closed the connection unexpectedly" in full:
            raise TransientError(f"staging {ep.display}: the server there does not speak PostgreSQL's protocol (is it"
                                 " MySQL/MariaDB?); check the host and port in SOFTCART_STAGING_URL") from None
        for reason in ("Connection refused", "could not translate host name", "failed to resolve host",
                       "timeout expired", "No route to host"):
            if reason in full:
                raise TransientError(f"staging {ep.display}: can't connect ({reason}); check the host and port in "
                                     "SOFTCART_STAGING_URL and that the server is up") from None
        raise TransientError(f"staging {ep.display}: {message}") from None


@dataclass(frozen=True)
class LockHolder:
    """A session holding one of our advisory locks (pg_stat_activity's view of it)."""

    pid: int
    application: str
    client: str
    state: str
    since: dt.datetime | None
    query: str

    def __str__(self) -> str:
        since = f" since {self.since:%Y-%m-%d %H:%M:%S}" if self.since else ""
        return (f"pid {self.pid} ({self.application or 'no application name'} from {self.client or 'a local socket'},"
                f" {self.state}{since})")


def lock_holders(conn: psycopg.Connection[Any], key_sql: str, params: tuple[Any, ...]) -> list[LockHolder]:
    """The sessions holding the advisory lock of key ``key_sql`` (a bigint SQL expression with
    ``params``) in this database."""
    rows = conn.execute(
        "SELECT a.pid, a.application_name, host(a.client_addr), a.state, a.state_change, left(a.query, 200)"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
        " AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        f" AND ((l.classid::bigint << 32) | l.objid::bigint) = (({key_sql})::bigint & x'ffffffffffffffff'::bigint)",
        params).fetchall()
    return [LockHolder(int(r[0]), str(r[1] or ""), str(r[2] or ""), str(r[3] or ""), r[4], str(r[5] or ""))
            for r in rows]


def holders_text(holders: list[LockHolder]) -> str:
    """Who holds it, and how an operator ends a session that is stuck."""
    if not holders:
        return "a session that has let it go since"
    return "; ".join(map(str, holders)) + f"; if it is stuck, end it: SELECT pg_terminate_backend({holders[0].pid})"


@contextlib.contextmanager
def lock_wait_limit(conn: psycopg.Connection[Any], seconds: float, *, in_transaction: bool) -> Iterator[None]:
    """Lock waits inside are limited to ``seconds`` (``lock_timeout``: a wait past it raises
    LockNotAvailable), for the open transaction only or for the session; the limit is lifted after
    unless the failed wait left the transaction aborted (its end lifts a transaction's limit)."""
    conn.execute("SELECT set_config('lock_timeout', %s, %s)", (f"{int(seconds * 1000)}ms", in_transaction))
    try:
        yield
    finally:
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            conn.execute("SELECT set_config('lock_timeout', '0', %s)", (in_transaction,))


class ReplyGuard:
    """Cuts a connection when one call on it outlasts ``seconds`` by our own clock. A stopped
    server enforces no statement_timeout, and its kernel still acknowledges, so keepalives and
    TCP's own timeouts never fire: a session of ours waited for the whole outage (#36 item 2).
    Attached by :func:`guard_replies`; calls made through the connection's cursors are watched,
    a COPY's clock restarts with each chunk (:func:`fed`)."""

    def __init__(self, conn: psycopg.Connection[Any], seconds: float) -> None:
        self.conn, self.seconds = conn, seconds
        self.fired = False
        self._since = 0.0
        threading.Thread(target=self._watch, name="staging-reply-guard", daemon=True).start()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        self._since = time.monotonic()
        try:
            yield
        finally:
            self._since = 0.0

    def feed(self) -> None:
        if self._since:
            self._since = time.monotonic()

    def _watch(self) -> None:
        while not self.conn.closed:
            time.sleep(0.25)
            since = self._since
            if since and time.monotonic() - since > self.seconds:
                self.fired, self._since = True, 0.0
                cut(self.conn)


_guards: weakref.WeakKeyDictionary[psycopg.Connection[Any], ReplyGuard] = weakref.WeakKeyDictionary()


class _GuardedCursor(psycopg.Cursor[Any]):
    """A cursor whose statements and COPYs are watched by its connection's :class:`ReplyGuard`."""

    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                binary: bool | None = None) -> _GuardedCursor:
        guard = _guards.get(self.connection)
        if guard is None:
            return super().execute(query, params, prepare=prepare, binary=binary)
        with guard.watching():
            return super().execute(query, params, prepare=prepare, binary=binary)

    @contextlib.contextmanager
    def copy(self, statement: Any, params: Any = None, *, writer: Any = None) -> Iterator[Any]:
        guard = _guards.get(self.connection)
        with contextlib.ExitStack() as stack:
            if guard is not None:
                stack.enter_context(guard.watching())
            yield stack.enter_context(super().copy(statement, params, writer=writer))


def guard_replies(conn: psycopg.Connection[Any], seconds: float) -> ReplyGuard:
    """Watch every call on ``conn`` (see :class:`ReplyGuard`); the guard ends with the connection."""
    guard = _guards[conn] = ReplyGuard(conn, seconds)
    conn.cursor_factory = _GuardedCursor
    return guard


def fed(conn: psycopg.Connection[Any]) -> None:
    """A reply came (a COPY's chunk): the guard's clock, if ``conn`` has one, starts again."""
    guard = _guards.get(conn)
    if guard is not None:
        guard.feed()

"""Connections to the source and what we read from its catalog."""

from __future__ import annotations

import ssl
from typing import Any

import pymysql
import pymysql.cursors

from cdc.capture.flavor import Flavor, mysql_gtid_advance, mysql_gtid_normal
from cdc.capture.positions import SourceFacts, mariadb_gtid_contains
from cdc.settings import Settings
from transform.errors import ConfigError, FatalError, Kind, TableGone, TableUnusable, TransientError, mysql_kind
from transform.model import Endpoint, Position
from transform.schema import Column, Table, UnsupportedType, pg_type
from transform.star import DayZone, wall_zone


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context SOFTCART_SOURCE_TLS asks for; None for disabled and preferred (pymysql's
    own default tries TLS and goes on without it)."""
    mode = settings.source_tls
    if mode in ("disabled", "preferred"):
        return None
    ctx = ssl.create_default_context(cafile=str(settings.source_tls_ca) if settings.source_tls_ca else None)
    ctx.check_hostname = mode == "verify-identity"
    if not mode.startswith("verify"):
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def connection_settings(settings: Settings, *, read_timeout: float | None = None) -> dict[str, Any]:
    ep: Endpoint = settings.source
    params: dict[str, Any] = {
        "host": ep.host, "port": ep.port, "user": ep.user, "passwd": ep.password.get_secret_value(),
        "connect_timeout": int(max(1, settings.connect_timeout_seconds)),
        "read_timeout": int(max(1, read_timeout or settings.read_timeout_seconds)),
        "charset": "utf8mb4",
    }
    ctx = tls_context(settings)
    if ctx is not None:
        params["ssl"] = ctx  # pymysql then refuses a server without TLS (error 2026)
    elif settings.source_tls == "disabled":
        params["ssl_disabled"] = True
    return params


def require_tls(conn: pymysql.connections.Connection, settings: Settings) -> None:
    """pymysql goes on in clear text when the server offers no TLS: refuse that unless allowed."""
    if settings.source_tls in ("disabled", "preferred"):
        return
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        row = cur.fetchone()
    if not row or not row[1]:
        conn.close()
        raise ConfigError(f"source {settings.source.display} does not offer TLS, but SOFTCART_SOURCE_TLS="
                          f"{settings.source_tls}: enable TLS on the server, or lower the setting")


def connect(settings: Settings, *, database: bool = True, **extra: Any) -> pymysql.connections.Connection:
    """A pymysql connection to the source; errors become ours, named and without the password."""
    params = connection_settings(settings)
    params["password"] = params.pop("passwd")
    if database:
        params["database"] = settings.source.database
    params.update(extra)
    try:
        conn = pymysql.connect(autocommit=True, **params)
    except pymysql.err.OperationalError as exc:
        if exc.args and exc.args[0] == 2013:  # connected, but no MySQL greeting came
            raise TransientError(f"source {settings.source.display}: the server there sent no MySQL/MariaDB greeting"
                                 f" within {params['connect_timeout']} s (SOFTCART_CONNECT_TIMEOUT_SECONDS): it is"
                                 " stopped or overloaded, or another kind of server (e.g. PostgreSQL); check the"
                                 " host and port in SOFTCART_SOURCE_URL") from None
        raise classify(exc, settings) from None
    require_tls(conn, settings)
    with conn.cursor() as cur:
        cur.execute("SET SESSION time_zone = '+00:00'")
        # Our own isolation, whatever the server's default: under a global READ UNCOMMITTED a chunk
        # read or a fill would copy a change later rolled back (a rollback writes no binlog).
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    return conn


def classify(exc: pymysql.err.MySQLError, settings: Settings) -> Exception:
    code = exc.args[0] if exc.args else 0
    message = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    where = settings.source.display
    if code == 1045:
        return ConfigError(f"source {where}: access denied; check the user and SOFTCART_SOURCE_PASSWORD "
                           "(or SOFTCART_SOURCE_PASSWORD_FILE)")
    if code == 2026:
        return ConfigError(f"source {where} does not offer TLS, but SOFTCART_SOURCE_TLS={settings.source_tls}: "
                           "enable TLS on the server, or lower the setting")
    if "CERTIFICATE_VERIFY_FAILED" in message or "certificate verify failed" in message:
        return ConfigError(f"source {where}: its TLS certificate is not trusted ({_ssl_reason(message)}); check "
                           "SOFTCART_SOURCE_TLS_CA, or SOFTCART_SOURCE_TLS if the host name differs")
    if code == 1049:
        return ConfigError(f"source {where}: unknown database; fix the database in SOFTCART_SOURCE_URL")
    if code in (2003, 2005):
        return TransientError(f"source {where}: can't connect ({message}); check the host and port in "
                              "SOFTCART_SOURCE_URL and that the server is up")
    if mysql_kind(code) is Kind.TRANSIENT:
        return TransientError(f"source {where}: {message} (code {code})")
    return FatalError(f"source {where}: {message} (code {code})")


def flavor(conn: pymysql.connections.Connection) -> Flavor:
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        row = cur.fetchone()
    if row is None:
        raise FatalError("the source did not answer SELECT VERSION()")
    return Flavor.from_version(str(row[0]))


def read_table(conn: pymysql.connections.Connection, database: str, name: str) -> Table:
    """The table's columns and primary key from INFORMATION_SCHEMA; refuses a table without one."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, NUMERIC_PRECISION, NUMERIC_SCALE,"
            " DATETIME_PRECISION, CHARACTER_MAXIMUM_LENGTH, CHARACTER_SET_NAME"
            " FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s"
            " ORDER BY ORDINAL_POSITION", (database, name))
        rows = cur.fetchall()
        if not rows:
            raise TableGone(f"source table {database}.{name} does not exist "
                             "(check SOFTCART_SOURCE_TABLES and the database in SOFTCART_SOURCE_URL)")
        cur.execute(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = %s"
            " AND TABLE_NAME = %s AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
            (database, name))
        pk = tuple(str(r[0]) for r in cur.fetchall())
    columns = tuple(
        Column(name=str(r[0]), data_type=str(r[1]).lower(), column_type=str(r[2]),
               nullable=r[3] == "YES", precision=_int(r[4]), scale=_int(r[5]), fsp=_int(r[6]),
               char_length=_int(r[7]), charset=r[8])
        for r in rows)
    if not pk:
        raise TableUnusable(f"source table {database}.{name} has no primary key; softcart-sync needs one "
                         f"to apply updates and deletes (ALTER TABLE {name} ADD PRIMARY KEY (...))")
    table = Table(name=name, columns=columns, primary_key=pk)
    for col in columns:
        try:
            pg_type(col)
        except UnsupportedType as exc:
            raise TableUnusable(f"source table {database}.{name}: {exc}") from None
    return table


def nontransactional_tables(conn: pymysql.connections.Connection, database: str) -> set[str]:
    """Tables of ``database`` whose engine has no transactions (MyISAM, Aria, MEMORY...): their
    rows stay changed when a transaction around them rolls back."""
    with conn.cursor() as cur:
        cur.execute("SELECT t.TABLE_NAME FROM information_schema.TABLES t JOIN information_schema.ENGINES e"
                    " ON e.ENGINE = t.ENGINE WHERE t.TABLE_SCHEMA = %s AND e.TRANSACTIONS <> 'YES'", (database,))
        return {str(r[0]) for r in cur.fetchall()}


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def binary_logs(conn: pymysql.connections.Connection) -> list[tuple[str, int]]:
    """SHOW BINARY LOGS: (file name, size) oldest first."""
    with conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        return [(str(r[0]), int(r[1])) for r in cur.fetchall()]


def source_facts(conn: pymysql.connections.Connection, settings: Settings, flavor: Flavor,
                 saved: Position | None) -> SourceFacts:
    """Who the server is (server_id, MySQL's server_uuid), whether its binlog holds every
    transaction of the saved position's GTID state, and (MariaDB) its GTID state at the saved
    file and offset."""
    saved_gtid = saved.gtid if saved is not None else ""
    at_saved: str | None = None
    with conn.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.server_id" + ("" if flavor.mariadb else ", @@GLOBAL.server_uuid"))
        row = cur.fetchone() or (0, "")
        server_id, uuid = int(row[0]), (str(row[1]) if not flavor.mariadb and row[1] else "")
        has: bool | None = None
        if saved_gtid:
            if flavor.mariadb:
                cur.execute(flavor.gtid_sql)
                state = cur.fetchone()
                has = mariadb_gtid_contains(str(state[0] or "") if state else "", saved_gtid)
                assert saved is not None
                sizes = dict(binary_logs(conn))
                if saved.file in sizes and saved.pos <= sizes[saved.file]:
                    cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (saved.file, saved.pos))
                    got = cur.fetchone()
                    at_saved = str(got[0] or "") if got else ""
            else:
                cur.execute("SELECT GTID_SUBSET(%s, @@GLOBAL.gtid_executed)", (saved_gtid,))
                subset = cur.fetchone()
                has = bool(subset and int(subset[0]))
                assert saved is not None
                sizes = dict(binary_logs(conn))
                if saved.file in sizes and saved.pos <= sizes[saved.file]:
                    at_saved = mysql_gtid_at(conn, saved.file, saved.pos)
    return SourceFacts(server_id, uuid, f"{settings.source.host}:{settings.source.port}", has, at_saved)


#: SHOW BINLOG EVENTS rows asked at a time
_EVENTS_PAGE = 5000


def mysql_gtid_at(conn: pymysql.connections.Connection, file: str, pos: int) -> str:
    """MySQL's GTID set executed at ``file``:``pos`` of its binary log: the file's Previous_gtids
    and the GTID of each transaction before ``pos``; '' where ``pos`` is no event boundary. What
    MariaDB's BINLOG_GTID_POS() answers, read with SHOW BINLOG EVENTS (the file's events up to
    ``pos``, a page at a time). On the server a position was read from it is the GTID state saved
    with it; after RESET BINARY LOGS AND GTIDS (or a restore) the same file name and offset hold
    another history, whose GTIDs may well be a superset of the saved ones."""
    state, start = "", 4
    with conn.cursor() as cur:
        while start < pos:
            cur.execute("SHOW BINLOG EVENTS IN %s FROM %s LIMIT %s", (file, start, _EVENTS_PAGE))
            rows = cur.fetchall()
            if not rows:
                return ""
            for _name, at, kind, _server, end, info in rows:
                if int(at) >= pos:
                    return state if int(at) == pos else ""
                text = str(info or "")
                if str(kind).startswith("Previous_gtids"):
                    state = mysql_gtid_normal(text)
                elif text.startswith("SET @@SESSION.GTID_NEXT=") and "ANONYMOUS" not in text:
                    state = mysql_gtid_advance(state, text.split("'")[1])
                start = int(end)
    return state if start == pos else ""


def day_zone(settings: Settings) -> DayZone:
    """How a sale's timestamp becomes its date: the business zone, and the zone the source's
    DATETIMEs are written in (SOFTCART_SOURCE_DATETIME_ZONE; ``source``: read from the server)."""
    if settings.source_datetime_zone != "source":
        return DayZone(settings.zone, wall_zone(settings.source_datetime_zone))
    conn = connect(settings, database=False)
    try:
        found = server_variables(conn, ["time_zone", "system_time_zone"])
    finally:
        conn.close()
    return DayZone(settings.zone, wall_zone("source", found.get("time_zone", ""), found.get("system_time_zone", "")))


def server_variables(conn: pymysql.connections.Connection, names: list[str]) -> dict[str, str]:
    with conn.cursor() as cur:
        cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN (" + ",".join(["%s"] * len(names)) + ")",
                    names)
        return {str(k).lower(): str(v) for k, v in cur.fetchall()}


def _ssl_reason(message: str) -> str:
    start = message.find("certificate verify failed")
    start = start if start >= 0 else message.find("CERTIFICATE_VERIFY_FAILED")
    return message[start:].split(")")[0].strip()


def report_name(settings: Settings) -> str:
    """The host name the daemon registers under in SHOW SLAVE HOSTS."""
    return f"softcart-sync-{settings.pipeline_name}"[:60]


#: the user may not list replicas (MariaDB wants REPLICATION MASTER ADMIN, MySQL REPLICATION SLAVE)
_NOT_ALLOWED = (1227, 1142, 1044, 1045)


def replicas_with_id(conn: pymysql.connections.Connection, server_id: int) -> list[str] | None:
    """Registered replicas (SHOW SLAVE HOSTS; MySQL 8.0.22+: SHOW REPLICAS) using ``server_id``,
    as host:port; None when the user may not ask. Any other error is raised: a statement the
    server doesn't know (MySQL 8.4 removed SHOW SLAVE HOSTS) must not pass for "no clash"."""
    statement = flavor(conn).replica_hosts_sql
    try:
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(statement)
            rows = [{str(k).lower(): v for k, v in r.items()} for r in cur.fetchall()]
    except pymysql.err.MySQLError as exc:
        if exc.args and exc.args[0] in _NOT_ALLOWED:
            return None
        raise FatalError(f"source: {statement} failed: {exc.args[-1] if exc.args else exc}") from None
    return [f"{r.get('host') or '?'}:{r.get('port') or '?'}" for r in rows if int(r.get("server_id") or 0) == server_id]


def server_id_clash(settings: Settings, conn: pymysql.connections.Connection) -> str | None:
    """A message when another replica already uses SOFTCART_SERVER_ID (the source would keep
    dropping one of the two connections); our own earlier registration doesn't count."""
    users = replicas_with_id(conn, settings.server_id)
    others = [u for u in users or [] if not u.startswith(report_name(settings) + ":")]
    if not others:
        return None
    return (f"server_id {settings.server_id} is already used by the replica at {', '.join(others)} "
            "(SHOW SLAVE HOSTS / SHOW REPLICAS): set SOFTCART_SERVER_ID to an id no server or replica uses")

"""`softcart-sync check`: is everything in place to stream? One line per problem, with the fix.

The judgement is pure (:func:`judge_binlog`, :func:`missing_privileges`) and unit-tested for MariaDB
and MySQL; :func:`run_checks` gathers the facts from the servers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pymysql
import structlog
from psycopg import sql

from cdc.capture import mysql
from cdc.capture.flavor import Flavor
from cdc.capture.online import copy_method, signal_ddl
from cdc.settings import Settings
from loader.online import SIGNAL_TABLE
from loader.pg import pg_connect
from loader.star import STAR
from transform.errors import ConfigError, FatalError, SoftcartError
from transform.star_shape import TABLES as SHAPE

log = structlog.get_logger(__name__)

MIN_RETENTION_SECONDS = 24 * 3600

BINLOG_VARIABLES = ["log_bin", "binlog_format", "binlog_row_image", "binlog_row_metadata", "server_id",
                    "expire_logs_days", "binlog_expire_logs_seconds", "gtid_mode", "binlog_order_commits",
                    "binlog_transaction_compression", "binlog_row_value_options",
                    "transaction_isolation", "tx_isolation"]  # MySQL's name, MariaDB 10.x's


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str
    fix: str = ""
    required: bool = True  # `run` refuses to start without it

    def line(self) -> str:
        return f"ok    {self.what}" if self.ok else f"FAIL  {self.what}: {self.fix}"


def judge_binlog(flavor: Flavor, v: dict[str, str], our_server_id: int) -> list[Finding]:
    """Judge the source's binlog settings (``v``: lower-case SHOW GLOBAL VARIABLES)."""
    out: list[Finding] = []

    def need(name: str, want: str, fix: str) -> None:
        have = v.get(name, "").upper()
        out.append(Finding(have == want, f"{name} = {have or 'unset'} (need {want})", fix))

    need("log_bin", "ON", "enable the binary log: log_bin=mysql-bin in the [mysqld] section, then restart")
    need("binlog_format", "ROW", "set binlog_format=ROW in [mysqld] (and SET GLOBAL binlog_format='ROW')")
    need("binlog_row_image", "FULL", "set binlog_row_image=FULL in [mysqld] (and SET GLOBAL binlog_row_image='FULL')")
    if flavor.has_row_metadata:
        need("binlog_row_metadata", "FULL",
             "set binlog_row_metadata=FULL in [mysqld] (and SET GLOBAL binlog_row_metadata='FULL')")
    sid = int(v.get("server_id", "0") or 0)
    out.append(Finding(sid != 0, f"server_id = {sid} (need non-zero)",
                       "set server_id to a unique non-zero number in [mysqld]"))
    out.append(Finding(sid != our_server_id, f"SOFTCART_SERVER_ID {our_server_id} differs from the source's server_id",
                       "set SOFTCART_SERVER_ID to an id no server or replica uses"))
    seconds = int(v.get("binlog_expire_logs_seconds", "0") or 0)
    days = float(v.get("expire_logs_days", "0") or 0)
    retention = seconds or int(days * 86400)
    shown = "never purged" if retention == 0 else f"{retention // 3600} h"
    out.append(Finding(retention == 0 or retention >= MIN_RETENTION_SECONDS,
                       f"binlog retention = {shown} (need at least 24 h)",
                       "set binlog_expire_logs_seconds=604800 (7 days) so the daemon can be down a while",
                       required=False))
    if v.get("binlog_order_commits", "ON").upper() == "OFF":  # MySQL's; MariaDB always commits in binlog order
        out.append(Finding(False, "binlog_order_commits = OFF (online copies by watermarks need ON)",
                           "set binlog_order_commits=ON (the default): a commit may then be seen by a chunk's read"
                           " before one the binlog has ahead of it", required=False))
    isolation = (v.get("transaction_isolation") or v.get("tx_isolation") or "").upper()
    if isolation and isolation != "REPEATABLE-READ":
        out.append(Finding(True, f"the server's default isolation is {isolation} (softcart-sync's source sessions"
                                 " read at REPEATABLE READ whatever it is)", ""))
    if v.get("binlog_transaction_compression", "OFF").upper() == "ON":  # MySQL 8.0.20+
        out.append(Finding(True, "binlog_transaction_compression = ON (compressed transactions are read: zstd)", ""))
    if v.get("binlog_row_value_options", "").upper() == "PARTIAL_JSON":  # MySQL 8
        out.append(Finding(False, "binlog_row_value_options = PARTIAL_JSON (a followed table's partial JSON update"
                                  " stops that table: its row images hold changes, not documents)",
                           "SET GLOBAL binlog_row_value_options='' and in [mysqld]", required=False))
    return out


_GRANT = re.compile(r"^GRANT (.+?) ON (\S+) TO ", re.IGNORECASE)


def missing_privileges(flavor: Flavor, grants: list[str], database: str, tables: list[str],
                       signal: bool = False) -> list[Finding]:
    """Which privileges the daemon's user lacks, from its SHOW GRANTS lines; ``signal``: online
    copies by watermarks, which write the table softcart_signal on the source."""
    global_privs: set[str] = set()
    db_privs: set[str] = set()
    table_privs: dict[str, set[str]] = {}
    for g in grants:
        m = _GRANT.match(g.strip())
        if not m:
            continue
        privs = {p.strip().upper() for p in re.sub(r"\(.*?\)", "", m.group(1)).split(",")}
        if "ALL" in privs or "ALL PRIVILEGES" in privs:
            privs |= {"SELECT", "RELOAD", "REPLICATION SLAVE", "REPLICATION CLIENT", "BINLOG MONITOR",
                      "REPLICATION REPLICA", "SLAVE MONITOR"}
        target = m.group(2).replace("`", "").lower()
        if target == "*.*":
            global_privs |= privs
        elif target == f"{database.lower()}.*":
            db_privs |= privs
        elif target.startswith(database.lower() + "."):
            table_privs.setdefault(target.split(".", 1)[1], set()).update(privs)
    out: list[Finding] = []
    repl = {"REPLICATION SLAVE", "REPLICATION REPLICA"}
    out.append(Finding(bool(global_privs & repl), "privilege REPLICATION SLAVE",
                       "GRANT REPLICATION SLAVE ON *.* TO the daemon's user"))
    monitor = {"REPLICATION CLIENT", "BINLOG MONITOR"} if flavor.mariadb else {"REPLICATION CLIENT"}
    out.append(Finding(bool(global_privs & monitor), f"privilege {' or '.join(sorted(monitor))}",
                       f"GRANT {sorted(monitor)[0]} ON *.* TO the daemon's user"))
    if not flavor.mariadb:
        out.append(Finding("RELOAD" in global_privs, "privilege RELOAD (snapshot lock on MySQL)",
                           "GRANT RELOAD ON *.* TO the daemon's user"))
    for t in tables:
        has = "SELECT" in global_privs or "SELECT" in db_privs or "SELECT" in table_privs.get(t.lower(), set())
        out.append(Finding(has, f"privilege SELECT on {database}.{t}",
                           f"GRANT SELECT ON {database}.{t} TO the daemon's user"))
    if signal:
        privs = global_privs | db_privs | table_privs.get(SIGNAL_TABLE, set())
        writes = {"SELECT", "INSERT", "UPDATE"}
        out.append(Finding(writes <= privs or "ALL" in privs or "ALL PRIVILEGES" in privs,
                           f"privileges SELECT, INSERT, UPDATE on {database}.{SIGNAL_TABLE} (online copies by"
                           " watermarks: SOFTCART_ONLINE_COPY)",
                           f"as an administrator: {signal_ddl(database)};"
                           f" GRANT SELECT, INSERT, UPDATE ON {database}.{SIGNAL_TABLE} TO the daemon's user"
                           " (or SOFTCART_ONLINE_COPY=off)"))
    return out


def session_format_privileges(flavor: Flavor) -> tuple[str, ...]:
    """The privileges that let a client set binlog_format for its own session (MariaDB 10.5+:
    SUPER or BINLOG ADMIN; MySQL 8: SUPER, SYSTEM_VARIABLES_ADMIN or SESSION_VARIABLES_ADMIN)."""
    if flavor.mariadb:
        return ("SUPER", "BINLOG ADMIN")
    return ("SUPER", "SYSTEM_VARIABLES_ADMIN", "SESSION_VARIABLES_ADMIN")


def judge_session_format(flavor: Flavor, rows: list[tuple[str, str]]) -> Finding:
    """Who may write statement-format binlog events despite binlog_format=ROW (``rows``: grantee,
    privilege, as information_schema.USER_PRIVILEGES shows them to us). Information only: such a
    statement on a synced table stops that table by name, it is never applied wrong."""
    privs = session_format_privileges(flavor)
    holders = sorted({g for g, p in rows if p.upper() in privs})
    who = ", ".join(holders) if holders else "none that this account can see"
    return Finding(True, f"accounts that may set binlog_format for their session ({' or '.join(privs)}): {who}"
                   " (a statement they log in STATEMENT format stops the synced table it changes; keep such"
                   " privileges to administrators; this account sees others' privileges only with SELECT on"
                   " the mysql schema)", required=False)


def refuse_unready_source(settings: Settings, conn: pymysql.connections.Connection, flavor: Flavor) -> None:
    """What `run` does at start: a source whose binlog can't feed us is a fatal error naming the
    server variable to set; a short retention is only a warning."""
    findings = judge_binlog(flavor, mysql.server_variables(conn, BINLOG_VARIABLES), settings.server_id)
    bad = [f for f in findings if not f.ok and f.required]
    for f in findings:
        if not f.ok and not f.required:
            log.warning("source_check_failed", check=f.what, fix=f.fix)
    if bad:
        raise FatalError("the source can't be streamed: " + "; ".join(f"{f.what}: {f.fix}" for f in bad))
    clash = mysql.server_id_clash(settings, conn)
    if clash:
        raise ConfigError(clash)


def run_checks(settings: Settings, emit: Callable[[str], None]) -> bool:
    """Print one line per check; True when all passed."""
    findings: list[Finding] = []
    try:
        conn = mysql.connect(settings)
    except SoftcartError as exc:
        emit(Finding(False, "connect to the source", str(exc)).line())
        conn = None
    if conn is not None:
        try:
            flavor = mysql.flavor(conn)
            emit(f"ok    connected to the source: {flavor.name} at {settings.source.display}")
            findings += judge_binlog(flavor, mysql.server_variables(conn, BINLOG_VARIABLES), settings.server_id)
            with conn.cursor() as cur:
                cur.execute("SHOW GRANTS")
                grants = [str(r[0]) for r in cur.fetchall()]
            signal = copy_method(settings.online_copy, flavor) == "signal"
            findings += missing_privileges(flavor, grants, settings.source.database, settings.source_tables, signal)
            findings.append(_check_server_id(settings, conn))
            with conn.cursor() as cur:
                cur.execute("SELECT GRANTEE, PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES")
                findings.append(judge_session_format(flavor, [(str(r[0]), str(r[1])) for r in cur.fetchall()]))
            for t in settings.source_tables:
                try:
                    table = mysql.read_table(conn, settings.source.database, t)
                    pk = ", ".join(table.primary_key)
                    findings.append(Finding(True, f"table {t} exists with primary key ({pk})"))
                except SoftcartError as exc:
                    findings.append(Finding(False, f"table {t}", str(exc)))
        finally:
            conn.close()
    findings.append(_check_staging(settings))
    findings += _check_warehouse(settings)
    for f in findings:
        emit(f.line())
    return all(f.ok for f in findings) and conn is not None


def _check_server_id(settings: Settings, conn: pymysql.connections.Connection) -> Finding:
    if mysql.replicas_with_id(conn, settings.server_id) is None:
        return Finding(True, f"server_id {settings.server_id}: not checked against other replicas (SHOW SLAVE "
                       "HOSTS needs REPLICATION MASTER ADMIN on MariaDB; optional)")
    clash = mysql.server_id_clash(settings, conn)
    return Finding(clash is None, f"server_id {settings.server_id} is not used by another replica", clash or "")


def _check_warehouse(settings: Settings) -> list[Finding]:
    if settings.warehouse is None:
        return [Finding(True, "no warehouse configured (SOFTCART_WAREHOUSE_URL): the star schema stays in staging")]
    from loader.backends import open_warehouse

    warehouse = open_warehouse(settings.warehouse_config)
    try:
        found = warehouse.check(_star_rows(settings))
    except SoftcartError as exc:
        return [Finding(False, f"connect to the warehouse {settings.warehouse.display}",
                        f"{exc}; check SOFTCART_WAREHOUSE_URL")]
    finally:
        warehouse.close()
    return [Finding(True, f"connected to the warehouse {settings.warehouse.display}"),
            *(Finding(ok, what, fix) for ok, what, fix in found)]


def _star_rows(settings: Settings) -> int | None:
    """The star schema's rows in staging (what a full reload sends the warehouse); None where
    staging can't tell (not reachable, no star schema yet)."""
    try:
        pg = pg_connect(settings.staging_config, autocommit=True)
    except SoftcartError:
        return None
    try:
        names = [f"{STAR}.{t.name}" for t in SHAPE]
        row = pg.execute("SELECT bool_and(to_regclass(n) IS NOT NULL) FROM unnest(%s::text[]) n", (names,)).fetchone()
        if not (row and row[0]):
            return None
        total = 0
        for t in SHAPE:
            count = pg.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(STAR),
                                                                           sql.Identifier(t.name))).fetchone()
            total += int(count[0]) if count else 0
        return total
    finally:
        pg.close()


def _check_staging(settings: Settings) -> Finding:
    try:
        pg = pg_connect(settings.staging_config, autocommit=True)
    except SoftcartError as exc:
        return Finding(False, "connect to staging", str(exc))
    try:
        row = pg.execute("SELECT has_database_privilege(current_user, current_database(), 'CREATE'),"
                         " current_setting('server_version')").fetchone()
    finally:
        pg.close()
    assert row is not None
    return Finding(bool(row[0]), f"staging PostgreSQL {row[1]} at {settings.staging.display} allows CREATE SCHEMA",
                   "GRANT CREATE ON DATABASE <staging database> TO the daemon's user")

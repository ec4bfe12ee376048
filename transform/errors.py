"""The error hierarchy, and the tables that sort a server's error into it (pure).

Every failure is worth a retry (``TransientError``), worth stopping for (``FatalError``), an
operator's to fix (``ConfigError``, naming the setting), or a batch's data the warehouse refuses
(rejected). The program's one classifier, ``cdc.errors.as_ours``, turns any exception a stage
raises into one of ours with these tables; the warehouse backends and the source's connect use
them directly where they know more (the endpoint, the fix).

SQLSTATEs (PostgreSQL and IBM Db2 report the SQL standard's five-character states, so one table
serves both backends):
What a warehouse's error means, by its SQLSTATE (pure): both backends' servers, PostgreSQL and
IBM Db2, report the SQL standard's five-character states, so one table serves both.

- ``REJECTED``: the batch's data (class 21 cardinality, e.g. Db2's SQL0788N "a MERGE target row
  matched twice"; 22 data exception; 23 integrity constraint): retrying the same batch can't help.
- ``CONFIG``: the warehouse isn't set up for us (an object missing: 42704 / 42P01; no privilege:
  42501, 42502; Db2's missing user temporary table space for the DGTT, SQL0286N: 42727; schema
  missing: 3F000): an operator must act; the message names what.
- ``CONFIG`` too: statements that can never succeed as they are (42601 syntax, 42703 unknown
  column, 42818 / 42821 type mismatch, 54001 too complex), a resource the work can't get by
  retrying (57011: Db2's log, lock list or table space full), a refused login (28000; Db2's
  SQL30082N, which reports 08001, :func:`db2_connect_state`) or CONNECT privilege (08004).
- ``TRANSIENT``: everything else (connection 08, transaction rollback 40 — deadlock, timeout —,
  resources 53, a statement cancelled by a time limit 57014): retried with backoff, and seen
  (attempts, first failure and last error per batch).

Sources: the SQLSTATE tables of IBM Db2 11.5 ("SQLSTATE messages", class codes) and PostgreSQL
(Appendix A, "PostgreSQL Error Codes").

MySQL/MariaDB error codes: ``MYSQL_TRANSIENT`` are the server or the network, not us.
"""

from __future__ import annotations

import enum


class SoftcartError(Exception):
    """Base of every error softcart-sync raises on purpose."""


class ConfigError(SoftcartError):
    """A setting is missing or wrong; the message names the setting and the fix."""


class TransientError(SoftcartError):
    """A failure that may pass (a lost connection, a server restarting): retry with backoff."""


class FatalError(SoftcartError):
    """A failure that retrying will not fix: stop, log the position, exit non-zero."""


class TableGone(ConfigError, FatalError):
    """A followed table is not in the source's catalogue (dropped, renamed away, or never made).
    At a start that is the settings' to fix (exit 2: systemd doesn't restart it in a loop)."""


class TableUnusable(ConfigError, FatalError):
    """A followed table is in the source but can't be followed as it is defined now (no primary
    key, a column type staging can't hold): the table stops; nothing of it is emptied. At a start,
    the table's to fix (exit 2)."""


class SourceColumnGone(TransientError):
    """A column asked of the source is no longer there (a later DDL dropped it): what the followed
    definition still names is read again once the stream reaches that DDL."""


class SourceTableGone(SourceColumnGone):
    """The table asked of the source is no longer there (a later DROP or RENAME, which the stream
    will follow when it reaches the statement)."""

class Kind(enum.Enum):
    TRANSIENT = "transient"
    REJECTED = "rejected"
    CONFIG = "config"
    FATAL = "fatal"


_CONFIG = {
    "42704": "an object it needs does not exist: run `softcart-sync warehouse init` (or the DBA script in deploy/sql)"
             " in the schema the loader uses",
    "42P01": "a table it needs does not exist: run `softcart-sync warehouse init` (or the DBA script in deploy/sql)",
    "3F000": "the warehouse schema does not exist: create it (deploy/sql) or fix the warehouse schema setting",
    "42501": "the loader's user lacks a privilege: run the GRANTs in deploy/sql",
    "42502": "the loader's user lacks a privilege: run the GRANTs in deploy/sql",
    "42727": "no user temporary table space for the loader's temporary tables: CREATE USER TEMPORARY TABLESPACE and"
             " GRANT USE OF it to the loader (deploy/sql/db2-warehouse.sql)",
    # statements that can never succeed as they are: the warehouse's tables and this version disagree
    "42601": "the warehouse refused a statement of ours as invalid SQL: its version or tables don't match this"
             " softcart-sync; compare them with deploy/sql",
    "42703": "a warehouse table lacks a column this version writes: apply the DBA script of this version"
             " (deploy/sql) or `softcart-sync warehouse init`",
    "42818": "a warehouse column's type differs from what this version writes: compare the tables with deploy/sql",
    "42821": "a warehouse column's type differs from what this version writes: compare the tables with deploy/sql",
    "54001": "a statement was too complex for the warehouse's statement heap: raise STMTHEAP (Db2: UPDATE DB CFG"
             " USING STMTHEAP AUTOMATIC)",
    # resources that a retry of the same work can't find: Db2's SQL0964C (transaction log full),
    # SQL0912N (lock list full), SQL0289N (table space full)
    "57011": "the warehouse ran out of a resource the load needs: if the log is full (SQL0964C) raise LOGFILSIZ,"
             " LOGPRIMARY and LOGSECOND (log space = LOGFILSIZ x 4 KB x (LOGPRIMARY + LOGSECOND); `softcart-sync"
             " check` says what a load needs) ; if the lock list"
             " (SQL0912N) raise LOCKLIST and MAXLOCKS; if a table space (SQL0289N) extend it",
    # at connect: a wrong user or password (Db2 SQL30082N), no CONNECT privilege (SQL1060N)
    "28000": "the warehouse refused the user or password: check the user in SOFTCART_WAREHOUSE_URL and"
             " SOFTCART_WAREHOUSE_PASSWORD",
    "08004": "the warehouse refused the connection (Db2 SQL1060N: the user lacks CONNECT): GRANT CONNECT ON"
             " DATABASE TO USER <loader> (deploy/sql/db2-warehouse.sql)",
}

#: Db2 message codes at connect whose SQLSTATE (08001) is also a network failure's
_DB2_CONNECT_CONFIG = {"SQL30082N": "28000", "SQL1060N": "08004"}


def db2_connect_state(message: str, state: str) -> str:
    """The SQLSTATE to classify a failed Db2 connect by: a security failure (SQL30082N: a wrong
    password, an expired one) reports 08001 like a listener that isn't there, but a retry can't
    help it."""
    for code, config in _DB2_CONNECT_CONFIG.items():
        if code in message:
            return config
    return state


def sqlstate_kind(sqlstate: str) -> Kind:
    """What a warehouse's SQLSTATE means (see the module's docstring)."""
    state = (sqlstate or "").strip().upper()
    if state in _CONFIG:
        return Kind.CONFIG
    if state[:2] in ("21", "22", "23"):
        return Kind.REJECTED
    return Kind.TRANSIENT


def sqlstate_fix(sqlstate: str) -> str:
    """For a CONFIG state: what the operator does about it ('' otherwise)."""
    return _CONFIG.get((sqlstate or "").strip().upper(), "")


def is_duplicate_key(sqlstate: str) -> bool:
    """23505: a unique key already holds the value (on the ledger: another loader got there first)."""
    return (sqlstate or "").strip() == "23505"


#: MySQL/MariaDB error codes that mean the server or the network, not us (retry later).
#: 1412: InnoDB's "table definition has changed" in a consistent snapshot older than a DDL.
MYSQL_TRANSIENT = frozenset({2002, 2003, 2005, 2006, 2013, 2055, 1040, 1053, 1205, 1213, 1412})


def mysql_kind(code: int) -> Kind:
    """What a MySQL/MariaDB error code means when connecting or reading."""
    if code in (1045, 1049, 2026):  # access denied, unknown database, no TLS offered
        return Kind.CONFIG
    if code in MYSQL_TRANSIENT:
        return Kind.TRANSIENT
    return Kind.FATAL

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
- ``TRANSIENT``: everything else (connection 08, transaction rollback 40 — deadlock, timeout —,
  resources 53 / 57, a statement cancelled by a time limit 57014): retried with backoff, and seen
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


class TableGone(FatalError):
    """A followed table is not in the source's catalogue (dropped, renamed away, or never made)."""


class TableUnusable(FatalError):
    """A followed table is in the source but can't be followed as it is defined now (no primary
    key, a column type staging can't hold): the table stops; nothing of it is emptied."""


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
}


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

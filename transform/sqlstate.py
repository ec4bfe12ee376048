"""What a warehouse's error means, by its SQLSTATE (pure): both backends' servers, PostgreSQL and
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
"""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    TRANSIENT = "transient"
    REJECTED = "rejected"
    CONFIG = "config"


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


def classify(sqlstate: str) -> Kind:
    state = (sqlstate or "").strip().upper()
    if state in _CONFIG:
        return Kind.CONFIG
    if state[:2] in ("21", "22", "23"):
        return Kind.REJECTED
    return Kind.TRANSIENT


def fix(sqlstate: str) -> str:
    """For a CONFIG state: what the operator does about it ('' otherwise)."""
    return _CONFIG.get((sqlstate or "").strip().upper(), "")


def is_duplicate_key(sqlstate: str) -> bool:
    """23505: a unique key already holds the value (on the ledger: another loader got there first)."""
    return (sqlstate or "").strip() == "23505"

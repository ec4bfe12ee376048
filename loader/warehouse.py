"""The warehouse side: what its tables look like, and the backends that load a batch into it.

Both backends load a batch in one unit of work: the batch's rows are staged in bulk, deletes and
MERGEs applied, and a ledger row with the batch id inserted; a batch whose id the ledger already
holds is skipped, so a replay after a crash changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from loader.spool import SpooledBatch
from transform.fingerprint import Dialect
from transform.star_shape import AGGREGATES, DIMDATE, FACTSALES, StarTable
from transform.star_shape import TABLES as TABLES

#: The warehouse's tables are the star schema's shape (transform/star_shape.py), in load order:
#: dimensions before facts (facts reference dates); deletes run in reverse.
WTable = StarTable
LEDGER = "softcart_ledger"
#: The reporting views both backends make over the star schema's tables.
VIEWS = ("monthly_sales", "quarterly_sales", "sales_by_product")


def load_steps() -> list[tuple[WTable, str]]:
    """The order a batch is applied in, so the fact table's foreign key to dimdate holds at every
    step: new dates first, then facts and aggregates (deletes, then upserts), old dates last."""
    return [(DIMDATE, "U"), (FACTSALES, "D"), (FACTSALES, "U"), *((t, op) for t in AGGREGATES for op in "DU"),
            (DIMDATE, "D")]


class BatchRejected(Exception):
    """The warehouse refused the batch's data (a constraint, a type): retrying won't help."""


class BatchIdTaken(Exception):
    """The ledger holds the batch's number for another batch (written from an earlier staging, or
    before staging was restored): the batch must be numbered anew, past the ledger."""


def already_loaded(ledger_uid: str | None, batch: SpooledBatch) -> bool:
    """The ledger row of the batch's number is this batch's (a replay: skip it), or raises
    BatchIdTaken. A ledger row from before batches had uids counts as this batch's: a staging made
    anew is numbered past the ledger before its first load, so only a batch of the same staging
    can meet one."""
    if ledger_uid is None or ledger_uid == batch.uid:
        return True
    raise BatchIdTaken(f"batch {batch.batch_id}: the warehouse ledger holds that number for batch {ledger_uid}")


class Warehouse(Protocol):
    dialect: Dialect

    def fetch(self, text: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run a read-only query (the reconcile's checksums)."""
    def init(self) -> None:
        """Create tables, keys, ledger and reporting views if missing."""

    def load(self, batch: SpooledBatch) -> bool:
        """Load the batch in one unit of work; False when the ledger says it is loaded already.
        Raises BatchRejected for bad data, BatchIdTaken when the ledger has its number for another
        batch, TransientError when the warehouse can't be reached."""

    def max_batch_id(self) -> int:
        """The highest batch id in the ledger (0 when empty): a new staging numbers its batches
        past it, so they can't be taken for batches an earlier staging loaded."""

    def check(self, reload_rows: int | None = None) -> list[tuple[bool, str, str]]:
        """`softcart-sync check`: (ok, what, fix) for the connection, the tables, the ledger and the
        loader's needs (privileges; Db2's user temporary table space; with ``reload_rows``, the
        star schema's rows in staging, whether Db2's log holds a full reload of them)."""

    def close(self) -> None: ...

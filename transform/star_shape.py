"""The star schema's shape, defined once: its tables, columns, types, keys and references.

Every place that writes or reads the star schema takes it from here: the staging star schema's DDL
and bulk statements (loader/star.py), the delta SQL (transform/star_sql.py), both warehouse
backends' DDL, staging tables and MERGEs (loader/pg_warehouse.py, loader/db2_warehouse.py), the DDL
files in deploy/sql (generated from these; a test holds them equal) and the reconcile.

A column has two types: in staging (PostgreSQL, where the aggregates may grow past the warehouse's
precision before a batch folds them) and in the warehouse, spelled as PostgreSQL spells it; Db2's
spelling is derived (``db2_type``). Money is DECIMAL(31,4): Db2's widest precision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transform.fingerprint import Kind

MONEY_DIGITS, MONEY_SCALE = 31, 4
_MONEY = f"numeric({MONEY_DIGITS},{MONEY_SCALE})"
QUANTITY_SUM = "numeric(38,0)"


@dataclass(frozen=True)
class StarColumn:
    name: str
    staging: str  # the type in the staging star schema (PostgreSQL)
    warehouse: str  # the type in the warehouse, PostgreSQL's spelling (db2_type gives Db2's)
    nullable: bool = False


@dataclass(frozen=True)
class Reference:
    column: str
    table: str
    target: str


@dataclass(frozen=True)
class StarTable:
    name: str
    schema: tuple[StarColumn, ...]
    key: tuple[str, ...]
    references: tuple[Reference, ...] = ()
    unique: tuple[str, ...] = ()  # columns unique besides the key (staging only)
    #: staging-only columns, as DDL (not compared, not loaded)
    staging_extra: tuple[str, ...] = ()
    #: an aggregate's key as SQL over factsales' columns (``transform.star.agg_keys`` in Python)
    grouping: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns compared and loaded, in CSV and load order."""
        return tuple(c.name for c in self.schema)

    @property
    def non_key(self) -> tuple[str, ...]:
        return tuple(c for c in self.columns if c not in self.key)

    def column(self, name: str) -> StarColumn:
        return next(c for c in self.schema if c.name == name)


def _c(name: str, staging: str, warehouse: str | None = None, nullable: bool = False) -> StarColumn:
    return StarColumn(name, staging, warehouse or staging, nullable)


DIMDATE = StarTable("dimdate", (
    _c("dateid", "integer"), _c("date", "date"), _c("year", "smallint"), _c("quarter", "smallint"),
    _c("quartername", "text", "varchar(2)"), _c("month", "smallint"), _c("monthname", "text", "varchar(9)"),
    _c("day", "smallint"), _c("weekday", "smallint"), _c("weekdayname", "text", "varchar(9)"),
), key=("dateid",), unique=("date",))

FACTSALES = StarTable("factsales", (
    _c("rowid", "bigint"), _c("dateid", "integer"), _c("product_id", "bigint"),
    _c("customer_id", "bigint", nullable=True),  # a sale's customer may be unknown
    _c("price", _MONEY), _c("quantity", "bigint"), _c("total_price", _MONEY),
), key=("rowid",), references=(Reference("dateid", "dimdate", "dateid"),),
    staging_extra=("updated_at timestamptz NOT NULL DEFAULT now()",))

def _measures() -> tuple[StarColumn, ...]:
    """An aggregate's measures. Staging sums without the warehouse's bound: a batch's total is
    checked when it is loaded (quantities of a BIGINT column may sum past BIGINT)."""
    return (_c("sales_count", "bigint"), _c("quantity_total", QUANTITY_SUM, "bigint"),
            _c("amount_total", f"numeric(38,{MONEY_SCALE})", _MONEY))


#: The aggregates, at grains that compress (docs/design/star-schema.md): per day, and per month and
#: product. Per (day, product) SoftCart's sales made about one aggregate row per sale.
SALES_BY_DAY = StarTable("sales_by_day", (_c("dateid", "integer"), *_measures()), key=("dateid",),
                         grouping=("dateid",))
SALES_BY_MONTH_PRODUCT = StarTable("sales_by_month_product", (
    _c("monthid", "integer"),  # year * 100 + month, as dateid is year * 10000 + month * 100 + day
    _c("product_id", "bigint"), *_measures(),
), key=("monthid", "product_id"), grouping=("dateid / 100", "product_id"))
AGGREGATES = (SALES_BY_DAY, SALES_BY_MONTH_PRODUCT)
MEASURES = tuple(c.name for c in _measures())

#: In load order: dimensions before facts (facts reference dates); deletes run in reverse.
TABLES = (DIMDATE, FACTSALES, *AGGREGATES)

#: The fact table's foreign key column, indexed (name, table, column): without it every dimdate row
#: deleted (a full reload, a date that lost its last sale) scans factsales, and BI joins on it.
FACT_INDEX = ("factsales_dateid", "factsales", "dateid")


def db2_type(warehouse_type: str) -> str:
    """Db2's spelling of a warehouse type (NUMERIC is DECIMAL there; both take the same arguments)."""
    return warehouse_type.upper().replace("NUMERIC", "DECIMAL")


def staging_types() -> dict[str, str]:
    """Every star column's staging type, by name (a name has one type in every table)."""
    return {c.name: c.staging for t in TABLES for c in t.schema}


def fingerprint_kind(c: StarColumn) -> tuple[Kind] | tuple[Kind, int]:
    """How the reconcile fingerprints the column (its warehouse type: both sides compare equal)."""
    t = c.warehouse
    if t in ("smallint", "integer", "bigint"):
        return (Kind.INT,)
    if t == "date":
        return (Kind.DATE,)
    if t == "text" or t.startswith("varchar"):
        return (Kind.TEXT,)
    m = re.fullmatch(r"numeric\(\d+,(\d+)\)", t)
    if m:
        return (Kind.DECIMAL, int(m.group(1)))
    raise ValueError(f"{c.name}: no fingerprint for the warehouse type {t!r}")

"""The seed's step 1 (`setup-source`) and a generator of files in the seed's exact CSV shape.

Format (from the seed project): no header, comma-separated, LF line ends. The "old" file has
``rowid,product_id,customer_id,price,quantity,timestamp`` with timestamps like ``2020-09-05 16:20``;
the "new" file has the first five fields and the server stamps the load time.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pymysql

from cdc.capture.mysql import connect
from cdc.capture.snapshot import quote_mysql
from cdc.settings import Settings
from transform.errors import ConfigError

SALES_TABLE = "sales_data"

SALES_DDL = """CREATE TABLE IF NOT EXISTS sales_data (
  rowid INT NOT NULL PRIMARY KEY,
  product_id INT NOT NULL,
  customer_id INT NOT NULL,
  price DECIMAL(12,2) NOT NULL DEFAULT 0,
  quantity INT NOT NULL,
  timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""

_TS = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}(:\d{2})?$")


class MalformedLine(ValueError):
    """A CSV line that is not in the seed's shape; the message names the file and line."""


@dataclass(frozen=True)
class Sale:
    rowid: int
    product_id: int
    customer_id: int
    price: Decimal
    quantity: int
    timestamp: dt.datetime | None


def parse_line(path: Path, lineno: int, line: str, with_timestamp: bool) -> Sale:
    fields = line.split(",")
    want = 6 if with_timestamp else 5
    where = f"{path}:{lineno}"
    if len(fields) != want:
        raise MalformedLine(f"{where}: expected {want} comma-separated fields, found {len(fields)}: {line[:80]!r}")
    names = ("rowid", "product_id", "customer_id")
    ints = []
    for name, text in zip((*names, "quantity"), [*fields[:3], fields[4]], strict=True):
        if not re.fullmatch(r"-?\d{1,10}", text.strip()):
            raise MalformedLine(f"{where}: {name} must be an integer, found {text!r}")
        ints.append(int(text))
    try:
        price = Decimal(fields[3].strip())
    except InvalidOperation:
        raise MalformedLine(f"{where}: price must be a decimal number, found {fields[3]!r}") from None
    if not price.is_finite():
        raise MalformedLine(f"{where}: price must be a decimal number, found {fields[3]!r}")
    ts = None
    if with_timestamp:
        text = fields[5].strip()
        if not _TS.match(text):
            raise MalformedLine(f"{where}: timestamp must look like 2020-09-05 16:20, found {text!r}")
        try:
            ts = dt.datetime.fromisoformat(text)
        except ValueError:
            raise MalformedLine(f"{where}: timestamp {text!r} is not a real date and time") from None
    return Sale(ints[0], ints[1], ints[2], price, ints[3], ts)


def read_sales(path: Path, with_timestamp: bool) -> list[Sale]:
    """Every line of ``path``, validated; raises on the first malformed line (nothing is loaded)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise MalformedLine(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    sales = []
    seen: dict[int, int] = {}
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line == "":
            continue
        sale = parse_line(path, lineno, line.rstrip("\r"), with_timestamp)
        if sale.rowid in seen:
            raise MalformedLine(f"{path}:{lineno}: rowid {sale.rowid} already on line {seen[sale.rowid]}")
        seen[sale.rowid] = lineno
        sales.append(sale)
    return sales


def setup_source(settings: Settings, old: Path, new: Path) -> tuple[int, int]:
    """Create the database and table if missing and load both files; returns rows inserted per file.

    Each file loads in one transaction, so a malformed line loads nothing of its file. Rows whose
    rowid exists already are left alone, so running it twice duplicates nothing.
    """
    old_rows = read_sales(old, with_timestamp=True)
    new_rows = read_sales(new, with_timestamp=False)
    database = settings.source.database
    conn = connect(settings, database=False)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {quote_mysql(database)} CHARACTER SET utf8mb4")
            cur.execute(f"USE {quote_mysql(database)}")
            cur.execute(SALES_DDL)
        return _load(conn, old_rows, True), _load(conn, new_rows, False)
    finally:
        conn.close()


def _load(conn: pymysql.connections.Connection, sales: list[Sale], with_timestamp: bool) -> int:
    if with_timestamp:
        stmt = ("INSERT INTO sales_data (rowid, product_id, customer_id, price, quantity, timestamp)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE rowid = rowid")
        params: list[tuple[Any, ...]] = [
            (s.rowid, s.product_id, s.customer_id, s.price, s.quantity, s.timestamp) for s in sales]
    else:
        stmt = ("INSERT INTO sales_data (rowid, product_id, customer_id, price, quantity)"
                " VALUES (%s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE rowid = rowid")
        params = [(s.rowid, s.product_id, s.customer_id, s.price, s.quantity) for s in sales]
    inserted = 0
    conn.begin()
    try:
        with conn.cursor() as cur:
            for i in range(0, len(params), 5000):
                inserted += cur.executemany(stmt, params[i:i + 5000]) or 0
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return inserted


def generate(old: Path, new: Path, old_rows: int, new_rows: int, seed: int = 1,
             products: int = 500, customers: int = 10000) -> None:
    """Write seed-shaped files: rowids 1..old_rows in ``old``, then the next new_rows in ``new``."""
    rnd = random.Random(seed)
    start = dt.datetime(2020, 1, 1)
    span_minutes = 2 * 365 * 24 * 60

    def common(rowid: int) -> str:
        price = Decimal(rnd.randint(100, 500000)) / 100
        return f"{rowid},{rnd.randint(1, products)},{rnd.randint(1, customers)},{price},{rnd.randint(1, 5)}"

    with old.open("w", encoding="utf-8", newline="\n") as f:
        for rowid in range(1, old_rows + 1):
            ts = start + dt.timedelta(minutes=rnd.randrange(span_minutes))
            f.write(f"{common(rowid)},{ts:%Y-%m-%d %H:%M}\n")
    with new.open("w", encoding="utf-8", newline="\n") as f:
        for rowid in range(old_rows + 1, old_rows + new_rows + 1):
            f.write(common(rowid) + "\n")

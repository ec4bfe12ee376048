"""A PostgreSQL database playing the production warehouse: COPY the CSV into temporary tables,
MERGE, ledger row, one transaction. The demo's default and what the end-to-end tests load."""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from loader.pg import ISO_DATES, cut
from loader.spool import SpooledBatch
from loader.warehouse import LEDGER, TABLES, BatchRejected, WTable, already_loaded, load_steps
from transform.errors import ConfigError, Kind, TransientError, is_duplicate_key, sqlstate_fix, sqlstate_kind
from transform.fingerprint import Dialect
from transform.model import Endpoint

_TYPES = {"dateid": "integer", "date": "date", "year": "smallint", "quarter": "smallint", "quartername": "varchar(2)",
          "month": "smallint", "monthname": "varchar(9)", "day": "smallint", "weekday": "smallint",
          "weekdayname": "varchar(9)", "rowid": "bigint", "product_id": "bigint", "customer_id": "bigint",
          "price": "numeric(31,4)", "quantity": "bigint", "total_price": "numeric(31,4)", "sales_count": "bigint",
          "quantity_total": "bigint", "amount_total": "numeric(31,4)"}
_NOT_NULL = {"customer_id"}


def ddl() -> list[str]:
    """The warehouse DDL for PostgreSQL (also deploy/sql/postgresql-warehouse.sql)."""
    out = []
    for t in TABLES:
        cols = ", ".join(f"{c} {_TYPES[c]}" + ("" if c in _NOT_NULL else " NOT NULL") for c in t.columns)
        fk = ", FOREIGN KEY (dateid) REFERENCES dimdate (dateid)" if t.name == "factsales" else ""
        out.append(f"CREATE TABLE IF NOT EXISTS {t.name} ({cols}, PRIMARY KEY ({', '.join(t.key)}){fk})")
    # The fact table's foreign key column: without an index every dimdate row deleted (a full
    # reload, a date that lost its last sale) scans factsales for references, and BI joins on it.
    out.append("CREATE INDEX IF NOT EXISTS factsales_dateid ON factsales (dateid)")
    out.append(f"CREATE TABLE IF NOT EXISTS {LEDGER} (batch_id bigint PRIMARY KEY, pipeline text NOT NULL,"
               " rows_loaded bigint NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now())")
    out.append(f"ALTER TABLE {LEDGER} ADD COLUMN IF NOT EXISTS batch_uid text")
    out += [
        "CREATE OR REPLACE VIEW monthly_sales AS SELECT d.year, d.month, d.monthname, sum(s.amount_total)"
        " AS total_sales, sum(s.quantity_total) AS total_quantity, sum(s.sales_count) AS sales"
        " FROM sales_by_day s JOIN dimdate d ON d.dateid = s.dateid GROUP BY d.year, d.month, d.monthname",
        "CREATE OR REPLACE VIEW quarterly_sales AS SELECT d.year, d.quarter, d.quartername, sum(s.amount_total)"
        " AS total_sales, sum(s.quantity_total) AS total_quantity, sum(s.sales_count) AS sales"
        " FROM sales_by_day s JOIN dimdate d ON d.dateid = s.dateid GROUP BY d.year, d.quarter, d.quartername",
        "CREATE OR REPLACE VIEW sales_by_product AS SELECT s.product_id, d.year, sum(s.amount_total) AS total_sales,"
        " sum(s.quantity_total) AS total_quantity FROM sales_by_day s JOIN dimdate d ON d.dateid = s.dateid"
        " GROUP BY s.product_id, d.year",
    ]
    return out


class _ReplyGuard:
    """Shuts the connection's socket when one wait for the warehouse outlasts ``seconds``
    (SOFTCART_WAREHOUSE_RECEIVE_TIMEOUT_SECONDS), as Db2's ReceiveTimeout does: a network that
    acknowledges but never delivers (a middlebox, a paused peer) defeats keepalives and TCP's own
    timeouts, and would hold the load, and the loader lock, forever. ``feed`` after each reply."""

    def __init__(self, conn: psycopg.Connection[Any], seconds: float) -> None:
        self._conn, self._seconds = conn, seconds
        self._deadline = time.monotonic() + seconds
        self._done = threading.Event()
        self.fired = False
        self._thread = threading.Thread(target=self._watch, name="warehouse-reply-guard", daemon=True)

    def __enter__(self) -> _ReplyGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)

    def feed(self) -> None:
        self._deadline = time.monotonic() + self._seconds

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, max(0.05, self._deadline - time.monotonic()))):
            if time.monotonic() >= self._deadline:
                self.fired = True
                cut(self._conn)
                return


class PostgresWarehouse:
    dialect = Dialect.POSTGRES

    def __init__(self, endpoint: Endpoint, pipeline: str, connect_timeout: float,
                 statement_timeout: float = 0.0, schema: str = "", receive_timeout: float = 3600.0) -> None:
        self._ep = endpoint
        self._receive_timeout = receive_timeout
        self._schema = schema
        self._pipeline = pipeline
        self._timeout = connect_timeout
        self._statement_timeout_ms = int(statement_timeout * 1000)
        self._conn: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            ep = self._ep
            try:
                # libpq options from the URL's query: ?sslmode=verify-full&sslrootcert=/etc/ca.pem
                query = dict(urllib.parse.parse_qsl(ep.query))
                query["options"] = f"{query.get('options', '')} {ISO_DATES}".strip()
                if self._schema:  # checked by the setting's pattern: a plain identifier
                    query["options"] += f" -c search_path={self._schema}"
                if self._statement_timeout_ms:
                    query["options"] += f" -c statement_timeout={self._statement_timeout_ms}"
                # a warehouse gone silent is noticed in about a minute, not the kernel's two hours
                query = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10",
                         "keepalives_count": "3", **query}
                options = make_conninfo("", **query)
                self._conn = psycopg.connect(options, host=ep.host, port=ep.port, user=ep.user,
                                             password=ep.password.get_secret_value() or None, dbname=ep.database,
                                             connect_timeout=max(1, int(self._timeout)), autocommit=True,
                                             application_name="softcart-sync-flush")
            except psycopg.OperationalError as exc:
                raise TransientError(f"warehouse {ep.display}: {str(exc).strip().splitlines()[-1]}") from None
        return self._conn

    def init(self) -> None:
        conn = self._connect()
        with conn.transaction():
            if self._schema:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema.lower())))
            for stmt in ddl():
                conn.execute(stmt)

    def load(self, batch: SpooledBatch) -> bool:
        conn = self._connect()
        step = "data"
        guard = _ReplyGuard(conn, self._receive_timeout)
        try:
            with guard, conn.transaction():
                held = conn.execute(f"SELECT batch_uid FROM {LEDGER} WHERE batch_id = %s", (batch.batch_id,)).fetchone()
                if held is not None and already_loaded(held[0], batch):
                    return False
                total = sum(batch.row_counts.values())  # rows of the batch's files, as on Db2
                staged = {t.name: self._stage(conn, t, batch, guard) for t in TABLES}
                full = bool(batch.manifest.get("full_reload"))
                if full:
                    conn.execute("DELETE FROM sales_by_day; DELETE FROM factsales; DELETE FROM dimdate")
                    guard.feed()
                for t, op in load_steps():
                    if op == "D":
                        conn.execute(sql.SQL("DELETE FROM {} t USING {} s WHERE s.op = 'D' AND {}").format(
                            sql.Identifier(t.name), sql.Identifier(staged[t.name]), _match(t)))
                    else:  # into emptied tables (a full reload) a plain insert: nothing to match
                        conn.execute((_insert if full else _merge)(t, staged[t.name]))
                    guard.feed()
                step = "ledger"
                conn.execute(f"INSERT INTO {LEDGER} (batch_id, pipeline, rows_loaded, batch_uid)"
                             " VALUES (%s, %s, %s, %s)", (batch.batch_id, self._pipeline, total, batch.uid))
                guard.feed()
            return True
        except psycopg.Error as exc:
            if guard.fired:
                self.close()
                raise TransientError(self._no_reply() + "; the batch is loaded again") from None
            state = exc.sqlstate or ""
            if step == "ledger" and is_duplicate_key(state):
                return False  # another loader committed this batch first
            text = f"{state}: {exc.diag.message_primary or str(exc).strip()}" if state else str(exc).strip()
            kind = sqlstate_kind(state)
            if kind is Kind.REJECTED:
                raise BatchRejected(text) from None
            if kind is Kind.CONFIG:
                raise ConfigError(f"warehouse {self._ep.display}: {text}; {sqlstate_fix(state)}") from None
            self.close()
            raise TransientError(f"warehouse {self._ep.display}: {text}") from None

    def max_batch_id(self) -> int:
        row = self.fetch(f"SELECT COALESCE(max(batch_id), 0) FROM {LEDGER}", ())
        return int(row[0][0]) if row else 0

    def _stage(self, conn: psycopg.Connection[Any], t: WTable, batch: SpooledBatch, guard: _ReplyGuard) -> str:
        temp = f"_load_{t.name}"
        conn.execute(sql.SQL("CREATE TEMP TABLE {} (op char(1) NOT NULL, {}) ON COMMIT DROP").format(
            sql.Identifier(temp), sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_TYPES[c])) for c in t.columns)))
        guard.feed()
        with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT csv)").format(
                sql.Identifier(temp))) as copy:
            for chunk in batch.chunks(t.name):  # the file as it is: PostgreSQL parses the CSV
                copy.write(chunk)
                guard.feed()
        guard.feed()
        return temp

    def check(self) -> list[tuple[bool, str, str]]:
        conn = self._connect()
        init = "run `softcart-sync warehouse init` (or deploy/sql/postgresql-warehouse.sql)"
        grant = "run the GRANTs in deploy/sql/postgresql-warehouse.sql"
        out: list[tuple[bool, str, str]] = []
        for name, privileges in [*((t.name, "SELECT,INSERT,UPDATE,DELETE") for t in TABLES), (LEDGER, "SELECT,INSERT")]:
            row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
            if not (row and row[0]):
                out.append((False, f"warehouse table {name}", init))
                continue
            row = conn.execute("SELECT has_table_privilege(%s, %s)", (name, privileges)).fetchone()
            out.append((bool(row and row[0]), f"warehouse table {name} ({privileges})", grant))
        row = conn.execute("SELECT has_database_privilege(current_database(), 'TEMP')").fetchone()
        out.append((bool(row and row[0]), "warehouse: temporary tables allowed (TEMP)", grant))
        row = conn.execute(f"SELECT count(*) FROM information_schema.columns WHERE table_name = '{LEDGER}'"
                           " AND column_name = 'batch_uid' AND table_schema = ANY(current_schemas(false))").fetchone()
        if out[len(TABLES)][0]:
            out.append((bool(row and row[0]), "warehouse ledger has batch_uid", init))
        return out

    def fetch(self, text: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run a read-only query (the reconcile's checksums)."""
        conn = self._connect()
        guard = _ReplyGuard(conn, self._receive_timeout)
        try:
            with guard:
                return conn.execute(text.encode(), list(params)).fetchall()
        except psycopg.errors.UndefinedTable as exc:
            raise ConfigError(f"warehouse {self._ep.display}: {exc.diag.message_primary}; run"
                              " `softcart-sync warehouse init`") from None
        except psycopg.OperationalError as exc:
            self.close()
            raise TransientError(self._no_reply() if guard.fired else
                                 f"warehouse {self._ep.display}: {str(exc).strip()}") from None

    def _no_reply(self) -> str:
        return (f"warehouse {self._ep.display}: no reply within {self._receive_timeout:g} s"
                " (SOFTCART_WAREHOUSE_RECEIVE_TIMEOUT_SECONDS): a network gone silent, or a statement that takes"
                " longer")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _match(t: WTable, left: str = "t", right: str = "s") -> sql.Composable:
    return sql.SQL(" AND ").join(sql.SQL("{}.{} = {}.{}").format(
        sql.Identifier(left), sql.Identifier(k), sql.Identifier(right), sql.Identifier(k)) for k in t.key)


def _insert(t: WTable, staged: str) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in t.columns)
    return sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE op = 'U'").format(
        sql.Identifier(t.name), cols, cols, sql.Identifier(staged))


def _merge(t: WTable, staged: str) -> sql.Composed:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in t.columns)
    values = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in t.columns)
    sets = sql.SQL(", ").join(sql.SQL("{0} = s.{0}").format(sql.Identifier(c)) for c in t.non_key)
    return sql.SQL("MERGE INTO {} t USING (SELECT * FROM {} WHERE op = 'U') s ON {}"
                   " WHEN MATCHED THEN UPDATE SET {} WHEN NOT MATCHED THEN INSERT ({}) VALUES ({})").format(
        sql.Identifier(t.name), sql.Identifier(staged), _match(t), sets, cols, values)

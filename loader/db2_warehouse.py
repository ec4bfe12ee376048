"""IBM DB2 as the production warehouse, through ``ibm_db`` (which bundles the CLI driver).

A batch loads in one unit of work: its rows are staged in a declared global temporary table
(bulk, ``execute_many``), deletes and a MERGE applied per table, and a ledger row inserted; a batch
whose id the ledger holds is skipped. The SQL is built by pure functions (unit-tested), following
IBM's documented syntax for DECLARE GLOBAL TEMPORARY TABLE and MERGE.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any

from loader.db2_log import log_config_sql, log_finding
from loader.spool import SpooledBatch
from loader.warehouse import (
    LEDGER,
    TABLES,
    BatchIdTaken,
    BatchRejected,
    WTable,
    already_loaded,
    load_steps,
)
from transform.errors import (
    ConfigError,
    Kind,
    SoftcartError,
    TransientError,
    db2_connect_state,
    is_duplicate_key,
    sqlstate_fix,
    sqlstate_kind,
)
from transform.fingerprint import Dialect, quote
from transform.model import Endpoint
from transform.star_shape import FACT_INDEX, FACTSALES, db2_type


def statement_options(query_timeout: int) -> dict[int, int]:
    """The statement attributes of a load's statements: QueryTimeout (SQL_ATTR_QUERY_TIMEOUT, 0 in
    the CLI's numbering) when a statement time limit is set; none means no limit."""
    return {0: query_timeout} if query_timeout > 0 else {}


class DriverError(Exception):
    """An ibm_db failure whose SQLSTATE was read already (reading a handle's error again gives
    its next diagnostic record, so the second read of a single error is empty)."""

    def __init__(self, state: str, text: str) -> None:
        super().__init__(text)
        self.state = state


def first_failing(rows: Sequence[Sequence[Any]], attempt: Callable[[Sequence[Any]], str | None],
                  limit: int = 5) -> list[tuple[int, str]]:
    """The rows (index, error) that fail when tried one at a time, the first ``limit`` of them:
    a refused chain of inserts says which of its rows, not only the last error read."""
    out: list[tuple[int, str]] = []
    for i, row in enumerate(rows):
        error = attempt(row)
        if error:
            out.append((i, error))
            if len(out) >= limit:
                break
    return out


def rejected_rows_text(t: WTable, rows: Sequence[Sequence[Any]], culprits: list[tuple[int, str]],
                       offset: int = 0) -> str:
    """The refused rows named by their line in the table's file and their key (the CSV's first
    field is the op); ``rows`` is the chunk that starts at line ``offset`` + 1."""
    keys = [(k, t.columns.index(k) + 1) for k in t.key]
    return "; ".join(f"{t.name} row {offset + i + 1} ({', '.join(f'{k}={rows[i][j]}' for k, j in keys)}): {error}"
                     for i, error in culprits)


def load_outcome(state: str, step: str) -> str:
    """What a failed load means (``step``: data, or the ledger insert): loaded (a duplicate
    ledger key: another loader got there first), rejected, config or transient."""
    if step == "ledger" and is_duplicate_key(state):
        return "loaded"
    return sqlstate_kind(state).value


def q(name: str) -> str:
    """A DB2 delimited identifier (upper-case, as DB2 folds ordinary ones)."""
    return quote(name, Dialect.DB2)


def connection_string(ep: Endpoint, timeout: int, extra: str = "", receive_timeout: int = 3600,
                      schema: str = "", lock_wait: int = 60) -> str:
    """The CLI connection string; ConnectTimeout (the connect) and ReceiveTimeout (any one reply:
    sized for the longest MERGE or DELETE, not the connect) make a silent server an error, not a
    hang; LockTimeout bounds a wait behind another's lock (Db2 waits for ever by default; SQL0911N,
    40001, is retried). ``extra`` passes options through (from the URL's query: Security=SSL; ...)."""
    parts = {"DATABASE": ep.database, "HOSTNAME": ep.host, "PORT": str(ep.port), "PROTOCOL": "TCPIP",
             "UID": ep.user, "PWD": ep.password.get_secret_value(), "ConnectTimeout": str(timeout),
             "ReceiveTimeout": str(receive_timeout), "LockTimeout": str(lock_wait)}
    if schema:  # SET CURRENT SCHEMA at connect: every unqualified name of ours resolves there
        parts["CurrentSchema"] = schema.upper()
    for opt in filter(None, extra.replace("&", ";").split(";")):
        key, _, value = opt.partition("=")
        parts[key.strip()] = value.strip()
    for k, v in parts.items():
        if ";" in v or ("=" in v and k != "PWD"):
            raise ValueError(f"DB2 connection option {k} contains ';' or '='")
    return "".join(f"{k}={v};" for k, v in parts.items())


def create_table_sql(t: WTable) -> str:
    cols = ", ".join(f"{q(c.name)} {db2_type(c.warehouse)}{'' if c.nullable else ' NOT NULL'}" for c in t.schema)
    fk = "".join(f", FOREIGN KEY ({q(r.column)}) REFERENCES {q(r.table)} ({q(r.target)})" for r in t.references)
    return f"CREATE TABLE {q(t.name)} ({cols}, PRIMARY KEY ({', '.join(q(k) for k in t.key)}){fk})"


def index_sql() -> str:
    """The fact table's foreign key column, indexed: deleting a date otherwise scans the facts."""
    index, table, column = FACT_INDEX
    return f"CREATE INDEX {q(index)} ON {q(table)} ({q(column)})"


def ledger_sql() -> str:
    return (f"CREATE TABLE {q(LEDGER)} ({q('batch_id')} BIGINT NOT NULL PRIMARY KEY, {q('pipeline')} VARCHAR(63)"
            f" NOT NULL, {q('rows_loaded')} BIGINT NOT NULL, {q('loaded_at')} TIMESTAMP NOT NULL"
            f" DEFAULT CURRENT TIMESTAMP, {q('batch_uid')} VARCHAR(36))")


def old_grain_sql() -> str:
    """Whether the warehouse's sales_by_day is of the grain before the aggregates' grains changed
    (per day and product): then it is dropped and made anew (``regrain_sql``; the staging star
    schema is rebuilt and sends a full reload). Its views become inoperative until made again."""
    return ("SELECT COUNT(*) FROM SYSCAT.COLUMNS WHERE TABSCHEMA = CURRENT SCHEMA AND TABNAME = 'SALES_BY_DAY'"
            " AND COLNAME = 'PRODUCT_ID'")


def regrain_sql() -> str:
    return f"DROP TABLE {q('sales_by_day')}"


def ledger_upgrade_sql() -> str:
    """A ledger made before batches had uids gets the column (SQL0612N where it has it)."""
    return f"ALTER TABLE {q(LEDGER)} ADD COLUMN {q('batch_uid')} VARCHAR(36)"


def views_sql() -> list[str]:
    s, d = q("sales_by_day"), q("dimdate")
    join = f"FROM {s} s JOIN {d} d ON d.{q('dateid')} = s.{q('dateid')}"
    sums = f"SUM(s.{q('amount_total')}) AS TOTAL_SALES, SUM(s.{q('quantity_total')}) AS TOTAL_QUANTITY"
    return [
        f"CREATE OR REPLACE VIEW {q('monthly_sales')} AS SELECT d.{q('year')}, d.{q('month')}, d.{q('monthname')},"
        f" {sums} {join} GROUP BY d.{q('year')}, d.{q('month')}, d.{q('monthname')}",
        f"CREATE OR REPLACE VIEW {q('quarterly_sales')} AS SELECT d.{q('year')}, d.{q('quarter')},"
        f" d.{q('quartername')}, {sums} {join} GROUP BY d.{q('year')}, d.{q('quarter')}, d.{q('quartername')}",
        f"CREATE OR REPLACE VIEW {q('sales_by_product')} AS SELECT s.{q('product_id')},"
        f" SMALLINT(s.{q('monthid')} / 100) AS {q('year')}, {sums} FROM {q('sales_by_month_product')} s"
        f" GROUP BY s.{q('product_id')}, s.{q('monthid')} / 100",
    ]


def stage_table(t: WTable) -> str:
    return f"SESSION.{q('load_' + t.name)}"


def declare_sql(t: WTable) -> str:
    """DECLARE GLOBAL TEMPORARY TABLE: per connection, not logged, emptied at each commit."""
    cols = ", ".join([f"{q('op')} CHAR(1) NOT NULL", *(f"{q(c.name)} {db2_type(c.warehouse)}" for c in t.schema)])
    return (f"DECLARE GLOBAL TEMPORARY TABLE {stage_table(t)} ({cols})"
            " ON COMMIT DELETE ROWS NOT LOGGED ON ROLLBACK DELETE ROWS WITH REPLACE")


def insert_stage_sql(t: WTable) -> str:
    cols = ", ".join([q("op"), *(q(c) for c in t.columns)])
    marks = ", ".join(["?"] * (len(t.columns) + 1))
    return f"INSERT INTO {stage_table(t)} ({cols}) VALUES ({marks})"


def delete_sql(t: WTable) -> str:
    keys = ", ".join(q(k) for k in t.key)
    return (f"DELETE FROM {q(t.name)} WHERE ({keys}) IN (SELECT {keys} FROM {stage_table(t)}"
            f" WHERE {q('op')} = 'D')")


def merge_sql(t: WTable) -> str:
    on = " AND ".join(f"T.{q(k)} = S.{q(k)}" for k in t.key)
    sets = ", ".join(f"{q(c)} = S.{q(c)}" for c in t.non_key)  # assignment-clause: unqualified column
    cols = ", ".join(q(c) for c in t.columns)
    values = ", ".join(f"S.{q(c)}" for c in t.columns)
    return (f"MERGE INTO {q(t.name)} AS T USING (SELECT {cols} FROM {stage_table(t)} WHERE {q('op')} = 'U') AS S"
            f" ON {on} WHEN MATCHED THEN UPDATE SET {sets} WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values})")


def insert_sql(t: WTable) -> str:
    """A full reload's fill of an emptied table: INSERT ... SELECT (nothing to match; a MERGE would
    probe the key of every row)."""
    cols = ", ".join(q(c) for c in t.columns)
    return f"INSERT INTO {q(t.name)} ({cols}) SELECT {cols} FROM {stage_table(t)} WHERE {q('op')} = 'U'"


def full_reload_steps() -> list[str]:
    """A full reload after the batch is staged: every table emptied (facts before the dates they
    reference), then filled in load order."""
    return [*(f"DELETE FROM {q(t.name)}" for t in reversed(TABLES)), *(insert_sql(t) for t in TABLES)]


def batch_steps(full: bool) -> list[str]:
    """The statements that apply a staged batch: a full reload's, or deletes and merges."""
    if full:
        return full_reload_steps()
    return [delete_sql(t) if op == "D" else merge_sql(t) for t, op in load_steps()]


def check_statements() -> list[tuple[str, str, str]]:
    """What `check` runs on Db2 (sql, what, fix), none of which changes anything: each table and
    the ledger read, and one of the loader's temporary tables declared (it needs a user temporary
    table space the user may use: SQL0286N otherwise)."""
    init = "run deploy/sql/db2-warehouse.sql (or `softcart-sync warehouse init`) in SOFTCART_WAREHOUSE_SCHEMA"
    out = [(f"SELECT 1 FROM {q(name)} FETCH FIRST 1 ROW ONLY", f"warehouse table {name} readable", init)
           for name in (*(t.name for t in TABLES), LEDGER)]
    out.append((f"SELECT {q('batch_uid')} FROM {q(LEDGER)} FETCH FIRST 1 ROW ONLY", "warehouse ledger has batch_uid",
                "run the ALTER TABLE in deploy/sql/db2-warehouse.sql"))
    out.append((declare_sql(TABLES[0]), "warehouse: the loader's temporary table (a user temporary table space)",
                "CREATE USER TEMPORARY TABLESPACE and GRANT USE OF it (deploy/sql/db2-warehouse.sql)"))
    return out


def max_batch_sql() -> str:
    return f"SELECT COALESCE(MAX({q('batch_id')}), 0) FROM {q(LEDGER)}"


class DB2Warehouse:
    dialect = Dialect.DB2

    def __init__(self, endpoint: Endpoint, pipeline: str, connect_timeout: float, receive_timeout: float = 3600.0,
                 statement_timeout: float = 0.0, schema: str = "", lock_wait: float = 60.0) -> None:
        self._ep = endpoint
        self._lock_wait = max(1, int(lock_wait))
        self._schema = schema
        self._pipeline = pipeline
        self._timeout = max(1, int(connect_timeout))
        self._receive = max(1, int(receive_timeout))
        self._query_timeout = int(statement_timeout)
        self._conn: Any = None
        self._at_fault: Any = None  # the statement of a load that failed, for its own diagnostics

    def _connect(self) -> Any:
        import ibm_db

        if self._conn is None:
            try:
                self._conn = ibm_db.connect(connection_string(self._ep, self._timeout, self._ep.query, self._receive,
                                                              self._schema, self._lock_wait), "", "")
            except Exception as exc:  # noqa: BLE001 - ibm_db raises plain Exception
                text = _clean(str(exc), self._ep)
                state = db2_connect_state(str(exc), ibm_db.conn_error() or "")
                if sqlstate_kind(state) is Kind.CONFIG:  # a refused login or CONNECT: no retry helps
                    raise ConfigError(f"warehouse {self._ep.display}: {text}; {sqlstate_fix(state)}") from None
                raise TransientError(f"warehouse {self._ep.display}: {text}") from None
            ibm_db.autocommit(self._conn, ibm_db.SQL_AUTOCOMMIT_OFF)
        return self._conn

    def init(self) -> None:
        import ibm_db

        conn = self._connect()
        old = ibm_db.exec_immediate(conn, old_grain_sql())
        if (ibm_db.fetch_tuple(old) or (0,))[0]:
            ibm_db.exec_immediate(conn, regrain_sql())
        for stmt in [*(create_table_sql(t) for t in TABLES), index_sql(), ledger_sql(), ledger_upgrade_sql()]:
            try:
                ibm_db.exec_immediate(conn, stmt)
            except Exception as exc:
                if "SQL0601N" not in str(exc) and "SQL0612N" not in str(exc):  # already exists
                    raise
        for stmt in views_sql():
            ibm_db.exec_immediate(conn, stmt)
        ibm_db.commit(conn)

    def load(self, batch: SpooledBatch) -> bool:
        import ibm_db

        conn = self._connect()
        step = "data"  # the step at fault; self._at_fault: its statement, for its own diagnostics
        self._at_fault = None
        try:
            opts = statement_options(self._query_timeout)
            stmt = self._at_fault = ibm_db.prepare(
                conn, f"SELECT {q('batch_uid')} FROM {q(LEDGER)} WHERE {q('batch_id')} = ?", opts)
            ibm_db.execute(stmt, (batch.batch_id,))
            held = ibm_db.fetch_tuple(stmt)
            if held and already_loaded(held[0], batch):
                ibm_db.rollback(conn)
                return False
            total = sum(self._stage(conn, t, batch, opts) for t in TABLES)
            self._at_fault = None
            for statement in batch_steps(bool(batch.manifest.get("full_reload"))):
                ibm_db.exec_immediate(conn, statement, opts)
            step = "ledger"
            led = self._at_fault = ibm_db.prepare(conn, f"INSERT INTO {q(LEDGER)} ({q('batch_id')}, {q('pipeline')},"
                                                  f" {q('rows_loaded')}, {q('batch_uid')}) VALUES (?, ?, ?, ?)", opts)
            ibm_db.execute(led, (batch.batch_id, self._pipeline, total, batch.uid))
            ibm_db.commit(conn)
            return True
        except (BatchIdTaken, BatchRejected, SoftcartError):  # ours (a batch file failing its sha256): as they are
            with contextlib.suppress(Exception):
                ibm_db.rollback(conn)
            raise
        except Exception as exc:  # ibm_db raises plain Exception: classified by SQLSTATE
            if type(exc) not in (Exception, DriverError):  # not the driver's (a spool file gone, a decode
                with contextlib.suppress(Exception):  # error): as it is, never read as the driver's last
                    ibm_db.rollback(conn)  # error state
                raise
            if isinstance(exc, DriverError):  # read already (a second read of a handle is empty)
                state = exc.state
            else:  # the failing statement's own diagnostics; without a handle the connection's last
                handle = self._at_fault
                state = (ibm_db.stmt_error(handle) if handle is not None else ibm_db.stmt_error()) \
                    or ibm_db.conn_error() or ""
            with contextlib.suppress(Exception):
                ibm_db.rollback(conn)
            return self._failed(exc, state, step, batch)

    def _stage(self, conn: Any, t: WTable, batch: SpooledBatch, opts: dict[int, int]) -> int:
        """The batch's rows of ``t`` into its temporary table, a chunk at a time (a full reload of
        millions of rows is never all in memory); returns how many. Rows refused: BatchRejected
        naming them."""
        import ibm_db

        self._at_fault = None
        ibm_db.exec_immediate(conn, declare_sql(t), opts)
        ins = self._at_fault = ibm_db.prepare(conn, insert_stage_sql(t), opts)
        staged = 0
        for rows in batch.row_chunks(t.name):
            try:
                ibm_db.execute_many(ins, tuple(tuple(r) for r in rows))  # text; DB2 casts
            except Exception as exc:  # noqa: BLE001 - ibm_db raises plain Exception; a chain: find the rows at fault
                # read once: each read of a handle's error takes its next diagnostic record
                state = ibm_db.stmt_error(ins) or ""
                if state and sqlstate_kind(state) is not Kind.REJECTED:
                    raise DriverError(state, str(exc)) from None
                # refused rows, or a chain the client failed without a diagnostic (a value it
                # can't convert, CLI0112E: execute_many raises Exception('') with no SQLSTATE)
                ibm_db.exec_immediate(conn, declare_sql(t), opts)  # emptied: try the rows one by one
                culprits = first_failing(rows, functools.partial(_insert_one, ins))
                if not culprits and not state:
                    raise DriverError(state, str(exc)) from None
                raise BatchRejected(rejected_rows_text(t, rows, culprits, staged) or
                                    f"{state}: {_clean(str(exc), self._ep)}") from None
            staged += len(rows)
        return staged

    def _failed(self, exc: Exception, state: str, step: str, batch: SpooledBatch) -> bool:
        """What a failed load means, raised as ours (False: another loader committed this very
        batch first; BatchIdTaken where the ledger holds its number for another batch)."""
        text = _clean(str(exc), self._ep)
        outcome = load_outcome(state, step)
        if outcome == "loaded":
            held = self.fetch(f"SELECT {q('batch_uid')} FROM {q(LEDGER)} WHERE {q('batch_id')} = ?",
                              (batch.batch_id,))
            already_loaded(held[0][0] if held else None, batch)
            return False
        if outcome == "rejected":
            raise BatchRejected(f"{state}: {text}") from None
        if outcome == "config":
            raise ConfigError(f"warehouse {self._ep.display}: {state}: {text}; {sqlstate_fix(state)}") from None
        self.close()
        raise TransientError(f"warehouse {self._ep.display}: {text}") from None

    def check(self, reload_rows: int | None = None) -> list[tuple[bool, str, str]]:
        import ibm_db

        conn = self._connect()
        out: list[tuple[bool, str, str]] = []
        for sql_text, what, fix in check_statements():
            try:
                ibm_db.exec_immediate(conn, sql_text)
                out.append((True, what, ""))
            except Exception as exc:  # noqa: BLE001 - ibm_db raises plain Exception
                state = ibm_db.stmt_error() or ""
                out.append((False, what, f"{state}: {_clean(str(exc), self._ep)[:300]}; {sqlstate_fix(state) or fix}"))
        if reload_rows is not None:
            out.append(self._log_check(reload_rows))
        with contextlib.suppress(Exception):
            ibm_db.rollback(conn)
        return out

    def _log_check(self, rows: int) -> tuple[bool, str, str]:
        """Whether a full reload of ``rows`` fits the warehouse's log (read from SYSIBMADM.DBCFG;
        not judged where the user may not read it)."""
        try:
            config = {str(name).lower(): str(value) for name, value in self.fetch(log_config_sql(), ())}
            loaded = bool(self.fetch(f"SELECT 1 FROM {q(FACTSALES.name)} FETCH FIRST 1 ROW ONLY", ()))
        except SoftcartError as exc:
            return True, "warehouse log space: not read (SYSIBMADM.DBCFG)", f"{exc}; GRANT SELECT ON SYSIBMADM.DBCFG"
        if len(config) < 3:
            return True, "warehouse log space: not read (SYSIBMADM.DBCFG has no log parameters here)", ""
        return log_finding(config, rows, loaded)

    def max_batch_id(self) -> int:
        row = self.fetch(max_batch_sql(), ())
        return int(row[0][0]) if row else 0

    def fetch(self, text: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run a read-only query (the reconcile's checksums); ends its unit of work."""
        import ibm_db

        conn = self._connect()
        try:
            stmt = ibm_db.prepare(conn, text)
            ibm_db.execute(stmt, tuple(params))
            rows = []
            row = ibm_db.fetch_tuple(stmt)
            while row:
                rows.append(tuple(row))
                row = ibm_db.fetch_tuple(stmt)
            ibm_db.rollback(conn)
            return rows
        except Exception as exc:  # noqa: BLE001 - ibm_db raises plain Exception
            self.close()
            raise TransientError(f"warehouse {self._ep.display}: {_clean(str(exc), self._ep)}") from None

    def close(self) -> None:
        import ibm_db

        if self._conn is not None:
            with contextlib.suppress(Exception):
                ibm_db.close(self._conn)
            self._conn = None


def _insert_one(stmt: Any, row: Sequence[Any]) -> str | None:
    import ibm_db

    try:
        ibm_db.execute(stmt, tuple(row))
    except Exception as exc:  # noqa: BLE001 - ibm_db raises plain Exception
        return f"{ibm_db.stmt_error(stmt) or ''}: {str(exc)[:300]}"
    return None


def _clean(text: str, ep: Endpoint) -> str:
    secret = ep.password.get_secret_value()
    return text.replace(secret, "***") if secret else text

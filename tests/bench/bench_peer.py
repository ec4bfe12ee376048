"""softcart-sync next to its closest peer, pg_chameleon 2.0.21 (MySQL -> PostgreSQL, in Python), on
the same servers and the same workload, one after the other, each into a fresh replica:

1. the source table ``sales.sales_data`` made anew with ``--initial`` SoftCart-shaped rows and the
   replicator started (its initial copy done: pg_chameleon's ``init_replica``, our snapshot);
2. a burst of ``--inserts`` inserts, then ``--updates`` updates and ``--deletes`` deletes, in
   statements of 1,000 rows (each its own transaction);
3. the time from the burst's first statement until the replica's row count and checksum (every
   column of every row, compared in Python) equal the source's. A run that never matches within
   ``--timeout`` says what differs (rows missing, left over, different).

softcart-sync runs with the star schema off (like for like with a plain replicator) and on.
pg_chameleon refuses to run as root: it gets a user of its own (``chameleon``) and a venv of its
own in that user's home (made on first use: ``useradd``, ``python3 -m venv``, ``pip install
pg_chameleon==2.0.21``), so this script needs root and PyPI. Prints a markdown table, the ratios
and a JSON line.

    .venv/bin/python -m tests.bench.bench_peer [--runs 3] [--inserts 100000] [--updates 20000]
        [--deletes 10000] [--initial 10000] [--without-peer]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import pwd
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pymysql

from cdc.dev.localservers import MariaDBServer, PostgresServer
from tests.bench.bench_stages import DAYS, FIRST_DAY, Daemon

PEER, PEER_VERSION = "chameleon", "2.0.21"
RUNUSER = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin") or "runuser"
STATEMENT = 1000
DDL = ("CREATE TABLE sales_data (rowid int NOT NULL PRIMARY KEY, product_id int NOT NULL, customer_id int NOT NULL,"
       " price decimal(12,2) NOT NULL, quantity int NOT NULL, timestamp timestamp NOT NULL"
       " DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP)")
Row = tuple[Any, ...]


def sale(rnd: random.Random, rowid: int) -> Row:
    when = FIRST_DAY + dt.timedelta(minutes=rnd.randrange(DAYS * 24 * 60))
    return (rowid, rnd.randint(1, 1000), rnd.randint(1, 10000), Decimal(rnd.randint(100, 50000)) / 100,
            rnd.randint(1, 5), when)


def reset_source(src: pymysql.connections.Connection, initial: int) -> None:
    """The source table made anew with ``initial`` rows (the same rows every run)."""
    rnd = random.Random(1)
    with src.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS sales_data")
        cur.execute(DDL)
        for start in range(1, initial + 1, STATEMENT):
            cur.executemany("INSERT INTO sales_data VALUES (%s, %s, %s, %s, %s, %s)",
                            [sale(rnd, i) for i in range(start, min(initial, start + STATEMENT - 1) + 1)])


def burst(src: pymysql.connections.Connection, first: int, inserts: int, updates: int, deletes: int) -> None:
    """Inserts, then updates, then deletes, 1,000 rows a statement (autocommit: one transaction each).
    Updates and deletes fall on the initial rows and the burst's own, spread over the table."""
    rnd = random.Random(2)
    with src.cursor() as cur:
        for start in range(first, first + inserts, STATEMENT):
            rows = [sale(rnd, i) for i in range(start, min(first + inserts, start + STATEMENT))]
            values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(rows))
            cur.execute(f"INSERT INTO sales_data VALUES {values}", [v for r in rows for v in r])
        last = first + inserts - 1
        step = max(1, last // max(1, updates))
        for start in range(0, updates, STATEMENT):
            ids = [1 + (i * step) % last for i in range(start, min(updates, start + STATEMENT))]
            cur.execute("UPDATE sales_data SET quantity = quantity + 1, price = price + 0.01, timestamp = timestamp"
                        " WHERE rowid IN %s", (ids,))
        step = max(1, last // max(1, deletes))
        for start in range(0, deletes, STATEMENT):
            ids = [2 + (i * step) % last for i in range(start, min(deletes, start + STATEMENT))]
            cur.execute("DELETE FROM sales_data WHERE rowid IN %s", (ids,))


def _canonical(row: Row) -> Row:
    """A row as both sides compare it: integers, the price's exact value, the timestamp naive UTC
    to the second."""
    ts = row[5]
    if ts.tzinfo is not None:
        ts = ts.astimezone(dt.UTC).replace(tzinfo=None)
    return (int(row[0]), int(row[1]), int(row[2]), Decimal(row[3]).normalize(), int(row[4]), ts.replace(microsecond=0))


def source_rows(src: pymysql.connections.Connection) -> dict[int, Row]:
    with src.cursor() as cur:
        cur.execute("SELECT rowid, product_id, customer_id, price, quantity, timestamp FROM sales_data")
        return {int(r[0]): _canonical(r) for r in cur.fetchall()}


def replica_rows(conn: psycopg.Connection[Any], table: str) -> dict[int, Row]:
    rows = conn.execute(f"SELECT rowid, product_id, customer_id, price, quantity, timestamp FROM {table}").fetchall()
    return {int(r[0]): _canonical(r) for r in rows}


def checksum(rows: dict[int, Row]) -> str:
    h = hashlib.sha256()
    for key in sorted(rows):
        h.update(repr(rows[key]).encode())
    return h.hexdigest()


def differences(want: dict[int, Row], got: dict[int, Row]) -> str:
    missing = sum(1 for k in want if k not in got)
    extra = sum(1 for k in got if k not in want)
    changed = sum(1 for k, v in want.items() if k in got and got[k] != v)
    return f"{missing} rows missing, {extra} left over (deleted at the source), {changed} different"


class Replica:
    """The replica table in PostgreSQL, polled: its count every 50 ms, its rows once the count is
    the source's."""

    def __init__(self, pg_url: str, table: str) -> None:
        self.conn = psycopg.connect(pg_url, autocommit=True)
        self.table = table

    def count(self) -> int | None:
        try:
            row = self.conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()
        except psycopg.errors.UndefinedTable:
            return None
        return int(row[0]) if row else None

    def rows(self) -> dict[int, Row]:
        return replica_rows(self.conn, self.table)

    def wait_matching(self, want: dict[int, Row], started: float, timeout: float) -> tuple[float | None, str]:
        """Seconds from ``started`` until the replica has the count and checksum of ``want``;
        (None, what differs) when the deadline passes first."""
        deadline, want_sum = time.monotonic() + timeout, checksum(want)
        while time.monotonic() < deadline:
            if self.count() == len(want) and checksum(self.rows()) == want_sum:
                return time.monotonic() - started, ""
            time.sleep(0.05)  # polling the replicator's progress, with the deadline above
        if self.count() is None:
            return None, "no replica table"
        return None, differences(want, self.rows())

    def close(self) -> None:
        self.conn.close()


def ensure_peer() -> Path:
    """pg_chameleon 2.0.21 in a venv of the user ``chameleon`` (made on first use); its command."""
    try:
        home = Path(pwd.getpwnam(PEER).pw_dir)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", PEER], check=True)
        home = Path(pwd.getpwnam(PEER).pw_dir)
    venv = home / f"venv-pg_chameleon-{PEER_VERSION}"
    command = venv / "bin" / "chameleon"
    if not command.exists():
        python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or "python3"
        as_peer([python, "-m", "venv", str(venv)], home)
        as_peer([str(venv / "bin" / "pip"), "install", "--quiet", f"pg_chameleon=={PEER_VERSION}"], home)
    return command


def as_peer(args: list[str], home: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run as the peer's user (pg_chameleon refuses root), in its home, clocks in UTC."""
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "TZ": "UTC", "LANG": "C.UTF-8"}
    done = subprocess.run([RUNUSER, "-u", PEER, "--", *args], env=env, cwd=home, capture_output=True,
                          text=True, check=False, timeout=kw.pop("timeout", 3600), **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])}: exit {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
    return done


def peer_config(maria: MariaDBServer, pg: PostgresServer, database: str, home: Path) -> str:
    """pg_chameleon's configuration (its example's settings; our servers; sales -> sch_sales). The
    PostgreSQL password is a placeholder (trust authentication): pg_chameleon writes its connection
    string as ``password=%s port=%s``, and libpq reads an empty one as ``password=port=...``."""
    name = f"bench_{database}"
    folder = home / ".pg_chameleon"
    for sub in ("configuration", "logs", "pid"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    text = f"""---
pid_dir: '{folder}/pid/'
log_dir: '{folder}/logs/'
log_dest: file
log_level: info
log_days_keep: 10
rollbar_key: ''
rollbar_env: ''
type_override: {{}}
pg_conn:
  host: "127.0.0.1"
  port: "{pg.port}"
  user: "postgres"
  password: "trust"
  database: "{database}"
  charset: "utf8"
sources:
  mysql:
    db_conn:
      host: "127.0.0.1"
      port: "{maria.port}"
      user: "root"
      password: ""
      charset: 'utf8'
      connect_timeout: 10
    schema_mappings:
      sales: sch_sales
    limit_tables:
    skip_tables:
    grant_select_to:
    lock_timeout: "120s"
    my_server_id: 100
    replica_batch_size: 10000
    replay_max_rows: 10000
    batch_retention: '1 day'
    copy_max_memory: "300M"
    copy_mode: 'file'
    out_dir: /tmp
    sleep_loop: 1
    on_error_replay: continue
    on_error_read: continue
    auto_maintenance: "disabled"
    gtid_enable: false
    type: mysql
    skip_events:
      insert:
      delete:
      update:
    keep_existing_schema: No
    net_read_timeout: 600
"""
    (folder / "configuration" / f"{name}.yml").write_text(text)
    subprocess.run(["chown", "-R", f"{PEER}:{PEER}", str(folder)], check=True)
    return name


def measure(src: pymysql.connections.Connection, replica: Replica, args: argparse.Namespace) -> dict[str, Any]:
    """The initial copy awaited, then the burst, timed until the replica matches."""
    copied, diff = replica.wait_matching(source_rows(src), time.monotonic(), args.timeout)
    if copied is None:
        raise RuntimeError(f"the initial copy never matched: {diff}")
    started = time.monotonic()
    burst(src, args.initial + 1, args.inserts, args.updates, args.deletes)
    written = time.monotonic() - started
    seconds, diff = replica.wait_matching(source_rows(src), started, args.timeout)
    changes = args.inserts + args.updates + args.deletes
    return {"seconds": seconds, "changes_per_s": changes / seconds if seconds else None,
            "burst_written_s": written, "mismatch": diff}


def run_ours(maria: MariaDBServer, pg: PostgresServer, base: Path, name: str, star: bool,
             args: argparse.Namespace) -> dict[str, Any]:
    src = source(maria, args.initial)
    database = fresh_database(pg, name)
    env = {"SOFTCART_SOURCE_URL": maria.url(database="sales"), "SOFTCART_STAGING_URL": pg.url(database),
           "SOFTCART_STAR_TABLE": "sales_data" if star else "", "SOFTCART_METRICS_LISTEN": "127.0.0.1:0",
           "SOFTCART_LOG_LEVEL": "warning", "SOFTCART_PIPELINE_NAME": name}
    daemon = Daemon(env, base / f"{name}.log")
    daemon.start()
    replica = Replica(pg.url(database), "staging.sales_data")
    try:
        return measure(src, replica, args)
    finally:
        daemon.stop()
        replica.close()
        src.close()


def run_peer(maria: MariaDBServer, pg: PostgresServer, command: Path, name: str,
             args: argparse.Namespace) -> dict[str, Any]:
    src = source(maria, args.initial)
    database = fresh_database(pg, name)
    home = command.parents[2]
    config = peer_config(maria, pg, database, home)
    chameleon = [str(command)]
    opts = ["--config", config, "--source", "mysql"]
    as_peer([*chameleon, "create_replica_schema", "--config", config], home)
    as_peer([*chameleon, "add_source", *opts], home)
    # --debug: in the foreground (a daemonized one is killed as runuser's session ends), logging to stdout
    as_peer([*chameleon, "init_replica", *opts, "--debug"], home)
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "TZ": "UTC", "LANG": "C.UTF-8"}
    log = (home / ".pg_chameleon" / "logs" / f"{name}-replica.out").open("ab")
    proc = subprocess.Popen([RUNUSER, "-u", PEER, "--", *chameleon, "start_replica", *opts, "--debug"],
                            env=env, cwd=home, stdout=log, stderr=log)
    replica = Replica(pg.url(database), "sch_sales.sales_data")
    try:
        return measure(src, replica, args)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(60)
        log.close()
        replica.close()
        src.close()


def source(maria: MariaDBServer, initial: int) -> pymysql.connections.Connection:
    """The source made anew (its binlog too: each replicator starts from the same place)."""
    src = pymysql.connect(host="127.0.0.1", port=maria.port, user="root", autocommit=True)
    with src.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS sales")
        cur.execute("USE sales")
    reset_source(src, initial)
    return src


def fresh_database(pg: PostgresServer, name: str) -> str:
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="rounds; the table shows each tool's median")
    p.add_argument("--initial", type=int, default=10_000, help="rows in the source before the replica starts")
    p.add_argument("--inserts", type=int, default=100_000)
    p.add_argument("--updates", type=int, default=20_000)
    p.add_argument("--deletes", type=int, default=10_000)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a run may take to match")
    p.add_argument("--without-peer", action="store_true", help="softcart-sync only (no root or PyPI needed)")
    args = p.parse_args()
    command = None if args.without_peer else ensure_peer()
    base = Path(tempfile.mkdtemp(prefix="softcart-bench-peer-"))
    base.chmod(0o755)
    maria, pg = MariaDBServer(base / "mariadb"), PostgresServer(base / "pg")
    maria.start()
    pg.start()
    results: dict[str, list[dict[str, Any]]] = {"softcart-sync, star schema off": [],
                                                 "softcart-sync, star schema on": []}
    if command is not None:
        results[f"pg_chameleon {PEER_VERSION}"] = []
    try:
        for run in range(args.runs):
            results["softcart-sync, star schema off"].append(run_ours(maria, pg, base, f"plain_{run}", False, args))
            results["softcart-sync, star schema on"].append(run_ours(maria, pg, base, f"star_{run}", True, args))
            if command is not None:
                results[f"pg_chameleon {PEER_VERSION}"].append(run_peer(maria, pg, command, f"peer_{run}", args))
    finally:
        maria.stop()
        pg.stop()
    print(table(results, args))
    print(json.dumps({"bench": "peer", "args": vars(args), "results": results}, default=str))


def table(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    changes = args.inserts + args.updates + args.deletes
    lines = [f"| {args.inserts:,} inserts + {args.updates:,} updates + {args.deletes:,} deletes in 1,000-row"
             f" statements, {args.initial:,} rows before | median s to match | changes/s | runs (s) |",
             "|---|---|---|---|"]
    medians: dict[str, float] = {}
    for name, runs in results.items():
        done = [r["seconds"] for r in runs if r["seconds"] is not None]
        failed = [r["mismatch"] for r in runs if r["seconds"] is None]
        if done:
            medians[name] = statistics.median(done)
        figure = f"{medians[name]:.1f}" if done else "never matched"
        rate = f"{changes / medians[name]:,.0f}" if done else "-"
        shown = ", ".join(f"{r['seconds']:.1f}" if r["seconds"] is not None else "no match" for r in runs)
        lines.append(f"| {name} | {figure} | {rate} | {shown} |")
        lines += [f"|  run that never matched: {why} | | | |" for why in failed]
    peer = next((n for n in medians if n.startswith("pg_chameleon")), None)
    if peer:
        lines.append("")
        lines += [f"{name}: {medians[peer] / medians[name]:.1f}x pg_chameleon's speed"
                  for name in medians if name.startswith("softcart")]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

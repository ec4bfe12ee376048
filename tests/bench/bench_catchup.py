"""Catch-up only, repeated: where the daemon's time goes when it applies a backlog.

Sets up once (private servers, ``--rows`` rows snapshotted, the daemon stopped, ``--changes`` row
changes written), keeps staging as it was before the changes as a template database, and then, for
each run, restores staging from the template and times the daemon through the backlog, from its
start and once it streams (start-up: imports, connections, the source's tables read); each run
also prints the CPU seconds the daemon (from its start), PostgreSQL and MariaDB spent. With
``--profile`` the last run is sampled by py-spy (``pip install py-spy``) and the hottest functions
are printed per thread.

    .venv/bin/python -m tests.bench.bench_catchup [--rows 200000] [--changes 200000] [--runs 3] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import pymysql

from cdc.dev.localservers import MariaDBServer, PostgresServer
from tests.bench.bench_stages import Daemon, load_source, wait_caught_up, write_changes


def streaming_since(log: Path, offset: int) -> float:
    """When (wall clock) the daemon logged ``streaming`` (its start-up over: imports, connections,
    the source's tables read), in its log from ``offset`` on."""
    with log.open("rb") as f:
        f.seek(offset)
        for line in f:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "streaming":
                    return dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
    raise RuntimeError(f"the daemon never logged `streaming`; see {log}")


def decode_only(env: dict[str, str], pg_url: str) -> tuple[int, float]:
    """The binlog source alone (no writer) from staging's saved position to the source's end:
    changes decoded and seconds."""
    import os
    import threading

    from cdc.capture import mysql
    from cdc.capture.source import BinlogSource
    from cdc.pipeline import Pipeline
    from cdc.settings import load_settings
    from loader.checkpoint import load_position
    from transform.model import TxnChunk

    os.environ.update(env)
    settings = load_settings()
    tables, flavor = Pipeline(settings).prepare()
    with psycopg.connect(pg_url) as c:
        start = load_position(c, settings.pipeline_name)
    assert start is not None
    conn = mysql.connect(settings)
    end = mysql.binary_logs(conn)[-1]
    conn.close()
    n = 0
    stop = threading.Event()
    started = time.monotonic()
    for item in BinlogSource(settings, tables, flavor, start).chunks(stop):
        if isinstance(item, TxnChunk):
            n += len(item.changes)
            if item.commit is not None and (item.commit.file, item.commit.pos) >= end:
                break
    return n, time.monotonic() - started


def costliest_statements(conn: psycopg.Connection[Any], limit: int) -> list[tuple[Any, ...]]:
    """pg_stat_statements' costliest statements since its reset: seconds, calls, rows, the text."""
    return conn.execute(
        "SELECT round((total_exec_time / 1000)::numeric, 2), calls, rows, left(regexp_replace(query, '\\s+', ' ',"
        " 'g'), 150) FROM pg_stat_statements WHERE query NOT LIKE '%%pg_stat_statements%%'"
        " ORDER BY total_exec_time DESC LIMIT %s", (limit,)).fetchall()


def cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) of a process, its live descendants and the children they reaped
    (PostgreSQL's exited backends count in the postmaster's)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    ticks: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        children[int(fields[1])].append(int(d.name))
        ticks[int(d.name)] = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def restore(admin: psycopg.Connection[Any]) -> None:
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'staging'")
    admin.execute("DROP DATABASE IF EXISTS staging")
    admin.execute("CREATE DATABASE staging TEMPLATE staging_before")


def profile_summary(raw: Path, top: int = 25) -> str:
    """py-spy's raw (collapsed) stacks -> per thread: samples, and the functions with the most self
    and inclusive samples."""
    self_: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    incl: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread, frames = frames[0], frames[1:]
        n = int(count)
        totals[thread] += n
        if frames:
            self_[thread][frames[-1]] += n
        for f in set(frames):
            incl[thread][f] += n
    out = []
    for thread, n in totals.most_common():
        if n < sum(totals.values()) * 0.02:
            continue
        out.append(f"\n## {thread}: {n} samples")
        out.append("self:")
        out += [f"  {c / n:6.1%}  {f}" for f, c in self_[thread].most_common(top)]
        out.append("inclusive:")
        out += [f"  {c / n:6.1%}  {f}" for f, c in incl[thread].most_common(top)]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--changes", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="sample the last run with py-spy")
    p.add_argument("--decode-only", action="store_true", help="measure the binlog source alone, then stop")
    p.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for the daemon")
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="softcart-catchup-"))
    base.chmod(0o755)
    maria = MariaDBServer(base / "mariadb")
    pg = PostgresServer(base / "pg", settings=("shared_preload_libraries=pg_stat_statements",) if args.profile else ())
    maria.start()
    pg.start()
    try:
        admin = psycopg.connect(pg.url(), autocommit=True)
        admin.execute("CREATE DATABASE staging")
        admin.execute("CREATE DATABASE warehouse")
        env = load_source(maria, pg, base, args.rows, dict(e.split("=", 1) for e in args.env))
        src = pymysql.connect(host="127.0.0.1", port=maria.port, user="root", database="sales", autocommit=True)
        stg = psycopg.connect(pg.url("staging"), autocommit=True)
        daemon = Daemon(env, base / "daemon.log")
        daemon.start()
        seconds = wait_caught_up(src, stg)
        print(f"snapshot (daemon start to caught up): {args.rows} rows in {seconds:.2f} s, "
              f"{args.rows / seconds:,.0f} rows/s", flush=True)
        daemon.stop()
        stg.close()
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'staging'")
        admin.execute("CREATE DATABASE staging_before TEMPLATE staging")
        counts = write_changes(src, args.changes, args.rows + 1, args.rows, seed=3)
        restore(admin)
        if args.profile:
            import cProfile
            import pstats
            prof = cProfile.Profile()
            n, seconds = prof.runcall(decode_only, env, pg.url("staging"))
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        n, seconds = decode_only(env, pg.url("staging"))
        print(f"binlog source alone: {n} changes in {seconds:.2f} s, {n / seconds:,.0f} changes/s", flush=True)
        rates = []
        if args.decode_only:
            return
        for run in range(args.runs):
            restore(admin)
            stg = psycopg.connect(pg.url("staging"), autocommit=True)
            daemon = Daemon({**env, "SOFTCART_LOG_LEVEL": "info", "SOFTCART_LOG_FORMAT": "json"}, base / "daemon.log")
            offset = daemon.log.stat().st_size if daemon.log.exists() else 0
            daemon.start()
            assert daemon.proc is not None and pg.proc is not None and maria.proc is not None
            servers = {"PostgreSQL": pg.proc.pid, "MariaDB": maria.proc.pid}
            cpu = {name: cpu_seconds(pid) for name, pid in servers.items()}
            spy = None
            if args.profile and run == args.runs - 1:
                stg.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                stg.execute("SELECT pg_stat_statements_reset()")
                exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                assert daemon.proc is not None
                spy = subprocess.Popen([exe, "record", "--pid", str(daemon.proc.pid), "--format", "raw", "--threads",
                                        "--subprocesses", "--rate", "200", "-o", str(base / "raw.txt")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds = wait_caught_up(src, stg)
            streamed = time.time() - streaming_since(daemon.log, offset)
            cpu = {"daemon": cpu_seconds(daemon.proc.pid),
                   **{name: cpu_seconds(pid) - cpu[name] for name, pid in servers.items()}}
            if spy is not None:
                spy.send_signal(2)
                spy.wait(60)
            rss = daemon.peak_rss_mb()
            if spy is not None:
                statements = costliest_statements(stg, 15)
            daemon.stop()
            stg.close()
            rates.append(args.changes / seconds)
            print(f"run {run + 1}: {seconds:.2f} s, {args.changes / seconds:,.0f} changes/s (of which start-up"
                  f" {seconds - streamed:.2f} s; {args.changes / streamed:,.0f} changes/s once streaming), peak RSS"
                  f" {rss:.0f} MB; CPU s " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()), flush=True)
        print(json.dumps({"changes": counts, "runs": rates, "median": statistics.median(rates)}))
        if args.profile:
            print(profile_summary(base / "raw.txt"))
            print("\n## PostgreSQL statements (seconds, calls, rows, statement)")
            for row in statements:
                print("  ", *row)
    finally:
        maria.stop()
        pg.stop()
        time.sleep(0)


if __name__ == "__main__":
    main()

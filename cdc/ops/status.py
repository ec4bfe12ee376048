"""`softcart-sync status`: what the pipeline has done, read from PostgreSQL, so it works whether
or not the daemon runs; and what the running daemon's /readyz says (each stage's stall)."""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request
from typing import Any

from psycopg import sql

from cdc.settings import Settings
from loader.ddl import META
from loader.flush import retrying_batch
from loader.pg import pg_connect
from transform.progress import copy_eta


def ask_daemon(settings: Settings, timeout: float = 2.0) -> dict[str, Any]:
    """What the running daemon's /readyz says (each stage's stall, named), at SOFTCART_METRICS_LISTEN."""
    host, port = settings.metrics_address
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # noqa: S104 - a wildcard listen: ask loopback
    at = f"{host}:{port}"
    if port == 0:
        return {"answering": False, "at": at, "why": "SOFTCART_METRICS_LISTEN has port 0 (any port): nothing to ask"}
    try:
        with urllib.request.urlopen(f"http://{at}/readyz", timeout=timeout) as r:
            return {"answering": True, "at": at, "ready": True, "says": r.read().decode().strip()}
    except urllib.error.HTTPError as exc:
        return {"answering": True, "at": at, "ready": False, "says": exc.read().decode().strip()}
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        return {"answering": False, "at": at, "why": f"{reason} (not running, or listening elsewhere: check"
                " SOFTCART_METRICS_LISTEN)"}


def read_status(settings: Settings) -> dict[str, Any]:
    daemon = ask_daemon(settings)
    with pg_connect(settings.staging_config, autocommit=True) as conn:
        have_meta = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{META}.position",)).fetchone()
        if not have_meta or not have_meta[0]:
            return {"pipeline": settings.pipeline_name, "state": "not started (no position stored yet)",
                    "daemon": daemon, "dead_letters": {}, "batches": {}, "snapshot": []}
        pos = conn.execute(sql.SQL("SELECT binlog_file, binlog_pos, gtid, event_time, committed_at, now()"
                                   " FROM {}.position WHERE pipeline = %s").format(sql.Identifier(META)),
                           (settings.pipeline_name,)).fetchone()
        dead = conn.execute(sql.SQL("SELECT kind, count(*) FILTER (WHERE resolved_at IS NULL), count(*)"
                                    " FROM {}.dead_letter WHERE pipeline = %s GROUP BY kind ORDER BY kind")
                            .format(sql.Identifier(META)), (settings.pipeline_name,)).fetchall()
        batches = conn.execute(sql.SQL("SELECT state, count(*), min(created_at) FROM {}.batch WHERE pipeline = %s"
                                       " GROUP BY state").format(sql.Identifier(META)),
                               (settings.pipeline_name,)).fetchall()
        retrying = retrying_batch(conn, settings.pipeline_name)
        snap = conn.execute(sql.SQL("SELECT source_table, rows_copied, position, finished_at FROM {}.snapshot"
                                    " WHERE pipeline = %s ORDER BY source_table").format(sql.Identifier(META)),
                            (settings.pipeline_name,)).fetchall()
        copies = online_copies(conn, settings.pipeline_name)
        stops = table_stops(conn, settings.pipeline_name, retaken=settings.online_copy != "off")
    for c in copies:  # a stopped table's copy waits for its take-up (and its wait, if any)
        c["waits_for_take_up"] = any(t["table"] == c["table"] and t["taken_up_at"] is None for t in stops)
    out: dict[str, Any] = {"pipeline": settings.pipeline_name, "daemon": daemon, "online_copies": copies,
                           "stopped_tables": stops}
    if pos is None:
        out["state"] = "not started (no position stored yet)"
    else:
        file, offset, gtid, event_time, committed_at, now = pos
        out.update(
            state="streaming position stored",
            position={"file": file, "pos": offset, "gtid": gtid},
            last_commit=committed_at.isoformat(),
            seconds_since_last_commit=round((now - committed_at).total_seconds(), 1),
            last_source_event=event_time.isoformat() if event_time else None,
            lag_at_last_commit_seconds=(round((committed_at - event_time).total_seconds(), 1)
                                        if event_time else None),
        )
    out["dead_letters"] = {k: {"open": o, "total": t} for k, o, t in dead}
    out["batches"] = {s: {"count": n, "oldest": oldest.isoformat()} for s, n, oldest in batches}
    if retrying is not None:
        out["batches"].setdefault("pending", {})["retrying"] = {
            "batch": retrying.batch, "attempts": retrying.attempts, "failing_since": retrying.since.isoformat(),
            "last_error": retrying.error}
    out["snapshot"] = [{"table": t, "rows": r, "position": p, "finished_at": f.isoformat()} for t, r, p, f in snap]
    return out


def online_copies(conn: Any, pipeline: str) -> list[dict[str, Any]]:
    """Each table copied online: rows copied of the source's estimate, chunks, ETA or when done."""
    if conn.execute("SELECT to_regclass(%s)", (f"{META}.online_copy",)).fetchone() == (None,):
        return []
    out = []
    for table, copied, estimated, chunks, started, finished, elapsed in conn.execute(
            sql.SQL("SELECT source_table, rows_copied, rows_estimated, chunks, started_at, finished_at,"
                    " extract(epoch FROM now() - started_at)::float8 FROM {}.online_copy WHERE pipeline = %s"
                    " ORDER BY started_at, source_table").format(sql.Identifier(META)), (pipeline,)).fetchall():
        eta = None if finished else copy_eta(int(copied), int(estimated), float(elapsed))
        out.append({"table": table, "rows_copied": copied, "rows_estimated": estimated, "chunks": chunks,
                    "started_at": started.isoformat(), "finished_at": finished.isoformat() if finished else None,
                    "eta_seconds": round(eta, 1) if eta is not None else None})
    return out


def table_stops(conn: Any, pipeline: str, retaken: bool) -> list[dict[str, Any]]:
    """Each table the stream stopped following (a schema change staging can't follow, a
    statement-format change): why, where, and whether it is still stopped or was taken up again;
    ``retaken``: online copies are on, so the daemon copies a stopped table again by itself."""
    if conn.execute("SELECT to_regclass(%s)", (f"{META}.stopped_table",)).fetchone() == (None,):
        return []
    rows = conn.execute(sql.SQL("SELECT source_table, reason, statement, position, stopped_at, taken_up_at, stops,"
                                " CASE WHEN retake_at > now() THEN retake_at END FROM {}.stopped_table"
                                " WHERE pipeline = %s ORDER BY taken_up_at NULLS FIRST, stopped_at, source_table")
                        .format(sql.Identifier(META)), (pipeline,)).fetchall()
    out = []
    for t, reason, statement, position, stopped, taken, stops, waits in rows:
        next_copy = waits.isoformat() if waits else None
        out.append({"table": t, "reason": reason, "statement": statement, "position": position,
                    "stopped_at": stopped.isoformat(), "taken_up_at": taken.isoformat() if taken else None,
                    "stops_in_a_row": stops, "next_copy_at": next_copy,
                    "fix": None if taken else stop_fix(retaken, stops, next_copy)})
    return out


def stop_fix(retaken: bool, stops: int, next_copy_at: str | None) -> str:
    """What takes a stopped table again: the running daemon's online copy (now, or when the wait
    of a table stopped again and again ends), or `resnapshot` with online copies off."""
    if not retaken:
        return "its rows are skipped; `softcart-sync resnapshot` (daemon stopped) takes it again"
    if next_copy_at is None:
        return "copied again online by the running daemon"
    return (f"copied again online by the running daemon from {next_copy_at}: stopped {stops} times in a row while"
            " its copy ran, each next copy waits twice as long (SOFTCART_RETAKE_BACKOFF_SECONDS)")


def render(status: dict[str, Any]) -> str:
    lines = [f"pipeline       {status['pipeline']}: {status['state']}"]
    d = status["daemon"]
    if d["answering"]:
        lines.append(f"daemon         {'ready' if d['ready'] else 'NOT READY'} ({d['at']}): {d['says']}")
    else:
        lines.append(f"daemon         not answering at {d['at']}: {d['why']}")
    if "position" in status:
        p = status["position"]
        lines.append(f"position       {p['file']}:{p['pos']}" + (f"  gtid {p['gtid']}" if p["gtid"] else ""))
        lines.append(f"last commit    {status['last_commit']} ({_ago(status['seconds_since_last_commit'])})")
        if status["lag_at_last_commit_seconds"] is not None and not status["daemon"].get("answering"):
            # the running daemon's line above has the lag (/readyz's); without it, what staging holds,
            # named for what it is: binlog time has whole seconds
            lines.append(f"commit delay   {status['lag_at_last_commit_seconds']} s from the source's last event to"
                         " staging's last commit (binlog time, whole seconds)")
    dead = status["dead_letters"]
    if dead:
        parts = [f"{k}: {v['open']} open of {v['total']}" for k, v in dead.items()]
        lines.append("dead letters   " + "; ".join(parts) + "  (softcart.dead_letter)")
    else:
        lines.append("dead letters   none")
    batches = status["batches"]
    if batches:
        parts = [f"{state}: {b['count']}" + (f" (oldest {b['oldest']})" if state != "loaded" else "")
                 for state, b in sorted(batches.items())]
        lines.append("warehouse      batches " + "; ".join(parts))
        retrying = batches.get("pending", {}).get("retrying")
        if retrying:
            lines.append(f"               batch {retrying['batch']} failing since {retrying['failing_since']}"
                         f" ({retrying['attempts']} attempts): {retrying['last_error']}")
    else:
        lines.append("warehouse      no batches yet")
    lines.extend(_stops(status.get("stopped_tables", [])))
    for s in status["snapshot"]:
        lines.append(f"snapshot       {s['table']}: {s['rows']} rows at {s['position']}, {s['finished_at']}")
    if not status["snapshot"]:
        lines.append("snapshot       not taken yet")
    for c in status.get("online_copies", []):
        if c["finished_at"]:
            lines.append(f"online copy    {c['table']}: {c['rows_copied']} rows in {c['chunks']} chunks,"
                         f" done {c['finished_at']}")
        elif c.get("waits_for_take_up"):
            lines.append(f"online copy    {c['table']}: asked, starts when the table is taken up (STOPPED above)")
        else:
            share = f" ({100 * c['rows_copied'] // c['rows_estimated']}%)" if c["rows_estimated"] else ""
            eta = f", ETA {_ago(c['eta_seconds']).removesuffix(' ago')}" if c["eta_seconds"] is not None else ""
            lines.append(f"online copy    {c['table']}: {c['rows_copied']} of ~{c['rows_estimated']} rows{share},"
                         f" {c['chunks']} chunks{eta}  (copying while the stream goes on)")
    return "\n".join(lines)


def _stops(stops: list[dict[str, Any]]) -> list[str]:
    lines = []
    for s in stops:
        statement = " ".join(s["statement"].split())
        statement = statement if len(statement) <= 100 else statement[:99] + "…"
        if s["taken_up_at"] is None:
            lines.append(f"STOPPED        {s['table']}: not followed since {s['stopped_at']} at {s['position']}:"
                         f" {s['reason']}")
            if statement:
                lines.append(f"               statement: {statement}")
            lines.append(f"               {s['fix']}")
        else:
            lines.append(f"taken up       {s['table']}: copied again {s['taken_up_at']} after its stop at"
                         f" {s['stopped_at']} ({s['reason']})")
    return lines


def _ago(seconds: float) -> str:
    return f"{dt.timedelta(seconds=int(seconds))} ago"


def to_json(status: dict[str, Any]) -> str:
    return json.dumps(status, indent=2, sort_keys=True)

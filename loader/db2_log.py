"""Db2's transaction log against the largest unit of work the loader runs (pure): `check` reads
the database's three log parameters and says whether a full reload fits (#32 item 1)."""

from __future__ import annotations

#: Log bytes a full reload writes per warehouse row it inserts: the row, its index entries and
#: their undo. IBM's default log (LOGFILSIZ 1000 x 4 KB x (3 + 10) files, about 52 MB) holds about
#: 100,000 facts' worth; a reload over loaded tables also logs their deletes: twice that.
LOG_BYTES_PER_ROW = 520
LOG_PAGE = 4096  # LOGFILSIZ counts 4 KB pages


def log_config_sql() -> str:
    """The database's log size parameters (SYSIBMADM.DBCFG: SELECT is PUBLIC's in a non-restrictive
    database); one row per parameter (MAX over members)."""
    return ("SELECT NAME, MAX(VALUE) FROM SYSIBMADM.DBCFG WHERE NAME IN ('logfilsiz', 'logprimary', 'logsecond')"
            " GROUP BY NAME")


def log_capacity(config: dict[str, str]) -> int | None:
    """Bytes of active log a unit of work can use: LOGFILSIZ x 4 KB x (LOGPRIMARY + LOGSECOND);
    None: unlimited (LOGSECOND -1, infinite logging)."""
    size, primary, secondary = (int(config[k]) for k in ("logfilsiz", "logprimary", "logsecond"))
    if secondary == -1:
        return None
    return size * LOG_PAGE * (primary + secondary)


def reload_log_bytes(rows: int, replacing: bool) -> int:
    """What a full reload of ``rows`` warehouse rows logs, in one unit of work (over loaded tables
    their deletes too)."""
    return rows * LOG_BYTES_PER_ROW * (2 if replacing else 1)


def log_finding(config: dict[str, str], rows: int, replacing: bool) -> tuple[bool, str, str]:
    """`check`'s line on the largest unit of work the loader runs (a full reload: every row of the
    star schema) against the warehouse's log space."""
    capacity = log_capacity(config)
    need = reload_log_bytes(rows, replacing)
    what = f"warehouse log space for a full reload of {rows:,} rows ({_mb(need)} needed"
    if capacity is None:
        return True, what + "; LOGSECOND -1: unlimited)", ""
    ok = need <= capacity * 0.8  # a margin for other work and the log's own overhead
    size, files = int(config["logfilsiz"]), int(config["logprimary"]) + int(config["logsecond"])
    pages = -(-int(need / 0.8) // LOG_PAGE)
    fix = "" if ok else (
        "a full reload would fill the transaction log (SQL0964C); as the DBA, before the first load: raise"
        f" LOGFILSIZ to {-(-pages // files)} (`db2 UPDATE DB CFG USING LOGFILSIZ {-(-pages // files)}`, from the next"
        f" database activation), or LOGPRIMARY + LOGSECOND to {-(-pages // size)} files of today's size (docs/design/"
        "warehouse-flush.md)")
    return ok, what + f", {_mb(capacity)} of log: LOGFILSIZ {size} x 4 KB x (LOGPRIMARY" \
        f" {config['logprimary']} + LOGSECOND {config['logsecond']}))", fix


def _mb(n: int) -> str:
    return f"{n / 1_000_000:,.0f} MB" if n >= 10_000_000 else f"{n / 1_000_000:.1f} MB"

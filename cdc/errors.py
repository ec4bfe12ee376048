"""The one classifier: any exception a stage raises becomes one of ours (transform.errors).

Ours stay as they are (the code that raised them knew best: a ConfigError names its setting). A
lost or refused connection to staging (psycopg's OperationalError: also a statement cancelled by a
time limit, a lock not available) or to the source (pymysql's OperationalError and InterfaceError)
is transient. Anything else is a fault of ours or of data we can't handle: fatal, named by its type.
Used by the supervisor (both stages) and the flush thread alike.
"""

from __future__ import annotations

import psycopg
import pymysql

from transform.errors import FatalError, SoftcartError, TransientError


def as_ours(exc: BaseException) -> SoftcartError:
    if isinstance(exc, SoftcartError):
        return exc
    if isinstance(exc, psycopg.OperationalError):
        return TransientError(f"staging connection lost: {str(exc).strip()}")
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
        return TransientError(f"source connection lost: {exc}")
    return FatalError(f"{type(exc).__name__}: {exc}")

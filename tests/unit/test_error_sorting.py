"""Every failure the pipeline meets is sorted: transient (retry) or fatal (stop, exit non-zero)."""

from __future__ import annotations

import psycopg
import pymysql

from cdc.errors import as_ours as _as_ours
from transform.errors import ConfigError, FatalError, TransientError


def test_lost_connections_are_transient() -> None:
    assert isinstance(_as_ours(psycopg.OperationalError("server closed the connection")), TransientError)
    assert isinstance(_as_ours(pymysql.err.OperationalError(2013, "Lost connection")), TransientError)


def test_anything_else_is_fatal_and_ours_stay_as_they_are() -> None:
    err = _as_ours(KeyError("column"))
    assert isinstance(err, FatalError) and "KeyError" in str(err)
    config = ConfigError("bad")
    assert _as_ours(config) is config

"""`softcart-sync batches list|show|retry|replay`: the operator's view of the spool."""

from __future__ import annotations

import argparse
import json

from psycopg import sql

from cdc.flushing import open_flusher
from cdc.settings import Settings
from loader.ddl import META
from loader.pg import pg_connect
from loader.spool import Spool
from loader.warehouse import BatchIdTaken
from transform.errors import ConfigError


def run_batches(settings: Settings, args: argparse.Namespace) -> int:
    spool = Spool(settings.spool_dir)
    with pg_connect(settings.staging_config, autocommit=True) as conn:
        if args.batches_command == "list":
            where = sql.SQL("AND state = %s") if args.state else sql.SQL("")
            params = [settings.pipeline_name, *([args.state] if args.state else []), args.limit]
            rows = conn.execute(sql.SQL("SELECT id, state, rows, position, created_at, loaded_at, attempts, error"
                                        " FROM {}.batch WHERE pipeline = %s {} ORDER BY id DESC LIMIT %s")
                                .format(sql.Identifier(META), where), params).fetchall()
            print(f"{'id':>8}  {'state':8} {'rows':>8}  {'created':19}  {'attempts':>8}  position / error")
            for bid, state, counts, pos, created, _loaded, attempts, error in rows:
                total = sum(counts.values())
                print(f"{bid:>8}  {state:8} {total:>8}  {created:%Y-%m-%d %H:%M:%S}  {attempts:>8}  "
                      f"{error or pos or ''}")
            return 0
        row = conn.execute(sql.SQL("SELECT state, error, attempts, first_failed_at FROM {}.batch WHERE id = %s"
                                   " AND pipeline = %s")
                           .format(sql.Identifier(META)), (args.batch_id, settings.pipeline_name)).fetchone()
        if row is None:
            raise ConfigError(f"no batch {args.batch_id} in pipeline {settings.pipeline_name!r}")
        batch = spool.find(args.batch_id)
        if args.batches_command == "show":
            print(json.dumps({"state": row[0], "error": row[1], "attempts": row[2], "failing_since": row[3],
                              "folder": str(batch.path) if batch else None,
                              "manifest": batch.manifest if batch else None}, indent=2, default=str))
            return 0
    flusher = open_flusher(settings)
    warehouse = flusher.warehouse
    try:
        if args.batches_command == "retry":
            if row[0] != "failed":
                raise ConfigError(f"batch {args.batch_id} is {row[0]}, not failed")
            flusher.retry(args.batch_id)
            loaded, skipped, failed, waiting = flusher.load_pending()
        else:  # replay
            if batch is None:
                raise ConfigError(f"batch {args.batch_id}: its spool folder is gone")
            try:
                fresh = warehouse.load(batch)
            except BatchIdTaken as exc:
                raise ConfigError(f"{exc}: the next `softcart-sync flush` numbers pending batches anew") from None
            loaded, skipped, failed, waiting = int(fresh), int(not fresh), 0, 0
    finally:
        flusher.close()
    print(f"loaded {loaded}, already in the warehouse {skipped}, failed {failed}, still waiting {waiting}")
    return 0 if not failed and not waiting else 1

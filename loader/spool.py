"""The spool: CSV batches on disk, moved between state folders by atomic renames.

    <spool>/tmp/<batch>/       being written (left-overs are removed at start)
    <spool>/pending/<batch>/   written and recorded in PostgreSQL: to be loaded, in order
    <spool>/loaded/<batch>/    in the warehouse
    <spool>/failed/<batch>/    refused by the warehouse; manifest.json says why

A batch folder holds one CSV file per table (``op`` first: U upsert, D delete; then the table's
columns; no header; NULL is an empty field) and ``manifest.json``: batch id, tables, row counts,
sha256 of each file, the outbox and source-position range covered.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transform.errors import FatalError, TransientError

STATES = ("pending", "loaded", "failed")


def batch_name(batch_id: int) -> str:
    return f"b{batch_id:012d}"


def parse_csv(text: str) -> Iterator[list[str | None]]:
    for row in csv.reader(io.StringIO(text)):
        yield [None if v == "" else v for v in row]


@dataclass(frozen=True)
class SpooledBatch:
    batch_id: int
    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return batch_name(self.batch_id)

    @property
    def uid(self) -> str | None:
        """The batch's identity beyond its number (None for a batch written before uids)."""
        uid = self.manifest.get("batch_uid")
        return str(uid) if uid else None

    @property
    def row_counts(self) -> dict[str, int]:
        """Rows per table file."""
        return {t: int(e["rows"]) for t, e in self.manifest.get("tables", {}).items()}

    def chunks(self, table: str, size: int = 1 << 20) -> Iterator[bytes]:
        """The table's CSV file in chunks (nothing when the batch has no such file); raises
        FatalError after the last chunk if the file does not match the manifest's sha256, so a
        loader streaming it into a transaction rolls back."""
        entry = self.manifest["tables"].get(table)
        if entry is None:
            return
        digest = hashlib.sha256()
        with open(self.path / entry["file"], "rb") as f:
            while chunk := f.read(size):
                digest.update(chunk)
                yield chunk
        if digest.hexdigest() != entry["sha256"]:
            raise FatalError(f"batch {self.name}: {entry['file']} does not match its sha256 in manifest.json")

    def row_chunks(self, table: str, size: int = 10000) -> Iterator[list[list[str | None]]]:
        """The table's rows, ``size`` at a time, read as the file streams (the star tables' CSV has
        no line breaks inside fields); the sha256 is checked at the end (FatalError), so a loader
        feeding a transaction rolls back."""
        rest = b""
        out: list[list[str | None]] = []
        for chunk in self.chunks(table):
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                out.extend(parse_csv(line.decode("utf-8")))
                if len(out) >= size:
                    yield out
                    out = []
        if rest:
            out.extend(parse_csv(rest.decode("utf-8")))
        if out:
            yield out

    def rows(self, table: str) -> list[list[str | None]]:
        """The table's rows, after checking the file against the manifest's sha256."""
        return list(parse_csv(b"".join(self.chunks(table)).decode("utf-8")))


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root

    def prepare(self) -> None:
        """Create the folders (or say clearly why not) and clear half-written batches."""
        try:
            for sub in ("tmp", *STATES):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            probe = self.root / "tmp" / ".probe"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise FatalError(f"SOFTCART_SPOOL_DIR {self.root}: not writable ({exc.strerror}); "
                             "fix its permissions or point it elsewhere") from None
        for leftover in (self.root / "tmp").iterdir():
            shutil.rmtree(leftover, ignore_errors=True)

    def write(self, batch_id: int, tables: Mapping[str, str | bytes | Iterable[bytes]],
              meta: dict[str, Any]) -> SpooledBatch:
        """Write each table's CSV (text, bytes, or chunks of bytes as they come, e.g. from a
        ``COPY ... TO STDOUT``: a batch is never held in memory whole) and the manifest, fsync,
        and rename the folder into pending/.
        A full or unwritable disk is a TransientError naming the folder (the caller's transaction
        rolls back, so the outbox keeps its rows)."""
        try:
            return self._write(batch_id, tables, meta)
        except OSError as exc:
            raise TransientError(f"SOFTCART_SPOOL_DIR {self.root}: cannot write batch {batch_name(batch_id)}: "
                                 f"{exc.strerror or exc}") from None

    def _write(self, batch_id: int, tables: Mapping[str, str | bytes | Iterable[bytes]],
               meta: dict[str, Any]) -> SpooledBatch:
        name = batch_name(batch_id)
        tmp = self.root / "tmp" / name
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        manifest: dict[str, Any] = {"batch_id": batch_id, "name": name, **meta, "tables": {}}
        for table, data in tables.items():
            chunks = [data.encode("utf-8")] if isinstance(data, str) else [data] if isinstance(data, bytes) else data
            rows, digest = _write_synced(tmp / f"{table}.csv", chunks)
            manifest["tables"][table] = {"file": f"{table}.csv", "rows": rows, "sha256": digest}
        _write_synced(tmp / "manifest.json", [json.dumps(manifest, indent=2, sort_keys=True).encode()])
        target = self.root / "pending" / name
        shutil.rmtree(target, ignore_errors=True)
        _rename_durably(tmp, target)
        return SpooledBatch(batch_id, target, manifest)

    def max_batch_id(self, ignore: Collection[int] = ()) -> int:
        """The highest batch id of any folder here, whatever its state, but those in ``ignore``
        (0 when none)."""
        ids = [int(p.name[1:]) for state in STATES if (self.root / state).is_dir()
               for p in (self.root / state).iterdir() if p.name[:1] == "b" and p.name[1:].isdigit()]
        return max((i for i in ids if i not in ignore), default=0)

    def find(self, batch_id: int) -> SpooledBatch | None:
        name = batch_name(batch_id)
        for state in STATES:
            path = self.root / state / name
            if (path / "manifest.json").exists():
                return SpooledBatch(batch_id, path, json.loads((path / "manifest.json").read_text()))
        return None

    def copy_as(self, batch: SpooledBatch, batch_id: int) -> SpooledBatch:
        """The batch again under another number, in the same state folder: its files linked (not
        copied), the manifest renumbered, renamed into place atomically. The old folder stays."""
        name = batch_name(batch_id)
        tmp = self.root / "tmp" / name
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for entry in batch.manifest.get("tables", {}).values():
            os.link(batch.path / entry["file"], tmp / entry["file"])
        manifest = {**batch.manifest, "batch_id": batch_id, "name": name, "renumbered_from": batch.batch_id}
        _write_synced(tmp / "manifest.json", [json.dumps(manifest, indent=2, sort_keys=True).encode()])
        target = batch.path.parent / name
        shutil.rmtree(target, ignore_errors=True)
        _rename_durably(tmp, target)
        return SpooledBatch(batch_id, target, manifest)

    def remove(self, batch: SpooledBatch) -> None:
        shutil.rmtree(batch.path, ignore_errors=True)
        _fsync_dir(batch.path.parent)

    def move(self, batch: SpooledBatch, state: str, error: str | None = None) -> SpooledBatch:
        target = self.root / state / batch.name
        manifest = dict(batch.manifest)
        if error is not None:  # a new manifest beside the old, renamed over it: never half written
            manifest["error"] = error
            new = batch.path / "manifest.json.new"
            _write_synced(new, [json.dumps(manifest, indent=2, sort_keys=True).encode()])
            os.replace(new, batch.path / "manifest.json")
            _fsync_dir(batch.path)
        if batch.path != target:
            shutil.rmtree(target, ignore_errors=True)
            _rename_durably(batch.path, target)
        return SpooledBatch(batch.batch_id, target, manifest)


def _write_synced(path: Path, chunks: Iterable[bytes]) -> tuple[int, str]:
    """Write and fsync; returns the lines written (rows: the star tables' CSV has no line breaks
    inside fields) and the sha256."""
    digest = hashlib.sha256()
    lines = 0
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            digest.update(chunk)
            lines += chunk.count(b"\n")
        f.flush()
        os.fsync(f.fileno())
    return lines, digest.hexdigest()


def _rename_durably(source: Path, target: Path) -> None:
    """A batch folder into place: its own entries synced first, then the rename, then both parent
    folders (the one it left and the one it entered), so that after a crash it is in one place,
    whole."""
    _fsync_dir(source)
    os.rename(source, target)
    _fsync_dir(target.parent)
    if source.parent != target.parent:
        _fsync_dir(source.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

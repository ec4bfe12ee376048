"""The spool on disk (pure file handling): batches read in chunks with their sha256 checked, and
rewrites that are atomic."""

from __future__ import annotations

from typing import Any

import pytest


def test_a_batch_file_is_read_in_chunks_and_still_checked_against_its_sha256(tmp_path: Any) -> None:
    from loader.spool import Spool
    from transform.errors import FatalError

    spool = Spool(tmp_path)
    spool.prepare()
    text = "".join(f'U,{i},"a, b",,{i}.5000\n' for i in range(25))
    batch = spool.write(1, {"t": [text[:7].encode(), text[7:300].encode(), text[300:].encode()]}, {})
    chunks = list(batch.row_chunks("t", size=10))
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert [r for c in chunks for r in c] == batch.rows("t")
    assert chunks[0][3] == ["U", "3", "a, b", None, "3.5000"]
    (batch.path / "t.csv").write_text(text.replace("U,24", "D,24"))
    with pytest.raises(FatalError, match="sha256"):
        list(batch.row_chunks("t", size=10))
    assert list(batch.row_chunks("absent")) == []


def test_a_batch_refused_gets_its_error_in_a_manifest_written_anew_not_rewritten_in_place(tmp_path: Any) -> None:
    import json

    from loader.spool import Spool

    spool = Spool(tmp_path)
    spool.prepare()
    batch = spool.write(5, {"t": "U,1\n"}, {})
    before = (batch.path / "manifest.json").stat().st_ino
    failed = spool.move(batch, "failed", "23503: a foreign key")
    manifest = failed.path / "manifest.json"
    assert json.loads(manifest.read_text())["error"] == "23503: a foreign key"
    assert manifest.stat().st_ino != before  # a rename over the old file, not a rewrite of it
    assert sorted(p.name for p in failed.path.iterdir()) == ["manifest.json", "t.csv"]
    assert not (tmp_path / "pending" / batch.name).exists()


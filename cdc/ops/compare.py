"""Compare one table on two sides inside the databases: segment checksums, recursion into the
segments that differ, row fingerprints only below a threshold.

The primary-key range is cut into segments of about ``segment_rows`` rows (boundaries read from
one side's index with a window function). Each side returns, per segment, its row count and an
order-independent checksum of its row fingerprints (``transform.fingerprint``), computed by the
database; both sides are asked at once, on their own connections. A segment that differs is cut
into ``fanout`` parts and each part compared again, until a part holds at most ``fetch_rows`` rows:
then the keys and fingerprints of its rows are fetched and compared, giving the differing keys.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from transform.fingerprint import Bound, TableSpec

Fetch = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
CanonKey = tuple[str, ...]


@dataclass(frozen=True)
class Side:
    """One table on one database: its fingerprint SQL and a way to run a query."""

    name: str  # "source", "staging", "star", "warehouse", "rebuild"
    spec: TableSpec
    fetch: Fetch

    def summary(self, lo: Bound, hi: Bound) -> tuple[int, int, int]:
        text, params = self.spec.summary_sql(lo, hi)
        row = self.fetch(text, params)[0]
        return int(row[0]), int(row[1]), int(row[2])

    def rows(self, lo: Bound, hi: Bound) -> dict[CanonKey, tuple[tuple[Any, ...], str]]:
        text, params = self.spec.rows_sql(lo, hi)
        return self._keyed(self.fetch(text, params))

    def rows_by_key(self, keys: Sequence[tuple[Any, ...]], chunk: int = 500) -> dict[CanonKey, tuple[tuple[Any, ...],
                                                                                                      str]]:
        out: dict[CanonKey, tuple[tuple[Any, ...], str]] = {}
        for i in range(0, len(keys), chunk):
            part = keys[i:i + chunk]
            out.update(self._keyed(self.fetch(self.spec.rows_by_key_sql(len(part)), [v for k in part for v in k])))
        return out

    def split(self, lo: Bound, hi: Bound, every: int) -> list[tuple[Any, ...]]:
        text, params = self.spec.split_sql(lo, hi, every)
        return [tuple(r) for r in self.fetch(text, params)]

    def _keyed(self, rows: Iterable[tuple[Any, ...]]) -> dict[CanonKey, tuple[tuple[Any, ...], str]]:
        n = len(self.spec.keys)
        return {tuple(str(v) for v in r[n:2 * n]): (tuple(r[:n]), str(r[2 * n])) for r in rows}


@dataclass(frozen=True)
class Limits:
    segment_rows: int = 10_000
    fanout: int = 16
    fetch_rows: int = 1000


@dataclass(frozen=True)
class Difference:
    """A key whose row differs: ``left``/``right`` are the fingerprints, None where the row is missing;
    ``key`` the key values as the side that has the row returned them."""

    key: tuple[Any, ...]
    canon: CanonKey
    left: str | None
    right: str | None

    @property
    def kind(self) -> str:
        if self.left is None:
            return "extra"  # only on the right (the copy)
        if self.right is None:
            return "missing"  # only on the left (the original)
        return "changed"


@dataclass
class Comparison:
    table: str
    rows_left: int = 0
    rows_right: int = 0
    segments: int = 0  # summaries compared, at every level
    rows_fetched: int = 0
    differences: list[Difference] = field(default_factory=list)
    seconds: float = 0.0


def diff_rows(left: dict[CanonKey, tuple[tuple[Any, ...], str]],
              right: dict[CanonKey, tuple[tuple[Any, ...], str]]) -> list[Difference]:
    """The keys whose fingerprints differ or which one side lacks, in key order of the texts."""
    out = []
    for canon in sorted(left.keys() | right.keys()):
        lk = left.get(canon)
        rk = right.get(canon)
        lh = lk[1] if lk else None
        rh = rk[1] if rk else None
        if lh != rh:
            key = lk[0] if lk else rk[0]  # type: ignore[index]
            out.append(Difference(key, canon, lh, rh))
    return out


def compare_table(table: str, left: Side, right: Side, limits: Limits, pool: ThreadPoolExecutor) -> Comparison:
    """Every difference between ``left`` and ``right`` (each read in whatever snapshot its
    connection holds)."""
    started = time.monotonic()
    result = Comparison(table)

    def both(f: Callable[[Side], Any]) -> tuple[Any, Any]:
        fl = pool.submit(f, left)
        fr = pool.submit(f, right)
        return fl.result(), fr.result()

    # Segment boundaries from the origin's key index (the copy's when the origin is nearly empty):
    # one side's scan is enough, and both sides share the machine's cores.
    cuts = left.split(None, None, limits.segment_rows) or right.split(None, None, limits.segment_rows)
    bounds: list[Bound] = [None, *cuts, None]

    def visit(lo: Bound, hi: Bound, top: bool) -> None:
        sl, sr = both(lambda s: s.summary(lo, hi))
        result.segments += 1
        if top:
            result.rows_left += sl[0]
            result.rows_right += sr[0]
        if sl == sr:
            return
        n = max(sl[0], sr[0])
        if n > limits.fetch_rows:
            bigger = left if sl[0] >= sr[0] else right
            inner = bigger.split(lo, hi, max(1, math.ceil(n / limits.fanout)))
            inner = [b for b in inner if b != lo]
            if inner:
                edges: list[Bound] = [lo, *inner, hi]
                for a, b in itertools.pairwise(edges):
                    visit(a, b, False)
                return
        rl, rr = both(lambda s: s.rows(lo, hi))
        result.rows_fetched += len(rl) + len(rr)
        result.differences += diff_rows(rl, rr)

    for lo, hi in itertools.pairwise(bounds):
        visit(lo, hi, True)
    result.seconds = time.monotonic() - started
    return result

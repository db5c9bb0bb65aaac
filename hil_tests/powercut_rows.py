"""Row sets and their comparisons for the power-cut harness (:mod:`hil_tests.powercut`).

:class:`Rows` holds readings as numpy columns sorted by seq (``seq, ts, point_id, value, quality``) and is read
from a *copy* of a store file or from the receiver's database (never from a file a live process owns).
Values are compared bit for bit (NaN equals NaN). Test code only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt

from gateway.model import VALIDITY_MASK, Q
from hil_tests.powercut_sim import VALUE_BASE

_NOT_FRESH = VALIDITY_MASK | int(Q.OLD_DATA)  # a fresh reading: validity good and not old-data


@dataclass(frozen=True)
class Rows:
    """Readings as columns, sorted by seq (stable)."""

    seq: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    point_id: npt.NDArray[np.int32]
    value: npt.NDArray[np.float64]
    quality: npt.NDArray[np.uint16]

    @classmethod
    def empty(cls) -> Rows:
        return cls(
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0), np.zeros(0, np.uint16)
        )

    @classmethod
    def from_columns(cls, cols: dict[str, Any]) -> Rows:
        seq = np.asarray(cols["seq"], dtype=np.int64)
        order = np.argsort(seq, kind="stable")
        return cls(
            seq[order],
            np.asarray(cols["ts"], dtype=np.int64)[order],
            np.asarray(cols["point_id"], dtype=np.int32)[order],
            np.asarray(cols["value"], dtype=np.float64)[order],
            np.asarray(cols["quality"], dtype=np.uint16)[order],
        )

    def __len__(self) -> int:
        return len(self.seq)

    def take(self, idx: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> Rows:
        return Rows(self.seq[idx], self.ts[idx], self.point_id[idx], self.value[idx], self.quality[idx])

    def concat(self, other: Rows) -> Rows:
        """Both row sets, sorted by seq."""
        return Rows.from_columns(
            {
                "seq": np.concatenate([self.seq, other.seq]),
                "ts": np.concatenate([self.ts, other.ts]),
                "point_id": np.concatenate([self.point_id, other.point_id]),
                "value": np.concatenate([self.value, other.value]),
                "quality": np.concatenate([self.quality, other.quality]),
            }
        )

    def value_bits(self) -> npt.NDArray[np.int64]:
        return self.value.view(np.int64)

    def fresh(self) -> npt.NDArray[np.bool_]:
        """Readings of a successful poll: validity good and not old-data."""
        return (self.quality & np.uint16(_NOT_FRESH)) == 0

    def duplicate_seqs(self) -> int:
        """Rows whose seq appeared before (0 when every seq is unique)."""
        return len(self.seq) - len(np.unique(self.seq))

    def gaps(self) -> int:
        """Seqs missing between the lowest and the highest (a store's seqs are gap-free from its first while
        nothing is evicted; a new file starts above a floor, so the first seq need not be 1)."""
        if not len(self.seq):
            return 0
        return int(self.seq.max()) - int(self.seq.min()) + 1 - len(np.unique(self.seq))

    def fingerprint(self) -> int:
        """Order-independent digest of the rows (sum of per-row hashes, mod 2**64)."""
        h = _mix(self.seq.view(np.uint64))
        for col in (self.ts.view(np.uint64), self.point_id.astype(np.uint64), self.value_bits().view(np.uint64),
                    self.quality.astype(np.uint64)):
            h = _mix(h ^ col)
        return int(h.sum(dtype=np.uint64))


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64 finaliser, element-wise (wrapping)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def compare(reference: Rows, other: Rows) -> tuple[int, int]:
    """``(missing, changed)``: seqs of ``reference`` absent from ``other``, and present with other content.

    Both must have unique seqs for exact counts (duplicates are counted separately).
    """
    common, ia, ib = np.intersect1d(reference.seq, other.seq, assume_unique=False, return_indices=True)
    missing = len(np.unique(reference.seq)) - len(common)
    a, b = reference.take(ia), other.take(ib)
    diff = (
        (a.ts != b.ts) | (a.point_id != b.point_id) | (a.value_bits() != b.value_bits()) | (a.quality != b.quality)
    )
    return missing, int(diff.sum())


def new_rows(known: Rows, rows: Rows) -> Rows:
    """The rows of ``rows`` whose seq ``known`` does not have."""
    return rows.take(~np.isin(rows.seq, known.seq))


def same_reading_twice(rows: Rows) -> int:
    """Rows repeating an earlier row's (point, ts, value) under another seq (a re-commit after a restart)."""
    if not len(rows):
        return 0
    keys = np.stack([rows.point_id.astype(np.int64), rows.ts, rows.value_bits()], axis=1)
    return len(rows) - len(np.unique(keys, axis=0))


def same_served_value_twice(rows: Rows) -> int:
    """Fresh rows repeating an earlier fresh row's (point, value): every read serves new values, so a served
    value stored twice as fresh was stored twice."""
    f = rows.take(rows.fresh())
    if not len(f):
        return 0
    keys = np.stack([f.point_id.astype(np.int64), f.value_bits()], axis=1)
    return len(f) - len(np.unique(keys, axis=0))


def untraceable(rows: Rows, point_index: dict[int, tuple[int, int]], served_reads: list[int]) -> npt.NDArray[np.bool_]:
    """Rows whose value the simulators never served.

    ``point_index``: store point id → (device index, point index in the device); ``served_reads``: reads served
    per device. A value must be ``c * VALUE_BASE + i`` with ``1 <= c <= served_reads[device]``; NaN is allowed
    only on a reading that is not fresh (a failure mark of a never-read point carries no value).
    """
    bad = np.zeros(len(rows), dtype=np.bool_)
    if not len(rows):
        return bad
    max_pid = max(max(point_index, default=0), int(rows.point_id.max()))
    dev = np.full(max_pid + 1, -1, dtype=np.int64)
    idx = np.full(max_pid + 1, -1, dtype=np.int64)
    for pid, (device, index) in point_index.items():
        dev[pid], idx[pid] = device, index
    reads = np.asarray(served_reads, dtype=np.int64)
    d = dev[rows.point_id]
    known = d >= 0
    nan = np.isnan(rows.value)
    bad |= ~known
    bad |= nan & rows.fresh()
    v = np.where(nan, 0.0, rows.value)
    is_int = np.floor(v) == v
    vi = v.astype(np.int64)
    count = vi // VALUE_BASE
    limit = np.where(known, reads[np.clip(d, 0, len(reads) - 1)], 0)
    ok = is_int & (vi % VALUE_BASE == idx[rows.point_id]) & (count >= 1) & (count <= limit)
    bad |= ~nan & ~ok
    return bad


@dataclass(frozen=True)
class StoreCopy:
    """What a copy of the gateway's store holds."""

    rows: Rows
    watermark: int  # the sink's acked seq (0 when never acked)
    reading_seq: int  # meta reading_seq: highest seq ever assigned
    points: dict[int, str]  # id → name


def read_store(path: Path, sink: str) -> StoreCopy:
    """Open a store file (a copy: DuckDB may replay its WAL into it) and read it. duckdb.Error if it cannot."""
    con = duckdb.connect(str(path))
    try:
        tables = {str(r[0]) for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if not tables & {"readings", "outbox", "meta", "points"}:
            # a new store killed before its schema transaction committed: empty (a later snapshot that lost
            # rows an earlier one had is caught by the comparison; a partial schema fails below)
            return StoreCopy(Rows.empty(), 0, 0, {})
        cols = con.sql("SELECT seq, ts, point_id, value, quality FROM readings").fetchnumpy()
        wm = con.execute("SELECT acked_seq FROM outbox WHERE sink = ?", [sink]).fetchone()
        meta = con.execute("SELECT value FROM meta WHERE key = 'reading_seq'").fetchone()
        points = {int(i): str(n) for i, n in con.execute("SELECT id, name FROM points").fetchall()}
    finally:
        con.close()
    return StoreCopy(
        Rows.from_columns(cols), int(wm[0]) if wm else 0, int(meta[0]) if meta else 0, points
    )


def read_landed(path: Path, gateway_id: str) -> Rows:
    """The readings the receiver landed for ``gateway_id`` (its DuckDB file, opened read-only)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        cols = con.sql(
            "SELECT r.seq, r.ts, r.point_id, r.value, r.quality FROM readings r JOIN gateways g USING (gw) "
            "WHERE g.gateway_id = $gid",
            params={"gid": gateway_id},
        ).fetchnumpy()
    finally:
        con.close()
    return Rows.from_columns(cols)


def read_redelivered(path: Path, gateway_id: str) -> tuple[int, int]:
    """``(rows, batches)`` the receiver got again and deduplicated (its ``batches.duplicates``), read-only."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        row = con.execute(
            "SELECT coalesce(sum(b.duplicates), 0), count(*) FILTER (WHERE b.duplicates > 0) "
            "FROM batches b JOIN gateways g USING (gw) WHERE g.gateway_id = ?",
            [gateway_id],
        ).fetchone()
    finally:
        con.close()
    return (int(row[0]), int(row[1])) if row else (0, 0)

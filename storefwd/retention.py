"""Disk budget of the store: how much it may use, and the SQL of the two ways it gives space back.

Contract (docs/durability.md, "Disk budget"):

- The budget is the smallest of: ``budget_bytes``; ``budget_percent`` of the filesystem's size; and what the
  store uses now plus the filesystem's free space minus ``reserve_free_bytes`` (other programs share the disk,
  and DuckDB needs room for its WAL and checkpoints). Usage is DuckDB's *used* blocks plus the WAL: a DuckDB
  file does not shrink when rows are deleted, but the freed blocks are reused by later inserts.
- Past ``high_water`` × budget the store reclaims, oldest data first, until usage is under ``low_water`` ×
  budget: first it **downsamples** old raw readings (older than ``downsample_min_age_s``), then it **evicts**
  the oldest readings and low-priority events (priority >= :data:`EVICTABLE_PRIORITY`). Events of priority 0
  and 1 (trips, SOE, protection, control audit, gap records) are never evicted.
- Downsampling works on one seq range at a time. For each point and UTC minute it keeps, as they are, the
  readings holding the minimum, the maximum and the last value; it turns one more reading of the minute into a
  reading of the point's derived ``<point>.avg_1m`` point (same seq and ts, the minute's average, quality
  ``SUBSTITUTED``); it deletes the others. The minute's min/max/avg/last/count go to ``readings_1m`` for local
  trends. Invalid and NaN readings and minutes of at most 4 readings are left untouched. Seqs are never
  reassigned, so unacknowledged rows still leave in seq order and nothing lands twice.

Threads: everything here runs in the store's writer thread, on its connection, inside its transactions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import duckdb

from gateway.model import Q

MINUTE_NS: Final = 60_000_000_000
EVICTABLE_PRIORITY: Final = 2  # events with priority >= this may be evicted; 0 and 1 never are
AVG_SUFFIX: Final = ".avg_1m"  # point-name suffix of the derived average points written by downsampling
KEEP_PER_MINUTE: Final = 4  # rows kept per point and minute: min, max, last and the average
AVG_QUALITY: Final = int(Q.SUBSTITUTED)  # a computed value: source = substituted, validity good


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How much disk the store may use and how it reclaims. Sizes in bytes, fractions in 0..1."""

    budget_bytes: int = 1024 * 1024 * 1024  # most bytes the store may use (file's used blocks + WAL)
    budget_percent: float = 0.0  # also at most this % of the filesystem's size (0 = no such bound)
    high_water: float = 0.90  # reclaim once usage passes this fraction of the budget
    low_water: float = 0.80  # ... until usage is under this fraction
    downsample_min_age_s: float = 600.0  # only readings older than this are downsampled
    reserve_free_bytes: int = 64 * 1024 * 1024  # leave this much of the filesystem free for others and the WAL
    chunk_rows: int = 250_000  # rows (by seq) handled per reclaim step; one transaction each
    check_interval_s: float = 5.0  # how often the writer measures usage (and after every reclaim step)
    compact_min_free_bytes: int = 64 * 1024 * 1024  # at open, rewrite the file when this much is free (0 = never)

    def __post_init__(self) -> None:
        if self.budget_bytes <= 0:
            raise ValueError("budget_bytes must be > 0")
        if not 0.0 <= self.budget_percent <= 100.0:
            raise ValueError("budget_percent must be within 0..100")
        if not 0.0 < self.low_water < self.high_water <= 1.0:
            raise ValueError("need 0 < low_water < high_water <= 1")
        if self.downsample_min_age_s < 0 or self.reserve_free_bytes < 0:
            raise ValueError("downsample_min_age_s and reserve_free_bytes must be >= 0")
        if self.chunk_rows < 1000:
            raise ValueError("chunk_rows must be >= 1000")


@dataclass(frozen=True, slots=True)
class Usage:
    """One measurement. ``budget`` is the effective budget (see the module docstring)."""

    used_bytes: int  # DuckDB used blocks × block size + WAL
    file_bytes: int  # database file + WAL as the filesystem sees them
    fs_size_bytes: int
    fs_free_bytes: int  # available to this process
    budget: int

    @property
    def fraction(self) -> float:
        return self.used_bytes / self.budget if self.budget > 0 else math.inf


def measure(
    con: duckdb.DuckDBPyConnection,
    path: str,
    policy: RetentionPolicy,
    statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
) -> Usage:
    """Measure usage and the effective budget. Writer thread (uses its connection)."""
    # fetchall, not fetchone: an unfinished result keeps a transaction open, and CHECKPOINT then refuses
    rows = con.execute("SELECT block_size, used_blocks FROM pragma_database_size()").fetchall()
    row = rows[0] if rows else None
    wal = _size(path + ".wal")
    used = (int(row[0]) * int(row[1]) if row else 0) + wal
    file_bytes = _size(path) + wal
    st = statvfs(os.path.dirname(os.path.abspath(path)))
    fs_size = st.f_blocks * st.f_frsize
    fs_free = st.f_bavail * st.f_frsize
    budget = policy.budget_bytes
    if policy.budget_percent > 0:
        budget = min(budget, int(fs_size * policy.budget_percent / 100.0))
    # the file may grow into its own free blocks and the filesystem's free space, less the reserve
    free_blocks_in_file = max(0, file_bytes - used)
    budget = min(budget, used + free_blocks_in_file + max(0, fs_free - policy.reserve_free_bytes))
    return Usage(used, file_bytes, fs_size, fs_free, max(budget, 1))


def _size(p: str) -> int:
    try:
        return os.stat(p).st_size
    except FileNotFoundError:
        return 0


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """What one reclaim step did to the seq range ``(lo, hi]``."""

    action: str  # "downsampled" or "evicted"
    lo: int  # exclusive
    hi: int  # inclusive
    rows_before: int
    rows_after: int
    ts_from: int  # oldest ts touched (epoch ns), 0 when no row
    ts_to: int  # newest ts touched
    points: int  # distinct points touched
    events_evicted: int = 0


def downsample_end(con: duckdb.DuckDBPyConnection, lo: int, last_seq: int, chunk: int, cutoff_ns: int) -> int | None:
    """Highest seq in ``(lo, lo + chunk]`` whose reading is older than ``cutoff_ns``, None when there is none."""
    rows = con.execute(
        "SELECT max(seq) FROM readings WHERE seq > ? AND seq <= ? AND ts < ?",
        [lo, min(last_seq, lo + chunk), cutoff_ns],
    ).fetchall()  # (not fetchone: see measure())
    row = rows[0] if rows else None
    return int(row[0]) if row and row[0] is not None else None


def downsample(
    con: duckdb.DuckDBPyConnection, lo: int, hi: int, avg_point: Callable[[list[int]], dict[int, int]]
) -> ChunkResult:
    """Downsample the readings with seq in ``(lo, hi]`` (see the module docstring). Inside a transaction.

    ``avg_point(point_ids)`` returns the derived average point id of each raw point id (registering new ones
    in the same transaction); derived points themselves are never downsampled again.
    """
    before = con.execute(
        "SELECT count(*), min(ts), max(ts), count(DISTINCT point_id) FROM readings WHERE seq > ? AND seq <= ?",
        [lo, hi],
    ).fetchone()
    assert before is not None
    rows_before = int(before[0])
    con.execute("CREATE OR REPLACE TEMP TABLE _ds_groups AS "
                "SELECT point_id, ts - ts % $m AS bucket_ns, count(*) AS n, min(value) AS vmin, "
                "max(value) AS vmax, avg(value) AS vavg, arg_max(value, ts) AS vlast, max(ts) AS last_ts, "
                "arg_min(seq, value) AS s_min, arg_max(seq, value) AS s_max, arg_max(seq, ts) AS s_last, "
                "min(seq) AS seq_lo, max(seq) AS seq_hi "
                "FROM readings WHERE seq > $lo AND seq <= $hi AND (quality & 3) IN (0, 3) AND NOT isnan(value) "
                "AND point_id NOT IN (SELECT id FROM points WHERE ends_with(name, $suffix)) "
                "GROUP BY ALL",
                {"m": MINUTE_NS, "lo": lo, "hi": hi, "suffix": AVG_SUFFIX})  # fmt: skip
    con.execute(
        "INSERT INTO readings_1m SELECT point_id, bucket_ns, vmin, vmax, vavg, vlast, last_ts, n, seq_lo, seq_hi "
        "FROM _ds_groups"
    )
    # the reading that becomes the minute's average: the first one that is not kept as min, max or last
    con.execute("CREATE OR REPLACE TEMP TABLE _ds_avg AS "
                "SELECT g.point_id, g.bucket_ns, min(r.seq) AS s_avg, any_value(g.vavg) AS vavg "
                "FROM _ds_groups g JOIN readings r ON r.point_id = g.point_id "
                "AND r.seq >= g.seq_lo AND r.seq <= g.seq_hi AND r.ts - r.ts % $m = g.bucket_ns "
                "AND (r.quality & 3) IN (0, 3) AND NOT isnan(r.value) "
                "WHERE g.n > $keep AND r.seq NOT IN (g.s_min, g.s_max, g.s_last) GROUP BY ALL",
                {"m": MINUTE_NS, "keep": KEEP_PER_MINUTE})  # fmt: skip
    raw_ids = [int(r[0]) for r in con.execute("SELECT DISTINCT point_id FROM _ds_avg").fetchall()]
    derived = avg_point(raw_ids)
    if derived:
        con.execute("CREATE OR REPLACE TEMP TABLE _ds_map (raw INTEGER, avg INTEGER)")
        con.executemany("INSERT INTO _ds_map VALUES (?, ?)", list(derived.items()))  # one row per point
    con.execute(
        "DELETE FROM readings r USING _ds_groups g WHERE r.seq > $lo AND r.seq <= $hi "
        "AND r.point_id = g.point_id AND r.ts - r.ts % $m = g.bucket_ns AND g.n > $keep "
        "AND (r.quality & 3) IN (0, 3) AND NOT isnan(r.value) "
        "AND r.seq NOT IN (g.s_min, g.s_max, g.s_last) "
        "AND r.seq NOT IN (SELECT s_avg FROM _ds_avg)",
        {"lo": lo, "hi": hi, "m": MINUTE_NS, "keep": KEEP_PER_MINUTE},
    )
    if derived:
        con.execute(
            "UPDATE readings SET point_id = m.avg, value = a.vavg, quality = $q "
            "FROM _ds_avg a JOIN _ds_map m ON m.raw = a.point_id WHERE readings.seq = a.s_avg",
            {"q": AVG_QUALITY},
        )
    after = con.execute("SELECT count(*) FROM readings WHERE seq > ? AND seq <= ?", [lo, hi]).fetchone()
    for t in ("_ds_groups", "_ds_avg", "_ds_map"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    return ChunkResult(
        "downsampled", lo, hi, rows_before, int(after[0]) if after else 0,
        int(before[1] or 0), int(before[2] or 0), int(before[3]),
    )  # fmt: skip


def evict(con: duckdb.DuckDBPyConnection, lo: int, hi: int) -> ChunkResult:
    """Delete every reading with seq in ``(lo, hi]``, the ``readings_1m`` rows they summarised, and the
    low-priority events not newer than the newest of those readings. Inside a transaction."""
    before = con.execute(
        "SELECT count(*), min(ts), max(ts), count(DISTINCT point_id) FROM readings WHERE seq > ? AND seq <= ?",
        [lo, hi],
    ).fetchone()
    assert before is not None
    con.execute("DELETE FROM readings WHERE seq > ? AND seq <= ?", [lo, hi])
    con.execute("DELETE FROM readings_1m WHERE seq_hi <= ?", [hi])
    n_events = 0
    if before[2] is not None:
        row = con.execute(
            "DELETE FROM events WHERE priority >= ? AND ts <= ? RETURNING seq", [EVICTABLE_PRIORITY, before[2]]
        ).fetchall()
        n_events = len(row)
    return ChunkResult(
        "evicted", lo, hi, int(before[0]), 0, int(before[1] or 0), int(before[2] or 0), int(before[3]), n_events
    )


def evict_events(con: duckdb.DuckDBPyConnection, limit: int) -> int:
    """Delete the ``limit`` oldest low-priority events (when no reading is left to evict); their count."""
    rows = con.execute(
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE priority >= ? ORDER BY seq LIMIT ?) "
        "RETURNING seq",
        [EVICTABLE_PRIORITY, limit],
    ).fetchall()
    return len(rows)

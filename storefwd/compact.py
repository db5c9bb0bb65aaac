"""Compaction: rewrite the store file without its free blocks (DuckDB files never shrink by themselves).

DuckDB reuses the blocks that deleted rows free (after a checkpoint), so a store that evicted old data does
not grow further, but the file keeps its high-water size. :func:`compact_if_worthwhile` copies the database
into a new file (``COPY FROM DATABASE``, same storage format) and swaps it in with an atomic rename. It runs
when the store opens — before the writer starts, so nothing else touches the file — and only when the free
blocks are worth it. Needs free disk space for the copy (the used part of the file); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb

from .fsutil import fsync_path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Compaction:
    before_bytes: int  # file size before
    after_bytes: int  # file size after


def free_bytes(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """(free bytes inside the file, used bytes) after a checkpoint."""
    con.execute("CHECKPOINT")
    rows = con.execute("SELECT block_size, used_blocks, free_blocks FROM pragma_database_size()").fetchall()
    bs, used, free = (int(v) for v in rows[0])
    return free * bs, used * bs


def compact_if_worthwhile(
    con: duckdb.DuckDBPyConnection, path: Path, storage_version: str, min_free_bytes: int
) -> Compaction | None:
    """Compact ``path`` (opened as ``con``, no other connection) when its free blocks reach ``min_free_bytes``
    and half the file. Returns what it did, or None. ``con`` is closed when it returns a Compaction: reopen.
    Raises duckdb.Error/OSError only before the swap (the original file is then untouched)."""
    if min_free_bytes <= 0:
        return None
    free, used = free_bytes(con)
    size = path.stat().st_size
    if free < min_free_bytes or free < size // 2:
        return None
    if shutil.disk_usage(path.parent).free < used + min_free_bytes // 4:
        log.warning("storefwd: not compacting %s: not enough free disk space for the copy", path)
        return None
    tmp = path.with_name(path.name + ".compact")
    for p in (tmp, tmp.with_name(tmp.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)
    db = con.execute("SELECT current_database()").fetchall()[0][0]
    con.execute(f"ATTACH '{tmp}' AS compacted (STORAGE_VERSION '{storage_version}')")
    try:
        con.execute(f'COPY FROM DATABASE "{db}" TO compacted')
    finally:
        con.execute("DETACH compacted")
    con.close()
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent, best_effort=True)
    after = path.stat().st_size
    log.warning("storefwd: compacted %s from %d to %d bytes", path, size, after)
    return Compaction(size, after)

"""Table definitions of the store file and the DuckDB settings it is opened with.

Units: every ``ts``/``*_ns`` column is UTC epoch nanoseconds (BIGINT); ``seq`` columns start at 1.
See ``docs/storage.md`` for the reasoning behind each choice.
"""

from __future__ import annotations

from typing import Final

# Version of the table layout below, kept in ``meta('schema_version')``. Bump it (and add a migration in
# store.py) whenever a table changes. A file with a higher version is refused (StoreVersionError).
SCHEMA_VERSION: Final = 3  # 2: readings_1m, reclaim_log, meta downsampled_seq/commit_no; 3: quarantine
# (older files upgrade in place: every CREATE TABLE IF NOT EXISTS below runs on open)

# DuckDB storage format the file is written in. DuckDB 2.0 writes format "v2.0.0" by default, which no 1.x
# release can open. v1.2.0 is the oldest format readable by every DuckDB this project supports
# (pyproject: duckdb>=1.2), including the 1.4 LTS line; the file header then carries version number 65.
STORAGE_VERSION: Final = "v1.2.0"

# Header version number DuckDB writes for STORAGE_VERSION (bytes 12..19 of the file, little-endian u64).
STORAGE_VERSION_NUMBER: Final = 65

# Settings passed to duckdb.connect(). ``fsync_mode`` STANDARD (the default, stated here so it is never lost)
# makes every COMMIT fsync the WAL (or the checkpointed file) before it returns.
DUCKDB_CONFIG: Final[dict[str, str]] = {
    "storage_compatibility_version": STORAGE_VERSION,
    "fsync_mode": "STANDARD",
}

# Memory settings (docs/storage.md, "Memory"). Rows committed through the WAL stay in DuckDB's memory until the
# WAL is checkpointed into the file; DuckDB's default threshold (16 MiB ≈ 600k readings) let the gateway grow by
# ≈18 MB between checkpoints at 20k readings/s. 4 MiB keeps that to a few MB for one checkpoint every ≈8 s.
CHECKPOINT_THRESHOLD_MB: Final = 4.0
# Ceiling of DuckDB's buffer pool (its default is 80 % of RAM). Normal operation uses far less; the ceiling
# stops a large aggregate or a long backlog read from taking the RAM of a small gateway (DuckDB spills to
# ``<file>.tmp`` beyond it). 0 keeps DuckDB's default.
MEMORY_LIMIT_MB: Final = 256


def duckdb_config(checkpoint_threshold_mb: float = CHECKPOINT_THRESHOLD_MB,
                  memory_limit_mb: int = MEMORY_LIMIT_MB) -> dict[str, str]:
    """The ``duckdb.connect()`` config of the store: :data:`DUCKDB_CONFIG` plus the memory settings."""
    cfg = dict(DUCKDB_CONFIG)
    cfg["checkpoint_threshold"] = f"{int(checkpoint_threshold_mb * 1024)}KiB"
    if memory_limit_mb:
        cfg["memory_limit"] = f"{int(memory_limit_mb)}MiB"
    return cfg

# No PRIMARY KEY / index on readings: an ART index on seq costs ingest speed and memory, while seq is
# assigned in increasing order so DuckDB's zonemaps already make ``seq > x ORDER BY seq LIMIT n`` cheap.
DDL: Final[tuple[str, ...]] = (
    """CREATE TABLE IF NOT EXISTS meta (
        key   VARCHAR PRIMARY KEY,
        value VARCHAR NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS points (
        id     INTEGER PRIMARY KEY,
        name   VARCHAR NOT NULL UNIQUE,
        device VARCHAR NOT NULL,
        point  VARCHAR NOT NULL,
        unit   VARCHAR NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS readings (
        seq      BIGINT    NOT NULL,
        ts       BIGINT    NOT NULL,
        point_id INTEGER   NOT NULL,
        value    DOUBLE    NOT NULL,
        quality  USMALLINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS events (
        seq      BIGINT   NOT NULL,
        ts       BIGINT   NOT NULL,
        priority SMALLINT NOT NULL,
        kind     VARCHAR  NOT NULL,
        device   VARCHAR  NOT NULL,
        point    VARCHAR  NOT NULL,
        message  VARCHAR  NOT NULL,
        data     VARCHAR  NOT NULL
    )""",
    # per point and UTC minute, the summary of downsampled readings (storefwd/retention.py)
    """CREATE TABLE IF NOT EXISTS readings_1m (
        point_id INTEGER NOT NULL,
        bucket_ns BIGINT NOT NULL,
        min      DOUBLE NOT NULL,
        max      DOUBLE NOT NULL,
        avg      DOUBLE NOT NULL,
        last     DOUBLE NOT NULL,
        last_ts  BIGINT NOT NULL,
        count    BIGINT NOT NULL,
        seq_lo   BIGINT NOT NULL,
        seq_hi   BIGINT NOT NULL
    )""",
    # one row per reclaim step (downsampled or evicted seq range); what the gap records describe
    """CREATE TABLE IF NOT EXISTS reclaim_log (
        action      VARCHAR NOT NULL,
        seq_lo      BIGINT  NOT NULL,
        seq_hi      BIGINT  NOT NULL,
        rows_before BIGINT  NOT NULL,
        rows_after  BIGINT  NOT NULL,
        ts_from     BIGINT  NOT NULL,
        ts_to       BIGINT  NOT NULL,
        events      BIGINT  NOT NULL,
        done_ns     BIGINT  NOT NULL
    )""",
    # input records refused by validation (MQTT sensors: docs/analytics.md), with the raw payload; bounded to
    # QUARANTINE_MAX_ROWS (the oldest rows go first); never uploaded
    """CREATE TABLE IF NOT EXISTS quarantine (
        seq     BIGINT  NOT NULL,
        ts      BIGINT  NOT NULL,
        device  VARCHAR NOT NULL,
        topic   VARCHAR NOT NULL,
        reason  VARCHAR NOT NULL,
        detail  VARCHAR NOT NULL,
        payload BLOB    NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS outbox (
        sink       VARCHAR PRIMARY KEY,
        acked_seq  BIGINT  NOT NULL,
        updated_ns BIGINT  NOT NULL
    )""",
)

# meta keys
META_SCHEMA_VERSION: Final = "schema_version"
META_STORAGE_VERSION: Final = "storage_version"
META_READING_SEQ: Final = "reading_seq"  # highest reading seq ever committed (survives future eviction)
META_EVENT_SEQ: Final = "event_seq"  # highest event seq ever committed
META_CREATED_NS: Final = "created_ns"
META_DOWNSAMPLED_SEQ: Final = "downsampled_seq"  # readings with seq <= this were downsampled (or evicted)
META_COMMIT_NO: Final = "commit_no"  # incremented by every transaction: tells after a crash whether it committed

READING_COLUMNS: Final = ("seq", "ts", "point_id", "value", "quality")
EVENT_COLUMNS: Final = ("seq", "ts", "priority", "kind", "device", "point", "message", "data")
QUARANTINE_COLUMNS: Final = ("seq", "ts", "device", "topic", "reason", "detail", "payload")
QUARANTINE_MAX_ROWS: Final = 100_000  # the quarantine table keeps at most this many (newest) records

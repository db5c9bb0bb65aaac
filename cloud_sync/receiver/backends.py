"""Storage backends of the reference receiver: embedded DuckDB (a file) and PostgreSQL (psycopg 3).

Contract of :meth:`Backend.land` (one transaction per batch):

- ``readings`` is unique on ``(gateway, seq)``; rows already present are counted as duplicates, never updated:
  a retried batch lands nothing new (exactly-once landing).
- ``quarantine`` is unique on ``(gateway, batch_key, row_index)``: a retried batch does not quarantine twice.
- ``batches`` records each batch key once; ``gateways`` keeps running counters for the stats endpoint.
- ``points`` is upserted with the names the batch carries (names may change; the latest wins).
- ``events`` (the batch's optional events section) is unique on ``(gateway, seq)`` and lands in the same
  transaction as the readings; events already present count as duplicates.

PostgreSQL at scale (see ``docs/receiver-fleet.md``): ``readings`` is partitioned by range of ``ts`` (UTC ns),
one partition per UTC day created on demand, race-safe across receiver processes (advisory lock +
``CREATE TABLE IF NOT EXISTS … PARTITION OF``), plus a DEFAULT partition for rows older than the partition
horizon. Its primary key is ``(gw, seq, ts)``: PostgreSQL wants the partition key in every unique constraint,
and a gateway's seq always carries the same ts, so a re-sent reading conflicts inside the same partition.
Several receiver processes may land into one database at once (no duplicates: every insert is ordered by
seq and ``ON CONFLICT DO NOTHING`` or a COPY that falls back to it on a unique violation).

Threads: each backend owns one worker thread (a single-thread executor). Every database call runs there, so
DuckDB has a single writer and the event loop never blocks. The async methods may be called from any event
loop; :meth:`close` is idempotent and may be called from any thread except the worker itself.
"""

from __future__ import annotations

import abc
import asyncio
import calendar
import contextlib
import logging
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cloud_sync.errors import BackendError

T = TypeVar("T")
log = logging.getLogger(__name__)

_STATS_KEYS: Final = ("rows", "last_seq", "quarantined", "batches", "events", "last_event_seq")
_STATS_SQL: Final = "rows, last_seq, quarantined, batches, events, last_event_seq"
_EVENT_COLS: Final = ("seq", "ts", "priority", "kind", "device", "point", "message", "data")


@dataclass(frozen=True, slots=True)
class LandResult:
    accepted: int  # valid rows newly stored
    duplicates: int  # valid rows already stored (retry / overlap)
    quarantined: int  # rows of this batch in quarantine (stored now or by an earlier attempt)
    replay: bool  # the batch key was seen before
    events_accepted: int = 0  # events newly stored
    events_duplicates: int = 0  # events already stored (retry / overlap)


def _no_events() -> pa.Table:
    from cloud_sync.codec import EVENTS_SCHEMA

    return EVENTS_SCHEMA.empty_table()


class Backend(abc.ABC):
    """One receiver database. Subclasses implement the ``_``-prefixed methods, run in the worker thread."""

    kind: str = "?"

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"receiver-{self.kind}")
        self._opened = False
        self._closed = False
        self._close_lock = threading.Lock()

    # ----------------------------------------------------------------------------- async API (any loop)
    async def land(
        self,
        gateway_id: str,
        batch_key: str,
        valid: pa.Table,
        quarantine: pa.Table,
        points: pa.Table,
        received_ns: int,
        *,
        events: pa.Table | None = None,
    ) -> LandResult:
        """Land one batch in one transaction. ``events``: the batch's events (``DecodedBatch.events``)."""
        evs = _no_events() if events is None else events
        return await self._call(self._land, gateway_id, batch_key, valid, quarantine, points, received_ns, evs)

    async def stats(self, gateway_id: str) -> dict[str, int]:
        """rows, last_seq, quarantined, batches, events, last_event_seq of one gateway (zeros when it never
        sent anything)."""
        return await self._call(self._stats, gateway_id)

    async def ping(self) -> None:
        """A trivial query; opens the database (and creates/checks the schema) on first use."""
        await self._call(self._ping)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read-only SQL statement on the backend's connection and return all rows (tools, tests).

        Placeholders: ``?`` for DuckDB, ``%s`` for PostgreSQL.
        """
        return await self._call(self._query, sql, tuple(params))

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Close the connection in the worker thread and stop it. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._opened:
                    self._executor.submit(self._close).result()
            finally:
                self._executor.shutdown(wait=True)

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise BackendError(f"{self.kind} backend is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._guarded, fn, args)
        except RuntimeError as e:  # executor shut down between the check and the submit
            raise BackendError(f"{self.kind} backend is closed") from e

    def _guarded(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if not self._opened:
            self._open()
            self._opened = True
        return fn(*args)

    # ----------------------------------------------------------------------------- worker-thread methods
    @abc.abstractmethod
    def _open(self) -> None: ...

    @abc.abstractmethod
    def _land(
        self,
        gateway_id: str,
        batch_key: str,
        valid: pa.Table,
        quarantine: pa.Table,
        points: pa.Table,
        received_ns: int,
        events: pa.Table,
    ) -> LandResult: ...

    @abc.abstractmethod
    def _stats(self, gateway_id: str) -> dict[str, int]: ...

    @abc.abstractmethod
    def _ping(self) -> None: ...

    @abc.abstractmethod
    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]: ...

    @abc.abstractmethod
    def _close(self) -> None: ...


def _points_changed(cache: dict[tuple[int, int], tuple[Any, ...]], gw: int, points: pa.Table) -> pa.Table:
    """Rows of ``points`` that are new or differ from ``cache`` (which is updated). Worker thread only."""
    cols = points.to_pydict()
    keep: list[int] = []
    for i, (pid, name, dev, pt, unit) in enumerate(
        zip(cols["point_id"], cols["name"], cols["device"], cols["point"], cols["unit"], strict=True)
    ):
        row = (name, dev, pt, unit)
        if dev is None or pt is None:
            continue  # unnamed: nothing to record
        if cache.get((gw, pid)) != row:
            cache[(gw, pid)] = row
            keep.append(i)
    return points.take(pa.array(keep, type=pa.int64()))


# =================================================================================================== DuckDB
_DUCK_SCHEMA: Final = [
    """CREATE TABLE IF NOT EXISTS gateways (
        gw INTEGER PRIMARY KEY, gateway_id VARCHAR NOT NULL UNIQUE,
        rows BIGINT NOT NULL DEFAULT 0, last_seq BIGINT NOT NULL DEFAULT 0,
        quarantined BIGINT NOT NULL DEFAULT 0, batches BIGINT NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS readings (
        gw INTEGER NOT NULL, seq BIGINT NOT NULL, ts BIGINT NOT NULL, point_id INTEGER NOT NULL,
        value DOUBLE NOT NULL, quality USMALLINT NOT NULL, PRIMARY KEY (gw, seq))""",
    """CREATE TABLE IF NOT EXISTS points (
        gw INTEGER NOT NULL, point_id INTEGER NOT NULL, name VARCHAR, device VARCHAR, point VARCHAR,
        unit VARCHAR, PRIMARY KEY (gw, point_id))""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        gw INTEGER NOT NULL, batch_key VARCHAR NOT NULL, row_index INTEGER NOT NULL, seq BIGINT, ts BIGINT,
        point_id INTEGER, value DOUBLE, quality USMALLINT, reason VARCHAR NOT NULL,
        received_ns BIGINT NOT NULL,
        PRIMARY KEY (gw, batch_key, row_index))""",
    """CREATE TABLE IF NOT EXISTS batches (
        gw INTEGER NOT NULL, batch_key VARCHAR NOT NULL, first_seq BIGINT, last_seq BIGINT, rows BIGINT,
        accepted BIGINT, duplicates BIGINT, quarantined BIGINT, received_ns BIGINT NOT NULL,
        PRIMARY KEY (gw, batch_key))""",
    """CREATE TABLE IF NOT EXISTS events (
        gw INTEGER NOT NULL, seq BIGINT NOT NULL, ts BIGINT NOT NULL, priority SMALLINT NOT NULL, kind VARCHAR,
        device VARCHAR, point VARCHAR, message VARCHAR, data VARCHAR, received_ns BIGINT NOT NULL,
        PRIMARY KEY (gw, seq))""",
    "CREATE INDEX IF NOT EXISTS events_ts ON events (ts)",
    # columns added after the first release: older files get them here
    "ALTER TABLE gateways ADD COLUMN IF NOT EXISTS events BIGINT DEFAULT 0",
    "ALTER TABLE gateways ADD COLUMN IF NOT EXISTS last_event_seq BIGINT DEFAULT 0",
    """CREATE OR REPLACE VIEW readings_named AS
        SELECT g.gateway_id, r.seq, r.ts, make_timestamp_ns(r.ts) AS time, p.name, p.device, p.point, p.unit,
               r.value, r.quality
        FROM readings r JOIN gateways g USING (gw) LEFT JOIN points p USING (gw, point_id)""",
]


# Written in the v1.2.0 storage format so every DuckDB >= 1.2 (the 1.4 LTS line included) can open the file;
# DuckDB 2.0's default format is unreadable by 1.x. Every COMMIT fsyncs (STANDARD) before the 200 goes out.
DUCKDB_CONFIG: Final[dict[str, str]] = {"storage_compatibility_version": "v1.2.0", "fsync_mode": "STANDARD"}


class DuckDBBackend(Backend):
    """Embedded DuckDB file. Inserts go through Arrow (registered tables), never executemany."""

    kind = "duckdb"

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._gw: dict[str, int] = {}
        self._points: dict[tuple[int, int], tuple[Any, ...]] = {}

    def _open(self) -> None:
        try:
            self._con = duckdb.connect(str(self.path), config=dict(DUCKDB_CONFIG))
            for sql in _DUCK_SCHEMA:
                self._con.execute(sql)
            for gw, gid in self._con.execute("SELECT gw, gateway_id FROM gateways").fetchall():
                self._gw[str(gid)] = int(gw)
        except duckdb.Error as e:
            raise BackendError(f"cannot open DuckDB {self.path}: {e}") from e

    def _gw_id(self, gateway_id: str, create: bool) -> int | None:
        gw = self._gw.get(gateway_id)
        if gw is None and create:
            assert self._con is not None
            gw = max(self._gw.values(), default=0) + 1
            self._con.execute("INSERT INTO gateways (gw, gateway_id) VALUES (?, ?)", [gw, gateway_id])
            self._gw[gateway_id] = gw
        return gw

    def _land(
        self,
        gateway_id: str,
        batch_key: str,
        valid: pa.Table,
        quarantine: pa.Table,
        points: pa.Table,
        received_ns: int,
        events: pa.Table,
    ) -> LandResult:
        con = self._con
        assert con is not None
        points_before = dict(self._points)
        try:
            con.begin()
            gw = self._gw_id(gateway_id, create=True)
            assert gw is not None
            n_valid = valid.num_rows
            first, last = _seq_range(valid, quarantine)
            new_batch = _count(
                con.execute(
                    "INSERT INTO batches VALUES (?, ?, ?, ?, ?, NULL, NULL, ?, ?) ON CONFLICT DO NOTHING",
                    [
                        gw,
                        batch_key,
                        first,
                        last,
                        n_valid + quarantine.num_rows,
                        quarantine.num_rows,
                        received_ns,
                    ],
                )
            )
            accepted = 0
            if n_valid:
                con.register("incoming_rows", valid)
                accepted = _count(
                    con.execute(
                        "INSERT INTO readings SELECT ?, seq, ts, point_id, value, quality FROM incoming_rows "
                        "ON CONFLICT DO NOTHING",
                        [gw],
                    )
                )
                con.unregister("incoming_rows")
            new_q = 0
            if quarantine.num_rows:
                con.register("incoming_q", quarantine)
                new_q = _count(
                    con.execute(
                        "INSERT INTO quarantine SELECT ?, ?, row_index, seq, ts, point_id, value, quality, "
                        "reason, ? "
                        "FROM incoming_q ON CONFLICT DO NOTHING",
                        [gw, batch_key, received_ns],
                    )
                )
                con.unregister("incoming_q")
            changed = _points_changed(self._points, gw, points)
            if changed.num_rows:
                con.register("incoming_p", changed)
                con.execute(
                    "INSERT INTO points SELECT ?, point_id, name, device, point, unit FROM incoming_p "
                    "ON CONFLICT DO UPDATE SET name = excluded.name, device = excluded.device, "
                    "point = excluded.point, unit = excluded.unit",
                    [gw],
                )
                con.unregister("incoming_p")
            ev_accepted = 0
            if events.num_rows:
                con.register("incoming_e", events)
                ev_accepted = _count(
                    con.execute(
                        "INSERT INTO events SELECT ?, seq, ts, priority, kind, device, point, message, data, ? "
                        "FROM incoming_e ORDER BY seq ON CONFLICT DO NOTHING",
                        [gw, received_ns],
                    )
                )
                con.unregister("incoming_e")
            max_seq = int(pc.max(valid.column("seq")).as_py()) if n_valid else 0
            con.execute(
                "UPDATE batches SET accepted = ?, duplicates = ? WHERE gw = ? AND batch_key = ? AND ? = 1",
                [accepted, n_valid - accepted, gw, batch_key, new_batch],
            )
            con.execute(
                "UPDATE gateways SET rows = rows + ?, last_seq = greatest(last_seq, ?), "
                "quarantined = quarantined + ?, batches = batches + ?, events = events + ?, "
                "last_event_seq = greatest(last_event_seq, ?) WHERE gw = ?",
                [accepted, max_seq, new_q, new_batch, ev_accepted, _max_event_seq(events), gw],
            )
            con.commit()
        except duckdb.Error as e:
            self._points = points_before
            with contextlib.suppress(duckdb.Error):
                con.rollback()
            raise BackendError(f"DuckDB {self.path}: {e}") from e
        return LandResult(
            accepted,
            n_valid - accepted,
            quarantine.num_rows,
            replay=not new_batch,
            events_accepted=ev_accepted,
            events_duplicates=events.num_rows - ev_accepted,
        )

    def _stats(self, gateway_id: str) -> dict[str, int]:
        assert self._con is not None
        row = self._con.execute(
            f"SELECT {_STATS_SQL} FROM gateways WHERE gateway_id = ?", [gateway_id]
        ).fetchone()
        return (
            dict(zip(_STATS_KEYS, (int(v) for v in row), strict=True))
            if row
            else dict.fromkeys(_STATS_KEYS, 0)
        )

    def _ping(self) -> None:
        assert self._con is not None
        self._con.execute("SELECT 1").fetchone()

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        assert self._con is not None
        return [tuple(r) for r in self._con.execute(sql, list(params)).fetchall()]

    def _close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def _count(cur: Any) -> int:
    row = cur.fetchone()
    return int(row[0]) if row else 0


def _max_event_seq(events: pa.Table) -> int:
    return int(pc.max(events.column("seq")).as_py()) if events.num_rows else 0


def _seq_range(valid: pa.Table, quarantine: pa.Table) -> tuple[int, int]:
    seqs = [t.column("seq") for t in (valid, quarantine) if t.num_rows]
    if not seqs:
        return 0, 0
    lo = min(int(pc.min(s).as_py()) for s in seqs)
    hi = max(int(pc.max(s).as_py()) for s in seqs)
    return lo, hi


# ================================================================================================ PostgreSQL
DAY_NS: Final = 86_400 * 10**9  # one readings partition per UTC day of ts
DEFAULT_PARTITION_HORIZON_DAYS: Final = 400  # rows older than this (at arrival) go to readings_default
_ADVISORY_LOCK_DDL: Final = 0x67777379_6E630001  # pg_advisory_xact_lock key: schema and partition DDL
_PG_SCHEMA: Final = [
    """CREATE TABLE IF NOT EXISTS gateways (
        gw SERIAL PRIMARY KEY, gateway_id TEXT NOT NULL UNIQUE,
        rows BIGINT NOT NULL DEFAULT 0, last_seq BIGINT NOT NULL DEFAULT 0,
        quarantined BIGINT NOT NULL DEFAULT 0, batches BIGINT NOT NULL DEFAULT 0)""",
    "ALTER TABLE gateways ADD COLUMN IF NOT EXISTS events BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE gateways ADD COLUMN IF NOT EXISTS last_event_seq BIGINT NOT NULL DEFAULT 0",
    # the partition key (ts) must be part of every unique constraint; (gw, seq) alone is unique in practice
    # because a gateway's seq always carries the same ts (see docs/receiver-fleet.md)
    """CREATE TABLE IF NOT EXISTS readings (
        gw INTEGER NOT NULL, seq BIGINT NOT NULL, ts BIGINT NOT NULL, point_id INTEGER NOT NULL,
        value DOUBLE PRECISION NOT NULL, quality INTEGER NOT NULL, PRIMARY KEY (gw, seq, ts))
        PARTITION BY RANGE (ts)""",
    """CREATE TABLE IF NOT EXISTS points (
        gw INTEGER NOT NULL, point_id INTEGER NOT NULL, name TEXT, device TEXT, point TEXT, unit TEXT,
        PRIMARY KEY (gw, point_id))""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        gw INTEGER NOT NULL, batch_key TEXT NOT NULL, row_index INTEGER NOT NULL, seq BIGINT, ts BIGINT,
        point_id INTEGER, value DOUBLE PRECISION, quality INTEGER, reason TEXT NOT NULL,
        received_ns BIGINT NOT NULL, PRIMARY KEY (gw, batch_key, row_index))""",
    """CREATE TABLE IF NOT EXISTS batches (
        gw INTEGER NOT NULL, batch_key TEXT NOT NULL, first_seq BIGINT, last_seq BIGINT, rows BIGINT,
        accepted BIGINT, duplicates BIGINT, quarantined BIGINT, received_ns BIGINT NOT NULL,
        PRIMARY KEY (gw, batch_key))""",
    """CREATE TABLE IF NOT EXISTS events (
        gw INTEGER NOT NULL, seq BIGINT NOT NULL, ts BIGINT NOT NULL, priority SMALLINT NOT NULL, kind TEXT,
        device TEXT, point TEXT, message TEXT, data TEXT, received_ns BIGINT NOT NULL,
        PRIMARY KEY (gw, seq))""",
    "CREATE INDEX IF NOT EXISTS events_ts ON events (ts)",
]
_PG_DEFAULT_PARTITION: Final = "CREATE TABLE IF NOT EXISTS readings_default PARTITION OF readings DEFAULT"
_PG_HAS_TIMESCALEDB: Final = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
# only run when the extension exists (the view is unknown otherwise)
_PG_IS_HYPERTABLE: Final = (
    "SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables "
    "WHERE hypertable_schema = current_schema() AND hypertable_name = 'readings')"
)
# true when every object of the current schema version exists: the DDL (which takes ACCESS EXCLUSIVE locks
# even when IF NOT EXISTS makes it a no-op, and would deadlock with receivers landing) is then skipped
_PG_SCHEMA_COMPLETE: Final = (
    "SELECT to_regclass('readings') IS NOT NULL AND to_regclass('points') IS NOT NULL "
    "AND to_regclass('quarantine') IS NOT NULL AND to_regclass('batches') IS NOT NULL "
    "AND to_regclass('events') IS NOT NULL AND (to_regclass('readings_default') IS NOT NULL OR %s) "
    "AND EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
    "AND table_name = 'gateways' AND column_name = 'last_event_seq')"
)
_PG_TEMP: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS incoming_rows (gw INTEGER, seq BIGINT, ts BIGINT, point_id INTEGER, "
    "value DOUBLE PRECISION, quality INTEGER) ON COMMIT DELETE ROWS"
)
_COPY_HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER: Final = struct.pack(">h", -1)
_COPY_ROW: Final = np.dtype(
    [
        ("nf", ">i2"),
        ("l_gw", ">i4"),
        ("gw", ">i4"),
        ("l_seq", ">i4"),
        ("seq", ">i8"),
        ("l_ts", ">i4"),
        ("ts", ">i8"),
        ("l_pid", ">i4"),
        ("pid", ">i4"),
        ("l_val", ">i4"),
        ("val", ">f8"),
        ("l_q", ">i4"),
        ("q", ">i4"),
    ]
)
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def copy_binary_rows(gw: int, rows: pa.Table) -> bytes:
    """PostgreSQL binary COPY payload for ``incoming_rows`` built with numpy (no Python object per row)."""
    n = rows.num_rows
    a = np.empty(n, dtype=_COPY_ROW)
    a["nf"] = 6
    a["l_gw"], a["l_pid"], a["l_q"] = 4, 4, 4
    a["l_seq"], a["l_ts"], a["l_val"] = 8, 8, 8
    a["gw"] = gw
    a["seq"] = rows.column("seq").to_numpy()
    a["ts"] = rows.column("ts").to_numpy()
    a["pid"] = rows.column("point_id").to_numpy()
    a["val"] = rows.column("value").to_numpy()
    a["q"] = rows.column("quality").to_numpy()
    return b"".join((_COPY_HEADER, a.tobytes(), _COPY_TRAILER))


def _copy_into_temp(cur: Any, temp: str, like: str, rows: Iterable[tuple[Any, ...]]) -> None:
    """COPY ``rows`` into a transaction-scoped temp table shaped like ``like`` (names are constants)."""
    cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {temp} (LIKE {like}) ON COMMIT DROP")
    with cur.copy(f"COPY {temp} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


class LegacyReadingsTable(BackendError):
    """The PostgreSQL ``readings`` table exists but is not partitioned (created by a receiver before
    partitioning). The receiver refuses to start on it rather than migrate terabytes behind your back."""


def partition_name(day: int) -> str:
    """``readings_dYYYYMMDD`` for UTC day number ``day`` (``ts // DAY_NS``)."""
    return "readings_d" + time.strftime("%Y%m%d", time.gmtime(day * 86_400))


class PostgresBackend(Backend):
    """PostgreSQL via psycopg 3: binary COPY, straight into ``readings`` when the batch's seq range is new,
    otherwise into a temp table and ``INSERT … ON CONFLICT DO NOTHING``.

    ``schema`` (optional) is created if missing and put first on the search_path (tests use one per run).
    ``partition_horizon_days``: a day partition is created on demand for rows at most this many days older
    than the receiver's clock; older rows land in ``readings_default`` (so a partition is never created for a
    range the default partition already holds rows of). Several processes may share one database: schema
    and partition DDL run under one transaction-scoped advisory lock. A ``readings`` table that is a
    TimescaleDB hypertable (made by an operator, ``docs/receiver-fleet.md``) is used as is: TimescaleDB
    creates its chunks and the receiver manages no partitions.
    """

    kind = "postgres"

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        partition_horizon_days: int = DEFAULT_PARTITION_HORIZON_DAYS,
    ) -> None:
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        super().__init__()
        self.url = url
        self.schema = schema
        self.partition_horizon_days = partition_horizon_days
        self._con: Any = None
        self._gw: dict[str, int] = {}
        self._points: dict[tuple[int, int], tuple[Any, ...]] = {}
        self._days: set[int] = set()  # days known to have a partition (or to stay in the default one)
        self.hypertable = False  # readings is a TimescaleDB hypertable: TimescaleDB makes the chunks

    def _open(self) -> None:
        import psycopg

        try:
            self._con = psycopg.connect(self.url, autocommit=False)
            with self._con.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK_DDL])
                if self.schema:
                    cur.execute("SELECT to_regnamespace(%s) IS NULL", [f'"{self.schema}"'])
                    if cur.fetchone()[0]:  # (CREATE SCHEMA needs a privilege even when IF NOT EXISTS skips)
                        cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                    cur.execute(f'SET search_path TO "{self.schema}"')
                cur.execute(
                    "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relname = 'readings' AND n.nspname = current_schema()"
                )
                kind = cur.fetchone()
                if kind is not None and kind[0] == "r":
                    cur.execute(_PG_HAS_TIMESCALEDB)
                    if cur.fetchone()[0]:
                        cur.execute(_PG_IS_HYPERTABLE)
                        self.hypertable = bool(cur.fetchone()[0])
                if kind is not None and kind[0] != "p" and not self.hypertable:
                    cur.execute("SELECT current_schema()")
                    where = cur.fetchone()[0]
                    raise LegacyReadingsTable(
                        f"table {where}.readings was created by an older receiver and is not partitioned; "
                        "this receiver needs readings PARTITIONED BY RANGE (ts). Migrate it (docs/"
                        "receiver-fleet.md, 'Migrating an unpartitioned readings table') or use a new "
                        "database or schema (--db-schema)"
                    )
                cur.execute(_PG_SCHEMA_COMPLETE, [self.hypertable])
                if not cur.fetchone()[0]:
                    for sql in _PG_SCHEMA:
                        cur.execute(sql)
                    if not self.hypertable:
                        cur.execute(_PG_DEFAULT_PARTITION)
                cur.execute(_PG_TEMP)
                cur.execute("SELECT gw, gateway_id FROM gateways")
                self._gw = {str(gid): int(gw) for gw, gid in cur.fetchall()}
                cur.execute(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'readings'::regclass AND NOT %s",
                    [self.hypertable],
                )
                for (name,) in cur.fetchall():
                    if str(name).startswith("readings_d") and str(name)[10:].isdigit():
                        t = time.strptime(str(name)[10:], "%Y%m%d")
                        self._days.add(calendar.timegm(t) // 86_400)
            self._con.commit()
        except (psycopg.Error, LegacyReadingsTable) as e:
            if self._con is not None:
                self._con.close()
                self._con = None
            if isinstance(e, LegacyReadingsTable):
                raise
            raise BackendError(f"cannot open PostgreSQL: {e}") from e

    # ---------------------------------------------------------------------------- outside the landing txn
    def _gw_for(self, gateway_id: str) -> int:
        """The gateway's small id, created in its own short transaction (so the landing transaction never
        holds a lock on the gateways row while it inserts readings: no deadlock between receivers)."""
        gw = self._gw.get(gateway_id)
        if gw is None:
            with self._con.cursor() as cur:
                cur.execute(
                    "INSERT INTO gateways (gateway_id) VALUES (%s) ON CONFLICT (gateway_id) DO NOTHING", [gateway_id]
                )
                cur.execute("SELECT gw FROM gateways WHERE gateway_id = %s", [gateway_id])
                gw = int(cur.fetchone()[0])
            self._con.commit()
            self._gw[gateway_id] = gw
        return gw

    def ensure_partitions_for(self, ts: np.ndarray[Any, Any], now_ns: int) -> list[int]:
        """Create the day partitions rows with these ``ts`` need (worker thread). Returns the days created
        or found. Days older than the horizon are left to the default partition."""
        import psycopg

        if self.hypertable:
            return []
        days = np.unique(np.floor_divide(ts, DAY_NS))
        oldest = (now_ns // DAY_NS) - self.partition_horizon_days
        missing = [int(d) for d in days if int(d) >= oldest and int(d) not in self._days]
        if not missing:
            return []
        with self._con.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK_DDL])
            for d in missing:
                cur.execute("SAVEPOINT part")
                try:
                    cur.execute(
                        f"CREATE TABLE IF NOT EXISTS {partition_name(d)} PARTITION OF readings "
                        f"FOR VALUES FROM ({d * DAY_NS}) TO ({(d + 1) * DAY_NS})"
                    )
                    cur.execute("RELEASE SAVEPOINT part")
                except (psycopg.errors.CheckViolation, psycopg.errors.InsufficientPrivilege) as e:
                    # the default partition holds rows of that day, or this role may not create tables
                    # (partitions made by the operator are used; other rows go to readings_default)
                    cur.execute("ROLLBACK TO SAVEPOINT part")
                    log.warning("no partition %s made, its readings go to readings_default: %s", partition_name(d), e)
        self._con.commit()
        self._days.update(missing)
        return missing

    # ---------------------------------------------------------------------------- landing
    def _land(
        self,
        gateway_id: str,
        batch_key: str,
        valid: pa.Table,
        quarantine: pa.Table,
        points: pa.Table,
        received_ns: int,
        events: pa.Table,
    ) -> LandResult:
        import psycopg

        try:
            gw = self._gw_for(gateway_id)
            if valid.num_rows:
                self.ensure_partitions_for(valid.column("ts").to_numpy(), received_ns)
        except psycopg.Error as e:
            with contextlib.suppress(psycopg.Error):
                self._con.rollback()
            raise BackendError(f"PostgreSQL: {e}") from e
        args = (gw, batch_key, valid, quarantine, points, received_ns, events)
        try:
            return self._land_once(*args, fast=True)
        except psycopg.errors.UniqueViolation:  # another receiver landed some of these seqs meanwhile
            return self._land_once(*args, fast=False)

    def _land_once(
        self,
        gw: int,
        batch_key: str,
        valid: pa.Table,
        quarantine: pa.Table,
        points: pa.Table,
        received_ns: int,
        events: pa.Table,
        *,
        fast: bool,
    ) -> LandResult:
        """One transaction. ``fast``: when no row of the batch's seq range exists yet, COPY straight into
        ``readings`` (twice the speed of ``INSERT … ON CONFLICT``); a concurrent writer makes that raise
        UniqueViolation (re-raised after rollback so the caller retries with ``fast=False``).

        Lock order, the same in every receiver process (so concurrent landings wait, never deadlock): the
        ``readings`` parent table first (so partition DDL, which waits for landing transactions, is never
        waited on by one that holds other locks), the batches key, events by seq, readings by seq,
        quarantine, points by id, then the gateways row."""
        import psycopg

        con = self._con
        points_before = dict(self._points)
        try:
            with con.cursor() as cur:
                cur.execute("LOCK TABLE ONLY readings IN ROW EXCLUSIVE MODE")
                n_valid = valid.num_rows
                first, last = _seq_range(valid, quarantine)
                cur.execute(
                    "INSERT INTO batches VALUES (%s, %s, %s, %s, %s, NULL, NULL, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    [gw, batch_key, first, last, n_valid + quarantine.num_rows, quarantine.num_rows, received_ns],
                )
                new_batch = cur.rowcount
                ev_accepted = 0
                if events.num_rows:
                    e = events.to_pydict()
                    _copy_into_temp(
                        cur,
                        "incoming_e",
                        "events",
                        ((gw, *(e[c][i] for c in _EVENT_COLS), received_ns) for i in range(events.num_rows)),
                    )
                    cur.execute("INSERT INTO events SELECT * FROM incoming_e ORDER BY seq ON CONFLICT DO NOTHING")
                    ev_accepted = cur.rowcount
                accepted = 0
                if n_valid:
                    seqs, ts = valid.column("seq"), valid.column("ts")
                    cur.execute(
                        "SELECT EXISTS (SELECT 1 FROM readings WHERE gw = %s AND seq BETWEEN %s AND %s "
                        "AND ts BETWEEN %s AND %s)",  # a stored (gw, seq) has the same ts: prunes partitions
                        [gw, pc.min(seqs).as_py(), pc.max(seqs).as_py(), pc.min(ts).as_py(), pc.max(ts).as_py()],
                    )
                    if fast and not cur.fetchone()[0]:
                        with cur.copy(
                            "COPY readings (gw, seq, ts, point_id, value, quality) FROM STDIN (FORMAT BINARY)"
                        ) as copy:
                            copy.write(copy_binary_rows(gw, valid))
                        accepted = n_valid
                    else:
                        with cur.copy("COPY incoming_rows FROM STDIN (FORMAT BINARY)") as copy:
                            copy.write(copy_binary_rows(gw, valid))
                        cur.execute(
                            "INSERT INTO readings SELECT * FROM incoming_rows ORDER BY seq ON CONFLICT DO NOTHING"
                        )
                        accepted = cur.rowcount
                new_q = 0
                if quarantine.num_rows:
                    q = quarantine.to_pydict()
                    q_cols = ("row_index", "seq", "ts", "point_id", "value", "quality", "reason")
                    _copy_into_temp(
                        cur,
                        "incoming_q",
                        "quarantine",
                        ((gw, batch_key, *(q[c][i] for c in q_cols), received_ns) for i in range(quarantine.num_rows)),
                    )
                    cur.execute(
                        "INSERT INTO quarantine SELECT * FROM incoming_q ORDER BY row_index ON CONFLICT DO NOTHING"
                    )
                    new_q = cur.rowcount
                changed = _points_changed(self._points, gw, points)
                if changed.num_rows:
                    p = changed.to_pydict()
                    p_cols = ("point_id", "name", "device", "point", "unit")
                    _copy_into_temp(
                        cur, "incoming_p", "points", ((gw, *(p[c][i] for c in p_cols)) for i in range(changed.num_rows))
                    )
                    cur.execute(
                        "INSERT INTO points SELECT * FROM incoming_p ORDER BY point_id ON CONFLICT (gw, point_id) "
                        "DO UPDATE SET "
                        "name = excluded.name, device = excluded.device, point = excluded.point, "
                        "unit = excluded.unit"
                    )
                max_seq = int(pc.max(valid.column("seq")).as_py()) if n_valid else 0
                if new_batch:
                    cur.execute(
                        "UPDATE batches SET accepted = %s, duplicates = %s WHERE gw = %s AND batch_key = %s",
                        [accepted, n_valid - accepted, gw, batch_key],
                    )
                cur.execute(
                    "UPDATE gateways SET rows = rows + %s, last_seq = greatest(last_seq, %s), "
                    "quarantined = quarantined + %s, batches = batches + %s, events = events + %s, "
                    "last_event_seq = greatest(last_event_seq, %s) WHERE gw = %s",
                    [accepted, max_seq, new_q, new_batch, ev_accepted, _max_event_seq(events), gw],
                )
            con.commit()
        except psycopg.Error as e:
            self._points = points_before
            with contextlib.suppress(psycopg.Error):
                con.rollback()
            if fast and isinstance(e, psycopg.errors.UniqueViolation):
                raise
            raise BackendError(f"PostgreSQL: {e}") from e
        return LandResult(
            accepted,
            n_valid - accepted,
            quarantine.num_rows,
            replay=not new_batch,
            events_accepted=ev_accepted,
            events_duplicates=events.num_rows - ev_accepted,
        )

    def _stats(self, gateway_id: str) -> dict[str, int]:
        with self._con.cursor() as cur:
            cur.execute(f"SELECT {_STATS_SQL} FROM gateways WHERE gateway_id = %s", [gateway_id])
            row = cur.fetchone()
        self._con.commit()
        return (
            dict(zip(_STATS_KEYS, (int(v) for v in row), strict=True))
            if row
            else dict.fromkeys(_STATS_KEYS, 0)
        )

    def _ping(self) -> None:
        with self._con.cursor() as cur:
            cur.execute("SELECT 1")
        self._con.commit()

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            with self._con.cursor() as cur:
                cur.execute(sql, params)
                return [tuple(r) for r in cur.fetchall()]
        finally:
            self._con.rollback()

    def _close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def open_backend(db: str, *, schema: str | None = None) -> Backend:
    """``postgresql://…``/``postgres://…`` → :class:`PostgresBackend` (tables in ``schema`` when given),
    anything else is a DuckDB file path (``schema`` must then be None)."""
    if db.startswith(("postgresql://", "postgres://")):
        return PostgresBackend(db, schema=schema)
    if schema is not None:
        raise ValueError("a schema applies to PostgreSQL only")
    return DuckDBBackend(db)

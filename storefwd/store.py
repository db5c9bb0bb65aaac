"""The durable local store: one DuckDB file, one writer thread, outbox watermarks per sink.

Threads (the contract):
- **Exactly one thread writes to DuckDB**: the writer thread ``storefwd-writer`` started by the
  constructor. Every write (readings, point registration, acks, events) is an item on one bounded FIFO
  queue; commands carry a :class:`concurrent.futures.Future` their caller waits on ("single writer, queue,
  sentinel").
- Every public method is thread-safe and may be called from any thread. ``offer()`` never blocks (it takes a
  short lock only); ``put()``, ``flush()``, ``register_points()``, ``ack()`` and ``add_event()`` block the
  caller until the writer has done its part, so call them from a worker thread, never from an asyncio event
  loop (``await asyncio.to_thread(store.ack, sink, seq)``). Reads open their own DuckDB cursor per call.

Group commit: the writer takes everything queued and writes it in ONE transaction, at most once every
``commit_interval_ms`` -- earlier when the queue is half full, when a command (flush/ack/register/event)
waits, or at close. Reading seqs are assigned by the writer inside that transaction: contiguous, gap-free,
increasing, starting at 1; the highest one is also kept in ``meta`` so it never goes backwards.

Durability: a transaction that committed is on disk (DuckDB fsyncs its WAL, or the checkpointed file, before
COMMIT returns with ``fsync_mode=STANDARD``). ``flush()``/``ack()``/``register_points()``/``add_event()``
return only after their commit, so what they report survives a SIGKILL or power loss.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from gateway.model import (
    ID_DTYPE,
    QUALITY_DTYPE,
    TS_DTYPE,
    VALUE_DTYPE,
    Event,
    PointInfo,
    QuarantineRecord,
    ReadingBatch,
)

from . import compact, retention, schema
from .errors import (
    StoreClosed,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreLocked,
    StoreTimeout,
    StoreVersionError,
    StoreWriteError,
)
from .fsutil import fsync_path

log = logging.getLogger(__name__)
CLOSE_READERS_WAIT_S = 10.0  # close() waits this long for reads in flight (panel queries, uploads)

_READINGS_VIEW: Final = "_storefwd_readings_in"
_POINTS_VIEW: Final = "_storefwd_points_in"
_EVENTS_VIEW: Final = "_storefwd_events_in"
_QUARANTINE_VIEW: Final = "_storefwd_quarantine_in"

READINGS_SCHEMA: Final = pa.schema(
    [
        ("seq", pa.int64()),
        ("ts", pa.int64()),
        ("point_id", pa.int32()),
        ("value", pa.float64()),
        ("quality", pa.uint16()),
    ]
)
AGGREGATE_SCHEMA: Final = pa.schema(
    [
        ("point_id", pa.int32()),
        ("bucket_ns", pa.int64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("avg", pa.float64()),
        ("last", pa.float64()),
        ("count", pa.int64()),
    ]
)
EVENTS_SCHEMA: Final = pa.schema(
    [
        ("seq", pa.int64()),
        ("ts", pa.int64()),
        ("priority", pa.int16()),
        ("kind", pa.string()),
        ("device", pa.string()),
        ("point", pa.string()),
        ("message", pa.string()),
        ("data", pa.string()),
    ]
)
QUARANTINE_SCHEMA: Final = pa.schema(
    [
        ("seq", pa.int64()),
        ("ts", pa.int64()),
        ("device", pa.string()),
        ("topic", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("payload", pa.binary()),
    ]
)


# ---------------------------------------------------------------------------------------------- queue items
@dataclass(slots=True)
class _Register:
    points: list[PointInfo]
    future: Future[npt.NDArray[np.int32]] = field(default_factory=Future)


@dataclass(slots=True)
class _Ack:
    sink: str
    seq: int
    future: Future[None] = field(default_factory=Future)


@dataclass(slots=True)
class _AddEvents:
    events: list[Event]
    future: Future[int] = field(default_factory=Future)  # result: seq of the last event


@dataclass(slots=True)
class _AddQuarantine:
    records: list[QuarantineRecord]
    future: Future[int] = field(default_factory=Future)  # result: seq of the last record


@dataclass(slots=True)
class _Flush:
    future: Future[int] = field(default_factory=Future)  # result: last committed reading seq


@dataclass(slots=True)
class _Reclaim:
    future: Future[dict[str, Any] | None] = field(default_factory=Future)  # result: the gap record's data


_Command = _Register | _Ack | _AddEvents | _AddQuarantine | _Flush | _Reclaim
_SENTINEL: Final = object()  # put on the queue by close(): drain what is before it, commit, stop
_MAX_RETRY_PAUSE_S: Final = 5.0  # longest pause between retries of a failing write
_MAX_RECOVER_PAUSE_S: Final = 2.0  # longest pause between attempts to reopen an invalidated database
_RECLAIM_STEPS_PER_CALL: Final = 4  # reclaim transactions between two ingest commits at most
_ROW_BYTES: Final = 30  # seq 8 + ts 8 + point_id 4 + value 8 + quality 2: a reading, uncompressed


class _Invalidated(Exception):
    """The database was invalidated by an earlier fatal error and must be reopened first."""


@dataclass(slots=True)
class _Work:
    """What one transaction writes, computed before any SQL runs; published to the caches after COMMIT."""

    batches: list[ReadingBatch] = field(default_factory=list)
    rows: int = 0
    commands: list[_Command] = field(default_factory=list)
    # computed by _prepare()
    first_seq: int = 0
    new_points: list[tuple[int, PointInfo]] = field(default_factory=list)
    changed_points: list[tuple[int, PointInfo]] = field(default_factory=list)
    register_results: list[npt.NDArray[np.int32]] = field(default_factory=list)
    acks: dict[str, int] = field(default_factory=dict)
    events: list[tuple[int, Event]] = field(default_factory=list)
    event_results: list[int] = field(default_factory=list)
    quarantine: list[tuple[int, QuarantineRecord]] = field(default_factory=list)
    quarantine_results: list[int] = field(default_factory=list)
    commit_no: int = 0  # meta commit_no this transaction writes
    # a reclaim step (writer-internal): runs its SQL first and returns the gap/alarm events to store with it
    reclaim: Callable[[duckdb.DuckDBPyConnection, _Work], list[Event]] | None = None
    reclaim_points: list[tuple[int, PointInfo]] = field(default_factory=list)  # derived points it registered
    after_publish: Callable[[], None] | None = None  # runs under the state lock after COMMIT
    partial_holes: dict[str, tuple[int, int]] = field(default_factory=dict)  # see _count_partial_hole
    oldest: dict[str, tuple[int, int]] = field(default_factory=dict)  # sink -> (watermark, ts of next row)


class Store:
    """Durable local store of readings and events in one DuckDB file.

    ``Store(path)`` (or ``Store.open(path)``) opens or creates the file and starts the writer thread; use it
    as a context manager or call :meth:`close`. Parameters:

    - ``commit_interval_ms``: the writer commits at most this often while only readings arrive.
    - ``queue_rows``: bound of the writer queue in rows (accepted but not yet committed). ``offer()`` returns
      False beyond it. A single batch larger than the bound is accepted only into an empty queue.
    - ``disk_budget_mb``: disk space (MiB) the store may use, when no ``retention_policy`` is given.
    - ``retention_policy``: the disk budget and how it is enforced (storefwd/retention.py): past the high-water
      mark the writer downsamples old raw readings, then evicts the oldest; never events of priority 0/1;
      each step writes a gap record (a priority-0 event).
    - ``on_damage``: "raise" (StoreCorrupt) or "move_aside": a file DuckDB cannot open is renamed
      ``<name>.damaged-<UTC time>`` and a new one started; an alarm event says so (``self.damaged``).
    - ``seq_floor``: a NEW file numbers its readings and events from ``seq_floor + 1`` (the gateway passes
      the time in µs, so a replaced or re-created store never repeats a seq the receiver already has).
    - ``clock_ns``: wall clock (epoch ns) for reclaim ages, gap records and alarms; ``statvfs``: the
      filesystem figures (both injectable for tests).
    - ``checkpoint_threshold_mb``: WAL size (MiB) at which DuckDB checkpoints it into the file. Rows committed
      through the WAL stay in memory until that checkpoint, so this bounds that memory (see docs/storage.md).
    - ``memory_limit_mb``: ceiling of DuckDB's buffer pool (MiB); 0 keeps DuckDB's default (80 % of RAM).
    """

    def __init__(
        self,
        path: Path,
        *,
        commit_interval_ms: int = 250,
        queue_rows: int = 1_000_000,
        disk_budget_mb: float = 1024.0,
        checkpoint_threshold_mb: float = schema.CHECKPOINT_THRESHOLD_MB,
        memory_limit_mb: int = schema.MEMORY_LIMIT_MB,
        retention_policy: retention.RetentionPolicy | None = None,
        on_damage: Literal["raise", "move_aside"] = "raise",
        seq_floor: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
    ) -> None:
        if commit_interval_ms < 0:
            raise ValueError("commit_interval_ms must be >= 0")
        if queue_rows < 1:
            raise ValueError("queue_rows must be >= 1")
        if disk_budget_mb <= 0:
            raise ValueError("disk_budget_mb must be > 0")
        if checkpoint_threshold_mb <= 0:
            raise ValueError("checkpoint_threshold_mb must be > 0")
        if memory_limit_mb < 0:
            raise ValueError("memory_limit_mb must be >= 0")
        self._duckdb_config = schema.duckdb_config(checkpoint_threshold_mb, memory_limit_mb)
        self._path = Path(path)
        self._interval_s = commit_interval_ms / 1000.0
        self._queue_rows = int(queue_rows)
        self._high_water = max(1, self._queue_rows // 2)  # commit early at this many queued rows
        self._policy = retention_policy or retention.RetentionPolicy(budget_bytes=int(disk_budget_mb * 1024 * 1024))
        self._budget_bytes = self._policy.budget_bytes
        self._seq_floor = int(seq_floor)
        self._clock_ns = clock_ns
        self._statvfs = statvfs

        # --- queue state, guarded by _lock
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)  # writer waits here
        self._space_free = threading.Condition(self._lock)  # put() waits here
        self._queue: collections.deque[object] = collections.deque()
        self._queued_rows = 0  # accepted and not yet committed (includes what the writer is writing)
        self._urgent = False  # a command or close waits: commit without waiting for the interval
        self._closing = False
        self._rejected_offers = 0

        # --- committed state: written by the writer thread only (under _state_lock), read by anyone
        self._state_lock = threading.Lock()
        self._last_seq = 0
        self._first_seq = 1  # lowest reading seq still in the file (eviction will move it)
        self._rows = 0
        self._event_seq = 0
        self._events = 0
        self._quarantine_seq = 0  # last quarantine record seq committed
        self._quarantined = 0  # quarantine records committed since the file was created (not the rows kept)
        self._commits = 0
        self._last_commit_ns = 0
        self._write_errors = 0
        self._last_error = ""
        self._points_by_name: dict[str, int] = {}
        self._infos: dict[int, PointInfo] = {}
        self._next_point_id = 1
        self._watermarks: dict[str, int] = {}
        self._sinks: tuple[str, ...] | None = None  # configured sinks (set_sinks); None: those that ever acked
        self._ds_seq = 0  # readings with seq <= this were downsampled or evicted
        self._commit_no = 0  # meta commit_no of the last committed transaction
        self._holes: list[tuple[int, int, int]] = []  # downsampled (lo, hi, rows removed) above first_seq
        self._partial_holes: dict[str, tuple[int, int]] = {}  # sink -> (watermark, rows removed after it)
        self._reclaim = {"downsampled_rows": 0, "evicted_rows": 0, "evicted_events": 0, "gap_records": 0,
                         "reclaim_steps": 0}  # fmt: skip
        self._usage: retention.Usage | None = None
        self._usage_ns = 0
        self._oldest_cache: dict[str, tuple[int, int]] = {}  # sink -> (watermark, ts of the next row)
        # disk full / database invalidated: the writer reopens the file; committed state is kept
        self._invalid = False
        self._disk_full_since_ns = 0
        self._disk_full_events = 0
        self._internal_events: list[Event] = []  # writer thread only: events it raises itself
        self._next_reclaim_check = 0.0  # monotonic
        self._over_budget_alarmed = False

        self._cursor_lock = threading.Lock()  # DuckDB cursor creation from the root connection
        self._readers_done = threading.Condition(self._cursor_lock)  # close() waits for reads in flight
        self._readers = 0  # reads in flight (under _cursor_lock)
        self._closed = False
        self._close_lock = threading.Lock()
        self._close_error: StoreError | None = None

        self.damaged: dict[str, Any] | None = None  # set when a damaged file was moved aside at open
        self._pending_events: list[Event] = []  # alarms/gap records of the opening, committed once the writer runs
        self._mark_path = self._path.with_name(self._path.name + ".seq")
        self._root = self._open_or_move_aside(on_damage)
        self.compacted: compact.Compaction | None = None
        try:
            self.compacted = compact.compact_if_worthwhile(
                self._root, self._path, schema.STORAGE_VERSION, self._policy.compact_min_free_bytes
            )
        except (duckdb.Error, OSError) as e:  # the original file is untouched: go on with it
            log.warning("storefwd: compaction of %s skipped: %s", self._path, e)
        if self.compacted is not None:
            self._root = self._open_and_load()
        self._wcon = self._root.cursor()  # the writer's own connection; only the writer thread uses it
        self._writer = threading.Thread(target=self._run, name="storefwd-writer", daemon=True)
        self._writer.start()
        if self._pending_events:
            self.add_events(self._pending_events)
            self._pending_events = []

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        commit_interval_ms: int = 250,
        queue_rows: int = 1_000_000,
        disk_budget_mb: float = 1024.0,
        checkpoint_threshold_mb: float = schema.CHECKPOINT_THRESHOLD_MB,
        memory_limit_mb: int = schema.MEMORY_LIMIT_MB,
        **kwargs: Any,
    ) -> Store:
        """Same as the constructor (reads better at call sites: ``with Store.open(p) as store:``)."""
        return cls(
            path,
            commit_interval_ms=commit_interval_ms,
            queue_rows=queue_rows,
            disk_budget_mb=disk_budget_mb,
            checkpoint_threshold_mb=checkpoint_threshold_mb,
            memory_limit_mb=memory_limit_mb,
            **kwargs,
        )

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._path

    # ------------------------------------------------------------------------------------------- opening
    def _open_or_move_aside(self, on_damage: str) -> duckdb.DuckDBPyConnection:
        """Open the file and load its state. A damaged file (StoreCorrupt) is re-raised, or with
        ``on_damage="move_aside"`` renamed to ``<name>.damaged-<UTC time>`` (its WAL alongside) and replaced
        by a new file whose seqs start above ``seq_floor``; an alarm event (priority 0) says so."""
        try:
            return self._open_and_load()
        except StoreCorrupt as e:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._path.with_name(self._path.name + ".wal.opening"))
            if on_damage != "move_aside":
                raise
            error = str(e)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock_ns() / 1e9))
        mark = self._read_mark()
        if mark:  # the new file's seqs start above everything the damaged one committed
            self._seq_floor = max(self._seq_floor, *mark)
        moved: list[str] = []
        tag = f"{self._path.name}.damaged-{stamp}"
        n = 1
        while self._path.with_name(tag).exists():
            tag, n = f"{self._path.name}.damaged-{stamp}-{n}", n + 1
        for src, dst in ((self._path, tag), (self._path.with_name(self._path.name + ".wal"), tag + ".wal")):
            if src.exists():
                os.replace(src, src.with_name(dst))
                moved.append(str(src.with_name(dst)))
        fsync_path(self._path.parent, best_effort=True)
        log.error("storefwd: store %s is damaged (%s); moved aside to %s and started a new store",
                  self._path, error, ", ".join(moved))  # fmt: skip
        self.damaged = {"path": str(self._path), "moved_to": moved, "error": error}
        con = self._open_and_load()
        self._pending_events.append(Event(
            ts=self._clock_ns(), kind="alarm", priority=0, device="gateway", point="store",
            message=f"store file was damaged and moved aside to {moved[0] if moved else '?'}; a new store was "
                    "started (see docs/durability.md to recover its data)",
            data=json.dumps(self.damaged),
        ))  # fmt: skip
        return con

    def _open_and_load(self) -> duckdb.DuckDBPyConnection:
        """Open the file and load its state, checking it against the seq mark (see :meth:`_write_mark`).

        DuckDB may replay a damaged WAL only up to the damage and go on without a word. The WAL is copied
        before opening; if the file then holds fewer seqs than the mark says were committed, the copy is kept
        as ``<name>.wal.damaged-<UTC time>``, the lost seq range is recorded (alarm + gap record, priority 0)
        and new seqs continue above the mark so none is ever reused.
        """
        if not self._path.exists():
            self._create_atomically()
        wal = self._path.with_name(self._path.name + ".wal")
        wal_copy = self._path.with_name(self._path.name + ".wal.opening")
        has_wal = wal.exists() and wal.stat().st_size > 0
        if has_wal:
            shutil.copyfile(wal, wal_copy)
        mark = self._read_mark()
        con = self._connect()
        self._root = con
        try:
            self._load_state()
        except BaseException:
            con.close()
            raise
        lost_readings = mark[0] - self._last_seq if mark else 0
        lost_events = mark[1] - self._event_seq if mark else 0
        if has_wal and (lost_readings > 0 or lost_events > 0):
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock_ns() / 1e9))
            kept = self._path.with_name(f"{self._path.name}.wal.damaged-{stamp}")
            os.replace(wal_copy, kept)
            self._wal_loss(con, mark, lost_readings, lost_events, kept)  # type: ignore[arg-type]
        elif has_wal:
            os.remove(wal_copy)
        elif mark and (lost_readings > 0 or lost_events > 0):
            # the file holds less than was committed and there is no WAL to blame: never reuse those seqs
            self._wal_loss(con, mark, lost_readings, lost_events, None)
        return con

    def _create_atomically(self) -> None:
        """Create a new store file under a temporary name and rename it into place.

        DuckDB writes a new file's headers one after the other; a power cut in between leaves a file it cannot
        open (found by the power-cut harness), which would then be moved aside as damaged. Created as
        ``<name>.creating`` (schema and meta committed, checkpointed, fsynced), the file appears whole or not at
        all; a stale ``.creating`` of an earlier attempt is discarded.
        """
        tmp = self._path.with_name(self._path.name + ".creating")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        for p in (tmp, tmp.with_name(tmp.name + ".wal")):
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
        try:
            con = duckdb.connect(str(tmp), config=dict(self._duckdb_config))
        except duckdb.Error as e:
            raise StoreCorrupt(self._path, f"cannot create store file: {e}") from e
        self._root = con
        try:
            self._load_state()  # creates the tables and the meta rows (seqs from seq_floor)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        fsync_path(tmp)
        os.replace(tmp, self._path)
        fsync_path(self._path.parent, best_effort=True)

    def _wal_loss(self, con: duckdb.DuckDBPyConnection, mark: tuple[int, int], lost_readings: int,
                  lost_events: int, kept: Path | None) -> None:  # fmt: skip
        """Record committed transactions the file no longer holds and move the seqs above them."""
        first_r, first_e = self._last_seq + 1, self._event_seq + 1
        con.execute("BEGIN TRANSACTION")
        con.execute("UPDATE meta SET value = ? WHERE key = ?", [str(max(mark[0], self._last_seq)),
                                                                  schema.META_READING_SEQ])  # fmt: skip
        con.execute("UPDATE meta SET value = ? WHERE key = ?", [str(max(mark[1], self._event_seq)),
                                                                  schema.META_EVENT_SEQ])  # fmt: skip
        con.execute("COMMIT")
        self._last_seq = max(mark[0], self._last_seq)
        self._event_seq = max(mark[1], self._event_seq)
        if self._rows == 0:
            self._first_seq = self._last_seq + 1
        where = f"; the damaged WAL is kept as {kept}" if kept else ""
        data = {"action": "lost", "seq_from": first_r if lost_readings > 0 else 0,
                "seq_to": mark[0] if lost_readings > 0 else 0, "readings": max(0, lost_readings),
                "event_seq_from": first_e if lost_events > 0 else 0, "events": max(0, lost_events),
                "reason": "store WAL damaged: committed transactions could not be replayed",
                "kept": str(kept) if kept else ""}  # fmt: skip
        msg = (f"{max(0, lost_readings)} readings (seq {first_r}..{mark[0]}) and {max(0, lost_events)} events "
               f"committed before the restart are not in {self._path}{where}")  # fmt: skip
        log.error("storefwd: ALARM %s", msg)
        now = self._clock_ns()
        self._pending_events += [
            Event(ts=now, kind="alarm", priority=0, device="gateway", point="store", message=msg,
                  data=json.dumps(data)),
            Event(ts=now, kind="gap", priority=0, device="gateway", point="store", message=msg,
                  data=json.dumps(data)),
        ]  # fmt: skip
        self.damaged = {"path": str(self._path), "moved_to": [str(kept)] if kept else [], "error": msg}

    def _read_mark(self) -> tuple[int, int] | None:
        """The (reading seq, event seq) mark of the last commit, None when absent or unreadable."""
        try:
            text = self._mark_path.read_text()
            r, e = text.split()
            return int(r), int(e)
        except (OSError, ValueError):
            return None

    def _write_mark(self) -> None:
        """After each commit: write the committed seqs to ``<name>.seq`` (writer thread).

        Not fsynced, on purpose: written after DuckDB's COMMIT returned (WAL fsynced), so whatever of it reaches
        the disk never claims more than the file holds — unless the file lost committed data, which is what
        :meth:`_open_and_load` checks.
        """
        tmp = self._mark_path.with_name(self._mark_path.name + ".tmp")
        try:
            tmp.write_text(f"{self._last_seq} {self._event_seq}\n")
            os.replace(tmp, self._mark_path)
        except OSError as e:  # a full disk: the next commit writes it again
            log.debug("storefwd: cannot write %s: %s", self._mark_path, e)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        try:
            config: dict[str, str | bool | int | float | list[str]] = dict(self._duckdb_config)
            return duckdb.connect(str(self._path), config=config)
        except duckdb.Error as e:
            text = str(e)
            if "lock" in text.lower():
                raise StoreLocked(self._path, f"store file is in use by another process ({text})") from e
            raise StoreCorrupt(self._path, f"cannot open store file: {text}") from e

    def _load_state(self) -> None:
        """Create or check the schema and load the committed state. Runs in the constructor's thread."""
        con = self._root
        try:
            has_meta = con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                "AND schema_name = 'main' AND table_name = 'meta'"
            ).fetchone()
            version: int | None = None
            if has_meta and has_meta[0]:
                row = con.execute(
                    "SELECT value FROM meta WHERE key = ?", [schema.META_SCHEMA_VERSION]
                ).fetchone()
                version = int(row[0]) if row else None
            if version is not None and version > schema.SCHEMA_VERSION:
                raise StoreVersionError(
                    self._path,
                    f"schema version {version} is newer than this gateway supports ({schema.SCHEMA_VERSION})",
                )
            con.execute("BEGIN TRANSACTION")
            for ddl in schema.DDL:
                con.execute(ddl)
            now = str(time.time_ns())
            # a new file starts its seqs above seq_floor, so they never repeat those of a file it replaces
            floor = str(max(0, self._seq_floor))
            for key, value in (
                (schema.META_SCHEMA_VERSION, str(schema.SCHEMA_VERSION)),
                (schema.META_STORAGE_VERSION, schema.STORAGE_VERSION),
                (schema.META_READING_SEQ, floor),
                (schema.META_EVENT_SEQ, floor),
                (schema.META_CREATED_NS, now),
                (schema.META_DOWNSAMPLED_SEQ, floor),
                (schema.META_COMMIT_NO, "0"),
            ):
                con.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO NOTHING", [key, value])
            con.execute(
                "UPDATE meta SET value = ? WHERE key = ?", [str(schema.SCHEMA_VERSION), schema.META_SCHEMA_VERSION]
            )
            con.execute("COMMIT")

            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            r = con.execute("SELECT count(*), min(seq), max(seq) FROM readings").fetchone()
            e = con.execute("SELECT count(*), max(seq) FROM events").fetchone()
            qr = con.execute("SELECT max(seq) FROM quarantine").fetchone()
            points = con.execute("SELECT id, name, device, point, unit FROM points ORDER BY id").fetchall()
            outbox = con.execute("SELECT sink, acked_seq FROM outbox").fetchall()
            holes = con.execute(
                "SELECT seq_lo, seq_hi, rows_before - rows_after FROM reclaim_log WHERE action = 'downsampled' "
                "ORDER BY seq_lo"
            ).fetchall()
            counts = con.execute(
                "SELECT action, sum(rows_before - rows_after), sum(events), count(*) FROM reclaim_log GROUP BY action"
            ).fetchall()
            gaps = con.execute("SELECT count(*) FROM events WHERE kind = 'gap'").fetchall()[0]
        except StoreError:
            raise
        except duckdb.Error as exc:
            raise StoreCorrupt(self._path, f"cannot read store file: {exc}") from exc
        assert r is not None and e is not None
        self._rows = int(r[0])
        self._last_seq = max(int(r[2] or 0), int(meta.get(schema.META_READING_SEQ, "0")))
        self._first_seq = int(r[1]) if r[1] is not None else self._last_seq + 1
        self._events = int(e[0])
        self._event_seq = max(int(e[1] or 0), int(meta.get(schema.META_EVENT_SEQ, "0")))
        self._quarantine_seq = self._quarantined = int(qr[0] or 0) if qr else 0
        for pid, name, device, point, unit in points:
            self._points_by_name[name] = int(pid)
            self._infos[int(pid)] = PointInfo(name=name, device=device, point=point, unit=unit)
        self._next_point_id = max(self._infos, default=0) + 1
        self._watermarks = {str(s): int(a) for s, a in outbox}
        self._ds_seq = int(meta.get(schema.META_DOWNSAMPLED_SEQ, "0"))
        self._commit_no = int(meta.get(schema.META_COMMIT_NO, "0"))
        self._holes = [(int(a), int(b), int(c)) for a, b, c in holes if int(b) >= self._first_seq]
        for action, rows, events, _steps in counts:
            key = "downsampled_rows" if action == "downsampled" else "evicted_rows"
            self._reclaim[key] = int(rows or 0)
            if action == "evicted":
                self._reclaim["evicted_events"] = int(events or 0)
        self._reclaim["reclaim_steps"] = sum(int(c[3]) for c in counts)
        self._reclaim["gap_records"] = int(gaps[0]) if gaps else 0

    # ------------------------------------------------------------------------------------------- writes
    def offer(self, batch: ReadingBatch) -> bool:
        """Queue a batch for the writer without blocking. False when the queue is full (retry later).

        Any thread. The batch is accepted whole or not at all; its arrays must not be mutated afterwards.
        """
        n = _check_batch(batch)
        with self._lock:
            if self._closing:
                raise StoreClosed(f"store {self._path} is closed")
            if n == 0:
                return True
            if self._queued_rows and self._queued_rows + n > self._queue_rows:
                self._rejected_offers += 1
                return False
            self._enqueue_locked(batch, n)
        return True

    def put(self, batch: ReadingBatch, timeout: float | None = None) -> None:
        """Queue a batch, waiting up to ``timeout`` seconds (None: forever) for space; StoreFull on timeout.

        Any thread except an event loop's (it blocks).
        """
        n = _check_batch(batch)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if self._closing:
                    raise StoreClosed(f"store {self._path} is closed")
                if n == 0:
                    return
                if not self._queued_rows or self._queued_rows + n <= self._queue_rows:
                    self._enqueue_locked(batch, n)
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise StoreFull(f"store queue full ({self._queued_rows} rows) for {timeout} s")
                self._space_free.wait(remaining)

    def _enqueue_locked(self, batch: ReadingBatch, n: int) -> None:
        was_empty = not self._queue
        before = self._queued_rows
        self._queue.append(batch)
        self._queued_rows += n
        if was_empty or (before < self._high_water <= self._queued_rows):
            self._work_ready.notify()

    def _command(self, cmd: _Command) -> None:
        with self._lock:
            if self._closing:
                raise StoreClosed(f"store {self._path} is closed")
            self._queue.append(cmd)
            self._urgent = True
            self._work_ready.notify()

    def register_points(self, points: Sequence[PointInfo]) -> npt.NDArray[np.int32]:
        """Return the int32 id of each point, in input order, registering unknown names durably.

        Ids are stable across reopen (the name is the identity). A known name whose device/point/unit changed
        is updated. Blocks until committed when anything is new or changed. Any thread.
        """
        pts = list(points)
        for p in pts:
            if not isinstance(p, PointInfo):
                raise TypeError(f"register_points() takes PointInfo objects, not {type(p).__name__}")
        self._check_open()
        with self._state_lock:
            ids = [self._points_by_name.get(p.name) for p in pts]
            if all(i is not None and self._infos[i] == p for i, p in zip(ids, pts, strict=True)):
                return np.array(ids, dtype=ID_DTYPE)
        cmd = _Register(pts)
        self._command(cmd)
        return self._wait(cmd.future)

    def ack(self, sink: str, seq: int) -> None:
        """Record that ``sink`` has durably received every reading up to ``seq``. Durable when it returns.

        A lower ``seq`` than the current watermark is ignored (watermarks never move backwards). A ``seq``
        beyond the last committed reading is a ValueError. Any thread (blocks until committed).
        """
        if not isinstance(sink, str) or not sink:
            raise ValueError("sink must be a non-empty string")
        self._check_open()
        seq = int(seq)
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        with self._state_lock:
            if seq > self._last_seq:
                raise ValueError(f"cannot ack seq {seq}: last committed seq is {self._last_seq}")
            if seq <= self._watermarks.get(sink, 0):
                return
        cmd = _Ack(sink, seq)
        self._command(cmd)
        self._wait(cmd.future)

    def ack_events(self, sink: str, seq: int) -> None:
        """Record that ``sink`` has durably received every event up to ``seq``; like :meth:`ack`, but checked
        against the last committed *event* seq. Kept in ``outbox`` under ``f"{sink}#events"``. Any thread."""
        if not isinstance(sink, str) or not sink:
            raise ValueError("sink must be a non-empty string")
        self._check_open()
        seq, key = int(seq), f"{sink}#events"
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        with self._state_lock:
            if seq > self._event_seq:
                raise ValueError(f"cannot ack event seq {seq}: last committed event seq is {self._event_seq}")
            if seq <= self._watermarks.get(key, 0):
                return
        cmd = _Ack(key, seq)
        self._command(cmd)
        self._wait(cmd.future)

    def event_watermark(self, sink: str) -> int:
        """Last acked event seq of ``sink`` (0 if it never acked one). Any thread, no I/O."""
        with self._state_lock:
            return self._watermarks.get(f"{sink}#events", 0)

    def add_event(self, event: Event) -> None:
        """Store one event durably (its priority class is kept). Blocks until committed. Any thread."""
        self.add_events([event])

    def add_events(self, events: Sequence[Event]) -> int:
        """Store several events in one transaction; returns the seq of the last one (0 for none)."""
        evs = list(events)
        for ev in evs:
            if not isinstance(ev, Event):
                raise TypeError(f"add_events() takes Event objects, not {type(ev).__name__}")
        if not evs:
            with self._state_lock:
                return self._event_seq
        cmd = _AddEvents(evs)
        self._command(cmd)
        return self._wait(cmd.future)

    def add_quarantine(self, records: Sequence[QuarantineRecord]) -> int:
        """Store refused input records (with their raw payload) in one transaction; returns the seq of the last
        one (0 for none). Blocks until committed: call it off the event loop. Any thread."""
        recs = list(records)
        for r in recs:
            if not isinstance(r, QuarantineRecord):
                raise TypeError(f"add_quarantine() takes QuarantineRecord objects, not {type(r).__name__}")
        if not recs:
            with self._state_lock:
                return self._quarantine_seq
        cmd = _AddQuarantine(recs)
        self._command(cmd)
        return self._wait(cmd.future)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait until everything queued before the call is committed; return the last committed reading seq.

        Raises StoreTimeout after ``timeout`` seconds (the rows stay queued) and StoreWriteError when the
        transaction holding them failed (they stay queued and are retried). Any thread (blocks).
        """
        cmd = _Flush()
        self._command(cmd)
        return self._wait(cmd.future, timeout)

    def _wait(self, future: Future[Any], timeout: float | None = None) -> Any:
        try:
            return future.result(timeout)
        except TimeoutError as e:
            raise StoreTimeout(f"store writer did not commit within {timeout} s") from e

    # ------------------------------------------------------------------------------------------- close
    def close(self) -> None:
        """Drain the queue, commit, stop the writer, close DuckDB (checkpointing the WAL). Idempotent.

        Raises StoreWriteError when the final commit failed (the rows still queued are then lost).
        """
        with self._close_lock:
            if self._closed:
                return
            with self._lock:
                self._closing = True
                self._queue.append(_SENTINEL)
                self._urgent = True
                self._work_ready.notify()
                self._space_free.notify_all()
            self._writer.join()
            with self._cursor_lock:
                self._closed = True  # no new reads; the ones in flight finish first (a panel query, an upload)
                self._readers_done.wait_for(lambda: self._readers == 0, timeout=CLOSE_READERS_WAIT_S)
                with contextlib.suppress(duckdb.Error):
                    self._wcon.close()
                self._root.close()
        if self._close_error is not None:
            raise self._close_error

    @property
    def closed(self) -> bool:
        return self._closed

    def writer_alive(self) -> bool:
        """Whether the writer thread runs (it ends only at close or on a bug in it). Any thread, no I/O."""
        return self._writer.is_alive()

    # ------------------------------------------------------------------------------------------- writer
    def _run(self) -> None:
        """The writer thread: the only code that writes to DuckDB."""
        next_commit_at = 0.0  # monotonic time before which readings alone do not trigger a commit
        retry_at = 0.0  # after a failed write: monotonic time before which nothing is tried again
        stop = False
        failed_retry = 0
        try:
            while not stop:
                with self._lock:
                    while not self._queue:
                        self._work_ready.wait()
                    while True:
                        now = time.monotonic()
                        if now < retry_at:
                            self._work_ready.wait(retry_at - now)
                        elif self._urgent or self._queued_rows >= self._high_water or now >= next_commit_at:
                            break
                        else:
                            self._work_ready.wait(next_commit_at - now)
                    items = list(self._queue)
                    self._queue.clear()
                    self._urgent = False
                work = _Work()
                forced: list[_Reclaim] = []
                for item in items:
                    if item is _SENTINEL:
                        stop = True
                    elif isinstance(item, ReadingBatch):
                        work.batches.append(item)
                        work.rows += len(item)
                    elif isinstance(item, _Reclaim):
                        forced.append(item)
                    else:
                        work.commands.append(item)  # type: ignore[arg-type]
                if self._internal_events:
                    work.commands.append(_AddEvents(self._internal_events))
                    self._internal_events = []
                next_commit_at = time.monotonic() + self._interval_s
                ok = self._write(work)
                for rc in forced:
                    usage = self._measure()
                    rc.future.set_result(self._reclaim_step(usage) if usage is not None else None)
                with self._lock:
                    if ok:  # (_publish released the rows' queue space before waking the callers)
                        failed_retry = 0
                    else:
                        failed_retry += 1
                        if stop and failed_retry > 3:
                            self._close_error = StoreWriteError(
                                f"final commit to {self._path} failed, {work.rows} readings lost: "
                                f"{self._last_error}"
                            )
                            self._queued_rows -= work.rows
                        else:
                            # readings stay queued (front, in order) and count against the bound
                            self._queue.extendleft(reversed(work.batches))
                            if stop:
                                self._queue.append(_SENTINEL)
                                stop = False
                                self._urgent = True
                            pause = min(max(self._interval_s, 0.05) * failed_retry, _MAX_RETRY_PAUSE_S)
                            retry_at = time.monotonic() + pause
                if ok:
                    self._write_recovered()
                    if not stop:
                        self._maybe_reclaim()
        except BaseException as e:  # pragma: no cover - a bug in the writer; never leave callers hanging
            log.exception("storefwd writer thread crashed")
            self._close_error = StoreWriteError(f"writer thread of {self._path} crashed: {e!r}")
            with self._lock:
                self._closing = True
                pending = [i for i in self._queue if not isinstance(i, ReadingBatch) and i is not _SENTINEL]
                self._queue.clear()
                self._space_free.notify_all()
            for cmd in pending:
                cmd.future.set_exception(self._close_error)  # type: ignore[attr-defined]

    def _write(self, work: _Work) -> bool:
        """Write one unit of work in one transaction; on failure retry each part alone.

        Returns False when the readings could not be committed (the caller re-queues them).
        """
        if not work.rows and all(isinstance(c, _Flush) for c in work.commands):
            last = self.last_seq()  # nothing to write: everything before these flushes is committed
            for cmd in work.commands:
                if isinstance(cmd, _Flush):
                    cmd.future.set_result(last)
            return True
        err = self._transaction(work)
        if err is None:
            return True
        if (work.rows and work.commands) or len(work.commands) > 1:
            # isolate the failure: readings alone, then each command alone
            readings_ok = True
            if work.rows:
                readings_ok = self._transaction(_Work(batches=work.batches, rows=work.rows)) is None
            for cmd in work.commands:
                if isinstance(cmd, _Flush) and not readings_ok:
                    cmd.future.set_exception(
                        StoreWriteError(f"readings not committed to {self._path}: {self._last_error}")
                    )
                    continue
                cerr = self._transaction(_Work(commands=[cmd]))
                if cerr is not None:
                    cmd.future.set_exception(cerr)
            return readings_ok
        for cmd in work.commands:
            cmd.future.set_exception(err)
        return not work.rows

    def _transaction(self, work: _Work) -> StoreWriteError | None:
        """Prepare, write and commit ``work``; publish it and resolve its futures. Writer thread only.

        A fatal DuckDB error (the database is invalidated, e.g. by ENOSPC during a checkpoint) leaves it
        unknown whether COMMIT reached the WAL: the writer then reopens the file (waiting for space as long as
        it takes, unless closing) and reads ``meta.commit_no`` to tell, so nothing is written twice or lost.
        """
        self._prepare(work)
        con = self._wcon
        try:
            if self._invalid:
                raise _Invalidated()
            con.execute("BEGIN TRANSACTION")
            self._execute(work)
            con.execute("COMMIT")
        except (duckdb.Error, _Invalidated) as e:
            fatal = isinstance(e, _Invalidated | duckdb.FatalException) or "invalidated" in str(e)
            if not fatal:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
            if not isinstance(e, _Invalidated):
                self._note_write_error(e, fatal)
            if fatal and self._recover() and self._committed_no_or_zero() == work.commit_no:
                self._publish(work)  # COMMIT had reached the WAL before the failure
                return None
            err = StoreWriteError(f"write to {self._path} failed: {self._last_error}")
            err.__cause__ = e if isinstance(e, duckdb.Error) else None
            return err
        self._publish(work)
        return None

    def _note_write_error(self, e: duckdb.Error, fatal: bool) -> None:
        text = str(e)
        full = "no space left" in text.lower() or "disk is full" in text.lower()
        with self._state_lock:
            self._write_errors += 1
            self._last_error = text
            if fatal:
                self._invalid = True
            if full and not self._disk_full_since_ns:
                self._disk_full_since_ns = self._clock_ns()
                self._disk_full_events += 1
        if full:
            log.error("storefwd: ALARM disk full writing %s: %s (data stays queued; retrying)", self._path, text)
        else:
            log.error("storefwd: write to %s failed: %s", self._path, e)

    def _recover(self) -> bool:
        """Reopen an invalidated database (writer thread). Retries with a growing pause while the file cannot
        be opened (no space to replay the WAL); gives up only when the store is closing. True when reopened."""
        pause = 0.05
        while True:
            with self._cursor_lock:
                with contextlib.suppress(duckdb.Error):
                    self._wcon.close()
                with contextlib.suppress(duckdb.Error):
                    self._root.close()
                try:
                    self._root = self._connect()
                    self._wcon = self._root.cursor()
                    self._wcon.execute("SELECT 1").fetchall()
                except (StoreError, duckdb.Error) as e:
                    log.warning("storefwd: cannot reopen %s yet: %s", self._path, e)
                else:
                    with self._state_lock:
                        self._invalid = False
                    log.warning("storefwd: reopened %s after a fatal write error", self._path)
                    return True
            with self._lock:
                if self._closing:
                    return False
                self._work_ready.wait(pause)  # close() notifies: do not sleep through it
            pause = min(pause * 2, _MAX_RECOVER_PAUSE_S)

    def _committed_no_or_zero(self) -> int:
        try:
            rows = self._wcon.execute("SELECT value FROM meta WHERE key = ?", [schema.META_COMMIT_NO]).fetchall()
            row = rows[0] if rows else None  # (fetchall: an unfinished result keeps a transaction open)
        except duckdb.Error:
            return 0
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------------------------------- disk budget
    def _maybe_reclaim(self) -> None:
        """Measure usage every ``check_interval_s``; past the high-water mark reclaim (oldest first) until
        under the low-water mark. Writer thread only; a few steps per call so ingest is never starved."""
        now = time.monotonic()
        if now < self._next_reclaim_check:
            return
        self._next_reclaim_check = now + self._policy.check_interval_s
        usage = self._measure()
        if usage is None or usage.used_bytes <= usage.budget * self._policy.high_water:
            return
        target = usage.budget * self._policy.low_water
        for _ in range(_RECLAIM_STEPS_PER_CALL):
            with self._lock:
                if self._closing or self._queued_rows >= self._high_water:
                    break
            done = self._reclaim_step(usage)
            if done is None:
                if not self._over_budget_alarmed:
                    self._over_budget_alarmed = True
                    msg = (f"store uses {usage.used_bytes} bytes of a {usage.budget}-byte budget and holds nothing "
                           "more that may be evicted (events of priority 0/1 are kept)")  # fmt: skip
                    log.error("storefwd: ALARM %s", msg)
                    self._internal_events.append(
                        Event(ts=self._clock_ns(), kind="alarm", priority=1, device="gateway", point="store",
                              message=msg)
                    )  # fmt: skip
                return
            try:
                self._wcon.execute("CHECKPOINT")  # freed blocks become reusable only after a checkpoint
            except duckdb.Error as e:
                log.warning("storefwd: checkpoint after reclaiming failed: %s", e)
            usage = self._measure()
            if usage is None or usage.used_bytes <= target:
                self._over_budget_alarmed = False
                return
        self._next_reclaim_check = now  # still over: look again after the next commit

    def _measure(self) -> retention.Usage | None:
        try:
            usage = retention.measure(self._wcon, str(self._path), self._policy, self._statvfs)
        except (duckdb.Error, OSError) as e:
            log.warning("storefwd: cannot measure disk usage of %s: %s", self._path, e)
            return None
        with self._state_lock:
            self._usage = usage
        return usage

    def _reclaim_step(self, usage: retention.Usage) -> dict[str, Any] | None:
        """One reclaim transaction: downsample the oldest old raw readings, else evict the oldest readings
        (or, with no readings left, the oldest low-priority events). Returns the gap record's data; None when
        nothing may be reclaimed."""
        with self._state_lock:
            first, last, ds = self._first_seq, self._last_seq, self._ds_seq
        chunk = self._policy.chunk_rows
        cutoff = self._clock_ns() - int(self._policy.downsample_min_age_s * 1e9)
        lo = max(ds, first - 1)
        hi: int | None = None
        if lo < last:
            try:
                hi = retention.downsample_end(self._wcon, lo, last, chunk, cutoff)
            except duckdb.Error as e:
                log.warning("storefwd: reclaim query failed: %s", e)
                return None
        if hi is not None:
            action, rlo, rhi = "downsampled", lo, hi
        elif first <= last:
            action, rlo, rhi = "evicted", first - 1, min(first - 1 + chunk, last)
        else:
            action, rlo, rhi = "evicted-events", 0, 0
        work = _Work(reclaim=lambda con, w: self._reclaim_sql(con, w, action, rlo, rhi, usage))
        err = self._transaction(work)
        if err is not None or work.after_publish is None or not work.events:
            return None
        data: dict[str, Any] = json.loads(work.events[-1][1].data)
        return data

    def _reclaim_sql(self, con: duckdb.DuckDBPyConnection, work: _Work, action: str, lo: int, hi: int,
                     usage: retention.Usage) -> list[Event]:  # fmt: skip
        """The SQL of one reclaim step, inside its transaction; returns the gap record to store with it."""
        now = self._clock_ns()
        if action == "downsampled":
            res = retention.downsample(con, lo, hi, lambda ids: self._avg_points(con, work, ids))
            for sink, wm in self.watermarks().items():
                if "#" not in sink:  # reading watermarks only ("<sink>#events" counts events)
                    self._count_partial_hole(con, work, sink, wm, [(lo, hi, 0)])
        elif action == "evicted":
            res = retention.evict(con, lo, hi)
        else:
            n = retention.evict_events(con, self._policy.chunk_rows // 10)
            if n == 0:
                return []
            res = retention.ChunkResult("evicted", 0, 0, 0, 0, 0, 0, 0, n)
        removed = res.rows_before - res.rows_after
        con.execute(
            "INSERT INTO reclaim_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [res.action, res.lo, res.hi, res.rows_before, res.rows_after, res.ts_from, res.ts_to,
             res.events_evicted, now],
        )  # fmt: skip
        new_ds = max(self._ds_seq, res.hi)
        con.execute("UPDATE meta SET value = ? WHERE key = ?", [str(new_ds), schema.META_DOWNSAMPLED_SEQ])
        next_first: int | None = None
        if res.action == "evicted" and res.hi:
            row = con.execute("SELECT min(seq) FROM readings").fetchone()
            next_first = int(row[0]) if row and row[0] is not None else None

        def publish() -> None:  # under the state lock, after COMMIT
            self._oldest_cache.clear()  # the oldest unsent reading of a sink may be gone
            self._ds_seq = new_ds
            self._rows -= removed
            self._events -= res.events_evicted
            self._reclaim["reclaim_steps"] += 1
            self._reclaim["gap_records"] += 1
            self._reclaim["evicted_events"] += res.events_evicted
            if res.action == "downsampled":
                self._reclaim["downsampled_rows"] += removed
                self._holes.append((res.lo, res.hi, removed))
            else:
                self._reclaim["evicted_rows"] += removed
                if res.hi:
                    self._first_seq = next_first if next_first is not None else self._last_seq + 1
                    self._holes = [h for h in self._holes if h[1] > res.hi]

        work.after_publish = publish
        sinks = self._sinks if self._sinks is not None else tuple(w for w in self._watermarks if "#" not in w)
        unacked = sorted(s for s in sinks if self._watermarks.get(s, 0) < res.hi) if res.hi else []
        what = (f"{removed} readings downsampled to per-minute min/max/avg/last" if res.action == "downsampled"
                else f"{removed} readings and {res.events_evicted} low-priority events evicted")  # fmt: skip
        span = f"seq {res.lo + 1}..{res.hi}, {_iso(res.ts_from)}..{_iso(res.ts_to)}" if res.hi else "events only"
        reason = f"disk budget: {usage.used_bytes} of {usage.budget} bytes used"
        cloud = (f"; not yet synced to {', '.join(unacked)}" if unacked
                 else "; already synced to every sink" if sinks else "; no sink is configured")  # fmt: skip
        data = {
            "action": res.action, "seq_from": res.lo + 1 if res.hi else 0, "seq_to": res.hi,
            "ts_from": res.ts_from, "ts_to": res.ts_to, "rows_before": res.rows_before,
            "rows_after": res.rows_after, "points": res.points, "events_evicted": res.events_evicted,
            "reason": reason, "used_bytes": usage.used_bytes, "budget_bytes": usage.budget,
            "unacked_sinks": unacked,
        }  # fmt: skip
        log.warning("storefwd: %s (%s): %s%s", what, span, reason, cloud)
        return [Event(ts=now, kind="gap", priority=0, device="gateway", point="store",
                      message=f"{what} ({span}): {reason}{cloud}", data=json.dumps(data))]  # fmt: skip

    def _avg_points(self, con: duckdb.DuckDBPyConnection, work: _Work, raw_ids: list[int]) -> dict[int, int]:
        """Derived average point id of each raw point id; registers missing ones in the current transaction."""
        out: dict[int, int] = {}
        new: list[tuple[int, PointInfo]] = []
        with self._state_lock:
            infos, names, nxt = self._infos, self._points_by_name, self._next_point_id
            for rid in raw_ids:
                info = infos.get(rid)
                if info is None:
                    continue
                name = info.name + retention.AVG_SUFFIX
                pid = names.get(name)
                if pid is None:
                    pid, nxt = nxt, nxt + 1
                    names_new = PointInfo(name, info.device, info.point + retention.AVG_SUFFIX, info.unit)
                    new.append((pid, names_new))
                out[rid] = pid
        if new:
            con.executemany(  # one row per new derived point (few, once per point)
                "INSERT INTO points VALUES (?, ?, ?, ?, ?)",
                [(pid, p.name, p.device, p.point, p.unit) for pid, p in new],
            )
            work.reclaim_points.extend(new)
        return out

    def _write_recovered(self) -> None:
        """After a successful commit: end a disk-full episode with an alarm event saying how long it lasted."""
        with self._state_lock:
            since = self._disk_full_since_ns
            self._disk_full_since_ns = 0
        if since:
            now = self._clock_ns()
            secs = (now - since) / 1e9
            log.warning("storefwd: disk space is back for %s after %.1f s; nothing was lost", self._path, secs)
            ev = Event(ts=now, kind="alarm", priority=1, device="gateway", point="store",
                       message=f"store could not write for {secs:.1f} s (disk full); readings were held in the "
                               "queue and are now committed",
                       data=json.dumps({"since_ns": since, "until_ns": now, "path": str(self._path)}))  # fmt: skip
            if self._transaction(_Work(commands=[_AddEvents([ev])])) is not None:
                self._internal_events.append(ev)  # with the next commit

    def _prepare(self, work: _Work) -> None:
        """Assign seqs and point ids from the committed state (no SQL). Writer thread only."""
        registering = any(isinstance(c, _Register) for c in work.commands)
        with self._state_lock:
            work.first_seq = self._last_seq + 1
            work.commit_no = self._commit_no + 1
            next_event = self._event_seq + 1
            next_point = self._next_point_id
            # private copies only when registering: the point maps may hold many thousand entries
            names = dict(self._points_by_name) if registering else self._points_by_name
            infos = dict(self._infos) if registering else self._infos
        work.new_points, work.changed_points, work.register_results = [], [], []
        work.acks, work.events, work.event_results = {}, [], []
        work.quarantine, work.quarantine_results = [], []
        with self._state_lock:
            next_q = self._quarantine_seq + 1
        for cmd in work.commands:
            if isinstance(cmd, _Register):
                ids = np.empty(len(cmd.points), dtype=ID_DTYPE)
                for i, p in enumerate(cmd.points):
                    pid = names.get(p.name)
                    if pid is None:
                        pid = next_point
                        next_point += 1
                        names[p.name] = pid
                        work.new_points.append((pid, p))
                    elif infos[pid] != p:
                        work.changed_points.append((pid, p))
                    infos[pid] = p
                    ids[i] = pid
                work.register_results.append(ids)
            elif isinstance(cmd, _Ack):
                work.acks[cmd.sink] = max(work.acks.get(cmd.sink, 0), cmd.seq)
            elif isinstance(cmd, _AddEvents):
                for ev in cmd.events:
                    work.events.append((next_event, ev))
                    next_event += 1
                work.event_results.append(next_event - 1)
            elif isinstance(cmd, _AddQuarantine):
                for rec in cmd.records:
                    work.quarantine.append((next_q, rec))
                    next_q += 1
                work.quarantine_results.append(next_q - 1)

    def _execute(self, work: _Work) -> None:
        """Run the SQL of one transaction (inside BEGIN/COMMIT). Writer thread only."""
        con = self._wcon
        if work.reclaim is not None:
            base = work.events[-1][0] if work.events else self.last_event_seq()
            for i, ev in enumerate(work.reclaim(con, work), start=1):
                work.events.append((base + i, ev))
        con.execute("UPDATE meta SET value = ? WHERE key = ?", [str(work.commit_no), schema.META_COMMIT_NO])
        if work.rows:
            n = work.rows
            seq = np.arange(work.first_seq, work.first_seq + n, dtype=np.int64)
            batches, offset = [], 0
            for b in work.batches:
                k = len(b)
                batches.append(
                    pa.record_batch(
                        [
                            pa.array(seq[offset : offset + k]),
                            pa.array(b.ts),
                            pa.array(b.point_id),
                            pa.array(b.value),
                            pa.array(b.quality),
                        ],
                        schema=READINGS_SCHEMA,
                    )
                )
                offset += k
            tbl = pa.Table.from_batches(batches, schema=READINGS_SCHEMA)
            con.register(_READINGS_VIEW, tbl)
            try:
                con.execute(f"INSERT INTO readings SELECT * FROM {_READINGS_VIEW}")
            finally:  # (an error here would hide the one that aborted the transaction)
                with contextlib.suppress(duckdb.Error):
                    con.unregister(_READINGS_VIEW)
            con.execute(
                "UPDATE meta SET value = ? WHERE key = ?",
                [str(work.first_seq + n - 1), schema.META_READING_SEQ],
            )
        if work.new_points:
            pts = pa.table(
                {
                    "id": pa.array([i for i, _ in work.new_points], pa.int32()),
                    "name": [p.name for _, p in work.new_points],
                    "device": [p.device for _, p in work.new_points],
                    "point": [p.point for _, p in work.new_points],
                    "unit": [p.unit for _, p in work.new_points],
                }
            )
            con.register(_POINTS_VIEW, pts)
            try:
                con.execute(f"INSERT INTO points SELECT id, name, device, point, unit FROM {_POINTS_VIEW}")
            finally:  # (an error here would hide the one that aborted the transaction)
                with contextlib.suppress(duckdb.Error):
                    con.unregister(_POINTS_VIEW)
        for pid, p in work.changed_points:
            con.execute(
                "UPDATE points SET device = ?, point = ?, unit = ? WHERE id = ?",
                [p.device, p.point, p.unit, pid],
            )
        now = time.time_ns()
        for sink, acked in work.acks.items():
            con.execute(
                "INSERT INTO outbox VALUES (?, ?, ?) ON CONFLICT (sink) DO UPDATE SET "
                "acked_seq = greatest(outbox.acked_seq, excluded.acked_seq), "
                "updated_ns = excluded.updated_ns",
                [sink, acked, now],
            )
            self._count_partial_hole(con, work, sink, acked)
            # the oldest reading the sink still has to send (sink_stats' oldest age)
            work.oldest[sink] = (acked, _next_ts(con, acked))
        if work.events:
            evs = pa.table(
                {
                    "seq": pa.array([s for s, _ in work.events], pa.int64()),
                    "ts": pa.array([e.ts for _, e in work.events], pa.int64()),
                    "priority": pa.array([e.priority for _, e in work.events], pa.int16()),
                    "kind": [e.kind for _, e in work.events],
                    "device": [e.device for _, e in work.events],
                    "point": [e.point for _, e in work.events],
                    "message": [e.message for _, e in work.events],
                    "data": [e.data for _, e in work.events],
                }
            )
            con.register(_EVENTS_VIEW, evs)
            try:
                con.execute(f"INSERT INTO events SELECT * FROM {_EVENTS_VIEW}")
            finally:  # (an error here would hide the one that aborted the transaction)
                with contextlib.suppress(duckdb.Error):
                    con.unregister(_EVENTS_VIEW)
            con.execute(
                "UPDATE meta SET value = ? WHERE key = ?", [str(work.events[-1][0]), schema.META_EVENT_SEQ]
            )
        if work.quarantine:
            self._insert_quarantine(con, work)

    def _insert_quarantine(self, con: duckdb.DuckDBPyConnection, work: _Work) -> None:
        """Insert the transaction's quarantine records; keep only the newest QUARANTINE_MAX_ROWS."""
        q = work.quarantine
        tbl = pa.table(
            {
                "seq": pa.array([s for s, _ in q], pa.int64()),
                "ts": pa.array([r.ts for _, r in q], pa.int64()),
                "device": pa.array([r.device for _, r in q], pa.string()),
                "topic": pa.array([r.topic for _, r in q], pa.string()),
                "reason": pa.array([r.reason for _, r in q], pa.string()),
                "detail": pa.array([r.detail for _, r in q], pa.string()),
                "payload": pa.array([bytes(r.payload) for _, r in q], pa.binary()),
            },
            schema=QUARANTINE_SCHEMA,
        )
        con.register(_QUARANTINE_VIEW, tbl)
        try:
            con.execute(f"INSERT INTO quarantine SELECT * FROM {_QUARANTINE_VIEW}")
        finally:  # (an error here would hide the one that aborted the transaction)
            with contextlib.suppress(duckdb.Error):
                con.unregister(_QUARANTINE_VIEW)
        last = q[-1][0]
        if last > schema.QUARANTINE_MAX_ROWS:
            con.execute("DELETE FROM quarantine WHERE seq <= ?", [last - schema.QUARANTINE_MAX_ROWS])

    def _publish(self, work: _Work) -> None:
        """After COMMIT: update the in-memory committed state, then wake the callers. Writer thread only."""
        with self._state_lock:
            self._commit_no = work.commit_no
            self._partial_holes.update(work.partial_holes)
            self._oldest_cache.update(work.oldest)
            for pid, p in work.reclaim_points:
                self._points_by_name[p.name] = pid
                self._infos[pid] = p
                self._next_point_id = max(self._next_point_id, pid + 1)
            if work.after_publish is not None:
                work.after_publish()
            if work.rows:
                self._last_seq = work.first_seq + work.rows - 1
                self._rows += work.rows
            for pid, p in work.new_points:
                self._points_by_name[p.name] = pid
                self._infos[pid] = p
                self._next_point_id = max(self._next_point_id, pid + 1)
            for pid, p in work.changed_points:
                self._infos[pid] = p
            for sink, seq in work.acks.items():
                self._watermarks[sink] = max(self._watermarks.get(sink, 0), seq)
            if work.events:
                self._event_seq = work.events[-1][0]
                self._events += len(work.events)
            if work.quarantine:
                self._quarantine_seq = work.quarantine[-1][0]
                self._quarantined += len(work.quarantine)
            self._commits += 1
            self._last_commit_ns = time.time_ns()
            last_seq = self._last_seq
        self._write_mark()
        if work.rows:  # committed rows leave the queue bound before anyone is told they are committed
            with self._lock:
                self._queued_rows -= work.rows
                self._space_free.notify_all()
        reg = iter(work.register_results)
        evr = iter(work.event_results)
        qrr = iter(work.quarantine_results)
        for cmd in work.commands:
            if isinstance(cmd, _Register):
                cmd.future.set_result(next(reg))
            elif isinstance(cmd, _AddEvents):
                cmd.future.set_result(next(evr))
            elif isinstance(cmd, _AddQuarantine):
                cmd.future.set_result(next(qrr))
            elif isinstance(cmd, _Ack):
                cmd.future.set_result(None)
            elif isinstance(cmd, _Flush):
                cmd.future.set_result(last_seq)

    # ------------------------------------------------------------------------------------------- reads
    def _check_open(self) -> None:
        if self._closing:
            raise StoreClosed(f"store {self._path} is closed")

    @contextlib.contextmanager
    def _reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A fresh DuckDB cursor for one read; any thread. Sees only committed data."""
        with self._cursor_lock:
            if self._closed:
                raise StoreClosed(f"store {self._path} is closed")
            cur = self._root.cursor()
            self._readers += 1
        try:
            yield cur
        except duckdb.Error as e:
            if self._closed:
                raise StoreClosed(f"store {self._path} closed during a read") from e
            raise StoreError(f"read from {self._path} failed: {e}") from e
        finally:
            with contextlib.suppress(duckdb.Error):
                cur.close()
            with self._cursor_lock:
                self._readers -= 1
                self._readers_done.notify_all()

    def point_infos(self) -> dict[int, PointInfo]:
        """id -> PointInfo of every registered point (a copy). Any thread, no I/O."""
        with self._state_lock:
            return dict(self._infos)

    def point_ids(self) -> dict[str, int]:
        """name -> id of every registered point (a copy). Any thread, no I/O."""
        with self._state_lock:
            return dict(self._points_by_name)

    def last_seq(self) -> int:
        """Highest committed reading seq (0 when nothing was ever stored). Any thread, no I/O."""
        with self._state_lock:
            return self._last_seq

    def last_event_seq(self) -> int:
        """Highest committed event seq (0 when none). Any thread, no I/O."""
        with self._state_lock:
            return self._event_seq

    def watermark(self, sink: str) -> int:
        """Last acked seq of ``sink`` (0 if it never acked). Any thread, no I/O."""
        with self._state_lock:
            return self._watermarks.get(sink, 0)

    def watermarks(self) -> dict[str, int]:
        """sink -> last acked seq of every sink that ever acked. Any thread, no I/O."""
        with self._state_lock:
            return dict(self._watermarks)

    def backlog(self, sink: str) -> int:
        """Committed readings after the sink's watermark that are still in the file. Any thread, no I/O."""
        with self._state_lock:
            return self._backlog_locked(sink)

    def _backlog_locked(self, sink: str) -> int:
        start = max(self._watermarks.get(sink, 0) + 1, self._first_seq)
        removed = 0.0  # rows downsampled away at or after start
        partial = self._partial_holes.get(sink)
        for lo, hi, n in self._holes:
            if lo + 1 >= start:
                removed += n
            elif hi >= start:  # start inside this range: counted at ack time, else prorated
                exact = partial is not None and partial[0] == start - 1
                removed += partial[1] if exact and partial is not None else n * (hi - start + 1) / (hi - lo)
        return max(0, self._last_seq - start + 1 - int(removed))

    def reclaim_step(self, timeout: float | None = 60.0) -> dict[str, Any] | None:
        """Run one reclaim step now, whatever the usage (tools and tests; the writer does it by itself past
        the high-water mark). Returns the gap record's data (``action`` "downsampled" or "evicted", seq and
        ts range, rows before/after, ``unacked_sinks``), or None when nothing may be reclaimed. Blocks."""
        cmd = _Reclaim()
        self._command(cmd)
        result: dict[str, Any] | None = self._wait(cmd.future, timeout)
        return result

    def _count_partial_hole(self, con: duckdb.DuckDBPyConnection, work: _Work, sink: str, wm: int,
                            holes: list[tuple[int, int, int]] | None = None) -> None:  # fmt: skip
        """When watermark ``wm`` falls inside a downsampled range, count exactly how many of the range's rows
        after it were removed, so backlog() stays exact. Writer thread, inside the transaction."""
        for lo, hi, _n in holes if holes is not None else self._holes:
            if lo < wm < hi:
                kept = con.execute(
                    "SELECT count(*) FROM readings WHERE seq > ? AND seq <= ?", [wm, hi]
                ).fetchall()[0][0]
                work.partial_holes[sink] = (wm, (hi - wm) - int(kept))
                return

    def set_sinks(self, names: Sequence[str]) -> None:
        """The configured sinks: reclaiming judges "not yet synced" against their watermarks (a sink that never
        acked has watermark 0). Without this call, the sinks that ever acked count. Any thread, no I/O."""
        with self._state_lock:
            self._sinks = tuple(names)

    def sink_stats(self, sink: str) -> dict[str, int | float]:
        """Backlog figures of one sink for metrics and the panel. Any thread. No I/O once the sink has acked
        in this run (the writer notes the oldest unacked timestamp with each ack); one small read otherwise.

        backlog_rows; backlog_bytes (estimate: rows × the store's bytes per row); oldest_ts (epoch ns of the
        first unacked reading, 0 when none); oldest_age_s (by the store's clock); acked_seq.
        """
        with self._state_lock:
            rows = self._backlog_locked(sink)
            wm = self._watermarks.get(sink, 0)
            usage = self._usage
            total = max(self._rows, 1)
        # bytes per stored reading, at most its uncompressed width (a small file is mostly DuckDB's fixed blocks)
        per_row = min(usage.used_bytes / total, _ROW_BYTES) if usage is not None else 9.0
        oldest = 0
        if rows:
            with self._state_lock:
                cached = self._oldest_cache.get(sink)
            if cached is not None and cached[0] == wm and cached[1]:
                oldest = cached[1]
            else:
                with contextlib.suppress(StoreError), self._reader() as cur:
                    oldest = _next_ts(cur, wm)
                    with self._state_lock:
                        self._oldest_cache[sink] = (wm, oldest)
        age = max(0.0, (self._clock_ns() - oldest) / 1e9) if oldest else 0.0
        return {"backlog_rows": rows, "backlog_bytes": int(rows * per_row), "oldest_ts": oldest,
                "oldest_age_s": age, "acked_seq": wm}  # fmt: skip

    def read_after(self, sink: str, after_seq: int, limit: int) -> pa.Table:
        """Committed readings with ``seq > after_seq`` ordered by seq, at most ``limit`` rows.

        Columns: seq int64, ts int64, point_id int32, value float64, quality uint16. ``sink`` names the
        reader (for future retention decisions); it does not filter. Any thread.
        """
        self._check_open()
        if limit <= 0:
            return READINGS_SCHEMA.empty_table()
        after_seq = int(after_seq)
        with self._state_lock:
            last = self._last_seq
        if after_seq >= last:
            return READINGS_SCHEMA.empty_table()
        with self._reader() as cur:
            # seqs are gap-free, so the upper bound lets zonemaps skip everything outside the window
            tbl = cur.sql(
                "SELECT seq, ts, point_id, value, quality FROM readings "
                "WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
                params=[after_seq, min(last, after_seq + int(limit)), int(limit)],
            ).to_arrow_table()
            if tbl.num_rows == 0:
                # rows before a future eviction horizon are gone: continue from the oldest one kept
                tbl = cur.sql(
                    "SELECT seq, ts, point_id, value, quality FROM readings "
                    "WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
                    params=[after_seq, last, int(limit)],
                ).to_arrow_table()
        return tbl.cast(READINGS_SCHEMA)

    def quarantine_after(self, after_seq: int, limit: int) -> pa.Table:
        """Quarantine records with ``seq > after_seq`` ordered by seq, at most ``limit`` rows. Columns: seq
        int64, ts int64 (receive time, epoch ns), device, topic, reason, detail (strings), payload (binary).
        Any thread."""
        self._check_open()
        if limit <= 0:
            return QUARANTINE_SCHEMA.empty_table()
        with self._reader() as cur:
            tbl = cur.sql(
                "SELECT seq, ts, device, topic, reason, detail, payload FROM quarantine "
                "WHERE seq > $1 ORDER BY seq LIMIT $2",
                params=[int(after_seq), int(limit)],
            ).to_arrow_table()
        return tbl.cast(QUARANTINE_SCHEMA)

    def aggregate(
        self, point_ids: Sequence[int] | None, start_ns: int, end_ns: int, bucket_ns: int
    ) -> pa.Table:
        """Per point and time bucket: min, max, avg, last and count of the readings in ``[start_ns, end_ns)``.

        Buckets are aligned to the epoch (``bucket_ns = ts - ts % bucket``), so 60 s buckets start on whole
        minutes. Only valid values count: rows whose validity is *invalid* (or the never-produced *reserved*)
        and NaN values are left out; good and questionable rows are included. ``last`` is the value with the
        highest ts in the bucket (which one among rows with equal ts is unspecified: a deterministic tie-break
        on seq made the query 2.5x slower). ``point_ids`` None means every point; an empty
        sequence gives an empty table. Ordered by point_id, bucket_ns. Columns: point_id int32, bucket_ns
        int64, min/max/avg/last float64, count int64. Any thread.
        """
        self._check_open()
        if bucket_ns <= 0:
            raise ValueError("bucket_ns must be > 0")
        if end_ns <= start_ns or (point_ids is not None and len(point_ids) == 0):
            return AGGREGATE_SCHEMA.empty_table()
        where = "ts >= $start AND ts < $end AND (quality & 3) IN (0, 3) AND NOT isnan(value)"
        params: dict[str, object] = {"start": int(start_ns), "end": int(end_ns), "bucket": int(bucket_ns)}
        ids_filter = ""
        if point_ids is not None:
            ids_filter = " AND list_contains($ids, point_id)"
            params["ids"] = [int(i) for i in point_ids]
        with self._state_lock:
            ds_seq, downsampled = self._ds_seq, bool(self._reclaim["downsampled_rows"] or self._holes)
        if not downsampled:
            sql = (
                "SELECT point_id, (ts // $bucket) * $bucket AS bucket_ns, min(value) AS min, max(value) AS max, "
                "avg(value) AS avg, arg_max(value, ts) AS last, count(*) AS count "
                f"FROM readings WHERE {where}{ids_filter} GROUP BY ALL ORDER BY point_id, bucket_ns"
            )
        else:
            # raw readings after the downsampled range, plus the per-minute summaries of the range (a minute
            # lands in the bucket holding its start; buckets shorter than a minute see whole minutes)
            params["ds"] = ds_seq
            sql = (
                "WITH raw AS (SELECT point_id, (ts // $bucket) * $bucket AS b, min(value) AS mn, max(value) AS mx, "
                "sum(value) AS sm, count(*)::BIGINT AS n, arg_max(value, ts) AS lst, max(ts) AS lts FROM readings "
                f"WHERE seq > $ds AND {where}{ids_filter} GROUP BY ALL), "
                "m AS (SELECT point_id, (bucket_ns // $bucket) * $bucket AS b, min(min) AS mn, max(max) AS mx, "
                "sum(avg * count) AS sm, sum(count)::BIGINT AS n, arg_max(last, last_ts) AS lst, max(last_ts) AS lts "
                f"FROM readings_1m WHERE bucket_ns >= $start AND bucket_ns < $end{ids_filter} GROUP BY ALL) "
                "SELECT point_id, b AS bucket_ns, min(mn) AS min, max(mx) AS max, sum(sm) / sum(n) AS avg, "
                "arg_max(lst, lts) AS last, sum(n)::BIGINT AS count FROM (SELECT * FROM raw UNION ALL SELECT * FROM m) "
                "GROUP BY ALL ORDER BY point_id, bucket_ns"
            )
        with self._reader() as cur:
            tbl = cur.sql(sql, params=params).to_arrow_table()
        return tbl.cast(AGGREGATE_SCHEMA)

    def events_after(self, after_seq: int, limit: int) -> pa.Table:
        """Committed events with ``seq > after_seq`` ordered by seq, at most ``limit``. Any thread.

        Columns: seq int64, ts int64, priority int16, kind, device, point, message, data (strings).
        """
        self._check_open()
        if limit <= 0:
            return EVENTS_SCHEMA.empty_table()
        with self._reader() as cur:
            tbl = cur.sql(
                "SELECT seq, ts, priority, kind, device, point, message, data FROM events "
                "WHERE seq > $1 ORDER BY seq LIMIT $2",
                params=[int(after_seq), int(limit)],
            ).to_arrow_table()
        return tbl.cast(EVENTS_SCHEMA)

    def file_bytes(self) -> int:
        """Bytes the store uses on disk: the database file plus its WAL. Any thread."""
        total = 0
        for p in (self._path, self._path.with_name(self._path.name + ".wal")):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(p).st_size
        return total

    def stats(self) -> dict[str, int | float]:
        """Counters for metrics. Any thread, no DuckDB I/O (one stat() of the files).

        rows: committed readings in the file; last_seq; first_seq; queued_rows (accepted, not yet committed);
        queue_rows (the bound); rejected_offers; commits; last_commit_ns (wall clock, epoch ns; 0 = never);
        events; last_event_seq; write_errors; file_bytes; points; the disk budget (measured by the writer every
        ``check_interval_s``): used_bytes (DuckDB used blocks + WAL), disk_budget_bytes (effective budget),
        fs_free_bytes, over_budget (0/1); reclaiming: downsampled_rows, evicted_rows, evicted_events,
        gap_records, reclaim_steps, downsampled_seq; disk_full (0/1), disk_full_since_ns, disk_full_episodes;
        quarantined (records ever quarantined in this file), last_quarantine_seq.
        """
        with self._lock:
            queued = self._queued_rows
            rejected = self._rejected_offers
        with self._state_lock:
            out: dict[str, int | float] = {
                "rows": self._rows,
                "last_seq": self._last_seq,
                "first_seq": self._first_seq,
                "queued_rows": queued,
                "queue_rows": self._queue_rows,
                "rejected_offers": rejected,
                "commits": self._commits,
                "last_commit_ns": self._last_commit_ns,
                "events": self._events,
                "last_event_seq": self._event_seq,
                "quarantined": self._quarantined,
                "last_quarantine_seq": self._quarantine_seq,
                "write_errors": self._write_errors,
                "points": len(self._infos),
            }
            out.update(self._reclaim)
            out["disk_full"] = int(bool(self._disk_full_since_ns))
            out["disk_full_since_ns"] = self._disk_full_since_ns
            out["disk_full_episodes"] = self._disk_full_events
            out["downsampled_seq"] = self._ds_seq
            usage = self._usage
        fb = self.file_bytes()
        out["file_bytes"] = fb
        budget = usage.budget if usage is not None else self._budget_bytes
        used = usage.used_bytes if usage is not None else fb
        out["used_bytes"] = used
        out["disk_budget_bytes"] = budget
        out["fs_free_bytes"] = usage.fs_free_bytes if usage is not None else 0
        out["over_budget"] = int(used > budget)
        return out

    # -------------------------------------------------------------------------- event queries (operator panel)
    def _event_filter(
        self,
        kinds: Sequence[str] | None,
        device: str | None,
        point: str | None,
        text: str | None,
        since_ns: int | None,
        until_ns: int | None,
        after_seq: int | None,
        max_seq: int | None,
        max_priority: int | None,
    ) -> tuple[str, dict[str, object]]:
        """The WHERE clause and parameters shared by :meth:`query_events` and :meth:`count_events`."""
        where = ["TRUE"]
        params: dict[str, object] = {}
        if kinds is not None:
            where.append("list_contains($kinds, kind)")
            params["kinds"] = [str(k) for k in kinds]
        if device is not None:
            where.append("device = $device")
            params["device"] = str(device)
        if point is not None:
            where.append("point = $point")
            params["point"] = str(point)
        if text:
            where.append("(contains(lower(message), $text) OR contains(lower(device), $text) "
                         "OR contains(lower(point), $text))")
            params["text"] = str(text).lower()
        if since_ns is not None:
            where.append("ts >= $since")
            params["since"] = int(since_ns)
        if until_ns is not None:
            where.append("ts < $until")
            params["until"] = int(until_ns)
        if after_seq is not None:
            where.append("seq > $after")
            params["after"] = int(after_seq)
        if max_seq is not None:
            where.append("seq <= $maxseq")
            params["maxseq"] = int(max_seq)
        if max_priority is not None:
            where.append("priority <= $maxp")
            params["maxp"] = int(max_priority)
        return " AND ".join(where), params

    def query_events(
        self,
        *,
        kinds: Sequence[str] | None = None,
        device: str | None = None,
        point: str | None = None,
        text: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        after_seq: int | None = None,
        max_seq: int | None = None,
        max_priority: int | None = None,
        limit: int = 1000,
        newest_first: bool = True,
        by_time: bool = False,
    ) -> pa.Table:
        """Committed events matching every given filter, at most ``limit``, ordered by seq — or by ``ts`` then seq
        with ``by_time`` (the order things happened, e.g. a sequence of events whose records arrived late) —
        newest first unless ``newest_first`` is False. Read-only; any thread (blocks on DuckDB: call it off the
        event loop).

        Filters (None = no filter): ``kinds`` (event kind in the list; an empty list matches nothing), ``device``
        and ``point`` (exact), ``text`` (case-insensitive substring of message, device or point), ``since_ns`` /
        ``until_ns`` (``since_ns <= ts < until_ns``, UTC epoch ns), ``after_seq`` / ``max_seq``
        (``after_seq < seq <= max_seq``: a reader that remembers :meth:`last_event_seq` reads exactly the
        committed events up to it), ``max_priority`` (``priority <= max_priority``: 0 only the vital ones).
        Columns as :meth:`events_after`.
        """
        self._check_open()
        if limit <= 0 or (kinds is not None and len(kinds) == 0):
            return EVENTS_SCHEMA.empty_table()
        where, params = self._event_filter(kinds, device, point, text, since_ns, until_ns, after_seq, max_seq,
                                            max_priority)
        params["limit"] = int(limit)
        direction = "DESC" if newest_first else "ASC"
        order = f"ts {direction}, seq {direction}" if by_time else f"seq {direction}"
        with self._reader() as cur:
            tbl = cur.sql(
                "SELECT seq, ts, priority, kind, device, point, message, data FROM events "
                f"WHERE {where} ORDER BY {order} LIMIT $limit",
                params=params,
            ).to_arrow_table()
        return tbl.cast(EVENTS_SCHEMA)

    def count_events(
        self,
        *,
        kinds: Sequence[str] | None = None,
        device: str | None = None,
        point: str | None = None,
        text: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        after_seq: int | None = None,
        max_seq: int | None = None,
        max_priority: int | None = None,
    ) -> int:
        """How many committed events match the filters of :meth:`query_events` (same meaning). Any thread
        (blocks on DuckDB: call it off the event loop)."""
        self._check_open()
        if kinds is not None and len(kinds) == 0:
            return 0
        where, params = self._event_filter(kinds, device, point, text, since_ns, until_ns, after_seq, max_seq,
                                            max_priority)
        with self._reader() as cur:
            row = cur.execute(f"SELECT count(*) FROM events WHERE {where}", params).fetchone()
        return int(row[0]) if row else 0

    # -- audit log (operator panel, admin page) ------------------------------------------------------------------
    def audit_log(
        self,
        *,
        user: str = "",
        action: str = "",
        start_ns: int | None = None,
        end_ns: int | None = None,
        before_seq: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Audit trail, newest first: events of kind ``audit`` (panel logins, user management, acknowledgements,
        settings) and ``control`` (every select/operate/cancel and its outcome). Any thread.

        Each row: seq, ts (ns), priority, kind, device, point, message, data (the event's JSON text), ``user``
        (``data.user`` of an audit event, ``data.origin`` of a control event; "" when absent) and ``action``
        (an audit event's action name, its point; ``control.select`` / ``control.operate`` / ``control.cancel``
        for control events). Filters: ``user`` (case-insensitive substring), ``action`` (case-insensitive
        prefix: "login" matches login and login.failed, "control" every control), ``start_ns <= ts < end_ns``,
        ``seq < before_seq`` (paging: pass the last row's seq). At most ``limit`` rows.
        """
        self._check_open()
        if limit <= 0:
            return []
        where = ["kind IN ('audit', 'control')"]
        params: dict[str, object] = {"limit": int(limit)}
        if before_seq is not None:
            where.append("seq < $before")
            params["before"] = int(before_seq)
        if start_ns is not None:
            where.append("ts >= $start")
            params["start"] = int(start_ns)
        if end_ns is not None:
            where.append("ts < $end")
            params["end"] = int(end_ns)
        outer = []
        if user:
            outer.append("contains(lower(who), $user)")
            params["user"] = user.lower()
        if action:
            outer.append("starts_with(lower(act), $action)")
            params["action"] = action.lower()
        sql = (
            "WITH e AS (SELECT seq, ts, priority, kind, device, point, message, data, "
            "coalesce(CASE WHEN NOT json_valid(data) THEN NULL WHEN kind = 'audit' "
            "THEN json_extract_string(data, '$.user') ELSE json_extract_string(data, '$.origin') END, '') AS who, "
            "CASE WHEN kind = 'audit' THEN coalesce(point, '') "
            "ELSE 'control.' || split_part(split_part(coalesce(message, ''), ': ', 2), ' ', 1) END AS act "
            f"FROM events WHERE {' AND '.join(where)}) "
            f"SELECT seq, ts, priority, kind, device, point, message, data, who, act FROM e "
            f"{'WHERE ' + ' AND '.join(outer) if outer else ''} ORDER BY seq DESC LIMIT $limit"
        )
        with self._reader() as cur:
            rows = cur.execute(sql, params).fetchall()
        keys = ("seq", "ts", "priority", "kind", "device", "point", "message", "data", "user", "action")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def last_readings(
        self, point_ids: Sequence[int], *, exclude_quality: int = 0
    ) -> dict[int, tuple[int, float, int]]:
        """point id -> (ts, value, quality) of its committed reading with the greatest ts, for each of
        ``point_ids`` that has one in ``readings`` (points without a reading, or whose readings were all
        downsampled away, are absent). Readings with any bit of ``exclude_quality`` set are ignored (the IEC
        61850 driver passes GATEWAY_TIME: the marks a stop or a lost session writes are not the IED's own
        readings). Among readings with the same greatest ts, the one with the highest seq (the last stored). One
        query: a scan of ``point_id`` and ``ts`` filtered on the ids (no index on readings; ~tens of ms per
        million rows). Sees committed data only (not what waits in the queue). Any thread; blocks on DuckDB, so
        call it from a worker thread, never from an event loop. Used by the IEC 61850 driver to recognise an
        IED's replay after a gateway restart."""
        self._check_open()
        ids = sorted({int(i) for i in point_ids})
        if not ids:
            return {}
        sql = (
            "SELECT point_id, max(ts), arg_max(value, (ts, seq)), arg_max(quality, (ts, seq)) FROM readings "
            "WHERE point_id IN (SELECT unnest($ids::INTEGER[])) AND (quality & $mask) = 0 GROUP BY point_id"
        )
        with self._reader() as cur:
            rows = cur.execute(sql, {"ids": ids, "mask": int(exclude_quality)}).fetchall()
        return {int(pid): (int(ts), float(v), int(q)) for pid, ts, v, q in rows}


def _check_batch(batch: ReadingBatch) -> int:
    """Validate shapes and dtypes (cheap, no copy); return the row count."""
    if not isinstance(batch, ReadingBatch):
        raise TypeError(f"expected a ReadingBatch, not {type(batch).__name__}")
    cols: tuple[npt.NDArray[Any], ...] = (batch.ts, batch.point_id, batch.value, batch.quality)
    dtypes: tuple[np.dtype[Any], ...] = (TS_DTYPE, ID_DTYPE, VALUE_DTYPE, QUALITY_DTYPE)
    if any(c.ndim != 1 or c.dtype != d for c, d in zip(cols, dtypes, strict=True)):
        raise TypeError(
            "ReadingBatch columns must be 1-D int64/int32/float64/uint16 (build it with ReadingBatch.of)"
        )
    return len(batch)


def _next_ts(con: duckdb.DuckDBPyConnection, after_seq: int) -> int:
    """ts of the first reading with seq > ``after_seq`` (0 when none). Looks in a bounded seq window first, so
    zonemaps skip the rest of a large backlog; only a window that holes left empty widens to all of it."""
    for upper in (after_seq + 10_000, None):
        sql = "SELECT ts FROM readings WHERE seq > ?" + (" AND seq <= ?" if upper else "") + " ORDER BY seq LIMIT 1"
        rows = con.execute(sql, [after_seq, upper] if upper else [after_seq]).fetchall()
        if rows:
            return int(rows[0][0])
    return 0


def _iso(ts_ns: int) -> str:
    """UTC ISO-8601 of an epoch-ns timestamp, to the second (for messages)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts_ns / 1e9)) if ts_ns else "?"

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
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from gateway.model import ID_DTYPE, QUALITY_DTYPE, TS_DTYPE, VALUE_DTYPE, Event, PointInfo, ReadingBatch

from . import schema
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

log = logging.getLogger(__name__)

_READINGS_VIEW: Final = "_storefwd_readings_in"
_POINTS_VIEW: Final = "_storefwd_points_in"
_EVENTS_VIEW: Final = "_storefwd_events_in"

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
class _Flush:
    future: Future[int] = field(default_factory=Future)  # result: last committed reading seq


_Command = _Register | _Ack | _AddEvents | _Flush
_SENTINEL: Final = object()  # put on the queue by close(): drain what is before it, commit, stop
_MAX_RETRY_PAUSE_S: Final = 5.0  # longest pause between retries of a failing write


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


class Store:
    """Durable local store of readings and events in one DuckDB file.

    ``Store(path)`` (or ``Store.open(path)``) opens or creates the file and starts the writer thread; use it
    as a context manager or call :meth:`close`. Parameters:

    - ``commit_interval_ms``: the writer commits at most this often while only readings arrive.
    - ``queue_rows``: bound of the writer queue in rows (accepted but not yet committed). ``offer()`` returns
      False beyond it. A single batch larger than the bound is accepted only into an empty queue.
    - ``disk_budget_mb``: disk space (MiB) the file may use; reported in :meth:`stats` (``over_budget``).
      Enforcing it (eviction, downsampling) is not implemented yet.
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
        self._budget_bytes = int(disk_budget_mb * 1024 * 1024)

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
        self._commits = 0
        self._last_commit_ns = 0
        self._write_errors = 0
        self._last_error = ""
        self._points_by_name: dict[str, int] = {}
        self._infos: dict[int, PointInfo] = {}
        self._next_point_id = 1
        self._watermarks: dict[str, int] = {}

        self._cursor_lock = threading.Lock()  # DuckDB cursor creation from the root connection
        self._closed = False
        self._close_lock = threading.Lock()
        self._close_error: StoreError | None = None

        self._root = self._connect()
        try:
            self._load_state()
        except BaseException:
            self._root.close()
            raise
        self._wcon = self._root.cursor()  # the writer's own connection; only the writer thread uses it
        self._writer = threading.Thread(target=self._run, name="storefwd-writer", daemon=True)
        self._writer.start()

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
    ) -> Store:
        """Same as the constructor (reads better at call sites: ``with Store.open(p) as store:``)."""
        return cls(
            path,
            commit_interval_ms=commit_interval_ms,
            queue_rows=queue_rows,
            disk_budget_mb=disk_budget_mb,
            checkpoint_threshold_mb=checkpoint_threshold_mb,
            memory_limit_mb=memory_limit_mb,
        )

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._path

    # ------------------------------------------------------------------------------------------- opening
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
            for key, value in (
                (schema.META_SCHEMA_VERSION, str(schema.SCHEMA_VERSION)),
                (schema.META_STORAGE_VERSION, schema.STORAGE_VERSION),
                (schema.META_READING_SEQ, "0"),
                (schema.META_EVENT_SEQ, "0"),
                (schema.META_CREATED_NS, now),
            ):
                con.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO NOTHING", [key, value])
            con.execute("COMMIT")

            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            r = con.execute("SELECT count(*), min(seq), max(seq) FROM readings").fetchone()
            e = con.execute("SELECT count(*), max(seq) FROM events").fetchone()
            points = con.execute("SELECT id, name, device, point, unit FROM points ORDER BY id").fetchall()
            outbox = con.execute("SELECT sink, acked_seq FROM outbox").fetchall()
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
        for pid, name, device, point, unit in points:
            self._points_by_name[name] = int(pid)
            self._infos[int(pid)] = PointInfo(name=name, device=device, point=point, unit=unit)
        self._next_point_id = max(self._infos, default=0) + 1
        self._watermarks = {str(s): int(a) for s, a in outbox}

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
                self._closed = True
                with contextlib.suppress(duckdb.Error):
                    self._wcon.close()
                self._root.close()
        if self._close_error is not None:
            raise self._close_error

    @property
    def closed(self) -> bool:
        return self._closed

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
                for item in items:
                    if item is _SENTINEL:
                        stop = True
                    elif isinstance(item, ReadingBatch):
                        work.batches.append(item)
                        work.rows += len(item)
                    else:
                        work.commands.append(item)  # type: ignore[arg-type]
                next_commit_at = time.monotonic() + self._interval_s
                ok = self._write(work)
                with self._lock:
                    if ok:
                        self._queued_rows -= work.rows
                        self._space_free.notify_all()
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
        """Prepare, write and commit ``work``; publish it and resolve its futures. Writer thread only."""
        self._prepare(work)
        con = self._wcon
        try:
            con.execute("BEGIN TRANSACTION")
            self._execute(work)
            con.execute("COMMIT")
        except duckdb.Error as e:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            with self._state_lock:
                self._write_errors += 1
                self._last_error = str(e)
            log.error("storefwd: write to %s failed: %s", self._path, e)
            err = StoreWriteError(f"write to {self._path} failed: {e}")
            err.__cause__ = e
            return err
        self._publish(work)
        return None

    def _prepare(self, work: _Work) -> None:
        """Assign seqs and point ids from the committed state (no SQL). Writer thread only."""
        registering = any(isinstance(c, _Register) for c in work.commands)
        with self._state_lock:
            work.first_seq = self._last_seq + 1
            next_event = self._event_seq + 1
            next_point = self._next_point_id
            # private copies only when registering: the point maps may hold many thousand entries
            names = dict(self._points_by_name) if registering else self._points_by_name
            infos = dict(self._infos) if registering else self._infos
        work.new_points, work.changed_points, work.register_results = [], [], []
        work.acks, work.events, work.event_results = {}, [], []
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

    def _execute(self, work: _Work) -> None:
        """Run the SQL of one transaction (inside BEGIN/COMMIT). Writer thread only."""
        con = self._wcon
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
            finally:
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
            finally:
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
            finally:
                con.unregister(_EVENTS_VIEW)
            con.execute(
                "UPDATE meta SET value = ? WHERE key = ?", [str(work.events[-1][0]), schema.META_EVENT_SEQ]
            )

    def _publish(self, work: _Work) -> None:
        """After COMMIT: update the in-memory committed state, then wake the callers. Writer thread only."""
        with self._state_lock:
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
            self._commits += 1
            self._last_commit_ns = time.time_ns()
            last_seq = self._last_seq
        reg = iter(work.register_results)
        evr = iter(work.event_results)
        for cmd in work.commands:
            if isinstance(cmd, _Register):
                cmd.future.set_result(next(reg))
            elif isinstance(cmd, _AddEvents):
                cmd.future.set_result(next(evr))
            elif isinstance(cmd, _Ack):
                cmd.future.set_result(None)
            else:
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
        try:
            yield cur
        except duckdb.Error as e:
            if self._closed:
                raise StoreClosed(f"store {self._path} closed during a read") from e
            raise StoreError(f"read from {self._path} failed: {e}") from e
        finally:
            with contextlib.suppress(duckdb.Error):
                cur.close()

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
            start = max(self._watermarks.get(sink, 0) + 1, self._first_seq)
            return max(0, self._last_seq - start + 1)

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
        if point_ids is not None:
            where += " AND list_contains($ids, point_id)"
            params["ids"] = [int(i) for i in point_ids]
        sql = (
            "SELECT point_id, (ts // $bucket) * $bucket AS bucket_ns, min(value) AS min, max(value) AS max, "
            "avg(value) AS avg, arg_max(value, ts) AS last, count(*) AS count "
            f"FROM readings WHERE {where} GROUP BY ALL ORDER BY point_id, bucket_ns"
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
        events; last_event_seq; write_errors; file_bytes; disk_budget_bytes; over_budget (0/1); points.
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
                "write_errors": self._write_errors,
                "points": len(self._infos),
            }
        fb = self.file_bytes()
        out["file_bytes"] = fb
        out["disk_budget_bytes"] = self._budget_bytes
        out["over_budget"] = int(fb > self._budget_bytes)
        return out


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

"""Runs the configured analytics inside the gateway: feeds them the readings of their inputs, drives them on a
tick, and stores what they return (curated readings like any other, events as alarms).

Threads (the contract):
- :meth:`AnalyticsService.tap` runs on the event loop (the gateway's emit path): it only appends the batch to a
  bounded list. Nothing of an analytic runs on the loop.
- Every ``tick_s`` :meth:`run` hands the collected batches to ONE worker thread (a single-thread executor),
  which feeds each analytic the rows of its inputs and calls ``advance(now)`` — so an analytic is only ever
  touched by that thread, one call at a time, and ONNX scoring never blocks the loop.
- Back on the loop, derived readings go through the gateway's emit (store + latest values; a full store queue
  is retried through an :class:`~gateway.emit_buffer.EmitBuffer`) and events through its event recorder.

An analytic that raises is logged (once per distinct error) and counted; it never stops the others or the
gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gateway.analytics.base import Analytic, AnalyticsOutput
from gateway.emit_buffer import EmitBuffer
from gateway.model import Event, PointInfo, ReadingBatch

log = logging.getLogger(__name__)

MAX_PENDING_ROWS: Final = 2_000_000  # rows tapped but not yet fed; beyond, the oldest batches are skipped


def derived_points(analytics: Sequence[Analytic]) -> list[PointInfo]:
    """Every point the analytics write, in order, each name once."""
    seen: dict[str, PointInfo] = {}
    for a in analytics:
        for p in a.derived_points():
            seen.setdefault(p.name, p)
    return list(seen.values())


class AnalyticsService:
    """See the module docstring. ``point_ids`` must already hold the derived points (register them first)."""

    def __init__(
        self,
        analytics: Sequence[Analytic],
        point_ids: Mapping[str, int],
        emit: Callable[[ReadingBatch], bool],
        record_event: Callable[[Event], None],
        *,
        wall_ns: Callable[[], int] = time.time_ns,
        tick_s: float = 0.1,
    ) -> None:
        self.analytics = list(analytics)
        self._ids = dict(point_ids)
        self._record_event = record_event
        self._wall_ns = wall_ns
        self._tick_s = tick_s
        self._out = EmitBuffer(emit, "analytics")
        size = max(self._ids.values(), default=0) + 1
        # per analytic: point id -> index into its inputs(), -1 for points it does not read
        self._lookup: list[npt.NDArray[np.int32]] = []
        for a in self.analytics:
            table = np.full(size, -1, dtype=np.int32)
            for i, name in enumerate(a.inputs()):
                pid = self._ids.get(name)
                if pid is not None:
                    table[pid] = i
            self._lookup.append(table)
        self._pending: list[ReadingBatch] = []
        self._pending_rows = 0
        self.skipped_rows = 0  # tapped rows never fed because the analytics fell behind
        self.errors = 0
        self._errors_seen: set[str] = set()
        self.events = 0
        self.readings = 0
        self._stop = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analytics")

    # ------------------------------------------------------------------------------------------- loop side
    def tap(self, batch: ReadingBatch) -> None:
        """A batch the gateway stored (loop thread). Cheap: no copy, no analytic code."""
        if not self.analytics or not len(batch):
            return
        self._pending.append(batch)
        self._pending_rows += len(batch)
        while self._pending_rows > MAX_PENDING_ROWS and len(self._pending) > 1:
            old = self._pending.pop(0)
            self._pending_rows -= len(old)
            self.skipped_rows += len(old)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Tick until :meth:`stop`; a last tick runs after it so nothing tapped is left unfed."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                stopping = self._stop.is_set()
                batches, self._pending, self._pending_rows = self._pending, [], 0
                out = await loop.run_in_executor(self._executor, self._step, batches, self._wall_ns())
                self._deliver(out)
                if stopping:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self._tick_s)
        finally:
            self._executor.shutdown(wait=False)
            self._out.flush()

    def _deliver(self, out: AnalyticsOutput) -> None:
        for ev in out.events:
            self._record_event(ev)
        self.events += len(out.events)
        if out.readings:
            known = [r for r in out.readings if r.name in self._ids]
            if len(known) != len(out.readings):
                self._error(f"analytics produced readings of unregistered points: "
                            f"{sorted({r.name for r in out.readings} - set(self._ids))[:5]}")  # fmt: skip
            if known:
                batch = ReadingBatch.of(
                    np.array([r.ts for r in known], dtype=np.int64),
                    np.array([self._ids[r.name] for r in known], dtype=np.int32),
                    np.array([r.value for r in known], dtype=np.float64),
                    np.array([r.quality for r in known], dtype=np.uint16),
                )
                self._out.add(batch)
                self.readings += len(known)
        self._out.flush()

    # ------------------------------------------------------------------------------------------- worker side
    def _step(self, batches: list[ReadingBatch], now_ns: int) -> AnalyticsOutput:
        """Worker thread: feed every analytic its rows, then advance it."""
        out = AnalyticsOutput()
        merged = ReadingBatch.concat(batches) if len(batches) > 1 else (batches[0] if batches else None)
        for a, table in zip(self.analytics, self._lookup, strict=True):
            try:
                if merged is not None and len(merged):
                    pid = merged.point_id
                    inside = pid < len(table)
                    idx = np.full(len(pid), -1, dtype=np.int32)
                    idx[inside] = table[pid[inside]]
                    sel = idx >= 0
                    if sel.any():
                        a.feed(idx[sel], merged.ts[sel], merged.value[sel], merged.quality[sel])
                out.extend(a.advance(now_ns))
            except Exception as e:  # an analytic's bug degrades that analytic only
                self._error(f"{type(a).__name__}: {e!r}")
        return out

    def _error(self, text: str) -> None:
        self.errors += 1
        if text not in self._errors_seen:
            self._errors_seen.add(text)
            log.error("analytics: %s", text)

    # ------------------------------------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """For /api/status and the panel (loop thread). Analytics with a ``status()`` method add theirs; such a
        method runs on the loop while the worker may be updating the analytic, so it must only read plain
        attributes (no iteration over containers the worker mutates)."""
        parts: list[Any] = []
        for a in self.analytics:
            for attr in ("status", "health"):  # health(): per-device assessments of the anomaly detector
                fn = getattr(a, attr, None)
                if callable(fn):
                    try:
                        parts.append({"analytic": type(a).__name__, attr: fn()})
                    except Exception as e:  # a status must never break the page
                        parts.append({"analytic": type(a).__name__, "error": repr(e)})
        return {"analytics": parts, "events": self.events, "readings": self.readings, "errors": self.errors,
                "skipped_rows": self.skipped_rows}  # fmt: skip


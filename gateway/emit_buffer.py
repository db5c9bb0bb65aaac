"""What every runner shares: the buffer between a runner and the store, back-off delays, old-data quality.

:class:`EmitBuffer` keeps batches a runner could not hand to the store yet (the store queue was full) and offers
them again in order: nothing overtakes. Owned by one runner; used on its event loop only.

The store's queue is bounded and so is what the runners hold for it: all buffers of a gateway share one
:class:`PendingBudget` (rows). Only when the store has accepted nothing for so long that the budget is spent
(a disk that stays full, a writer that cannot commit) does a buffer give up its oldest batches — counted, and
reported once the store accepts again through ``on_gap`` (rows, first ts, last ts), which the runners turn
into a priority-0 gap record. Memory stays bounded; what was given up is recorded, never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from gateway.model import Event, Q, ReadingBatch

__all__ = ["EMIT_RETRY_S", "STOP_FLUSH_S", "EmitBuffer", "PendingBudget", "RunnerLoop", "backoff_delay", "gap_event",
           "gap_reporter", "old_data_quality"]

EMIT_RETRY_S: Final = 0.02  # delay between attempts to hand a batch to a full store queue
STOP_FLUSH_S: Final = 2.0  # on stop, how long to keep offering the final batches
_OLD: Final = int(Q.OLD_DATA)
_VALIDITY: Final = 0x0003

log = logging.getLogger(__name__)


def old_data_quality(q: npt.NDArray[np.uint16]) -> npt.NDArray[np.uint16]:
    """``q`` with OLD_DATA set; a good validity becomes questionable (invalid stays invalid)."""
    out = q | np.uint16(_OLD)
    good = (out & np.uint16(_VALIDITY)) == 0
    out[good] |= np.uint16(int(Q.QUESTIONABLE))
    return out


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before reconnect attempt ``attempt`` (1-based): ``min_s·2^(attempt−1)`` capped at ``max_s``, with
    jitter in [50 %, 100 %] so many links that dropped together do not retry together."""
    return min(max_s, min_s * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.0)


class PendingBudget:
    """Rows all runners of one gateway may hold for a store that does not accept them (loop thread only)."""

    def __init__(self, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.max_rows = max_rows
        self.rows = 0  # held now, all buffers together
        self.dropped = 0  # given up since start


class EmitBuffer:
    """Batches waiting for the store, in order. ``emit`` is the store's non-blocking offer (False = full).

    ``budget``: the shared bound (None: unbounded, for tools and tests); ``on_gap(rows, ts_from, ts_to)`` is
    called once the store accepts again after this buffer had to give up readings.
    """

    def __init__(self, emit: Callable[[ReadingBatch], bool], name: str, *, budget: PendingBudget | None = None,
                 on_gap: Callable[[int, int, int], None] | None = None) -> None:  # fmt: skip
        self._emit = emit
        self._name = name
        self._pending: deque[ReadingBatch] = deque()
        self._budget = budget
        self._on_gap = on_gap
        self._gap_rows = 0
        self._gap_from = 0
        self._gap_to = 0

    def add(self, batch: ReadingBatch | None) -> None:
        if batch is None or not len(batch):
            return
        self._pending.append(batch)
        b = self._budget
        if b is None:
            return
        b.rows += len(batch)
        while b.rows > b.max_rows and len(self._pending) > 1:  # keep the newest: it tells the present
            old = self._pending.popleft()
            n = len(old)
            b.rows -= n
            b.dropped += n
            if not self._gap_rows:
                self._gap_from = int(old.ts.min())
                log.error(
                    "%s: the store has accepted nothing for too long (%d readings held by all links); "
                    "giving up the oldest readings, a gap record will say which",
                    self._name,
                    b.max_rows,
                )
            self._gap_rows += n
            self._gap_to = max(self._gap_to, int(old.ts.max()))

    def __len__(self) -> int:
        return sum(len(b) for b in self._pending)

    def flush(self) -> bool:
        """Offer pending batches in order (merged into one); True when nothing is left pending."""
        if len(self._pending) > 1:
            merged = ReadingBatch.concat(list(self._pending))
            self._pending.clear()
            self._pending.append(merged)
        while self._pending:
            if not self._emit(self._pending[0]):
                return False
            done = self._pending.popleft()
            if self._budget is not None:
                self._budget.rows -= len(done)
        if self._gap_rows:
            rows, self._gap_rows = self._gap_rows, 0
            log.error("%s: %d readings between %d and %d ns were given up while the store did not accept them",
                      self._name, rows, self._gap_from, self._gap_to)  # fmt: skip
            if self._on_gap is not None:
                self._on_gap(rows, self._gap_from, self._gap_to)
            self._gap_from = self._gap_to = 0
        return True

    async def drain(self, timeout_s: float = STOP_FLUSH_S) -> None:
        """On stop: keep offering for up to ``timeout_s``; say how many readings the store did not take."""
        deadline = time.monotonic() + timeout_s
        while not self.flush() and time.monotonic() < deadline:
            await asyncio.sleep(EMIT_RETRY_S)
        if self._pending:
            log.warning("%s: store did not take the final %d readings", self._name, len(self))


def gap_event(link: str, rows: int, ts_from: int, ts_to: int, now_ns: int) -> Event:
    """The priority-0 gap record of readings a link gave up while the store accepted nothing."""
    data = {"action": "dropped", "link": link, "readings": rows, "ts_from": ts_from, "ts_to": ts_to,
            "reason": "the store accepted no readings for too long (disk full or writer stuck)"}  # fmt: skip
    return Event(ts=now_ns, kind="gap", priority=0, device="gateway", point=f"link {link}",
                 message=f"{rows} readings of link {link} were given up: the store accepted none for too long",
                 data=json.dumps(data))  # fmt: skip


def gap_reporter(link: str, wall_ns: Callable[[], int],
                 on_event: Callable[[Event], None] | None) -> Callable[[int, int, int], None] | None:  # fmt: skip
    """``on_gap`` for an EmitBuffer that hands a gap record of ``link`` to ``on_event`` (None: log only)."""
    if on_event is None:
        return None
    sink = on_event

    def report(rows: int, ts_from: int, ts_to: int) -> None:
        sink(gap_event(link, rows, ts_from, ts_to, wall_ns()))

    return report


class RunnerLoop:
    """The loop plumbing both runners share: stop-aware sleeps and the watchdog's liveness figures.

    The runner sets ``_mono`` (monotonic ns clock), ``_wake`` (set by stop()), ``_stopping``, and calls
    :meth:`_init_liveness` in its constructor. ``loop_iterations`` advances on every pass of its loop and every
    connect attempt; ``awake_by_ns`` (monotonic ns) is when the loop is due to advance again: a wait the runner
    scheduled itself (poll period, back-off, idle slice) pushes it forward, so only an await that never returns
    makes the loop look hung (gateway/app.py, docs/deployment.md). Runner task only.
    """

    _mono: Callable[[], int]
    _wake: asyncio.Event
    _stopping: bool

    def _init_liveness(self) -> None:
        self.loop_iterations = 0
        self.awake_by_ns = self._mono()
        self.first_attempt_done = False  # the first connect (or poll) attempt was made, whatever its outcome

    async def _sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``; returns early on stop()."""
        if self._stopping or seconds <= 0:
            return
        self.awake_by_ns = max(self.awake_by_ns, self._mono() + round(seconds * 1e9))  # a scheduled wait is alive
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _advance(self) -> None:
        """The loop made progress (watchdog liveness, see ``loop_iterations``)."""
        self.loop_iterations += 1
        self.awake_by_ns = self._mono()

"""What leaves the protection cycle: an event ring and a statistics block, in shared memory or in local memory.

**EventRing**: a preallocated single-producer/single-consumer ring of :data:`EVENT_DTYPE` records. The producer
(the cycle thread) never blocks: when the ring is full the record is dropped and ``overflow`` counted. The
consumer (the gateway) calls :meth:`EventRing.read_new`. Header (int64): head = records ever written, tail =
records ever read, overflow, capacity. Only the producer writes head and overflow, only the consumer writes tail;
the producer writes a record's fields before it advances head, and the record's ``seq`` (= its index + 1) last,
and the consumer reads the ``seq`` s first and stops at the first slot whose ``seq`` is not the one expected.
:func:`protection.fence.fence` (a full barrier) sits between the fields and the ``seq`` on both sides (and
before the consumer's tail update), so the protocol holds on weakly ordered CPUs (ARM) as well as on x86.

**CycleStats**: counters plus a fixed, preallocated lateness histogram in one int64 array, written by the cycle
under a sequence lock (odd = writing) and read consistently with :meth:`CycleStats.snapshot` (retries).

Both are backed by a ``multiprocessing.shared_memory.SharedMemory`` (``create``/``attach``) or by a plain numpy
array (``local``) for tests of the cycle. The creator owns the segment (``close(unlink=True)``); the other side
only closes it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Final

import numpy as np
import numpy.typing as npt

from protection.fence import fence

# --- events --------------------------------------------------------------------------------------------------

EVENT_DTYPE: Final = np.dtype(
    [
        ("seq", "<u8"),  # 1, 2, 3, ... per ring (gaps never: dropped records are counted, not numbered)
        ("mono_ns", "<i8"),  # monotonic ns of the transition (the `now` of the cycle step)
        ("utc_ns", "<i8"),  # UTC epoch ns of the same instant (wall clock sampled with the cycle's monotonic time)
        ("element", "<i4"),  # index in the group's armed elements; ELEMENT_CYCLE for cycle events
        ("group", "<i4"),  # settings group of the element (1 or 2); 0 for cycle events
        ("events", "<u4"),  # EV_* bits (protection.output) for elements, CEV_* bits for cycle events
        ("phases", "<u4"),  # PH_* bits for elements; CEV_* detail for cycle events (see below)
    ]
)

ELEMENT_CYCLE: Final = -1  # `element` of a record that is about the cycle, not an element
CEV_STARTED: Final = 1 << 0  # the cycle started; phases = period in µs
CEV_OVERRUN: Final = 1 << 1  # a cycle ran past the next deadline (alarm); phases = slots skipped
CEV_VALIDITY: Final = 1 << 2  # the measurement validity word changed; phases = the new V_* bits
CEV_GROUP: Final = 1 << 3  # the settings group was switched; phases = the group now in service

# Records about trip outputs (protection.outputs): `element` = ELEMENT_OUTPUT, `group` = the output's index in
# the configured outputs, `events` = one OEV_* code, `phases` = its detail as below. mono_ns/utc_ns = when the
# outcome happened. They are pushed by the cycle thread (the ring's only producer), which drains the outputs'
# result queue once per cycle.
ELEMENT_OUTPUT: Final = -2
OEV_SENT: Final = 1 << 0  # the command was written to the wire; phases = µs from the trip decision to the send
OEV_CONFIRMED: Final = 1 << 1  # the device acknowledged it; phases = µs from the send to the response
OEV_FAILED: Final = 1 << 2  # given up after the retries; phases = OUT_ERR_* code (| Modbus exception << 8)
OEV_RETRY: Final = 1 << 3  # sending again after a timeout/error; phases = attempt number (2, 3, ...)
OEV_LINK_UP: Final = 1 << 4  # the output's connection came up; phases = 0
OEV_LINK_DOWN: Final = 1 << 5  # the output's connection was lost or refused; phases = OUT_ERR_* code
OUT_ERR_NOT_CONNECTED: Final = 1  # no connection when the command was due
OUT_ERR_TIMEOUT: Final = 2  # no response within the output's timeout
OUT_ERR_EXCEPTION: Final = 3  # the device answered with an exception (code in bits 8..15)
OUT_ERR_IO: Final = 4  # socket error / connection reset
OUT_ERR_BAD_RESPONSE: Final = 5  # a response that does not match the request

_HEAD, _TAIL, _OVERFLOW, _CAPACITY = 0, 1, 2, 3
_RING_HDR = 8  # int64 words of header (4 spare)


def _ring_bytes(capacity: int) -> int:
    return _RING_HDR * 8 + capacity * EVENT_DTYPE.itemsize


class EventRing:
    """SPSC event ring. ``push`` is called by the one producer thread; ``read_new`` by the one consumer."""

    __slots__ = (
        "_buf",
        "_cap",
        "_el",
        "_ev",
        "_grp",
        "_hdr",
        "_head",
        "_mono",
        "_overflow",
        "_ph",
        "_recs",
        "_seq",
        "_shm",
        "_tail_cache",
        "_utc",
        "name",
    )

    def __init__(self, buf: memoryview | bytearray, capacity: int, shm: shared_memory.SharedMemory | None) -> None:
        self._shm = shm
        self._buf = buf
        self._cap = capacity
        self._hdr: npt.NDArray[np.int64] = np.ndarray((_RING_HDR,), dtype=np.int64, buffer=buf)
        self._recs: npt.NDArray[np.void] = np.ndarray((capacity,), dtype=EVENT_DTYPE, buffer=buf, offset=_RING_HDR * 8)
        # Column views, made once, so the producer writes plain ints into preallocated memory.
        self._seq = self._recs["seq"]
        self._mono = self._recs["mono_ns"]
        self._utc = self._recs["utc_ns"]
        self._el = self._recs["element"]
        self._grp = self._recs["group"]
        self._ev = self._recs["events"]
        self._ph = self._recs["phases"]
        self._head = int(self._hdr[_HEAD])  # producer's copy of head
        self._tail_cache = int(self._hdr[_TAIL])  # producer's last view of tail
        self._overflow = int(self._hdr[_OVERFLOW])
        self.name = shm.name if shm is not None else ""

    @classmethod
    def local(cls, capacity: int = 4096) -> EventRing:
        """A ring in process memory (tests of the cycle)."""
        buf = bytearray(_ring_bytes(capacity))
        r = cls(buf, capacity, None)
        r._hdr[_CAPACITY] = capacity
        return r

    @classmethod
    def create(cls, capacity: int = 4096) -> EventRing:
        """A new shared-memory ring; the caller owns it (``close(unlink=True)``)."""
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        shm = shared_memory.SharedMemory(create=True, size=_ring_bytes(capacity))
        assert shm.buf is not None
        r = cls(shm.buf, capacity, shm)
        r._hdr[:] = 0
        r._hdr[_CAPACITY] = capacity
        return r

    @classmethod
    def attach(cls, name: str) -> EventRing:
        """Open a ring another process created (it stays the owner)."""
        shm = shared_memory.SharedMemory(name=name)
        assert shm.buf is not None
        cap = int(np.ndarray((_RING_HDR,), dtype=np.int64, buffer=shm.buf)[_CAPACITY])
        return cls(shm.buf, cap, shm)

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def overflow(self) -> int:
        """Records dropped because the ring was full (consumer side: read from the header)."""
        return int(self._hdr[_OVERFLOW])

    def pending(self) -> int:
        return int(self._hdr[_HEAD]) - int(self._hdr[_TAIL])

    def push(self, mono_ns: int, utc_ns: int, element: int, group: int, events: int, phases: int) -> bool:
        """Append one record (producer thread). Never blocks: False, and ``overflow`` counted, when full."""
        head = self._head
        if head - self._tail_cache >= self._cap:
            self._tail_cache = int(self._hdr[_TAIL])
            if head - self._tail_cache >= self._cap:
                self._overflow += 1
                self._hdr[_OVERFLOW] = self._overflow
                return False
        i = head % self._cap
        self._mono[i] = mono_ns
        self._utc[i] = utc_ns
        self._el[i] = element
        self._grp[i] = group
        self._ev[i] = events
        self._ph[i] = phases
        fence()  # the fields before the seq that publishes them (weakly ordered CPUs)
        self._seq[i] = head + 1
        self._head = head + 1
        self._hdr[_HEAD] = head + 1
        return True

    def read_new(self) -> npt.NDArray[np.void]:
        """Copy out every record written since the last call (consumer). Returns an ``EVENT_DTYPE`` array."""
        tail = int(self._hdr[_TAIL])
        head = int(self._hdr[_HEAD])
        n = head - tail
        if n <= 0:
            return np.empty(0, dtype=EVENT_DTYPE)
        idx = (np.arange(tail, head) % self._cap).astype(np.intp)
        seqs = self._seq[idx].copy()
        fence()  # each seq read before the fields it publishes
        out = self._recs[idx].copy()
        ok = seqs == np.arange(tail + 1, head + 1, dtype=np.uint64)
        if not ok.all():  # a record not published yet: take the good prefix, the rest comes next time
            out = out[: int(np.argmin(ok))]
        fence()  # the slots are read before the tail that lets the producer reuse them
        self._hdr[_TAIL] = tail + len(out)
        return out

    def close(self, unlink: bool = False) -> None:
        """Release the mapping (idempotent); ``unlink`` also removes the segment (the creator only)."""
        shm = self._shm
        if shm is None:
            return
        self._shm = None
        # Drop every view into the buffer before closing the mapping.
        for a in ("_hdr", "_recs", "_seq", "_mono", "_utc", "_el", "_grp", "_ev", "_ph", "_buf"):
            setattr(self, a, None)
        shm.close()
        if unlink:
            shm.unlink()


# --- statistics ----------------------------------------------------------------------------------------------

# Lateness histogram: bin 0 is [0, 1 µs), bin i (1..56) is [E[i-1], E[i]) with E log-spaced 8 per decade from
# 1 µs to 10 s, bin 57 is >= 10 s. Edges in integer ns.
HIST_EDGES_NS: Final[tuple[int, ...]] = tuple(round(1000 * 10 ** (i / 8)) for i in range(57))
HIST_BINS: Final = len(HIST_EDGES_NS) + 1

# Words of the stats block (int64).
S_SEQLOCK: Final = 0  # odd while the cycle is writing
S_CYCLES: Final = 1  # cycles executed
S_OVERRUNS: Final = 2  # cycles that ran past the next deadline
S_SKIPPED: Final = 3  # slots skipped after overruns
S_MAX_EXEC_NS: Final = 4  # longest execution (read + step + publish)
S_LAST_EXEC_NS: Final = 5
S_SUM_EXEC_NS: Final = 6
S_MAX_LATE_NS: Final = 7  # largest lateness (wake-up after the deadline)
S_PERIOD_NS: Final = 8
S_LAST_CYCLE_NS: Final = 9  # monotonic ns of the latest cycle (heartbeat)
S_STATE: Final = 10  # STATE_*
S_SCHED_FIFO: Final = 11  # 1 = SCHED_FIFO in force, 0 = refused (see S_SCHED_ERRNO), -1 = not asked
S_SCHED_ERRNO: Final = 12
S_CPU: Final = 13  # CPU the cycle thread is pinned to, -1 = not pinned
S_AFFINITY_ERRNO: Final = 14
S_PID: Final = 15
S_VALID: Final = 16  # the current V_* validity word
S_GC_COLLECTS: Final = 17  # safe-point generation-0 collections done off the cycle's deadline
S_FIFO_PRIORITY: Final = 18
S_STOP: Final = 19  # set to 1 by the owner (gateway) to ask the process to stop; outside the sequence lock
S_GROUP_REQ: Final = 20  # settings group (1/2) the owner asks for, 0 = none; outside the sequence lock
S_ACTIVE_GROUP: Final = 21  # settings group in service (written by the cycle)
_S_WORDS: Final = 24  # header words; the histogram follows
S_HIST: Final = _S_WORDS
_STATS_LEN: Final = _S_WORDS + HIST_BINS

STATE_STARTING: Final = 0
STATE_RUNNING: Final = 1
STATE_STOPPED: Final = 2
STATE_FAILED: Final = 3
STATE_NAMES: Final = {
    STATE_STARTING: "starting",
    STATE_RUNNING: "running",
    STATE_STOPPED: "stopped",
    STATE_FAILED: "failed",
}


def hist_bin(lateness_ns: int) -> int:
    """Histogram bin of a lateness (negative counts as 0)."""
    return bisect.bisect_right(HIST_EDGES_NS, lateness_ns)


def hist_bounds_ns(b: int) -> tuple[float, float]:
    """``[lo, hi)`` of bin ``b`` in ns (``hi`` is inf for the last bin)."""
    lo = 0.0 if b == 0 else float(HIST_EDGES_NS[b - 1])
    hi = math.inf if b >= len(HIST_EDGES_NS) else float(HIST_EDGES_NS[b])
    return lo, hi


def hist_percentile_bin(hist: npt.NDArray[np.int64], q: float) -> int:
    """Bin holding the nearest-rank ``q`` percentile (``numpy.percentile(method="inverted_cdf")``); -1 if empty."""
    n = int(hist.sum())
    if n == 0:
        return -1
    rank = max(1, math.ceil(q / 100.0 * n))
    return int(np.searchsorted(np.cumsum(hist), rank, side="left"))


def hist_percentile_ns(hist: npt.NDArray[np.int64], q: float) -> float:
    """Upper bound (the bin's upper edge, ns) of the ``q`` percentile; NaN if the histogram is empty."""
    b = hist_percentile_bin(hist, q)
    return math.nan if b < 0 else hist_bounds_ns(b)[1]


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """A consistent copy of the cycle statistics (gateway side)."""

    cycles: int
    overruns: int
    skipped_slots: int
    max_exec_ns: int
    last_exec_ns: int
    mean_exec_ns: float
    max_lateness_ns: int
    period_ns: int
    last_cycle_ns: int
    state: str  # starting, running, stopped, failed
    sched_fifo: int  # 1 in force, 0 refused, -1 not asked
    sched_errno: int
    cpu: int  # pinned CPU, -1 = not pinned
    affinity_errno: int
    pid: int
    valid: int
    gc_collects: int
    fifo_priority: int
    active_group: int  # settings group in service (0 before the cycle started)
    lateness_hist: npt.NDArray[np.int64]  # HIST_BINS counts, bins as HIST_EDGES_NS

    def lateness_percentile_us(self, q: float) -> float:
        """Upper bound of the ``q`` percentile of the lateness, µs (NaN before the first cycle)."""
        return hist_percentile_ns(self.lateness_hist, q) / 1000.0


class CycleStats:
    """The counters and histogram the cycle writes each cycle (one writer thread) and anyone may snapshot."""

    __slots__ = (
        "_a",
        "_cycles",
        "_hist",
        "_last_exec",
        "_max_exec",
        "_max_late",
        "_overruns",
        "_seq",
        "_shm",
        "_skipped",
        "_sum_exec",
        "name",
    )

    def __init__(self, arr: npt.NDArray[np.int64], shm: shared_memory.SharedMemory | None) -> None:
        self._shm = shm
        self._a = arr
        self._hist = arr[S_HIST:]
        self._seq = int(arr[S_SEQLOCK]) & ~1
        self._cycles = int(arr[S_CYCLES])
        self._overruns = int(arr[S_OVERRUNS])
        self._skipped = int(arr[S_SKIPPED])
        self._max_exec = int(arr[S_MAX_EXEC_NS])
        self._last_exec = int(arr[S_LAST_EXEC_NS])
        self._sum_exec = int(arr[S_SUM_EXEC_NS])
        self._max_late = int(arr[S_MAX_LATE_NS])
        self.name = shm.name if shm is not None else ""

    @classmethod
    def local(cls) -> CycleStats:
        s = cls(np.zeros(_STATS_LEN, dtype=np.int64), None)
        s.set_fields(sched_fifo=-1, cpu=-1)
        return s

    @classmethod
    def create(cls) -> CycleStats:
        shm = shared_memory.SharedMemory(create=True, size=_STATS_LEN * 8)
        assert shm.buf is not None
        a: npt.NDArray[np.int64] = np.ndarray((_STATS_LEN,), dtype=np.int64, buffer=shm.buf)
        a[:] = 0
        s = cls(a, shm)
        s.set_fields(sched_fifo=-1, cpu=-1)
        return s

    @classmethod
    def attach(cls, name: str) -> CycleStats:
        shm = shared_memory.SharedMemory(name=name)
        assert shm.buf is not None
        return cls(np.ndarray((_STATS_LEN,), dtype=np.int64, buffer=shm.buf), shm)

    _FIELDS: Final = {
        "state": S_STATE,
        "period_ns": S_PERIOD_NS,
        "sched_fifo": S_SCHED_FIFO,
        "sched_errno": S_SCHED_ERRNO,
        "cpu": S_CPU,
        "affinity_errno": S_AFFINITY_ERRNO,
        "pid": S_PID,
        "gc_collects": S_GC_COLLECTS,
        "fifo_priority": S_FIFO_PRIORITY,
        "active_group": S_ACTIVE_GROUP,
    }

    def set_fields(self, **values: int) -> None:
        """Set descriptive words (state, sched outcome, ...) under the sequence lock. Writer side, not per cycle."""
        a = self._a
        self._seq += 1
        a[S_SEQLOCK] = self._seq
        for k, v in values.items():
            a[self._FIELDS[k]] = v
        self._seq += 1
        a[S_SEQLOCK] = self._seq

    def request_stop(self) -> None:
        """Ask the protection process to stop (the owner's side; a single word, no lock needed)."""
        self._a[S_STOP] = 1

    def stop_requested(self) -> bool:
        return bool(self._a[S_STOP])

    def request_group(self, group: int) -> None:
        """Ask the cycle to switch to settings ``group`` (1 or 2) at its next slot (the owner's side)."""
        if group not in (1, 2):
            raise ValueError(f"settings group must be 1 or 2, got {group!r}")
        self._a[S_GROUP_REQ] = group

    def take_group_request(self) -> int:
        """The pending group request (0 = none), cleared (cycle thread; one word read per cycle)."""
        a = self._a
        g = int(a[S_GROUP_REQ])
        if g:
            a[S_GROUP_REQ] = 0
        return g

    def record(self, now_ns: int, lateness_ns: int, exec_ns: int, valid: int) -> None:
        """One cycle's figures (cycle thread). Preallocated: writes ints into the array, nothing else."""
        if lateness_ns < 0:
            lateness_ns = 0
        a = self._a
        self._seq += 1
        a[S_SEQLOCK] = self._seq
        fence()  # odd seq visible before any field changes
        self._cycles += 1
        self._last_exec = exec_ns
        self._sum_exec += exec_ns
        if exec_ns > self._max_exec:
            self._max_exec = exec_ns
            a[S_MAX_EXEC_NS] = exec_ns
        if lateness_ns > self._max_late:
            self._max_late = lateness_ns
            a[S_MAX_LATE_NS] = lateness_ns
        a[S_CYCLES] = self._cycles
        a[S_LAST_EXEC_NS] = exec_ns
        a[S_SUM_EXEC_NS] = self._sum_exec
        a[S_LAST_CYCLE_NS] = now_ns
        a[S_VALID] = valid
        self._hist[bisect.bisect_right(HIST_EDGES_NS, lateness_ns)] += 1
        fence()  # every field before the even seq that says "consistent"
        self._seq += 1
        a[S_SEQLOCK] = self._seq

    def overrun(self, skipped: int) -> None:
        """A cycle ran past the next deadline; ``skipped`` slots were given up (cycle thread)."""
        a = self._a
        self._seq += 1
        a[S_SEQLOCK] = self._seq
        self._overruns += 1
        self._skipped += skipped
        a[S_OVERRUNS] = self._overruns
        a[S_SKIPPED] = self._skipped
        self._seq += 1
        a[S_SEQLOCK] = self._seq

    def snapshot(self, retries: int = 1000) -> StatsSnapshot:
        """A consistent copy (retries while the writer is mid-update; after ``retries`` the last copy is used)."""
        a = self._a
        c = a.copy()
        for _ in range(retries):
            s1 = int(a[S_SEQLOCK])
            if s1 & 1:
                continue
            fence()
            c = a.copy()
            fence()
            if int(a[S_SEQLOCK]) == s1:
                break
        cycles = int(c[S_CYCLES])
        return StatsSnapshot(
            cycles=cycles,
            overruns=int(c[S_OVERRUNS]),
            skipped_slots=int(c[S_SKIPPED]),
            max_exec_ns=int(c[S_MAX_EXEC_NS]),
            last_exec_ns=int(c[S_LAST_EXEC_NS]),
            mean_exec_ns=int(c[S_SUM_EXEC_NS]) / cycles if cycles else math.nan,
            max_lateness_ns=int(c[S_MAX_LATE_NS]),
            period_ns=int(c[S_PERIOD_NS]),
            last_cycle_ns=int(c[S_LAST_CYCLE_NS]),
            state=STATE_NAMES.get(int(c[S_STATE]), "unknown"),
            sched_fifo=int(c[S_SCHED_FIFO]),
            sched_errno=int(c[S_SCHED_ERRNO]),
            cpu=int(c[S_CPU]),
            affinity_errno=int(c[S_AFFINITY_ERRNO]),
            pid=int(c[S_PID]),
            valid=int(c[S_VALID]),
            gc_collects=int(c[S_GC_COLLECTS]),
            fifo_priority=int(c[S_FIFO_PRIORITY]),
            active_group=int(c[S_ACTIVE_GROUP]),
            lateness_hist=c[S_HIST:].copy(),
        )

    def close(self, unlink: bool = False) -> None:
        shm = self._shm
        if shm is None:
            return
        self._shm = None
        self._a = self._a.copy()  # keep the last figures readable; drop the views into the segment
        self._hist = self._a[S_HIST:]
        shm.close()
        if unlink:
            shm.unlink()

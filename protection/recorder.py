"""The cycle's sample recorder: a circular buffer of every cycle's measurements, for fault records (COMTRADE).

:class:`SampleRecorder` keeps the last ``capacity`` samples the cycle saw: monotonic and UTC time, the eight
quantities of the :class:`~protection.measurements.Measurements` frame (``ia ib ic i_n`` A, ``va vb vc`` kV, ``f``
Hz: RMS/frequency measurements at the cycle rate, not waveforms), the validity word and the cycle's ``status``
word. ``status`` is set by the cycle (:mod:`protection.cycle`): bit ``2*i`` = element ``i`` of the active group
picked up, bit ``2*i+1`` = element ``i`` tripped (elements 0..31).

**Writer** (:meth:`SampleRecorder.record`): the cycle thread, once per cycle, never blocks, allocates nothing but
ints; the oldest sample is overwritten when the buffer is full. **Readers** (:meth:`SampleRecorder.window`,
:meth:`SampleRecorder.latest_ns`): any other thread or process; they never block the writer.

Layout (one ``SharedMemory`` segment, or a ``bytearray`` for :meth:`SampleRecorder.local`): an int64 header
(``head`` = samples ever written, ``capacity``, a magic/version word) followed by one column per field, each
``capacity`` long: ``seq`` (u64), ``mono_ns`` (i64), ``utc_ns`` (i64), ``values`` (f64 × 8 per sample),
``status`` (u64), ``valid`` (u32). Sample ``j`` (0, 1, 2, ...) lives in slot ``j % capacity``.

Consistency (a per-slot sequence lock): the writer stores ``seq = 0`` (slot being written), then the fields, then
``seq = j + 1``, then ``head = j + 1``. The reader copies every ``seq``, then the fields, then every ``seq`` again,
and keeps a slot only when both copies equal the ``j + 1`` it expects; a slot the writer touched meanwhile (it can
only be the oldest ones, being overwritten) is dropped. A full barrier (:func:`protection.fence.fence`) separates
``seq = 0`` from the fields and the fields from ``seq = j + 1`` on the writer's side, and the three copies on the
reader's, so the lock holds on weakly ordered CPUs (ARM) as well as on x86.

The creator owns the segment (``close(unlink=True)``); the other side only closes it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Final

import numpy as np
import numpy.typing as npt

from protection.fence import fence
from protection.measurements import Measurements

QUANTITIES: Final = ("ia", "ib", "ic", "in", "va", "vb", "vc", "f")  # column order of RecordedWindow.values
UNITS: Final = ("A", "A", "A", "A", "kV", "kV", "kV", "Hz")  # unit of each column (primary values)
NQ: Final = len(QUANTITIES)

_MAGIC: Final = 0x5245_4331  # "REC1": layout version of the segment
_HEAD, _CAPACITY, _MAGIC_WORD = 0, 1, 2
_HDR_WORDS: Final = 8  # int64 words of header (5 spare)


def _layout(capacity: int) -> tuple[dict[str, int], int]:
    """Byte offset of each column and the segment size, every column 8-byte aligned."""
    off = _HDR_WORDS * 8
    offsets: dict[str, int] = {}
    for name, size in (("seq", 8), ("mono", 8), ("utc", 8), ("values", 8 * NQ), ("status", 8), ("valid", 4)):
        offsets[name] = off
        off += -(-capacity * size // 8) * 8
    return offsets, off


@dataclass(frozen=True, eq=False)
class RecordedWindow:
    """A consistent copy of consecutive recorded samples, oldest first (all arrays have the same length N)."""

    mono_ns: npt.NDArray[np.int64]  # monotonic ns of each cycle (the cycle's `now`)
    utc_ns: npt.NDArray[np.int64]  # UTC epoch ns sampled with it
    values: npt.NDArray[np.float64]  # (N, 8): ia ib ic in va vb vc f (A, A, A, A, kV, kV, kV, Hz)
    valid: npt.NDArray[np.uint32]  # V_* bits of each sample (protection.measurements)
    status: npt.NDArray[np.uint64]  # bit 2*i: element i picked up, bit 2*i+1: element i tripped

    def __len__(self) -> int:
        return len(self.mono_ns)


class SampleRecorder:
    """Circular buffer of the cycle's samples. ``record`` on the cycle thread only; ``window`` anywhere else."""

    __slots__ = (
        "_buf",
        "_cap",
        "_hdr",
        "_head",
        "_mono",
        "_owner",
        "_seq",
        "_shm",
        "_status",
        "_utc",
        "_valid",
        "_values",
        "_w",
        "_whdr",
        "_wmono",
        "_wseq",
        "_wstatus",
        "_wutc",
        "_wval",
        "_wvalid",
        "name",
    )

    def __init__(self, buf: memoryview | bytearray, capacity: int, shm: shared_memory.SharedMemory | None) -> None:
        self._shm = shm
        self._buf = buf
        self._cap = capacity
        offs, _ = _layout(capacity)
        # Reader side: numpy views, made once.
        self._hdr: npt.NDArray[np.int64] = np.ndarray((_HDR_WORDS,), dtype=np.int64, buffer=buf)
        self._seq: npt.NDArray[np.uint64] = np.ndarray((capacity,), dtype=np.uint64, buffer=buf, offset=offs["seq"])
        self._mono: npt.NDArray[np.int64] = np.ndarray((capacity,), dtype=np.int64, buffer=buf, offset=offs["mono"])
        self._utc: npt.NDArray[np.int64] = np.ndarray((capacity,), dtype=np.int64, buffer=buf, offset=offs["utc"])
        self._values: npt.NDArray[np.float64] = np.ndarray(
            (capacity, NQ), dtype=np.float64, buffer=buf, offset=offs["values"]
        )
        self._status: npt.NDArray[np.uint64] = np.ndarray(
            (capacity,), dtype=np.uint64, buffer=buf, offset=offs["status"]
        )
        self._valid: npt.NDArray[np.uint32] = np.ndarray((capacity,), dtype=np.uint32, buffer=buf, offset=offs["valid"])
        # Writer side: typed memoryviews, made once (an item store into a memoryview is cheaper than into numpy).
        mv = memoryview(buf)
        self._w = mv
        self._whdr = mv[: _HDR_WORDS * 8].cast("q")
        self._wseq = mv[offs["seq"] : offs["seq"] + capacity * 8].cast("Q")
        self._wmono = mv[offs["mono"] : offs["mono"] + capacity * 8].cast("q")
        self._wutc = mv[offs["utc"] : offs["utc"] + capacity * 8].cast("q")
        self._wval = mv[offs["values"] : offs["values"] + capacity * 8 * NQ].cast("d")
        self._wstatus = mv[offs["status"] : offs["status"] + capacity * 8].cast("Q")
        self._wvalid = mv[offs["valid"] : offs["valid"] + capacity * 4].cast("I")
        self._head = int(self._hdr[_HEAD])  # the writer's copy of head
        self._owner = False  # True for the creator of a shared segment: the context manager unlinks it
        self.name = shm.name if shm is not None else ""

    @classmethod
    def local(cls, capacity: int) -> SampleRecorder:
        """A recorder in process memory (tests, or a cycle and its reader in one process)."""
        _check_capacity(capacity)
        r = cls(bytearray(_layout(capacity)[1]), capacity, None)
        r._init_header()
        return r

    @classmethod
    def create(cls, capacity: int) -> SampleRecorder:
        """A new shared-memory recorder of ``capacity`` samples; the caller owns it (``close(unlink=True)``)."""
        _check_capacity(capacity)
        shm = shared_memory.SharedMemory(create=True, size=_layout(capacity)[1])
        assert shm.buf is not None
        r = cls(shm.buf, capacity, shm)
        r._owner = True
        r._init_header()
        return r

    @classmethod
    def attach(cls, name: str) -> SampleRecorder:
        """Open a recorder another process created (it stays the owner). ``ValueError`` if it is not one."""
        shm = shared_memory.SharedMemory(name=name)
        assert shm.buf is not None
        hdr = np.ndarray((_HDR_WORDS,), dtype=np.int64, buffer=shm.buf)
        magic, cap = int(hdr[_MAGIC_WORD]), int(hdr[_CAPACITY])
        del hdr
        if magic != _MAGIC or cap < 1 or _layout(cap)[1] > len(shm.buf):
            shm.close()
            raise ValueError(f"shared memory {name!r} is not a sample recorder (magic {magic:#x}, capacity {cap})")
        return cls(shm.buf, cap, shm)

    def _init_header(self) -> None:
        self._hdr[:] = 0
        self._hdr[_CAPACITY] = self._cap
        self._hdr[_MAGIC_WORD] = _MAGIC

    @property
    def capacity(self) -> int:
        """Samples kept (the newest ``capacity`` ones)."""
        return self._cap

    @property
    def written(self) -> int:
        """Samples ever recorded (reader side: read from the header)."""
        return int(self._hdr[_HEAD])

    def record(self, now_ns: int, utc_ns: int, m: Measurements, status: int) -> None:
        """Store one cycle's sample (cycle thread only). Never blocks; no allocation beyond ints.

        ``now_ns``: the cycle's monotonic time; ``utc_ns``: the wall clock sampled with it; ``m``: the frame after
        the source read it; ``status``: the cycle's picked-up/tripped bits (0 <= status < 2**64).
        """
        j = self._head
        i = j % self._cap
        seq = self._wseq
        seq[i] = 0  # slot being written: a reader that sees 0 (or a changed seq) drops it
        fence()
        self._wmono[i] = now_ns
        self._wutc[i] = utc_ns
        v = self._wval
        b = i * 8
        v[b] = m.ia
        v[b + 1] = m.ib
        v[b + 2] = m.ic
        v[b + 3] = m.i_n
        v[b + 4] = m.va
        v[b + 5] = m.vb
        v[b + 6] = m.vc
        v[b + 7] = m.f
        self._wvalid[i] = m.valid
        self._wstatus[i] = status
        j += 1
        fence()
        seq[i] = j  # written last: the slot holds sample j - 1, complete
        self._head = j
        self._whdr[_HEAD] = j

    def latest_ns(self) -> int:
        """Monotonic ns of the newest sample; -1 before the first one (any thread or process)."""
        h = int(self._hdr[_HEAD])
        if h == 0:
            return -1
        return int(self._mono[(h - 1) % self._cap])

    def window(self, from_ns: int, to_ns: int) -> RecordedWindow | None:
        """A consistent copy of the samples with ``from_ns <= mono_ns <= to_ns`` (any other thread or process).

        - ``None`` when part of the window **has been overwritten** already (older samples existed but are gone and
          the oldest kept one is after ``from_ns``): the record would be incomplete at its start, and waiting will
          not help.
        - A window that reaches past the newest sample is **cut at the newest sample** (not ``None``): a caller that
          needs ``to_ns`` covered waits until ``latest_ns() >= to_ns`` first. So a record can still be made when
          the cycle stopped after the trip.
        - No sample in the range (e.g. before the first one): an empty window.

        It copies the whole buffer once (capacity × 100 bytes), then selects; the writer is never held up.
        """
        if to_ns < from_ns:
            raise ValueError(f"window to_ns {to_ns} is before from_ns {from_ns}")
        cap = self._cap
        h = int(self._hdr[_HEAD])
        lo = max(0, h - cap)
        s1 = self._seq.copy()
        fence()
        mono = self._mono.copy()
        utc = self._utc.copy()
        values = self._values.copy()
        valid = self._valid.copy()
        status = self._status.copy()
        fence()
        s2 = self._seq.copy()
        js = np.arange(lo, h, dtype=np.int64)
        slots = (js % cap).astype(np.intp)
        want = (js + 1).astype(np.uint64)
        ok = (s1[slots] == want) & (s2[slots] == want)
        if not ok.all():  # slots being overwritten: the oldest ones; keep what follows the last bad one
            first = int(np.flatnonzero(~ok)[-1]) + 1
            slots = slots[first:]
            lo += first
        m = mono[slots]
        if lo > 0 and (len(m) == 0 or int(m[0]) > from_ns):
            return None  # samples before the oldest kept one are gone, and the window may have needed them
        a = int(np.searchsorted(m, from_ns, side="left"))
        b = int(np.searchsorted(m, to_ns, side="right"))
        sel = slots[a:b]
        return RecordedWindow(
            mono_ns=mono[sel],
            utc_ns=utc[sel],
            values=values[sel],
            valid=valid[sel],
            status=status[sel],
        )

    def close(self, unlink: bool = False) -> None:
        """Release the mapping (idempotent); ``unlink`` also removes the segment (the creator only)."""
        shm = self._shm
        if shm is None:
            return
        self._shm = None
        for a in ("_whdr", "_wseq", "_wmono", "_wutc", "_wval", "_wstatus", "_wvalid", "_w"):
            getattr(self, a).release()
        # Drop every view into the buffer before closing the mapping.
        for a in ("_hdr", "_seq", "_mono", "_utc", "_values", "_status", "_valid", "_buf"):
            setattr(self, a, None)
        shm.close()
        if unlink:
            shm.unlink()

    def __del__(self) -> None:
        # An instance dropped without close(): release our views first, or SharedMemory's own finaliser fails on
        # "exported pointers". Never unlinks (only an explicit close(unlink=True) or the context manager does).
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> SampleRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(unlink=self._owner)


def _check_capacity(capacity: int) -> None:
    if capacity < 1:
        raise ValueError(f"recorder capacity must be >= 1 (got {capacity})")


__all__ = ["NQ", "QUANTITIES", "UNITS", "RecordedWindow", "SampleRecorder"]

"""The cycle's sample recorder: ring semantics, consistent windows, torn slots, shared memory, the status bits."""

from __future__ import annotations

import sys
import threading
from multiprocessing import shared_memory

import numpy as np
import pytest

from protection.bank import ElementBank
from protection.cycle import Cycle
from protection.measurements import V_ALL, V_VA, Measurements
from protection.recorder import QUANTITIES, SampleRecorder
from protection.settings import OvercurrentSettings, ProtectionSettings
from protection.sources import SampleSlot

MS = 1_000_000
EPOCH = 1_750_000_000 * 1_000_000_000  # UTC ns at mono 0 of the simulated clock
T0 = 1_000 * MS


def frame(k: int) -> Measurements:
    """A frame whose every field is derived from k (so a torn copy is detectable)."""
    return Measurements(
        ia=float(k), ib=2.0 * k, ic=3.0 * k, i_n=4.0 * k, va=5.0 * k, vb=6.0 * k, vc=7.0 * k, f=50.0 + k, valid=k & 0xFF
    )


def fill(rec: SampleRecorder, n: int, start: int = 0) -> None:
    for k in range(start, start + n):
        now = T0 + k * MS
        rec.record(now, EPOCH + now, frame(k), k)


def check_rows(
    w_mono: np.ndarray, w_utc: np.ndarray, values: np.ndarray, valid: np.ndarray, status: np.ndarray
) -> None:
    k = (w_mono - T0) // MS
    assert np.array_equal(w_utc, EPOCH + w_mono)
    expect = np.stack([k * 1.0, k * 2.0, k * 3.0, k * 4.0, k * 5.0, k * 6.0, k * 7.0, 50.0 + k], axis=1)
    assert np.array_equal(values, expect)
    assert np.array_equal(valid, (k & 0xFF).astype(np.uint32))
    assert np.array_equal(status, k.astype(np.uint64))


def test_record_and_window_in_order() -> None:
    rec = SampleRecorder.local(100)
    assert rec.latest_ns() == -1
    w = rec.window(0, 10**18)
    assert w is not None and len(w) == 0
    fill(rec, 50)
    assert rec.latest_ns() == T0 + 49 * MS
    assert rec.written == 50
    w = rec.window(T0 + 10 * MS, T0 + 19 * MS)  # both ends inclusive
    assert w is not None
    assert w.mono_ns.tolist() == [T0 + k * MS for k in range(10, 20)]
    assert w.values.shape == (10, len(QUANTITIES))
    assert (w.mono_ns.dtype, w.utc_ns.dtype, w.values.dtype, w.valid.dtype, w.status.dtype) == (
        np.int64,
        np.int64,
        np.float64,
        np.uint32,
        np.uint64,
    )
    check_rows(w.mono_ns, w.utc_ns, w.values, w.valid, w.status)
    w.values[:] = -1.0  # a copy: the recorder is untouched
    again = rec.window(T0 + 10 * MS, T0 + 19 * MS)
    assert again is not None
    check_rows(again.mono_ns, again.utc_ns, again.values, again.valid, again.status)
    with pytest.raises(ValueError):
        rec.window(T0 + 2 * MS, T0 + MS)


def test_wrap_around_overwritten_window_is_none_future_part_is_cut() -> None:
    rec = SampleRecorder.local(10)
    fill(rec, 25)  # samples 15..24 kept
    w = rec.window(T0 + 15 * MS, T0 + 24 * MS)
    assert w is not None
    assert ((w.mono_ns - T0) // MS).tolist() == list(range(15, 25))
    check_rows(w.mono_ns, w.utc_ns, w.values, w.valid, w.status)
    assert rec.window(T0 + 14 * MS, T0 + 20 * MS) is None  # sample 14 is gone
    # From just after sample 14: what lay between 14 and 15 is unknown (gone), so it is refused too (conservative).
    assert rec.window(T0 + 14 * MS + 1, T0 + 20 * MS) is None
    assert rec.window(0, T0 + 30 * MS) is None
    cut = rec.window(T0 + 20 * MS, T0 + 40 * MS)  # not written yet beyond sample 24: cut at the newest
    assert cut is not None
    assert ((cut.mono_ns - T0) // MS).tolist() == list(range(20, 25))
    empty = rec.window(T0 + 30 * MS, T0 + 40 * MS)
    assert empty is not None and len(empty) == 0


def test_before_the_first_sample_is_not_overwritten() -> None:
    rec = SampleRecorder.local(10)
    fill(rec, 5)
    w = rec.window(0, T0 + 2 * MS)  # the recording started after from_ns: what exists, not None
    assert w is not None
    assert ((w.mono_ns - T0) // MS).tolist() == [0, 1, 2]


def test_slot_being_overwritten_is_dropped_not_torn() -> None:
    rec = SampleRecorder.local(10)
    fill(rec, 25)  # slots hold 15..24; the writer's next sample (25) goes to slot 5, which holds sample 15
    slot = 25 % 10
    rec._wseq[slot] = 0  # the writer is mid-way through sample 25: seq cleared ...
    rec._wval[slot * 8] = 999.0  # ... and some fields already new
    assert rec.window(T0 + 15 * MS, T0 + 24 * MS) is None  # sample 15 is no longer there
    w = rec.window(T0 + 16 * MS, T0 + 24 * MS)
    assert w is not None
    assert ((w.mono_ns - T0) // MS).tolist() == list(range(16, 25))
    check_rows(w.mono_ns, w.utc_ns, w.values, w.valid, w.status)
    rec.record(T0 + 25 * MS, EPOCH + T0 + 25 * MS, frame(25), 25)  # the writer completes sample 25
    w = rec.window(T0 + 16 * MS, T0 + 25 * MS)
    assert w is not None
    check_rows(w.mono_ns, w.utc_ns, w.values, w.valid, w.status)
    assert len(w) == 10


def test_concurrent_writer_never_yields_a_torn_or_misordered_sample() -> None:
    """A writer thread laps a tiny ring while the reader copies windows: every returned row is whole."""
    rec = SampleRecorder.local(16)
    total = 30_000
    reads = 0
    done = threading.Event()

    def writer() -> None:
        fill(rec, total)
        done.set()

    t = threading.Thread(target=writer, name="recorder-writer")
    t.start()
    try:
        while not done.is_set() or reads < 50:
            latest = rec.latest_ns()
            if latest < 0:
                continue
            w = rec.window(latest - 12 * MS, latest)
            reads += 1
            if w is None:
                continue  # overwritten while we looked: allowed, never a torn row
            assert np.all(np.diff(w.mono_ns) == MS)
            check_rows(w.mono_ns, w.utc_ns, w.values, w.valid, w.status)
            if done.is_set() and reads >= 50:
                break
    finally:
        t.join()
    w = rec.window(T0 + (total - 16) * MS, T0 + (total - 1) * MS)
    assert w is not None and len(w) == 16


def test_shared_memory_create_attach_and_close() -> None:
    owner = SampleRecorder.create(64)
    try:
        other = SampleRecorder.attach(owner.name)
        try:
            assert other.capacity == 64
            assert other.latest_ns() == -1
            fill(owner, 70)
            assert other.latest_ns() == T0 + 69 * MS
            w = other.window(T0 + 6 * MS, T0 + 69 * MS)
            assert w is not None and len(w) == 64
            check_rows(w.mono_ns, w.utc_ns, w.values, w.valid, w.status)
            assert other.window(T0 + 5 * MS, T0 + 69 * MS) is None
        finally:
            other.close()
            other.close()  # idempotent
    finally:
        owner.close(unlink=True)
    with pytest.raises(FileNotFoundError):
        SampleRecorder.attach(owner.name)


def test_context_manager_unlinks_only_for_the_creator() -> None:
    with SampleRecorder.create(8) as owner:
        name = owner.name
        with SampleRecorder.attach(name) as other:
            fill(owner, 3)
            assert other.written == 3
        again = SampleRecorder.attach(name)  # still there after the reader closed
        assert again.capacity == 8 and again.written == 3
        again.close()
    with pytest.raises(FileNotFoundError):
        SampleRecorder.attach(name)


def test_attach_refuses_a_segment_that_is_not_a_recorder() -> None:
    shm = shared_memory.SharedMemory(create=True, size=4096)
    try:
        with pytest.raises(ValueError, match="not a sample recorder"):
            SampleRecorder.attach(shm.name)
    finally:
        shm.close()
        shm.unlink()


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SampleRecorder.local(0)
    with pytest.raises(ValueError):
        SampleRecorder.create(0)


def test_record_allocates_no_lasting_objects() -> None:
    rec = SampleRecorder.local(256)
    m = frame(3)
    fill(rec, 300)
    now = T0
    before = sys.getallocatedblocks()
    for k in range(5000):
        now += MS
        rec.record(now, EPOCH + now, m, k)
    assert sys.getallocatedblocks() - before < 50


def test_cycle_records_every_cycle_with_pickup_and_trip_bits() -> None:
    bank = ElementBank(
        ProtectionSettings(
            group1=(
                OvercurrentSettings(name="50N", type="50N", pickup_a=5000.0),
                OvercurrentSettings(name="50P", type="50", pickup_a=1000.0, delay_s=0.01),
            )
        )
    )
    slot = SampleSlot(0.02)
    rec = SampleRecorder.local(200)
    cyc = Cycle(bank, slot, MS, recorder=rec)
    for k in range(60):
        now = T0 + k * MS
        amps = 2000.0 if 20 <= k < 40 else 100.0
        valid = V_ALL & ~V_VA if k == 5 else V_ALL
        slot.publish(now, amps, 100.0, 100.0, 0.0, 6.35, 6.35, 6.35, 50.0, valid)
        cyc.run_once(now, EPOCH + now)
    w = rec.window(T0, T0 + 59 * MS)
    assert w is not None and len(w) == 60
    assert np.array_equal(w.utc_ns, EPOCH + w.mono_ns)
    assert w.values[25, 0] == 2000.0 and w.values[10, 0] == 100.0
    assert w.valid[5] == V_ALL & ~V_VA and w.valid[6] == V_ALL
    st = w.status.astype(np.int64)
    pu, trip = (st >> 2) & 1, (st >> 3) & 1  # element 1 (50P): bits 2 and 3
    assert np.flatnonzero(pu).tolist() == list(range(20, 40))
    assert np.flatnonzero(trip).tolist() == list(range(30, 40))  # 10 ms definite time
    assert not np.any(st & 3)  # 50N never picked up

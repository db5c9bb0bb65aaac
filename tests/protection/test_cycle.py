"""The protection cycle in simulated time: absolute deadlines, overruns, stale sources, the event ring, statistics."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

from protection.bank import ElementBank
from protection.cycle import Cycle
from protection.measurements import V_ALL, Measurements
from protection.output import EV_BLOCKED, EV_PICKUP, EV_TRIP, EV_UNBLOCKED, PH_A
from protection.settings import OvercurrentSettings, ProtectionSettings, UndervoltageSettings
from protection.shm import (
    CEV_OVERRUN,
    CEV_STARTED,
    CEV_VALIDITY,
    ELEMENT_CYCLE,
    HIST_BINS,
    CycleStats,
    EventRing,
    hist_bin,
    hist_bounds_ns,
    hist_percentile_bin,
)
from protection.sources import SampleSlot, SimulatedFeederSpec, StalledSourceSpec, build_source

MS = 1_000_000
EPOCH = 1_750_000_000 * 1_000_000_000  # UTC ns at mono 0 of the fake clock
VN = 6.35


class FakeClock:
    """Simulated monotonic/wall clocks; ``sleep_until`` jumps there (plus an optional wake-up delay)."""

    def __init__(self, start: int = 1_000 * MS) -> None:
        self.t = start
        self.deadlines: list[int] = []
        self.wake_delay: Callable[[int], int] = lambda k: 0

    def mono(self) -> int:
        return self.t

    def wall(self) -> int:
        return EPOCH + self.t

    def sleep_until(self, deadline: int) -> None:
        self.deadlines.append(deadline)
        self.t = max(self.t, deadline) + self.wake_delay(len(self.deadlines) - 1)


class Feed:
    """A link: publishes nominal values (currents from ``amps``) into a SampleSlot each cycle unless stalled.

    Also advances the fake clock by ``cost(k)`` ns per read (the cycle's execution time) and stops the cycle
    after ``cycles`` reads.
    """

    def __init__(self, clock: FakeClock, stop: threading.Event, cycles: int, stale_after_s: float = 0.02) -> None:
        self.clock = clock
        self.stop = stop
        self.cycles = cycles
        self.slot = SampleSlot(stale_after_s)
        self.k = 0
        self.amps: Callable[[int], float] = lambda k: 100.0
        self.cost: Callable[[int], int] = lambda k: 200_000
        self.stalled: Callable[[int], bool] = lambda k: False
        self.valid_seen: list[int] = []

    def read_into(self, m: Measurements, now_ns: int) -> None:
        k = self.k
        if not self.stalled(k):
            a = self.amps(k)
            self.slot.publish(now_ns, a, a, a, 0.0, VN, VN, VN, 50.0, V_ALL)
        self.slot.read_into(m, now_ns)
        self.valid_seen.append(m.valid)
        self.clock.t += self.cost(k)
        self.k += 1
        if self.k >= self.cycles:
            self.stop.set()


def _bank(delay_s: float = 0.0) -> ElementBank:
    return ElementBank(
        ProtectionSettings(
            group1=(
                OvercurrentSettings(name="50P", type="50", pickup_a=600.0, delay_s=delay_s),
                UndervoltageSettings(name="27", type="27", pickup_kv=3.0),
            )
        )
    )


def _cycle(cycles: int, period: int = MS, ring: EventRing | None = None, delay_s: float = 0.0) -> tuple[
    Cycle, FakeClock, Feed, threading.Event
]:
    clock = FakeClock()
    stop = threading.Event()
    feed = Feed(clock, stop, cycles)
    c = Cycle(
        _bank(delay_s),
        feed,
        period,
        ring=ring,
        mono_ns=clock.mono,
        wall_ns=clock.wall,
        sleep_until=clock.sleep_until,
    )
    return c, clock, feed, stop


def _element_records(recs: np.ndarray) -> np.ndarray:
    return recs[recs["element"] != ELEMENT_CYCLE]


def test_deadlines_are_absolute_despite_late_wakeups() -> None:
    c, clock, _feed, stop = _cycle(200)
    start = clock.t
    clock.wake_delay = lambda k: (k * 37_000) % 300_000  # up to 0.3 ms late, varying: must not drift the schedule
    c.run(stop)
    assert clock.deadlines == [start + k * MS for k in range(200)]
    s = c.stats.snapshot()
    assert s.cycles == 200
    assert s.overruns == 0
    assert s.max_lateness_ns == max((k * 37_000) % 300_000 for k in range(200))
    assert s.max_exec_ns == 200_000
    assert int(s.lateness_hist.sum()) == 200


def test_one_ms_period_with_half_period_work_never_overruns() -> None:
    c, _clock, feed, stop = _cycle(1000)
    feed.cost = lambda k: 500_000
    c.run(stop)
    s = c.stats.snapshot()
    assert (s.cycles, s.overruns, s.skipped_slots, s.period_ns) == (1000, 0, 0, MS)


def test_overrun_is_counted_and_slots_skipped_not_burst() -> None:
    c, clock, feed, stop = _cycle(10)
    start = clock.t
    feed.cost = lambda k: 2_500_000 if k == 3 else 100_000  # cycle 3 (due at 3 ms) ends at 5.5 ms
    c.run(stop)
    ks = [(d - start) // MS for d in clock.deadlines]
    assert all((d - start) % MS == 0 for d in clock.deadlines)  # still on the original grid
    assert ks == [0, 1, 2, 3, 6, 7, 8, 9, 10, 11]  # slots 4 and 5 skipped; no two cycles back to back
    s = c.stats.snapshot()
    assert (s.cycles, s.overruns, s.skipped_slots) == (10, 1, 2)
    assert s.max_exec_ns == 2_500_000
    recs = c.ring.read_new()
    over = recs[(recs["element"] == ELEMENT_CYCLE) & (recs["events"] & CEV_OVERRUN != 0)]
    assert len(over) == 1
    assert int(over["phases"][0]) == 2
    assert int(over["mono_ns"][0]) == start + 3 * MS + 2_500_000


def test_stalled_source_goes_stale_blocks_elements_and_the_cycle_keeps_running() -> None:
    c, _clock, feed, stop = _cycle(200)  # stale after 20 ms, 1 ms period
    feed.stalled = lambda k: 50 <= k < 120  # the link stops delivering for 70 cycles
    held = feed.slot.lock
    c.run(stop)
    assert c.stats.snapshot().cycles == 200
    valid = feed.valid_seen
    assert all(v == V_ALL for v in valid[:70])  # the last sample (k=49) is still fresh 20 ms later (k=69)
    assert all(v == 0 for v in valid[70:120])
    assert all(v == V_ALL for v in valid[120:])
    recs = c.ring.read_new()
    el = _element_records(recs)
    blocked = el[el["events"] & EV_BLOCKED != 0]
    unblocked = el[el["events"] & EV_UNBLOCKED != 0]
    assert sorted(blocked["element"].tolist()) == [0, 1]  # 50P and 27 both need the stale quantities
    assert sorted(unblocked["element"].tolist()) == [0, 1]
    assert not held.locked()
    validity = recs[(recs["element"] == ELEMENT_CYCLE) & (recs["events"] & CEV_VALIDITY != 0)]
    assert validity["phases"].tolist() == [V_ALL, 0, V_ALL]


def test_producer_hanging_with_its_lock_held_never_hangs_the_cycle() -> None:
    c, _clock, feed, stop = _cycle(100)
    feed.stalled = lambda k: k >= 10  # the producer stops publishing ...
    lock = feed.slot.lock
    orig = feed.read_into

    def read_into(m: Measurements, now_ns: int) -> None:
        if feed.k == 10:
            lock.acquire()  # ... because it hangs holding the lock (a non-reentrant lock: try-acquire fails)
        orig(m, now_ns)

    feed.read_into = read_into  # type: ignore[method-assign]
    try:
        c.run(stop)
    finally:
        lock.release()
    assert c.stats.snapshot().cycles == 100
    assert feed.slot.lock_misses == 90
    assert feed.valid_seen[-1] == 0
    assert c.bank.element("50P").output.blocked


def test_events_reach_the_ring_with_both_timestamps_in_order() -> None:
    c, clock, feed, stop = _cycle(100, delay_s=0.01)
    start = clock.t
    feed.amps = lambda k: 1500.0 if k >= 20 else 100.0
    c.run(stop)
    recs = c.ring.read_new()
    assert recs["seq"].tolist() == list(range(1, len(recs) + 1))
    assert np.all(np.diff(recs["mono_ns"]) >= 0)
    assert np.all(np.diff(recs["utc_ns"]) >= 0)
    assert np.all(recs["utc_ns"] - recs["mono_ns"] == EPOCH)  # UTC sampled together with the monotonic time
    assert int(recs["events"][0]) == CEV_STARTED and int(recs["phases"][0]) == 1000
    el = _element_records(recs)
    assert el["element"].tolist() == [0, 0]
    assert el["group"].tolist() == [1, 1]
    pickup, trip = el
    assert int(pickup["events"]) == EV_PICKUP and int(pickup["phases"]) == 7
    assert int(trip["events"]) == EV_TRIP
    assert int(pickup["mono_ns"]) == start + 20 * MS  # cycle 20, woken exactly at its slot
    assert int(trip["mono_ns"]) - int(pickup["mono_ns"]) == 10 * MS
    assert c.ring.read_new().size == 0


def test_ring_overflow_is_counted_and_never_blocks() -> None:
    r = EventRing.local(capacity=4)
    assert [r.push(i, EPOCH + i, 0, 1, EV_TRIP, PH_A) for i in range(10)] == [True] * 4 + [False] * 6
    assert r.overflow == 6
    got = r.read_new()
    assert got["mono_ns"].tolist() == [0, 1, 2, 3]
    assert r.push(10, EPOCH + 10, 0, 1, EV_TRIP, PH_A)
    nxt = r.read_new()
    assert nxt["seq"].tolist() == [5] and nxt["mono_ns"].tolist() == [10]
    # wrap-around keeps order
    for i in range(11, 17):
        r.push(i, EPOCH + i, 0, 1, 0, 0)
    assert r.read_new()["mono_ns"].tolist() == [11, 12, 13, 14]
    assert r.overflow == 8


def test_cycle_with_a_full_ring_keeps_running() -> None:
    ring = EventRing.local(capacity=2)
    c, _clock, feed, stop = _cycle(100, ring=ring)
    feed.amps = lambda k: 1500.0 if k % 2 else 100.0  # pickup/trip then dropout every cycle: many events
    c.run(stop)
    assert c.stats.snapshot().cycles == 100
    assert ring.overflow > 90
    assert ring.read_new().size == 2


def test_shared_memory_ring_and_stats_round_trip() -> None:
    ring = EventRing.create(8)
    stats = CycleStats.create()
    try:
        reader = EventRing.attach(ring.name)
        sreader = CycleStats.attach(stats.name)
        ring.push(5, EPOCH + 5, 2, 1, EV_TRIP, PH_A)
        stats.record(123, 4_000, 7_000, V_ALL)
        got = reader.read_new()
        assert got["element"].tolist() == [2] and got["utc_ns"].tolist() == [EPOCH + 5]
        s = sreader.snapshot()
        got_stats = (s.cycles, s.max_exec_ns, s.max_lateness_ns, s.valid, s.sched_fifo, s.cpu)
        assert got_stats == (1, 7_000, 4_000, V_ALL, -1, -1)
        reader.close()
        sreader.close()
        assert ring.pending() == 0
    finally:
        ring.close(unlink=True)
        stats.close(unlink=True)
    assert stats.snapshot().cycles == 1  # the last figures stay readable after close


def test_histogram_percentiles_match_numpy() -> None:
    rng = np.random.default_rng(7)
    data = np.concatenate(
        [rng.lognormal(np.log(50_000), 0.6, 20_000), rng.uniform(0, 5_000_000, 50), [0, 10, 12_000_000_000]]
    ).astype(np.int64)
    stats = CycleStats.local()
    for x in data.tolist():
        stats.record(0, x, 1, V_ALL)
    s = stats.snapshot()
    assert s.lateness_hist.shape == (HIST_BINS,)
    assert int(s.lateness_hist.sum()) == data.size
    assert np.array_equal(s.lateness_hist, np.bincount([hist_bin(x) for x in data.tolist()], minlength=HIST_BINS))
    for q in (0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0):
        truth = float(np.percentile(data, q, method="inverted_cdf"))
        lo, hi = hist_bounds_ns(hist_percentile_bin(s.lateness_hist, q))
        assert lo <= truth < hi, (q, truth, lo, hi)
        assert hi / max(lo, 1000.0) <= 1.34 or hi == 1000.0 or hi == float("inf")  # 8 bins per decade
    assert s.lateness_percentile_us(50) == hist_bounds_ns(hist_percentile_bin(s.lateness_hist, 50))[1] / 1000
    assert np.isnan(CycleStats.local().snapshot().lateness_percentile_us(99))


def test_period_below_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="below the minimum"):
        Cycle(_bank(), SampleSlot(), 50_000)


def test_simulated_feeder_source_fault_and_stall() -> None:
    t0 = 5_000 * MS
    src = build_source(
        SimulatedFeederSpec(fault_at_s=0.1, fault_factor=10.0, fault_duration_s=0.1, stall_after_s=0.5), t0
    )
    m = Measurements(valid=0)
    src.read_into(m, t0 + 50 * MS)
    before = m.ia
    assert m.valid == V_ALL and 50 < before < 600 and 5.5 < m.va < 7.0 and 49.9 < m.f < 50.1
    src.read_into(m, t0 + 150 * MS)
    assert m.ia == pytest.approx(10 * before, rel=0.01) and m.i_n > 5 * before
    src.read_into(m, t0 + 250 * MS)
    assert m.ia == pytest.approx(before, rel=0.01)
    src.read_into(m, t0 + 490 * MS)
    src.read_into(m, t0 + 505 * MS)
    assert m.valid == V_ALL  # stalled at 500 ms, the last sample is 10 ms old: still fresh
    src.read_into(m, t0 + 511 * MS)
    assert m.valid == 0  # the last sample (490 ms) is 21 ms old
    stalled = build_source(StalledSourceSpec(), t0)
    stalled.read_into(m, t0)
    assert m.valid == 0
    with pytest.raises(TypeError):
        build_source(object(), t0)  # type: ignore[arg-type]


def test_elements_are_timed_from_the_sample_not_from_the_cycle() -> None:
    """A fault sampled 3 ms before the cycle reads it is timed from the sample; time never runs backwards."""
    settings = ProtectionSettings(group1=(OvercurrentSettings(name="50P", type="50", pickup_a=600.0, delay_s=0.01),))
    slot = SampleSlot(stale_after_s=0.02)
    ring = EventRing.local()
    cyc = Cycle(ElementBank(settings), slot, 5 * MS, ring=ring, wall_ns=lambda: EPOCH)
    t0 = 1_000 * MS
    slot.publish(t0, 100.0, 100.0, 100.0, 0.0, VN, VN, VN, 50.0)
    cyc.run_once(t0 + 1 * MS)
    slot.publish(t0 + 2 * MS, 3000.0, 3000.0, 3000.0, 0.0, VN, VN, VN, 50.0)  # the fault, measured at +2 ms
    cyc.run_once(t0 + 5 * MS)  # the cycle sees it at +5 ms
    slot.publish(t0 + 11 * MS, 3000.0, 3000.0, 3000.0, 0.0, VN, VN, VN, 50.0)
    cyc.run_once(t0 + 12 * MS)  # 9 ms after the pickup sample: not yet
    slot.publish(t0 + 12 * MS, 3000.0, 3000.0, 3000.0, 0.0, VN, VN, VN, 50.0)
    cyc.run_once(t0 + 13 * MS)  # 10 ms after it: trips (the cycle's own clock says only 8 ms)
    slot.publish(t0 + 4 * MS, 3000.0, 3000.0, 3000.0, 0.0, VN, VN, VN, 50.0)  # an older sample: clock holds
    cyc.run_once(t0 + 14 * MS)
    recs = _element_records(ring.read_new())
    assert [(int(r["mono_ns"]) - t0, int(r["events"])) for r in recs] == [(2 * MS, EV_PICKUP), (12 * MS, EV_TRIP)]
    assert int(recs[0]["utc_ns"]) == EPOCH + 2 * MS - 5 * MS  # UTC follows: the wall clock read at +5 ms, less 3
    assert cyc._step_ns == t0 + 12 * MS

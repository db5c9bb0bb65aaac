"""The protection process: spawned, trips on an injected fault, reports through shared memory, stops, dies."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest

from protection.measurements import V_ALL
from protection.output import EV_BLOCKED, EV_DROPOUT, EV_PICKUP, EV_TRIP
from protection.process import ProtectionHandle, start_protection_process
from protection.settings import OvercurrentSettings, ProtectionSettings
from protection.shm import ELEMENT_CYCLE, EVENT_DTYPE
from protection.sources import SimulatedFeederSpec, StalledSourceSpec
from tests.waiting import wait_until

SETTINGS = ProtectionSettings(
    group1=(
        OvercurrentSettings(name="50N", type="50N", pickup_a=5000.0),
        OvercurrentSettings(name="50P", type="50", pickup_a=600.0, delay_s=0.02),
    )
)
WAIT_S = 15.0  # generous bound for a condition on a loaded CI machine; tests end as soon as it holds


class Collector:
    """Accumulates the records read from a handle's ring."""

    def __init__(self, h: ProtectionHandle) -> None:
        self.h = h
        self.recs = np.empty(0, dtype=EVENT_DTYPE)

    def poll(self) -> np.ndarray:
        self.recs = np.concatenate([self.recs, self.h.events()])
        return self.recs

    def has(self, element: int, bit: int) -> bool:
        r = self.poll()
        return bool(np.any((r["element"] == element) & (r["events"] & bit != 0)))


@pytest.fixture
def handles() -> Iterator[list[ProtectionHandle]]:
    started: list[ProtectionHandle] = []
    yield started
    for h in started:
        h.stop()


def test_injected_fault_trip_reaches_the_parent_and_stop_works(handles: list[ProtectionHandle]) -> None:
    spec = SimulatedFeederSpec(fault_at_s=0.05, fault_factor=10.0)  # load ~200 A -> ~2000 A, above 600 A
    h = start_protection_process(SETTINGS, spec, period_s=0.001)
    handles.append(h)
    assert h.alive()
    c = Collector(h)
    wait_until(lambda: c.has(1, EV_TRIP), WAIT_S, "a TRIP event from the process")
    r = c.recs
    el = r[r["element"] == 1]
    assert h.element_name(1, 1) == "50P"
    pickup = el[el["events"] & EV_PICKUP != 0][0]
    trip = el[el["events"] & EV_TRIP != 0][0]
    assert int(trip["mono_ns"]) - int(pickup["mono_ns"]) >= 20_000_000  # the 20 ms definite time
    assert int(trip["utc_ns"]) > int(pickup["utc_ns"])
    assert abs(int(trip["utc_ns"]) - time.time_ns()) < 60 * 10**9  # a real UTC time, not a monotonic one
    assert r["seq"].tolist() == list(range(1, len(r) + 1))
    assert np.all(np.diff(r["mono_ns"]) >= 0)
    assert not np.any((r["element"] == 0) & (r["events"] & EV_TRIP != 0))  # 50N (5000 A) does not trip
    s = h.stats()
    assert s.state == "running" and s.period_ns == 1_000_000 and s.cycles > 0 and s.pid == h.pid
    assert h.stop() == 0
    assert not h.alive()
    assert h.stop() == 0  # idempotent
    assert h.stats().state == "stopped"
    assert h.events().size == 0


def test_stalled_source_blocks_elements_and_the_cycle_keeps_running(handles: list[ProtectionHandle]) -> None:
    h = start_protection_process(SETTINGS, StalledSourceSpec(), period_s=0.001, fifo_priority=0, cpu=-1)
    handles.append(h)
    c = Collector(h)
    wait_until(lambda: c.has(0, EV_BLOCKED) and c.has(1, EV_BLOCKED), WAIT_S, "both elements blocked")
    first = h.stats().cycles
    wait_until(lambda: h.stats().cycles >= first + 50, WAIT_S, "cycles while blocked")  # still cycling
    assert h.stats().valid == 0
    assert not np.any(c.poll()["events"][c.recs["element"] != ELEMENT_CYCLE] & EV_TRIP)
    assert h.stop() == 0


def test_killed_child_is_reported_not_alive(handles: list[ProtectionHandle]) -> None:
    h = start_protection_process(SETTINGS, SimulatedFeederSpec(), period_s=0.005)
    handles.append(h)
    assert h.alive() and h.pid is not None
    os.kill(h.pid, signal.SIGKILL)
    assert h.wait_exit(WAIT_S)
    assert not h.alive()
    assert h.stop() == -signal.SIGKILL
    assert h.stop() == -signal.SIGKILL


def test_scheduling_outcome_is_reported(handles: list[ProtectionHandle]) -> None:
    h = start_protection_process(SETTINGS, SimulatedFeederSpec(), period_s=0.005)
    handles.append(h)
    s = h.stats()
    # Whatever this machine permits: either in force or refused with an errno, never "not asked".
    assert s.sched_fifo in (0, 1)
    assert (s.sched_fifo == 1) == (s.sched_errno == 0)
    assert (s.sched_fifo == 1) == (s.fifo_priority > 0)
    assert (s.cpu >= 0) == (s.affinity_errno == 0)
    if s.cpu >= 0:
        assert s.cpu in os.sched_getaffinity(0)
    h.stop()
    off = start_protection_process(SETTINGS, SimulatedFeederSpec(), period_s=0.005, fifo_priority=0, cpu=-1)
    handles.append(off)
    s = off.stats()
    assert (s.sched_fifo, s.cpu) == (-1, -1)  # not asked: reported as such
    off.stop()


def test_too_short_period_is_refused() -> None:
    with pytest.raises(ValueError, match="below the minimum"):
        start_protection_process(SETTINGS, StalledSourceSpec(), period_s=1e-5)


def test_fault_at_the_measurement_ied_trips_the_breaker_through_its_coil(handles: list[ProtectionHandle]) -> None:
    """End to end over real Modbus TCP: rig IED → fast source → cycle → trip output → rig breaker."""
    from hil_tests.protection_rig import TRIP_COIL, ProtectionRig
    from protection.shm import ELEMENT_OUTPUT, OEV_CONFIRMED, OEV_LINK_UP, OEV_SENT

    with ProtectionRig() as rig:
        settings = ProtectionSettings(group1=(OvercurrentSettings(name="50P", type="50", pickup_a=1000.0,
                                                                  delay_s=0.05),))
        h = start_protection_process(
            settings, rig.source_spec(), period_s=0.001, outputs=(rig.output_spec("cb", elements=("50P",)),)
        )
        handles.append(h)
        c = Collector(h)
        wait_until(lambda: c.has(ELEMENT_OUTPUT, OEV_LINK_UP), WAIT_S, "the trip output connected")
        wait_until(lambda: h.stats().valid == V_ALL, WAIT_S, "valid measurements from the IED")
        assert rig.breaker_closed  # load current only: no trip
        assert not c.has(0, EV_PICKUP)
        inception = rig.inject_fault(multiple_of=5.0)  # 3000 A on every phase
        wait_until(lambda: rig.arrival_ns(TRIP_COIL) is not None, WAIT_S, "the trip coil write at the breaker")
        wait_until(lambda: c.has(ELEMENT_OUTPUT, OEV_CONFIRMED), WAIT_S, "the breaker's echo")
        arrival = rig.arrival_ns(TRIP_COIL)
        assert arrival is not None
        r = c.recs
        trip = r[(r["element"] == 0) & (r["events"] & EV_TRIP != 0)][0]
        pickup = r[(r["element"] == 0) & (r["events"] & EV_PICKUP != 0)][0]
        sent = r[(r["element"] == ELEMENT_OUTPUT) & (r["events"] & OEV_SENT != 0)][0]
        # one system-wide monotonic clock. Elements are timed from the sample's time, when its poll went out:
        # a poll in flight at the inception carries the fault but predates it by less than one round trip,
        # which the source's timeout bounds. Then +50 ms definite time, trip, send, arrival in that order.
        assert inception - round(rig.source_spec().timeout_s * 1e9) < int(pickup["mono_ns"])
        assert int(trip["mono_ns"]) - int(pickup["mono_ns"]) >= 50_000_000
        assert int(trip["mono_ns"]) <= int(sent["mono_ns"]) <= arrival
        assert not rig.breaker_closed  # the breaker opened: the current falls to zero
        wait_until(lambda: c.has(0, EV_DROPOUT), WAIT_S, "the element dropping out once the current is gone")
        assert h.stop() == 0

"""The deterministic protection cycle: read the source, step the elements, publish events and statistics.

:class:`Cycle` owns an :class:`~protection.bank.ElementBank`, a :class:`~protection.sources.MeasurementSource`
and the one :class:`~protection.measurements.Measurements` frame. ``run(stop)`` keeps **absolute** deadlines:
slot ``k`` is due at ``start + k * period``. A cycle whose work ends after the next slot's deadline is an
**overrun**: it is counted (statistics and a ``CEV_OVERRUN`` record in the event ring, the alarm), and the cycle
continues at the next slot still in the future. Missed slots are skipped, never run back to back (no burst), and
the phase of the schedule never drifts.

Per cycle (``run_once(now)``): the source copies its latest sample into the frame without blocking (stale
quantities invalid), the active group's elements step at the sample's measurement time (``m.sample_ns`` when the
source sets it, else ``now``; never later than ``now``, never earlier than the previous step), and every element
output with events becomes one ring record carrying that time and the UTC time derived from it. A change of the
frame's validity word becomes a ``CEV_VALIDITY`` record. Nothing is allocated here beyond the elements' own
transient ints.

Optional collaborators, both called on the cycle thread and both bound never to block:

- ``outputs`` (:class:`TripSink`, e.g. :class:`protection.outputs.TripOutputs`): ``on_trip(element, group,
  decision_ns)`` right after an element reports ``EV_TRIP`` (before its ring record is written, so the command is
  on its way first; ``decision_ns`` is the monotonic time sampled at that point), and ``drain_into(ring, now,
  utc)`` once per cycle to publish the outputs' outcome records (the cycle stays the ring's only producer).
- ``recorder`` (:class:`SampleSink`, e.g. :class:`protection.recorder.SampleRecorder`): ``record(now, utc, m,
  status)`` once per cycle after the step, for fault records (COMTRADE). ``status`` has bit ``2*i`` set while
  element ``i`` of the active group is picked up and bit ``2*i+1`` while it is tripped (elements 0..31).

Clock and sleep are injected (``mono_ns``, ``wall_ns``, ``sleep_until``) so tests step simulated time. The cycle
thread is the only caller of ``run``/``run_once``; ``stop`` may be set from any thread and is seen at the next
slot (within one period).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from protection.bank import ElementBank
from protection.measurements import Measurements
from protection.output import EV_TRIP
from protection.shm import CEV_GROUP, CEV_OVERRUN, CEV_STARTED, CEV_VALIDITY, ELEMENT_CYCLE, CycleStats, EventRing
from protection.sources import MeasurementSource

MIN_PERIOD_NS = 100_000  # 0.1 ms: below this the interpreter cannot keep up
DEFAULT_PERIOD_NS = 5_000_000  # 5 ms


STATUS_ELEMENTS = 32  # elements whose picked-up/tripped state fits the recorder's 64-bit status word


class TripSink(Protocol):
    """Where trip decisions go (see the module doc). Both methods run on the cycle thread and never block."""

    def on_trip(self, element: int, group: int, decision_ns: int) -> None: ...

    def drain_into(self, ring: EventRing, now_ns: int, utc_ns: int) -> int: ...


class SampleSink(Protocol):
    """Where each cycle's sample goes (see the module doc). Runs on the cycle thread and never blocks."""

    def record(self, now_ns: int, utc_ns: int, m: Measurements, status: int) -> None: ...


def sleep_until_monotonic(deadline_ns: int) -> None:
    """Real sleep until ``time.monotonic_ns() >= deadline_ns`` (returns at once if it already is)."""
    d = deadline_ns - time.monotonic_ns()
    if d > 0:
        time.sleep(d / 1e9)


class Cycle:
    """One protection cycle loop. Not thread-safe: one cycle thread runs it; ``stats``/``ring`` are read elsewhere."""

    def __init__(
        self,
        bank: ElementBank,
        source: MeasurementSource,
        period_ns: int = DEFAULT_PERIOD_NS,
        *,
        ring: EventRing | None = None,
        stats: CycleStats | None = None,
        mono_ns: Callable[[], int] = time.monotonic_ns,
        wall_ns: Callable[[], int] = time.time_ns,
        sleep_until: Callable[[int], None] = sleep_until_monotonic,
        idle: Callable[[int], None] | None = None,
        outputs: TripSink | None = None,
        recorder: SampleSink | None = None,
    ) -> None:
        if period_ns < MIN_PERIOD_NS:
            raise ValueError(f"cycle period {period_ns} ns is below the minimum {MIN_PERIOD_NS} ns")
        self.bank = bank
        self.source = source
        self.period_ns = period_ns
        self.ring = ring if ring is not None else EventRing.local()  # events out (owner: whoever made it)
        self.stats = stats if stats is not None else CycleStats.local()
        self.stats.set_fields(period_ns=period_ns)
        self.m = Measurements(valid=0)  # the cycle's frame, overwritten in place each cycle
        self._mono = mono_ns
        self._wall = wall_ns
        self._sleep_until = sleep_until
        self._idle = idle  # called after a cycle that ended in time, with the next deadline (a safe point)
        self._last_valid = -1  # validity word of the previous cycle; -1 = none yet
        self._step_ns = -1  # time the elements were last stepped at (sample time, see run_once)
        self.outputs = outputs
        self.recorder = recorder
        self.status = 0  # picked-up/tripped bits of the active group's elements (see the module doc)

    def run_once(self, now_ns: int, utc_ns: int | None = None) -> None:
        """One cycle at monotonic ``now_ns`` (``utc_ns``: the wall clock sampled with it; default: sampled now)."""
        if utc_ns is None:
            utc_ns = self._wall()
        m = self.m
        ring = self.ring
        self.source.read_into(m, now_ns)
        if m.valid != self._last_valid:
            self._last_valid = m.valid
            ring.push(now_ns, utc_ns, ELEMENT_CYCLE, 0, CEV_VALIDITY, m.valid)
        # Elements are stepped at the time the values were measured, not the time this cycle got to them: a
        # fault is timed from the sample that first showed it (like a relay timing from its samples), so the
        # wait between the sample and the cycle is not added to every operate time. Never after now, never
        # before the previous step (a source handing over an older sample does not turn the clock back).
        t = m.sample_ns
        if t < 0 or t > now_ns:
            t = now_ns
        if t < self._step_ns:
            t = self._step_ns
        self._step_ns = t
        bank = self.bank
        outs = bank.step(m, t)
        group = bank.active_group
        outputs = self.outputs
        for i in range(len(outs)):
            o = outs[i]
            ev = o.events
            if ev:
                if ev & EV_TRIP and outputs is not None:
                    outputs.on_trip(i, group, self._mono())
                ring.push(o.event_ns, utc_ns + (o.event_ns - now_ns), i, group, ev, o.phases)  # sample time
                if i < STATUS_ELEMENTS:
                    bits = (1 if o.picked_up else 0) | (2 if o.tripped else 0)
                    self.status = (self.status & ~(3 << (2 * i))) | (bits << (2 * i))
        if self.recorder is not None:
            self.recorder.record(now_ns, utc_ns, m, self.status)
        if outputs is not None:
            outputs.drain_into(ring, now_ns, utc_ns)

    def switch_group(self, group: int, now_ns: int, utc_ns: int) -> None:
        """Put settings ``group`` in service at ``now_ns`` (cycle thread): releases are published as events."""
        bank = self.bank
        if group == bank.active_group:
            return
        old = bank.active_group
        released = bank.switch_group(group, now_ns)
        names = [e.name for e in bank.elements(old)]
        for o in released:
            self.ring.push(now_ns, utc_ns, names.index(o.name), old, o.events, o.phases)
        self.ring.push(now_ns, utc_ns, ELEMENT_CYCLE, 0, CEV_GROUP, group)
        self.status = 0
        self.stats.set_fields(active_group=group)

    def run(self, stop: threading.Event) -> None:
        """Run cycles on absolute deadlines until ``stop`` is set (checked once per slot)."""
        mono = self._mono
        wall = self._wall
        sleep_until = self._sleep_until
        period = self.period_ns
        stats = self.stats
        ring = self.ring
        start = mono()
        k = 0
        deadline = start
        ring.push(start, wall(), ELEMENT_CYCLE, 0, CEV_STARTED, period // 1000)
        stats.set_fields(active_group=self.bank.active_group)
        while not stop.is_set():
            sleep_until(deadline)
            woke = mono()
            utc = wall()
            group = stats.take_group_request()
            if group:
                self.switch_group(group, woke, utc)
            self.run_once(woke, utc)
            end = mono()
            stats.record(woke, woke - deadline, end - woke, self.m.valid)
            k += 1
            deadline = start + k * period
            if end > deadline:  # overran the next slot: skip to the next one in the future, never burst
                nxt = (end - start) // period + 1
                skipped = nxt - k
                k = nxt
                deadline = start + k * period
                stats.overrun(skipped)
                ring.push(end, utc + (end - woke), ELEMENT_CYCLE, 0, CEV_OVERRUN, skipped)
            elif self._idle is not None:
                self._idle(deadline)

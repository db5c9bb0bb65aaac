"""The deterministic protection cycle: read the source, step the elements, publish events and statistics.

:class:`Cycle` owns an :class:`~protection.bank.ElementBank`, a :class:`~protection.sources.MeasurementSource`
and the one :class:`~protection.measurements.Measurements` frame. ``run(stop)`` keeps **absolute** deadlines:
slot ``k`` is due at ``start + k * period``. A cycle whose work ends after the next slot's deadline is an
**overrun**: it is counted (statistics and a ``CEV_OVERRUN`` record in the event ring, the alarm), and the cycle
continues at the next slot still in the future. Missed slots are skipped, never run back to back (no burst), and
the phase of the schedule never drifts.

Per cycle (``run_once(now)``): the source copies its latest sample into the frame without blocking (stale
quantities invalid), the active group's elements step at ``now``, and every element output with events becomes
one ring record carrying the monotonic ``now`` and the UTC time sampled with it. A change of the frame's validity
word becomes a ``CEV_VALIDITY`` record. Nothing is allocated here beyond the elements' own transient ints.

Clock and sleep are injected (``mono_ns``, ``wall_ns``, ``sleep_until``) so tests step simulated time. The cycle
thread is the only caller of ``run``/``run_once``; ``stop`` may be set from any thread and is seen at the next
slot (within one period).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from protection.bank import ElementBank
from protection.measurements import Measurements
from protection.shm import CEV_OVERRUN, CEV_STARTED, CEV_VALIDITY, ELEMENT_CYCLE, CycleStats, EventRing
from protection.sources import MeasurementSource

MIN_PERIOD_NS = 100_000  # 0.1 ms: below this the interpreter cannot keep up
DEFAULT_PERIOD_NS = 5_000_000  # 5 ms


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
        bank = self.bank
        outs = bank.step(m, now_ns)
        group = bank.active_group
        for i in range(len(outs)):
            o = outs[i]
            if o.events:
                ring.push(o.event_ns, utc_ns + (o.event_ns - now_ns), i, group, o.events, o.phases)

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
        while not stop.is_set():
            sleep_until(deadline)
            woke = mono()
            utc = wall()
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

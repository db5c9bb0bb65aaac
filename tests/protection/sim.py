"""Stepping helpers for element tests: simulated time in int ns, 1 ms steps by default. No wall clock."""

from __future__ import annotations

from collections.abc import Callable

from protection.elements import Element
from protection.measurements import Measurements
from protection.output import EV_PICKUP, EV_TRIP

MS = 1_000_000
STEP = MS  # 1 ms
STEP_S = STEP * 1e-9


class Sim:
    """Owns a clock and a measurement frame; steps one element."""

    def __init__(self, element: Element, now: int = 1_000 * MS, step: int = STEP) -> None:
        self.el = element
        self.m = Measurements()
        self.now = now
        self.step_ns = step
        self.events: list[tuple[int, int]] = []  # (now, events) of every step with events

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self.now += self.step_ns
            out = self.el.step(self.m, self.now)
            if out.events:
                self.events.append((self.now, out.events))

    def run_for(self, seconds: float) -> None:
        self.step(round(seconds * 1e9 / self.step_ns))

    def run_until(self, cond: Callable[[], bool], max_s: float) -> float | None:
        """Step until ``cond()``; returns the simulated time (s) it took, None if it never happened."""
        start = self.now
        limit = start + round(max_s * 1e9)
        while self.now < limit:
            self.step()
            if cond():
                return (self.now - start) * 1e-9
        return None

    def first(self, ev: int, after: int = 0) -> int | None:
        for t, e in self.events:
            if t > after and e & ev:
                return t
        return None

    def trip_delay_s(self) -> float | None:
        """Time from the first pickup to the first trip, seconds."""
        p = self.first(EV_PICKUP)
        if p is None:
            return None
        t = self.first(EV_TRIP, p - 1)
        return None if t is None else (t - p) * 1e-9

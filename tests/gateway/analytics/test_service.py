"""AnalyticsService: feeds each analytic only its inputs, off the loop, and stores what comes back."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import numpy.typing as npt

from gateway.analytics.base import AnalyticsOutput, DerivedReading
from gateway.analytics.service import AnalyticsService, derived_points
from gateway.model import Event, PointInfo, ReadingBatch
from tests.waiting import wait_for


class Summer:
    """A minimal analytic: sums the values of its inputs; emits the sum and an event when it passes 10."""

    def __init__(self, inputs: list[str], fail: bool = False) -> None:
        self._inputs = inputs
        self.total = 0.0
        self.fed: list[tuple[list[int], list[float]]] = []
        self.threads: set[str] = set()
        self.fail = fail
        self.alarmed = False

    def inputs(self) -> list[str]:
        return self._inputs

    def derived_points(self) -> list[PointInfo]:
        return [PointInfo("calc.sum", "calc", "sum", "")]

    def feed(self, idx: npt.NDArray[np.int32], ts: npt.NDArray[np.int64], value: npt.NDArray[np.float64],
             quality: npt.NDArray[np.uint16]) -> None:  # fmt: skip
        self.threads.add(threading.current_thread().name)
        self.fed.append((idx.tolist(), value.tolist()))
        self.total += float(value.sum())

    def advance(self, now_ns: int) -> AnalyticsOutput:
        if self.fail:
            raise RuntimeError("boom")
        out = AnalyticsOutput(readings=[DerivedReading("calc.sum", now_ns, self.total)])
        if self.total > 10 and not self.alarmed:
            self.alarmed = True
            out.events.append(Event(now_ns, "alarm", "sum above 10", priority=1))
        return out


async def test_rows_reach_their_analytic_off_the_loop_and_outputs_are_stored() -> None:
    ids = {"a.x": 1, "a.y": 2, "b.z": 3, "calc.sum": 4}
    stored: list[ReadingBatch] = []
    events: list[Event] = []
    summer, broken = Summer(["a.y", "b.z"]), Summer(["a.x"], fail=True)
    assert [p.name for p in derived_points([summer, broken])] == ["calc.sum"]
    def store(b: ReadingBatch) -> bool:
        stored.append(b)
        return True

    svc = AnalyticsService([summer, broken], ids, store, events.append, wall_ns=lambda: 1000, tick_s=0.01)
    task = asyncio.create_task(svc.run())
    svc.tap(ReadingBatch.of(np.array([1, 2, 3, 4], np.int64), np.array([1, 2, 3, 2], np.int32),
                            np.array([100.0, 5.0, 4.0, 3.0]), 0))  # fmt: skip
    await wait_for(lambda: bool(events), what="the analytic's alarm")
    svc.stop()
    await task
    assert summer.fed[0] == ([0, 1, 0], [5.0, 4.0, 3.0])  # only its inputs, as indexes into inputs()
    assert summer.threads == {next(iter(summer.threads))} and "analytics" in next(iter(summer.threads))
    assert [e.message for e in events] == ["sum above 10"]
    sums = [b for b in stored if 4 in b.point_id.tolist()]
    assert sums and float(sums[-1].value[-1]) == 12.0
    assert svc.errors >= 1  # the broken analytic is counted, the other one went on
    assert svc.status()["events"] == 1

"""EmitBuffer: in order, bounded by one budget for all runners, and what it gives up is reported once."""

from __future__ import annotations

import json

import numpy as np

from gateway.emit_buffer import EmitBuffer, PendingBudget, gap_reporter
from gateway.model import Event, ReadingBatch


def rb(first_ts: int, n: int = 10) -> ReadingBatch:
    ts = np.arange(first_ts, first_ts + n, dtype=np.int64)
    return ReadingBatch.of(ts, np.ones(n, np.int32), ts.astype(np.float64), 0)


class Store:
    def __init__(self) -> None:
        self.accept = False
        self.got: list[int] = []

    def offer(self, b: ReadingBatch) -> bool:
        if self.accept:
            self.got.extend(b.ts.tolist())
        return self.accept


def test_nothing_is_dropped_within_the_budget_and_order_is_kept() -> None:
    store, budget = Store(), PendingBudget(100)
    buf = EmitBuffer(store.offer, "link a", budget=budget)
    for t in range(0, 100, 10):
        buf.add(rb(t))
        assert not buf.flush()
    assert budget.rows == 100 and budget.dropped == 0
    store.accept = True
    assert buf.flush()
    assert store.got == list(range(100)) and budget.rows == 0


def test_past_the_shared_budget_the_oldest_go_and_a_gap_is_recorded_once() -> None:
    store, budget = Store(), PendingBudget(50)
    events: list[Event] = []
    a = EmitBuffer(store.offer, "link a", budget=budget, on_gap=gap_reporter("a", lambda: 123, events.append))
    b = EmitBuffer(store.offer, "link b", budget=budget)
    b.add(rb(1000, 30))  # another link holds 30 of the 50
    for t in range(0, 60, 10):
        a.add(rb(t))
        a.flush()
    assert budget.rows <= 50 and len(a) == 20  # a kept its newest batches only
    assert budget.dropped == 40 and not events  # reported only once the store accepts again
    store.accept = True
    assert a.flush() and b.flush()
    assert store.got == list(range(40, 60)) + list(range(1000, 1030))
    assert budget.rows == 0
    assert len(events) == 1
    ev = events[0]
    assert (ev.kind, ev.priority, ev.ts) == ("gap", 0, 123)
    data = json.loads(ev.data)
    assert (data["action"], data["readings"], data["ts_from"], data["ts_to"]) == ("dropped", 40, 0, 39)
    a.add(rb(70))
    assert a.flush() and len(events) == 1  # no new gap


def test_the_newest_batch_is_kept_even_when_it_alone_exceeds_the_budget() -> None:
    store, budget = Store(), PendingBudget(5)
    buf = EmitBuffer(store.offer, "link a", budget=budget)
    buf.add(rb(0, 10))
    assert len(buf) == 10 and budget.dropped == 0

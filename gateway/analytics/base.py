"""The contract every analytic implements, so the gateway can feed, drive and store them alike.

Threads: an analytic is owned by one caller (the gateway's analytics task on its event loop); it never does
I/O, never sleeps and never reads a clock — time comes in as ``ts`` of readings and ``now_ns`` of
:meth:`Analytic.advance`. CPU-heavy work (ONNX scoring) is done by the caller in a worker thread through
:meth:`Analytic.advance` being called there; an analytic must therefore not touch the event loop.

Units: timestamps are UTC epoch nanoseconds; values are in the unit of their point (documented per analytic).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from gateway.model import Event, PointInfo


@dataclass(slots=True)
class DerivedReading:
    """A value an analytic computed, for one of the points it declared in :meth:`Analytic.derived_points`."""

    name: str  # full point name, e.g. "bus1.f_avg_1s"
    ts: int  # UTC epoch ns (for a window: its start)
    value: float
    quality: int = 0  # gateway/model.py Q bits (e.g. Q.QUESTIONABLE for a window with a gap)


@dataclass(slots=True)
class AnalyticsOutput:
    events: list[Event] = field(default_factory=list)  # alarms (raised/cleared) with suggested actions
    readings: list[DerivedReading] = field(default_factory=list)  # curated values that are stored and synced

    def extend(self, other: AnalyticsOutput) -> None:
        self.events.extend(other.events)
        self.readings.extend(other.readings)


class Analytic(Protocol):
    """One analytic. ``inputs()`` and ``derived_points()`` are fixed after construction."""

    def inputs(self) -> list[str]:
        """Full names of the points it consumes (e.g. "incomer.f")."""
        ...

    def derived_points(self) -> list[PointInfo]:
        """The points it writes (registered in the store at start, synced like any reading)."""
        ...

    def feed(
        self,
        idx: npt.NDArray[np.int32],
        ts: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
        quality: npt.NDArray[np.uint16],
    ) -> None:
        """Rows of its inputs, in arrival order: ``idx[i]`` indexes :meth:`inputs`. Cheap: buffer, no output."""
        ...

    def advance(self, now_ns: int) -> AnalyticsOutput:
        """Close what is due at ``now_ns`` (windows, days, scoring periods) and return events and readings."""
        ...

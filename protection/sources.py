"""Measurement sources for the protection cycle: the protocol, a latest-sample slot, a simulated feeder, a stalled link.

The contract (:class:`MeasurementSource`): ``read_into(m, now_ns)`` is called by the cycle thread once per cycle.
It must **never block**: it copies the latest sample it has into ``m`` and clears the validity bit (``V_*``) of
every quantity whose sample is older than the source's staleness limit (or that never arrived). A link that
stalls therefore makes its quantities stale, the elements that need them block (``EV_BLOCKED``), and the cycle
keeps its deadlines. Who fills the sample (an I/O thread, a fast link) is the source's business, not the cycle's.

Specs (:class:`SimulatedFeederSpec`, :class:`StalledSourceSpec`) are frozen, picklable dataclasses: they cross
into the protection process, which builds the source there with :func:`build_source`.

No import-time side effects. ``hil_tests`` is imported lazily, and only by the simulated feeder (a test/demo source).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Union

from protection.measurements import V_ALL, V_IA, V_IB, V_IC, V_PHASE_I, Measurements

_NS = 1_000_000_000


class MeasurementSource(Protocol):
    """What the cycle reads. ``read_into`` is called from the cycle thread only and must not block."""

    def read_into(self, m: Measurements, now_ns: int) -> None:
        """Copy the latest sample into ``m``; clear the ``V_*`` bits of quantities older than the staleness limit."""
        ...


class SampleSlot:
    """The latest sample of a link, written by its I/O thread, read without blocking by the cycle.

    ``publish`` (any one producer thread) stores a whole frame under a lock. ``read_into`` (the cycle thread) only
    *tries* the lock: when the producer holds it (or hangs while holding it) the cycle keeps the copy it took
    last time, whose age keeps growing, so the quantities go stale after ``stale_after_ns`` instead of the cycle
    waiting. Staleness is per frame: every quantity of a frame carries the frame's sample time.
    """

    __slots__ = (
        "_copy",
        "_copy_ns",
        "_copy_valid",
        "_lock",
        "_ns",
        "_valid",
        "_values",
        "lock_misses",
        "stale_after_ns",
    )

    def __init__(self, stale_after_s: float = 0.02) -> None:
        self.stale_after_ns = round(stale_after_s * _NS)  # older samples are marked invalid
        self.lock_misses = 0  # cycles that found the producer holding the lock (read by tests/diagnostics)
        self._lock = threading.Lock()
        self._values = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 50.0]  # ia ib ic in va vb vc f, written under _lock
        self._valid = 0
        self._ns = -1  # sample time (monotonic ns) of _values, -1 = none yet
        self._copy = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 50.0]  # the cycle's own copy (cycle thread only)
        self._copy_valid = 0
        self._copy_ns = -1

    @property
    def lock(self) -> threading.Lock:
        """The producer's lock (exposed so tests can model a producer that hangs while holding it)."""
        return self._lock

    def publish(
        self,
        sample_ns: int,
        ia: float,
        ib: float,
        ic: float,
        i_n: float,
        va: float,
        vb: float,
        vc: float,
        f: float,
        valid: int = V_ALL,
    ) -> None:
        """Store one frame (units as :class:`Measurements`), sampled at monotonic ``sample_ns``. Producer thread."""
        with self._lock:
            v = self._values
            v[0] = ia
            v[1] = ib
            v[2] = ic
            v[3] = i_n
            v[4] = va
            v[5] = vb
            v[6] = vc
            v[7] = f
            self._valid = valid
            self._ns = sample_ns

    def read_into(self, m: Measurements, now_ns: int) -> None:
        if self._lock.acquire(blocking=False):
            try:
                c = self._copy
                v = self._values
                for i in range(8):
                    c[i] = v[i]
                self._copy_valid = self._valid
                self._copy_ns = self._ns
            finally:
                self._lock.release()
        else:
            self.lock_misses += 1
        c = self._copy
        m.set_values(c)
        m.sample_ns = self._copy_ns
        if self._copy_ns < 0 or now_ns - self._copy_ns > self.stale_after_ns:
            m.valid = 0
        else:
            m.valid = self._copy_valid


@dataclass(frozen=True, slots=True)
class SimulatedFeederSpec:
    """A feeder computed from ``hil_tests.feeder.FeederModel`` inside the cycle, with optional fault and stall.

    Times are seconds since the source was built (the process start). Test and demo use only.
    """

    seed: int = 1  # FeederModel seed (load level and phase)
    time_of_day_s: float = 10 * 3600.0  # model time of day at start, seconds since midnight
    fault_at_s: float | None = None  # fault inception; None = no fault
    fault_factor: float = 10.0  # multiplier on the faulted phase currents during the fault
    fault_phases: int = V_IA  # V_IA/V_IB/V_IC bits of the faulted phases (In follows the phase sum)
    fault_duration_s: float | None = None  # None = the fault persists
    stall_after_s: float | None = None  # the link stops delivering new samples after this time; None = never
    stale_after_s: float = 0.02  # samples older than this are marked invalid


@dataclass(frozen=True, slots=True)
class StalledSourceSpec:
    """A link that never delivers a sample: every quantity is invalid from the first cycle on (tests)."""

    stale_after_s: float = 0.02  # staleness limit (never reached by a sample; kept for symmetry)


if TYPE_CHECKING:
    from protection.comtrade_source import ComtradePlaybackSpec
    from protection.modbus_source import ModbusMeasurementSpec

# Every spec a protection process can build its source from (the first two live in their own modules).
SourceSpec = Union["ModbusMeasurementSpec", "ComtradePlaybackSpec", SimulatedFeederSpec, StalledSourceSpec]


class SimulatedFeederSource:
    """Computes the feeder model at the cycle's time, applies the fault, honours the stall. Never blocks.

    Not allocation-free (the model returns a dict): it stands in for a fast link in tests and demos only.
    """

    def __init__(self, spec: SimulatedFeederSpec, start_ns: int) -> None:
        from hil_tests.feeder import FeederModel  # test/demo source only: keep hil_tests out of the product import

        self.spec = spec
        self.model: Any = FeederModel(seed=spec.seed)
        self._start_ns = start_ns
        self._slot = SampleSlot(spec.stale_after_s)
        self._fault_on = -1 if spec.fault_at_s is None else start_ns + round(spec.fault_at_s * _NS)
        self._fault_off = (
            -1 if spec.fault_at_s is None or spec.fault_duration_s is None else self._fault_on + round(
                spec.fault_duration_s * _NS
            )
        )
        self._stall = -1 if spec.stall_after_s is None else start_ns + round(spec.stall_after_s * _NS)

    def read_into(self, m: Measurements, now_ns: int) -> None:
        if self._stall < 0 or now_ns < self._stall:
            self._sample(now_ns)
        self._slot.read_into(m, now_ns)

    def _sample(self, now_ns: int) -> None:
        s = self.spec
        v = self.model.step(s.time_of_day_s + (now_ns - self._start_ns) / _NS)
        ia, ib, ic, i_n = v["Ia"], v["Ib"], v["Ic"], v["In"]
        if self._fault_on >= 0 and now_ns >= self._fault_on and (self._fault_off < 0 or now_ns < self._fault_off):
            k = s.fault_factor
            ia = ia * k if s.fault_phases & V_IA else ia
            ib = ib * k if s.fault_phases & V_IB else ib
            ic = ic * k if s.fault_phases & V_IC else ic
            if s.fault_phases & V_PHASE_I != V_PHASE_I:  # an unbalanced fault: residual from the phasor sum
                re = ia - 0.5 * ib - 0.5 * ic
                im = 0.8660254037844386 * (ib - ic)
                i_n = (re * re + im * im) ** 0.5
        self._slot.publish(now_ns, ia, ib, ic, i_n, v["Va"], v["Vb"], v["Vc"], v["f"], V_ALL)


def build_source(spec: SourceSpec, start_ns: int) -> MeasurementSource:
    """The source a spec describes, started at monotonic ``start_ns``. Raises ``TypeError`` for an unknown spec.

    A source with an I/O thread also has ``close()`` (idempotent, joins the thread); the process calls it at exit.
    """
    if isinstance(spec, SimulatedFeederSpec):
        return SimulatedFeederSource(spec, start_ns)
    if isinstance(spec, StalledSourceSpec):
        return SampleSlot(spec.stale_after_s)
    from protection.comtrade_source import ComtradePlaybackSource, ComtradePlaybackSpec
    from protection.modbus_source import ModbusMeasurementSource, ModbusMeasurementSpec

    if isinstance(spec, ModbusMeasurementSpec):
        return ModbusMeasurementSource(spec, start_ns)
    if isinstance(spec, ComtradePlaybackSpec):
        return ComtradePlaybackSource(spec, start_ns)
    raise TypeError(f"unknown measurement source spec {type(spec).__name__}")


__all__ = [
    "MeasurementSource",
    "SampleSlot",
    "SimulatedFeederSource",
    "SimulatedFeederSpec",
    "SourceSpec",
    "StalledSourceSpec",
    "build_source",
]

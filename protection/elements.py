"""Protection elements as pure state machines: ``step(m, now) -> ElementOutput``.

Contract for every element:
- ``now`` is a monotonic time in **int nanoseconds** (``time.monotonic_ns()`` in the real-time process; any
  integer in tests). It must not decrease; a step with ``now`` earlier than the previous one counts as zero time.
- ``step`` reads the shared :class:`~protection.measurements.Measurements` and returns the element's own
  preallocated :class:`~protection.output.ElementOutput` (overwritten by the next step). No clock, no I/O, no
  logging, no containers built per step: state lives in ``__slots__`` attributes as plain ints/floats.
- A measurement the element needs that is not valid (its ``V_*`` bit cleared) BLOCKS the element: pickup and trip
  are released (events ``BLOCKED`` plus ``DROPOUT``/``TRIP_RESET`` if they were set), every timer, integrator and
  history is reset, and the element stays at rest until the measurement is valid again (``UNBLOCKED``).
- Timing uses sample-and-hold: the value measured at a step holds until the next step. Definite-time elements
  trip at the first step where ``now - pickup_time >= delay``; the inverse-time integrator adds ``dt / t(M)``
  for the interval since the previous step using the ``M`` measured at the previous step.
- :meth:`Element.reset` puts the element at rest (used when arming, blocking and switching settings groups).

Build elements with :func:`build_element` (raises :class:`~protection.settings.ElementSettingsError`).
"""

from __future__ import annotations

import math
from typing import Final

from protection.curves import CURVES
from protection.measurements import V_F, V_IN, V_PHASE_I, V_PHASE_V, Measurements
from protection.output import (
    EV_BLOCKED,
    EV_DROPOUT,
    EV_PICKUP,
    EV_TRIP,
    EV_TRIP_RESET,
    EV_UNBLOCKED,
    PH_A,
    PH_B,
    PH_C,
    PH_N,
    ElementOutput,
)
from protection.settings import (
    ElementSettings,
    ElementSettingsError,
    FrequencySettings,
    InverseTimeSettings,
    OvercurrentSettings,
    OvervoltageSettings,
    RocofSettings,
    UndervoltageSettings,
    check_settings,
)

_NS: Final = 1_000_000_000
_TRIP_EPS: Final = 1e-9  # integrator counts as full at >= 1 - eps (float summation of many small steps)


def _ns(seconds: float) -> int:
    return round(seconds * _NS)


class Element:
    """Common state and the definite-time pickup/trip/dropout machinery. Subclasses implement :meth:`step`."""

    __slots__ = ("_last_ns", "_need", "_start_ns", "output", "settings")

    def __init__(self, settings: ElementSettings, need: int) -> None:
        self.settings = settings
        self.output = ElementOutput(settings.name, settings.type)
        self._need = need  # V_* bits this element needs valid
        self._start_ns = -1  # pickup time of the running timer, -1 = not timing
        self._last_ns = -1  # `now` of the previous step, -1 = none since reset

    @property
    def name(self) -> str:
        return self.settings.name

    def step(self, m: Measurements, now: int) -> ElementOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset(self) -> None:
        """Back to rest: no pickup, trip or block, timers and integrators cleared. Emits no event."""
        out = self.output
        out.picked_up = False
        out.tripped = False
        out.blocked = False
        out.phases = 0
        out.events = 0
        self._start_ns = -1
        self._last_ns = -1
        self._reset_state()

    def _reset_state(self) -> None:
        """Subclass state to clear on reset/block."""

    def _gate(self, m: Measurements, now: int, block: bool) -> bool:
        """Start a step: clear events, handle (un)blocking. Returns True when the element may evaluate."""
        out = self.output
        out.events = 0
        if block or (m.valid & self._need) != self._need:
            if not out.blocked:
                ev = EV_BLOCKED
                if out.picked_up:
                    ev |= EV_DROPOUT
                if out.tripped:
                    ev |= EV_TRIP_RESET
                self.reset()
                out.blocked = True
                out.events = ev
                out.event_ns = now
            return False
        if out.blocked:
            out.blocked = False
            out.events = EV_UNBLOCKED
            out.event_ns = now
        return True

    def _definite(self, active: bool, now: int, delay_ns: int) -> None:
        """Definite-time logic: ``active`` is the (hysteresis-applied) pickup condition of this step."""
        out = self.output
        if active:
            if not out.picked_up:
                out.picked_up = True
                self._start_ns = now
                out.events |= EV_PICKUP
                out.event_ns = now
            if not out.tripped and now - self._start_ns >= delay_ns:
                out.tripped = True
                out.events |= EV_TRIP
                out.event_ns = now
        elif out.picked_up:
            out.picked_up = False
            out.phases = 0
            self._start_ns = -1
            out.events |= EV_DROPOUT
            if out.tripped:
                out.tripped = False
                out.events |= EV_TRIP_RESET
            out.event_ns = now


class DefiniteTimeOvercurrent(Element):
    """50 / 50N: instantaneous (delay 0) or definite-time overcurrent, phase (max of three) or residual."""

    __slots__ = ("_delay_ns", "_drop", "_pick", "_residual")

    def __init__(self, s: OvercurrentSettings) -> None:
        self._residual = s.type == "50N"
        super().__init__(s, V_IN if self._residual else V_PHASE_I)
        self._pick = s.pickup_a
        self._drop = s.pickup_a * s.dropout_ratio
        self._delay_ns = _ns(s.delay_s)

    def step(self, m: Measurements, now: int) -> ElementOutput:
        out = self.output
        if self._gate(m, now, False):
            thr = self._drop if out.picked_up else self._pick
            if self._residual:
                ph = PH_N if m.i_n >= thr else 0
            else:
                ph = (PH_A if m.ia >= thr else 0) | (PH_B if m.ib >= thr else 0) | (PH_C if m.ic >= thr else 0)
            self._definite(ph != 0, now, self._delay_ns)
            if out.picked_up:
                out.phases = ph
        self._last_ns = now
        return out


class InverseTimeOvercurrent(Element):
    """51 / 51N: inverse-time overcurrent integrating ``dt / t(M)`` to 1, with three reset modes."""

    __slots__ = (
        "_acc",
        "_alpha",
        "_b",
        "_back",
        "_drop",
        "_inv_is",
        "_k",
        "_pick",
        "_rate",
        "_reset_mode",
        "_reset_ns",
        "_reset_start_ns",
        "_residual",
    )

    RESET_INSTANT: Final = 0
    RESET_DEFINITE: Final = 1
    RESET_DISK: Final = 2

    def __init__(self, s: InverseTimeSettings) -> None:
        self._residual = s.type == "51N"
        super().__init__(s, V_IN if self._residual else V_PHASE_I)
        curve = CURVES[s.curve]
        mult = s.tms if curve.family == "IEC" else s.td
        assert mult is not None  # guaranteed by check_settings
        self._k = mult * curve.k
        self._b = mult * curve.b
        self._alpha = curve.alpha
        self._inv_is = 1.0 / s.pickup_a
        self._pick = s.pickup_a * s.pickup_factor
        self._drop = self._pick * s.dropout_ratio
        # disk emulation: the integral winds back at (1 - M^2) / (mult * tr) per second
        self._back = 1.0 / (mult * curve.tr) if curve.tr > 0.0 else 0.0
        self._reset_mode = {"instantaneous": 0, "definite": 1, "disk": 2}[s.reset]
        self._reset_ns = _ns(s.reset_delay_s)
        self._acc = 0.0
        self._rate = 0.0
        self._reset_start_ns = -1

    @property
    def integral(self) -> float:
        """Travel of the integrator, 0..1 (1 = operate)."""
        return self._acc

    def _reset_state(self) -> None:
        self._acc = 0.0
        self._rate = 0.0
        self._reset_start_ns = -1

    def step(self, m: Measurements, now: int) -> ElementOutput:
        out = self.output
        if not self._gate(m, now, False):
            self._last_ns = now
            return out
        # 1. integrate the interval since the previous step with the rate set then (sample and hold)
        if self._last_ns >= 0 and now > self._last_ns and self._rate != 0.0:
            acc = self._acc + self._rate * ((now - self._last_ns) * 1e-9)
            self._acc = 1.0 if acc > 1.0 else (0.0 if acc < 0.0 else acc)
        # 2. definite reset: the held integral is cleared once the reset time has passed without a pickup
        if self._reset_start_ns >= 0 and now - self._reset_start_ns >= self._reset_ns:
            self._acc = 0.0
            self._reset_start_ns = -1
        # 3. pickup / dropout with hysteresis
        thr = self._drop if out.picked_up else self._pick
        if self._residual:
            i = m.i_n
            ph = PH_N if i >= thr else 0
        else:
            ia = m.ia
            ib = m.ib
            ic = m.ic
            i = ia if ia > ib else ib
            if ic > i:
                i = ic
            ph = (PH_A if ia >= thr else 0) | (PH_B if ib >= thr else 0) | (PH_C if ic >= thr else 0)
        if ph:
            if not out.picked_up:
                out.picked_up = True
                out.events |= EV_PICKUP
                out.event_ns = now
                self._reset_start_ns = -1
            out.phases = ph
        elif out.picked_up:
            out.picked_up = False
            out.phases = 0
            out.events |= EV_DROPOUT
            out.event_ns = now
            if out.tripped:
                out.tripped = False
                out.events |= EV_TRIP_RESET
            if self._reset_mode == 0:
                self._acc = 0.0
            elif self._reset_mode == 1:
                if self._reset_ns == 0:
                    self._acc = 0.0
                else:
                    self._reset_start_ns = now
        # 4. operate
        if out.picked_up and not out.tripped and self._acc >= 1.0 - _TRIP_EPS:
            out.tripped = True
            out.events |= EV_TRIP
            out.event_ns = now
        # 5. rate for the next interval
        mm = i * self._inv_is
        if out.picked_up and mm > 1.0:
            self._rate = 1.0 / (self._k / (mm**self._alpha - 1.0) + self._b)
        elif self._reset_mode == 2 and mm < 1.0:
            self._rate = -(1.0 - mm * mm) * self._back
        else:
            self._rate = 0.0  # hold: picked up at M <= 1 (hysteresis band), or M >= 1 but not picked up
        self._last_ns = now
        return out


class VoltageElement(Element):
    """27 undervoltage / 59 overvoltage, definite time, per-phase hysteresis, any/all phase logic."""

    __slots__ = ("_all", "_delay_ns", "_drop", "_phase_state", "_pick", "_under")

    def __init__(self, s: UndervoltageSettings | OvervoltageSettings) -> None:
        super().__init__(s, V_PHASE_V)
        self._under = s.type == "27"
        self._all = s.logic == "all"
        self._pick = s.pickup_kv
        self._drop = s.pickup_kv * s.dropout_ratio
        self._delay_ns = _ns(s.delay_s)
        self._phase_state = 0  # PH_* bits of phases currently beyond threshold (with hysteresis)

    def _reset_state(self) -> None:
        self._phase_state = 0

    def _phase(self, v: float, bit: int) -> int:
        was = self._phase_state & bit
        if self._under:
            return bit if (v < self._drop if was else v <= self._pick) else 0
        return bit if (v > self._drop if was else v >= self._pick) else 0

    def step(self, m: Measurements, now: int) -> ElementOutput:
        out = self.output
        if self._gate(m, now, False):
            st = self._phase(m.va, PH_A) | self._phase(m.vb, PH_B) | self._phase(m.vc, PH_C)
            self._phase_state = st
            active = st == (PH_A | PH_B | PH_C) if self._all else st != 0
            self._definite(active, now, self._delay_ns)
            if out.picked_up:
                out.phases = st
        self._last_ns = now
        return out


class FrequencyElement(Element):
    """81U under- / 81O over-frequency, definite time, blocked while any phase voltage < ``uv_block_kv``."""

    __slots__ = ("_delay_ns", "_drop", "_pick", "_under", "_uv")

    def __init__(self, s: FrequencySettings) -> None:
        self._uv = s.uv_block_kv
        super().__init__(s, V_F | (V_PHASE_V if self._uv > 0.0 else 0))
        self._under = s.type == "81U"
        self._pick = s.pickup_hz
        self._drop = s.pickup_hz + s.dropout_hz if self._under else s.pickup_hz - s.dropout_hz
        self._delay_ns = _ns(s.delay_s)

    def step(self, m: Measurements, now: int) -> ElementOutput:
        out = self.output
        uv = self._uv
        block = uv > 0.0 and (m.va < uv or m.vb < uv or m.vc < uv)
        if self._gate(m, now, block):
            f = m.f
            if self._under:
                active = f < self._drop if out.picked_up else f <= self._pick
            else:
                active = f > self._drop if out.picked_up else f >= self._pick
            self._definite(active, now, self._delay_ns)
        self._last_ns = now
        return out


class RocofElement(Element):
    """81R: ``df/dt = (f(now) - f(now - window)) / window`` from a preallocated ring of decimated samples.

    The ring holds ``SLOTS`` samples taken at least ``window / (SLOTS - 2)`` apart; the reference sample is the
    newest one at least ``window`` old, so the span used is between ``window`` and ``window + window/(SLOTS-2)``
    plus one step. Until the history covers a whole window (after arming, a block or a group switch) the
    element cannot pick up (``rocof_hz_s`` is NaN).
    """

    SLOTS: Final = 66

    __slots__ = (
        "_count",
        "_decim_ns",
        "_delay_ns",
        "_dir",
        "_drop",
        "_fs",
        "_head",
        "_pick",
        "_ts",
        "_uv",
        "_window_ns",
        "rocof_hz_s",
    )

    def __init__(self, s: RocofSettings) -> None:
        self._uv = s.uv_block_kv
        super().__init__(s, V_F | (V_PHASE_V if self._uv > 0.0 else 0))
        self._pick = s.pickup_hz_s
        self._drop = s.pickup_hz_s * s.dropout_ratio
        self._dir = {"both": 0, "rise": 1, "fall": -1}[s.direction]
        self._delay_ns = _ns(s.delay_s)
        self._window_ns = _ns(s.window_s)
        self._decim_ns = self._window_ns // (self.SLOTS - 2)
        self._ts: list[int] = [0] * self.SLOTS
        self._fs: list[float] = [0.0] * self.SLOTS
        self._head = 0  # index of the oldest sample
        self._count = 0
        self.rocof_hz_s = math.nan  # last computed df/dt (Hz/s); NaN while the window is not yet covered

    def _reset_state(self) -> None:
        self._head = 0
        self._count = 0
        self.rocof_hz_s = math.nan

    def step(self, m: Measurements, now: int) -> ElementOutput:
        out = self.output
        uv = self._uv
        block = uv > 0.0 and (m.va < uv or m.vb < uv or m.vc < uv)
        if self._gate(m, now, block):
            n = self.SLOTS
            ts = self._ts
            fs = self._fs
            oldest_ok = now - self._window_ns
            # drop the oldest while the next one is also at least a window old
            while self._count >= 2 and ts[(self._head + 1) % n] <= oldest_ok:
                self._head = (self._head + 1) % n
                self._count -= 1
            f = m.f
            if self._count and ts[self._head] <= oldest_ok:
                t0 = ts[self._head]
                r = (f - fs[self._head]) / ((now - t0) * 1e-9)
                self.rocof_hz_s = r
                v = r if self._dir == 1 else (-r if self._dir == -1 else abs(r))
                active = v > self._drop if out.picked_up else v >= self._pick
            else:
                self.rocof_hz_s = math.nan
                active = False
            self._definite(active, now, self._delay_ns)
            # store this sample if the newest stored one is at least one decimation period old
            if self._count == 0 or now - ts[(self._head + self._count - 1) % n] >= self._decim_ns:
                if self._count == n:  # cannot happen with the decimation above; keep the ring bounded anyway
                    self._head = (self._head + 1) % n
                    self._count -= 1
                idx = (self._head + self._count) % n
                ts[idx] = now
                fs[idx] = f
                self._count += 1
        self._last_ns = now
        return out


def build_element(s: ElementSettings, group: int = 0) -> Element:
    """Arm one element. Raises :class:`ElementSettingsError` (the first problem) if a setting is invalid."""
    errs = check_settings(s, group)
    if errs:
        raise errs[0]
    if isinstance(s, OvercurrentSettings):
        return DefiniteTimeOvercurrent(s)
    if isinstance(s, InverseTimeSettings):
        return InverseTimeOvercurrent(s)
    if isinstance(s, UndervoltageSettings | OvervoltageSettings):
        return VoltageElement(s)
    if isinstance(s, FrequencySettings):
        return FrequencyElement(s)
    if isinstance(s, RocofSettings):
        return RocofElement(s)
    raise ElementSettingsError(getattr(s, "name", "?"), "type", f"unknown settings class {type(s).__name__}", group)

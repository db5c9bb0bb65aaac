"""Frequency monitoring: 1-s window averages per bus, under/over-frequency alarms with hysteresis.

Contract (docs/analytics.md, "Frequency monitoring"):

- **Windows** are tumbling, 1 s long, aligned to whole UTC seconds of the readings' ``ts``:
  ``[k·1 s, (k+1)·1 s)``. Each bus's frequency point has its own windows.
- **Closing rule.** At :meth:`FrequencyMonitor.advance` the rows fed since the last call are first put into their
  windows (arrival order inside that batch does not matter); then a bus's window ``W`` closes when
  ``now_ns >= W_end + grace`` **or** the bus has a reading (of any quality) in a later window. A closed window is
  averaged, emitted and never reopened: a row that arrives for it later is dropped and counted in
  :attr:`FrequencyMonitor.late_readings`. Rows more than :data:`FUTURE_TOLERANCE_NS` ahead of ``now_ns`` (a
  source clock far off) are dropped and counted in :attr:`FrequencyMonitor.future_readings`, so they cannot close
  windows early.
- **Average.** Invalid rows (validity invalid or reserved, or a non-finite value) are excluded. If the window has
  good rows, the average is over the good rows (quality good); else, if it has questionable rows, over those
  (quality :data:`Q.QUESTIONABLE`); a window with no usable row produces nothing — no invented average.
  Derived reading ``<bus>.f_avg_1s`` (Hz), ``ts`` = window start.
- **Alarm.** Raised on the first window whose average is strictly below ``nominal − band`` (under-frequency) or
  strictly above ``nominal + band`` (over-frequency): an average of exactly the limit is *not* an alarm
  (compared with a tolerance of :data:`EPS_HZ`, far below any meter's resolution, so float rounding of an
  average of identical readings cannot raise it). Questionable averages are evaluated too (``data.quality`` says so).
- **Clear (hysteresis).** A raised alarm clears after ``clear_windows`` *consecutive* windows (adjacent seconds,
  a second without an average breaks the run) whose average is inside ``nominal ± (band − hysteresis)``,
  inclusive. A window outside the band in the other direction clears the alarm and raises the opposite one.
- **Events**: one per raise and one per clear; kind ``alarm``, priority 1, device = bus, point = the frequency
  point, ``ts`` = end of the window that decided it; ``data`` is JSON with ``state``, ``condition``,
  ``window_start_ns``, ``avg_hz``, ``limit``, ``clear_limit``, ``nominal_hz``, ``quality`` and
  ``suggested_action``.

Pure state machine: no clock reads, no I/O; per-row work is numpy, per-window work is Python (a few windows per
bus per call).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from gateway.analytics.base import AnalyticsOutput, DerivedReading
from gateway.analytics.config import FrequencyConfig
from gateway.model import VALIDITY_MASK, Event, PointInfo, Q

SEC_NS: Final = 1_000_000_000
EPS_HZ: Final = 1e-9  # comparison tolerance of averages against limits (Hz)
FUTURE_TOLERANCE_NS: Final = 2 * SEC_NS  # rows further ahead of now_ns are dropped (source clock wrong)
DERIVED_SUFFIX: Final = "f_avg_1s"
PRIORITY: Final = 1

UNDER_ACTION: Final = (
    "Under-frequency (generation deficit): check the generation/load balance and the state of generators and "
    "interconnectors; prepare load shedding per the UFLS scheme and follow the system operator's instructions; "
    "do not reconnect shed load until the frequency is back in band."
)
OVER_ACTION: Final = (
    "Over-frequency (generation surplus): reduce generation / curtail PV and other inverter-based generation, "
    "check the governor (frequency) response of the units; check for a lost load or export path (a tripped "
    "feeder or interconnector)."
)
CLEAR_ACTION: Final = (
    "Frequency back in band: review the actions taken during the excursion (shed load, curtailment) and "
    "restore them per procedure."
)

_UNDER, _NORMAL, _OVER = -1, 0, 1


def derived_names(cfg: FrequencyConfig) -> list[str]:
    """Full names of the derived points a monitor with ``cfg`` writes."""
    return [f"{b.name}.{DERIVED_SUFFIX}" for b in cfg.buses]


@dataclass(slots=True)
class _Bus:
    """Per-bus state (a handful of buses, so one small object each)."""

    name: str
    point: str
    # open windows: start ns -> [sum_good, n_good, sum_questionable, n_questionable]
    windows: dict[int, list[float]] = field(default_factory=dict)
    closed_through: int | None = None  # windows starting before this are closed (None: nothing closed yet)
    latest_window: int | None = None  # start of the latest window a row was seen in
    alarm: int = _NORMAL  # _UNDER, _NORMAL or _OVER
    streak: int = 0  # consecutive in-clear-zone windows while raised
    last_evaluated: int | None = None  # start of the last window evaluated while raised


class FrequencyMonitor:
    """Implements :class:`gateway.analytics.base.Analytic` for ``[analytics.frequency]``. Input values in Hz."""

    def __init__(self, cfg: FrequencyConfig) -> None:
        self.cfg = cfg
        self.low_hz = cfg.nominal_hz - cfg.band_hz
        self.high_hz = cfg.nominal_hz + cfg.band_hz
        self.clear_low_hz = self.low_hz + cfg.hysteresis_hz
        self.clear_high_hz = self.high_hz - cfg.hysteresis_hz
        self._grace_ns = int(cfg.grace_ms) * 1_000_000
        self._buses = [_Bus(b.name, b.point) for b in cfg.buses]
        self._pending: list[tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.float64],
                                  npt.NDArray[np.uint16]]] = []
        self.late_readings = 0  # rows for windows already closed (dropped)
        self.future_readings = 0  # rows more than FUTURE_TOLERANCE_NS ahead of now_ns (dropped)
        self.invalid_readings = 0  # rows excluded for their quality or a non-finite value

    # -- Analytic --------------------------------------------------------------------------------------------
    def inputs(self) -> list[str]:
        return [b.point for b in self._buses]

    def derived_points(self) -> list[PointInfo]:
        return [
            PointInfo(name=f"{b.name}.{DERIVED_SUFFIX}", device=b.name, point=DERIVED_SUFFIX, unit="Hz")
            for b in self._buses
        ]

    def feed(
        self,
        idx: npt.NDArray[np.int32],
        ts: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
        quality: npt.NDArray[np.uint16],
    ) -> None:
        if len(idx):
            self._pending.append((idx, ts, value, quality))

    def advance(self, now_ns: int) -> AnalyticsOutput:
        out = AnalyticsOutput()
        self._ingest(now_ns)
        time_boundary = ((now_ns - self._grace_ns) // SEC_NS) * SEC_NS  # windows starting before it are due
        for b in self._buses:
            boundary = time_boundary
            if b.latest_window is not None:
                boundary = max(boundary, b.latest_window)
            if b.closed_through is not None:
                boundary = max(boundary, b.closed_through)
            b.closed_through = boundary
            for start in sorted(w for w in b.windows if w < boundary):
                self._close(b, start, b.windows.pop(start), out)
        return out

    # -- internals -------------------------------------------------------------------------------------------
    def _ingest(self, now_ns: int) -> None:
        if not self._pending:
            return
        if len(self._pending) == 1:
            idx, ts, val, q = self._pending[0]
        else:
            idx = np.concatenate([p[0] for p in self._pending])
            ts = np.concatenate([p[1] for p in self._pending])
            val = np.concatenate([p[2] for p in self._pending])
            q = np.concatenate([p[3] for p in self._pending])
        self._pending.clear()
        nb = len(self._buses)
        if nb == 0:
            return
        idx = np.asarray(idx, dtype=np.int64)
        ts = np.asarray(ts, dtype=np.int64)
        val = np.asarray(val, dtype=np.float64)
        q = np.asarray(q, dtype=np.uint16)
        keep = (idx >= 0) & (idx < nb)
        future = ts > now_ns + FUTURE_TOLERANCE_NS
        self.future_readings += int(np.count_nonzero(future & keep))
        keep &= ~future
        win = (ts // SEC_NS) * SEC_NS
        closed = np.array(
            [np.iinfo(np.int64).min if b.closed_through is None else b.closed_through for b in self._buses],
            dtype=np.int64,
        )
        late = keep & (win < closed[np.clip(idx, 0, nb - 1)])
        self.late_readings += int(np.count_nonzero(late))
        keep &= ~late
        if not keep.any():
            return
        idx, win, val, q = idx[keep], win[keep], val[keep], q[keep]
        v = q & VALIDITY_MASK
        finite = np.isfinite(val)
        good = (v == 0) & finite
        quest = (v == int(Q.QUESTIONABLE)) & finite
        self.invalid_readings += int(np.count_nonzero(~(good | quest)))
        key = (win // SEC_NS) * nb + idx  # (second, bus) groups
        groups, inv = np.unique(key, return_inverse=True)
        safe = np.where(finite, val, 0.0)
        n = len(groups)
        sum_good = np.bincount(inv, weights=np.where(good, safe, 0.0), minlength=n)
        n_good = np.bincount(inv, weights=good.astype(np.float64), minlength=n)
        sum_q = np.bincount(inv, weights=np.where(quest, safe, 0.0), minlength=n)
        n_q = np.bincount(inv, weights=quest.astype(np.float64), minlength=n)
        for g, k in enumerate(groups.tolist()):
            bus = self._buses[k % nb]
            start = (k // nb) * SEC_NS
            acc = bus.windows.get(start)
            if acc is None:
                bus.windows[start] = [float(sum_good[g]), float(n_good[g]), float(sum_q[g]), float(n_q[g])]
            else:
                acc[0] += float(sum_good[g])
                acc[1] += float(n_good[g])
                acc[2] += float(sum_q[g])
                acc[3] += float(n_q[g])
            if bus.latest_window is None or start > bus.latest_window:
                bus.latest_window = start

    def _close(self, b: _Bus, start: int, acc: list[float], out: AnalyticsOutput) -> None:
        sum_good, n_good, sum_q, n_q = acc
        if n_good > 0:
            avg, quality = sum_good / n_good, 0
        elif n_q > 0:
            avg, quality = sum_q / n_q, int(Q.QUESTIONABLE)
        else:
            return  # only invalid rows: no average
        out.readings.append(DerivedReading(f"{b.name}.{DERIVED_SUFFIX}", start, avg, quality))
        self._evaluate(b, start, avg, quality, out)

    def _condition(self, avg: float) -> int:
        if avg < self.low_hz - EPS_HZ:
            return _UNDER
        if avg > self.high_hz + EPS_HZ:
            return _OVER
        return _NORMAL

    def _evaluate(self, b: _Bus, start: int, avg: float, quality: int, out: AnalyticsOutput) -> None:
        cond = self._condition(avg)
        if b.alarm == _NORMAL:
            if cond != _NORMAL:
                self._raise(b, cond, start, avg, quality, out)
            return
        if cond == b.alarm:
            b.streak = 0
        elif cond != _NORMAL:  # the other side of the band: clear, then raise the opposite alarm
            self._clear(b, start, avg, quality, out, flipped=True)
            self._raise(b, cond, start, avg, quality, out)
            return
        elif self.clear_low_hz - EPS_HZ <= avg <= self.clear_high_hz + EPS_HZ:
            adjacent = b.last_evaluated is not None and b.last_evaluated == start - SEC_NS
            b.streak = b.streak + 1 if (adjacent and b.streak > 0) else 1
            if b.streak >= self.cfg.clear_windows:
                self._clear(b, start, avg, quality, out)
                return
        else:  # inside the band but within the hysteresis: not yet back to normal
            b.streak = 0
        b.last_evaluated = start

    def _raise(self, b: _Bus, cond: int, start: int, avg: float, quality: int, out: AnalyticsOutput) -> None:
        b.alarm, b.streak, b.last_evaluated = cond, 0, start
        under = cond == _UNDER
        limit = self.low_hz if under else self.high_hz
        word = "under-frequency" if under else "over-frequency"
        rel = "below" if under else "above"
        qual = "" if quality == 0 else " (questionable readings)"
        message = (
            f"{b.name}: {word}: 1-s average {avg:.3f} Hz {rel} {limit:.3f} Hz{qual} "
            f"(nominal {self.cfg.nominal_hz:g} ± {self.cfg.band_hz:g} Hz)"
        )
        out.events.append(self._event(b, "raised", word, start, avg, limit, quality, message,
                                      UNDER_ACTION if under else OVER_ACTION))

    def _clear(
        self, b: _Bus, start: int, avg: float, quality: int, out: AnalyticsOutput, flipped: bool = False
    ) -> None:
        under = b.alarm == _UNDER
        b.alarm, b.streak, b.last_evaluated = _NORMAL, 0, None
        word = "under-frequency" if under else "over-frequency"
        limit = self.low_hz if under else self.high_hz
        if flipped:
            other = "over-frequency" if under else "under-frequency"
            message = f"{b.name}: {word} cleared: 1-s average {avg:.3f} Hz is {other} now"
        else:
            message = (
                f"{b.name}: {word} cleared: 1-s average inside {self.clear_low_hz:.3f}..{self.clear_high_hz:.3f} Hz "
                f"for {self.cfg.clear_windows} consecutive s (last {avg:.3f} Hz)"
            )
        out.events.append(self._event(b, "cleared", word, start, avg, limit, quality, message, CLEAR_ACTION))

    def _event(
        self, b: _Bus, state: str, condition: str, start: int, avg: float, limit: float, quality: int,
        message: str, action: str,
    ) -> Event:
        data = {
            "state": state,
            "condition": condition,
            "window_start_ns": start,
            "avg_hz": avg,
            "limit": limit,
            "clear_limit": self.clear_low_hz if condition == "under-frequency" else self.clear_high_hz,
            "nominal_hz": self.cfg.nominal_hz,
            "quality": "good" if quality == 0 else "questionable",
            "suggested_action": action,
        }
        return Event(ts=start + SEC_NS, kind="alarm", message=message, priority=PRIORITY, device=b.name,
                     point=b.point, data=json.dumps(data))

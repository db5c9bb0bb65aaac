"""Energy and demand per meter: kWh per local day and daypart, gaps, target, high-demand flag, efficiency.

Contract (docs/analytics.md, "Energy and demand"):

- **Input**: one active power point per meter, in W or kW (``unit``); converted to W. Rows whose validity is
  good or questionable and whose value is finite are *valid*; the others are skipped (counted in
  :attr:`EnergyAnalytics.invalid_readings`) and do not break a segment. Per meter, valid rows are taken in ``ts``
  order; a row not later than the meter's last integrated row (late or duplicate) is dropped
  (:attr:`EnergyAnalytics.late_readings`), as is a row more than :data:`FUTURE_TOLERANCE_NS` ahead of ``now_ns``.
- **Integration**: trapezoidal between consecutive valid rows (linear power between them). A segment longer than
  ``max_gap_s`` is a **gap**: no energy is counted across it. Segments are split exactly at daypart/day
  boundaries. Negative power (export) is integrated as negative energy (net).
- **Gap seconds** of a day (or daypart) = its seconds *not covered* by an integrated segment: gaps between rows,
  and also time before the first row (gateway started, meter silent) and after the last. Energy values of a
  period with gap seconds carry quality ``Q.QUESTIONABLE | Q.INACCURATE`` (:data:`GAP_QUALITY`: the value
  undercounts by an unknown amount); a period with questionable input rows carries ``Q.QUESTIONABLE``.
- **Days and dayparts** are in the site's local time = UTC + ``utc_offset_h`` (fixed, no DST). Dayparts:
  0 night 00-06, 1 morning 06-12, 2 afternoon 12-18, 3 evening 18-24. A daypart (and with the evening one, the
  day) closes at the first ``advance`` where ``now_ns >= end + max_gap_s`` or a valid row at or after its end has
  been integrated; then ``<m>.energy_<part>_kwh`` (ts = daypart start) and, at day end, ``<m>.energy_day_kwh`` and
  ``<m>.gap_s_day`` (ts = local midnight starting the day) are emitted. Energy of a row arriving for a closed
  period is not added to it.
- **Cadence**: at the first ``advance`` at or after each multiple of ``emit_every_s`` (UTC epoch aligned), with
  ``ts`` = that multiple: ``<m>.energy_today_kwh``, ``<m>.gap_s_today`` (uncovered seconds of today so far;
  time since the last row counts once it exceeds ``max_gap_s``), ``<m>.daypart``, and where configured
  ``<m>.energy_vs_target`` (today / ``daily_target_kwh``), ``<m>.high_demand`` (current state) and
  ``<m>.efficiency`` (mean of the valid power rows received since the previous emission / ``rated_w``; nothing
  when none arrived).
- **High demand**: starts at a valid row with power > ``high_demand_w``, ends at one with power <
  ``high_demand_w × (1 − demand_hysteresis_pct/100)``; each change gives a ``<m>.high_demand`` reading (1/0, ts =
  the row's) and an event (kind ``alarm``, priority 2, ``data.state`` raised/cleared).

Pure state machine: no clock reads, no I/O; per-row work is numpy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from gateway.analytics.base import AnalyticsOutput, DerivedReading
from gateway.analytics.config import EnergyConfig, MeterConfig
from gateway.model import VALIDITY_MASK, Event, PointInfo, Q

SEC_NS: Final = 1_000_000_000
HOUR_NS: Final = 3600 * SEC_NS
PART_NS: Final = 6 * HOUR_NS
DAY_NS: Final = 24 * HOUR_NS
WH_PER_W_NS: Final = 1.0 / (3600.0 * SEC_NS)  # W x ns -> Wh
FUTURE_TOLERANCE_NS: Final = 2 * SEC_NS  # rows further ahead of now_ns are dropped (source clock wrong)
MAX_CATCHUP_PARTS: Final = 8  # closing more dayparts than this at once skips whole days without any energy
GAP_QUALITY: Final = int(Q.QUESTIONABLE | Q.INACCURATE)
DAYPARTS: Final = ("night", "morning", "afternoon", "evening")  # index = <m>.daypart value
DEMAND_PRIORITY: Final = 2

DEMAND_ACTION: Final = (
    "Reduce or shift flexible load (EV charging, HVAC, pumps) or discharge storage to bring demand under the "
    "limit; check for an abnormal load."
)
DEMAND_END_ACTION: Final = "Demand back under the limit: restore deferred loads gradually."

_PER_METER: Final = (
    ("energy_today_kwh", "kWh"),
    ("gap_s_today", "s"),
    ("energy_day_kwh", "kWh"),
    ("gap_s_day", "s"),
    *((f"energy_{p}_kwh", "kWh") for p in DAYPARTS),
    ("daypart", ""),
)


def _meter_points(m: MeterConfig) -> list[tuple[str, str]]:
    pts = list(_PER_METER)
    if m.daily_target_kwh > 0:
        pts.append(("energy_vs_target", ""))
    if m.high_demand_w > 0:
        pts.append(("high_demand", ""))
    if m.rated_w > 0:
        pts.append(("efficiency", ""))
    return pts


def derived_names(cfg: EnergyConfig) -> list[str]:
    """Full names of the derived points an :class:`EnergyAnalytics` with ``cfg`` writes."""
    return [f"{m.name}.{p}" for m in cfg.meters for p, _ in _meter_points(m)]


@dataclass(slots=True)
class _Meter:
    """Per-meter state (a handful of meters, so one small object each)."""

    cfg: MeterConfig
    scale: float  # value -> W
    clear_w: float  # high demand ends below this
    last_ts: int | None = None  # last integrated valid row
    last_w: float = 0.0
    open_part: int | None = None  # first local daypart index (since epoch) not yet closed
    parts: dict[int, list[float]] = field(default_factory=dict)  # part -> [Wh, covered ns, questionable]
    day: int | None = None  # local day index the day accumulators are for
    day_acc: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # closed parts of that day
    demand: int = -1  # -1 unknown, 0 normal, 1 high
    eff_sum: float = 0.0
    eff_n: int = 0


class EnergyAnalytics:
    """Implements :class:`gateway.analytics.base.Analytic` for ``[analytics.energy]`` (all meters in one)."""

    def __init__(self, cfg: EnergyConfig) -> None:
        self.cfg = cfg
        self._off_ns = round(cfg.utc_offset_h * HOUR_NS)
        self._max_gap_ns = round(cfg.max_gap_s * SEC_NS)
        self._emit_ns = max(1, round(cfg.emit_every_s * SEC_NS))
        self._next_emit: int | None = None
        self._meters = [
            _Meter(
                cfg=m,
                scale=1000.0 if m.unit == "kW" else 1.0,
                clear_w=m.high_demand_w * (1.0 - cfg.demand_hysteresis_pct / 100.0),
            )
            for m in cfg.meters
        ]
        self._pending: list[tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.float64],
                                  npt.NDArray[np.uint16]]] = []
        self.late_readings = 0  # rows not later than their meter's last integrated row (dropped)
        self.future_readings = 0  # rows more than FUTURE_TOLERANCE_NS ahead of now_ns (dropped)
        self.invalid_readings = 0  # rows skipped for their quality or a non-finite value

    # -- Analytic --------------------------------------------------------------------------------------------
    def inputs(self) -> list[str]:
        return [m.cfg.power_point for m in self._meters]

    def derived_points(self) -> list[PointInfo]:
        return [
            PointInfo(name=f"{m.cfg.name}.{p}", device=m.cfg.name, point=p, unit=unit)
            for m in self._meters
            for p, unit in _meter_points(m.cfg)
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
        self._ingest(now_ns, out)
        for m in self._meters:
            self._close_due(m, now_ns, out)
        if self._next_emit is None:
            self._next_emit = (now_ns // self._emit_ns + 1) * self._emit_ns
        elif now_ns >= self._next_emit:
            at = (now_ns // self._emit_ns) * self._emit_ns
            for m in self._meters:
                self._emit(m, at, now_ns, out)
            self._next_emit = at + self._emit_ns
        return out

    # -- time helpers ----------------------------------------------------------------------------------------
    def part_of(self, ts_ns: int) -> int:
        """Local daypart index since the epoch of a UTC ns time (``// 4`` = local day, ``% 4`` = daypart)."""
        return (ts_ns + self._off_ns) // PART_NS

    def part_start(self, part: int) -> int:
        return part * PART_NS - self._off_ns

    # -- ingest ----------------------------------------------------------------------------------------------
    def _ingest(self, now_ns: int, out: AnalyticsOutput) -> None:
        if not self._pending:
            return
        idx = np.concatenate([p[0] for p in self._pending]).astype(np.int64, copy=False)
        ts = np.concatenate([p[1] for p in self._pending]).astype(np.int64, copy=False)
        val = np.concatenate([p[2] for p in self._pending]).astype(np.float64, copy=False)
        q = np.concatenate([p[3] for p in self._pending]).astype(np.uint16, copy=False)
        self._pending.clear()
        order = np.argsort(idx, kind="stable")
        sidx = idx[order]
        for i, m in enumerate(self._meters):
            lo, hi = np.searchsorted(sidx, i, "left"), np.searchsorted(sidx, i, "right")
            if lo == hi:
                continue
            sel = order[lo:hi]
            self._ingest_meter(m, ts[sel], val[sel], q[sel], now_ns, out)

    def _ingest_meter(
        self,
        m: _Meter,
        ts: npt.NDArray[np.int64],
        val: npt.NDArray[np.float64],
        q: npt.NDArray[np.uint16],
        now_ns: int,
        out: AnalyticsOutput,
    ) -> None:
        future = ts > now_ns + FUTURE_TOLERANCE_NS
        self.future_readings += int(np.count_nonzero(future))
        v = q & VALIDITY_MASK
        valid = ((v == 0) | (v == int(Q.QUESTIONABLE))) & np.isfinite(val) & ~future
        self.invalid_readings += int(np.count_nonzero(~valid & ~future))
        ts, val, quest = ts[valid], val[valid], (v[valid] != 0)
        if len(ts) == 0:
            return
        o = np.argsort(ts, kind="stable")
        ts, val, quest = ts[o], val[o], quest[o]
        fresh = np.ones(len(ts), dtype=bool)
        fresh[1:] = ts[1:] > ts[:-1]
        if m.last_ts is not None:
            fresh &= ts > m.last_ts
        self.late_readings += int(np.count_nonzero(~fresh))
        ts, p_w, quest = ts[fresh], val[fresh] * m.scale, quest[fresh]
        if len(ts) == 0:
            return
        if m.open_part is None:
            m.open_part = self.part_of(min(now_ns, int(ts[0])))
        self._integrate(m, ts, p_w, quest)
        self._demand(m, ts, p_w, out)
        m.eff_sum += float(p_w.sum())
        m.eff_n += len(p_w)

    def _integrate(
        self, m: _Meter, ts: npt.NDArray[np.int64], p_w: npt.NDArray[np.float64], quest: npt.NDArray[np.bool_]
    ) -> None:
        assert m.open_part is not None
        open_start = self.part_start(m.open_part)
        if quest.any():
            for part in np.unique((ts[quest & (ts >= open_start)] + self._off_ns) // PART_NS).tolist():
                m.parts.setdefault(int(part), [0.0, 0.0, 0.0])[2] = 1.0
        if m.last_ts is not None:
            t = np.concatenate(([m.last_ts], ts))
            p = np.concatenate(([m.last_w], p_w))
        else:
            t, p = ts, p_w
        m.last_ts, m.last_w = int(t[-1]), float(p[-1])
        if len(t) < 2:
            return
        t0, t1, p0, p1 = t[:-1], t[1:], p[:-1], p[1:]
        dt = t1 - t0
        ok = (dt <= self._max_gap_ns) & (t1 > open_start)
        b0 = (np.maximum(t0, open_start) + self._off_ns) // PART_NS
        b1 = (t1 - 1 + self._off_ns) // PART_NS
        fast = ok & (b0 == b1) & (t0 >= open_start)
        if fast.any():
            parts, inv = np.unique(b0[fast], return_inverse=True)
            wh = np.bincount(inv, weights=dt[fast] * (p0[fast] + p1[fast]) * (0.5 * WH_PER_W_NS))
            cov = np.bincount(inv, weights=dt[fast].astype(np.float64))
            for k, part in enumerate(parts.tolist()):
                acc = m.parts.setdefault(int(part), [0.0, 0.0, 0.0])
                acc[0] += float(wh[k])
                acc[1] += float(cov[k])
        for i in np.flatnonzero(ok & ~fast).tolist():  # segments crossing a boundary or the closed past: split
            a0, a1, w0, w1 = int(t0[i]), int(t1[i]), float(p0[i]), float(p1[i])
            slope = (w1 - w0) / (a1 - a0)
            a = max(a0, open_start)
            while a < a1:
                part = (a + self._off_ns) // PART_NS
                c = min(a1, self.part_start(part + 1))
                pa, pc = w0 + slope * (a - a0), w0 + slope * (c - a0)
                acc = m.parts.setdefault(part, [0.0, 0.0, 0.0])
                acc[0] += (c - a) * (pa + pc) * 0.5 * WH_PER_W_NS
                acc[1] += float(c - a)
                a = c

    def _demand(self, m: _Meter, ts: npt.NDArray[np.int64], p_w: npt.NDArray[np.float64], out: AnalyticsOutput) -> None:
        limit = m.cfg.high_demand_w
        if limit <= 0:
            return
        sig = np.where(p_w > limit, 1, np.where(p_w < m.clear_w, 0, -1))
        pos = np.maximum.accumulate(np.where(sig >= 0, np.arange(len(sig)), -1))
        state = np.where(pos >= 0, sig[np.maximum(pos, 0)], m.demand)
        prev = np.concatenate(([m.demand], state[:-1]))
        for i in np.flatnonzero((state != prev) & (state >= 0)).tolist():
            s, t, w = int(state[i]), int(ts[i]), float(p_w[i])
            out.readings.append(DerivedReading(f"{m.cfg.name}.high_demand", t, float(s)))
            if s == 1 or prev[i] == 1:
                out.events.append(self._demand_event(m, s == 1, t, w))
        m.demand = int(state[-1])

    def _demand_event(self, m: _Meter, started: bool, ts: int, w: float) -> Event:
        limit = m.cfg.high_demand_w
        if started:
            message = f"{m.cfg.name}: high demand started: {w:.1f} W > {limit:.1f} W"
        else:
            message = f"{m.cfg.name}: high demand ended: {w:.1f} W < {m.clear_w:.1f} W"
        data = {
            "state": "raised" if started else "cleared",
            "power_w": w,
            "limit_w": limit,
            "clear_limit_w": m.clear_w,
            "suggested_action": DEMAND_ACTION if started else DEMAND_END_ACTION,
        }
        return Event(ts=ts, kind="alarm", message=message, priority=DEMAND_PRIORITY, device=m.cfg.name,
                     point=m.cfg.power_point, data=json.dumps(data))

    # -- closing periods -------------------------------------------------------------------------------------
    def _close_due(self, m: _Meter, now_ns: int, out: AnalyticsOutput) -> None:
        if m.open_part is None:
            m.open_part = self.part_of(now_ns)
        close_to = (now_ns - self._max_gap_ns + self._off_ns) // PART_NS  # parts before it are closed by time
        if m.last_ts is not None:
            close_to = max(close_to, self.part_of(m.last_ts))  # ... or by data past their end
        while m.open_part < close_to:
            if m.open_part % 4 == 0 and close_to - m.open_part > MAX_CATCHUP_PARTS:
                # a clock jump or a long backlog: whole days with nothing integrated are skipped, not reported
                target = (close_to // 4) * 4
                with_data = [k for k in m.parts if k >= m.open_part]
                if with_data:
                    target = min(target, (min(with_data) // 4) * 4)
                if target > m.open_part:
                    m.open_part = target
                    continue
            self._close_part(m, m.open_part, out)
            m.open_part += 1

    def _close_part(self, m: _Meter, part: int, out: AnalyticsOutput) -> None:
        wh, cov, quest = m.parts.pop(part, [0.0, 0.0, 0.0])
        day, dp = divmod(part, 4)
        if m.day != day:
            m.day, m.day_acc = day, [0.0, 0.0, 0.0]
        name = m.cfg.name
        out.readings.append(
            DerivedReading(f"{name}.energy_{DAYPARTS[dp]}_kwh", self.part_start(part), wh / 1000.0,
                           self._quality(PART_NS - cov, quest))
        )
        acc = m.day_acc
        acc[0] += wh
        acc[1] += cov
        acc[2] = max(acc[2], quest)
        if dp == 3:
            day_start = self.part_start(day * 4)
            gap_ns = DAY_NS - acc[1]
            quality = self._quality(gap_ns, acc[2])
            out.readings.append(DerivedReading(f"{name}.energy_day_kwh", day_start, acc[0] / 1000.0, quality))
            out.readings.append(DerivedReading(f"{name}.gap_s_day", day_start, gap_ns / SEC_NS, quality))
            m.day_acc = [0.0, 0.0, 0.0]

    @staticmethod
    def _quality(gap_ns: float, quest: float) -> int:
        return (GAP_QUALITY if gap_ns > 0 else 0) | (int(Q.QUESTIONABLE) if quest else 0)

    # -- cadence ---------------------------------------------------------------------------------------------
    def _emit(self, m: _Meter, at: int, now_ns: int, out: AnalyticsOutput) -> None:
        part = self.part_of(at)
        day = part // 4
        day_start = self.part_start(day * 4)
        wh, cov, quest = (m.day_acc if m.day == day else [0.0, 0.0, 0.0])
        for k, acc in m.parts.items():
            if k // 4 == day:
                wh, cov, quest = wh + acc[0], cov + acc[1], max(quest, acc[2])
        horizon = now_ns
        if m.last_ts is not None and now_ns - m.last_ts <= self._max_gap_ns:
            horizon = m.last_ts  # the segment after the last row may still be bridged by the next one
        horizon = min(max(horizon, day_start), day_start + DAY_NS)
        gap_ns = max(0.0, (horizon - day_start) - cov)
        quality = self._quality(gap_ns, quest)
        name = m.cfg.name
        kwh = wh / 1000.0
        rd = out.readings
        rd.append(DerivedReading(f"{name}.energy_today_kwh", at, kwh, quality))
        rd.append(DerivedReading(f"{name}.gap_s_today", at, gap_ns / SEC_NS, quality))
        rd.append(DerivedReading(f"{name}.daypart", at, float(part % 4)))
        if m.cfg.daily_target_kwh > 0:
            rd.append(DerivedReading(f"{name}.energy_vs_target", at, kwh / m.cfg.daily_target_kwh, quality))
        if m.cfg.high_demand_w > 0 and m.demand >= 0:
            rd.append(DerivedReading(f"{name}.high_demand", at, float(m.demand)))
        if m.cfg.rated_w > 0 and m.eff_n > 0:
            rd.append(DerivedReading(f"{name}.efficiency", at, m.eff_sum / m.eff_n / m.cfg.rated_w))
        m.eff_sum, m.eff_n = 0.0, 0

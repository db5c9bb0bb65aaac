"""Equipment health assessment per device, from the rolling record of its scored windows.

A **heuristic, not a calibrated model**: the weights below were chosen so that a healthy device reads "low" and
one with persistent anomalies, heat stress or lost output climbs to "high"/"critical"; no failure data was used
to fit them. Over the horizon (default the last hour) of a device's windows:

- ``a`` = anomaly rate: anomalous windows / scored windows (0..1);
- ``h`` = temperature stress hours: hours of windows whose mean module temperature ≥ ``stress_temp_c`` (70 °C);
- ``d`` = efficiency degradation: ``max(0, 1 − median efficiency / reference efficiency)`` over bright windows
  (irradiance ≥ 300 W/m², at least 3 of them; else 0); the reference is the training set's median (sidecar);
- ``m`` = missing-data fraction: mean ``missing_frac`` of the windows.

Then:

- failure probability ``p = 1 / (1 + exp(−z))`` with ``z = −4 + 6·a + 1.5·min(h, 4) + 8·d + 2·m``
  (≈ 0.018 for a healthy device; a = 0.5 alone gives ≈ 0.27, a = 1 ≈ 0.88);
- health score ``100 − 60·a − 10·min(h, 3) − 100·d − 20·m``, clipped to 0..100;
- risk level from ``p``: low (0) < 0.1 ≤ medium (1) < 0.3 ≤ high (2) < 0.6 ≤ critical (3);
- recommended actions: the recommendation of the most frequent anomaly kind when ``a`` ≥ 0.1, ventilation when
  ``h`` ≥ 0.25, cleaning/inspection when ``d`` ≥ 0.1, sensor/link check when ``m`` ≥ 0.2, a maintenance visit
  at risk high or critical; "no action needed" otherwise.

Threads: :meth:`HealthAssessor.observe` and :meth:`HealthAssessor.assess` are called by the detector's
``advance`` (one caller at a time, possibly a worker thread); :meth:`HealthAssessor.health` may be called from any
thread (it returns the latest published snapshot).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Final

from gateway.analytics.base import DerivedReading
from gateway.analytics.features import RECOMMENDATIONS
from gateway.model import PointInfo

RISK_LEVELS: Final = ("low", "medium", "high", "critical")
RISK_BOUNDS: Final = (0.1, 0.3, 0.6)  # failure probability at or above: medium, high, critical
BRIGHT_IRRADIANCE_REL: Final = 0.3
MIN_BRIGHT_WINDOWS: Final = 3


@dataclass(frozen=True, slots=True)
class WindowResult:
    """What the detector learnt about one window of one device."""

    ts: int  # window start, UTC epoch ns
    score: float  # anomaly_score
    anomalous: bool
    kind: str  # diagnosis (a key of features.RECOMMENDATIONS)
    temp_mean_c: float
    efficiency: float
    irradiance_rel: float
    missing_frac: float


def failure_probability(a: float, h: float, d: float, m: float) -> float:
    """The logistic mapping of the module doc (anomaly rate, stress hours, degradation, missing fraction)."""
    z = -4.0 + 6.0 * a + 1.5 * min(h, 4.0) + 8.0 * d + 2.0 * m
    return 1.0 / (1.0 + math.exp(-z))


def health_score(a: float, h: float, d: float, m: float) -> float:
    return max(0.0, min(100.0, 100.0 - 60.0 * a - 10.0 * min(h, 3.0) - 100.0 * d - 20.0 * m))


def risk_level(p: float) -> int:
    return sum(p >= b for b in RISK_BOUNDS)


class HealthAssessor:
    """Rolling health of each device; emits ``<device>.health_score``, ``.failure_probability`` and
    ``.risk_level`` (0..3) every ``period_s`` (aligned to multiples of it, UTC)."""

    def __init__(
        self,
        devices: list[str],
        *,
        window_s: float = 60.0,
        period_s: float = 300.0,
        horizon_s: float = 3600.0,
        stress_temp_c: float = 70.0,
        reference_efficiency: float = 0.85,
    ) -> None:
        self._devices = list(devices)
        self._window_s = window_s
        self._period_ns = int(period_s * 1e9)
        self._horizon_ns = int(horizon_s * 1e9)
        self._stress_temp_c = stress_temp_c
        self._ref_eff = reference_efficiency
        self._windows: dict[str, deque[WindowResult]] = {d: deque() for d in self._devices}
        self._next_ns: int | None = None
        self._latest: dict[str, dict[str, Any]] = {}

    def derived_points(self) -> list[PointInfo]:
        out: list[PointInfo] = []
        for d in self._devices:
            out.append(PointInfo(f"{d}.health_score", d, "health_score", "%"))
            out.append(PointInfo(f"{d}.failure_probability", d, "failure_probability", ""))
            out.append(PointInfo(f"{d}.risk_level", d, "risk_level", ""))
        return out

    def observe(self, device: str, result: WindowResult) -> None:
        self._windows[device].append(result)

    def assess_device(self, device: str, at_ns: int) -> dict[str, Any] | None:
        """The assessment of ``device`` over ``(at_ns − horizon, at_ns]``; None without a window there."""
        q = self._windows[device]
        while q and q[0].ts < at_ns - self._horizon_ns:
            q.popleft()
        ws = [w for w in q if w.ts < at_ns]
        if not ws:
            return None
        n = len(ws)
        anomalous = [w for w in ws if w.anomalous]
        a = len(anomalous) / n
        h = sum(1 for w in ws if w.temp_mean_c >= self._stress_temp_c) * self._window_s / 3600.0
        bright = [w.efficiency for w in ws if w.irradiance_rel >= BRIGHT_IRRADIANCE_REL]
        d = 0.0
        if len(bright) >= MIN_BRIGHT_WINDOWS:
            d = max(0.0, min(1.0, 1.0 - statistics.median(bright) / self._ref_eff))
        m = sum(w.missing_frac for w in ws) / n
        p = failure_probability(a, h, d, m)
        risk = risk_level(p)
        actions: list[str] = []
        if a >= 0.1:
            kind = Counter(w.kind for w in anomalous).most_common(1)[0][0]
            actions.append(f"recurring anomalies ({kind}): {RECOMMENDATIONS[kind]}")
        if h >= 0.25:
            hot = f"{h:.1f} h at ≥ {self._stress_temp_c:g} °C"
            actions.append(f"thermal stress ({hot}): {RECOMMENDATIONS['overheating']}")
        if d >= 0.1:
            low = f"output {100 * d:.0f} % below expected"
            actions.append(f"{low}: {RECOMMENDATIONS['soiling']}; check for degradation")
        if m >= 0.2:
            actions.append(f"{100 * m:.0f} % of samples missing: check the sensors and their communication link")
        if risk >= 2:
            actions.append("schedule a maintenance visit")
        return {
            "device": device,
            "ts": at_ns,
            "health_score": round(health_score(a, h, d, m), 1),
            "failure_probability": round(p, 4),
            "risk_level": risk,
            "risk": RISK_LEVELS[risk],
            "recommended_actions": actions or ["no action needed"],
            "inputs": {
                "windows": n,
                "anomaly_rate": round(a, 4),
                "stress_hours": round(h, 3),
                "efficiency_degradation": round(d, 4),
                "missing_fraction": round(m, 4),
            },
        }

    def assess(self, now_ns: int) -> list[DerivedReading]:
        """Readings of every device with windows, if a period boundary passed since the last call."""
        boundary = now_ns // self._period_ns * self._period_ns
        if self._next_ns is None:
            self._next_ns = boundary + self._period_ns
            return []
        if now_ns < self._next_ns:
            return []
        self._next_ns = boundary + self._period_ns
        out: list[DerivedReading] = []
        latest = dict(self._latest)
        for dev in self._devices:
            r = self.assess_device(dev, boundary)
            if r is None:
                continue
            latest[dev] = r
            out.append(DerivedReading(f"{dev}.health_score", boundary, float(r["health_score"])))
            out.append(DerivedReading(f"{dev}.failure_probability", boundary, float(r["failure_probability"])))
            out.append(DerivedReading(f"{dev}.risk_level", boundary, float(r["risk_level"])))
        self._latest = latest  # published whole: health() readers never see a half-built dict
        return out

    def health(self) -> dict[str, dict[str, Any]]:
        """The latest assessment per device (JSON-ready dicts; empty before the first period). Any thread."""
        return dict(self._latest)

"""HealthAssessor: the documented formulas, risk levels, actions, periodic readings; end to end through the
AnomalyDetector (a stressed device's health falls below a healthy one's)."""

from __future__ import annotations

import numpy as np

from gateway.analytics.anomaly import AnomalyDetector
from gateway.analytics.base import AnalyticsOutput
from gateway.analytics.features import RECOMMENDATIONS
from gateway.analytics.health import (
    RISK_LEVELS,
    HealthAssessor,
    WindowResult,
    failure_probability,
    health_score,
    risk_level,
)
from gateway.analytics.train import generate_windows
from tests.gateway.analytics.test_anomaly import T0, W_NS, make_cfg, rows_for

MIN_NS = 60 * 10**9


def win(k: int, *, anomalous: bool = False, kind: str = "unknown", temp: float = 40.0, eff: float = 0.85,
        irr: float = 0.8, missing: float = 0.0) -> WindowResult:
    return WindowResult(T0 + k * MIN_NS, 0.2 if anomalous else 0.0, anomalous, kind, temp, eff, irr, missing)


def assessor() -> HealthAssessor:
    return HealthAssessor(["pv-01"], window_s=60, period_s=300, horizon_s=3600, stress_temp_c=70,
                          reference_efficiency=0.85)


def test_formulas_move_the_right_way() -> None:
    base = failure_probability(0, 0, 0, 0)
    assert 0.01 < base < 0.03 and risk_level(base) == 0
    assert health_score(0, 0, 0, 0) == 100.0
    for args in ((0.5, 0, 0, 0), (0, 2, 0, 0), (0, 0, 0.3, 0), (0, 0, 0, 0.5)):
        assert failure_probability(*args) > base
        assert health_score(*args) < 100.0
    assert failure_probability(1, 0, 0, 0) > failure_probability(0.5, 0, 0, 0) > failure_probability(0.2, 0, 0, 0)
    assert [risk_level(p) for p in (0.05, 0.1, 0.29, 0.3, 0.59, 0.6, 0.99)] == [0, 1, 1, 2, 2, 3, 3]
    assert health_score(1, 3, 1, 1) == 0.0


def test_healthy_device_is_low_risk_with_no_action() -> None:
    h = assessor()
    for k in range(60):
        h.observe("pv-01", win(k))
    r = h.assess_device("pv-01", T0 + 60 * MIN_NS)
    assert r is not None
    assert r["risk"] == "low" and r["health_score"] == 100.0 and r["recommended_actions"] == ["no action needed"]
    assert r["inputs"]["windows"] == 60


def test_recurring_anomalies_and_stress_raise_risk_with_actions() -> None:
    h = assessor()
    for k in range(60):  # half the hour soiled, a quarter of it hot, efficiency down
        soiled = k % 2 == 0
        h.observe("pv-01", win(k, anomalous=soiled, kind="soiling" if soiled else "unknown",
                               temp=80.0 if k % 4 == 0 else 40.0, eff=0.55 if soiled else 0.8))
    r = h.assess_device("pv-01", T0 + 60 * MIN_NS)
    assert r is not None
    assert r["risk_level"] >= 2 and r["risk"] in RISK_LEVELS[2:]
    assert r["failure_probability"] > 0.3 and r["health_score"] < 60
    text = " | ".join(r["recommended_actions"])
    assert RECOMMENDATIONS["soiling"] in text
    assert RECOMMENDATIONS["overheating"] in text
    assert "schedule a maintenance visit" in text
    assert r["inputs"]["stress_hours"] == 0.25 and r["inputs"]["anomaly_rate"] == 0.5


def test_horizon_forgets_old_windows_and_readings_come_each_period() -> None:
    h = assessor()
    assert h.assess(T0) == []  # first call only sets the period grid
    for k in range(5):
        h.observe("pv-01", win(k, anomalous=True, kind="overheating", temp=85.0))
    out = h.assess(T0 + 5 * MIN_NS)
    assert {r.name for r in out} == {"pv-01.health_score", "pv-01.failure_probability", "pv-01.risk_level"}
    period_ns = 300 * 10**9
    assert all(r.ts == (T0 + 5 * MIN_NS) // period_ns * period_ns for r in out)  # aligned to the period (UTC)
    assert h.assess(T0 + 6 * MIN_NS) == []  # not yet the next period
    bad = h.health()["pv-01"]
    assert bad["risk_level"] == 3
    for k in range(70, 130):  # an hour later: only healthy windows in the horizon
        h.observe("pv-01", win(k))
    h.assess(T0 + 130 * MIN_NS)
    good = h.health()["pv-01"]
    assert good["risk_level"] == 0 and good["health_score"] > bad["health_score"]


def test_end_to_end_stressed_device_scores_worse_than_healthy() -> None:
    det = AnomalyDetector(make_cfg(n_devices=2, health_period_s=600))
    det.feed(*rows_for(det, 0, generate_windows(30, 51), 0))
    det.feed(*rows_for(det, 1, generate_windows(30, 52, "overheating", irradiance_frac=1.0), 0))
    out = AnalyticsOutput()
    for k in range(31):
        out.extend(det.advance(T0 + (k + 1) * W_NS + 6 * 10**9))
    health = det.health()
    assert set(health) == {"pv-00", "pv-01"}
    assert health["pv-01"]["health_score"] < health["pv-00"]["health_score"]
    assert health["pv-01"]["risk_level"] > health["pv-00"]["risk_level"]
    assert any(RECOMMENDATIONS["overheating"] in a for a in health["pv-01"]["recommended_actions"])
    risk = [r for r in out.readings if r.name == "pv-01.risk_level"]
    assert risk and risk[-1].value == float(health["pv-01"]["risk_level"])
    assert np.all(np.diff([r.ts for r in risk]) == 600 * 10**9)

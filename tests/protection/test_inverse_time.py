"""51/51N inverse-time overcurrent: curves, pickup/dropout, reset modes, time-varying current."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protection.curves import CURVES, operate_time, reset_time
from protection.elements import InverseTimeOvercurrent, build_element
from protection.measurements import V_ALL, V_IN
from protection.output import EV_DROPOUT, EV_PICKUP, EV_TRIP, EV_TRIP_RESET
from protection.settings import InverseTimeSettings
from tests.protection.sim import STEP_S, Sim

IS = 400.0  # A


def make(curve: str, mult: float | None = None, **kw: object) -> InverseTimeOvercurrent:
    fam = CURVES[curve].family
    m = mult if mult is not None else (0.1 if fam == "IEC" else 1.0)
    mkw: dict[str, object] = {"tms": m} if fam == "IEC" else {"td": m}
    s = InverseTimeSettings(name="51P", type=kw.pop("type", "51"), pickup_a=IS, curve=curve, **mkw, **kw)  # type: ignore[arg-type]
    el = build_element(s)
    assert isinstance(el, InverseTimeOvercurrent)
    return el


def formula(curve: str, m: float, mult: float) -> float:
    c = CURVES[curve]
    if c.family == "IEC":
        return mult * c.k / (m**c.alpha - 1)
    return mult * (c.k / (m**c.alpha - 1) + c.b)


# Constants straight from IEC 60255-151 Table 1 / IEEE C37.112-2018 Table 1 (docs/protection.md cites them).
@pytest.mark.parametrize(
    ("curve", "k", "alpha", "b", "tr"),
    [
        ("IEC_SI", 0.14, 0.02, 0.0, 0.0),
        ("IEC_VI", 13.5, 1.0, 0.0, 0.0),
        ("IEC_EI", 80.0, 2.0, 0.0, 0.0),
        ("IEC_LTI", 120.0, 1.0, 0.0, 0.0),
        ("IEC_STI", 0.05, 0.04, 0.0, 0.0),
        ("IEEE_MI", 0.0515, 0.02, 0.1140, 4.85),
        ("IEEE_VI", 19.61, 2.0, 0.491, 21.6),
        ("IEEE_EI", 28.2, 2.0, 0.1217, 29.1),
    ],
)
def test_curve_constants(curve: str, k: float, alpha: float, b: float, tr: float) -> None:
    c = CURVES[curve]
    assert (c.k, c.alpha, c.b, c.tr) == (k, alpha, b, tr)


def test_well_known_operate_times() -> None:
    # IEC SI, TMS 1 at 10x: 2.97 s; IEC EI TMS 1 at 10x: 0.808 s; IEEE VI TD 1 at 5x: 1.308 s
    assert operate_time(CURVES["IEC_SI"], 10.0, 1.0) == pytest.approx(2.971, abs=1e-3)
    assert operate_time(CURVES["IEC_EI"], 10.0, 1.0) == pytest.approx(0.808, abs=1e-3)
    assert operate_time(CURVES["IEEE_VI"], 5.0, 1.0) == pytest.approx(1.308, abs=1e-3)
    assert math.isinf(operate_time(CURVES["IEC_SI"], 1.0, 1.0))
    assert reset_time(CURVES["IEEE_EI"], 0.0, 2.0) == pytest.approx(58.2)
    assert math.isinf(reset_time(CURVES["IEC_SI"], 0.5, 1.0))


@pytest.mark.parametrize("curve", sorted(CURVES))
@pytest.mark.parametrize("multiple", [2.0, 5.0, 10.0, 20.0])
def test_trip_time_matches_formula(curve: str, multiple: float) -> None:
    el = make(curve)
    sim = Sim(el)
    sim.step(3)
    sim.m.set_currents(IS * multiple, 0.5 * IS, 0.0)
    assert sim.run_until(lambda: el.output.tripped, 30.0) is not None
    expected = formula(curve, multiple, 0.1 if CURVES[curve].family == "IEC" else 1.0)
    got = sim.trip_delay_s()
    assert got is not None
    assert expected - 1e-9 <= got <= expected + STEP_S + 1e-9, (got, expected)


@pytest.mark.parametrize("curve", ["IEC_SI", "IEEE_VI"])
def test_residual_51n_uses_in_only(curve: str) -> None:
    el = make(curve, type="51N")
    sim = Sim(el)
    sim.m.set_currents(10 * IS, 10 * IS, 10 * IS, 0.0)  # big phase currents: 51N does not care
    sim.run_for(5.0)
    assert not el.output.picked_up
    sim.m.i_n = 5 * IS
    sim.run_until(lambda: el.output.tripped, 30.0)
    got = sim.trip_delay_s()
    assert got is not None
    assert got == pytest.approx(formula(curve, 5.0, 0.1 if curve.startswith("IEC") else 1.0), abs=STEP_S + 1e-9)


@pytest.mark.parametrize("curve", sorted(CURVES))
def test_no_operation_below_pickup(curve: str) -> None:
    el = make(curve)
    sim = Sim(el, step=10_000_000)  # 10 ms steps: nothing should happen at all
    sim.m.set_currents(0.999 * IS, 0.999 * IS, 0.999 * IS)
    sim.run_for(300.0)
    assert sim.events == []
    assert el.integral == 0.0


@pytest.mark.parametrize("curve", ["IEC_SI", "IEC_VI", "IEEE_MI", "IEEE_EI"])
def test_no_operation_just_below_pickup_factor(curve: str) -> None:
    el = make(curve, pickup_factor=1.1)
    sim = Sim(el, step=10_000_000)
    sim.m.set_currents(1.099 * IS, 0.0, 0.0)  # M = 1.099 > 1 but below 1.1 x Is
    sim.run_for(5 * formula(curve, 1.099, 0.1 if curve.startswith("IEC") else 1.0))
    assert sim.events == []
    assert el.integral == 0.0
    sim.m.ia = 1.1 * IS  # exactly at the pickup threshold: picks up and times on the curve at M = 1.1
    sim.step()
    assert el.output.picked_up


@pytest.mark.parametrize("factor", [1.0, 1.1])
def test_dropout_below_095_of_pickup(factor: float) -> None:
    el = make("IEC_SI", pickup_factor=factor, dropout_ratio=0.95)
    sim = Sim(el)
    thr = IS * factor
    sim.m.set_currents(1.5 * thr, 0.0, 0.0)
    sim.step()
    assert el.output.picked_up and el.output.phases == 1
    sim.m.ia = 0.951 * thr  # inside the hysteresis band: stays picked up
    sim.run_for(0.1)
    assert el.output.picked_up
    sim.m.ia = 0.949 * thr
    sim.step()
    assert not el.output.picked_up
    assert el.output.events == EV_DROPOUT
    assert el.output.event_ns == sim.now


def test_trip_then_dropout_releases_trip() -> None:
    el = make("IEC_EI")
    sim = Sim(el)
    sim.m.set_currents(0.0, 0.0, 10 * IS)
    sim.run_until(lambda: el.output.tripped, 5.0)
    assert el.output.phases == 4  # phase C
    sim.m.ic = 0.0
    sim.step()
    assert el.output.events == EV_DROPOUT | EV_TRIP_RESET
    assert not el.output.tripped and not el.output.picked_up


def _run_partial(el: InverseTimeOvercurrent, sim: Sim, current: float, fraction: float, t_full: float) -> None:
    sim.m.set_currents(current, 0.0, 0.0)
    sim.run_for(fraction * t_full)


def test_reset_instantaneous_clears_integral() -> None:
    el = make("IEC_SI")
    sim = Sim(el)
    t5 = formula("IEC_SI", 5.0, 0.1)
    _run_partial(el, sim, 5 * IS, 0.8, t5)
    assert el.integral == pytest.approx(0.8, abs=0.01)
    sim.m.ia = 0.0
    sim.step()
    assert el.integral == 0.0
    sim.events.clear()
    sim.m.ia = 5 * IS
    sim.run_until(lambda: el.output.tripped, 5.0)
    got = sim.trip_delay_s()
    assert got is not None
    assert got == pytest.approx(t5, abs=STEP_S + 1e-9)  # full time again


def test_reset_definite_holds_then_resets() -> None:
    el = make("IEC_SI", reset="definite", reset_delay_s=0.5)
    sim = Sim(el)
    t5 = formula("IEC_SI", 5.0, 0.1)
    _run_partial(el, sim, 5 * IS, 0.6, t5)
    sim.m.ia = 0.0
    sim.step()  # dropout step (integrates the last interval at 5x, sample and hold)
    a = el.integral
    sim.run_for(0.3)  # shorter than the reset delay: held
    assert el.integral == a
    sim.events.clear()
    sim.m.ia = 5 * IS
    sim.run_until(lambda: el.output.tripped, 5.0)
    got = sim.trip_delay_s()
    assert got is not None
    assert got == pytest.approx((1 - a) * t5, abs=STEP_S + 1e-9)  # only the remainder
    # now let it reset: after the delay the integral is 0
    sim.m.ia = 0.0
    sim.step()
    assert el.integral == 1.0  # held (capped) right after dropout
    sim.run_for(0.499)
    assert el.integral == 1.0
    sim.run_for(0.001)
    assert el.integral == 0.0


@pytest.mark.parametrize("curve", ["IEEE_MI", "IEEE_VI", "IEEE_EI"])
@pytest.mark.parametrize("m_reset", [0.0, 0.5, 0.9])
def test_reset_disk_emulation_winds_back(curve: str, m_reset: float) -> None:
    td = 0.5
    el = make(curve, mult=td, reset="disk")
    sim = Sim(el)
    t4 = formula(curve, 4.0, td)
    _run_partial(el, sim, 4 * IS, 0.7, t4)
    tr_full = td * CURVES[curve].tr / (1 - m_reset**2)  # time to wind back from 1 to 0
    sim.m.ia = m_reset * IS
    sim.step()  # this step still integrates the last interval at 4x (sample and hold)
    a = el.integral
    assert a == pytest.approx(0.7, abs=0.01)
    hold = 0.25 * a * tr_full
    sim.run_for(hold)
    assert el.integral == pytest.approx(a - hold / tr_full, abs=2 * STEP_S / tr_full)
    sim.run_for(a * tr_full)  # more than enough: fully reset, clamped at 0
    assert el.integral == 0.0


def test_disk_emulation_after_trip_needs_full_reset_time() -> None:
    el = make("IEEE_VI", mult=1.0, reset="disk")
    sim = Sim(el)
    sim.m.set_currents(10 * IS, 0.0, 0.0)
    sim.run_until(lambda: el.output.tripped, 10.0)
    sim.m.ia = 0.0
    took = sim.run_until(lambda: el.integral == 0.0, 60.0)
    assert took == pytest.approx(21.6, abs=2 * STEP_S)


def _analytic_trip(curve: str, mult: float, segments: list[tuple[float, float]]) -> float:
    """Trip time for piecewise-constant multiples [(M, duration)]: where the integral of dt/t(M) reaches 1."""
    acc = 0.0
    t = 0.0
    for m, dur in segments:
        tm = formula(curve, m, mult)
        if acc + dur / tm >= 1.0:
            return t + (1.0 - acc) * tm
        acc += dur / tm
        t += dur
    raise AssertionError("segments too short")


@pytest.mark.parametrize("curve", ["IEC_SI", "IEC_VI", "IEC_EI", "IEEE_MI", "IEEE_VI", "IEEE_EI"])
def test_time_varying_current_integrates(curve: str) -> None:
    mult = 0.1 if curve.startswith("IEC") else 1.0
    t3 = formula(curve, 3.0, mult)
    segs = [(3.0, 0.3 * t3), (8.0, 0.2 * t3), (2.0, 0.3 * t3), (6.0, 100.0)]
    expected = _analytic_trip(curve, mult, segs)
    el = make(curve)
    sim = Sim(el)
    start = sim.now
    for m, dur in segs:
        sim.m.set_currents(m * IS, 0.0, 0.0)
        if sim.run_until(lambda: el.output.tripped, dur) is not None:
            break
    assert el.output.tripped
    got = (sim.first(EV_TRIP) or 0) - (sim.first(EV_PICKUP) or 0)
    assert sim.first(EV_PICKUP) == start + 1_000_000
    # segment boundaries fall on step boundaries up to one step each: allow one step per boundary
    assert got * 1e-9 == pytest.approx(expected, abs=4 * STEP_S)
    # and a restarted-timer implementation would be far off
    assert abs(got * 1e-9 - (sum(d for _, d in segs[:3]) + formula(curve, 6.0, mult))) > 0.05 * expected


def test_ramping_current_matches_numeric_integral() -> None:
    curve, mult = "IEC_VI", 0.3
    # M(t) = 1.5 + 4 t: integrate dt / t(M(t)) finely with numpy and find where it reaches 1
    dt = 1e-6
    t = np.arange(0.0, 5.0, dt)
    mt = 1.5 + 4.0 * t
    rate = (mt**1.0 - 1.0) / (mult * 13.5)
    cum = np.cumsum(rate) * dt
    expected = float(t[np.searchsorted(cum, 1.0)])
    el = make(curve, mult=mult)
    sim = Sim(el)
    start = sim.now
    k = 0
    while not el.output.tripped and k < 10_000:
        sim.m.set_currents((1.5 + 4.0 * (k * STEP_S)) * IS, 0.0, 0.0)
        sim.step()
        k += 1
    got = ((sim.first(EV_TRIP) or 0) - start - 1_000_000) * 1e-9
    assert got == pytest.approx(expected, abs=2 * STEP_S)


def test_invalid_phase_current_blocks_and_resets() -> None:
    el = make("IEC_SI")
    sim = Sim(el)
    sim.m.set_currents(5 * IS, 0.0, 0.0)
    sim.run_for(0.5)
    assert el.output.picked_up and el.integral > 0
    sim.m.valid = V_ALL & ~0b010  # Ib stale
    sim.step()
    assert el.output.blocked and not el.output.picked_up and el.integral == 0.0
    sim.run_for(5.0)
    assert not el.output.tripped
    sim.m.valid = V_ALL
    sim.events.clear()
    sim.run_until(lambda: el.output.tripped, 5.0)
    got = sim.trip_delay_s()
    assert got == pytest.approx(formula("IEC_SI", 5.0, 0.1), abs=STEP_S + 1e-9)


def test_51n_not_blocked_by_phase_validity() -> None:
    el = make("IEC_SI", type="51N")
    sim = Sim(el)
    sim.m.valid = V_IN
    sim.m.i_n = 5 * IS
    sim.run_until(lambda: el.output.tripped, 5.0)
    assert el.output.tripped and not el.output.blocked

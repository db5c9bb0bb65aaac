"""50/50N overcurrent, 27/59 voltage, 81U/81O frequency and 81R rate of change of frequency."""

from __future__ import annotations

import math

import pytest

from protection.elements import (
    DefiniteTimeOvercurrent,
    Element,
    FrequencyElement,
    RocofElement,
    VoltageElement,
    build_element,
)
from protection.measurements import V_ALL, V_F, V_IA, V_IN, V_PHASE_I, V_VB
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
    describe_events,
)
from protection.settings import (
    FrequencySettings,
    OvercurrentSettings,
    OvervoltageSettings,
    RocofSettings,
    UndervoltageSettings,
)
from tests.protection.sim import MS, Sim

VN = 6.35  # kV phase-to-neutral, 11 kV system


def _healthy(sim: Sim) -> None:
    sim.m.set_voltages(VN, VN, VN)
    sim.m.f = 50.0


# -- 50 / 50N -------------------------------------------------------------------------------------------------


def test_50_instantaneous_trips_in_the_pickup_step() -> None:
    el = build_element(OvercurrentSettings(name="50P", type="50", pickup_a=2000.0))
    assert isinstance(el, DefiniteTimeOvercurrent)
    sim = Sim(el)
    sim.m.set_currents(1999.0, 1999.0, 1999.0)
    sim.run_for(1.0)
    assert sim.events == []
    sim.m.set_currents(1000.0, 2000.0, 1000.0)
    sim.step()
    assert el.output.events == EV_PICKUP | EV_TRIP
    assert el.output.tripped and el.output.phases == PH_B and el.output.event_ns == sim.now
    assert describe_events(el.output.events) == "PICKUP|TRIP"
    sim.m.ib = 1901.0  # above 0.95 x pickup: holds
    sim.step()
    assert el.output.tripped and el.output.events == 0
    sim.m.ib = 1899.0
    sim.step()
    assert el.output.events == EV_DROPOUT | EV_TRIP_RESET
    assert el.output.phases == 0


def test_50_definite_time_delay_exact() -> None:
    el = build_element(OvercurrentSettings(name="50P2", type="50", pickup_a=1000.0, delay_s=0.3))
    sim = Sim(el)
    sim.m.set_currents(1500.0, 1500.0, 1500.0)
    sim.run_until(lambda: el.output.tripped, 2.0)
    assert el.output.phases == PH_A | PH_B | PH_C
    assert sim.trip_delay_s() == pytest.approx(0.3, abs=1e-12)


def test_50_definite_time_restarts_after_dropout() -> None:
    el = build_element(OvercurrentSettings(name="50P2", type="50", pickup_a=1000.0, delay_s=0.3))
    sim = Sim(el)
    sim.m.set_currents(1500.0, 0.0, 0.0)
    sim.run_for(0.2)
    sim.m.ia = 0.0
    sim.step()
    sim.events.clear()
    sim.m.ia = 1500.0
    sim.run_until(lambda: el.output.tripped, 2.0)
    assert sim.trip_delay_s() == pytest.approx(0.3, abs=1e-12)


def test_50n_uses_residual_and_needs_only_in_valid() -> None:
    el = build_element(OvercurrentSettings(name="50N", type="50N", pickup_a=100.0, delay_s=0.1))
    sim = Sim(el)
    sim.m.set_currents(5000.0, 5000.0, 5000.0, 99.0)
    sim.m.valid = V_IN  # phase currents invalid: 50N does not need them
    sim.run_for(1.0)
    assert sim.events == []
    sim.m.i_n = 150.0
    sim.run_until(lambda: el.output.tripped, 1.0)
    assert el.output.phases == PH_N and not el.output.blocked
    assert sim.trip_delay_s() == pytest.approx(0.1, abs=1e-12)
    sim.m.valid = V_PHASE_I  # In stale: blocked, trip released
    sim.step()
    assert el.output.events == EV_BLOCKED | EV_DROPOUT | EV_TRIP_RESET
    assert el.output.blocked and not el.output.tripped
    sim.m.valid = V_ALL
    sim.step()
    assert el.output.events & EV_UNBLOCKED and el.output.events & EV_PICKUP
    assert not el.output.tripped  # delay runs again from the unblock


# -- 27 / 59 --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("logic", "volts", "picks"),
    [
        ("any", (7.0, VN, VN), True),
        ("any", (VN, VN, VN), False),
        ("all", (7.0, VN, VN), False),
        ("all", (7.0, 7.1, 7.2), True),
    ],
)
def test_59_any_all(logic: str, volts: tuple[float, float, float], picks: bool) -> None:
    el = build_element(OvervoltageSettings(name="59", type="59", pickup_kv=7.0, delay_s=0.5, logic=logic))  # type: ignore[arg-type]
    assert isinstance(el, VoltageElement)
    sim = Sim(el)
    sim.m.set_voltages(*volts)
    sim.run_for(1.0)
    assert el.output.tripped is picks
    if picks:
        assert sim.trip_delay_s() == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize(
    ("logic", "volts", "picks"),
    [
        ("any", (5.0, VN, VN), True),
        ("any", (VN, VN, VN), False),
        ("all", (5.0, VN, VN), False),
        ("all", (5.0, 4.0, 1.0), True),
    ],
)
def test_27_any_all(logic: str, volts: tuple[float, float, float], picks: bool) -> None:
    el = build_element(UndervoltageSettings(name="27", type="27", pickup_kv=5.0, delay_s=1.0, logic=logic))  # type: ignore[arg-type]
    sim = Sim(el)
    sim.m.set_voltages(*volts)
    sim.run_for(2.0)
    assert el.output.tripped is picks
    if picks:
        assert sim.trip_delay_s() == pytest.approx(1.0, abs=1e-12)


def test_27_hysteresis_and_phases() -> None:
    el = build_element(UndervoltageSettings(name="27", type="27", pickup_kv=5.0, logic="any"))
    sim = Sim(el)
    sim.m.set_voltages(VN, 4.9, VN)
    sim.step()
    assert el.output.tripped and el.output.phases == PH_B
    sim.m.vb = 5.2  # below 1.05 x 5.0 = 5.25: still under
    sim.step()
    assert el.output.picked_up
    sim.m.vb = 5.3
    sim.step()
    assert el.output.events == EV_DROPOUT | EV_TRIP_RESET


def test_27_blocked_by_stale_voltage() -> None:
    el = build_element(UndervoltageSettings(name="27", type="27", pickup_kv=5.0, delay_s=0.1))
    sim = Sim(el)
    sim.m.set_voltages(0.0, 0.0, 0.0)  # a dead VT circuit that is flagged stale must not trip
    sim.m.valid = V_ALL & ~V_VB
    sim.run_for(1.0)
    assert sim.events == [(sim.first(EV_BLOCKED) or 0, EV_BLOCKED)]
    assert not el.output.tripped


# -- 81U / 81O ------------------------------------------------------------------------------------------------


def _freq(type_: str, pickup: float, uv: float = 3.0, delay: float = 0.2) -> Element:
    return build_element(FrequencySettings(name="81", type=type_, pickup_hz=pickup, uv_block_kv=uv, delay_s=delay))  # type: ignore[arg-type]


def test_81u_trips_after_delay_and_hysteresis() -> None:
    el = _freq("81U", 49.5)
    assert isinstance(el, FrequencyElement)
    sim = Sim(el)
    _healthy(sim)
    sim.m.f = 49.51
    sim.run_for(1.0)
    assert sim.events == []
    sim.m.f = 49.5
    sim.run_until(lambda: el.output.tripped, 1.0)
    assert sim.trip_delay_s() == pytest.approx(0.2, abs=1e-12)
    sim.m.f = 49.515  # inside the 0.02 Hz dropout band
    sim.step()
    assert el.output.tripped
    sim.m.f = 49.52
    sim.step()
    assert not el.output.picked_up


def test_81o() -> None:
    el = _freq("81O", 51.0)
    sim = Sim(el)
    _healthy(sim)
    sim.m.f = 51.2
    sim.run_until(lambda: el.output.tripped, 1.0)
    assert sim.trip_delay_s() == pytest.approx(0.2, abs=1e-12)


def test_81u_undervoltage_block() -> None:
    el = _freq("81U", 49.5, uv=3.0)
    sim = Sim(el)
    _healthy(sim)
    sim.m.f = 48.0
    sim.m.va = 2.9  # one phase collapsed: frequency not trusted
    sim.run_for(1.0)
    assert el.output.blocked and not el.output.tripped
    assert sim.events[0][1] == EV_BLOCKED
    sim.m.va = VN
    sim.step()
    assert el.output.events == EV_UNBLOCKED | EV_PICKUP
    sim.events.clear()
    sim.run_until(lambda: el.output.tripped, 1.0)
    assert el.output.tripped
    # blocking while tripped releases the trip
    sim.m.vc = 1.0
    sim.step()
    assert el.output.events == EV_BLOCKED | EV_DROPOUT | EV_TRIP_RESET


def test_81_without_uv_block_needs_only_f() -> None:
    el = _freq("81U", 49.5, uv=0.0)
    sim = Sim(el)
    sim.m.valid = V_F
    sim.m.f = 49.0
    sim.m.set_voltages(0.0, 0.0, 0.0)
    sim.run_until(lambda: el.output.tripped, 1.0)
    assert el.output.tripped
    sim.m.valid = V_IA
    sim.step()
    assert el.output.blocked


# -- 81R ------------------------------------------------------------------------------------------------------


def _rocof(pickup: float = 0.5, window: float = 0.1, delay: float = 0.05, direction: str = "both") -> RocofElement:
    el = build_element(
        RocofSettings(
            name="81R",
            type="81R",
            pickup_hz_s=pickup,
            window_s=window,
            uv_block_kv=3.0,
            delay_s=delay,
            direction=direction,  # type: ignore[arg-type]
        )
    )
    assert isinstance(el, RocofElement)
    return el


def _ramp(sim: Sim, rate_hz_s: float, seconds: float) -> None:
    for _ in range(round(seconds * 1000)):
        sim.m.f += rate_hz_s * 1e-3
        sim.step()


def test_81r_needs_a_full_window_then_measures_the_slope() -> None:
    el = _rocof()
    sim = Sim(el)
    _healthy(sim)
    _ramp(sim, -1.0, 0.099)
    assert math.isnan(el.rocof_hz_s) and sim.events == []
    _ramp(sim, -1.0, 0.002)
    assert el.rocof_hz_s == pytest.approx(-1.0, rel=1e-6)
    assert el.output.picked_up
    _ramp(sim, -1.0, 0.06)
    assert el.output.tripped
    assert sim.trip_delay_s() == pytest.approx(0.05, abs=1e-12)


def test_81r_steady_and_wrong_direction_do_not_operate() -> None:
    for direction, rate in (("fall", +2.0), ("rise", -2.0), ("both", 0.0)):
        el = _rocof(direction=direction)
        sim = Sim(el)
        _healthy(sim)
        _ramp(sim, rate, 1.0)
        assert sim.events == [], direction
        assert el.rocof_hz_s == pytest.approx(rate, abs=1e-6)


def test_81r_window_filters_a_frequency_step() -> None:
    # a 0.1 Hz jump is a df/dt of 0.1/window for one window: 1 Hz/s with 0.1 s, 0.2 Hz/s with 0.5 s
    results = {}
    for window in (0.1, 0.5):
        el = _rocof(pickup=0.5, window=window, delay=0.0)
        sim = Sim(el)
        _healthy(sim)
        sim.run_for(window + 0.01)
        sim.m.f = 50.1
        sim.run_for(2 * window)
        results[window] = sim.events
    assert [e for _, e in results[0.5]] == []
    evs = results[0.1]
    assert [e for _, e in evs] == [EV_PICKUP | EV_TRIP, EV_DROPOUT | EV_TRIP_RESET]
    held = (evs[1][0] - evs[0][0]) / MS
    assert 100 <= held <= 100 + 100 / 64 + 2  # held for about one window (decimation granularity)


def test_81r_blocked_by_invalid_frequency_and_undervoltage() -> None:
    el = _rocof()
    sim = Sim(el)
    _healthy(sim)
    _ramp(sim, -1.0, 0.2)
    assert el.output.tripped
    sim.m.valid = V_ALL & ~V_F
    sim.step()
    assert el.output.events == EV_BLOCKED | EV_DROPOUT | EV_TRIP_RESET
    sim.m.valid = V_ALL
    _ramp(sim, -1.0, 0.05)  # history starts again: no df/dt until a full window is seen
    assert math.isnan(el.rocof_hz_s) and not el.output.picked_up
    sim.m.vb = 0.5
    sim.step()
    assert el.output.blocked

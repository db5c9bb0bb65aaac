"""Energy and demand: trapezoidal kWh, gaps, local days and dayparts, cadence, high demand, efficiency."""

from __future__ import annotations

import json

import numpy as np
import numpy.typing as npt
import pytest

from gateway.analytics.base import AnalyticsOutput, DerivedReading
from gateway.analytics.config import EnergyConfig, MeterConfig
from gateway.analytics.energy import DEMAND_ACTION, GAP_QUALITY, EnergyAnalytics
from gateway.model import Q

S = 1_000_000_000
H = 3600 * S
DAY0 = (1_790_000_000 // 86400) * 86400 * S  # a UTC midnight


def analytics(meters: tuple[MeterConfig, ...] | None = None, **kw: object) -> EnergyAnalytics:
    if meters is None:
        meters = (MeterConfig("pv1", "pv1.P"),)
    return EnergyAnalytics(EnergyConfig(meters=meters, **kw))  # type: ignore[arg-type]


def feed(
    e: EnergyAnalytics, ts: npt.ArrayLike, value: npt.ArrayLike, q: int | npt.ArrayLike = 0, meter: int = 0
) -> None:
    t = np.asarray(ts, dtype=np.int64)
    e.feed(
        np.full(len(t), meter, dtype=np.int32),
        t,
        np.asarray(value, dtype=np.float64) * np.ones(len(t)),
        np.asarray(q, dtype=np.uint16) * np.ones(len(t), dtype=np.uint16),
    )


def grid(start: int, end: int, step_s: float) -> npt.NDArray[np.int64]:
    """Timestamps from start to end inclusive, every step_s."""
    return np.arange(start, end + 1, int(step_s * S), dtype=np.int64)


def named(out: AnalyticsOutput, name: str) -> list[DerivedReading]:
    return [r for r in out.readings if r.name == name]


def one(out: AnalyticsOutput, name: str) -> DerivedReading:
    rs = named(out, name)
    assert len(rs) == 1, (name, rs)
    return rs[0]


def test_derived_points_follow_the_meter_config() -> None:
    e = analytics((MeterConfig("pv1", "pv1.P", rated_w=400, daily_target_kwh=2.5, high_demand_w=350),
                   MeterConfig("load", "feeder1.P", unit="kW")))
    assert e.inputs() == ["pv1.P", "feeder1.P"]
    names = {p.name: p.unit for p in e.derived_points()}
    for n in ("energy_today_kwh", "energy_day_kwh", "energy_night_kwh", "energy_evening_kwh"):
        assert names[f"pv1.{n}"] == "kWh" and names[f"load.{n}"] == "kWh"
    assert names["pv1.gap_s_day"] == "s" and names["pv1.daypart"] == ""
    for n in ("energy_vs_target", "high_demand", "efficiency"):
        assert f"pv1.{n}" in names and f"load.{n}" not in names
    assert all(p.device in ("pv1", "load") for p in e.derived_points())


def test_constant_1_kw_for_1_hour_is_1_kwh() -> None:
    e = analytics((MeterConfig("m", "m.P", unit="kW", daily_target_kwh=4.0),), emit_every_s=60)
    start = DAY0 + 8 * H
    e.advance(start - 30 * S)
    feed(e, grid(start, start + H, 1.0), 1.0)
    out = e.advance(start + H)  # a multiple of 60 s: the cadence emits
    assert one(out, "m.energy_today_kwh").value == pytest.approx(1.0, abs=1e-9)
    assert one(out, "m.energy_today_kwh").ts == start + H
    assert one(out, "m.energy_vs_target").value == pytest.approx(0.25, abs=1e-9)
    # the gateway started at 08:00: the 8 hours before are not covered, and said so
    assert one(out, "m.gap_s_today").value == pytest.approx(8 * 3600)
    assert one(out, "m.energy_today_kwh").quality == GAP_QUALITY


def test_a_ramp_is_integrated_exactly_by_trapezoids() -> None:
    e = analytics((MeterConfig("m", "m.P", unit="W"),))
    start = DAY0 + 9 * H
    ts = grid(start, start + H, 2.5)  # 0 -> 2000 W linearly over one hour = 1 kWh
    p = (ts - start) / H * 2000.0
    e.advance(start)
    feed(e, ts, p)
    out = e.advance(start + H + 60 * S)
    assert one(out, "m.energy_today_kwh").value == pytest.approx(1.0, abs=1e-9)


def test_kw_and_w_units() -> None:
    e = analytics((MeterConfig("a", "a.P", unit="W"), MeterConfig("b", "b.P", unit="kW")))
    start = DAY0 + 10 * H
    e.advance(start)
    feed(e, grid(start, start + H, 1), 500.0, meter=0)
    feed(e, grid(start, start + H, 1), 0.5, meter=1)
    out = e.advance(start + H + 60 * S)
    assert one(out, "a.energy_today_kwh").value == pytest.approx(0.5)
    assert one(out, "b.energy_today_kwh").value == pytest.approx(0.5)


def whole_day(e: EnergyAnalytics, day_start: int, kw: float, step_s: float = 10.0,
              hole: tuple[int, int] | None = None) -> None:
    ts = grid(day_start, day_start + 24 * H, step_s)  # the last row is the next midnight: the day is covered
    if hole is not None:
        ts = ts[(ts <= hole[0]) | (ts >= hole[1])]
    feed(e, ts, kw)


def test_a_fully_covered_day_has_no_gap_and_good_quality() -> None:
    e = analytics((MeterConfig("m", "m.P", unit="kW"),), max_gap_s=10)
    e.advance(DAY0)
    whole_day(e, DAY0, 1.0)
    out = e.advance(DAY0 + 24 * H + 30 * S)
    day = one(out, "m.energy_day_kwh")
    assert (day.ts, day.quality) == (DAY0, 0)
    assert day.value == pytest.approx(24.0)
    assert one(out, "m.gap_s_day").value == 0.0
    parts = [one(out, f"m.energy_{p}_kwh") for p in ("night", "morning", "afternoon", "evening")]
    assert [r.ts for r in parts] == [DAY0, DAY0 + 6 * H, DAY0 + 12 * H, DAY0 + 18 * H]
    assert [r.value for r in parts] == pytest.approx([6.0, 6.0, 6.0, 6.0])
    assert all(r.quality == 0 for r in parts)


def test_a_30_minute_gap_is_not_filled_and_flags_the_day() -> None:
    e = analytics((MeterConfig("m", "m.P", unit="kW"),), max_gap_s=10)
    e.advance(DAY0)
    hole = (DAY0 + 13 * H, DAY0 + 13 * H + 1800 * S)
    whole_day(e, DAY0, 1.0, hole=hole)
    out = e.advance(DAY0 + 24 * H + 30 * S)
    day = one(out, "m.energy_day_kwh")
    assert day.value == pytest.approx(23.5)  # the gap's 0.5 kWh is not invented
    assert day.quality == GAP_QUALITY == int(Q.QUESTIONABLE | Q.INACCURATE)
    assert one(out, "m.gap_s_day").value == pytest.approx(1800.0)
    assert one(out, "m.energy_afternoon_kwh").value == pytest.approx(5.5)
    assert one(out, "m.energy_afternoon_kwh").quality == GAP_QUALITY
    assert one(out, "m.energy_morning_kwh").quality == 0


def test_gap_limit_is_inclusive_and_configurable() -> None:
    e = analytics((MeterConfig("m", "m.P", unit="kW"),), max_gap_s=30)
    start = DAY0 + 8 * H
    e.advance(start)
    feed(e, [start, start + 30 * S, start + 61 * S, start + 91 * S], 3.6)  # 30 s ok, 31 s gap, 30 s ok
    out = e.advance(start + 120 * S)
    assert one(out, "m.energy_today_kwh").value == pytest.approx(3.6 * 60 / 3600)


def test_running_gap_counts_silence_once_it_exceeds_max_gap() -> None:
    e = analytics((MeterConfig("m", "m.P"),), max_gap_s=10, emit_every_s=60)
    start = DAY0
    e.advance(start)
    feed(e, grid(start, start + 600 * S, 1), 100.0)
    out = e.advance(start + 600 * S)
    assert one(out, "m.gap_s_today").value == 0.0 and one(out, "m.energy_today_kwh").quality == 0
    out = e.advance(start + 660 * S)  # silent for 60 s > max_gap: a gap of 60 s so far
    assert one(out, "m.gap_s_today").value == pytest.approx(60.0)
    assert one(out, "m.energy_today_kwh").quality == GAP_QUALITY


def test_invalid_rows_are_skipped_without_breaking_the_segment() -> None:
    e = analytics((MeterConfig("m", "m.P", unit="kW"),), max_gap_s=10)
    start = DAY0 + 8 * H
    e.advance(start)
    ts = grid(start, start + H, 1)
    q = np.zeros(len(ts), dtype=np.uint16)
    q[1::2] = int(Q.INVALID)  # every other row invalid: valid rows 2 s apart
    vals = np.where(q == 0, 1.0, 99.0)
    vals[4] = np.nan  # and a NaN in a good row
    feed(e, ts, vals, q)
    out = e.advance(start + H + 60 * S)
    assert one(out, "m.energy_today_kwh").value == pytest.approx(1.0)
    assert e.invalid_readings == len(ts) // 2 + 1


def test_questionable_rows_are_used_and_mark_the_energy_questionable() -> None:
    e = analytics((MeterConfig("m", "m.P", unit="kW"),))
    e.advance(DAY0)
    ts = grid(DAY0, DAY0 + 24 * H, 10)
    q = np.zeros(len(ts), dtype=np.uint16)
    q[100] = int(Q.QUESTIONABLE | Q.SUBSTITUTED)
    feed(e, ts, 1.0, q)
    out = e.advance(DAY0 + 24 * H + 30 * S)
    assert one(out, "m.energy_day_kwh").value == pytest.approx(24.0)
    assert one(out, "m.energy_day_kwh").quality == int(Q.QUESTIONABLE)
    assert one(out, "m.energy_night_kwh").quality == int(Q.QUESTIONABLE)
    assert one(out, "m.energy_morning_kwh").quality == 0


def test_day_rollover_at_local_midnight_splits_the_crossing_segment() -> None:
    e = analytics((MeterConfig("m", "m.P", unit="kW"),), utc_offset_h=2.0, max_gap_s=10, emit_every_s=60)
    midnight = DAY0 + 22 * H  # 00:00 local (UTC+2)
    e.advance(midnight - H)
    ts = np.array([midnight - 5 * S, midnight + 5 * S], dtype=np.int64)  # one segment across midnight
    feed(e, ts, [0.0, 3.6])  # linear 0 -> 3.6 kW over 10 s: 1.25 Wh before midnight, 3.75 Wh after
    out = e.advance(midnight + 5 * S)
    day = one(out, "m.energy_day_kwh")  # closed by the row after midnight, before the timeout
    assert day.ts == midnight - 24 * H
    assert day.value == pytest.approx(0.00125)
    assert one(out, "m.energy_evening_kwh").value == pytest.approx(0.00125)
    assert one(out, "m.gap_s_day").value == pytest.approx(86400 - 5)  # only 23:59:55-24:00 was covered
    out = e.advance(midnight + 60 * S)
    assert one(out, "m.energy_today_kwh").value == pytest.approx(0.00375)
    assert one(out, "m.daypart").value == 0.0  # night


def test_day_closes_by_timeout_when_the_meter_is_silent() -> None:
    e = analytics((MeterConfig("m", "m.P", unit="kW"),), max_gap_s=10)
    e.advance(DAY0 + 23 * H)
    feed(e, grid(DAY0 + 23 * H, DAY0 + 24 * H - 5 * S, 1), 1.0)
    assert named(e.advance(DAY0 + 24 * H + 9 * S), "m.energy_day_kwh") == []
    out = e.advance(DAY0 + 24 * H + 10 * S)
    assert one(out, "m.energy_day_kwh").value == pytest.approx((3600 - 5) / 3600)
    # a late row bridging midnight adds only the new day's part
    feed(e, [DAY0 + 24 * H + 3 * S], 1.0)
    out = e.advance(DAY0 + 24 * H + 60 * S)
    assert named(out, "m.energy_day_kwh") == []
    assert one(out, "m.energy_today_kwh").value == pytest.approx(3 / 3600)


def test_dayparts_mapping_and_energy_per_daypart_in_local_time() -> None:
    e = analytics((MeterConfig("m", "m.P", unit="kW"),), utc_offset_h=-5.0, emit_every_s=3600)
    local0 = DAY0 + 5 * H  # 00:00 local
    e.advance(local0 + 5 * H - 10 * S)
    ts = grid(local0 + 5 * H, local0 + 7 * H, 1)  # 1 kW 05:00-07:00 local, fed as it happens
    parts = {}
    out = AnalyticsOutput()
    for hour in (5, 6, 7, 11, 12, 17, 18, 23):
        feed(e, ts[(ts > local0 + (hour - 1) * H) & (ts <= local0 + hour * H)], 1.0)
        step = e.advance(local0 + hour * H)
        out.extend(step)
        if named(step, "m.daypart"):
            parts[hour] = one(step, "m.daypart").value
    assert parts == {5: 0.0, 6: 1.0, 7: 1.0, 11: 1.0, 12: 2.0, 17: 2.0, 18: 3.0, 23: 3.0}
    out.extend(e.advance(local0 + 24 * H + 10 * S))
    assert one(out, "m.energy_night_kwh").value == pytest.approx(1.0)
    assert one(out, "m.energy_night_kwh").ts == local0
    assert one(out, "m.energy_morning_kwh").value == pytest.approx(1.0)
    assert one(out, "m.energy_afternoon_kwh").value == 0.0
    assert one(out, "m.energy_day_kwh").value == pytest.approx(2.0)
    assert one(out, "m.gap_s_day").value == pytest.approx(22 * 3600)


def test_late_and_duplicate_rows_are_dropped() -> None:
    e = analytics((MeterConfig("m", "m.P", unit="kW"),))
    start = DAY0 + 8 * H
    e.advance(start)
    feed(e, grid(start, start + 600 * S, 1), 3.6)
    e.advance(start + 601 * S)
    feed(e, [start + 300 * S, start + 600 * S, start + 601 * S, start + 601 * S], 100.0)
    out = e.advance(start + 660 * S)
    assert one(out, "m.energy_today_kwh").value == pytest.approx((600 * 3.6 + (3.6 + 100) / 2) / 3600)
    assert e.late_readings == 3


def test_high_demand_start_and_end_events_with_hysteresis() -> None:
    e = analytics((MeterConfig("pv1", "pv1.P", high_demand_w=350),), demand_hysteresis_pct=5)
    start = DAY0 + 12 * H
    e.advance(start)
    power = [300, 340, 351, 360, 340, 333, 332, 349, 355]
    ts = [start + i * S for i in range(len(power))]
    feed(e, ts, power)
    out = e.advance(start + 60 * S)
    flags = [(r.ts, r.value) for r in named(out, "pv1.high_demand") if r.ts != start + 60 * S]
    # first row sets the initial state (0); 351 starts it; 340, 333 stay (>= 332.5); 332 ends it; 355 again
    assert flags == [(ts[0], 0.0), (ts[2], 1.0), (ts[6], 0.0), (ts[8], 1.0)]
    assert one_cadence(out, "pv1.high_demand", start + 60 * S) == 1.0
    evs = [(ev.ts, json.loads(ev.data)["state"]) for ev in out.events]
    assert evs == [(ts[2], "raised"), (ts[6], "cleared"), (ts[8], "raised")]
    ev = out.events[0]
    assert (ev.kind, ev.priority, ev.device, ev.point) == ("alarm", 2, "pv1", "pv1.P")
    assert "351.0 W > 350.0 W" in ev.message
    assert json.loads(ev.data)["suggested_action"] == DEMAND_ACTION


def one_cadence(out: AnalyticsOutput, name: str, ts: int) -> float:
    rs = [r for r in named(out, name) if r.ts == ts]
    assert len(rs) == 1
    return rs[0].value


def test_high_demand_state_carries_across_feeds() -> None:
    e = analytics((MeterConfig("pv1", "pv1.P", high_demand_w=350),))
    start = DAY0 + 12 * H
    e.advance(start)
    feed(e, [start + S], [400])
    out1 = e.advance(start + 2 * S)
    feed(e, [start + 3 * S, start + 4 * S], [345, 300])
    out2 = e.advance(start + 5 * S)
    assert [json.loads(x.data)["state"] for x in out1.events] == ["raised"]
    assert [json.loads(x.data)["state"] for x in out2.events] == ["cleared"]


def test_efficiency_is_mean_power_over_rated_per_emission() -> None:
    e = analytics((MeterConfig("pv1", "pv1.P", rated_w=400),), emit_every_s=60)
    start = DAY0 + 12 * H
    e.advance(start)
    feed(e, grid(start, start + 59 * S, 1), np.linspace(100, 300, 60))
    out = e.advance(start + 60 * S)
    assert one(out, "pv1.efficiency").value == pytest.approx(0.5)
    assert one(out, "pv1.efficiency").ts == start + 60 * S
    out = e.advance(start + 120 * S)  # nothing received: no invented efficiency
    assert named(out, "pv1.efficiency") == []


def test_cadence_is_aligned_and_not_repeated() -> None:
    e = analytics((MeterConfig("m", "m.P"),), emit_every_s=60)
    start = DAY0 + 12 * H + 13 * S
    assert e.advance(start).readings == []
    assert named(e.advance(start + 30 * S), "m.energy_today_kwh") == []
    out = e.advance(start + 47 * S)  # 12:01:00
    assert [r.ts for r in named(out, "m.energy_today_kwh")] == [DAY0 + 12 * H + 60 * S]
    assert named(e.advance(start + 50 * S), "m.energy_today_kwh") == []


def test_batch_feed_equals_row_by_row_feed() -> None:
    rng = np.random.default_rng(7)
    start = DAY0 + 5 * H
    steps = rng.integers(200, 15_000, 20_000) * 1_000_000  # 0.2..15 s, some gaps over 10 s
    ts = start + np.cumsum(steps)
    p = rng.uniform(-50, 500, len(ts))
    a = analytics((MeterConfig("m", "m.P"),), utc_offset_h=1.5)
    b = analytics((MeterConfig("m", "m.P"),), utc_offset_h=1.5)
    a.advance(start)
    b.advance(start)
    feed(a, ts, p)
    out_a = a.advance(int(ts[-1]) + 30 * H)
    out_b = AnalyticsOutput()
    for i in range(0, len(ts), 97):
        feed(b, ts[i:i + 97], p[i:i + 97])
        out_b.extend(b.advance(int(ts[min(i + 96, len(ts) - 1)])))
    out_b.extend(b.advance(int(ts[-1]) + 30 * H))
    for name in ("m.energy_day_kwh", "m.gap_s_day", "m.energy_night_kwh", "m.energy_evening_kwh"):
        va = [(r.ts, r.quality) for r in named(out_a, name)]
        assert va and va == [(r.ts, r.quality) for r in named(out_b, name)]
        assert [r.value for r in named(out_a, name)] == pytest.approx([r.value for r in named(out_b, name)])
    # and the total matches an independent trapezoid over the non-gap segments
    dt = np.diff(ts)
    ok = dt <= 10 * S
    ref = float(np.sum((dt * (p[:-1] + p[1:]) / 2)[ok])) / 3.6e15
    days = sum(r.value for r in named(out_a, "m.energy_day_kwh"))
    assert days == pytest.approx(ref, rel=1e-9)


def test_a_clock_jump_closes_the_open_day_and_skips_empty_days() -> None:
    e = analytics((MeterConfig("m", "m.P", unit="kW"),))
    e.advance(DAY0 + 8 * H)
    feed(e, grid(DAY0 + 8 * H, DAY0 + 9 * H, 1), 1.0)
    e.advance(DAY0 + 9 * H)
    out = e.advance(DAY0 + 400 * 24 * H + 12 * H)  # a year later
    days = named(out, "m.energy_day_kwh")
    assert [(r.ts, round(r.value, 9)) for r in days] == [(DAY0, 1.0)]  # the open day, then nothing per empty day
    assert len(out.readings) < 20
    feed(e, grid(DAY0 + 400 * 24 * H + 12 * H, DAY0 + 400 * 24 * H + 13 * H, 1), 2.0)
    out = e.advance(DAY0 + 400 * 24 * H + 13 * H)
    assert one(out, "m.energy_today_kwh").value == pytest.approx(2.0)


def test_a_meter_without_rows_reports_zero_energy_flagged_as_a_gap() -> None:
    e = analytics((MeterConfig("m", "m.P"), MeterConfig("n", "n.P")))
    e.advance(DAY0)
    feed(e, grid(DAY0, DAY0 + 24 * H, 10), 100.0, meter=1)
    out = e.advance(DAY0 + 24 * H + 30 * S)
    assert (one(out, "m.energy_day_kwh").value, one(out, "m.energy_day_kwh").quality) == (0.0, GAP_QUALITY)
    assert one(out, "m.gap_s_day").value == 86400.0
    assert (one(out, "n.energy_day_kwh").value, one(out, "n.energy_day_kwh").quality) == (pytest.approx(2.4), 0)

"""Frequency monitor: 1-s windows, exact limits, window-close rule, hysteresis, quality, buses, 60 Hz."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gateway.analytics.base import AnalyticsOutput
from gateway.analytics.config import BusConfig, FrequencyConfig
from gateway.analytics.frequency import CLEAR_ACTION, OVER_ACTION, UNDER_ACTION, FrequencyMonitor
from gateway.model import Q

S = 1_000_000_000
T0 = 1_790_000_000 * S  # a whole UTC second
MS = 1_000_000


def monitor(**kw: object) -> FrequencyMonitor:
    buses = kw.pop("buses", (BusConfig("bus1", "incomer.f"),))
    return FrequencyMonitor(FrequencyConfig(buses=buses, **kw))  # type: ignore[arg-type]


def feed(m: FrequencyMonitor, rows: list[tuple[int, int, float, int]]) -> None:
    """rows: (bus index, ts ns, Hz, quality)."""
    m.feed(
        np.array([r[0] for r in rows], dtype=np.int32),
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.float64),
        np.array([r[3] for r in rows], dtype=np.uint16),
    )


def window(m: FrequencyMonitor, second: int, hz: float | list[float], bus: int = 0, q: int = 0) -> None:
    """Readings at 20/s inside window T0 + second (all equal to hz, or the given list spread over it)."""
    values = hz if isinstance(hz, list) else [hz] * 20
    step = S // len(values)
    feed(m, [(bus, T0 + second * S + i * step, v, q) for i, v in enumerate(values)])


def run(m: FrequencyMonitor, seconds: list[float], grace_ms: int = 200) -> AnalyticsOutput:
    """Each window in turn, closed by time (advance at its end + grace)."""
    out = AnalyticsOutput()
    for k, hz in enumerate(seconds):
        window(m, k, hz)
        out.extend(m.advance(T0 + (k + 1) * S + grace_ms * MS))
    return out


def states(out: AnalyticsOutput) -> list[tuple[str, str, int]]:
    res = []
    for e in out.events:
        d = json.loads(e.data)
        res.append((d["state"], d["condition"], (d["window_start_ns"] - T0) // S))
    return res


def test_inputs_and_derived_points() -> None:
    m = monitor(buses=(BusConfig("bus1", "incomer.f"), BusConfig("bus2", "tie.f")))
    assert m.inputs() == ["incomer.f", "tie.f"]
    pts = m.derived_points()
    assert [(p.name, p.device, p.point, p.unit) for p in pts] == [
        ("bus1.f_avg_1s", "bus1", "f_avg_1s", "Hz"),
        ("bus2.f_avg_1s", "bus2", "f_avg_1s", "Hz"),
    ]


def test_window_average_is_a_derived_reading_at_the_window_start() -> None:
    m = monitor()
    window(m, 0, [49.9, 50.0, 50.1, 50.2])
    out = m.advance(T0 + S + 200 * MS)
    assert len(out.readings) == 1
    r = out.readings[0]
    assert (r.name, r.ts, r.quality) == ("bus1.f_avg_1s", T0, 0)
    assert r.value == pytest.approx(50.05)
    assert out.events == []


@pytest.mark.parametrize(
    ("hz", "alarm"),
    [(49.8, None), (49.7999, "under-frequency"), (50.2, None), (50.2001, "over-frequency"), (50.0, None)],
)
def test_exact_limits_are_not_alarms(hz: float, alarm: str | None) -> None:
    m = monitor()
    out = run(m, [hz])  # 20 equal readings: the float sum is not exactly 20 x hz, the tolerance absorbs it
    assert out.readings[0].value == pytest.approx(hz, abs=1e-12)
    if alarm is None:
        assert out.events == []
    else:
        assert states(out) == [("raised", alarm, 0)]


def test_a_window_averaging_exactly_the_limit_from_mixed_values_is_not_an_alarm() -> None:
    m = monitor()
    window(m, 0, [49.7, 49.9, 49.6, 50.0])  # average 49.8
    out = m.advance(T0 + S + 200 * MS)
    assert out.events == []
    window(m, 1, [49.7, 49.9, 49.6, 49.9996])  # average 49.7999
    out = m.advance(T0 + 2 * S + 200 * MS)
    assert states(out) == [("raised", "under-frequency", 1)]


def test_under_frequency_event_fields_and_suggested_action() -> None:
    m = monitor()
    out = run(m, [50.0, 49.7])
    assert len(out.events) == 1
    e = out.events[0]
    assert (e.kind, e.priority, e.device, e.point) == ("alarm", 1, "bus1", "incomer.f")
    assert e.ts == T0 + 2 * S  # end of the window that decided it
    assert "49.700 Hz" in e.message and "49.800 Hz" in e.message and "under-frequency" in e.message
    d = json.loads(e.data)
    assert d["state"] == "raised"
    assert d["window_start_ns"] == T0 + S
    assert d["avg_hz"] == pytest.approx(49.7)
    assert d["limit"] == pytest.approx(49.8)
    assert d["clear_limit"] == pytest.approx(49.85)
    assert d["quality"] == "good"
    assert d["suggested_action"] == UNDER_ACTION and "load shedding" in UNDER_ACTION


def test_over_frequency_suggests_curtailment() -> None:
    m = monitor()
    out = run(m, [50.3])
    d = json.loads(out.events[0].data)
    assert d["condition"] == "over-frequency" and d["limit"] == pytest.approx(50.2)
    assert d["suggested_action"] == OVER_ACTION and "curtail PV" in OVER_ACTION


def test_window_closes_at_end_plus_grace_not_before() -> None:
    m = monitor(grace_ms=300)
    window(m, 0, 49.5)
    assert m.advance(T0 + S).events == []  # end reached, grace not over
    assert m.advance(T0 + S + 299 * MS).readings == []
    out = m.advance(T0 + S + 300 * MS)
    assert [r.ts for r in out.readings] == [T0]
    assert states(out) == [("raised", "under-frequency", 0)]
    assert m.advance(T0 + 5 * S).events == []  # emitted once


def test_a_reading_of_a_later_window_closes_the_window_early() -> None:
    m = monitor(grace_ms=500)
    window(m, 0, 49.5)
    feed(m, [(0, T0 + S + 10 * MS, 49.5, 0)])
    out = m.advance(T0 + S + 20 * MS)  # well inside the grace
    assert [r.ts for r in out.readings] == [T0]
    assert states(out) == [("raised", "under-frequency", 0)]


def test_late_readings_within_the_grace_count_and_later_ones_are_dropped() -> None:
    m = monitor(grace_ms=200)
    window(m, 0, 50.0)
    assert m.advance(T0 + S + 100 * MS).readings == []
    feed(m, [(0, T0 + 990 * MS, 49.0, 0)])  # late, but inside the grace: part of window 0
    out = m.advance(T0 + S + 200 * MS)
    assert out.readings[0].value == pytest.approx((20 * 50.0 + 49.0) / 21)
    feed(m, [(0, T0 + 995 * MS, 40.0, 0)])  # window 0 is closed: dropped, counted
    out = m.advance(T0 + S + 300 * MS)
    assert out.readings == [] and out.events == []
    assert m.late_readings == 1


def test_rows_in_one_feed_are_windowed_regardless_of_their_order() -> None:
    m = monitor()
    feed(m, [(0, T0 + S + 5 * MS, 50.0, 0), (0, T0 + 500 * MS, 49.0, 0), (0, T0 + 100 * MS, 49.2, 0)])
    out = m.advance(T0 + S + 10 * MS)
    assert [(r.ts, round(r.value, 6)) for r in out.readings] == [(T0, 49.1)]
    assert m.late_readings == 0


def test_windows_without_readings_produce_nothing() -> None:
    m = monitor()
    window(m, 0, 50.0)
    window(m, 3, 50.0)
    out = m.advance(T0 + 10 * S)
    assert [r.ts for r in out.readings] == [T0, T0 + 3 * S]


def test_invalid_rows_are_excluded_and_all_invalid_window_is_silent() -> None:
    m = monitor()
    feed(m, [
        (0, T0 + 0 * MS, 50.0, 0),
        (0, T0 + 100 * MS, 10.0, int(Q.INVALID)),
        (0, T0 + 200 * MS, float("nan"), 0),
        (0, T0 + 300 * MS, 50.1, int(Q.GATEWAY_TIME)),  # gateway time: still good
        (0, T0 + S, 10.0, int(Q.INVALID | Q.FAILURE)),
    ])
    out = m.advance(T0 + 5 * S)
    assert [(r.ts, round(r.value, 6), r.quality) for r in out.readings] == [(T0, 50.05, 0)]
    assert out.events == []
    assert m.invalid_readings == 3


def test_questionable_rows_give_a_questionable_average_only_when_no_good_row() -> None:
    m = monitor()
    window(m, 0, 49.0, q=int(Q.QUESTIONABLE | Q.OLD_DATA))
    feed(m, [(0, T0 + S, 50.0, 0), (0, T0 + S + 1, 40.0, int(Q.QUESTIONABLE))])
    out = m.advance(T0 + 5 * S)
    assert [(r.ts, r.value, r.quality) for r in out.readings] == [
        (T0, pytest.approx(49.0), int(Q.QUESTIONABLE)),
        (T0 + S, pytest.approx(50.0), 0),
    ]
    d = json.loads(out.events[0].data)  # a questionable average still alarms, and says so
    assert d["quality"] == "questionable" and "questionable" in out.events[0].message


def test_hysteresis_needs_consecutive_windows_inside_band_minus_hysteresis() -> None:
    m = monitor(hysteresis_hz=0.05, clear_windows=3)
    seq = [49.7, 49.85, 49.9, 49.82, 49.9, 49.95, 49.7999, 49.86, 49.86, 49.86, 50.0]
    out = run(m, seq)
    # 49.82 is inside the band but within the hysteresis: the run restarts; 49.85 is inclusive
    assert states(out) == [("raised", "under-frequency", 0), ("cleared", "under-frequency", 9)]
    cleared = out.events[1]
    assert json.loads(cleared.data)["suggested_action"] == CLEAR_ACTION
    assert "cleared" in cleared.message
    assert len(out.readings) == len(seq)


def test_a_second_without_readings_breaks_the_clear_run() -> None:
    m = monitor(clear_windows=2)
    out = AnalyticsOutput()
    for k, hz in [(0, 49.5), (1, 50.0), (3, 50.0), (4, 50.0)]:
        window(m, k, hz)
        out.extend(m.advance(T0 + (k + 1) * S + 200 * MS))
    assert states(out) == [("raised", "under-frequency", 0), ("cleared", "under-frequency", 4)]


def test_raise_again_after_clear_and_flip_to_the_other_side() -> None:
    m = monitor(clear_windows=1)
    out = run(m, [49.5, 50.0, 49.5, 50.5])
    assert states(out) == [
        ("raised", "under-frequency", 0),
        ("cleared", "under-frequency", 1),
        ("raised", "under-frequency", 2),
        ("cleared", "under-frequency", 3),
        ("raised", "over-frequency", 3),
    ]


def test_multiple_buses_are_independent_in_one_interleaved_feed() -> None:
    m = monitor(buses=(BusConfig("bus1", "incomer.f"), BusConfig("bus2", "tie.f"), BusConfig("bus3", "gen.f")))
    rows = []
    for i in range(20):
        t = T0 + i * 50 * MS
        rows += [(0, t, 50.0, 0), (1, t, 49.6, 0), (2, t, 50.4, 0)]
    feed(m, rows)
    out = m.advance(T0 + S + 200 * MS)
    assert sorted((r.name, round(r.value, 6)) for r in out.readings) == [
        ("bus1.f_avg_1s", 50.0), ("bus2.f_avg_1s", 49.6), ("bus3.f_avg_1s", 50.4)
    ]
    assert sorted((e.device, e.point, json.loads(e.data)["condition"]) for e in out.events) == [
        ("bus2", "tie.f", "under-frequency"), ("bus3", "gen.f", "over-frequency")
    ]


def test_a_later_window_on_one_bus_does_not_close_another_bus() -> None:
    m = monitor(buses=(BusConfig("bus1", "incomer.f"), BusConfig("bus2", "tie.f")), grace_ms=500)
    feed(m, [(0, T0 + 100 * MS, 50.0, 0), (1, T0 + 100 * MS, 50.0, 0), (0, T0 + S + 1, 50.0, 0)])
    out = m.advance(T0 + S + 100 * MS)
    assert [r.name for r in out.readings] == ["bus1.f_avg_1s"]


def test_sixty_hz_system() -> None:
    m = monitor(nominal_hz=60.0, band_hz=0.2)
    out = run(m, [60.0, 59.8, 60.2, 59.79, 60.0, 60.0, 60.0, 60.21])
    assert states(out) == [
        ("raised", "under-frequency", 3),
        ("cleared", "under-frequency", 6),
        ("raised", "over-frequency", 7),
    ]
    assert json.loads(out.events[0].data)["limit"] == pytest.approx(59.8)


def test_rows_far_in_the_future_do_not_close_windows() -> None:
    m = monitor(grace_ms=500)
    window(m, 0, 49.5)
    feed(m, [(0, T0 + 3600 * S, 50.0, 0)])  # a source clock an hour ahead
    out = m.advance(T0 + S + 100 * MS)
    assert out.readings == []
    assert m.future_readings == 1
    assert len(m.advance(T0 + S + 500 * MS).readings) == 1


def test_many_rows_in_one_feed() -> None:
    m = monitor(buses=(BusConfig("bus1", "a.f"), BusConfig("bus2", "b.f")))
    n = 50 * 600  # 10 min at 50/s per bus
    t = T0 + np.arange(n, dtype=np.int64) * (S // 50)
    rng = np.random.default_rng(1)
    f1 = 50.0 + rng.normal(0, 0.02, n)
    idx = np.concatenate([np.zeros(n, np.int32), np.ones(n, np.int32)])
    m.feed(idx, np.concatenate([t, t]), np.concatenate([f1, f1 - 0.5]), np.zeros(2 * n, np.uint16))
    out = m.advance(T0 + 600 * S + 200 * MS)
    by_bus = {name: [r for r in out.readings if r.name == name] for name in ("bus1.f_avg_1s", "bus2.f_avg_1s")}
    assert len(by_bus["bus1.f_avg_1s"]) == 600 and len(by_bus["bus2.f_avg_1s"]) == 600
    assert by_bus["bus1.f_avg_1s"][7].value == pytest.approx(f1[350:400].mean())
    assert [e.device for e in out.events] == ["bus2"]  # raised once, never cleared


def test_window_alert_delay_bench_runs_and_alarms_every_excursion() -> None:
    from bench.analytics_window import measure_window_alert_delay

    res = measure_window_alert_delay(duration_s=3.0, buses=2, rate_hz=20.0, tick_ms=100.0)
    delay = res["window_alert_delay_ms"]
    assert delay["n"] >= 2 and res["missed_alarms"] == 0
    assert 0 <= delay["p50"] <= delay["p99"] <= delay["max"]
    assert res["readings"] > 0

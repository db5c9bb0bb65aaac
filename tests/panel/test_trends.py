"""Trends page and energy views: bucketed min/max/avg from the real store, range/bucket choice, errors, energy
per meter (daily kWh vs target, dayparts), the page's HTML."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import math
import re
import time
import tomllib
from typing import Any

import pytest

from gateway.analytics.config import AnalyticsConfig, EnergyConfig, MeterConfig, parse_analytics
from gateway.model import PointInfo, Q, ReadingBatch
from gateway.panel import trends
from gateway.panel.roles import Role
from tests.panel.conftest import PanelRig
from tests.waiting import wait_for_async

SEC = 1_000_000_000
DAY = 86_400 * SEC
HOUR = 3600 * SEC


async def _register(rig: PanelRig, *infos: PointInfo) -> dict[str, int]:
    store = rig.gw.store
    assert store is not None
    ids = await asyncio.to_thread(store.register_points, list(infos))
    return {p.name: int(i) for p, i in zip(infos, ids, strict=True)}


async def _insert(rig: PanelRig, rows: list[tuple[int, int, float, int]]) -> None:
    """rows: (ts, point_id, value, quality); committed before returning."""
    store = rig.gw.store
    assert store is not None
    ts, pid, val, q = zip(*rows, strict=True)
    await asyncio.to_thread(store.put, ReadingBatch.of(list(ts), list(pid), list(val), list(q)))
    await asyncio.to_thread(store.flush)


def _fix_clock(rig: PanelRig, now_ns: int) -> None:
    rig.ctx.wall_ns = lambda: now_ns


def _page_data(html: str) -> Any:
    m = re.search(r"<script type='application/json' id='page-data'>(.*?)</script>", html, re.S)
    assert m, "no page data"
    return json.loads(m.group(1))


# ------------------------------------------------------------------------------------------ ranges, buckets

@pytest.mark.parametrize(("rng", "bucket"), [("15m", 2), ("1h", 10), ("24h", 180), ("7d", 1200)])
def test_bucket_per_range_gives_300_to_600_buckets(rng: str, bucket: int) -> None:
    range_s = trends.RANGES[rng]
    assert trends.bucket_for(range_s) == bucket
    assert 300 <= range_s / bucket <= 600
    now = 1_764_000_000 * SEC + 123_456_789
    w = trends.window(rng, now)
    assert w.bucket_s == bucket and w.range_s == range_s
    assert w.start_ns % (bucket * SEC) == 0 and w.end_ns % (bucket * SEC) == 0
    assert w.start_ns < now < w.end_ns and w.end_ns - w.start_ns == range_s * SEC


def test_bucket_never_below_one_second() -> None:
    assert trends.bucket_for(10) == 1
    assert trends.bucket_for(1) == 1
    assert trends.bucket_for(10 * 86_400 * 365) >= 86_400


# ------------------------------------------------------------------------------------------------- /trends

async def test_json_buckets_match_inserted_readings(panel: PanelRig) -> None:
    ids = await _register(panel, PointInfo("tst.a", "tst", "a", "A"), PointInfo("tst.b", "tst", "b", "A"),
                          PointInfo("tst.v", "tst", "v", "kV"))
    # in the past (no live reading interferes), on a 3-min boundary so b0..b0+10 s share one 24 h bucket too
    now = (time.time_ns() // (180 * SEC)) * (180 * SEC) - HOUR
    _fix_clock(panel, now + 5 * SEC)
    b0 = now - 600 * SEC  # a 10 s bucket start, 10 min ago
    a, b, v = ids["tst.a"], ids["tst.b"], ids["tst.v"]
    rows = [
        (b0 + 0 * SEC, a, 1.0, 0), (b0 + 2 * SEC, a, 4.0, 0), (b0 + 5 * SEC, a, 2.5, int(Q.QUESTIONABLE)),
        (b0 + 6 * SEC, a, 100.0, int(Q.INVALID)),  # invalid: left out
        (b0 + 7 * SEC, a, math.nan, 0),  # NaN: left out
        (b0 + 10 * SEC, a, -3.0, 0),  # next bucket
        (b0 + 30 * SEC, b, 7.0, 0),
        (b0 + 1 * SEC, v, 11.0, 0), (b0 + 9 * SEC, v, 11.4, 0),
        (now - 2 * HOUR, a, 55.0, 0),  # outside the 1 h range
    ]
    await _insert(panel, rows)
    client, _ = await panel.client(Role.VIEWER)
    r = await client.get("/api/trends", params=[("p", "tst.a"), ("p", "tst.b"), ("p", "tst.v"), ("range", "1h")])
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["range"] == "1h" and d["bucket_s"] == 10 and d["live"] is True
    assert [s["point"] for s in d["series"]] == ["tst.a", "tst.b", "tst.v"]
    assert [s["unit"] for s in d["series"]] == ["A", "A", "kV"]
    sa, sb, sv = d["series"]
    assert sa["t"] == [b0, b0 + 10 * SEC]
    assert sa["min"] == [1.0, -3.0] and sa["max"] == [4.0, -3.0]
    assert sa["avg"] == pytest.approx([(1.0 + 4.0 + 2.5) / 3, -3.0]) and sa["count"] == [3, 1]
    assert sb == {"point": "tst.b", "unit": "A", "t": [b0 + 30 * SEC], "min": [7.0], "max": [7.0], "avg": [7.0],
                  "count": [1]}
    assert sv["avg"] == pytest.approx([11.2]) and sv["count"] == [2]
    assert all(d["start_ns"] <= t < d["end_ns"] for s in d["series"] for t in s["t"])

    # the same over 24 h: 3-minute buckets merge them; the 2-hours-old reading is in range now
    r = await client.get("/trends", params={"p": "tst.a", "range": "24h", "format": "json"})
    d = r.json()
    assert d["bucket_s"] == 180 and d["live"] is False
    (sa,) = d["series"]
    old_b = ((now - 2 * HOUR) // (180 * SEC)) * 180 * SEC
    assert sa["t"] == [old_b, (b0 // (180 * SEC)) * 180 * SEC]
    assert sa["count"] == [1, 4] and sa["min"] == [55.0, -3.0] and sa["max"] == [55.0, 4.0]
    assert sa["avg"][1] == pytest.approx((1.0 + 4.0 + 2.5 - 3.0) / 4)


async def test_live_points_of_the_gateway_have_data(panel: PanelRig) -> None:
    store = panel.gw.store
    assert store is not None
    pid = panel.gw.point_ids["feeder1.Ia"]

    async def has_rows() -> bool:
        tbl = await asyncio.to_thread(store.aggregate, [pid], 0, time.time_ns() + HOUR, 3600 * SEC)
        return tbl.num_rows > 0

    await wait_for_async(has_rows, what="feeder1.Ia readings stored")
    client, _ = await panel.client(Role.VIEWER)
    d = (await client.get("/api/trends?p=feeder1.Ia&range=15m")).json()
    assert d["bucket_s"] == 2
    (s,) = d["series"]
    assert s["unit"] == "A" and sum(s["count"]) > 0
    assert all(lo <= av <= hi for lo, av, hi in zip(s["min"], s["avg"], s["max"], strict=True))


async def test_missing_p_gives_empty_series_and_defaults(panel: PanelRig) -> None:
    client, _ = await panel.client(Role.VIEWER)
    d = (await client.get("/api/trends")).json()
    assert d["series"] == [] and d["range"] == trends.DEFAULT_RANGE
    html = (await client.get("/trends")).text
    assert "<canvas>" not in html and "No points selected" in html
    # bays of the overview as starting points
    feeder1 = "/trends?p=feeder1.Ia&amp;p=feeder1.Va&amp;p=feeder1.P&amp;p=feeder1.f&amp;range=1h"
    assert f"href='{feeder1}'>Feeder 1</a>" in html


async def test_unknown_point_bad_range_too_many_are_400(panel: PanelRig) -> None:
    client, _ = await panel.client(Role.VIEWER)
    r = await client.get("/api/trends?p=feeder1.Ia&p=nope.x&range=1h")
    assert r.status_code == 400
    assert "nope.x" in r.json()["error"] and r.json()["points"] == ["nope.x"]
    r = await client.get("/api/trends?p=feeder1.Ia&range=3y")
    assert r.status_code == 400 and "3y" in r.json()["error"] and "15m" in r.json()["error"]
    many = [p.name for p in panel.gw.points][: trends.MAX_POINTS + 1]
    r = await client.get("/api/trends", params=[("p", p) for p in many])
    assert r.status_code == 400 and str(trends.MAX_POINTS) in r.json()["error"]
    # the HTML page answers a bad request with a readable page, not a traceback
    r = await client.get("/trends?p=nope.x")
    assert r.status_code == 400 and "nope.x" in r.text and "<html" in r.text


async def test_login_required(panel: PanelRig) -> None:
    r = await panel.anon.get("/api/trends?p=feeder1.Ia")
    assert r.status_code == 401
    r = await panel.anon.get("/api/trends/energy")
    assert r.status_code == 401


async def test_html_page_has_picker_charts_and_scripts(panel: PanelRig) -> None:
    client, _ = await panel.client(Role.VIEWER)
    r = await client.get("/trends?p=feeder1.Ia&p=feeder1.Ib&p=feeder1.Va&range=15m")
    assert r.status_code == 200
    html = r.text
    assert "id='point-search'" in html and "id='point-results'" in html
    assert "/static/chart.js" in html and "/static/trends.js" in html and "<script>" not in html
    assert html.count("<canvas>") == 2  # one chart per unit: A (Ia, Ib) and kV (Va)
    assert "data-unit='A'" in html and "data-unit='kV'" in html
    assert "href='/trends/energy'" in html
    # range buttons keep the selection in their links
    assert "href='/trends?p=feeder1.Ia&amp;p=feeder1.Ib&amp;p=feeder1.Va&amp;range=24h'" in html
    data = _page_data(html)
    assert data["selected"] == ["feeder1.Ia", "feeder1.Ib", "feeder1.Va"] and data["range"] == "15m"
    assert {"name": "feeder1.Ia", "unit": "A", "device": "feeder1"} in data["points"]
    assert data["trend"]["bucket_s"] == 2 and len(data["trend"]["series"]) == 3


async def test_static_chart_library_is_shipped(panel: PanelRig) -> None:
    r = await panel.anon.get("/static/chart.js")
    assert r.status_code == 200 and "MiniChart" in r.text and "devicePixelRatio" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # nothing fetched from elsewhere
    r = await panel.anon.get("/static/trends.js")
    assert r.status_code == 200


# ------------------------------------------------------------------------------------------ /trends/energy

async def test_energy_without_meters_says_how_to_configure(panel: PanelRig) -> None:
    client, _ = await panel.client(Role.VIEWER)
    d = (await client.get("/api/trends/energy")).json()
    assert d["configured"] is False and d["meters"] == []
    assert "[analytics.energy]" in d["how_to"]
    html = (await client.get("/trends/energy")).text
    assert "No energy meters are configured" in html and "[analytics.energy]" in html


def test_how_to_snippet_is_a_valid_config() -> None:
    cfg, problems = parse_analytics(tomllib.loads(trends.ENERGY_SNIPPET)["analytics"])
    assert problems == [] and len(cfg.energy.meters) == 2


async def test_energy_views_of_a_configured_meter(panel: PanelRig) -> None:
    off = HOUR  # utc_offset_h = 1
    meter = MeterConfig(name="m1", power_point="m1.power", unit="W", daily_target_kwh=2.0)
    m2 = MeterConfig(name="m2", power_point="m2.p", unit="kW")  # no target; started this morning, no power yet
    energy = EnergyConfig(utc_offset_h=1.0, meters=(meter, m2))
    panel.gw.cfg = dataclasses.replace(panel.gw.cfg, analytics=AnalyticsConfig(energy=energy))
    names = ["power", "energy_day_kwh", "energy_today_kwh", *(f"energy_{p}_kwh" for p in trends.DAYPARTS)]
    ids = await _register(panel, *(PointInfo(f"m1.{n}", "m1", n, "W" if n == "power" else "kWh") for n in names),
                          PointInfo("m2.energy_today_kwh", "m2", "energy_today_kwh", "kWh"))
    # "now" = 09:30 local time on a day in the past (its night daypart closed, morning open)
    real = time.time_ns()
    today = ((real + off) // DAY) * DAY - off - 2 * DAY
    now = today + 9 * HOUR + 30 * 60 * SEC
    _fix_clock(panel, now)
    rows: list[tuple[int, int, float, int]] = []
    daily = {k: 1.5 + 0.1 * k for k in range(1, 10)}  # closed days 1..9 days ago
    del daily[4]  # a day without a record (gateway down)
    for k, kwh in daily.items():
        rows.append((today - k * DAY, ids["m1.energy_day_kwh"], kwh, int(Q.QUESTIONABLE | Q.INACCURATE)))
    for k in range(1, 8):  # dayparts of the last 7 days: night k*0.1, morning 0.5, afternoon 1.0, evening 0.2
        d0 = today - k * DAY
        for i, v in enumerate((k * 0.1, 0.5, 1.0, 0.2)):
            rows.append((d0 + i * 6 * HOUR, ids[f"m1.energy_{trends.DAYPARTS[i]}_kwh"], v, 0))
    rows.append((today - 8 * DAY, ids["m1.energy_night_kwh"], 99.0, 0))  # 8 days ago: not in the 7-day mean
    rows.append((today, ids["m1.energy_night_kwh"], 0.25, 0))  # today's closed night
    rows += [(today + 9 * HOUR, ids["m1.energy_today_kwh"], 0.5, 0),
             (today + 9 * HOUR + 10 * 60 * SEC, ids["m1.energy_today_kwh"], 0.6, 0),  # the latest counts
             (today + 9 * HOUR, ids["m2.energy_today_kwh"], 0.3, 0)]
    for j in range(30):  # power readings over the last 30 min: 100..390 W
        rows.append((now - 30 * 60 * SEC + j * 60 * SEC, ids["m1.power"], 100.0 + 10 * j, 0))
    await _insert(panel, rows)

    client, _ = await panel.client(Role.VIEWER)
    r = await client.get("/api/trends/energy?range=1h&days=14")
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["configured"] is True and d["utc_offset_h"] == 1.0 and d["bucket_s"] == 10 and d["days"] == 14
    m, m2v = d["meters"]
    assert m["name"] == "m1" and m["daily_target_kwh"] == 2.0 and m["unit"] == "W"
    assert m["today_kwh"] == pytest.approx(0.6) and m["vs_target"] == pytest.approx(0.3)
    # daily: 13 closed days then today (so far), local dates
    dy = m["daily"]
    assert len(dy["day"]) == 14 and dy["t"][-1] == today and dy["partial"] == [False] * 13 + [True]
    assert dy["day"][-1] == dt.datetime.fromtimestamp((today + off) / SEC, tz=dt.UTC).strftime("%Y-%m-%d")
    expect = [daily.get(k) for k in range(13, 0, -1)] + [0.6]
    for got, want in zip(dy["kwh"], expect, strict=True):
        assert (got is None and want is None) or got == pytest.approx(want)
    # dayparts: today = closed night + the open morning so far; mean of the last 7 closed days
    dp = m["dayparts"]
    assert dp["names"] == list(trends.DAYPARTS) and dp["open"] == 1
    assert dp["today"][0] == pytest.approx(0.25) and dp["today"][1] == pytest.approx(0.6 - 0.25)
    assert dp["today"][2:] == [None, None]
    assert dp["avg"] == pytest.approx([sum(k * 0.1 for k in range(1, 8)) / 7, 0.5, 1.0, 0.2])
    assert dp["avg_days"] == [7, 7, 7, 7]
    # watts: the power trend over the hour in 10 s buckets
    w = m["watts"]
    assert w["point"] == "m1.power" and sum(w["count"]) == 30 and max(w["max"]) == 390.0 and min(w["min"]) == 100.0
    # a meter without target, power data or closed periods: today's energy all in the open daypart
    assert m2v["name"] == "m2" and m2v["daily_target_kwh"] is None and m2v["vs_target"] is None
    assert m2v["unit"] == "kW" and m2v["watts"]["t"] == [] and m2v["today_kwh"] == pytest.approx(0.3)
    assert m2v["dayparts"]["today"] == [None, pytest.approx(0.3), None, None] and m2v["dayparts"]["open"] == 1
    assert m2v["dayparts"]["avg"] == [None] * 4 and m2v["daily"]["kwh"] == [None] * 13 + [pytest.approx(0.3)]

    d30 = (await client.get("/api/trends/energy?days=30")).json()
    assert len(d30["meters"][0]["daily"]["day"]) == 30 and d30["range"] == trends.DEFAULT_ENERGY_RANGE
    assert (await client.get("/api/trends/energy?days=3")).status_code == 400
    assert (await client.get("/api/trends/energy?range=2w")).status_code == 400

    html = (await client.get("/trends/energy?days=14")).text
    assert "data-meter='m1'" in html and html.count("<canvas>") == 6 and "/static/chart.js" in html
    assert "2 kWh/day" in html


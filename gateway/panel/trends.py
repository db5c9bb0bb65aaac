"""Trends (``/trends``) and energy views (``/trends/energy``) of the operator panel (docs/panel.md, "Trends").

``GET /trends?p=feeder1.Ia&p=feeder1.Ib&range=1h`` (viewer): up to :data:`MAX_POINTS` points over one of
:data:`RANGES`, from the store's time-bucketed :meth:`~storefwd.store.Store.aggregate` (one query for all points;
it also reads the per-minute summaries of downsampled data, so min/max/avg survive retention). The bucket is
chosen so a range gives at most :data:`MAX_BUCKETS` buckets (:func:`bucket_for`). JSON::

    {"range": "1h", "range_s": 3600, "bucket_s": 10, "start_ns": ..., "end_ns": ..., "now_ns": ...,
     "series": [{"point", "unit", "t": [bucket start ns], "min": [...], "max": [...], "avg": [...],
                 "count": [...]}]}

Only buckets holding valid readings are listed (a missing bucket is a gap). Unknown point / bad range → 400.

``GET /trends/energy?range=24h&days=14`` (viewer): per configured ``[analytics.energy]`` meter its power trend,
energy by daypart (today and the mean of the last 7 closed days) and daily kWh of the last ``days`` local days
against the daily target (site-local days: UTC + ``utc_offset_h``, as the energy analytics count them).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

from starlette.responses import Response

from gateway.analytics.config import EnergyConfig, MeterConfig
from gateway.analytics.energy import DAYPARTS
from gateway.model import PointInfo
from gateway.panel.context import PanelContext
from gateway.panel.layout import esc, render_page
from gateway.panel.routing import Call, PanelRoute

SEC_NS: Final = 1_000_000_000
DAY_NS: Final = 86_400 * SEC_NS
PART_NS: Final = DAY_NS // 4
RANGES: Final[dict[str, int]] = {"15m": 900, "1h": 3600, "24h": 86_400, "7d": 7 * 86_400}  # name -> seconds
RANGE_LABELS: Final[dict[str, str]] = {"15m": "15 min", "1h": "1 h", "24h": "24 h", "7d": "7 d"}
LIVE_RANGES: Final = frozenset({"15m", "1h"})  # the page refetches these every LIVE_REFRESH_S
LIVE_REFRESH_S: Final = 5
DEFAULT_RANGE: Final = "1h"
MAX_POINTS: Final = 8
MAX_BUCKETS: Final = 600
# bucket sizes (s) a range may use: "nice" steps so bucket starts fall on round clock times
BUCKET_STEPS: Final = (1, 2, 5, 10, 15, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 3600, 7200, 10_800, 21_600,
                       43_200, 86_400)
ENERGY_DAYS: Final = (14, 30)
DEFAULT_ENERGY_RANGE: Final = "24h"
AVG_DAYS: Final = 7  # energy by daypart: mean over this many closed days
ONE_BUCKET_NS: Final = 1 << 62  # an aggregate bucket holding every ts (epoch-aligned: ts // it == 0)

ENERGY_SNIPPET: Final = """[analytics.energy]
utc_offset_h = 1.0        # the site's local time = UTC + this (days and dayparts are local)
emit_every_s = 60.0
meters = [
  { name = "pv-01", power_point = "pv-01.power", unit = "W", daily_target_kwh = 2.0 },
  { name = "site-import", power_point = "incomer.P", unit = "kW", daily_target_kwh = 1200.0, high_demand_w = 250000 },
]"""


class BadRequest(ValueError):
    """Invalid query input: answered with 400, the message and ``extra`` fields."""

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.extra = extra


def bucket_for(range_s: int) -> int:
    """Bucket size (s) for a range: the smallest of :data:`BUCKET_STEPS` giving at most :data:`MAX_BUCKETS`
    buckets (never below 1 s). 15 min → 2 s, 1 h → 10 s, 24 h → 3 min, 7 d → 20 min."""
    for b in BUCKET_STEPS:
        if range_s / b <= MAX_BUCKETS:
            return b
    return max(1, -(-range_s // MAX_BUCKETS))


@dataclass(frozen=True, slots=True)
class Window:
    range: str
    range_s: int
    bucket_s: int
    start_ns: int
    end_ns: int
    now_ns: int

    def meta(self) -> dict[str, Any]:
        return {"range": self.range, "range_s": self.range_s, "bucket_s": self.bucket_s, "start_ns": self.start_ns,
                "end_ns": self.end_ns, "now_ns": self.now_ns}


def window(range_name: str, now_ns: int) -> Window:
    """The bucket-aligned window of ``range_name`` ending with the bucket that holds ``now_ns``."""
    if range_name not in RANGES:
        raise BadRequest(f"unknown range {range_name!r}: use one of {', '.join(RANGES)}")
    range_s = RANGES[range_name]
    b = bucket_for(range_s)
    bucket_ns = b * SEC_NS
    end = (now_ns // bucket_ns + 1) * bucket_ns
    start = end - (range_s // b) * bucket_ns
    return Window(range_name, range_s, b, start, end, now_ns)


def _store_infos(call: Call) -> tuple[dict[str, int], dict[int, PointInfo]]:
    store = call.ctx.gw.store
    if store is None:
        return {}, {}
    return store.point_ids(), store.point_infos()


def _empty_series(point: str, unit: str) -> dict[str, Any]:
    return {"point": point, "unit": unit, "t": [], "min": [], "max": [], "avg": [], "count": []}


def _query(
    call: Call, ids: dict[str, int], start_ns: int, end_ns: int, bucket_ns: int
) -> dict[int, dict[str, list[Any]]]:
    """Blocking: one aggregate over ``ids``; point id → columns (t, min, max, avg, last, count)."""
    store = call.ctx.gw.store
    out: dict[int, dict[str, list[Any]]] = {}
    if store is None or not ids:
        return out
    tbl = store.aggregate(sorted(set(ids.values())), start_ns, end_ns, bucket_ns)
    cols = {name: tbl.column(name).to_pylist() for name in ("point_id", "bucket_ns", "min", "max", "avg", "last",
                                                            "count")}
    for i, pid in enumerate(cols["point_id"]):
        d = out.get(pid)
        if d is None:
            d = out[pid] = {"t": [], "min": [], "max": [], "avg": [], "last": [], "count": []}
        d["t"].append(cols["bucket_ns"][i])
        for k in ("min", "max", "avg", "last", "count"):
            d[k].append(cols[k][i])
    return out


# ---------------------------------------------------------------------------------------------------- /trends

def _selection(call: Call) -> tuple[list[str], str]:
    q = call.request.query_params
    pts: list[str] = []
    for raw in q.getlist("p"):
        for name in raw.split(","):
            name = name.strip()
            if name and name not in pts:
                pts.append(name)
    rng = q.get("range") or DEFAULT_RANGE
    return pts, rng


async def trend_data(call: Call, points: list[str], range_name: str) -> dict[str, Any]:
    """The /trends JSON document for ``points`` over ``range_name`` (raises :class:`BadRequest`)."""
    win = window(range_name, call.ctx.wall_ns())
    if len(points) > MAX_POINTS:
        raise BadRequest(f"too many points ({len(points)}): at most {MAX_POINTS} per trend")
    name_to_id, infos = _store_infos(call)
    gw_units = {p.name: p.unit for p in call.ctx.gw.points}
    unknown = [p for p in points if p not in name_to_id and p not in gw_units]
    if unknown:
        raise BadRequest(f"unknown point{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}", points=unknown)
    ids = {p: name_to_id[p] for p in points if p in name_to_id}
    cols = await asyncio.to_thread(_query, call, ids, win.start_ns, win.end_ns, win.bucket_s * SEC_NS)
    series = []
    for p in points:
        pid = ids.get(p)
        info = infos.get(pid) if pid is not None else None
        unit = gw_units.get(p, info.unit if info is not None else "")
        s = _empty_series(p, unit)
        if pid is not None and pid in cols:
            c = cols[pid]
            s.update(t=c["t"], min=c["min"], max=c["max"], avg=c["avg"], count=c["count"])
        series.append(s)
    return {**win.meta(), "live": win.range in LIVE_RANGES, "refresh_s": LIVE_REFRESH_S, "series": series}


def _button_style(active: bool) -> str:
    """Inline style of a link drawn as a button (panel.css styles <button>s only); the chosen one filled."""
    base = "text-decoration:none;display:inline-block;margin-right:.25rem"
    return base + (";background:#1f6feb;border-color:#1f6feb;color:#fff" if active else "")


def _range_buttons(base: str, params: list[tuple[str, str]], current: str, ranges: dict[str, str]) -> str:
    out = []
    for key, label in ranges.items():
        href = base + "?" + urlencode([*params, ("range", key)])
        out.append(f"<a class='button range{' primary' if key == current else ''}' data-range='{esc(key)}' "
                   f"style='{_button_style(key == current)}' href='{esc(href)}'>{esc(label)}</a>")
    return "".join(out)


def _unit_groups(series: list[dict[str, Any]]) -> list[str]:
    units: list[str] = []
    for s in series:
        if s["unit"] not in units:
            units.append(s["unit"])
    return units


async def trends_page(call: Call) -> Response:
    points, rng = _selection(call)
    try:
        data = await trend_data(call, points, rng)
    except BadRequest as e:
        return call.error(400, str(e), **e.extra)
    if call.wants_json():
        return call.json(data)
    catalogue = [{"name": p.name, "unit": p.unit, "device": p.device} for p in call.ctx.gw.points]
    chips = "".join(
        f"<span class='pill muted chip' data-point='{esc(p)}'>{esc(p)}</span> " for p in points
    ) or "<span class='muted' id='no-points'>No points selected: search and pick up to "\
        f"{MAX_POINTS} points.</span>"
    suggest = ""
    if not points:
        known = {p.name for p in call.ctx.gw.points}
        links = []
        for bay in call.ctx.cfg.bays:
            pts = [m for m in bay.measurements if m in known][:MAX_POINTS]
            if pts:
                href = "/trends?" + urlencode([*(("p", m) for m in pts), ("range", rng)])
                links.append(f"<a href='{esc(href)}'>{esc(bay.name)}</a>")
        if links:
            suggest = f"<p class='muted' id='suggest'>Or start from a bay: {' · '.join(links)}</p>"
    charts = "".join(
        f"<section class='card trend-group' data-unit='{esc(u)}'><h2>{esc(u or 'no unit')}</h2>"
        "<div class='chart' style='position:relative;height:300px'><canvas></canvas></div></section>"
        for u in _unit_groups(data["series"])
    )
    body = f"""<section class='card'>
<div class='toolbar'><span class='muted'>Range</span><span id='ranges'>{_range_buttons(
        "/trends", [("p", p) for p in points], rng, RANGE_LABELS)}</span>
<span id='live-note' class='muted'></span><span style='flex:1'></span>
<a href='/trends/energy'>Energy views &rarr;</a></div>
<div class='toolbar'><label for='point-search'>Add point</label>
<input id='point-search' type='search' placeholder='search points, e.g. feeder1.I' autocomplete='off' size='32'
 aria-controls='point-results'>
<span id='chips'>{chips}</span></div>
{suggest}<ul id='point-results' class='scroll' hidden
 style='list-style:none;margin:0;padding:.2rem;max-height:14rem;max-width:34rem'>
</ul></section>
<div id='charts'>{charts}</div>
<p class='muted'>Lines: mean per bucket; shaded band: min–max of the bucket. Times in your browser's local time.
Gaps (no valid readings in a bucket) break the line.</p>"""
    page = {"points": catalogue, "selected": points, "range": rng, "ranges": RANGE_LABELS,
            "max_points": MAX_POINTS, "trend": data}
    return render_page(call, "Trends", body, data=page, scripts=["chart.js", "trends.js"])


# --------------------------------------------------------------------------------------------- /trends/energy

def _local_day_start(ns: int, off_ns: int) -> int:
    """UTC ns of the site-local midnight starting the local day holding ``ns``."""
    return ((ns + off_ns) // DAY_NS) * DAY_NS - off_ns


def _iso_day(day_start_ns: int, off_ns: int) -> str:
    import datetime as dt

    d = dt.datetime.fromtimestamp((day_start_ns + off_ns) / SEC_NS, tz=dt.UTC)
    return d.strftime("%Y-%m-%d")


def _energy_query(call: Call, cfg: EnergyConfig, win: Window, days: int) -> list[dict[str, Any]]:
    """Blocking: every meter's views, in three aggregate queries for all meters together."""
    name_to_id, infos = _store_infos(call)
    off = round(cfg.utc_offset_h * 3600 * SEC_NS)
    now = win.now_ns
    today = _local_day_start(now, off)
    first_day = today - max(days, AVG_DAYS) * DAY_NS

    def ids_of(names: list[str]) -> dict[str, int]:
        return {n: name_to_id[n] for n in names if n in name_to_id}

    power = ids_of([m.power_point for m in cfg.meters])
    period_names = [f"{m.name}.energy_day_kwh" for m in cfg.meters] + [
        f"{m.name}.energy_{p}_kwh" for m in cfg.meters for p in DAYPARTS]
    periods = ids_of(period_names)
    today_ids = ids_of([f"{m.name}.energy_today_kwh" for m in cfg.meters])
    w_cols = _query(call, power, win.start_ns, win.end_ns, win.bucket_s * SEC_NS)
    # closed periods are written once each, ts = their start: 1-minute buckets keep them apart (and minutes are
    # what downsampled data keeps); "last" is the value written last for that period
    p_cols = _query(call, periods, first_day, now + SEC_NS, 60 * SEC_NS)
    t_cols = _query(call, today_ids, today, now + SEC_NS, ONE_BUCKET_NS)

    def by_start(name: str) -> dict[int, float]:
        pid = periods.get(name)
        c = p_cols.get(pid) if pid is not None else None
        return dict(zip(c["t"], c["last"], strict=True)) if c else {}

    out = []
    for m in cfg.meters:
        out.append(_meter_view(m, infos.get(power.get(m.power_point, -1)), w_cols.get(power.get(m.power_point, -1)),
                               by_start, t_cols.get(today_ids.get(f"{m.name}.energy_today_kwh", -1)),
                               today, now, days, off))
    return out


def _meter_view(m: MeterConfig, info: PointInfo | None, w: dict[str, list[Any]] | None, by_start: Any,
                today_cols: dict[str, list[Any]] | None, today: int, now: int, days: int,
                off: int) -> dict[str, Any]:
    watts = _empty_series(m.power_point, m.unit)
    if w is not None:
        watts.update(t=w["t"], min=w["min"], max=w["max"], avg=w["avg"], count=w["count"])
    today_kwh = today_cols["last"][0] if today_cols and today_cols["last"] else None
    daily_vals = by_start(f"{m.name}.energy_day_kwh")
    day_starts = [today - k * DAY_NS for k in range(days - 1, 0, -1)]
    daily = {
        "day": [_iso_day(d, off) for d in day_starts] + [_iso_day(today, off)],
        "t": [*day_starts, today],
        "kwh": [daily_vals.get(d) for d in day_starts] + [today_kwh],
        "partial": [False] * len(day_starts) + [True],  # today so far (energy_today_kwh)
    }
    now_part = min(3, max(0, (now - today) // PART_NS))  # the daypart now (site-local)
    parts_today: list[float | None] = [by_start(f"{m.name}.energy_{p}_kwh").get(today + i * PART_NS)
                                       for i, p in enumerate(DAYPARTS)]
    if today_kwh is not None and parts_today[now_part] is None:
        closed_sum = sum(v for v in parts_today[:now_part] if v is not None)
        parts_today[now_part] = max(0.0, today_kwh - closed_sum)  # the open daypart so far
    avg: list[float | None] = []
    n_days: list[int] = []
    for i, p in enumerate(DAYPARTS):
        vals = by_start(f"{m.name}.energy_{p}_kwh")
        got = [vals[d] for d in (today - k * DAY_NS + i * PART_NS for k in range(1, AVG_DAYS + 1)) if d in vals]
        avg.append(sum(got) / len(got) if got else None)
        n_days.append(len(got))
    return {
        "name": m.name,
        "power_point": m.power_point,
        "unit": info.unit if info is not None and info.unit else m.unit,
        "daily_target_kwh": m.daily_target_kwh or None,
        "today_kwh": today_kwh,
        "vs_target": (today_kwh / m.daily_target_kwh) if today_kwh is not None and m.daily_target_kwh > 0 else None,
        "watts": watts,
        "daily": daily,
        "dayparts": {"names": list(DAYPARTS), "today": parts_today, "open": now_part, "avg": avg,
                     "avg_days": n_days},
    }


async def energy_data(call: Call, range_name: str, days: int) -> dict[str, Any]:
    win = window(range_name, call.ctx.wall_ns())
    cfg = call.ctx.gw.cfg.analytics.energy
    meters = await asyncio.to_thread(_energy_query, call, cfg, win, days) if cfg.meters else []
    return {
        **win.meta(),
        "days": days,
        "avg_days": AVG_DAYS,
        "configured": bool(cfg.meters),
        "utc_offset_h": cfg.utc_offset_h,
        "dayparts": list(DAYPARTS),
        "meters": meters,
        **({} if cfg.meters else {"how_to": ENERGY_SNIPPET}),
    }


async def energy_page(call: Call) -> Response:
    q = call.request.query_params
    rng = q.get("range") or DEFAULT_ENERGY_RANGE
    try:
        days = int(q.get("days") or ENERGY_DAYS[0])
    except ValueError:
        days = -1
    if days not in ENERGY_DAYS:
        return call.error(400, f"days must be one of {', '.join(map(str, ENERGY_DAYS))}")
    try:
        data = await energy_data(call, rng, days)
    except BadRequest as e:
        return call.error(400, str(e))
    if call.wants_json():
        return call.json(data)
    if not data["configured"]:
        body = f"""<section class='card'><p><a href='/trends'>&larr; Trends</a></p>
<p>No energy meters are configured, so there are no energy views. Energy and demand per meter come from the
edge analytics (docs/analytics.md, "Energy and demand"): add an <code>[analytics.energy]</code> section to the
gateway's configuration naming each meter's active power point, for example:</p>
<pre class='mono' style='background:#eef2f6;padding:.6rem;border-radius:6px;overflow:auto'>{esc(ENERGY_SNIPPET)}</pre>
<p class='muted'>Then restart the gateway; the page fills in as the meters report (a day's total when the day
closes).</p>
</section>"""
        return render_page(call, "Energy", body, data=data)
    ranges = _range_buttons("/trends/energy", [("days", str(days))], rng, RANGE_LABELS)
    day_btns = "".join(
        f"<a class='button{' primary' if d == days else ''}' style='{_button_style(d == days)}' href='/trends/energy?"
        f"{esc(urlencode([('range', rng), ('days', str(d))]))}'>{d} days</a>" for d in ENERGY_DAYS)
    cards = []
    for mv in data["meters"]:
        name = esc(mv["name"])
        target = f"{mv['daily_target_kwh']:g} kWh/day" if mv["daily_target_kwh"] else "none"
        today = "—" if mv["today_kwh"] is None else f"{mv['today_kwh']:.3f} kWh"
        cards.append(f"""<section class='card meter' data-meter='{name}'>
<h2>{name} <span class='muted'>({esc(mv['power_point'])})</span></h2>
<dl class='kv'><dt>Today so far</dt><dd class='big today'>{esc(today)}</dd>
<dt>Daily target</dt><dd>{esc(target)}</dd></dl>
<div class='row'>
<div><h3>Power</h3><div class='chart watts' style='position:relative;height:240px'><canvas></canvas></div></div>
<div><h3>Energy by time of day</h3>
<div class='chart parts' style='position:relative;height:240px'><canvas></canvas></div></div>
</div>
<h3>Daily energy, last {days} days</h3>
<div class='chart daily' style='position:relative;height:240px'><canvas></canvas></div></section>""")
    body = f"""<section class='card'><div class='toolbar'><a href='/trends'>&larr; Trends</a>
<span class='muted'>Power</span>{ranges}<span class='muted'>Daily</span>{day_btns}</div>
<p class='muted'>Days and dayparts are the site's local time (UTC{data['utc_offset_h']:+g} h), as the energy
analytics count them: night 00–06, morning 06–12, afternoon 12–18, evening 18–24. Today's bars are so far.</p>
</section>{''.join(cards)}"""
    return render_page(call, "Energy", body, data=data, scripts=["chart.js", "trends.js"])


def routes(ctx: PanelContext) -> list[PanelRoute]:
    return [
        PanelRoute("/trends", trends_page, action="trends.view"),
        PanelRoute("/trends/energy", energy_page, action="trends.energy"),
    ]

"""Overview page (``/``): the substation at a glance.

One tile per ``[[panel.bays]]`` entry: the breaker's state spelled out (CLOSED / OPEN / unknown when the status
point has no valid reading), the bay's measurements with unit and quality marking, the protection state
(armed / picked up / TRIPPED) on bays with ``protection = true``, and a link to the Controls page for bays that
have open/close points (operators and above). Without bays: one tile per device with its first four points.

Above the tiles a summary strip: active and unacknowledged alarms, comm health (devices ok / total and the ones
that are not), cloud sync per sink (state, backlog, oldest unsent, last ack, last error), the store (disk used
vs budget, disk full) and the protection process (state, last trip). ``overview.js`` keeps tiles and strip live
from the stream's ``values`` and ``summary`` events. ``?format=json`` (or ``/api/overview``) gives the same data.

:func:`summary` is also the payload of the live stream's ``summary`` event (:mod:`gateway.panel.live`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.responses import Response

from gateway.panel import alarms
from gateway.panel.context import PanelContext
from gateway.panel.layout import esc, render_page
from gateway.panel.points import QUALITY_BITS, quality_text, validity_class, validity_of
from gateway.panel.roles import Role
from gateway.panel.routing import Call, PanelRoute
from gateway.provision.status import provision_status

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.config import BayConfig

DEVICE_TILE_POINTS = 4  # points shown on a device tile (no bays configured)
SUMMARY_TTL_S = 0.5  # the summary is computed at most this often, however many streams ask


# -- point readings -----------------------------------------------------------------------------------------------
_units: weakref.WeakKeyDictionary[Gateway, tuple[int, dict[str, str]]] = weakref.WeakKeyDictionary()


def unit_of(gw: Gateway, name: str) -> str:
    """The configured unit of point ``name`` (a name → unit map per gateway, rebuilt if its points change)."""
    hit = _units.get(gw)
    if hit is None or hit[0] != len(gw.points):
        hit = (len(gw.points), {p.name: p.unit for p in gw.points})
        _units[gw] = hit
    return hit[1].get(name, "")


def reading(gw: Gateway, name: str) -> dict[str, Any]:
    """The latest reading of point ``name`` ("device.point") as a dict; ``configured`` False when unknown."""
    pid = gw.point_ids.get(name)
    if pid is None or gw.latest is None:
        return {"point": name, "id": pid, "configured": pid is not None, "value": None, "unit": "",
                "quality": 0, "quality_text": "not configured" if pid is None else "no data", "validity": "none",
                "ts_ns": 0}
    latest = gw.latest
    ts = int(latest.ts[pid])
    q = int(latest.quality[pid])
    v = float(latest.value[pid])
    return {"point": name, "id": pid, "configured": True, "value": v if ts and v == v else None,
            "unit": unit_of(gw, name), "quality": q, "quality_text": quality_text(q, ts),
            "validity": validity_of(q, ts), "ts_ns": ts}


def breaker_state(r: dict[str, Any], closed_value: float) -> str:
    """CLOSED / OPEN / INTERMEDIATE / unknown from the breaker status reading. No data, invalid quality or no
    value → unknown. For a double-point status (closed_value 2, IEC 61850 Dbpos): 1 = OPEN, 0 = INTERMEDIATE,
    3 (bad state) = unknown."""
    v = r["value"]
    if v is None or r["validity"] in ("invalid", "none", "reserved"):
        return "unknown"
    if v == closed_value:
        return "CLOSED"
    if closed_value == 2.0:
        return {1.0: "OPEN", 0.0: "INTERMEDIATE"}.get(float(v), "unknown")
    return "OPEN"


# Utility convention, as on the Controls page: red = closed (energised), green = open; a state read with a
# quality other than good is muted (it may be stale), and the words always say which it is.
BREAKER_CLASS = {"CLOSED": "bad", "OPEN": "ok", "INTERMEDIATE": "warn", "unknown": "muted"}


def protection_summary(gw: Gateway) -> dict[str, Any] | None:
    """The protection process for tiles and the strip: process state, bay state (armed / picked up / TRIPPED,
    or the process state when it is not running), elements picked up / tripped, last trip. None: not configured."""
    if gw.protection is None:
        return None
    st = gw.protection.status()
    cyc = st.get("cycle") or {}
    group = cyc.get("active_group")
    elements = [e for e in st.get("elements", []) if group is None or e.get("group") == group]
    tripped = [e["name"] for e in elements if e.get("tripped")]
    picked = [e["name"] for e in elements if e.get("picked_up") and not e.get("tripped")]
    blocked = [e["name"] for e in elements if e.get("blocked")]
    process = str(st.get("state", ""))
    if process != "running":
        state = process or "unknown"
    elif tripped:
        state = "TRIPPED"
    elif picked:
        state = "picked up"
    else:
        state = "armed"
    trips = st.get("last_trips") or []
    return {"process": process, "state": state, "active_group": group, "tripped": tripped, "picked_up": picked,
            "blocked": blocked, "last_error": st.get("last_error"), "last_trip": trips[0] if trips else None}


PROTECTION_CLASS = {"armed": "ok", "picked up": "warn", "TRIPPED": "bad"}


# -- tiles --------------------------------------------------------------------------------------------------------
def bay_tile(gw: Gateway, bay: BayConfig, prot: dict[str, Any] | None, can_operate: bool) -> dict[str, Any]:
    breaker = None
    if bay.breaker:
        r = reading(gw, bay.breaker)
        breaker = {**r, "state": breaker_state(r, bay.closed_value), "closed_value": bay.closed_value}
    has_controls = bool(bay.open or bay.close)
    return {
        "name": bay.name,
        "breaker": breaker,
        "measurements": [reading(gw, m) for m in bay.measurements],
        "protection": (prot or {"state": "not configured", "process": None}) if bay.protection else None,
        "controls": has_controls,
        "controls_url": f"/controls?bay={quote(bay.name, safe='')}" if has_controls and can_operate else None,
    }


def device_tiles(gw: Gateway) -> list[dict[str, Any]]:
    comm = {str(d["device"]): str(d["state"]) for r in gw.runners for d in r.status()}
    out: list[dict[str, Any]] = []
    seen: dict[str, list[str]] = {}
    for p in gw.points:
        seen.setdefault(p.device, []).append(p.name)
    for dev, names in seen.items():
        out.append({"name": dev, "device": dev, "comm": comm.get(dev), "breaker": None,
                    "measurements": [reading(gw, n) for n in names[:DEVICE_TILE_POINTS]], "protection": None,
                    "controls": False, "controls_url": None})
    return out


def tiles(gw: Gateway, can_operate: bool) -> list[dict[str, Any]]:
    bays = gw.cfg.panel.bays
    if not bays:
        return device_tiles(gw)
    prot = protection_summary(gw) if any(b.protection for b in bays) else None
    return [bay_tile(gw, b, prot, can_operate) for b in bays]


# -- summary strip (also the live stream's summary event) ---------------------------------------------------------
def _sink_rows(gw: Gateway) -> list[dict[str, Any]]:
    """Per sink: uploader status plus the store's backlog figures. Runs in a worker thread (sink_stats may read)."""
    now = gw.wall_ns()
    rows = []
    for up in list(gw.uploaders):
        st: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            st = dict(up.status())
        stats: dict[str, Any] = {}
        store = gw.store
        if store is not None:
            with contextlib.suppress(Exception):
                stats = dict(store.sink_stats(up.sink.name))
        ack = int(st.get("last_ack_wall_ns") or 0)
        rows.append({
            "name": up.sink.name,
            "state": st.get("state", "unknown"),
            "backlog": int(stats.get("backlog_rows", st.get("backlog", 0)) or 0),
            "backlog_bytes": int(stats.get("backlog_bytes", 0) or 0),
            "oldest_age_s": float(stats.get("oldest_age_s", 0.0) or 0.0),
            "last_ack_age_s": (now - ack) / 1e9 if ack else None,
            "last_error": st.get("last_error") or None,
            "events_backlog": int(st.get("events_backlog", 0) or 0),
        })
    return rows


def _store_summary(gw: Gateway) -> dict[str, Any] | None:
    if gw.store is None:
        return None
    try:
        st = gw.store.stats()
    except Exception:  # closing
        return None
    return {"used_bytes": int(st.get("used_bytes", 0)), "budget_bytes": int(st.get("disk_budget_bytes", 0)),
            "disk_full": bool(st.get("disk_full")), "over_budget": bool(st.get("over_budget")),
            "queued_rows": int(st.get("queued_rows", 0)), "rows": int(st.get("rows", 0))}


async def summary(ctx: PanelContext) -> dict[str, Any]:
    """The strip's data and the stream's ``summary`` payload; computed at most every ``SUMMARY_TTL_S``."""
    cache = ctx.state.setdefault("overview", {})
    now_mono = time.monotonic()
    hit = cache.get("summary")
    if hit is not None and now_mono - hit[0] < SUMMARY_TTL_S:
        return dict(hit[1], now_ns=ctx.gw.wall_ns())
    gw = ctx.gw
    devices = [d for r in gw.runners for d in r.status()]
    not_ok = [{"device": str(d["device"]), "state": str(d["state"])} for d in devices if d["state"] != "ok"]
    counts = alarms.counts(ctx)
    sinks = await asyncio.to_thread(_sink_rows, gw) if gw.uploaders else []
    prot = protection_summary(gw)
    out = {
        "now_ns": gw.wall_ns(),
        "alarms_unacked": int(counts.get("unacked", 0)),
        "alarms_active": int(counts.get("active", 0)),
        "devices_ok": len(devices) - len(not_ok),
        "devices_total": len(devices),
        "devices_not_ok": not_ok,
        "sinks": sinks,
        "store": _store_summary(gw),
        "protection": prot["state"] if prot is not None else None,
        "protection_process": prot["process"] if prot is not None else None,
        "last_trip": prot["last_trip"] if prot is not None else None,
    }
    cache["summary"] = (now_mono, out)
    return out


# -- HTML ---------------------------------------------------------------------------------------------------------
def _fmt_value(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.6g}" if v == 0 or 1e-3 <= abs(v) < 1e6 else f"{v:.3e}"


def _fmt_bytes(n: int) -> str:
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if x < 1024 or unit == "GiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{n} B"


def _fmt_age(s: float | None) -> str:
    if s is None:
        return "never"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    if s < 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _measure_row(m: dict[str, Any]) -> str:
    cls = validity_class(m["validity"]) if m["configured"] else "muted"
    label = m["point"].split(".", 1)[-1]
    mark = "" if m["validity"] == "good" else f" <span class='pill {cls}'>{esc(m['quality_text'])}</span>"
    return (f"<tr data-pid='{m['id'] if m['id'] is not None else ''}' title='{esc(m['point'])}'>"
            f"<td>{esc(label)}</td><td class='num big-ish' data-f='value'>{esc(_fmt_value(m['value']))}</td>"
            f"<td data-f='unit'>{esc(m['unit'])}</td><td data-f='q' class='{cls}'>{mark.strip() or '✓'}</td></tr>")


def _tile_html(t: dict[str, Any]) -> str:
    parts = [f"<article class='card tile' data-tile='{esc(t['name'])}'><h2>{esc(t['name'])}</h2>"]
    if t.get("comm") is not None:
        c = t["comm"]
        parts.append(f"<p>comm <span class='pill {'ok' if c == 'ok' else 'bad'}'>{esc(c)}</span></p>")
    b = t["breaker"]
    if b is not None:
        st = b["state"]
        q = "" if b["validity"] in ("good", "none") else f" <span class='muted'>({esc(b['quality_text'])})</span>"
        pill = "muted" if q else BREAKER_CLASS.get(st, "muted")  # not good quality: maybe stale, not coloured
        parts.append(
            f"<p class='breaker' data-pid='{b['id'] if b['id'] is not None else ''}' "
            f"data-closed='{b['closed_value']}'>breaker <span class='pill {pill} state' "
            f"data-f='breaker'>{esc(st)}</span><span data-f='bq'>{q}</span></p>")
    if t["measurements"]:
        parts.append("<table class='meas'>" + "".join(_measure_row(m) for m in t["measurements"]) + "</table>")
    p = t["protection"]
    if p is not None:
        cls = PROTECTION_CLASS.get(p["state"], "muted")
        parts.append(f"<p>protection <span class='pill {cls}' data-f='prot'>{esc(p['state'])}</span></p>")
    if t["controls_url"]:
        parts.append(f"<p><a class='button' href='{esc(t['controls_url'])}'>Controls…</a></p>")
    parts.append("</article>")
    return "".join(parts)


def _strip_html(s: dict[str, Any]) -> str:
    unacked, active = s["alarms_unacked"], s["alarms_active"]
    al_cls = "bad" if unacked else "warn" if active else "ok"
    comm_cls = "ok" if s["devices_ok"] == s["devices_total"] else "bad"
    not_ok = ", ".join(f"{d['device']} ({d['state']})" for d in s["devices_not_ok"])
    sinks = "".join(
        f"<li data-sink='{esc(x['name'])}'><strong>{esc(x['name'])}</strong> "
        f"<span class='pill {'ok' if x['state'] in ('ok', 'idle') else 'bad'}'>{esc(x['state'])}</span> "
        f"backlog {x['backlog']} rows · oldest unsent {_fmt_age(x['oldest_age_s']) if x['backlog'] else '—'} · "
        f"last ack {_fmt_age(x['last_ack_age_s'])}"
        + (f" · <span class='bad'>{esc(x['last_error'])}</span>" if x["last_error"] else "") + "</li>"
        for x in s["sinks"]
    ) or "<li class='muted'>no sinks configured</li>"
    st = s["store"]
    store = (
        f"{_fmt_bytes(st['used_bytes'])} of {_fmt_bytes(st['budget_bytes'])}"
        + (" · <span class='bad'>DISK FULL</span>" if st["disk_full"] else "")
        + (" · <span class='warn'>over budget</span>" if st["over_budget"] and not st["disk_full"] else "")
        if st is not None else "—"
    )
    prot = s["protection"]
    if prot is None:
        prot_html = "<span class='muted'>not configured</span>"
    else:
        lt = s["last_trip"]
        trip = f" · last trip {esc(lt.get('element', ''))}" if lt else " · no trip"
        prot_html = f"<span class='pill {PROTECTION_CLASS.get(prot, 'bad')}'>{esc(prot)}</span>{trip}"
    return f"""<section class="card strip" id="strip"><div class="strip-grid">
<div><div class="muted">Alarms</div><div class="big {al_cls}" id="s-alarms">{unacked} unacked</div>
<div class="muted" id="s-alarms-active">{active} active</div></div>
<div><div class="muted">Comm health</div>
<div class="big {comm_cls}" id="s-comm">{s['devices_ok']} / {s['devices_total']} ok</div>
<div class="bad" id="s-comm-bad">{esc(not_ok)}</div></div>
<div><div class="muted">Cloud sync</div><ul class="plain" id="s-sinks">{sinks}</ul></div>
<div><div class="muted">Store</div><div id="s-store">{store}</div></div>
<div><div class="muted">Protection</div><div id="s-prot">{prot_html}</div></div>
</div></section>"""


_STYLE = """<style>
.strip-grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(190px,1fr));gap:.8rem}
ul.plain{list-style:none;margin:0;padding:0}
.tile h2{margin-bottom:.3rem}.tile table.meas{background:none}.tile table.meas td{border:0;padding:.1rem .3rem}
.tile .breaker{font-size:1.05rem;margin:.2rem 0 .4rem}.tile .state{font-size:1rem;letter-spacing:.03em}
.big-ish{font-size:1.1rem;font-weight:600}
</style>"""


def _provision_html(p: dict[str, Any] | None) -> str:
    """A rejected (or refused) provisioning file: what the technician must fix, on the first page they see."""
    if p is None:
        return ""
    items = "".join(f"<li>{esc(x)}</li>" for x in p.get("problems", []))
    return (f"<section class='card' role='alert'><h2 class='bad'>Provisioning: {esc(p.get('state', ''))}</h2>"
            f"<p>{esc(p.get('message', ''))} <span class='muted'>({esc(p.get('at', ''))})</span></p>"
            f"<ul>{items}</ul><p class='muted'>Fix the file and put it on the boot partition again, or edit the "
            "config and <code>systemctl reload gateway</code> (docs/field-guide.md).</p></section>")


async def overview(call: Call) -> Response:
    gw = call.ctx.gw
    can_operate = call.can(Role.OPERATOR)
    tile_list = tiles(gw, can_operate)
    strip = await summary(call.ctx)
    provision = await asyncio.to_thread(provision_status, gw.cfg.data_dir)
    if provision is not None and provision.get("ok"):
        provision = None  # only a problem is worth a banner
    if call.wants_json():
        return call.json({"now_ns": gw.wall_ns(), "tiles": tile_list, "summary": strip,
                          "bays_configured": bool(gw.cfg.panel.bays), "provisioning_problem": provision})
    tiles_html = "".join(_tile_html(t) for t in tile_list) or "<p class='muted'>No devices configured.</p>"
    body = f"{_STYLE}{_provision_html(provision)}{_strip_html(strip)}<div class='grid' id='tiles'>{tiles_html}</div>"
    ids = sorted({int(m["id"]) for t in tile_list for m in [*t["measurements"], t["breaker"] or {}]
                  if m.get("id") is not None})
    return render_page(call, "Overview", body, data={"point_ids": ids, "quality_bits": QUALITY_BITS},
                       scripts=["overview.js"])


def routes(ctx: PanelContext) -> list[PanelRoute]:
    return [PanelRoute("/", overview, action="overview.read")]

"""Devices page (``/devices``): per device its link, protocol, comm state, last good poll (age), latency of the
last poll, polls, errors, timeouts, reconnects and back-off; ``/devices/{name}``: one device's status and its
points (the same virtualised table as the Points page, live).

The figures are the runners' own ``status()`` dicts (:class:`gateway.runner.LinkRunner`,
:class:`gateway.session_runner.SessionRunner`): ``last_latency_ms`` is the duration of the last poll (Modbus: the
read requests of one due group; session protocols: the last job), ``lateness_p99_ms`` how late polls start.
``devices.js`` refreshes the table every 2 s from ``/api/devices``.

JSON: ``GET /devices?format=json`` → ``{"now_ns", "devices": [{device, link, protocol, state, last_good_ns,
last_good_age_s, last_latency_ms, polls, errors, timeouts, reconnects, backoff_s, missed_slots,
lateness_p99_ms, points}]}``; ``/devices/{name}?format=json`` → ``{"now_ns", "device": {...}, "points":
<the Points page's columns for this device>}``; unknown device → 404 ``{"error": ...}``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.responses import Response

from gateway.panel.context import PanelContext
from gateway.panel.layout import esc, render_page
from gateway.panel.points import columns, json_response, table_shell
from gateway.panel.routing import Call, PanelRoute
from gateway.status_page import quarantine_html, quarantine_status

if TYPE_CHECKING:
    from gateway.app import Gateway

PROTOCOL_NAMES = {"modbus_tcp": "Modbus TCP", "modbus_rtu": "Modbus RTU", "dnp3_tcp": "DNP3", "iec61850": "IEC 61850",
                  "mqtt": "MQTT"}
STATE_CLASS = {"ok": "ok", "starting": "warn", "backoff": "bad", "disconnected": "bad"}


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def device_rows(gw: Gateway) -> list[dict[str, Any]]:
    """One row per configured device, from the runners' status (config order)."""
    now = gw.wall_ns()
    npoints: dict[str, int] = {}
    for p in gw.points:
        npoints[p.device] = npoints.get(p.device, 0) + 1
    rows = []
    for r in gw.runners:
        for d in r.status():
            name = str(d["device"])
            proto = d.get("protocol") or {}
            proto_name = str(proto.get("name", "")) if isinstance(proto, dict) else str(proto)
            last = int(d.get("last_good_ns") or 0)
            rows.append({
                "device": name,
                "link": str(d.get("link", "")),
                "protocol": proto_name,
                "protocol_label": PROTOCOL_NAMES.get(proto_name, proto_name),
                "state": str(d.get("state", "")),
                "last_good_ns": last,
                "last_good_age_s": (now - last) / 1e9 if last else None,
                "last_latency_ms": _num(d.get("last_latency_ms")),
                "polls": int(d.get("polls", 0)),
                "errors": int(d.get("errors", 0)),
                "timeouts": int(d.get("timeouts", 0)),
                "reconnects": int(d.get("reconnects", 0)),
                "backoff_s": float(d.get("backoff_s") or 0.0),  # LinkRunner per device; sessions reconnect
                "missed_slots": int(d.get("missed_slots", 0)),
                "lateness_p99_ms": _num(d.get("lateness_p99_ms")),
                "points": npoints.get(name, 0),
                **({"location": d["location"]} if d.get("location") else {}),
            })
    return rows


def _age(s: float | None) -> str:
    if s is None:
        return "never"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f} ms"


HEAD = ("<tr><th>device</th><th>link</th><th>protocol</th><th>comm</th><th class='num'>last good poll</th>"
        "<th class='num'>latency</th><th class='num'>polls</th><th class='num'>errors</th><th class='num'>timeouts</th>"
        "<th class='num'>reconnects</th><th class='num'>back-off</th><th class='num'>points</th></tr>")


def row_html(d: dict[str, Any], link: bool = True) -> str:
    name = esc(d["device"])
    backoff = f"{d['backoff_s']:.1f} s" if d["backoff_s"] else "—"
    cell = f"<a href='/devices/{esc(quote(d['device'], safe=''))}'>{name}</a>" if link else name
    return (f"<tr data-device='{name}'><td>{cell}</td><td>{esc(d['link'])}</td><td>{esc(d['protocol_label'])}</td>"
            f"<td><span class='pill {STATE_CLASS.get(d['state'], 'warn')}'>{esc(d['state'])}</span></td>"
            f"<td class='num'>{_age(d['last_good_age_s'])}</td><td class='num'>{_ms(d['last_latency_ms'])}</td>"
            f"<td class='num'>{d['polls']}</td><td class='num'>{d['errors']}</td><td class='num'>{d['timeouts']}</td>"
            f"<td class='num'>{d['reconnects']}</td>"
            f"<td class='num'>{backoff}</td>"
            f"<td class='num'>{d['points']}</td></tr>")


async def devices_page(call: Call) -> Response:
    gw = call.ctx.gw
    rows = device_rows(gw)
    now = gw.wall_ns()
    quarantine = await quarantine_status(gw, {"devices": [d for r in gw.runners for d in r.status()]})
    data = {"now_ns": now, "devices": rows, "quarantine": quarantine}
    if call.wants_json():
        return call.json(data)
    ok = sum(d["state"] == "ok" for d in rows)
    body = (f"<section class='card'><p class='muted' id='dev-summary'>{ok} of {len(rows)} devices communicating"
            f"</p><div class='scroll'><table id='devices'><thead>{HEAD}</thead><tbody>"
            + ("".join(row_html(d) for d in rows) or "<tr><td colspan='12' class='muted'>no devices</td></tr>")
            + "</tbody></table></div></section>")
    if quarantine is not None:  # sensor links (MQTT): records refused by validation, kept with their raw payload
        body += f"<section class='card'>{quarantine_html(quarantine, now)}</section>"
    return render_page(call, "Devices", body, data={"source": "/api/devices", "detail": False},
                       scripts=["devices.js"])


async def device_page(call: Call) -> Response:
    gw = call.ctx.gw
    name = str(call.request.path_params["name"])
    row = next((d for d in device_rows(gw) if d["device"] == name), None)
    if row is None:
        return call.error(404, f"no device named {name!r} in this gateway's configuration")
    if call.wants_json():
        return json_response({"now_ns": gw.wall_ns(), "device": row, "points": columns(gw, name)})
    src = f"/points?format=json&device={quote(name, safe='')}"
    status = (f"<section class='card'><div class='scroll'><table id='devices'><thead>{HEAD}</thead><tbody>"
              f"{row_html(row, link=False)}</tbody></table></div>"
              f"<p><a href='/devices'>← all devices</a></p></section>")
    body = status + table_shell(src, device=name, title="Points")
    ids = sorted(gw.point_ids[p.name] for p in gw.points if p.device == name)
    return render_page(call, f"Device {name}", body,
                       data={"source": "/api/devices", "detail": True, "device": name,
                             "point_ids": ids},
                       scripts=["devices.js", "points.js"])


def routes(ctx: PanelContext) -> list[PanelRoute]:
    return [
        PanelRoute("/devices", devices_page, action="devices.read"),
        PanelRoute("/devices/{name}", device_page, action="devices.read_one"),
    ]

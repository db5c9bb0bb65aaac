"""Controls page: breakers open/close (select-before-operate through the gateway's ControlService) and the other
writable points.

``GET /controls`` (viewer; ``?bay=<name>`` highlights one bay): every configured bay with an open or close point —
its breaker state (the breaker point's latest value against ``closed_value``: closed / open / unknown), the live
selection of its control points, and Open / Close buttons for operators — then every writable point no bay
covers, with a value input. JSON: ``{"bays": [...], "points": [...], "select_timeout_s", "can_operate",
"available"}``.

State changes (operator and above), JSON bodies, either ``{"bay": "Feeder 1", "action": "open"|"close"}`` or
``{"device": "feeder1", "point": "pickup_A", "value": 120}``:

- ``POST /api/controls/select`` → the device is selected for this user (``expires_in_s``) after the interlocks
  allowed it; the answer lists the interlocks (``interlocks``: name, ok, reason) and a one-line summary.
- ``POST /api/controls/operate`` → operates the selection made by the same user with the same action and value.
- ``POST /api/controls/cancel`` → ends the selection.

Every outcome the ControlService gives — including refusals (interlocked, not selected, selected by someone
else, expired) — is HTTP 200 with ``{"ok", "status", "detail", ...}``; 400 is bad input (unknown bay, action or
point, a point that is not writable, a bad value); 503 while the gateway has no control service (starting). The
origin of every control is the user's name, so one user's selection cannot be operated by another. The
ControlService writes every request and outcome as an audit event (kind ``control``, priority 0) itself.

Mapping: a DNP3 ``binary_output`` (CROB) takes ``pulse_on`` for a bay's open/close and ``latch_on`` /
``latch_off`` (value 1 / 0) as a plain point; everything else (Modbus coils and registers, DNP3 analog outputs,
IEC 61850 controllable objects) takes ``value``. The panel always uses select-before-operate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from gateway.config import BayConfig, LinkConfig, PointConfig
from gateway.model import describe_quality, validity
from gateway.panel.context import PanelContext
from gateway.panel.layout import esc, render_page
from gateway.panel.roles import Role
from gateway.panel.routing import Call, PanelRoute
from protocols.session import ControlAction, ControlMode, ControlRequest, ControlResult

_ACTIONS = ("open", "close")


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved control request (before the user's name is added)."""

    device: str
    point: str
    value: float
    action: ControlAction
    label: str  # what will happen, for people: "Open breaker of Feeder 1"
    bay: str = ""
    bay_action: str = ""  # "open" / "close" for a bay

    @property
    def key(self) -> str:
        return f"{self.device}.{self.point}"

    def request(self, origin: str) -> ControlRequest:
        return ControlRequest(self.device, self.point, self.action, self.value, ControlMode.SBO, origin=origin)

    def describe(self) -> str:
        how = "" if self.action is ControlAction.VALUE else f", {self.action.value}"
        return f"{self.label} ({self.key} ← {self.value:g}{how})"

    def as_dict(self) -> dict[str, Any]:
        return {"bay": self.bay or None, "action": self.bay_action or None, "device": self.device,
                "point": self.point, "value": self.value, "control_action": self.action.value,
                "label": self.label, "description": self.describe()}


class BadInput(ValueError):
    """A request the panel refuses before the control service sees it (HTTP 400)."""


def _point_index(ctx: PanelContext) -> dict[str, tuple[LinkConfig, PointConfig]]:
    gw = ctx.gw
    return {f"{dev.name}.{p.name}": (link, p) for link, dev in gw.cfg.devices() for p in dev.points}


def _control_bays(ctx: PanelContext) -> list[BayConfig]:
    return [b for b in ctx.cfg.bays if b.open or b.close]


def _split(key: str) -> tuple[str, str]:
    device, _, point = key.partition(".")
    return device, point


def _bay_target(ctx: PanelContext, bay_name: str, action: str) -> Target:
    bay = next((b for b in _control_bays(ctx) if b.name == bay_name), None)
    if bay is None:
        raise BadInput(f"no bay {bay_name!r} with breaker controls")
    if action not in _ACTIONS:
        raise BadInput(f"unknown action {action!r}: expected 'open' or 'close'")
    key, value = (bay.open, bay.open_value) if action == "open" else (bay.close, bay.close_value)
    if not key:
        raise BadInput(f"bay {bay_name!r} has no {action} control")
    found = _point_index(ctx).get(key)
    if found is None or not found[1].writable:
        raise BadInput(f"{key} (the {action} point of {bay_name!r}) is not a writable point")
    link, p = found
    ca = ControlAction.PULSE_ON if (link.protocol == "dnp3_tcp" and p.kind == "binary_output") else ControlAction.VALUE
    device, point = _split(key)
    return Target(device, point, float(value), ca, f"{action.capitalize()} breaker of {bay.name}", bay.name, action)


def _bay_points(ctx: PanelContext) -> set[str]:
    return {k for b in _control_bays(ctx) for k in (b.open, b.close) if k}


def _point_target(ctx: PanelContext, device: str, point: str, raw: object) -> Target:
    key = f"{device}.{point}"
    found = _point_index(ctx).get(key)
    if found is None:
        raise BadInput(f"no point {key}")
    link, p = found
    if not p.writable:
        raise BadInput(f"{key} is not writable")
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise BadInput("value must be a number")
    try:
        value = float(raw)
    except ValueError:
        raise BadInput(f"value must be a number, not {raw!r}") from None
    if not math.isfinite(value):
        raise BadInput("value must be a finite number")
    if p.kind in ("coil", "binary_output") and value not in (0.0, 1.0):
        raise BadInput(f"{key} is a {p.kind}: the value must be 0 or 1")
    ca = ControlAction.VALUE
    if link.protocol == "dnp3_tcp" and p.kind == "binary_output":
        ca = ControlAction.LATCH_ON if value else ControlAction.LATCH_OFF
    return Target(device, point, value, ca, f"Set {key} to {value:g}{(' ' + p.unit) if p.unit else ''}")


async def _target(call: Call) -> Target:
    body = await call.body()
    if body.get("bay") is not None:
        return _bay_target(call.ctx, str(body.get("bay")), str(body.get("action", "")))
    device, point = body.get("device"), body.get("point")
    if not isinstance(device, str) or not isinstance(point, str) or not device or not point:
        raise BadInput('give {"bay": name, "action": "open"|"close"} or {"device", "point", "value"}')
    if "value" not in body:
        raise BadInput("value is required")
    return _point_target(call.ctx, device, point, body["value"])


# -- state ---------------------------------------------------------------------------------------------------


def _latest(ctx: PanelContext, key: str) -> dict[str, Any]:
    gw = ctx.gw
    i = gw.point_ids.get(key)
    latest = gw.latest
    if i is None or latest is None or i >= len(latest.ts) or int(latest.ts[i]) == 0:
        return {"value": None, "quality": "no data", "validity": "none", "ts_ns": 0}
    q = int(latest.quality[i])
    v = float(latest.value[i])
    return {"value": None if math.isnan(v) else v, "quality": describe_quality(q), "validity": validity(q),
            "ts_ns": int(latest.ts[i])}


def breaker_state(ctx: PanelContext, bay: BayConfig) -> tuple[str, dict[str, Any]]:
    """("closed" | "open" | "unknown", the breaker point's latest reading)."""
    if not bay.breaker:
        return "unknown", {"value": None, "quality": "no breaker point", "validity": "none", "ts_ns": 0}
    r = _latest(ctx, bay.breaker)
    if r["value"] is None or r["validity"] in ("invalid", "none", "reserved"):
        return "unknown", r
    return ("closed" if r["value"] == bay.closed_value else "open"), r


def _selection(ctx: PanelContext, key: str) -> dict[str, Any] | None:
    svc = ctx.gw.controls
    if svc is None or not key:
        return None
    device, point = _split(key)
    return svc.selection(device, point)


def _interlock_summary(items: list[dict[str, object]]) -> str:
    refused = [i for i in items if not i["ok"]]
    if refused:
        return "refused: " + "; ".join(str(i["reason"]) for i in refused)
    return "interlocks clear" if items else "interlocks clear (none configured)"


def page_data(ctx: PanelContext, can_operate: bool) -> dict[str, Any]:
    gw = ctx.gw
    bays = []
    for b in _control_bays(ctx):
        state, reading = breaker_state(ctx, b)
        controls = {}
        for action in _ACTIONS:
            key = b.open if action == "open" else b.close
            if not key:
                continue
            controls[action] = {"point": key, "value": b.open_value if action == "open" else b.close_value,
                                "selection": _selection(ctx, key)}
        bays.append({"name": b.name, "breaker": b.breaker or None, "closed_value": b.closed_value,
                     "state": state, "reading": reading, "controls": controls})
    covered = _bay_points(ctx)
    points = []
    for key, (link, p) in _point_index(ctx).items():
        if not p.writable or key in covered:
            continue
        points.append({"device": _split(key)[0], "point": p.name, "key": key, "kind": p.kind, "unit": p.unit,
                       "protocol": link.protocol, "binary": p.kind in ("coil", "binary_output"),
                       **{f"latest_{k}": v for k, v in _latest(ctx, key).items()},
                       "selection": _selection(ctx, key)})
    return {"available": gw.controls is not None, "can_operate": can_operate,
            "select_timeout_s": gw.controls.select_timeout_s if gw.controls is not None else ctx.cfg.select_timeout_s,
            "bays": bays, "points": points}


# -- handlers ------------------------------------------------------------------------------------------------


def _sel_text(sel: dict[str, Any] | None) -> str:
    if not sel:
        return "<span class='muted'>not selected</span>"
    return (f"<span class='warn'>selected by {esc(sel['origin'])} for {esc(sel['action'])} {float(sel['value']):g}, "
            f"{max(0.0, float(sel['expires_in_s'])):.0f} s left</span>")


_STATE_PILL = {"closed": "bad", "open": "ok", "unknown": "muted"}


def _render(call: Call, data: dict[str, Any], focus: str) -> str:
    can = data["can_operate"]
    cards = []
    for b in data["bays"]:
        buttons = ""
        if can:
            buttons = "<div class='toolbar'>" + "".join(
                f"<button class='{'danger' if a == 'open' else 'primary'}' data-bay='{esc(b['name'])}' "
                f"data-action='{a}'>{a.capitalize()}…</button>"
                for a in _ACTIONS if a in b["controls"]) + "</div>"
        ctl_rows = "".join(
            f"<dt>{esc(a)}</dt><dd><span class='mono'>{esc(c['point'])}</span> ← {float(c['value']):g}"
            f"<br><span data-sel='{esc(c['point'])}'>{_sel_text(c['selection'])}</span></dd>"
            for a, c in b["controls"].items())
        style = " style='outline:3px solid #2c6fb7'" if b["name"] == focus else ""
        cards.append(
            f"<section class='card bay' data-bay-card='{esc(b['name'])}'{style}><h2>{esc(b['name'])}</h2>"
            f"<p>Breaker: <span class='pill {_STATE_PILL[b['state']]} big-state' data-state='{esc(b['name'])}'>"
            f"{esc(b['state'].upper())}</span> <span class='muted mono'>{esc(b['breaker'] or '')}</span></p>"
            f"<dl class='kv'>{ctl_rows}</dl>{buttons}</section>")
    bays_html = (f"<div class='grid'>{''.join(cards)}</div>" if cards
                 else "<p class='muted'>No bay has open/close points ([[panel.bays]] open/close in the config).</p>")
    rows = []
    for p in data["points"]:
        val = "—" if p["latest_value"] is None else f"{p['latest_value']:g}"
        form = ""
        if can:
            attrs = "min='0' max='1' step='1'" if p["binary"] else "step='any'"
            form = (f"<td><span class='toolbar'><input type='number' {attrs} aria-label='value for {esc(p['key'])}' "
                    f"data-value-for='{esc(p['key'])}' value='{'' if p['latest_value'] is None else esc(val)}'>"
                    f"<button data-device='{esc(p['device'])}' data-point='{esc(p['point'])}'>Set…</button>"
                    "</span></td>")
        rows.append(
            f"<tr><td class='mono'>{esc(p['key'])}</td><td>{esc(p['kind'])}</td>"
            f"<td class='num' data-latest='{esc(p['key'])}'>{esc(val)} {esc(p['unit'])}</td>"
            f"<td data-sel='{esc(p['key'])}'>{_sel_text(p['selection'])}</td>{form}</tr>")
    points_html = (
        "<div class='scroll'><table><thead><tr><th>Point</th><th>Kind</th><th class='num'>Latest</th>"
        f"<th>Selection</th>{'<th>Set value</th>' if can else ''}</tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table></div>" if rows else "<p class='muted'>No other writable points.</p>")
    note = "" if data["available"] else "<p class='bad'>The control service is not running yet (gateway starting).</p>"
    who = ("Select, check the interlocks, then operate within the select timeout "
           f"({data['select_timeout_s']:g} s). Every step is recorded in the audit log." if can
           else "You can watch the breakers; operating them needs the operator role.")
    dialog = """<dialog id='confirm' aria-labelledby='confirm-title'>
<h2 id='confirm-title'>Confirm control</h2>
<p id='confirm-what' class='mono'></p>
<dl class='kv'><dt>Breaker now</dt><dd id='confirm-breaker'>—</dd>
<dt>Selection</dt><dd id='confirm-sel'></dd><dt>Interlocks</dt><dd id='confirm-ilk'></dd>
<dt>Time left</dt><dd id='confirm-count' class='big'></dd></dl>
<ul id='confirm-ilk-list'></ul>
<p id='confirm-result' role='status'></p>
<div class='toolbar'><button id='confirm-operate' class='danger'>Operate</button>
<button id='confirm-cancel'>Cancel</button></div></dialog>"""
    return (f"{note}<p class='muted'>{esc(who)} Breaker: <span class='pill bad'>CLOSED</span> "
            "<span class='pill ok'>OPEN</span></p>"
            f"<h2>Breakers</h2>{bays_html}<section class='card'><h2>Other writable points</h2>{points_html}</section>"
            f"{dialog if can else ''}")


async def controls_page(call: Call) -> Response:
    data = page_data(call.ctx, call.can(Role.OPERATOR))
    if call.wants_json():
        return call.json(data)
    focus = call.request.query_params.get("bay", "")
    return render_page(call, "Controls", _render(call, data, focus), data={**data, "focus": focus},
                       scripts=["controls.js"])


def _answer(call: Call, what: str, t: Target, result: ControlResult, **extra: Any) -> Response:
    out: dict[str, Any] = {"step": what, "ok": result.ok, "status": result.status.value, "detail": result.detail,
                           "code": result.code, "request": t.as_dict(), **t.as_dict(),
                           "selection": _selection(call.ctx, t.key), **extra}
    if t.bay:
        bay = next(b for b in _control_bays(call.ctx) if b.name == t.bay)
        out["breaker_state"] = breaker_state(call.ctx, bay)[0]
    return call.json(out)


async def _step(call: Call, what: str) -> Response:
    svc = call.ctx.gw.controls
    if svc is None:
        return call.error(503, "the control service is not running yet (gateway starting)")
    try:
        t = await _target(call)
    except BadInput as e:
        return call.error(400, str(e))
    req = t.request(call.user)
    if what == "select":
        result = await svc.select(req)
        ilk = svc.interlock_state(req)
        summary = _interlock_summary(ilk)
        if result.status.value == "interlocked":
            summary = f"refused: {result.detail}"
        sel = svc.selection(t.device, t.point) if result.ok else None
        return _answer(call, what, t, result, interlocks=ilk, interlock_summary=summary,
                       expires_in_s=sel["expires_in_s"] if sel else None, select_timeout_s=svc.select_timeout_s)
    if what == "operate":
        return _answer(call, what, t, await svc.operate(req))
    return _answer(call, what, t, await svc.cancel(req))


async def select(call: Call) -> Response:
    return await _step(call, "select")


async def operate(call: Call) -> Response:
    return await _step(call, "operate")


async def cancel(call: Call) -> Response:
    return await _step(call, "cancel")


def routes(ctx: PanelContext) -> list[PanelRoute]:
    return [
        PanelRoute("/controls", controls_page, action="controls.view"),
        PanelRoute("/api/controls/select", select, ("POST",), Role.OPERATOR, "controls.select"),
        PanelRoute("/api/controls/operate", operate, ("POST",), Role.OPERATOR, "controls.operate"),
        PanelRoute("/api/controls/cancel", cancel, ("POST",), Role.OPERATOR, "controls.cancel"),
    ]

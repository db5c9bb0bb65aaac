"""The Protection page: the protection process, its cycle, the settings groups and elements, trips and fault records.

``GET /protection`` (viewer; JSON twin ``/api/protection``): the process (state, last error, starts, restarts,
planned restarts), the cycle statistics, the settings group in service, every element of both groups with every
setting (and its unit) and its live state, the trip outputs, the last trips (µs, phases, values at the trip) and
the fault records with a download link. ``GET /protection/records/{name}`` (viewer) serves one record's COMTRADE
files (``.cfg`` + ``.dat``) as one ``.zip``; only a name from the record list is served.

Engineers (and admins) change things, each an audit event (priority 0):

- ``POST /api/protection/group`` ``{"group": 1|2}`` (action ``protection.group``): the group in service, live.
- ``POST /api/protection/settings`` ``{"group": 1|2, "version": "<hash>", "elements": [{...}, ...]}`` (action
  ``protection.settings``): the whole element list of one group, with the keys of ``[[protection.groupN.elements]]``,
  checked exactly like the config file (:func:`protection.config.parse_group_elements`). Invalid → 400 with every
  problem (``key``, ``message``), nothing applied; a ``version`` that is not the current one → 409. Valid → written
  to ``<data_dir>/panel/protection-settings.json`` and put in service by restarting the protection process (it
  takes settings at start only: a short window without protection, raised as an alarm).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from gateway.panel.context import PanelContext
from gateway.panel.layout import esc, render_page
from gateway.panel.roles import Role
from gateway.panel.routing import Call, PanelRoute
from protection.settings import SETTINGS_BY_TYPE, ProtectionSettings, element_to_raw, setting_fields, settings_version
from protection.soe import invalid_quantities

if TYPE_CHECKING:
    from gateway.protection_service import ProtectionService

QUANTITY_UNITS = {"ia": "A", "ib": "A", "ic": "A", "in": "A", "va": "kV", "vb": "kV", "vc": "kV", "f": "Hz"}
SCHEMA = {t: setting_fields(t) for t in SETTINGS_BY_TYPE}  # element type -> its settings (key, kind, unit, range)


def _service(call: Call) -> ProtectionService | None:
    return call.ctx.gw.protection


def _utc(ns: int | None) -> str:
    """UTC epoch ns → ``YYYY-MM-DD HH:MM:SS.ffffff UTC`` (µs kept: trip order matters)."""
    if not ns:
        return "—"
    s, rem = divmod(int(ns), 1_000_000_000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s)) + f".{rem // 1000:06d} UTC"


def _num(v: Any, digits: int = 6) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _element_state(el: dict[str, Any], live: dict[tuple[int, str], dict[str, Any]], running: bool,
                   active_group: int) -> str:
    """armed / picked up / tripped / blocked / standby (armed, group not in service) / disabled / not armed /
    unknown (no process)."""
    if not el.get("enabled", True):
        return "disabled"
    if not running:
        return "unknown"
    st = live.get((el["group"], el["name"]))
    if st is None:
        return "not armed"
    if el["group"] != active_group:
        return "standby"
    if st["tripped"]:
        return "tripped"
    if st["blocked"]:
        return "blocked"
    if st["picked_up"]:
        return "picked up"
    return "armed"


STATE_CLASS = {"armed": "ok", "tripped": "bad", "picked up": "warn", "blocked": "warn", "not armed": "bad",
               "standby": "muted", "disabled": "muted", "unknown": "muted"}
PROCESS_CLASS = {"running": "ok", "starting": "warn", "restarting": "warn", "start failed": "bad", "stopped": "muted"}


async def collect(call: Call) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data (loop thread; the records directory is read in a thread)."""
    svc = _service(call)
    can_edit = call.can(Role.ENGINEER)
    if svc is None:
        settings: ProtectionSettings = call.ctx.gw.cfg.protection
        groups = {str(g): [element_to_raw(e) for e in settings.group(g)] for g in (1, 2)}
        return {
            "configured": False,
            "note": "the protection process is not configured on this gateway (no [protection.source] or no "
                    "elements); the config file's settings are shown",
            "process": {"state": "not configured"},
            "cycle": None,
            "active_group": settings.active_group,
            "settings": {"version": settings_version(settings), "source": "config", "groups": groups},
            "elements": [{"group": g, **e, "state": "unknown"} for g in (1, 2) for e in groups[str(g)]],
            "outputs": [], "last_trips": [], "records": [], "schema": SCHEMA, "can_edit": False,
        }
    st = svc.status()
    info = svc.settings_info()
    cycle = st.get("cycle")
    running = st["state"] == "running" and cycle is not None
    active = int(cycle["active_group"]) if running and cycle and cycle.get("active_group") else info["active_group"]
    if cycle is not None:
        cycle = {**cycle, "period_ms": st["period_ms"],
                 "invalid_quantities": invalid_quantities(int(cycle.get("measurements_valid") or 0))}
    live = {(e["group"], e["name"]): e for e in st["elements"]}
    elements = []
    for g in (1, 2):
        for raw in info["groups"][str(g)]:
            el = {"group": g, **raw}
            el["state"] = _element_state(el, live, running, active)
            el["trips"] = svc.group_trips.get((g, raw["name"]), 0)
            elements.append(el)
    records = await asyncio.to_thread(svc.record_files)
    for r in records:
        r["download"] = f"/protection/records/{r['name']}.zip"
    return {
        "configured": True,
        "process": {k: st[k] for k in ("state", "last_error", "starts", "restarts", "events_stored")}
        | {"reloads": info["reloads"]},
        "cycle": cycle,
        "period_ms": st["period_ms"],
        "active_group": active,
        "settings": {k: info[k] for k in ("version", "source", "changed_by", "changed_at_ns", "groups",
                                          "override_file")},
        "elements": elements,
        "outputs": st["outputs"],
        "last_trips": st["last_trips"],
        "records": records,
        "schema": SCHEMA,
        "can_edit": can_edit,
    }


# -- HTML -------------------------------------------------------------------------------------------------------
def _kv(rows: list[tuple[str, str]], ident: str = "") -> str:
    items = "".join(f"<dt>{esc(k)}</dt><dd{f' id={ident}-{i}' if ident else ''}>{v}</dd>"
                    for i, (k, v) in enumerate(rows))
    return f"<dl class='kv'>{items}</dl>"


def _process_card(d: dict[str, Any]) -> str:
    p = d["process"]
    state = p["state"]
    rows = [("state", f"<span class='pill {PROCESS_CLASS.get(state, 'muted')}'>{esc(state)}</span>")]
    if d["configured"]:
        rows += [
            ("last error", f"<span class='bad'>{esc(p['last_error'])}</span>" if p["last_error"] else "—"),
            ("starts", esc(p["starts"])),
            ("restarts (failures)", esc(p["restarts"])),
            ("restarts (settings)", esc(p["reloads"])),
            ("events stored", esc(p["events_stored"])),
        ]
    else:
        rows.append(("note", esc(d["note"])))
    return f"<section class='card' id='process'><h2>Process</h2><div id='process-kv'>{_kv(rows)}</div></section>"


def _cycle_rows(c: dict[str, Any] | None) -> list[tuple[str, str]]:
    if c is None:
        return [("cycle", "<span class='muted'>no process running</span>")]
    us = lambda k: "—" if c.get(k) is None else f"{c[k]:.1f} µs"  # noqa: E731
    fifo = "<span class='ok'>yes</span>" if c["sched_fifo"] else "<span class='warn'>no (default scheduler)</span>"
    inval = c.get("invalid_quantities") or []
    return [
        ("period", f"{c['period_ms']:g} ms"),
        ("cycles", esc(c["cycles"])),
        ("overruns", f"<span class='{'warn' if c['overruns'] else 'ok'}'>{esc(c['overruns'])}</span>"
                     f" <span class='muted'>({esc(c['skipped_slots'])} slots skipped)</span>"),
        ("lateness p50 / p99 / p99.9", f"{us('lateness_p50_us')} / {us('lateness_p99_us')} / "
                                       f"{us('lateness_p999_us')}"),
        ("max lateness", us("max_lateness_us")),
        ("execution mean / max", f"{us('mean_exec_us')} / {us('max_exec_us')}"),
        ("SCHED_FIFO", fifo),
        ("CPU", esc(c["cpu"]) if c["cpu"] >= 0 else "<span class='muted'>not pinned</span>"),
        ("pid", esc(c["pid"])),
        ("measurements", "<span class='ok'>all valid</span>" if not inval
         else f"<span class='bad'>invalid: {esc(', '.join(inval))}</span>"),
        ("event ring overflow", esc(c["events_overflow"])),
    ]


def _group_card(d: dict[str, Any]) -> str:
    s = d["settings"]
    active = d["active_group"]
    src = ("<span class='warn'>panel override</span>" + (f" — changed by {esc(s['changed_by'])} at "
                                                        f"{esc(_utc(s['changed_at_ns']))}" if s.get("changed_by")
                                                        else "")
           if s["source"] == "panel" else "config file")
    rows = [("group in service", f"<span class='big' id='active-group'>{esc(active)}</span>"),
            ("settings from", src),
            ("settings version", f"<span class='mono' id='settings-version'>{esc(s['version'])}</span>")]
    ctl = ""
    if d["can_edit"] and d["configured"]:
        buttons = "".join(
            f"<button type='button' class='{'primary' if g != active else ''}' data-switch-group='{g}'"
            f"{' disabled' if g == active or d['process']['state'] != 'running' else ''}>Switch to group {g}</button>"
            for g in (1, 2))
        ctl = f"<div class='toolbar' id='group-switch'>{buttons}<span id='group-msg' class='muted'></span></div>"
    return f"<section class='card'><h2>Settings group</h2>{_kv(rows)}{ctl}</section>"


def _setting_cell(key: str, v: Any) -> str:
    unit = next((f["unit"] for fs in SCHEMA.values() for f in fs if f["key"] == key), "")
    return f"{esc(_num(v))}{' ' + esc(unit) if unit and v is not None else ''}"


def _element_table(d: dict[str, Any], g: int) -> str:
    rows = []
    for el in (e for e in d["elements"] if e["group"] == g):
        keys = [f["key"] for f in SCHEMA[el["type"]] if f["key"] not in ("name", "enabled")]
        settings = "".join(
            f"<span class='setting'><span class='muted'>{esc(k)}</span> {_setting_cell(k, el.get(k))}</span>"
            for k in keys if k in el)
        state = el["state"]
        edit = (f"<button type='button' data-edit='{g}:{esc(el['name'])}'>Edit</button>"
                if d["can_edit"] and d["configured"] else "")
        rows.append(
            f"<tr><td><strong>{esc(el['name'])}</strong></td><td>{esc(el['type'])}</td>"
            f"<td class='settings'>{settings}</td>"
            f"<td>{'yes' if el.get('enabled', True) else '<span class=muted>no</span>'}</td>"
            f"<td><span class='pill {STATE_CLASS.get(state, 'muted')}' data-state='{g}:{esc(el['name'])}'>"
            f"{esc(state)}</span></td><td class='num'>{esc(el.get('trips', 0))}</td><td>{edit}</td></tr>")
    body = "".join(rows) or "<tr><td colspan='7' class='muted'>no elements in this group</td></tr>"
    mark = " <span class='pill ok'>in service</span>" if d["active_group"] == g else ""
    return (f"<section class='card'><h2>Group {g}{mark}</h2><table><thead><tr><th>element</th><th>type</th>"
            "<th>settings</th><th>enabled</th><th>state</th><th class='num'>trips</th><th></th></tr></thead>"
            f"<tbody>{body}</tbody></table></section>")


def _edit_dialogs(d: dict[str, Any]) -> str:
    """One form per element (engineers only): an input per setting, typed by the settings' schema."""
    if not (d["can_edit"] and d["configured"]):
        return ""
    out = []
    for el in d["elements"]:
        g, name = el["group"], el["name"]
        fields = []
        for f in SCHEMA[el["type"]]:
            k, v = f["key"], el.get(f["key"])
            label = esc(k) + (f" ({esc(f['unit'])})" if f["unit"] else "")
            rng = f" <span class='muted'>{f['min']:g}–{f['max']:g}</span>" if "min" in f else ""
            if f["kind"] == "choice":
                opts = "".join(f"<option{' selected' if o == v else ''}>{esc(o)}</option>" for o in f["options"])
                inp = f"<select name='{esc(k)}' data-kind='choice'>{opts}</select>"
            elif f["kind"] == "bool":
                inp = (f"<input type='checkbox' name='{esc(k)}' data-kind='bool' style='width:auto;display:inline'"
                       f"{' checked' if v else ''}>")
            elif f["kind"] == "number":
                lim = f" min='{f['min']}' max='{f['max']}'" if "min" in f else ""
                val = "" if v is None else esc(int(v) if float(v).is_integer() else v)
                req = " required" if f["required"] else ""
                opt = " data-optional='1'" if f["optional"] else ""
                inp = (f"<input type='number' step='any' name='{esc(k)}' value='{val}' data-kind='number'"
                       f"{lim}{req}{opt}>")
            else:
                inp = f"<input type='text' name='{esc(k)}' value='{esc(v or '')}' data-kind='text' required>"
            hint = " <span class='muted'>(leave empty if not used by the curve)</span>" if f["optional"] else ""
            fields.append(f"<label>{label}{rng}{hint}{inp}</label>")
        out.append(
            f"<dialog class='edit-element' data-for='{g}:{esc(name)}'><form method='dialog' "
            f"data-group='{g}' data-element='{esc(name)}' data-type='{esc(el['type'])}'>"
            f"<h2>Edit {esc(name)} ({esc(el['type'])}), group {g}</h2>{''.join(fields)}"
            "<p class='warn'>Applying restarts the protection process: a short time without protection from "
            "the gateway.</p><ul class='problems bad'></ul>"
            "<div class='toolbar'><button type='submit' class='primary' value='apply'>Apply</button>"
            "<button type='button' data-cancel>Cancel</button></div></form></dialog>")
    return "".join(out)


def _outputs_card(d: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{esc(o['name'])}</td><td><span class='pill {'ok' if o['link'] == 'up' else 'warn'}'>"
        f"{esc(o['link'])}</span></td><td>{esc(o.get('last') or '—')}</td><td>{esc(_utc(o.get('last_utc_ns')))}</td>"
        "</tr>" for o in d["outputs"])
    rows = rows or "<tr><td colspan='4' class='muted'>no trip outputs configured</td></tr>"
    return ("<section class='card'><h2>Trip outputs</h2><table id='outputs'><thead><tr><th>output</th><th>link</th>"
            f"<th>last outcome</th><th>at</th></tr></thead><tbody>{rows}</tbody></table></section>")


def _values(at: dict[str, Any] | None, keys: tuple[str, ...] = ("ia", "ib", "ic", "in")) -> str:
    if not at:
        return "<span class='muted'>—</span>"
    return " ".join(f"{esc(k.upper() if k != 'in' else 'IN')} {esc(_num(at.get(k), 5))} {QUANTITY_UNITS[k]}"
                    for k in keys)


def _trips_card(d: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td class='mono'>{esc(_utc(t['utc_ns']))}</td><td>{esc(t['element'])}</td><td>{esc(t['type'])}</td>"
        f"<td>{esc(t['group'])}</td><td>{esc(t['phases'] or '—')}</td><td>{_values(t.get('at_trip'))}</td>"
        f"<td>{esc(t.get('record') or '')}</td></tr>" for t in d["last_trips"])
    rows = rows or "<tr><td colspan='7' class='muted'>no trips since the gateway started</td></tr>"
    return ("<section class='card'><h2>Last trips</h2><table id='trips'><thead><tr><th>time</th><th>element</th>"
            "<th>type</th><th>group</th><th>phases</th><th>currents at the trip</th><th>record</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>")


def _records_card(d: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td class='mono'>{esc(r['name'])}</td><td>{esc(', '.join(r.get('elements', [])) or '—')}</td>"
        f"<td class='mono'>{esc(_utc(r.get('trigger_utc_ns')))}</td><td class='num'>{esc(r['bytes'])}</td>"
        f"<td><a class='button' href='{esc(r['download'])}' download>COMTRADE (.zip)</a></td></tr>"
        for r in d["records"])
    rows = rows or "<tr><td colspan='5' class='muted'>no fault records</td></tr>"
    return ("<section class='card'><h2>Fault records (COMTRADE)</h2><p class='muted'>IEEE C37.111-2013, BINARY "
            ".cfg + .dat, zipped; the cycle's RMS values and element states, not waveforms.</p>"
            "<div class='scroll'><table id='records'><thead><tr><th>record</th><th>elements</th><th>trigger</th>"
            f"<th class='num'>bytes</th><th></th></tr></thead><tbody>{rows}</tbody></table></div></section>")


STYLE = ("<style>td.settings .setting{display:inline-block;margin-right:1.1em;white-space:nowrap}"
         "dialog.edit-element{max-height:90vh;overflow:auto}dialog.edit-element label{margin:.35rem 0}</style>")


def render_body(d: dict[str, Any]) -> str:
    return (
        STYLE + "<div class='row'>" + _process_card(d)
        + f"<section class='card'><h2>Cycle</h2><div id='cycle-kv'>{_kv(_cycle_rows(d['cycle']))}</div></section>"
        + _group_card(d) + "</div>"
        + "<div id='settings-msg'></div>"
        + _element_table(d, 1) + _element_table(d, 2)
        + "<div class='row'>" + _outputs_card(d) + "</div>"
        + _trips_card(d) + _records_card(d) + _edit_dialogs(d)
    )


# -- handlers ---------------------------------------------------------------------------------------------------
async def page(call: Call) -> Response:
    d = await collect(call)
    if call.wants_json():
        return call.json(d)
    return render_page(call, "Protection", render_body(d), data=d, scripts=["protection.js"])


async def download_record(call: Call) -> Response:
    svc = _service(call)
    name = call.request.path_params.get("name", "")
    if svc is None:
        return call.error(404, "no fault records: protection is not configured")
    got = await asyncio.to_thread(svc.record_zip, name)
    if got is None:
        return call.error(404, f"no fault record named {name!r}")
    fname, data = got
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{fname}"'})


async def switch_group(call: Call) -> Response:
    svc = _service(call)
    if svc is None:
        return call.error(409, "protection is not configured on this gateway")
    body = await call.body()
    group = body.get("group")
    if isinstance(group, str) and group.strip() in ("1", "2"):
        group = int(group)
    if isinstance(group, bool) or group not in (1, 2):
        return call.error(400, f"group must be 1 or 2, got {group!r}")
    st = svc.status()
    before = (st.get("cycle") or {}).get("active_group") or svc.settings.active_group
    try:
        svc.switch_group(group)
    except RuntimeError as e:
        return call.error(409, f"cannot switch the settings group: {e}")
    await call.audit("protection.group", f"switched protection to settings group {group} (was {before})",
                     group=group, previous=before)
    return call.json({"ok": True, "group": group, "previous": before})


def _diff_text(diff: list[dict[str, Any]]) -> str:
    parts = []
    for d in diff:
        if d["change"] == "changed":
            parts.append(d["element"] + " " + ", ".join(f"{k} {_num(a)} → {_num(b)}" for k, (a, b) in
                                                        d["settings"].items()))
        else:
            parts.append(f"{d['element']} {d['change']}")
    return "; ".join(parts) or "no setting changed"


async def change_settings(call: Call) -> Response:
    from gateway.protection_service import StaleSettingsError

    svc = _service(call)
    if svc is None:
        return call.error(409, "protection is not configured on this gateway: change the config file")
    body = await call.body()
    group, version, raw = body.get("group"), body.get("version"), body.get("elements")
    if isinstance(group, bool) or group not in (1, 2):
        return call.error(400, f"group must be 1 or 2, got {group!r}",
                          problems=[{"key": "group", "message": "expected 1 or 2"}])
    if not isinstance(version, str) or not version:
        return call.error(400, "version required: the settings version your change is based on",
                          problems=[{"key": "version", "message": "missing"}])
    candidate, problems = svc.validate_group(group, raw)
    if problems:
        return call.error(400, f"{len(problems)} problem(s); nothing was changed", problems=problems)
    if version != svc.version:
        return call.error(409, f"the settings changed meanwhile (your version {version}, current {svc.version}): "
                               "reload the page and make your change again", current_version=svc.version)
    if settings_version(candidate) == svc.version:
        return call.json({"applied": "unchanged", "version": svc.version, "diff": []})
    try:
        res = await svc.change_settings(group, candidate.group(group), user=call.user, based_on=version)
    except StaleSettingsError as e:
        return call.error(409, str(e), current_version=e.current)
    except OSError as e:
        return call.error(500, f"the settings could not be saved ({e}); nothing was changed")
    how = ("the protection process restarts with them: a short time without protection from the gateway"
           if res["applied"] == "restart" else "they take effect when the protection process next starts")
    await call.audit("protection.settings", f"changed protection settings group {group}: {_diff_text(res['diff'])}"
                     f" ({how})", group=group, old_version=res["old_version"], version=res["version"],
                     applied=res["applied"], diff=res["diff"])
    return call.json({"ok": True, "message": f"settings of group {group} saved; {how}", **res})


def routes(ctx: PanelContext) -> list[PanelRoute]:
    return [
        PanelRoute("/protection", page, action="protection.read"),
        PanelRoute("/protection/records/{name}", download_record, action="protection.record", api_twin=False),
        PanelRoute("/api/protection/group", switch_group, methods=("POST",), role=Role.ENGINEER,
                   action="protection.group"),
        PanelRoute("/api/protection/settings", change_settings, methods=("POST",), role=Role.ENGINEER,
                   action="protection.settings"),
    ]

"""Minimal local status page: devices with comm state, latest values with decoded quality and age, sync backlog.

One handler serves HTML to people and JSON to tools (``Accept: application/json`` or ``?format=json``); the HTML
refreshes itself every 2 s and needs no JavaScript, no CDN. The full operator panel is a later issue.
Runs on the gateway's event loop; reads only in-memory state and cheap store counters. The same app serves
``/metrics`` (Prometheus text format, :mod:`gateway.metrics`, docs/metrics.md) and ``/healthz``.
"""

from __future__ import annotations

import asyncio
import html
import math
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from gateway.model import describe_quality, validity

if TYPE_CHECKING:
    from gateway.app import Gateway

_CSS = """
body{font-family:system-ui,sans-serif;margin:1rem 2rem;color:#1d2733;background:#f6f8fa}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.2rem 0 .4rem}
table{border-collapse:collapse;background:#fff;font-size:.9rem;min-width:40rem}
th,td{padding:.25rem .6rem;border-bottom:1px solid #e3e8ee;text-align:left}
th{background:#eef2f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#0a7d32;font-weight:600}.bad{color:#b42318;font-weight:600}.warn{color:#a15c00;font-weight:600}
.muted{color:#667085}.grid{display:flex;gap:2rem;flex-wrap:wrap}
"""


def _fmt_age(now_ns: int, ts_ns: int) -> str:
    if ts_ns <= 0:
        return "never"
    s = (now_ns - ts_ns) / 1e9
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _fmt_value(v: float) -> str:
    if v != v:  # NaN
        return "—"
    return f"{v:.6g}" if abs(v) < 1e6 else f"{v:.4e}"


def point_rows(gw: Gateway) -> list[dict[str, Any]]:
    latest = gw.latest
    if latest is None:
        return []
    now = gw.wall_ns()
    rows = []
    for p in gw.points:
        i = gw.point_ids[p.name]
        q = int(latest.quality[i])
        ts = int(latest.ts[i])
        rows.append(
            {
                "point": p.name,
                "value": None if ts == 0 or math.isnan(latest.value[i]) else float(latest.value[i]),
                "unit": p.unit,
                "quality": q,
                "quality_text": describe_quality(q) if ts else "no data",
                "validity": validity(q) if ts else "none",
                "ts_ns": ts,
                "age_s": (now - ts) / 1e9 if ts else None,
            }
        )
    return rows


def _state_class(state: str) -> str:
    return {"ok": "ok", "starting": "warn", "backoff": "bad", "disconnected": "bad"}.get(state, "warn")


_PROTOCOL_NAMES = {"modbus_tcp": "Modbus TCP", "modbus_rtu": "Modbus RTU", "dnp3_tcp": "DNP3", "iec61850": "IEC 61850",
                   "mqtt": "MQTT"}


def render_html(gw: Gateway, status: dict[str, Any], points: list[dict[str, Any]]) -> str:
    e = html.escape
    now = int(status["now_ns"])
    dev_rows = "".join(
        f"<tr><td>{e(str(d.get('device', '')))}</td><td>{e(str(d.get('link', '')))}</td>"
        f"<td>{e(_PROTOCOL_NAMES.get(str((d.get('protocol') or {}).get('name', '')), ''))}</td>"
        f"<td class='{_state_class(str(d.get('state', '')))}'>{e(str(d.get('state', '')))}</td>"
        f"<td>{_fmt_age(now, int(d.get('last_good_ns') or 0))}</td>"
        f"<td class='num'>{d.get('polls', 0)}</td><td class='num'>{d.get('errors', 0)}</td>"
        f"<td class='num'>{d.get('reconnects', 0)}</td></tr>"
        for d in status["devices"]
    )
    sink_rows = "".join(
        f"<tr><td>{e(str(s.get('sink', s.get('name', ''))))}</td>"
        f"<td class='{'ok' if s.get('state') in ('ok', 'idle') else 'bad'}'>{e(str(s.get('state', '')))}</td>"
        f"<td class='num'>{s.get('backlog', 0)}</td><td class='num'>{_fmt_bytes(int(s.get('backlog_bytes') or 0))}</td>"
        f"<td>{_fmt_age(now, int(s.get('oldest_ts') or 0)) if s.get('backlog') else '—'}</td>"
        f"<td>{_fmt_age(now, int(s.get('last_ack_wall_ns') or 0))}</td>"
        f"<td class='muted'>{e(str(s.get('last_error') or ''))}</td></tr>"
        for s in status["sinks"]
    )
    pt_rows = "".join(
        f"<tr><td>{e(p['point'])}</td><td class='num'>{_fmt_value(p['value']) if p['value'] is not None else '—'}</td>"
        f"<td>{e(p['unit'])}</td>"
        f"<td class='{'ok' if p['validity'] == 'good' else 'bad' if p['validity'] == 'invalid' else 'warn'}'>"
        f"{e(p['quality_text'])}</td><td>{_fmt_age(now, p['ts_ns'])}</td></tr>"
        for p in points
    )
    st = status["store"]
    disk_class = "bad" if st.get("disk_full") or st.get("over_budget") else "muted"
    prot_html = _protection_html(status.get("protection"), now)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="2"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{e(status["gateway_id"])} — gateway status</title><style>{_CSS}</style></head><body>
<h1>Gateway {e(status["gateway_id"])}</h1>
<p class="muted">up {_fmt_age(now, int(status["started_ns"]))} · store: {st.get("rows", 0)} readings,
{st.get("queued_rows", 0)} queued · this page refreshes every 2 s · JSON: <a href="?format=json">?format=json</a></p>
<div class="grid"><div><h2>Devices</h2><table><tr><th>device</th><th>link</th><th>protocol</th><th>comm</th>
<th>last good poll</th><th>polls</th><th>errors</th><th>reconnects</th></tr>{dev_rows}</table></div>
<div><h2>Cloud sync</h2><table><tr><th>sink</th><th>state</th><th>backlog (rows)</th><th>backlog (bytes)</th>
<th>oldest unsent</th><th>last ack</th><th>last error</th></tr>{sink_rows}</table>
<p class="{disk_class}">disk: {_fmt_bytes(int(st.get("used_bytes", 0)))}
of {_fmt_bytes(int(st.get("disk_budget_bytes", 0)))} budget{' · DISK FULL' if st.get('disk_full') else ''}
· downsampled {st.get("downsampled_rows", 0)} · evicted {st.get("evicted_rows", 0)} readings,
{st.get("evicted_events", 0)} events · gap records {st.get("gap_records", 0)}</p></div></div>
{prot_html}
{_quarantine_html(status.get("quarantine"), now)}
<h2>Latest values</h2><table><tr><th>point</th><th>value</th><th>unit</th><th>quality</th><th>age</th></tr>
{pt_rows}</table></body></html>"""


def _protection_html(p: dict[str, Any] | None, now: int) -> str:
    """The protection section: process state, elements, cycle figures, outputs, last trips and fault records."""
    if p is None:
        return ""
    e = html.escape
    state = str(p.get("state", ""))
    cls = "ok" if state == "running" else "bad"
    cyc = p.get("cycle") or {}
    figures = (
        f"{cyc.get('cycles', 0)} cycles · {cyc.get('overruns', 0)} overruns · lateness p99 "
        f"{cyc.get('lateness_p99_us')} µs, p99.9 {cyc.get('lateness_p999_us')} µs · max exec "
        f"{cyc.get('max_exec_us')} µs · SCHED_FIFO {'yes' if cyc.get('sched_fifo') else 'no'} · CPU {cyc.get('cpu')}"
        if cyc else ""
    )
    el_rows = "".join(
        f"<tr><td>{e(x['name'])}</td><td>{e(x['type'])}</td><td class='num'>{x['group']}</td>"
        f"<td class='{'bad' if x['tripped'] else 'warn' if x['picked_up'] or x['blocked'] else 'ok'}'>"
        f"{'TRIPPED' if x['tripped'] else 'picked up' if x['picked_up'] else 'blocked' if x['blocked'] else 'armed'}"
        f"</td></tr>"
        for x in p.get("elements", [])
        if x["group"] == cyc.get("active_group", x["group"])
    )
    trips = "".join(
        f"<li>{e(t['element'])} ({e(t['type'])}) {e(t['phases'])} — {_fmt_age(now, int(t['utc_ns']))} ago</li>"
        for t in p.get("last_trips", [])[:5]
    )
    outs = "".join(
        f"<li>{e(o['name'])}: link {e(str(o.get('link')))}; {e(str(o.get('last') or 'no command yet'))}</li>"
        for o in p.get("outputs", [])
    )
    records = "".join(f"<li>{e(r)}</li>" for r in p.get("records", [])[:5])
    err = f"<p class='bad'>{e(str(p.get('last_error')))}</p>" if p.get("last_error") else ""
    return f"""<h2>Protection <span class="{cls}">{e(state)}</span></h2>{err}
<p class="muted">{e(figures)} · restarts {p.get("restarts", 0)}</p>
<div class="grid"><div><table><tr><th>element</th><th>type</th><th>group</th><th>state</th></tr>{el_rows}</table></div>
<div><h3>Last trips</h3><ul>{trips or "<li>none</li>"}</ul><h3>Trip outputs</h3><ul>{outs or "<li>none</li>"}</ul>
<h3>Fault records</h3><ul>{records or "<li>none</li>"}</ul></div></div>"""


QUARANTINE_RECENT = 10  # last quarantine records shown


async def quarantine_status(gw: Gateway, status: dict[str, Any]) -> dict[str, Any] | None:
    """Quarantined sensor records (MQTT links): counts per reason since start (the drivers' counters), the
    total kept in the store and its last few records (read in a worker thread). None without mqtt links."""
    links: dict[str, dict[str, Any]] = {}
    for d in status["devices"]:
        proto = d.get("protocol") or {}
        if proto.get("name") == "mqtt":
            links.setdefault(str(d.get("link")), proto)
    if not links:
        return None
    counts: dict[str, int] = {}
    for proto in links.values():
        for reason, n in (proto.get("quarantine") or {}).items():
            counts[reason] = counts.get(reason, 0) + int(n)
    recent: list[dict[str, Any]] = []
    store = gw.store
    if store is not None:
        last = int(store.stats().get("last_quarantine_seq", 0))
        if last:
            tbl = await asyncio.to_thread(store.quarantine_after, max(0, last - QUARANTINE_RECENT), QUARANTINE_RECENT)
            for row in reversed(tbl.to_pylist()):
                payload = bytes(row.pop("payload"))
                row["payload"] = payload[:200].decode("utf-8", errors="replace")
                row["payload_bytes"] = len(payload)
                recent.append(row)
    stored = int(store.stats().get("quarantined", 0)) if store is not None else 0
    return {"counts": dict(sorted(counts.items())), "stored": stored, "recent": recent}


def _quarantine_html(qs: dict[str, Any] | None, now: int) -> str:
    if qs is None:
        return ""
    e = html.escape
    counts = "".join(f"<tr><td>{e(r)}</td><td class='num'>{n}</td></tr>" for r, n in qs["counts"].items())
    recent = "".join(
        f"<tr><td>{_fmt_age(now, int(r['ts']))}</td><td>{e(r['device'])}</td><td>{e(r['topic'])}</td>"
        f"<td>{e(r['reason'])}</td><td class='muted'>{e(r['detail'])}</td>"
        f"<td><code>{e(r['payload'][:80])}</code></td></tr>"
        for r in qs["recent"]
    )
    return f"""<h2>Quarantine</h2><p class="muted">sensor records refused by validation, kept with their raw payload
(store table <code>quarantine</code>): {qs["stored"]} stored</p>
<div class="grid"><div><table><tr><th>reason</th><th>count</th></tr>
{counts or "<tr><td>none</td><td></td></tr>"}</table></div>
<div><table><tr><th>age</th><th>device</th><th>topic</th><th>reason</th><th>detail</th><th>payload</th></tr>
{recent}</table></div></div>"""


def _json_safe(obj: Any) -> Any:
    """Replace NaN/inf floats (not valid JSON) with None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def build_status_app(gw: Gateway) -> Starlette:
    async def index(request: Request) -> Response:
        status = gw.status()
        status["quarantine"] = await quarantine_status(gw, status)
        points = point_rows(gw)
        wants_json = (
            request.url.path.startswith("/api/")
            or request.query_params.get("format") == "json"
            or "application/json" in request.headers.get("accept", "")
        )
        if wants_json:
            return JSONResponse(_json_safe({**status, "points": points}))
        return HTMLResponse(render_html(gw, status, points))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "gateway_id": gw.cfg.id})

    async def metrics(request: Request) -> Response:
        """Prometheus text exposition (docs/metrics.md); in-memory state only, like the JSON status."""
        from gateway.metrics import CONTENT_TYPE, render_metrics

        return Response(render_metrics(gw), headers={"Content-Type": CONTENT_TYPE})

    return Starlette(
        routes=[Route("/", index), Route("/api/status", index), Route("/healthz", healthz), Route("/metrics", metrics)]
    )

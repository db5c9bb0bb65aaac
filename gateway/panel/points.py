"""Points page (``/points``): every point's latest value, unit, decoded quality, age and source timestamp.

The HTML is a shell; ``points.js`` fetches the whole table once as compact columnar JSON (``?format=json``, one
array per column) and renders a virtualised table (only the visible rows are in the DOM), filtered in the browser
by a search box (name / device / unit substring) and by quality; live values from the stream's ``values`` events
update the arrays. Built from the gateway's numpy latest-value arrays, with one ``describe_quality`` call per
distinct quality code (there are few), so 10,000 points answer in a few tens of milliseconds.

JSON (``GET /points?format=json``, ``/api/points``; optional ``?device=NAME`` keeps one device's points)::

    {"now_ns": ..., "count": N, "ids": [...], "names": [...], "devices": [...], "points": [...], "units": [...],
     "value": [... null where none ...], "quality": [...], "quality_text": [...], "validity": [...],
     "ts_us": [... UTC epoch µs of the source timestamp, 0 = no data ...],
     "quality_bits": [[bit, name], ...]}

``ts_us`` is in microseconds so that it is exact as a JavaScript number (epoch ns is not).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
from starlette.responses import Response

from gateway.model import _DETAIL_NAMES, describe_quality, validity
from gateway.panel.context import PanelContext
from gateway.panel.layout import esc, render_page
from gateway.panel.routing import Call, PanelRoute

if TYPE_CHECKING:
    from gateway.app import Gateway

NO_DATA = "no data"

_quality_text: dict[int, str] = {}  # quality code -> describe_quality (few distinct codes; bounded below)
_QUALITY_CACHE_MAX = 4096


def quality_text(q: int, ts: int = 1) -> str:
    """``describe_quality`` cached per code; ``"no data"`` for a point that never had a reading (``ts`` 0)."""
    if not ts:
        return NO_DATA
    t = _quality_text.get(q)
    if t is None:
        t = describe_quality(q)
        if len(_quality_text) < _QUALITY_CACHE_MAX:
            _quality_text[q] = t
    return t


def validity_of(q: int, ts: int = 1) -> str:
    """good / questionable / invalid, or ``none`` (no data yet)."""
    return validity(q) if ts else "none"


def validity_class(v: str) -> str:
    """CSS class for a validity: ok (good), warn (questionable, no data), bad (invalid)."""
    return {"good": "ok", "invalid": "bad"}.get(v, "warn")


QUALITY_BITS: list[list[Any]] = [[int(bit), name] for bit, name in _DETAIL_NAMES]


def point_order(gw: Gateway, device: str | None = None) -> list[int]:
    """Indices into ``gw.points`` (config order), optionally one device's."""
    return [i for i, p in enumerate(gw.points) if device is None or p.device == device]


def columns(gw: Gateway, device: str | None = None) -> dict[str, Any]:
    """The columnar table of the latest values (all points, or one device's)."""
    infos = [gw.points[i] for i in point_order(gw, device)]
    ids = np.fromiter((gw.point_ids[p.name] for p in infos), dtype=np.int64, count=len(infos))
    latest = gw.latest
    now = gw.wall_ns()
    if latest is None or ids.size == 0:
        ts = np.zeros(ids.size, dtype=np.int64)
        val = np.full(ids.size, np.nan)
        qual = np.zeros(ids.size, dtype=np.uint16)
    else:
        ts = latest.ts[ids]
        val = latest.value[ids]
        qual = latest.quality[ids]
    ts_list = ts.tolist()
    q_list = qual.tolist()
    values: list[float | None] = val.tolist()
    missing = np.isnan(val) | (ts == 0)
    if missing.any():
        for i in np.flatnonzero(missing).tolist():
            values[i] = None
    return {
        "now_ns": now,
        "count": len(infos),
        "ids": ids.tolist(),
        "names": [p.name for p in infos],
        "devices": [p.device for p in infos],
        "points": [p.point for p in infos],
        "units": [p.unit for p in infos],
        "value": values,
        "quality": q_list,
        "quality_text": [quality_text(q, t) for q, t in zip(q_list, ts_list, strict=True)],
        "validity": [validity_of(q, t) for q, t in zip(q_list, ts_list, strict=True)],
        "ts_us": (ts // 1000).tolist(),
        "quality_bits": QUALITY_BITS,
    }


def json_response(obj: dict[str, Any], status: int = 200) -> Response:
    """JSON without the recursive NaN scrub of ``Call.json`` (the columns are already JSON-safe): fast for 10k rows."""
    body = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()
    return Response(body, status_code=status, media_type="application/json")


FILTERS: Sequence[tuple[str, str]] = (
    ("", "any quality"),
    ("good", "good"),
    ("questionable", "questionable"),
    ("invalid", "invalid"),
    ("none", "no data"),
)


# the virtualised table: fixed row height (ROW_H in points.js), the same column grid for header and rows
_TABLE_STYLE = """<style>
.vt{border:1px solid var(--line);border-radius:6px;background:var(--card);font-size:.9rem}
.vt-head,.vt-row{display:grid;grid-template-columns:minmax(9rem,1.6fr) minmax(7rem,1fr) 7.5rem 4.5rem
 minmax(10rem,1.6fr) 5.5rem 17rem;align-items:center}
.vt-head{background:#eef2f6;font-weight:600;border-bottom:1px solid var(--line)}
.vt-head>span,.vt-row>span{padding:0 .55rem;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.vt-head>span{padding-top:.3rem;padding-bottom:.3rem;cursor:pointer;user-select:none}
.vt-head>span[aria-sort=ascending]::after{content:" ▲"}.vt-head>span[aria-sort=descending]::after{content:" ▼"}
.vt-scroll{position:relative;overflow:auto;max-height:70vh;min-height:5.3rem}
.vt-spacer{width:1px}
.vt-rows{position:absolute;top:0;left:0;right:0;will-change:transform}
.vt-row{height:28px;border-bottom:1px solid var(--line)}
.vt-row:hover{background:#f5f8fb}
.vt-row>span.num,.vt-head>span.num{text-align:right;font-variant-numeric:tabular-nums}
.vt-empty{padding:.6rem}
</style>"""


COLUMNS: Sequence[tuple[str, str, str]] = (  # (sort key in points.js, header, CSS class)
    ("point", "point", ""),
    ("device", "device", ""),
    ("value", "value", "num"),
    ("unit", "unit", ""),
    ("quality", "quality", ""),
    ("age", "age", "num"),
    ("ts", "source timestamp", ""),
)


def _head() -> str:
    return "".join(
        f"<span role='columnheader' class='{cls}' data-sort='{key}' tabindex='0' aria-sort='none' "
        f"title='sort by {label}'>{esc(label)}</span>"
        for key, label, cls in COLUMNS
    )


def table_shell(source: str, *, device: str = "", title: str = "") -> str:
    """The virtualised table's frame (toolbar, header, scroller); ``points.js`` fills it from ``source``."""
    opts = "".join(f"<option value='{esc(v)}'>{esc(label)}</option>" for v, label in FILTERS)
    heading = f"<h2>{esc(title)}</h2>" if title else ""
    return _TABLE_STYLE + f"""<section class="card" id="points-card" data-source="{esc(source)}"
data-device="{esc(device)}">{heading}<div class="toolbar">
<input type="search" id="pt-search" placeholder="Filter by name, device or unit"
aria-label="Filter points by name, device or unit" size="32" autocomplete="off">
<select id="pt-quality" aria-label="Filter by quality">{opts}</select>
<span class="muted" id="pt-count">loading…</span></div>
<div class="vt" id="pt-table" role="table" aria-label="points">
<div class="vt-head" role="row">{_head()}</div>
<div class="vt-scroll" id="pt-scroll" tabindex="0"><div class="vt-spacer" id="pt-spacer"></div>
<div class="vt-rows" id="pt-rows" role="rowgroup"></div></div></div>
<noscript><p>This table needs JavaScript; the same data as JSON:
<a href="{esc(source)}">{esc(source)}</a>.</p></noscript></section>"""


async def points_page(call: Call) -> Response:
    gw = call.ctx.gw
    device = call.request.query_params.get("device") or None
    if device is not None and not any(p.device == device for p in gw.points):
        return call.error(404, f"no device named {device!r} in this gateway's configuration")
    if call.wants_json():
        return json_response(columns(gw, device))
    src = "/points?format=json" + (f"&device={quote(device, safe='')}" if device else "")
    body = table_shell(src, device=device or "")
    return render_page(call, "Points", body, data={"source": src, "count": len(point_order(gw, device))},
                       scripts=["points.js"])


def routes(ctx: PanelContext) -> list[PanelRoute]:
    return [PanelRoute("/points", points_page, action="points.read")]

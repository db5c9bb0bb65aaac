"""Status data the panel shows and ``/api/status`` returns: latest values with decoded quality and age, the
quarantine summary of sensor links (and its HTML table). The pages themselves are in :mod:`gateway.panel`.

Runs on the gateway's event loop; reads only in-memory state and cheap store counters (store reads in a thread).
"""

from __future__ import annotations

import asyncio
import html
import math
from typing import TYPE_CHECKING, Any

from gateway.model import describe_quality, validity

if TYPE_CHECKING:
    from gateway.app import Gateway

def _fmt_age(now_ns: int, ts_ns: int) -> str:
    if ts_ns <= 0:
        return "never"
    s = (now_ns - ts_ns) / 1e9
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


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


def quarantine_html(qs: dict[str, Any] | None, now: int) -> str:
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

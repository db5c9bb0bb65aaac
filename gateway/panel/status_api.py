"""``GET /api/status``: the whole gateway status as one JSON document for tools (viewer role or an API token).

The same data the pages show, in the shape the earlier status page served (devices, sinks, store, protection,
analytics, quarantine, latest values), so scripts and HIL rigs keep working.
"""

from __future__ import annotations

from starlette.responses import Response

from gateway.panel.context import PanelContext
from gateway.panel.routing import Call, PanelRoute
from gateway.status_page import point_rows, quarantine_status


async def status(call: Call) -> Response:
    gw = call.ctx.gw
    st = gw.status()
    st["quarantine"] = await quarantine_status(gw, st)
    return call.json({**st, "points": point_rows(gw)})


def routes(ctx: PanelContext) -> list[PanelRoute]:
    return [PanelRoute("/api/status", status, action="status.read")]

"""The panel's page frame: header with the gateway id, navigation (only the pages the role may open), the user
menu with logout, a live-connection indicator and the active-alarm badge (both updated by ``panel.js`` from the
live stream), then the page body.

No inline scripts (the Content-Security-Policy forbids them): pages pass data to their script in a
``<script type="application/json" id="page-data">`` block and name their script files under ``/static``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from starlette.responses import HTMLResponse

from gateway.panel.roles import Role

if TYPE_CHECKING:
    from gateway.panel.routing import Call

# (path, label, least role): the navigation bar, in order.
NAV: tuple[tuple[str, str, Role], ...] = (
    ("/", "Overview", Role.VIEWER),
    ("/devices", "Devices", Role.VIEWER),
    ("/points", "Points", Role.VIEWER),
    ("/trends", "Trends", Role.VIEWER),
    ("/alarms", "Alarms & SOE", Role.VIEWER),
    ("/protection", "Protection", Role.VIEWER),
    ("/controls", "Controls", Role.VIEWER),
    ("/admin", "Users & audit", Role.ADMIN),
)

ASSET_VERSION = "1"  # bump to make browsers fetch changed static files


def esc(s: object) -> str:
    return html.escape(str(s))


def _nav(path: str, role: Role) -> str:
    items = []
    for href, label, least in NAV:
        if role < least:
            continue
        active = path == href or (href != "/" and path.startswith(href + "/"))
        items.append(f"<a href='{href}'{' class=active aria-current=page' if active else ''}>{esc(label)}</a>")
    return "".join(items)


def render_page(
    call: Call,
    title: str,
    body: str,
    *,
    data: Any = None,
    scripts: Sequence[str] = (),
    status: int = 200,
) -> HTMLResponse:
    """A full page for ``call``'s user. ``body`` is trusted HTML (escape what you put in it); ``data`` is passed to
    the page's scripts as JSON; ``scripts`` are file names under /static loaded after ``panel.js``."""
    from gateway.panel.routing import json_safe

    gw_id = call.ctx.gw.cfg.id
    csrf = call.session.csrf if call.session is not None else ""
    page_data = (
        "<script type='application/json' id='page-data'>"
        + json.dumps(json_safe(data)).replace("<", "\\u003c")
        + "</script>"
        if data is not None
        else ""
    )
    tags = "".join(f"<script src='/static/{esc(s)}?v={ASSET_VERSION}' defer></script>" for s in ("panel.js", *scripts))
    logout = (
        "<form method='post' action='/logout' class='inline'>"
        f"<input type='hidden' name='csrf_token' value='{esc(csrf)}'><button class='link'>Log out</button></form>"
        if call.session is not None
        else ""
    )
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><meta name="csrf-token" content="{esc(csrf)}">
<meta name="user-role" content="{esc(call.role.label)}">
<title>{esc(title)} — {esc(gw_id)}</title><link rel="stylesheet" href="/static/panel.css?v={ASSET_VERSION}">
<link rel="icon" href="data:,">{tags}</head><body>
<header class="top"><div class="brand"><span class="live" id="live-dot" title="live updates"></span>
<strong>{esc(gw_id)}</strong></div><nav>{_nav(call.request.url.path, call.role)}</nav>
<div class="who"><a href="/alarms" class="badge" id="alarm-badge" title="unacknowledged alarms" hidden>0</a>
<span>{esc(call.user)} <span class="muted">({esc(call.role.label)})</span></span>{logout}</div></header>
<main><h1>{esc(title)}</h1>{body}</main>{page_data}</body></html>"""
    return HTMLResponse(doc, status_code=status)


def render_bare(title: str, body: str, *, status: int = 200) -> HTMLResponse:
    """A page without navigation (login, first-admin setup)."""
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(title)}</title>
<link rel="stylesheet" href="/static/panel.css?v={ASSET_VERSION}"><link rel="icon" href="data:,"></head>
<body class="bare"><main class="narrow">{body}</main></body></html>"""
    return HTMLResponse(doc, status_code=status)

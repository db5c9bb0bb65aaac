"""The operator panel: one Starlette app on the gateway's event loop (docs/panel.md).

Public: ``/login``, ``/logout``, ``/setup`` (first admin, one-time token), ``/static/*``, ``/healthz`` and
``/metrics`` (Prometheus; no secrets in it). Everything else is a :class:`~gateway.panel.routing.PanelRoute`
behind the guard (session or API token, role, CSRF) — see :func:`panel_routes` for the full list with roles.
Every response carries security headers (a strict Content-Security-Policy: no inline scripts, no other origins).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.panel import (
    admin,
    alarms,
    auth_views,
    controls,
    devices,
    live,
    overview,
    points,
    protection,
    status_api,
    trends,
)
from gateway.panel.context import PanelContext
from gateway.panel.routing import PanelRoute, starlette_routes
from gateway.panel.sessions import SessionManager
from gateway.panel.users import UserStore

if TYPE_CHECKING:
    from gateway.app import Gateway

STATIC_DIR = Path(__file__).with_name("static")
PAGE_MODULES = (overview, devices, points, trends, alarms, protection, controls, admin, live, status_api)

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)


class SecurityHeaders:
    """Pure ASGI middleware (does not buffer, so server-sent events stream): adds security headers."""

    def __init__(self, app: ASGIApp, tls: bool) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", _CSP.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),  # no-referrer would make browsers send Origin: null
            (b"x-frame-options", b"DENY"),
        ]
        if tls:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in self.headers if k not in names]
                if not static and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def panel_routes(ctx: PanelContext) -> list[PanelRoute]:
    """Every guarded route of the panel, with its least role (the permission matrix's rows)."""
    out: list[PanelRoute] = []
    for mod in PAGE_MODULES:
        out.extend(mod.routes(ctx))
    return out


def users_path(data_dir: Path) -> Path:
    return data_dir / "panel" / "users.json"


def build_panel_context(gw: Gateway, *, users: UserStore | None = None, sessions: SessionManager | None = None,
                        tls: bool | None = None) -> PanelContext:
    cfg = gw.cfg.panel
    users = users if users is not None else UserStore(users_path(gw.cfg.data_dir))
    if sessions is None:
        sessions = SessionManager(users, idle_s=cfg.session_idle_min * 60.0, max_s=cfg.session_max_h * 3600.0)
    return PanelContext(gw=gw, cfg=cfg, users=users, sessions=sessions, tls=cfg.tls if tls is None else tls,
                        wall_ns=gw.wall_ns)


def build_panel_app(gw: Gateway, ctx: PanelContext | None = None) -> Starlette:
    ctx = ctx if ctx is not None else build_panel_context(gw)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "gateway_id": gw.cfg.id, "ready": gw.ready()})

    async def metrics(request: Request) -> Response:
        """Prometheus text exposition (docs/metrics.md); in-memory state only."""
        from gateway.metrics import CONTENT_TYPE, render_metrics

        return Response(render_metrics(gw), headers={"Content-Type": CONTENT_TYPE})

    routes: list[Any] = [
        *auth_views.routes(ctx),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        *starlette_routes(panel_routes(ctx), ctx),
    ]
    app = Starlette(routes=routes)
    app.state.panel = ctx
    app.add_middleware(SecurityHeaders, tls=ctx.tls)
    return app

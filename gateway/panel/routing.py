"""Panel routes with their permission, and the guard every request goes through.

Every handler is declared as a :class:`PanelRoute` with the least :class:`Role` that may call it and an action
name (the permission matrix in the tests iterates over :data:`all routes <gateway.panel.app.panel_routes>`).
The guard, for every request, in order:

1. **authenticates**: the session cookie (a browser) or ``Authorization: Bearer <api token>`` (a tool; tokens are
   minted by ``gateway user token``). None → 401 JSON, or a redirect to ``/login`` for a page.
2. **authorises**: the caller's role must be at least the route's. Refused → 403; a refused state change is an
   audit event (``denied``).
3. **checks CSRF** on every state change (any method but GET/HEAD) made with a session cookie: the
   ``X-CSRF-Token`` header or the ``csrf_token`` form field must equal the session's token, and an ``Origin``
   header, when sent, must be this server. Bearer-token calls carry no cookie, so they need no CSRF token.

Handlers receive a :class:`Call`: the request, the context, who is calling, and helpers that render the same data
as HTML (people) or JSON (tools): ``?format=json``, ``Accept: application/json`` or an ``/api/...`` path gives JSON.
Every GET page route is also served under ``/api<path>`` (always JSON).
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from gateway.panel.context import PanelContext
from gateway.panel.roles import Role
from gateway.panel.sessions import Session

SAFE_METHODS = frozenset({"GET", "HEAD"})


def cookie_name(tls: bool) -> str:
    """The session cookie's name: ``__Host-`` prefixed over HTTPS (browsers then insist on Secure, Path=/)."""
    return "__Host-gw_session" if tls else "gw_session"


def json_safe(obj: Any) -> Any:
    """Replace NaN/inf floats (not valid JSON) with None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


@dataclass(slots=True)
class Call:
    """One authorised request to a panel handler."""

    request: Request
    ctx: PanelContext
    user: str
    role: Role
    session: Session | None  # None for bearer-token calls
    _form: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def client(self) -> str:
        return self.request.client.host if self.request.client else ""

    def wants_json(self) -> bool:
        r = self.request
        return (
            r.url.path.startswith("/api/")
            or r.query_params.get("format") == "json"
            or "application/json" in r.headers.get("accept", "")
        )

    def can(self, role: Role) -> bool:
        return self.role >= role

    async def body(self) -> dict[str, Any]:
        """The request's fields: a JSON object body, or form fields (url-encoded or multipart). {} when empty."""
        if self._form is None:
            ctype = self.request.headers.get("content-type", "")
            if ctype.startswith("application/json"):
                raw = await self.request.body()
                try:
                    data = json.loads(raw) if raw else {}
                except ValueError:
                    data = None
                self._form = data if isinstance(data, dict) else {}
            else:
                form = await self.request.form()
                self._form = {k: v for k, v in form.items()}
        return self._form

    def json(self, obj: Any, status: int = 200) -> JSONResponse:
        return JSONResponse(json_safe(obj), status_code=status)

    def error(self, status: int, message: str, **extra: Any) -> Response:
        """A refusal the caller can read: JSON ``{"error": message}`` or a small HTML page."""
        if self.wants_json() or self.request.method not in SAFE_METHODS:
            return JSONResponse({"error": message, **json_safe(extra)}, status_code=status)
        from gateway.panel.layout import render_page

        body = f"<section class='card'><h2>{status}</h2><p class='bad'>{_esc(message)}</p></section>"
        return render_page(self, f"Error {status}", body, status=status)

    async def audit(self, action: str, message: str, **data: Any) -> None:
        await self.ctx.audit(self.user, action, message, client=self.client, **data)


def _esc(s: str) -> str:
    import html

    return html.escape(s)


Endpoint = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class PanelRoute:
    path: str  # Starlette path, e.g. "/alarms" or "/api/alarms/{seq:int}/ack"
    endpoint: Endpoint
    methods: tuple[str, ...] = ("GET",)
    role: Role = Role.VIEWER  # least role allowed
    action: str = ""  # permission-matrix name, e.g. "alarms.ack" ("" = "<METHOD> <path>")
    api_twin: bool = True  # GET routes: also serve under /api<path> (JSON)

    @property
    def name(self) -> str:
        return self.action or f"{self.methods[0]} {self.path}"


def authenticate(request: Request, ctx: PanelContext) -> tuple[str, Role, Session | None] | None:
    """Who is calling: a live session (cookie) or a valid API token (bearer). None: nobody."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        user = ctx.users.verify_api_token(auth[7:].strip())
        return (user.name, user.role, None) if user is not None else None
    sid = request.cookies.get(cookie_name(ctx.tls))
    if not sid:
        return None
    sess = ctx.sessions.get(sid)
    if sess is None:
        return None
    return sess.user, sess.role, sess


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:  # not sent (older browsers, same-origin GET-style form posts, tools)
        return True
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host


async def _csrf_ok(request: Request, sess: Session) -> bool:
    if not _same_origin(request):
        return False
    token = request.headers.get("x-csrf-token", "")
    if not token:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            token = str(form.get("csrf_token", ""))
    return bool(token) and hmac.compare_digest(token, sess.csrf)


def guard(
    route: PanelRoute, ctx: PanelContext, *, force_json: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint for ``route``: authenticate, authorise, check CSRF, then call the handler."""

    async def endpoint(request: Request) -> Response:
        who = authenticate(request, ctx)
        wants_json = force_json or request.url.path.startswith("/api/") or request.query_params.get(
            "format") == "json" or "application/json" in request.headers.get("accept", "")
        if who is None:
            if wants_json or request.method not in SAFE_METHODS:
                return JSONResponse({"error": "login required"}, status_code=401)
            nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(nxt)}", status_code=303)
        user, role, sess = who
        call = Call(request, ctx, user, role, sess)
        if role < route.role:
            if request.method not in SAFE_METHODS:
                await call.audit("denied", f"{role.label} may not {route.name} (needs {route.role.label})",
                                 path=request.url.path)
            return call.error(403, f"{route.name} needs the {route.role.label} role; you are {role.label}")
        if request.method not in SAFE_METHODS and sess is not None and not await _csrf_ok(request, sess):
            return call.error(403, "CSRF check failed: reload the page and try again")
        return await route.endpoint(call)

    return endpoint


def starlette_routes(routes: Sequence[PanelRoute], ctx: PanelContext) -> list[Any]:
    from starlette.routing import Route

    out: list[Any] = []
    for r in routes:
        out.append(Route(r.path, guard(r, ctx), methods=list(r.methods)))
        if r.api_twin and r.methods == ("GET",) and not r.path.startswith("/api/"):
            out.append(Route("/api" + (r.path if r.path != "/" else "/overview"), guard(r, ctx, force_json=True),
                             methods=["GET"]))
    return out

"""Public pages: log in, log out, and first-admin setup with a one-time token. Everything else needs a session.

Every login, failed login and logout is an audit event (priority 0). Failed logins back off per user name and per
client address (:class:`gateway.panel.sessions.SessionManager`); a locked account answers 429 with the wait.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gateway.panel.context import PanelContext
from gateway.panel.layout import esc, render_bare
from gateway.panel.routing import _same_origin, cookie_name
from gateway.panel.sessions import Session
from gateway.panel.users import UserError


def _safe_next(nxt: str) -> str:
    """Only a local path may follow a login (no open redirect to another site)."""
    parts = urlsplit(nxt)
    if parts.scheme or parts.netloc or not nxt.startswith("/") or nxt.startswith("//"):
        return "/"
    return nxt


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


def _login_form(ctx: PanelContext, message: str = "", name: str = "", nxt: str = "/") -> str:
    gw_id = esc(ctx.gw.cfg.id)
    msg = f"<p class='bad' role='alert'>{esc(message)}</p>" if message else ""
    setup = (
        "<p class='muted'>No administrator yet: run <code>gateway user setup-token -c CONFIG</code> on the gateway "
        "and open the link it prints.</p>"
        if not ctx.users.has_admin()
        else ""
    )
    return f"""<section class="card login"><h1>{gw_id}</h1><p class="muted">Substation gateway — sign in</p>{msg}
<form method="post" action="/login"><input type="hidden" name="next" value="{esc(nxt)}">
<label>User <input name="username" autocomplete="username" value="{esc(name)}" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit" class="primary">Log in</button></form>{setup}</section>"""


def set_session_cookie(resp: Response, ctx: PanelContext, sess: Session) -> None:
    """A browser-session cookie (no Max-Age: the server ends sessions on idle and absolute timeouts)."""
    resp.set_cookie(cookie_name(ctx.tls), sess.id, httponly=True, secure=ctx.tls, samesite="strict", path="/")


def routes(ctx: PanelContext) -> list[Route]:
    async def login_page(request: Request) -> Response:
        nxt = _safe_next(request.query_params.get("next", "/"))
        return render_bare("Log in", _login_form(ctx, nxt=nxt))

    async def login(request: Request) -> Response:
        form = await request.form()
        name = str(form.get("username", "")).strip()
        password = str(form.get("password", ""))
        nxt = _safe_next(str(form.get("next", "/")))
        client = _client(request)
        if not _same_origin(request):
            return render_bare("Log in", _login_form(ctx, "request from another site refused", name, nxt), status=403)
        result = await ctx.sessions.login(name, password, client)
        if result.session is None:
            if result.reason == "locked":
                await ctx.audit(name, "login.locked", f"login refused while locked ({result.retry_after_s:.0f} s left)",
                                client=client)
                msg = f"Too many failed attempts. Try again in {max(1, round(result.retry_after_s))} s."
                return render_bare("Log in", _login_form(ctx, msg, name, nxt), status=429)
            await ctx.audit(name, "login.failed", f"failed login ({result.reason})", client=client)
            return render_bare("Log in", _login_form(ctx, "Wrong user name or password.", name, nxt), status=401)
        sess = result.session
        await ctx.audit(sess.user, "login", f"logged in as {sess.role.label}", client=client)
        resp = RedirectResponse(nxt, status_code=303)
        set_session_cookie(resp, ctx, sess)
        return resp

    async def logout(request: Request) -> Response:
        sid = request.cookies.get(cookie_name(ctx.tls), "")
        sess = ctx.sessions.get(sid) if sid else None
        if sess is not None:
            form = await request.form()
            import hmac

            if not hmac.compare_digest(str(form.get("csrf_token", "")), sess.csrf):
                return render_bare("Log out", "<p class='bad'>CSRF check failed: reload the page.</p>", status=403)
            ctx.sessions.logout(sid)
            await ctx.audit(sess.user, "logout", "logged out", client=_client(request))
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(cookie_name(ctx.tls), path="/", secure=ctx.tls, httponly=True, samesite="strict")
        return resp

    def _setup_form(token: str, message: str = "", name: str = "") -> str:
        msg = f"<p class='bad' role='alert'>{esc(message)}</p>" if message else ""
        return f"""<section class="card login"><h1>Create the first administrator</h1>{msg}
<p class="muted">This link works once. Choose a name and a password of at least 10 characters.</p>
<form method="post" action="/setup"><input type="hidden" name="token" value="{esc(token)}">
<label>User <input name="username" autocomplete="username" value="{esc(name)}" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="new-password" required></label>
<label>Repeat password <input name="password2" type="password" autocomplete="new-password" required></label>
<button type="submit" class="primary">Create administrator</button></form></section>"""

    async def setup_page(request: Request) -> Response:
        if ctx.users.has_admin():
            return render_bare("Setup", "<section class='card login'><p>An administrator exists already. "
                               "<a href='/login'>Log in</a>.</p></section>")
        return render_bare("Setup", _setup_form(request.query_params.get("token", "")))

    async def setup(request: Request) -> Response:
        form = await request.form()
        token = str(form.get("token", ""))
        name = str(form.get("username", "")).strip()
        pw, pw2 = str(form.get("password", "")), str(form.get("password2", ""))
        client = _client(request)
        if ctx.users.has_admin():
            return render_bare("Setup", "<p class='bad'>An administrator exists already.</p>", status=409)
        if pw != pw2:
            return render_bare("Setup", _setup_form(token, "The passwords differ.", name), status=400)
        if not ctx.users.check_setup_token(token):
            await ctx.audit(name, "setup.failed", "first-admin setup with an invalid or used token", client=client)
            return render_bare("Setup", _setup_form("", "This setup link is invalid, used or expired: run "
                                                    "`gateway user setup-token` again.", name), status=403)
        try:  # checks the token again, adds the admin and uses the token up, in one step
            await asyncio.to_thread(ctx.users.create_first_admin, token, name, pw)
        except UserError as e:
            return render_bare("Setup", _setup_form(token, str(e), name), status=400)
        await ctx.audit(name, "user.add", f"created the first administrator {name!r} with a setup token",
                        client=client, target=name, role="admin")
        result = await ctx.sessions.login(name, pw, client)
        resp = RedirectResponse("/", status_code=303)
        if result.session is not None:
            await ctx.audit(name, "login", "logged in as admin (first-admin setup)", client=client)
            set_session_cookie(resp, ctx, result.session)
        return resp

    return [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/setup", setup_page, methods=["GET"]),
        Route("/setup", setup, methods=["POST"]),
    ]

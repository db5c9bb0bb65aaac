"""Users & audit (admin only): the panel's accounts and the audit trail.

``GET /admin``: the users (name, role, created, disabled, API tokens, live sessions) with the actions below, and
the newest audit events; ``GET /admin/audit``: the audit log with filters and paging. JSON twins ``/api/admin``
and ``/api/admin/audit``.

Audit log: events of kind ``audit`` (logins, failed logins, logouts, refused requests, acknowledgements,
settings changes, user management) and ``control`` (every select/operate/cancel and its outcome), newest first.
Query parameters: ``user`` (substring of the user name, or a control's origin), ``action`` (prefix: ``login``,
``user.``, ``control.operate``, ...), ``from`` / ``to`` (ISO 8601, UTC unless an offset is given, or epoch ns),
``limit`` (1-1000, default 100) and ``before_seq`` (the next page: the ``next_before_seq`` of the last answer).

State changes (POST, JSON bodies), each an audit event (``user.add``, ``user.role``, ``user.password``,
``user.disable``, ``user.enable``, ``user.remove``, ``user.token``, ``user.tokens_revoke``; no password or token
is ever written to it):

- ``/api/admin/users`` ``{"name", "role", "password"}``: add a user;
- ``/api/admin/users/{name}/role`` ``{"role"}``: change the role (live sessions follow it);
- ``/api/admin/users/{name}/password`` ``{"password"}``: reset the password (the user's sessions end);
- ``/api/admin/users/{name}/disable`` / ``enable``: a disabled user cannot log in, their sessions end and their
  API tokens stop working;
- ``/api/admin/users/{name}/remove``: the user and their API tokens go, their sessions end;
- ``/api/admin/users/{name}/token``: a new API token for the user, returned once (``{"token"}``);
- ``/api/admin/users/{name}/revoke-tokens``: every API token of the user stops working.

The last enabled admin cannot be demoted, disabled or removed; nobody can disable or remove themself. Refusals
are HTTP 400 with ``{"error"}``.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.responses import Response

from gateway.panel.context import PanelContext
from gateway.panel.layout import esc, render_page
from gateway.panel.roles import Role
from gateway.panel.routing import Call, PanelRoute
from gateway.panel.users import User, UserError

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_NAME_IN_PATH = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class BadQuery(ValueError):
    pass


def _iso_us(ns: int) -> str:
    """UTC ``YYYY-MM-DD HH:MM:SS.ffffff`` (µs) of an epoch-ns time."""
    if not ns:
        return "—"
    dt = datetime.fromtimestamp(ns // 1_000_000_000, UTC)
    return f"{dt:%Y-%m-%d %H:%M:%S}.{(ns // 1000) % 1_000_000:06d}"


def _user_dict(ctx: PanelContext, u: User) -> dict[str, Any]:
    return {"name": u.name, "role": u.role.label, "created_ns": u.created_ns, "created": _iso_us(u.created_ns),
            "disabled": u.disabled, "api_tokens": ctx.users.api_token_count(u.name),
            "sessions": len(ctx.sessions.sessions_of(u.name))}


# -- audit log -----------------------------------------------------------------------------------------------


def _parse_time(text: str, name: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadQuery(f"{name}: expected an ISO 8601 time (UTC unless it has an offset) or epoch ns") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def _int_param(text: str, name: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise BadQuery(f"{name} must be an integer") from None


def _filters(call: Call) -> dict[str, Any]:
    q = call.request.query_params
    limit = _int_param(q.get("limit", ""), "limit")
    limit = DEFAULT_LIMIT if limit is None else limit
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit must be 1-{MAX_LIMIT}")
    return {"user": q.get("user", "").strip()[:64], "action": q.get("action", "").strip()[:64],
            "from": q.get("from", "").strip(), "to": q.get("to", "").strip(),
            "start_ns": _parse_time(q.get("from", ""), "from"), "end_ns": _parse_time(q.get("to", ""), "to"),
            "before_seq": _int_param(q.get("before_seq", ""), "before_seq"), "limit": limit}


def _event_row(r: dict[str, Any]) -> dict[str, Any]:
    try:
        data = json.loads(r["data"]) if r["data"] else {}
    except ValueError:
        data = {"raw": r["data"]}
    if not isinstance(data, dict):
        data = {"value": data}
    return {"seq": r["seq"], "ts_ns": r["ts"], "ts": _iso_us(int(r["ts"])), "kind": r["kind"], "user": r["user"],
            "action": r["action"], "device": r["device"], "point": r["point"], "message": r["message"],
            "client": data.get("client", ""), "data": data}


async def audit_query(ctx: PanelContext, f: dict[str, Any]) -> dict[str, Any]:
    store = ctx.gw.store
    rows: list[dict[str, Any]] = []
    if store is not None:
        raw = await asyncio.to_thread(store.audit_log, user=f["user"], action=f["action"], start_ns=f["start_ns"],
                                      end_ns=f["end_ns"], before_seq=f["before_seq"], limit=f["limit"] + 1)
        rows = [_event_row(r) for r in raw]
    more = len(rows) > f["limit"]
    rows = rows[: f["limit"]]
    return {"filters": {k: f[k] for k in ("user", "action", "from", "to", "before_seq", "limit")},
            "events": rows, "more": more, "next_before_seq": rows[-1]["seq"] if more and rows else None}


def _audit_html(audit: dict[str, Any], path: str, *, filters: bool) -> str:
    f = audit["filters"]
    form = ""
    if filters:
        form = (
            f"<form method='get' action='{esc(path)}' class='toolbar'>"
            f"<label>User <input name='user' value='{esc(f['user'])}' size='10'></label>"
            f"<label>Action <input name='action' value='{esc(f['action'])}' size='12' "
            "placeholder='login, user., control'></label>"
            f"<label>From (UTC) <input name='from' value='{esc(f['from'])}' size='19' "
            "placeholder='2026-01-31T08:00'></label>"
            f"<label>To (UTC) <input name='to' value='{esc(f['to'])}' size='19'></label>"
            f"<label>Rows <input name='limit' type='number' min='1' max='{MAX_LIMIT}' value='{f['limit']}' "
            "style='width:5rem'></label><button class='primary'>Filter</button>"
            f"<a href='{esc(path)}'>clear</a></form>")
    rows = []
    for e in audit["events"]:
        skip = ("user", "client", "action") if e["kind"] == "audit" else ("origin",)
        detail = {k: v for k, v in e["data"].items()
                  if k not in skip and v not in ("", None)
                  and not (k == "code" and v == -1)}
        cls = "bad" if e["action"] in ("denied", "login.failed", "login.locked") or "refused" in e["message"] else ""
        rows.append(
            f"<tr><td class='num'>{e['seq']}</td><td class='mono' style='white-space:nowrap'>{esc(e['ts'])}</td>"
            f"<td>{esc(e['user'])}</td><td><span class='pill muted'>{esc(e['action'])}</span></td>"
            f"<td class='{cls}'>{esc(e['message'])}</td><td class='mono'>{esc(e['client'])}</td>"
            f"<td class='mono muted'>{esc(json.dumps(detail, default=str)) if detail else ''}</td></tr>")
    table = ("<div class='scroll'><table><thead><tr><th class='num'>#</th><th>Time (UTC)</th><th>User</th>"
             "<th>Action</th><th>Event</th><th>Client</th><th>Details</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table></div>" if rows else "<p class='muted'>No audit events.</p>")
    pager = ""
    if audit["more"] and filters:
        q = {k: v for k, v in f.items() if v not in ("", None) and k != "before_seq"}
        q["before_seq"] = audit["next_before_seq"]
        pager = f"<p><a href='{esc(path)}?{esc(urlencode(q))}'>Older events →</a></p>"
    if f["before_seq"] is not None and filters:
        q = {k: v for k, v in f.items() if v not in ("", None) and k != "before_seq"}
        pager += f"<p><a href='{esc(path)}?{esc(urlencode(q))}'>← Newest</a></p>"
    return form + table + pager


async def audit_page(call: Call) -> Response:
    try:
        f = _filters(call)
    except BadQuery as e:
        return call.error(400, str(e))
    audit = await audit_query(call.ctx, f)
    if call.wants_json():
        return call.json(audit)
    body = (f"<section class='card'><p><a href='/admin'>← Users</a></p>"
            f"{_audit_html(audit, '/admin/audit', filters=True)}</section>")
    return render_page(call, "Audit log", body)


# -- users ---------------------------------------------------------------------------------------------------

_ROLES = tuple(r.label for r in Role)


def _role_select(name: str, current: str, attrs: str = "") -> str:
    opts = "".join(f"<option value='{r}'{' selected' if r == current else ''}>{r}</option>" for r in _ROLES)
    return f"<select name='{esc(name)}' {attrs}>{opts}</select>"


def _users_html(call: Call, users: list[dict[str, Any]]) -> str:
    rows = []
    for u in users:
        n = esc(u["name"])
        me = u["name"] == call.user
        not_me = " disabled title='not yourself'" if me else ""
        state = "<span class='pill bad'>disabled</span>" if u["disabled"] else "<span class='pill ok'>enabled</span>"
        toggle = ("<button data-op='enable'>Enable</button>" if u["disabled"]
                  else f"<button data-op='disable'{not_me}>Disable</button>")
        rows.append(
            f"<tr data-user='{n}'><td><strong>{n}</strong>{' <span class=muted>(you)</span>' if me else ''}</td>"
            f"<td><span class='toolbar'>{_role_select('role', u['role'], 'data-role-select')}"
            "<button data-op='role'>Change</button></span></td>"
            f"<td class='mono'>{esc(u['created'])}</td><td>{state}</td>"
            f"<td class='num'>{u['api_tokens']}</td><td class='num'>{u['sessions']}</td>"
            f"<td><span class='toolbar'><button data-op='password'>Reset password…</button>{toggle}"
            "<button data-op='token'>Issue API token</button>"
            f"<button data-op='revoke-tokens'{' disabled' if not u['api_tokens'] else ''}>Revoke tokens</button>"
            f"<button data-op='remove' class='danger'{not_me}>Remove"
            "</button></span></td></tr>")
    add = (
        "<form id='add-user' class='toolbar' autocomplete='off'><strong>Add user</strong>"
        "<label>Name <input name='name' required pattern='[A-Za-z0-9_.\\-]{1,32}' size='12'></label>"
        f"<label>Role {_role_select('role', 'viewer')}</label>"
        "<label>Initial password <input name='password' type='password' required minlength='10' "
        "autocomplete='new-password'></label><button class='primary'>Add</button></form>")
    dialogs = """<dialog id='pw-dialog' aria-labelledby='pw-title'><form id='pw-form' method='dialog'>
<h2 id='pw-title'>Reset password</h2><p>New password for <strong id='pw-user'></strong> (at least 10 characters;
their sessions end).</p><label>New password <input name='password' type='password' required minlength='10'
autocomplete='new-password'></label><p id='pw-error' class='bad'></p>
<div class='toolbar'><button class='primary' value='ok'>Set password</button>
<button type='button' id='pw-cancel'>Cancel</button></div></form></dialog>
<dialog id='token-dialog' aria-labelledby='token-title'><h2 id='token-title'>API token</h2>
<p>Token for <strong id='token-user'></strong>. It is shown <strong>only now</strong>: copy it to the tool that
needs it (header <span class='mono'>Authorization: Bearer …</span>). It acts with the user's role.</p>
<input id='token-value' class='mono' readonly style='width:100%'>
<div class='toolbar' style='margin-top:.6rem'><button id='token-copy'>Copy</button>
<button id='token-close' class='primary'>Done</button></div></dialog>"""
    return (
        "<section class='card'><h2>Users</h2><div class='scroll'><table><thead><tr><th>Name</th><th>Role</th>"
        "<th>Created (UTC)</th><th>State</th><th class='num'>API tokens</th><th class='num'>Sessions</th>"
        f"<th>Actions</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        f"<p id='admin-msg' role='status'></p>{add}</section>{dialogs}")


async def admin_page(call: Call) -> Response:
    ctx = call.ctx
    users = [_user_dict(ctx, u) for u in await asyncio.to_thread(ctx.users.list)]
    f = {"user": "", "action": "", "from": "", "to": "", "start_ns": None, "end_ns": None, "before_seq": None,
         "limit": 20}
    audit = await audit_query(ctx, f)
    data = {"users": users, "roles": list(_ROLES), "audit": audit, "me": call.user}
    if call.wants_json():
        return call.json(data)
    body = (_users_html(call, users)
            + "<section class='card'><h2>Recent audit events</h2>"
            + _audit_html(audit, "/admin/audit", filters=False)
            + "<p><a href='/admin/audit'>Full audit log with filters →</a></p></section>")
    return render_page(call, "Users & audit", body, data={"me": call.user}, scripts=["admin.js"])


# -- user changes ----------------------------------------------------------------------------------------------


def _target_name(call: Call) -> str:
    name = str(call.request.path_params.get("name", ""))
    if not _NAME_IN_PATH.fullmatch(name):
        raise UserError(f"invalid user name {name!r}")
    if call.ctx.users.get(name) is None:
        raise UserError(f"no user {name!r}")
    return name


def _role(value: object) -> Role:
    try:
        return Role.parse(str(value or ""))
    except ValueError as e:
        raise UserError(str(e)) from None


def _password(body: dict[str, Any]) -> str:
    pw = body.get("password")
    if not isinstance(pw, str) or not pw:
        raise UserError("password is required")
    return pw


async def add_user(call: Call) -> Response:
    body = await call.body()
    try:
        name = body.get("name")
        if not isinstance(name, str):
            raise UserError("name is required")
        role = _role(body.get("role"))
        user = await asyncio.to_thread(call.ctx.users.add, name.strip(), _password(body), role)
    except UserError as e:
        return call.error(400, str(e))
    await call.audit("user.add", f"added user {user.name!r} as {user.role.label}", target=user.name,
                     role=user.role.label)
    return call.json({"ok": True, "user": _user_dict(call.ctx, user)})


async def set_role(call: Call) -> Response:
    body = await call.body()
    ctx = call.ctx
    try:
        name = _target_name(call)
        role = _role(body.get("role"))
        old = ctx.users.get(name)
        await asyncio.to_thread(ctx.users.set_role, name, role)
    except UserError as e:
        return call.error(400, str(e))
    ctx.sessions.update_role(name, role)
    old_label = old.role.label if old is not None else ""
    await call.audit("user.role", f"changed the role of {name!r} from {old_label} to {role.label}", target=name,
                     role=role.label, old_role=old_label)
    user = ctx.users.get(name)
    return call.json({"ok": True, "user": _user_dict(ctx, user) if user is not None else None})


async def set_password(call: Call) -> Response:
    body = await call.body()
    ctx = call.ctx
    try:
        name = _target_name(call)
        await asyncio.to_thread(ctx.users.set_password, name, _password(body))
    except UserError as e:
        return call.error(400, str(e))
    ended = ctx.sessions.revoke_user(name)
    await call.audit("user.password", f"reset the password of {name!r} ({ended} session(s) ended)", target=name,
                     sessions_ended=ended)
    return call.json({"ok": True, "sessions_ended": ended})


async def _set_disabled(call: Call, disabled: bool) -> Response:
    ctx = call.ctx
    try:
        name = _target_name(call)
        if disabled and name == call.user:
            raise UserError("you cannot disable yourself: ask another admin")
        await asyncio.to_thread(ctx.users.set_disabled, name, disabled)
    except UserError as e:
        return call.error(400, str(e))
    ended = ctx.sessions.revoke_user(name) if disabled else 0
    verb = "disabled" if disabled else "enabled"
    await call.audit(f"user.{verb[:-1]}", f"{verb} user {name!r}" + (f" ({ended} session(s) ended)" if ended else ""),
                     target=name, sessions_ended=ended)
    return call.json({"ok": True, "sessions_ended": ended})


async def disable(call: Call) -> Response:
    return await _set_disabled(call, True)


async def enable(call: Call) -> Response:
    return await _set_disabled(call, False)


async def remove(call: Call) -> Response:
    ctx = call.ctx
    try:
        name = _target_name(call)
        if name == call.user:
            raise UserError("you cannot remove yourself: ask another admin")
        tokens = ctx.users.api_token_count(name)
        await asyncio.to_thread(ctx.users.remove, name)
    except UserError as e:
        return call.error(400, str(e))
    ended = ctx.sessions.revoke_user(name)
    await call.audit("user.remove", f"removed user {name!r} ({ended} session(s) ended, {tokens} API token(s) revoked)",
                     target=name, sessions_ended=ended, tokens_revoked=tokens)
    return call.json({"ok": True, "sessions_ended": ended, "tokens_revoked": tokens})


async def issue_token(call: Call) -> Response:
    ctx = call.ctx
    try:
        name = _target_name(call)
        user = ctx.users.get(name)
        if user is not None and user.disabled:
            raise UserError(f"{name!r} is disabled: enable the user first")
        token = await asyncio.to_thread(ctx.users.issue_api_token, name)
    except UserError as e:
        return call.error(400, str(e))
    await call.audit("user.token", f"issued an API token for {name!r}", target=name)
    return call.json({"ok": True, "user": name, "token": token})


async def revoke_tokens(call: Call) -> Response:
    ctx = call.ctx
    try:
        name = _target_name(call)
        n = await asyncio.to_thread(ctx.users.revoke_api_tokens, name)
    except UserError as e:
        return call.error(400, str(e))
    await call.audit("user.tokens_revoke", f"revoked {n} API token(s) of {name!r}", target=name, revoked=n)
    return call.json({"ok": True, "revoked": n})


def routes(ctx: PanelContext) -> list[PanelRoute]:
    a = Role.ADMIN
    u = "/api/admin/users/{name}"
    return [
        PanelRoute("/admin", admin_page, role=a, action="admin.view"),
        PanelRoute("/admin/audit", audit_page, role=a, action="audit.view"),
        PanelRoute("/api/admin/users", add_user, ("POST",), a, "users.add"),
        PanelRoute(u + "/role", set_role, ("POST",), a, "users.role"),
        PanelRoute(u + "/password", set_password, ("POST",), a, "users.password"),
        PanelRoute(u + "/disable", disable, ("POST",), a, "users.disable"),
        PanelRoute(u + "/enable", enable, ("POST",), a, "users.enable"),
        PanelRoute(u + "/remove", remove, ("POST",), a, "users.remove"),
        PanelRoute(u + "/token", issue_token, ("POST",), a, "users.token"),
        PanelRoute(u + "/revoke-tokens", revoke_tokens, ("POST",), a, "users.revoke_tokens"),
    ]

"""The permission matrix: every guarded route × every role, asserted against the table below (so a route whose
role is lowered by mistake fails here), plus anonymous access, CSRF on every state change, and API tokens.

Allowed means "not refused": the handler may still answer 400/404/409 to the empty or sample request sent here.
"""

from __future__ import annotations

import re

import httpx
import pytest

from gateway.panel.app import panel_routes
from gateway.panel.roles import Role
from gateway.panel.routing import PanelRoute
from tests.panel.conftest import PanelRig

V, OP, E, A = Role.VIEWER, Role.OPERATOR, Role.ENGINEER, Role.ADMIN

# action (or "METHOD path") → least role. Every guarded route must be listed.
EXPECTED: dict[str, Role] = {
    "status.read": V,
    "overview.read": V, "devices.read": V, "devices.read_one": V, "points.read": V, "stream.read": V,
    "alarms.read": V, "alarms.csv": V, "alarms.ack": OP,
    "protection.read": V, "protection.record": V, "protection.group": E, "protection.settings": E,
    "trends.view": V, "trends.energy": V,
    "controls.view": V, "controls.select": OP, "controls.operate": OP, "controls.cancel": OP,
    "admin.view": A, "audit.view": A, "users.add": A, "users.role": A, "users.password": A, "users.disable": A,
    "users.enable": A, "users.remove": A, "users.token": A, "users.revoke_tokens": A,
}

STREAMING = {"/api/stream"}  # never ends by itself: checked for refusal only (test_live.py reads it)
SAMPLES = {"name": "feeder1", "device": "feeder1", "seq": "1", "user": "viewer", "record": "none", "bay": "Feeder 1"}


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: SAMPLES.get(m.group(1), "x"), path)


async def call(client: httpx.AsyncClient, route: PanelRoute, *, csrf: bool = True) -> httpx.Response:
    path = concrete(route.path)
    method = route.methods[0]
    headers = {"Accept": "application/json"}
    if not csrf:
        headers["X-CSRF-Token"] = ""
    if method == "GET":
        return await client.get(path, headers=headers)
    return await client.request(method, path, json={}, headers=headers)


def test_every_route_is_in_the_matrix(panel: PanelRig) -> None:
    routes = panel_routes(panel.ctx)
    names = [r.name for r in routes]
    assert len(names) == len(set(names)), "two routes share an action name"
    assert set(names) == set(EXPECTED), (
        f"not in the matrix: {sorted(set(names) - set(EXPECTED))}; gone: {sorted(set(EXPECTED) - set(names))}"
    )
    wrong = {r.name: (r.role.label, EXPECTED[r.name].label) for r in routes if r.role != EXPECTED[r.name]}
    assert not wrong, f"(declared, expected): {wrong}"


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.label)
async def test_each_role_against_each_route(panel: PanelRig, role: Role) -> None:
    client, _ = await panel.client(role)
    before = panel.gw.store.last_event_seq() if panel.gw.store else 0
    problems = []
    denied_posts = 0
    for route in panel_routes(panel.ctx):
        allowed = role >= route.role
        if allowed and route.path in STREAMING:
            continue
        r = await call(client, route)
        if allowed and r.status_code in (401, 403):
            problems.append(f"{route.name}: {role.label} refused ({r.status_code} {r.text[:120]})")
        if not allowed:
            if r.status_code != 403:
                problems.append(f"{route.name}: {role.label} got {r.status_code}, expected 403")
            elif route.methods[0] != "GET":
                denied_posts += 1
    assert not problems, "\n".join(problems)
    if denied_posts and panel.gw.store is not None:  # a refused state change is on record
        panel.gw.store.flush()
        events = panel.gw.store.events_after(before, 10_000).to_pylist()
        assert sum(e["kind"] == "audit" and e["point"] == "denied" for e in events) == denied_posts


async def test_anonymous_gets_nothing(panel: PanelRig) -> None:
    anon = panel.anon
    for route in panel_routes(panel.ctx):
        r = await call(anon, route)
        assert r.status_code == 401, (route.name, r.status_code)
    page = await anon.get("/points")
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/points"


async def test_every_state_change_needs_the_csrf_token(panel: PanelRig) -> None:
    client, _ = await panel.client(Role.ADMIN)
    posts = [r for r in panel_routes(panel.ctx) if r.methods[0] != "GET"]
    assert posts
    for route in posts:
        r = await call(client, route, csrf=False)
        assert r.status_code == 403 and "CSRF" in r.json()["error"], route.name
    # a cross-site form post carries the cookie but another Origin: refused even with the token
    r = await client.post(concrete(posts[0].path), json={}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403


async def test_api_token_acts_with_its_users_role_without_csrf(panel: PanelRig) -> None:
    panel.ensure_user(Role.VIEWER)
    panel.ensure_user(Role.ADMIN)
    viewer = panel.new_client()
    viewer.headers["Authorization"] = f"Bearer {panel.ctx.users.issue_api_token('viewer')}"
    admin = panel.new_client()
    admin.headers["Authorization"] = f"Bearer {panel.ctx.users.issue_api_token('admin')}"
    assert (await viewer.get("/api/status")).status_code == 200
    assert (await viewer.get("/points", headers={"Accept": "application/json"})).status_code == 200
    posts = [r for r in panel_routes(panel.ctx) if r.methods[0] != "GET"]
    for route in posts:
        assert (await call(viewer, route)).status_code == 403, route.name
        assert (await call(admin, route)).status_code not in (401, 403), route.name
    bogus = panel.new_client()
    bogus.headers["Authorization"] = "Bearer gwp_not-a-token"
    assert (await bogus.get("/api/status")).status_code == 401

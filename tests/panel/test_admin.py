"""Users & audit page (admin only): user management through the panel, its audit events (no secrets in them),
session effects, last-admin protection, the audit log's filters and paging."""

from __future__ import annotations

import json

from gateway.panel.roles import Role
from tests.panel.conftest import PASSWORD, PanelRig

NEW_PW = "another long passphrase"


def audit_rows(panel: PanelRig, **filters: object) -> list[dict[str, object]]:
    store = panel.gw.store
    assert store is not None
    return store.audit_log(**filters)  # type: ignore[arg-type]


def assert_no_secrets(panel: PanelRig, *secrets: str) -> None:
    store = panel.gw.store
    assert store is not None
    for row in store.audit_log(limit=10_000):
        text = json.dumps(row, default=str)
        for s in secrets:
            assert s not in text, f"secret in audit event {row['seq']}"


async def test_only_admins(panel: PanelRig) -> None:
    for role in (Role.VIEWER, Role.OPERATOR, Role.ENGINEER):
        c, _ = await panel.client(role)
        assert (await c.get("/api/admin")).status_code == 403
        assert (await c.get("/api/admin/audit")).status_code == 403
        r = await c.post("/api/admin/users", json={"name": "mallory", "role": "admin", "password": NEW_PW})
        assert r.status_code == 403
        page = await c.get("/controls")
        assert "href='/admin'" not in page.text
    assert panel.ctx.users.get("mallory") is None
    assert audit_rows(panel, action="denied", user="engineer")
    assert (await panel.anon.get("/api/admin")).status_code == 401


async def test_user_lifecycle(panel: PanelRig) -> None:
    admin, _ = await panel.client(Role.ADMIN)
    page = await admin.get("/admin")
    assert page.status_code == 200 and "id='add-user'" in page.text and "admin.js" in page.text

    r = await admin.post("/api/admin/users", json={"name": "carol", "role": "operator", "password": NEW_PW})
    assert r.status_code == 200, r.text
    assert r.json()["user"]["role"] == "operator"
    users = {u["name"]: u for u in (await admin.get("/api/admin")).json()["users"]}
    assert users["carol"]["role"] == "operator" and users["carol"]["disabled"] is False

    for body, needle in (
        ({"name": "carol", "role": "viewer", "password": NEW_PW}, "exists"),
        ({"name": "bad name!", "role": "viewer", "password": NEW_PW}, "invalid user name"),
        ({"name": "dave", "role": "overlord", "password": NEW_PW}, "unknown role"),
        ({"name": "dave", "role": "viewer", "password": "short"}, "too short"),
        ({"name": "dave", "role": "viewer"}, "password is required"),
    ):
        r = await admin.post("/api/admin/users", json=body)
        assert r.status_code == 400 and needle in r.json()["error"], (body, r.json())

    # carol logs in; a role change follows her live session
    carol = panel.new_client()
    r = await carol.post("/login", data={"username": "carol", "password": NEW_PW, "next": "/"})
    assert r.status_code == 303
    assert (await carol.get("/api/controls")).json()["can_operate"] is True
    r = await admin.post("/api/admin/users/carol/role", json={"role": "viewer"})
    assert r.status_code == 200 and r.json()["user"]["role"] == "viewer"
    assert (await carol.get("/api/controls")).json()["can_operate"] is False
    assert (await admin.post("/api/admin/users/carol/role", json={"role": "god"})).status_code == 400
    assert (await admin.post("/api/admin/users/nobody/role", json={"role": "viewer"})).status_code == 400

    # password reset ends her sessions
    r = await admin.post("/api/admin/users/carol/password", json={"password": "x"})
    assert r.status_code == 400 and "too short" in r.json()["error"]
    r = await admin.post("/api/admin/users/carol/password", json={"password": PASSWORD + " 2"})
    assert r.status_code == 200 and r.json()["sessions_ended"] == 1
    assert (await carol.get("/api/controls")).status_code == 401
    assert panel.ctx.users.verify("carol", PASSWORD + " 2") is not None

    # API token: shown once, works as carol, revoked
    r = await admin.post("/api/admin/users/carol/token")
    token = r.json()["token"]
    assert r.status_code == 200 and token.startswith("gwp_")
    tool = panel.new_client()
    tool.headers["Authorization"] = f"Bearer {token}"
    assert (await tool.get("/api/controls")).status_code == 200
    assert token not in (await admin.get("/admin")).text
    r = await admin.post("/api/admin/users/carol/revoke-tokens")
    assert r.json()["revoked"] == 1
    assert (await tool.get("/api/controls")).status_code == 401

    # disable / enable
    r = await carol.post("/login", data={"username": "carol", "password": PASSWORD + " 2", "next": "/"})
    assert r.status_code == 303
    r = await admin.post("/api/admin/users/carol/disable")
    assert r.status_code == 200 and r.json()["sessions_ended"] == 1
    assert (await carol.get("/api/controls")).status_code == 401
    assert panel.ctx.users.get("carol").disabled  # type: ignore[union-attr]
    assert (await admin.post("/api/admin/users/carol/token")).status_code == 400  # disabled: no token
    assert (await admin.post("/api/admin/users/carol/enable")).status_code == 200
    assert not panel.ctx.users.get("carol").disabled  # type: ignore[union-attr]

    # remove
    assert (await admin.post("/api/admin/users/carol/token")).status_code == 200
    r = await admin.post("/api/admin/users/carol/remove")
    assert r.status_code == 200 and r.json()["tokens_revoked"] == 1
    assert panel.ctx.users.get("carol") is None
    assert (await admin.post("/api/admin/users/carol/remove")).status_code == 400

    actions = [str(e["action"]) for e in audit_rows(panel, action="user.")]
    for a in ("user.add", "user.role", "user.password", "user.token", "user.tokens_revoke", "user.disable",
              "user.enable", "user.remove"):
        assert a in actions, a
    for e in audit_rows(panel, action="user."):
        assert e["kind"] == "audit" and e["priority"] == 0
        assert json.loads(str(e["data"]))["user"] == "admin"
    assert_no_secrets(panel, NEW_PW, PASSWORD + " 2", token)


async def test_last_admin_and_self_protection(panel: PanelRig) -> None:
    admin, _ = await panel.client(Role.ADMIN)
    for op, body in (("role", {"role": "operator"}), ("disable", {}), ("remove", {})):
        r = await admin.post(f"/api/admin/users/admin/{op}", json=body)
        assert r.status_code == 400, op
    assert panel.ctx.users.get("admin").role == Role.ADMIN  # type: ignore[union-attr]
    # with a second admin, the first may step down, but still not disable or remove themself
    assert (await admin.post("/api/admin/users", json={"name": "root2", "role": "admin",
                                                         "password": NEW_PW})).status_code == 200
    r = await admin.post("/api/admin/users/admin/disable")
    assert r.status_code == 400 and "yourself" in r.json()["error"]
    r = await admin.post("/api/admin/users/admin/remove")
    assert r.status_code == 400 and "yourself" in r.json()["error"]
    r = await admin.post("/api/admin/users/admin/role", json={"role": "operator"})
    assert r.status_code == 200
    assert (await admin.get("/api/admin")).status_code == 403  # the session follows the new role at once


async def test_audit_log_filters_and_paging(panel: PanelRig) -> None:
    admin, _ = await panel.client(Role.ADMIN)
    op, _ = await panel.client(Role.OPERATOR)
    bad = panel.new_client()
    r = await bad.post("/login", data={"username": "operator", "password": "wrong password", "next": "/"})
    assert r.status_code in (200, 303, 401)
    await op.post("/api/controls/select", json={"bay": "Feeder 1", "action": "open"})
    await op.post("/api/controls/cancel", json={"bay": "Feeder 1", "action": "open"})

    d = (await admin.get("/api/admin/audit")).json()
    events = d["events"]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs, reverse=True)
    kinds = {e["kind"] for e in events}
    assert kinds == {"audit", "control"}
    assert any(e["action"] == "login.failed" and e["user"] == "operator" for e in events)
    assert all(len(e["ts"]) == len("2026-01-01 00:00:00.000000") for e in events)

    d = (await admin.get("/api/admin/audit?action=control.select&user=OPER")).json()
    assert d["events"] and all(e["action"] == "control.select" and e["user"] == "operator" for e in d["events"])
    d = (await admin.get("/api/admin/audit?action=login")).json()
    assert {e["action"] for e in d["events"]} <= {"login", "login.failed", "login.locked"}

    d1 = (await admin.get("/api/admin/audit?limit=2")).json()
    assert len(d1["events"]) == 2 and d1["more"] and d1["next_before_seq"] == d1["events"][-1]["seq"]
    d2 = (await admin.get(f"/api/admin/audit?limit=2&before_seq={d1['next_before_seq']}")).json()
    assert d2["events"] and d2["events"][0]["seq"] < d1["events"][-1]["seq"]

    newest = events[0]["ts_ns"]
    d = (await admin.get(f"/api/admin/audit?from={newest + 1}")).json()
    assert d["events"] == []
    d = (await admin.get(f"/api/admin/audit?to={newest}")).json()
    assert all(e["ts_ns"] < newest for e in d["events"])
    d = (await admin.get("/api/admin/audit?from=2000-01-01T00:00:00&to=2999-01-01T00:00Z")).json()
    assert len(d["events"]) == len(events)
    for q in ("from=yesterday", "limit=0", "limit=x", "before_seq=abc"):
        assert (await admin.get(f"/api/admin/audit?{q}")).status_code == 400, q

    page = await admin.get("/admin/audit?limit=2")
    assert page.status_code == 200 and "Older events" in page.text and "before_seq=" in page.text
    assert_no_secrets(panel, "wrong password", PASSWORD)

"""Controls page: breaker select → operate → result through the real ControlService and the demo's simulated feeder
relays (pymodbus), the refusals (no select, another user's selection, expiry, interlocks), cancel, roles."""

from __future__ import annotations

import json
import math

from gateway.panel.roles import Role
from protocols.session import ControlRequest
from tests.panel.conftest import PanelRig
from tests.waiting import wait_for, wait_for_async

FEEDER1_OPEN = {"bay": "Feeder 1", "action": "open"}
FEEDER1_CLOSE = {"bay": "Feeder 1", "action": "close"}


def breaker_value(panel: PanelRig, key: str = "feeder1.breaker_closed") -> float:
    latest = panel.gw.latest
    assert latest is not None
    i = panel.gw.point_ids[key]
    return float(latest.value[i]) if latest.ts[i] else math.nan


async def ready(panel: PanelRig) -> None:
    await wait_for(lambda: panel.gw.controls is not None and breaker_value(panel) == 1.0,
                   what="the gateway to see feeder 1's breaker closed")


async def control_events(panel: PanelRig, **filters: object) -> list[dict[str, object]]:
    store = panel.gw.store
    assert store is not None
    return store.audit_log(**filters)  # type: ignore[arg-type]


async def test_page_shows_bays_and_other_points(panel: PanelRig) -> None:
    await ready(panel)
    viewer, _ = await panel.client(Role.VIEWER)
    r = await viewer.get("/api/controls")
    assert r.status_code == 200
    d = r.json()
    assert d["available"] is True and d["can_operate"] is False
    bays = {b["name"]: b for b in d["bays"]}
    assert set(bays) == {"Feeder 1", "Feeder 2", "Feeder 3"}  # the incomer has no open/close points
    assert bays["Feeder 1"]["state"] == "closed"
    assert bays["Feeder 1"]["controls"]["open"]["point"] == "feeder1.trip_cmd"
    others = {p["key"] for p in d["points"]}
    assert {"feeder1.pickup_A", "incomer.trip_cmd", "incomer.close_cmd", "incomer.pickup_A"} <= others
    assert "feeder1.trip_cmd" not in others
    page = await viewer.get("/controls?bay=Feeder%202")
    assert page.status_code == 200 and "Feeder 2" in page.text
    assert "data-action='open'" not in page.text and "id='confirm'" not in page.text  # no buttons for viewers
    operator, _ = await panel.client(Role.OPERATOR)
    page = await operator.get("/controls")
    assert "data-bay='Feeder 1' data-action='open'" in page.text and "id='confirm'" in page.text


async def test_select_operate_opens_the_breaker_and_is_audited(panel: PanelRig) -> None:
    await ready(panel)
    op, _ = await panel.client(Role.OPERATOR)
    r = await op.post("/api/controls/select", json=FEEDER1_OPEN)
    assert r.status_code == 200, r.text
    sel = r.json()
    assert sel["ok"] is True and sel["status"] == "success"
    assert 0 < sel["expires_in_s"] <= panel.gw.cfg.panel.select_timeout_s
    assert sel["interlocks"] == [] and sel["interlock_summary"].startswith("interlocks clear")
    assert (sel["device"], sel["point"], sel["value"]) == ("feeder1", "trip_cmd", 1.0)
    assert "feeder1.trip_cmd ← 1" in sel["description"]
    page = (await op.get("/api/controls")).json()
    f1 = next(b for b in page["bays"] if b["name"] == "Feeder 1")
    assert f1["controls"]["open"]["selection"]["origin"] == "operator"
    assert panel.feeders[0].model.breaker_closed  # nothing sent yet

    r = await op.post("/api/controls/operate", json=FEEDER1_OPEN)
    assert r.status_code == 200
    assert r.json()["ok"] is True and r.json()["status"] == "success"
    await wait_for(lambda: not panel.feeders[0].model.breaker_closed, what="the simulated breaker to open")
    await wait_for(lambda: breaker_value(panel) == 0.0, what="the gateway to see the breaker open")

    async def shows_open() -> bool:
        d = (await op.get("/api/controls")).json()
        return next(b for b in d["bays"] if b["name"] == "Feeder 1")["state"] == "open"

    await wait_for_async(shows_open, what="the controls page to show the breaker open")
    ops = await control_events(panel, action="control.operate", user="operator")
    assert ops, "no control audit event"
    assert all(e["kind"] == "control" and e["priority"] == 0 for e in ops)
    data = [json.loads(str(e["data"])) for e in ops]
    assert {d["origin"] for d in data} == {"operator"}
    assert any(d.get("status") == "success" for d in data)
    assert len(await control_events(panel, action="control.select", user="operator")) == 2  # request + outcome

    # and close it again
    assert (await op.post("/api/controls/select", json=FEEDER1_CLOSE)).json()["ok"]
    assert (await op.post("/api/controls/operate", json=FEEDER1_CLOSE)).json()["ok"]
    await wait_for(lambda: panel.feeders[0].model.breaker_closed, what="the simulated breaker to close")


async def test_operate_needs_own_live_selection(panel: PanelRig) -> None:
    await ready(panel)
    op, _ = await panel.client(Role.OPERATOR)
    other, _ = await panel.client(Role.OPERATOR, "op2")
    r = await op.post("/api/controls/operate", json=FEEDER1_OPEN)
    assert r.status_code == 200 and r.json()["status"] == "no_select" and not r.json()["ok"]

    assert (await op.post("/api/controls/select", json=FEEDER1_OPEN)).json()["ok"]
    r = await other.post("/api/controls/operate", json=FEEDER1_OPEN)
    assert r.json()["status"] == "no_select" and "selected by operator" in r.json()["detail"]
    r = await other.post("/api/controls/select", json=FEEDER1_OPEN)
    assert r.json()["status"] == "rejected" and "selected by operator" in r.json()["detail"]
    # the same user with another value does not match the selection either
    r = await op.post("/api/controls/operate", json=FEEDER1_CLOSE)  # other point: not selected at all
    assert r.json()["status"] == "no_select"
    assert panel.feeders[0].model.breaker_closed
    refused = await control_events(panel, action="control.operate", user="op2")
    assert refused and all(json.loads(str(e["data"]))["origin"] == "op2" for e in refused)

    r = await op.post("/api/controls/cancel", json=FEEDER1_OPEN)
    assert r.json()["status"] == "success" and r.json()["selection"] is None
    assert panel.gw.controls is not None and panel.gw.controls.selection("feeder1", "trip_cmd") is None
    r = await op.post("/api/controls/operate", json=FEEDER1_OPEN)
    assert r.json()["status"] == "no_select"
    assert (await control_events(panel, action="control.cancel", user="operator"))
    assert panel.feeders[0].model.breaker_closed


async def test_selection_expires(panel: PanelRig) -> None:
    await ready(panel)
    svc = panel.gw.controls
    assert svc is not None
    svc.select_timeout_s = 0.05  # the configured 30 s would make the test wait
    op, _ = await panel.client(Role.OPERATOR)
    r = (await op.post("/api/controls/select", json=FEEDER1_OPEN)).json()
    assert r["ok"] and 0 < r["expires_in_s"] <= 0.05
    selected_at = panel.gw.mono_ns()
    await wait_for(lambda: panel.gw.mono_ns() > selected_at + 50_000_000, what="the selection to expire")
    r = (await op.post("/api/controls/operate", json=FEEDER1_OPEN)).json()
    assert r["status"] == "select_timeout" and not r["ok"]
    assert panel.feeders[0].model.breaker_closed


async def test_interlock_refuses_and_is_shown(panel: PanelRig) -> None:
    await ready(panel)
    svc = panel.gw.controls
    assert svc is not None

    def earth_switch(req: ControlRequest) -> str | None:
        return "earth switch closed" if req.point == "trip_cmd" else None

    svc.add_interlock(earth_switch, "feeder1.trip_cmd")
    op, _ = await panel.client(Role.OPERATOR)
    r = (await op.post("/api/controls/select", json=FEEDER1_OPEN)).json()
    assert r["status"] == "interlocked" and not r["ok"] and r["expires_in_s"] is None
    assert r["interlocks"] == [{"name": "earth_switch", "point": "feeder1.trip_cmd", "ok": False,
                                "reason": "earth switch closed"}]
    assert r["interlock_summary"] == "refused: earth switch closed"
    r = (await op.post("/api/controls/select", json=FEEDER1_CLOSE)).json()  # other point: not interlocked
    assert r["ok"] and r["interlocks"] == []


async def test_other_writable_point(panel: PanelRig) -> None:
    await ready(panel)
    op, _ = await panel.client(Role.OPERATOR)
    body = {"device": "feeder1", "point": "pickup_A", "value": 123}
    r = (await op.post("/api/controls/select", json=body)).json()
    assert r["ok"] and r["control_action"] == "value" and r["description"].startswith("Set feeder1.pickup_A to 123")
    assert (await op.post("/api/controls/operate", json=body)).json()["ok"]
    await wait_for(lambda: int(panel.feeders[0].unit.holding[0]) == 123, what="the register to be written")


async def test_bad_input_roles_and_csrf(panel: PanelRig) -> None:
    await ready(panel)
    op, _ = await panel.client(Role.OPERATOR)
    for body, needle in (
        ({"bay": "Nowhere", "action": "open"}, "no bay"),
        ({"bay": "Feeder 1", "action": "explode"}, "unknown action"),
        ({"device": "feeder1", "point": "Ia", "value": 1}, "not writable"),
        ({"device": "feeder1", "point": "nope", "value": 1}, "no point"),
        ({"device": "feeder1", "point": "trip_cmd", "value": 2}, "0 or 1"),
        ({"device": "feeder1", "point": "pickup_A", "value": "abc"}, "number"),
        ({"device": "feeder1", "point": "pickup_A"}, "value is required"),
        ({}, "give"),
    ):
        r = await op.post("/api/controls/select", json=body)
        assert r.status_code == 400, body
        assert needle in r.json()["error"], (body, r.json())
    viewer, _ = await panel.client(Role.VIEWER)
    r = await viewer.post("/api/controls/select", json=FEEDER1_OPEN)
    assert r.status_code == 403
    r = await viewer.post("/api/controls/operate", json=FEEDER1_OPEN)
    assert r.status_code == 403
    no_csrf = panel.new_client()
    no_csrf.cookies = op.cookies
    r = await no_csrf.post("/api/controls/select", json=FEEDER1_OPEN)
    assert r.status_code == 403
    r = await panel.anon.post("/api/controls/select", json=FEEDER1_OPEN)
    assert r.status_code == 401
    assert panel.gw.controls is not None and panel.gw.controls.selection("feeder1", "trip_cmd") is None
    denied = await control_events(panel, action="denied", user="viewer")
    assert denied


async def test_no_control_service_is_503(panel: PanelRig) -> None:
    op, _ = await panel.client(Role.OPERATOR)
    svc, panel.gw.controls = panel.gw.controls, None
    try:
        r = await op.post("/api/controls/select", json=FEEDER1_OPEN)
        assert r.status_code == 503
        d = (await op.get("/api/controls")).json()
        assert d["available"] is False
    finally:
        panel.gw.controls = svc

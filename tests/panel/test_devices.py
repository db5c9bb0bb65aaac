"""Devices page: comm figures per device, drill-down to one device with its points, 404 for an unknown device."""

from __future__ import annotations

from gateway.panel.roles import Role
from tests.panel.conftest import PanelRig
from tests.waiting import wait_for_async


async def test_devices_table(panel: PanelRig) -> None:
    c, _ = await panel.client(Role.VIEWER)

    async def polled() -> bool:
        devs = (await c.get("/api/devices")).json()["devices"]
        return all(d["state"] == "ok" and d["polls"] > 0 and d["last_latency_ms"] is not None for d in devs)

    await wait_for_async(polled, what="every device polled")
    d = (await c.get("/devices?format=json")).json()
    names = [x["device"] for x in d["devices"]]
    assert names == ["feeder1", "feeder2", "feeder3", "incomer"]
    f1 = d["devices"][0]
    assert f1["link"] == "bay-switch" and f1["protocol"] == "modbus_tcp" and f1["protocol_label"] == "Modbus TCP"
    assert f1["last_good_age_s"] is not None and f1["last_good_age_s"] >= 0
    assert f1["last_latency_ms"] > 0 and f1["points"] == 17
    for key in ("errors", "timeouts", "reconnects", "backoff_s", "missed_slots"):
        assert key in f1
    html = (await c.get("/devices")).text
    assert "<a href='/devices/feeder1'>feeder1</a>" in html and "Modbus TCP" in html
    assert "/static/devices.js" in html


async def test_device_drill_down(panel: PanelRig) -> None:
    c, _ = await panel.client(Role.VIEWER)
    r = await c.get("/devices/feeder2")
    assert r.status_code == 200
    assert "Device feeder2" in r.text and "/static/points.js" in r.text
    assert 'data-source="/points?format=json&amp;device=feeder2"' in r.text
    d = (await c.get("/api/devices/feeder2")).json()
    assert d["device"]["device"] == "feeder2"
    pts = d["points"]
    assert pts["count"] == 17 and set(pts["devices"]) == {"feeder2"}
    assert pts["names"][0] == "feeder2.Ia" and len(pts["value"]) == 17


async def test_unknown_device_is_404(panel: PanelRig) -> None:
    c, _ = await panel.client(Role.VIEWER)
    r = await c.get("/devices/no-such-relay")
    assert r.status_code == 404 and "no device named" in r.text and "text/html" in r.headers["content-type"]
    j = await c.get("/api/devices/no-such-relay")
    assert j.status_code == 404
    assert j.json() == {"error": "no device named 'no-such-relay' in this gateway's configuration"}

"""Overview page: a tile per demo bay with its breaker state, measurements and controls link; the summary strip."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.panel.roles import Role
from tests.panel.conftest import PanelRig
from tests.waiting import wait_for_async


async def test_overview_shows_each_bay_closed_then_open(panel: PanelRig) -> None:
    c, _ = await panel.client(Role.VIEWER)
    bays = [b.name for b in panel.gw.cfg.panel.bays]
    assert bays == ["Feeder 1", "Feeder 2", "Feeder 3", "Incomer"]

    async def closed() -> bool:
        tiles = (await c.get("/?format=json")).json()["tiles"]
        return [t["name"] for t in tiles] == bays and all(t["breaker"]["state"] == "CLOSED" for t in tiles)

    await wait_for_async(closed, what="every breaker CLOSED")
    page = await c.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for name in bays:
        assert f"<h2>{name}</h2>" in page.text
    assert page.text.count(">CLOSED<") == len(bays)

    panel.feeders[0].unit.coils[0] = True  # the demo model trips feeder 1's breaker

    async def feeder1_open() -> bool:
        tiles = {t["name"]: t for t in (await c.get("/?format=json")).json()["tiles"]}
        return tiles["Feeder 1"]["breaker"]["state"] == "OPEN" and tiles["Feeder 2"]["breaker"]["state"] == "CLOSED"

    await wait_for_async(feeder1_open, what="feeder 1 OPEN")
    html = (await c.get("/")).text
    tile = re.search(r"data-tile='Feeder 1'.*?</article>", html, re.S)
    assert tile is not None and ">OPEN<" in tile.group(0)


async def test_overview_json_tiles_measurements_and_summary(panel: PanelRig) -> None:
    c, _ = await panel.client(Role.VIEWER)

    async def have_values() -> bool:
        d = (await c.get("/api/overview")).json()
        return all(m["value"] is not None for t in d["tiles"] for m in t["measurements"])

    await wait_for_async(have_values, what="measurements on every tile")
    d = (await c.get("/api/overview")).json()
    f1 = d["tiles"][0]
    assert [m["point"] for m in f1["measurements"]] == ["feeder1.Ia", "feeder1.Va", "feeder1.P", "feeder1.f"]
    assert [m["unit"] for m in f1["measurements"]] == ["A", "kV", "kW", "Hz"]
    assert all(m["validity"] == "good" and m["quality_text"] == "good" for m in f1["measurements"])
    # feeder 1 shows protection; the test gateway runs no protection process
    assert f1["protection"]["state"] == "not configured"
    assert d["tiles"][1]["protection"] is None
    s = d["summary"]
    assert s["devices_total"] == 4 and s["devices_ok"] == 4 and s["devices_not_ok"] == []
    assert s["alarms_unacked"] == 0 and s["sinks"] == [] and s["protection"] is None
    assert s["store"] is not None and s["store"]["disk_full"] is False


async def test_controls_link_only_for_operators(panel: PanelRig) -> None:
    viewer, _ = await panel.client(Role.VIEWER)
    operator, _ = await panel.client(Role.OPERATOR)
    vt = {t["name"]: t for t in (await viewer.get("/api/overview")).json()["tiles"]}
    ot = {t["name"]: t for t in (await operator.get("/api/overview")).json()["tiles"]}
    assert vt["Feeder 1"]["controls_url"] is None
    assert ot["Feeder 1"]["controls_url"] == "/controls?bay=Feeder%201"
    assert ot["Incomer"]["controls_url"] is None  # no open/close points
    assert "/controls?bay=Feeder%201" in (await operator.get("/")).text
    assert "/controls?bay=" not in (await viewer.get("/")).text


async def test_breaker_unknown_without_data_and_device_tiles_without_bays(panel: PanelRig) -> None:
    import dataclasses

    from gateway.config import BayConfig
    from gateway.panel.overview import breaker_state, tiles

    assert breaker_state({"value": None, "validity": "none"}, 1.0) == "unknown"
    assert breaker_state({"value": 1.0, "validity": "invalid"}, 1.0) == "unknown"
    assert breaker_state({"value": 0.0, "validity": "questionable"}, 1.0) == "OPEN"
    assert breaker_state({"value": 2.0, "validity": "good"}, 2.0) == "CLOSED"
    assert breaker_state({"value": 0.0, "validity": "good"}, 2.0) == "INTERMEDIATE"
    gw = panel.gw
    cfg = gw.cfg
    gw.cfg = dataclasses.replace(cfg, panel=dataclasses.replace(cfg.panel, bays=(
        BayConfig(name="Ghost", breaker="nope.breaker", measurements=("nope.Ia",)),)))
    try:
        t = tiles(gw, True)[0]
        assert t["breaker"]["state"] == "unknown" and t["measurements"][0]["quality_text"] == "not configured"
        gw.cfg = dataclasses.replace(cfg, panel=dataclasses.replace(cfg.panel, bays=()))
        ts = tiles(gw, True)
        assert [t["name"] for t in ts] == ["feeder1", "feeder2", "feeder3", "incomer"]
        assert [m["point"] for m in ts[0]["measurements"]] == ["feeder1.Ia", "feeder1.Ib", "feeder1.Ic", "feeder1.In"]
    finally:
        gw.cfg = cfg


async def test_anonymous_is_sent_to_login(panel: PanelRig) -> None:
    anon = panel.anon
    r = await anon.get("/")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert (await anon.get("/api/overview")).status_code == 401
    assert (await anon.get("/points?format=json")).status_code == 401
    assert (await anon.get("/api/stream")).status_code == 401


async def test_a_rejected_provisioning_file_is_shown_on_the_overview(panel: PanelRig) -> None:
    """A bad provisioning file leaves the gateway up; the overview says what to fix (the journal does too)."""
    from gateway.provision.status import write_status

    client, _ = await panel.client(Role.VIEWER)
    assert "Provisioning" not in (await client.get("/")).text
    problem = "/boot/firmware/gateway.toml: sinks[cloud].urll (device -): unknown key; did you mean 'url'?"
    write_status(panel.gw.cfg.data_dir, ok=False, state="rejected", file=Path("/boot/firmware/gateway.toml"),
                 message="provisioning file rejected: 1 problem(s); the previous config is unchanged",
                 problems=[problem])
    page = (await client.get("/")).text
    assert "Provisioning: rejected" in page and "did you mean &#x27;url&#x27;?" in page
    data = (await client.get("/api/overview")).json()
    assert data["provisioning_problem"]["problems"] == [problem]
    write_status(panel.gw.cfg.data_dir, ok=True, state="provisioned", file=Path("/boot/firmware/gateway.toml"),
                 message="provisioned", problems=[])
    assert (await client.get("/api/overview")).json()["provisioning_problem"] is None

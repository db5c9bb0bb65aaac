"""The Protection page against a real gateway running the real protection process (the demo's settings groups, a
simulated feeder source with a fault so that there are trips and COMTRADE records): read-only for viewers and
operators, settings changes by engineers (validated like the config file, persisted, audited, stale → 409), the
group switch, record downloads (no path escapes), and the page of a gateway without protection."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config_load import load_config
from gateway.panel.app import build_panel_app, build_panel_context
from gateway.panel.roles import Role
from gateway.panel.sessions import SessionManager
from gateway.panel.users import UserStore
from gateway.protection_service import ProtectionService, override_path
from hil_tests.demo_ieds import build_servers
from protection.outputs import ModbusCoilOutputSpec
from protection.runtime import ProtectionRuntime
from protection.settings import OvercurrentSettings, ProtectionSettings
from protection.sources import SimulatedFeederSpec
from storefwd.store import Store
from tests.panel.conftest import FakeClock, PanelRig, substation_config
from tests.waiting import wait_for

WAIT_S = 30.0  # bound for a loaded CI machine; every wait ends as soon as its condition holds


def demo_protection() -> ProtectionSettings:
    with resources.as_file(resources.files("gateway") / "configs" / "demo.toml") as path:
        cfg, _ = load_config(path)
    return cfg.protection


@pytest.fixture
async def prot(tmp_path: Path) -> AsyncIterator[PanelRig]:
    """The panel rig with the protection process on: the demo's groups, measuring a simulated feeder that has a
    phase-A fault (×30 load) 0.3 s after each start of the process, for 0.4 s."""
    servers, feeders = build_servers(0, 0)
    for s in servers:
        await s.start()
    cfg = substation_config(tmp_path, servers[0].port, servers[1].port)
    runtime = ProtectionRuntime(
        period_ms=5.0, fifo_priority=0, pin_cpu=False, record_pre_ms=100.0, record_post_ms=200.0,
        source=SimulatedFeederSpec(fault_at_s=0.3, fault_factor=30.0, fault_duration_s=0.4, stale_after_s=0.1),
    )
    cfg = dataclasses.replace(cfg, protection=demo_protection(), protection_runtime=runtime)
    clock = FakeClock()
    try:
        async with Gateway(cfg) as gw:
            users = UserStore(tmp_path / "gw" / "panel" / "users.json")
            sessions = SessionManager(users, idle_s=3600, max_s=36000, clock=clock)
            ctx = build_panel_context(gw, users=users, sessions=sessions, tls=False)
            rig = PanelRig(gw, ctx, build_panel_app(gw, ctx), feeders, clock, servers)
            try:
                assert gw.protection is not None
                svc = gw.protection
                await wait_for(lambda: svc.state == "running", WAIT_S, "the protection process")
                yield rig
            finally:
                await rig.aclose()
    finally:
        for s in servers:
            await s.stop()


def svc_of(rig: PanelRig) -> ProtectionService:
    assert rig.gw.protection is not None
    return rig.gw.protection


def stored(rig: PanelRig, kind: str, point: str | None = None) -> list[dict[str, Any]]:
    assert rig.gw.store is not None
    rows: list[dict[str, Any]] = rig.gw.store.events_after(0, 100_000).to_pylist()
    return [e for e in rows if e["kind"] == kind and (point is None or e["point"] == point)]


def group1_with(svc: ProtectionService, name: str, **changes: Any) -> list[dict[str, Any]]:
    els = svc.settings_info()["groups"]["1"]
    return [{**e, **changes} if e["name"] == name else e for e in els]


async def test_viewer_sees_every_setting_with_its_unit_read_only(prot: PanelRig) -> None:
    c, _ = await prot.client(Role.VIEWER)
    r = await c.get("/protection")
    assert r.status_code == 200
    html = r.text
    for text in ("50P", "51P", "81U", "2000 A", "0.05 s", "IEC_SI", "49.5 Hz", "7.3 kV", "IEEE_VI", "in service"):
        assert text in html, text
    assert "<dialog" not in html and "data-edit" not in html and "data-switch-group" not in html
    d = (await c.get("/api/protection")).json()
    assert d["configured"] is True and d["process"]["state"] == "running"
    assert d["cycle"]["cycles"] > 0 and d["cycle"]["period_ms"] == 5.0 and d["can_edit"] is False
    assert {"lateness_p99_us", "lateness_p999_us", "max_exec_us", "sched_fifo", "cpu"} <= set(d["cycle"])
    states = {(e["group"], e["name"]): e["state"] for e in d["elements"]}
    assert states[(2, "51P")] == "standby" and states[(1, "59")] in ("armed", "picked up", "blocked")
    fifty = next(e for e in d["elements"] if e["name"] == "50P")
    assert fifty["pickup_a"] == 2000.0 and fifty["delay_s"] == 0.05
    schema = {f["key"]: f for f in d["schema"]["50"]}
    assert schema["pickup_a"]["unit"] == "A" and schema["delay_s"]["unit"] == "s"
    # operators read the same page, also without forms
    op, _ = await prot.client(Role.OPERATOR)
    assert "<dialog" not in (await op.get("/protection")).text
    eng, _ = await prot.client(Role.ENGINEER)
    page = (await eng.get("/protection")).text
    assert "<dialog" in page and "data-edit='1:50P'" in page and "data-switch-group" in page


async def test_engineer_change_is_applied_persisted_and_audited(prot: PanelRig) -> None:
    svc = svc_of(prot)
    c, _ = await prot.client(Role.ENGINEER)
    version = (await c.get("/api/protection")).json()["settings"]["version"]
    starts = svc.starts
    r = await c.post("/api/protection/settings",
                     json={"group": 1, "version": version, "elements": group1_with(svc, "51P", tms=0.2)})
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["applied"] == "restart" and res["old_version"] == version != res["version"]
    assert res["diff"] == [{"element": "51P", "change": "changed", "settings": {"tms": [0.1, 0.2]}}]
    # applied: the process is restarted with the new settings (planned: not counted as a failure)
    await wait_for(lambda: svc.starts == starts + 1 and svc.state == "running", WAIT_S, "the restart")
    assert svc.reloads == 1 and svc.restarts == 0
    assert next(e for e in svc.settings.group1 if e.name == "51P").tms == 0.2  # type: ignore[union-attr]
    assert any("restarting to apply new settings" in e["message"] and e["priority"] == 0
               for e in stored(prot, "alarm"))
    # audited, with the diff
    audit = stored(prot, "audit", "protection.settings")
    assert len(audit) == 1 and audit[0]["priority"] == 0 and "51P tms 0.1 → 0.2" in audit[0]["message"]
    data = json.loads(audit[0]["data"])
    assert data["user"] == "engineer" and data["diff"][0]["settings"]["tms"] == [0.1, 0.2]
    # persisted: a new supervisor (a gateway restart) takes the override over the config file, and says so
    path = override_path(prot.gw.cfg.data_dir)
    doc = json.loads(path.read_text())
    assert doc["changed_by"] == "engineer" and doc["version"] == res["version"]
    assert prot.gw.store is not None
    again = ProtectionService(prot.gw.cfg.protection, prot.gw.cfg.protection_runtime, prot.gw.store,
                              station="x", data_dir=prot.gw.cfg.data_dir)
    assert again.version == res["version"] and again.settings_source == "panel"
    assert any(p == 1 and "panel override" in m and "engineer" in m for p, m in again._notes)
    page = (await c.get("/protection")).text
    assert "panel override" in page and res["version"] in page


async def test_invalid_change_lists_every_problem_and_changes_nothing(prot: PanelRig) -> None:
    svc = svc_of(prot)
    c, _ = await prot.client(Role.ENGINEER)
    version, starts = svc.version, svc.starts
    els = group1_with(svc, "50P", pickup_a=-5.0)
    els = [({**e, "tmss": 0.1} if e["name"] == "51P" else e) for e in els]
    els.append({"type": "51", "name": "51X", "pickup_a": 300.0, "curve": "IEEE_VI", "tms": 0.1})
    r = await c.post("/api/protection/settings", json={"group": 1, "version": version, "elements": els})
    assert r.status_code == 400
    problems = {p["key"]: p["message"] for p in r.json()["problems"]}
    assert "out of range" in problems["protection.group1.elements[50P].pickup_a"]
    assert "did you mean 'tms'" in problems["protection.group1.elements[51P].tmss"]
    assert "protection.group1.elements[51X].td" in problems and "protection.group1.elements[51X].tms" in problems
    assert svc.version == version and svc.starts == starts and svc.reloads == 0
    assert not override_path(prot.gw.cfg.data_dir).exists() and not stored(prot, "audit", "protection.settings")
    # an element a trip output needs may not disappear (the process would refuse to start)
    svc.runtime = dataclasses.replace(svc.runtime, outputs=(ModbusCoilOutputSpec(name="cb", host="127.0.0.1",
                                                                                elements=("50P",)),))
    r = await c.post("/api/protection/settings", json={
        "group": 1, "version": version, "elements": [e for e in group1_with(svc, "x") if e["name"] != "50P"]})
    assert r.status_code == 400 and "trip output 'cb' needs element '50P'" in r.text
    for bad in ({"group": 3, "version": version, "elements": []}, {"group": 1, "elements": []},
                {"group": 1, "version": version, "elements": {"not": "a list"}}):
        r = await c.post("/api/protection/settings", json=bad)
        assert r.status_code == 400 and r.json()["error"], bad
    assert svc.version == version


async def test_operator_may_not_change_settings_or_group(prot: PanelRig) -> None:
    svc = svc_of(prot)
    c, _ = await prot.client(Role.OPERATOR)
    version = svc.version
    r = await c.post("/api/protection/settings",
                     json={"group": 1, "version": version, "elements": group1_with(svc, "50P", pickup_a=2500.0)})
    assert r.status_code == 403
    assert (await c.post("/api/protection/group", json={"group": 2})).status_code == 403
    assert svc.version == version and svc.settings.active_group == 1
    denied = stored(prot, "audit", "denied")
    assert len(denied) == 2 and all("engineer" in e["message"] for e in denied)


async def test_stale_version_is_refused(prot: PanelRig) -> None:
    svc = svc_of(prot)
    a, _ = await prot.client(Role.ENGINEER)
    b, _ = await prot.client(Role.ADMIN)
    version = svc.version
    r = await a.post("/api/protection/settings",
                     json={"group": 1, "version": version, "elements": group1_with(svc, "50P", pickup_a=2500.0)})
    assert r.status_code == 200
    after = svc.version
    r = await b.post("/api/protection/settings",
                     json={"group": 1, "version": version, "elements": group1_with(svc, "50P", pickup_a=3000.0)})
    assert r.status_code == 409 and r.json()["current_version"] == after
    assert svc.version == after and svc.settings_info()["groups"]["1"][0]["pickup_a"] == 2500.0
    assert len(stored(prot, "audit", "protection.settings")) == 1
    # the settings in force sent back unchanged: nothing to apply, no restart
    r = await b.post("/api/protection/settings",
                     json={"group": 1, "version": after, "elements": group1_with(svc, "x")})
    assert r.status_code == 200 and r.json()["applied"] == "unchanged" and svc.version == after
    assert len(stored(prot, "audit", "protection.settings")) == 1


async def test_fault_record_download_and_no_path_escape(prot: PanelRig) -> None:
    svc = svc_of(prot)
    c, _ = await prot.client(Role.VIEWER)
    await wait_for(lambda: bool(svc.records), WAIT_S, "a fault record")
    d = (await c.get("/api/protection")).json()
    rec = d["records"][0]
    assert rec["download"] == f"/protection/records/{rec['name']}.zip" and "50P" in rec["elements"]
    trip = d["last_trips"][-1]
    assert trip["element"] in ("50P", "51P") and trip["phases"] == "A" and trip["utc_ns"] > 0
    await wait_for(lambda: any("at_trip" in t for t in svc.last_trips), WAIT_S, "the trip's values")
    d = (await c.get("/api/protection")).json()
    t = next(t for t in d["last_trips"] if "at_trip" in t)
    assert t["at_trip"]["ia"] > 2000.0 and t["record"] == rec["name"]
    html = (await c.get("/protection")).text
    assert rec["download"] in html
    r = await c.get(rec["download"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert f'filename="{rec["name"]}.zip"' in r.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert sorted(z.namelist()) == [f"{rec['name']}.cfg", f"{rec['name']}.dat"]
        cfg = z.read(f"{rec['name']}.cfg").decode()
        assert ",2013" in cfg.splitlines()[0] and "BINARY" in cfg
        assert z.read(f"{rec['name']}.dat") == (svc.records_dir / f"{rec['name']}.dat").read_bytes()
    # only listed records: no traversal, no other file of the directory or the data dir
    (svc.records_dir / "notes.txt").write_text("not a record")
    (svc.records_dir / "orphan.dat").write_bytes(b"\0")
    for name in ("..%2F..%2Fpanel%2Fusers.json", "%2E%2E%2Fgw", "notes.txt", "notes", "orphan", "orphan.dat",
                 "users", f"{rec['name']}.dat", f"..%2F{rec['name']}"):
        r = await c.get(f"/protection/records/{name}")
        assert r.status_code == 404, name
    for name in ("..", "../panel/users.json", f"../fault-records/{rec['name']}", str(svc.records_dir / rec["name"])):
        assert svc.record_zip(name) is None, name  # (a client normalises dot segments away before sending them)
    assert (await prot.anon.get(rec["download"])).status_code in (303, 401)


async def test_group_switch_is_live_and_audited(prot: PanelRig) -> None:
    svc = svc_of(prot)
    c, _ = await prot.client(Role.ENGINEER)
    r = await c.post("/api/protection/group", json={"group": 2})
    assert r.status_code == 200 and r.json() == {"ok": True, "group": 2, "previous": 1}

    def active() -> int | None:
        st = svc.status().get("cycle") or {}
        return st.get("active_group")

    await wait_for(lambda: active() == 2, WAIT_S, "group 2 in service")
    d = (await c.get("/api/protection")).json()
    assert d["active_group"] == 2
    assert {(e["group"], e["name"]): e["state"] for e in d["elements"]}[(1, "50P")] == "standby"
    audit = stored(prot, "audit", "protection.group")
    assert len(audit) == 1 and "group 2 (was 1)" in audit[0]["message"] and audit[0]["priority"] == 0
    assert (await c.post("/api/protection/group", json={"group": 7})).status_code == 400
    assert svc.settings.active_group == 2  # a restart of the process keeps group 2 in service


async def test_page_without_protection(panel: PanelRig) -> None:
    c, _ = await panel.client(Role.ENGINEER)
    r = await c.get("/protection")
    assert r.status_code == 200 and "not configured" in r.text and "<dialog" not in r.text
    d = (await c.get("/api/protection")).json()
    assert d["configured"] is False and d["elements"] == []
    r = await c.post("/api/protection/settings", json={"group": 1, "version": "x", "elements": []})
    assert r.status_code == 409
    assert (await c.post("/api/protection/group", json={"group": 2})).status_code == 409
    assert (await c.get("/protection/records/anything.zip")).status_code == 404


async def test_override_file_that_is_not_valid_is_not_used(tmp_path: Path) -> None:
    path = override_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"group1": [{"type": "50", "name": "50P", "pickup_a": -1}]}))
    settings = ProtectionSettings(group1=(OvercurrentSettings(name="50P", type="50", pickup_a=600.0),))
    store = Store(tmp_path / "s.duckdb", commit_interval_ms=10)
    try:
        svc = ProtectionService(settings, ProtectionRuntime(), store, station="x", data_dir=tmp_path)
        assert svc.settings == settings and svc.settings_source == "config"
        assert any(p == 0 and "not used" in m and "pickup_a" in m for p, m in svc._notes)
    finally:
        store.close()

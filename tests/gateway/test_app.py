"""The daemon's own duties: comm-state events, status snapshot, clean start/stop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.config import DeviceConfig, GatewayConfig, LinkConfig, PanelConfig, PointConfig
from gateway.config_load import ConfigError, load_config
from hil_tests.modbus_sim import SimServer, SimUnit
from tests.waiting import wait_for


def config(tmp_path: Path, port: int) -> GatewayConfig:
    point = PointConfig(name="v", kind="holding", address=0, period_s=0.05)
    devices = tuple(
        DeviceConfig(name=f"d{u}", unit_id=u, timeout_s=0.2, backoff_min_s=0.1, backoff_max_s=0.2, points=(point,))
        for u in (1, 2)
    )
    link = LinkConfig(name="l", protocol="modbus_tcp", host="127.0.0.1", port=port, devices=devices)
    return GatewayConfig(id="gw", data_dir=tmp_path, links=(link,), panel=PanelConfig(port=0))


async def test_comm_loss_and_restore_become_events(tmp_path: Path) -> None:
    units = [SimUnit(1, holding=1), SimUnit(2, holding=1)]
    async with SimServer(units, tcp=("127.0.0.1", 0)) as sim, Gateway(config(tmp_path, sim.port)) as gw:
        await wait_for(lambda: all(d["state"] == "ok" for r in gw.runners for d in r.status()), what="both ok")
        assert await gw.record_comm_events() == 0  # coming up is not news
        units[1].silent = True
        await wait_for(lambda: any(d["state"] == "backoff" for r in gw.runners for d in r.status()), what="backoff")
        assert await gw.record_comm_events() == 1
        units[1].silent = False
        await wait_for(lambda: all(d["state"] == "ok" for r in gw.runners for d in r.status()), what="restored")
        assert await gw.record_comm_events() == 1
        assert gw.store is not None
        events = gw.store.events_after(0, 10).to_pylist()
    assert [(e["kind"], e["device"], e["priority"]) for e in events] == [("comm", "d2", 1), ("comm", "d2", 2)]
    assert "communication lost" in events[0]["message"] and "restored" in events[1]["message"]


async def test_status_snapshot_lists_devices_sinks_and_store(tmp_path: Path) -> None:
    units = [SimUnit(1, holding=1), SimUnit(2, holding=1)]
    units[0].holding[0] = 42
    async with SimServer(units, tcp=("127.0.0.1", 0)) as sim, Gateway(config(tmp_path, sim.port)) as gw:
        await wait_for(lambda: all(d["polls"] >= 2 for r in gw.runners for d in r.status()), what="polls")
        assert gw.store is not None
        await asyncio.to_thread(gw.store.flush)
        st = gw.status()
        assert gw.latest is not None
        assert gw.latest.value[gw.point_ids["d1.v"]] == 42.0
    assert st["gateway_id"] == "gw"
    assert [d["device"] for d in st["devices"]] == ["d1", "d2"]
    assert st["sinks"] == [] and st["store"]["last_seq"] >= 4


async def test_bad_protection_setting_raises_alarm_and_gateway_runs(tmp_path: Path) -> None:
    text = """
version = 1
[gateway]
id = "gw"
[panel]
port = 0
[[protection.group1.elements]]
type = "51"
name = "51P"
pickup_a = -5
curve = "IEC_SI"
tms = 0.1
[protection.source]
type = "simulated"
"""
    path = tmp_path / "site.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"elements\[51P\]\.pickup_a"):
        load_config(path)  # check-config is strict
    cfg, _ = load_config(path, strict_protection=False)
    assert len(cfg.protection_problems) == 1
    async with Gateway(cfg) as gw:
        assert gw.store is not None
        events = gw.store.events_after(0, 10).to_pylist()
    assert (events[0]["kind"], events[0]["priority"]) == ("alarm", 0)
    assert "51P" in events[0]["message"] and "pickup_a" in events[0]["message"]

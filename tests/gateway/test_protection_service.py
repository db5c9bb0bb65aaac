"""The gateway's protection supervisor against the real spawned process: SOE into the store, COMTRADE fault
records read back by the independent ``comtrade`` package, restart and alarm after a kill or a hang."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.protection_service import ProtectionService
from protection.runtime import ProtectionRuntime
from protection.settings import OvercurrentSettings, ProtectionSettings
from protection.sources import SimulatedFeederSpec
from storefwd.store import Store
from tests.waiting import wait_for

SETTINGS = ProtectionSettings(
    group1=(OvercurrentSettings(name="50P", type="50", pickup_a=600.0, delay_s=0.02),),
    group2=(OvercurrentSettings(name="50P-hi", type="50", pickup_a=6000.0),),
)
WAIT_S = 20.0  # bound for a loaded CI machine; each wait ends as soon as its condition holds


def events(store: Store) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = store.events_after(0, 100_000).to_pylist()
    return rows


def has(store: Store, kind: str, text: str) -> bool:
    return any(e["kind"] == kind and text in e["message"] for e in events(store))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "store.duckdb", commit_interval_ms=10)
    yield s
    s.close()


async def start(svc: ProtectionService) -> asyncio.Task[None]:
    return asyncio.create_task(svc.run())


async def stop(svc: ProtectionService, task: asyncio.Task[None]) -> None:
    svc.stop()
    await asyncio.wait_for(task, 30)


async def test_trip_is_stored_as_soe_and_a_comtrade_record_is_written(store: Store, tmp_path: Path) -> None:
    rt = ProtectionRuntime(
        period_ms=1.0, record_pre_ms=100.0, record_post_ms=200.0,
        source=SimulatedFeederSpec(fault_at_s=0.3, fault_factor=10.0),
    )
    svc = ProtectionService(SETTINGS, rt, store, station="sub-test", data_dir=tmp_path)
    task = await start(svc)
    try:
        await wait_for(lambda: has(store, "fault_record", "written"), WAIT_S, "the fault record event")
        soe = [e for e in events(store) if e["kind"] == "soe"]
        msgs = [e["message"] for e in soe]
        assert any(m.startswith("50P PICKUP") for m in msgs) and any("TRIP" in m for m in msgs)
        assert all(e["priority"] == 0 and e["device"] == "protection" for e in soe)
        trip = next(e for e in soe if "TRIP" in e["message"])
        raw = json.loads(trip["data"])
        assert raw["element"] == "50P" and raw["type"] == "50" and raw["utc_ns"] == trip["ts"]
        st = svc.status()
        assert st["state"] == "running" and st["last_trips"][0]["element"] == "50P"
        assert st["trips"]["50P"] >= 1  # counted for /metrics (gateway_protection_trips_total)
        assert st["elements"][0]["tripped"] is True and st["cycle"]["cycles"] > 0
        rec = json.loads(next(e for e in events(store) if e["kind"] == "fault_record")["data"])
        cfg = Path(rec["cfg"])
        assert cfg.parent == tmp_path / "fault-records" and cfg.exists() and Path(rec["dat"]).exists()
        assert st["records"] == [cfg.name]
    finally:
        await stop(svc, task)
    import comtrade  # the independent reader from PyPI

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the reader's own use of deprecated APIs
        c = comtrade.Comtrade()
        c.load(str(cfg), str(cfg.with_suffix(".dat")))
    assert c.rev_year in ("2013", 2013)
    names = [n.strip() for n in c.analog_channel_ids]
    ia = list(c.analog[names.index("IA")])
    t = list(c.time)
    trig = t.index(min(t, key=lambda x: abs(x - c.trigger_time)))  # trigger_time: seconds after the first sample
    assert t[trig] - t[0] >= 0.099  # ≥100 ms before the trip
    assert t[-1] - t[trig] >= 0.199  # ≥200 ms after it
    assert max(ia[trig:]) > 600.0 > ia[0]  # load current before, fault current after


async def test_killed_process_is_alarmed_and_restarted(store: Store, tmp_path: Path) -> None:
    rt = ProtectionRuntime(period_ms=5.0, source=SimulatedFeederSpec(), heartbeat_timeout_ms=500.0)
    svc = ProtectionService(SETTINGS, rt, store, station="sub-test", data_dir=tmp_path)
    task = await start(svc)
    try:
        await wait_for(lambda: svc.state == "running" and svc.handle is not None, WAIT_S, "the first start")
        assert svc.handle is not None
        first = svc.handle.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: has(store, "alarm", "protection process died"), WAIT_S, "the death alarm")
        await wait_for(lambda: svc.restarts == 1 and svc.state == "running", WAIT_S, "the restart")
        assert svc.handle is not None and svc.handle.pid != first and svc.handle.alive()
        alarm = next(e for e in events(store) if "protection process died" in e["message"])
        assert alarm["priority"] == 0 and "restarting" in alarm["message"]
    finally:
        await stop(svc, task)
    assert svc.state == "stopped"


async def test_hung_process_is_detected_by_heartbeat_and_replaced(store: Store, tmp_path: Path) -> None:
    rt = ProtectionRuntime(period_ms=5.0, source=SimulatedFeederSpec(), heartbeat_timeout_ms=300.0)
    svc = ProtectionService(SETTINGS, rt, store, station="sub-test", data_dir=tmp_path)
    task = await start(svc)
    try:
        await wait_for(lambda: svc.state == "running" and svc.handle is not None, WAIT_S, "the first start")
        assert svc.handle is not None and svc.handle.pid is not None
        os.kill(svc.handle.pid, signal.SIGSTOP)  # alive but not cycling
        await wait_for(lambda: has(store, "alarm", "unresponsive"), WAIT_S, "the heartbeat alarm")
        await wait_for(lambda: svc.restarts == 1 and svc.state == "running", WAIT_S, "the replacement")
    finally:
        await stop(svc, task)


async def test_group_switch_reaches_the_cycle_and_is_recorded(store: Store, tmp_path: Path) -> None:
    rt = ProtectionRuntime(period_ms=5.0, source=SimulatedFeederSpec())
    svc = ProtectionService(SETTINGS, rt, store, station="sub-test", data_dir=tmp_path)
    task = await start(svc)
    try:
        await wait_for(lambda: svc.state == "running", WAIT_S, "the start")
        with pytest.raises(ValueError):
            svc.switch_group(3)
        svc.switch_group(2)
        await wait_for(lambda: has(store, "soe", "settings group 2 in service"), WAIT_S, "the group switch event")
        assert svc.status()["cycle"]["active_group"] == 2
    finally:
        await stop(svc, task)


async def test_bad_source_file_raises_an_alarm_and_keeps_retrying(store: Store, tmp_path: Path) -> None:
    from protection.runtime import ComtradeFileSource

    rt = ProtectionRuntime(source=ComtradeFileSource(file=tmp_path / "missing.cfg"), restart_max_s=1.0)
    svc = ProtectionService(SETTINGS, rt, store, station="sub-test", data_dir=tmp_path)
    task = await start(svc)
    try:
        await wait_for(lambda: has(store, "alarm", "could not start"), WAIT_S, "the start alarm")
        assert "missing.cfg" in svc.last_error and svc.state in ("start failed", "starting")
    finally:
        await stop(svc, task)

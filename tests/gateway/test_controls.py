"""ControlService: select/operate/cancel sequence, interlocks, timeouts and the audit trail, through a real
LinkRunner to a pymodbus server over loopback (the DNP3 and IEC 61850 outcomes are tested with their drivers)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.config import DeviceConfig, LinkConfig, PointConfig
from gateway.controls import ControlService
from gateway.model import Event, ReadingBatch
from gateway.runner import LinkRunner
from hil_tests.modbus_sim import SimServer, SimUnit
from protocols.session import ControlAction, ControlMode, ControlRequest, ControlResult, ControlStatus
from tests.waiting import wait_for

S = ControlStatus


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000_000

    def __call__(self) -> int:
        return self.t


class Rig:
    def __init__(self, service: ControlService, runner: LinkRunner, unit: SimUnit, audit: list[Event]) -> None:
        self.service = service
        self.runner = runner
        self.unit = unit
        self.audit = audit

    def writes(self) -> list[tuple[str, int, list[Any]]]:
        return self.unit.written  # type: ignore[attr-defined]

    def audit_data(self) -> list[dict[str, Any]]:
        return [json.loads(e.data) for e in self.audit]


def points() -> tuple[PointConfig, ...]:
    return (
        PointConfig(name="setpoint", kind="holding", address=0, writable=True),
        PointConfig(name="breaker", kind="coil", address=0, writable=True),
        PointConfig(name="bad_addr", kind="holding", address=90, writable=True),
        PointConfig(name="reading", kind="holding", address=1),
    )


@pytest.fixture
async def rig() -> AsyncIterator[tuple[Rig, Clock]]:
    unit = SimUnit(1)
    written: list[tuple[str, int, list[Any]]] = []
    unit.written = written  # type: ignore[attr-defined]
    unit.on_write = lambda table, addr, values: written.append((table, addr, list(values)))
    async with SimServer([unit], tcp=("127.0.0.1", 0)) as srv:
        dev = DeviceConfig(name="d1", unit_id=1, timeout_s=0.3, points=points())
        link = LinkConfig(
            name="l1", protocol="modbus_tcp", host="127.0.0.1", port=srv.port, reconnect_min_s=0.05,
            reconnect_max_s=0.1, devices=(dev,),
        )
        ids = {f"d1.{p.name}": i for i, p in enumerate(dev.points)}
        batches: list[ReadingBatch] = []
        def sink(b: ReadingBatch) -> bool:
            batches.append(b)
            return True

        runner = LinkRunner(link, ids, sink, rng=random.Random(1))
        task = asyncio.create_task(runner.run())
        audit: list[Event] = []

        async def record(ev: Event) -> None:
            audit.append(ev)

        clock = Clock()
        service = ControlService(
            {"d1": runner}, {f"d1.{p.name}": p for p in dev.points}, record, select_timeout_s=5.0,
            operate_timeout_s=2.0, mono_ns=clock,
        )
        await wait_for(lambda: bool(batches), what="first poll")
        try:
            yield Rig(service, runner, unit, audit), clock
        finally:
            runner.stop()
            await asyncio.wait_for(task, 10)


def req(
    point: str = "setpoint", value: float = 42.0, mode: ControlMode = ControlMode.DIRECT, **kw: Any
) -> ControlRequest:
    origin = kw.pop("origin", "alice")
    return ControlRequest(device="d1", point=point, value=value, mode=mode, origin=origin, **kw)


async def test_direct_operate_writes_and_is_audited(rig: tuple[Rig, Clock]) -> None:
    r, _ = rig
    res = await r.service.execute(req(value=42))
    assert res == ControlResult(S.SUCCESS)
    assert r.writes() == [("holding", 0, [42])]
    assert [e.message for e in r.audit] == ["d1.setpoint: operate requested", "d1.setpoint: operate success"]
    assert all(e.kind == "control" and e.priority == 0 and e.device == "d1" for e in r.audit)
    assert r.audit_data()[-1] == {
        "action": "value", "value": 42.0, "mode": "direct", "origin": "alice", "status": "success", "detail": "",
        "code": -1,
    }


async def test_latch_on_off_write_a_coil_and_pulses_are_not_modbus(rig: tuple[Rig, Clock]) -> None:
    r, _ = rig
    assert (await r.service.execute(req("breaker", action=ControlAction.LATCH_ON))).ok
    assert (await r.service.execute(req("breaker", action=ControlAction.LATCH_OFF))).ok
    pulse = await r.service.execute(req("breaker", action=ControlAction.PULSE_ON))
    assert pulse.status is S.NOT_SUPPORTED
    assert r.writes() == [("coil", 0, [True]), ("coil", 0, [False])]


async def test_sbo_select_then_operate(rig: tuple[Rig, Clock]) -> None:
    r, _ = rig
    sbo = req(value=7, mode=ControlMode.SBO)
    assert (await r.service.select(sbo)).ok
    assert r.writes() == []  # a select sends nothing over Modbus
    sel = r.service.selection("d1", "setpoint")
    assert sel is not None and sel["origin"] == "alice" and sel["value"] == 7.0
    assert (await r.service.operate(sbo)).ok
    assert r.writes() == [("holding", 0, [7])]
    assert r.service.selection("d1", "setpoint") is None  # the operate ended the selection
    second = await r.service.operate(sbo)
    assert second.status is S.NO_SELECT and len(r.writes()) == 1


async def test_sbo_refusals_never_touch_the_device(rig: tuple[Rig, Clock]) -> None:
    r, clock = rig
    sbo = req(value=7, mode=ControlMode.SBO)
    assert (await r.service.operate(sbo)).status is S.NO_SELECT  # operate without select
    assert (await r.service.select(sbo)).ok
    other = await r.service.select(req(value=7, mode=ControlMode.SBO, origin="bob"))
    assert other.status is S.REJECTED and "selected by alice" in other.detail
    changed = await r.service.operate(req(value=8, mode=ControlMode.SBO))  # not what was selected
    assert changed.status is S.NO_SELECT and "selected by alice" in changed.detail
    clock.t += 6_000_000_000  # past select_timeout_s
    late = await r.service.operate(sbo)
    assert late.status is S.SELECT_TIMEOUT
    assert r.writes() == []
    assert (await r.service.select(req(mode=ControlMode.DIRECT))).status is S.REJECTED  # select needs sbo


async def test_cancel_ends_a_selection(rig: tuple[Rig, Clock]) -> None:
    r, _ = rig
    sbo = req(value=3, mode=ControlMode.SBO)
    assert (await r.service.select(sbo)).ok
    assert (await r.service.cancel(sbo)).ok
    assert (await r.service.operate(sbo)).status is S.NO_SELECT
    assert (await r.service.cancel(sbo)).status is S.NO_SELECT
    assert r.writes() == []


async def test_interlocks_refuse_before_anything_is_sent(rig: tuple[Rig, Clock]) -> None:
    r, _ = rig
    r.service.add_interlock(lambda q: "earth switch closed" if q.value > 100 else None, "d1.setpoint")

    def broken(q: ControlRequest) -> str | None:
        raise RuntimeError("hook bug")

    r.service.add_interlock(broken, "d1.breaker")
    high = await r.service.execute(req(value=500))
    assert high == ControlResult(S.INTERLOCKED, "earth switch closed")
    hook_bug = await r.service.execute(req("breaker", action=ControlAction.LATCH_ON))
    assert hook_bug.status is S.INTERLOCKED and "hook bug" in hook_bug.detail  # a failing hook refuses
    assert (await r.service.execute(req(value=50))).ok  # the interlock allows this one
    assert r.writes() == [("holding", 0, [50])]
    assert "d1.setpoint: operate interlocked (earth switch closed)" in [e.message for e in r.audit]


async def test_read_only_and_unknown_points_are_rejected(rig: tuple[Rig, Clock]) -> None:
    r, _ = rig
    ro = await r.service.execute(req("reading"))
    assert ro.status is S.REJECTED and "not writable" in ro.detail
    unknown = await r.service.execute(req("nope"))
    assert unknown.status is S.REJECTED and "no point d1.nope" in unknown.detail
    too_big = await r.service.execute(req(value=70000))  # does not fit a uint16
    assert too_big.status is S.REJECTED
    assert r.writes() == []


async def test_device_refusal_and_silence(rig: tuple[Rig, Clock]) -> None:
    r, _ = rig
    r.unit.exception = {"holding": 2}
    refused = await r.service.execute(req("bad_addr"))
    assert refused.status is S.NOT_SUPPORTED and refused.code == 2
    r.unit.exception = {"holding": 4}
    failure = await r.service.execute(req())
    assert failure.status is S.HARDWARE_ERROR and failure.code == 4
    r.unit.exception = {}
    r.unit.silent = True
    silent = await r.service.execute(req())
    assert silent.status is S.NO_RESPONSE and "outcome unknown" in silent.detail
    r.unit.silent = False
    statuses = [d["status"] for d in r.audit_data() if "status" in d]
    assert statuses == ["not_supported", "hardware_error", "no_response"]


async def test_a_device_slower_than_the_operate_timeout_is_no_response() -> None:
    class Slow:
        async def select(self, request: ControlRequest) -> ControlResult:
            return ControlResult(S.SUCCESS)

        async def operate(self, request: ControlRequest) -> ControlResult:
            await asyncio.Event().wait()  # never answers
            return ControlResult(S.SUCCESS)

        async def cancel(self, request: ControlRequest) -> ControlResult:
            return ControlResult(S.SUCCESS)

    audit: list[Event] = []

    async def record(ev: Event) -> None:
        audit.append(ev)

    p = PointConfig(name="x", kind="holding", address=0, writable=True)
    svc = ControlService({"d1": Slow()}, {"d1.x": p}, record, operate_timeout_s=0.05)
    res = await svc.execute(req("x"))
    assert res.status is S.NO_RESPONSE and "outcome unknown" in res.detail
    assert audit[-1].message.startswith("d1.x: operate no_response")


async def test_a_link_that_is_down_sends_nothing() -> None:
    async with SimServer([SimUnit(1)], tcp=("127.0.0.1", 0)) as srv:
        port = srv.port  # a port that was just free: nothing listens on it after this block
    p = PointConfig(name="x", kind="holding", address=0, writable=True)
    link = LinkConfig(
        name="l1", protocol="modbus_tcp", host="127.0.0.1", port=port, connect_timeout_s=0.2,
        devices=(DeviceConfig(name="d1", points=(p,)),),
    )
    runner = LinkRunner(link, {"d1.x": 0}, lambda b: True)
    audit: list[Event] = []

    async def record(ev: Event) -> None:
        audit.append(ev)

    svc = ControlService({"d1": runner}, {"d1.x": p}, record)
    res = await svc.execute(req("x"))
    assert res.status is S.LINK_DOWN and "not connected" in res.detail
    assert [e.message for e in audit] == [
        "d1.x: operate requested",
        "d1.x: operate link_down (link l1 is not connected)",
    ]

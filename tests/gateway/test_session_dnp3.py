"""SessionRunner + the DNP3 driver + ControlService against the demo's DNP3 RTU (a dnp3py outstation over
loopback): the whole way from a feeder model to readings, a trip by select-before-operate, and a lost RTU.

The driver's protocol corners are tested against opendnp3 in ``tests/protocols/test_dnp3.py``; this test checks
that the pieces fit the way the gateway and the demo use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Mapping

import numpy as np
import pytest

from gateway.config import DeviceConfig, Dnp3Settings, LinkConfig, PointConfig
from gateway.controls import ControlService
from gateway.drivers import driver_factory
from gateway.model import Event, ReadingBatch
from gateway.session_runner import Q_LOST, SessionRunner
from hil_tests.demo_rtu import DemoRtu
from hil_tests.net import free_port
from protocols.session import ControlAction, ControlMode, ControlRequest, ControlStatus
from tests.waiting import wait_for

POINTS = (
    PointConfig(name="Ia", kind="analog_input", address=0, scale=0.1, unit="A"),
    PointConfig(name="f", kind="analog_input", address=7, scale=0.001, unit="Hz"),
    PointConfig(name="breaker_closed", kind="binary_input", address=0),
    PointConfig(name="trip", kind="binary_output", address=0, writable=True),
)


class Store:
    def __init__(self, ids: Mapping[str, int]) -> None:
        self.batches: list[ReadingBatch] = []
        self.ids = ids

    def __call__(self, b: ReadingBatch) -> bool:
        self.batches.append(b)
        return True

    def values(self, point: str) -> list[tuple[float, int]]:
        if not self.batches:
            return []
        b = ReadingBatch.concat(self.batches)
        m = b.point_id == self.ids[f"feeder4.{point}"]
        return list(zip(b.value[m].tolist(), b.quality[m].tolist(), strict=True))


async def tick_forever(rtu: DemoRtu) -> None:
    while True:
        rtu.tick(time.time())
        await asyncio.sleep(0.05)  # the RTU's own update rate (a simulated device's clock, not a test wait)


@pytest.fixture
async def rtu_port() -> AsyncIterator[int]:
    yield free_port()


async def start_rtu(port: int) -> tuple[DemoRtu, asyncio.Task[None]]:
    rtu = DemoRtu(port)
    rtu.tick(time.time())
    await rtu.start()
    return rtu, asyncio.create_task(tick_forever(rtu))


async def stop_rtu(rtu: DemoRtu, ticker: asyncio.Task[None]) -> None:
    ticker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticker
    await rtu.stop()


async def test_readings_trip_by_sbo_and_a_lost_rtu(rtu_port: int) -> None:
    link = LinkConfig(
        name="rtu", protocol="dnp3_tcp", host="127.0.0.1", port=rtu_port, connect_timeout_s=1.0,
        reconnect_min_s=0.05, reconnect_max_s=0.2,
        devices=(
            DeviceConfig(
                name="feeder4", timeout_s=2.0, points=POINTS,
                dnp3=Dnp3Settings(class1_period_s=0.1, class2_period_s=0.1, class3_period_s=0, integrity_period_s=0),
            ),
        ),
    )
    ids = {f"feeder4.{p.name}": i for i, p in enumerate(POINTS)}
    store = Store(ids)
    rtu, ticker = await start_rtu(rtu_port)
    runner = SessionRunner(link, ids, store, driver_factory=driver_factory("dnp3_tcp"), rng=random.Random(1))
    task = asyncio.create_task(runner.run())
    audit: list[Event] = []

    async def record(ev: Event) -> None:
        audit.append(ev)

    controls = ControlService({"feeder4": runner}, {f"feeder4.{p.name}": p for p in POINTS}, record)
    try:
        await wait_for(
            lambda: any(v == 1.0 and q & 0x3 == 0 for v, q in store.values("breaker_closed")), what="breaker closed"
        )
        await wait_for(lambda: bool(store.values("f")), what="frequency")
        f = store.values("f")[-1][0]
        assert 49.0 < f < 51.0  # scaled back from mHz by the point's scale
        trip = ControlRequest(
            device="feeder4", point="trip", action=ControlAction.PULSE_ON, mode=ControlMode.SBO, origin="op1"
        )
        res = await controls.execute(trip)
        assert res.status is ControlStatus.SUCCESS, res
        await wait_for(lambda: any(v == 0.0 for v, _ in store.values("breaker_closed")), what="breaker open event")
        assert [e.message.split(": ", 1)[1] for e in audit] == [
            "select requested", "select success", "operate requested", "operate success"
        ]
        unsupported = await controls.execute(
            ControlRequest(device="feeder4", point="trip", action=ControlAction.PULSE_OFF, origin="op1")
        )
        assert unsupported.status is ControlStatus.NOT_SUPPORTED  # the RTU's own answer, decoded

        await stop_rtu(rtu, ticker)  # the RTU goes away
        await wait_for(lambda: any(q == Q_LOST for _, q in store.values("Ia")), what="points marked lost")
        assert runner.status()[0]["state"] == "disconnected"
        down = await controls.execute(ControlRequest(device="feeder4", point="trip", action=ControlAction.PULSE_ON))
        assert down.status is ControlStatus.LINK_DOWN

        rtu, ticker = await start_rtu(rtu_port)  # back on the same port
        n = len(store.values("Ia"))
        await wait_for(lambda: runner.status()[0]["reconnects"] >= 1 and len(store.values("Ia")) > n,
                       what="reconnect and fresh values")
        v, q = store.values("Ia")[-1]
        assert q != Q_LOST and not np.isnan(v)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 10)
        await stop_rtu(rtu, ticker)

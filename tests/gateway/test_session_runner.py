"""SessionRunner policy (reconnect, schedule, quality on loss, back-pressure, controls) with a scripted driver.

The driver here is a test double of *our own* interface (:class:`protocols.session.SessionDriver`), so the
runner's policy can be driven into every corner; the protocol drivers themselves are tested against real
outstations and servers in ``tests/protocols``.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from gateway.config import DeviceConfig, LinkConfig, PointConfig
from gateway.model import Event, Q, ReadingBatch
from gateway.session_runner import Q_LOST, SessionRunner
from protocols.session import (
    ControlRequest,
    ControlResult,
    ControlStatus,
    Deliver,
    DriverError,
    Job,
    SessionLost,
)
from tests.waiting import wait_for

DEVICE_TS = 1_700_000_000_000_000_000  # the "device's" own timestamps


class ScriptedDriver:
    """Delivers an integrity snapshot at start and one event per job; failures are switched on by the test."""

    def __init__(self, link: LinkConfig, point_ids: Mapping[str, int], deliver: Deliver) -> None:
        self.ids = [point_ids[f"{link.devices[0].name}.{p.name}"] for p in link.devices[0].points]
        self.deliver = deliver
        self._connected = False
        self.refuse_connects = 0  # the next N connects fail
        self.fail_next_job = False  # DriverError (session kept)
        self.drop_next_job = False  # SessionLost
        self.starts = 0
        self.jobs_run = 0
        self.spontaneous: asyncio.Queue[float] = asyncio.Queue()
        self.controls: list[tuple[str, ControlRequest]] = []
        self.value = 1.0
        self.overflows = 0  # a counter the runner turns into alarms

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        if self.refuse_connects > 0:
            self.refuse_connects -= 1
            raise SessionLost("connection refused")
        self._connected = True

    async def start_session(self) -> None:
        self.starts += 1
        n = len(self.ids)
        self.deliver(ReadingBatch.of(np.full(n, DEVICE_TS), self.ids, np.full(n, self.value), 0))

    def jobs(self) -> Sequence[Job]:
        return [Job("events", 0.01)]

    async def run_job(self, name: str) -> None:
        assert name == "events"
        if self.drop_next_job:
            self.drop_next_job = False
            self._connected = False
            raise SessionLost("outstation stopped answering")
        if self.fail_next_job:
            self.fail_next_job = False
            raise DriverError("object unknown")
        self.jobs_run += 1
        self.deliver(ReadingBatch.of([DEVICE_TS + self.jobs_run], [self.ids[0]], [self.value], 0))

    async def idle(self, timeout_s: float) -> None:
        try:
            v = await asyncio.wait_for(self.spontaneous.get(), timeout_s)
        except TimeoutError:
            return
        self.deliver(ReadingBatch.of([DEVICE_TS], [self.ids[1]], [v], 0))

    async def select(self, request: ControlRequest) -> ControlResult:
        self.controls.append(("select", request))
        return ControlResult(ControlStatus.SUCCESS)

    async def operate(self, request: ControlRequest) -> ControlResult:
        self.controls.append(("operate", request))
        return ControlResult(ControlStatus.SUCCESS)

    async def cancel(self, request: ControlRequest) -> ControlResult:
        self.controls.append(("cancel", request))
        if request.point == "b":  # a driver that breaks its contract and raises
            self._connected = False
            raise SessionLost("connection reset during cancel")
        return ControlResult(ControlStatus.SUCCESS)

    def status(self) -> dict[str, object]:
        return {"starts": self.starts, "overflows": self.overflows}

    def close(self) -> None:
        self._connected = False


LINK = LinkConfig(
    name="rtu",
    protocol="dnp3_tcp",
    host="127.0.0.1",
    port=20000,
    reconnect_min_s=0.01,
    reconnect_max_s=0.02,
    devices=(
        DeviceConfig(
            name="rtu1",
            points=(PointConfig(name="a", kind="analog_input", address=0),
                    PointConfig(name="b", kind="binary_input", address=0)),
        ),
    ),
)
IDS = {"rtu1.a": 7, "rtu1.b": 3}


class Sink:
    def __init__(self) -> None:
        self.batches: list[ReadingBatch] = []
        self.accept = True
        self.offers = 0

    def __call__(self, batch: ReadingBatch) -> bool:
        self.offers += 1
        if not self.accept:
            return False
        self.batches.append(batch)
        return True

    def rows(self, pid: int) -> list[tuple[int, float, int]]:
        b = ReadingBatch.concat(self.batches)
        m = b.point_id == pid
        return list(zip(b.ts[m].tolist(), b.value[m].tolist(), b.quality[m].tolist(), strict=True))


class Running:
    def __init__(self, sink: Sink) -> None:
        self.drivers: list[ScriptedDriver] = []
        self.events: list[Event] = []

        def factory(link: LinkConfig, ids: Mapping[str, int], deliver: Deliver) -> ScriptedDriver:
            d = ScriptedDriver(link, ids, deliver)
            self.drivers.append(d)
            return d

        self.runner = SessionRunner(
            LINK, IDS, sink, driver_factory=factory, rng=random.Random(1), on_event=self.events.append
        )
        self.task: asyncio.Task[None] | None = None

    @property
    def driver(self) -> ScriptedDriver:
        return self.drivers[0]

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.runner.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.runner.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)


def status(r: SessionRunner) -> dict[str, Any]:
    return r.status()[0]


async def test_start_delivers_device_time_and_jobs_run_on_schedule() -> None:
    sink = Sink()
    async with Running(sink) as run:
        await wait_for(lambda: run.driver.jobs_run >= 3, what="three event polls")
        st = status(run.runner)
        assert st["state"] == "ok" and st["device"] == "rtu1" and st["link"] == "rtu"
        assert st["polls"] >= 3 and st["reconnects"] == 0
        assert st["protocol"] == {"name": "dnp3_tcp", "starts": 1, "overflows": 0}
        assert not math.isnan(st["lateness_p99_ms"])
    rows = sink.rows(7)
    assert rows[0] == (DEVICE_TS, 1.0, 0)  # the device's own time and quality, untouched
    assert rows[1][0] == DEVICE_TS + 1
    old = int(Q.QUESTIONABLE | Q.OLD_DATA | Q.GATEWAY_TIME)
    assert rows[-1][1:] == (1.0, old) and sink.rows(3)[-1][1:] == (1.0, old)  # stop: old-data once, last value


async def test_spontaneous_traffic_is_delivered_between_jobs() -> None:
    sink = Sink()
    async with Running(sink) as run:
        await wait_for(lambda: run.runner.up, what="session up")
        run.driver.spontaneous.put_nowait(5.0)
        await wait_for(lambda: (DEVICE_TS, 5.0, 0) in sink.rows(3), what="unsolicited value")


async def test_lost_session_marks_points_once_then_reconnects_and_restarts() -> None:
    sink = Sink()
    async with Running(sink) as run:
        await wait_for(lambda: run.driver.jobs_run >= 1, what="first job")
        run.driver.value = 2.0
        run.driver.drop_next_job = True
        await wait_for(lambda: run.driver.starts == 2, what="second session start")
        await wait_for(lambda: status(run.runner)["reconnects"] == 1, what="reconnect counted")
        st = status(run.runner)
        assert st["timeouts"] == 1 and st["state"] == "ok"
    a = sink.rows(7)
    lost = [r for r in a if r[2] == Q_LOST]
    assert len(lost) == 1 and lost[0][1] == 1.0  # once, with the last value
    after = a[a.index(lost[0]) + 1]
    assert after == (DEVICE_TS, 2.0, 0)  # the restart's integrity snapshot replaces it
    assert next(r for r in sink.rows(3) if r[2] == Q_LOST)[1] == 1.0


async def test_connect_refused_backs_off_and_marks_never_read_points_once() -> None:
    sink = Sink()
    run = Running(sink)
    run.driver.refuse_connects = 4
    async with run:
        await wait_for(lambda: run.runner.up, what="session up after refusals")
        st = status(run.runner)
        assert st["timeouts"] == 4 and st["reconnects"] == 0  # the first success is not a reconnect
    a = sink.rows(7)
    assert math.isnan(a[0][1]) and a[0][2] == Q_LOST  # never read: NaN, failure — and only once
    assert sum(1 for r in a if r[2] == Q_LOST) == 1


async def test_a_failed_job_is_counted_and_the_session_goes_on() -> None:
    sink = Sink()
    async with Running(sink) as run:
        await wait_for(lambda: run.driver.jobs_run >= 1, what="first job")
        run.driver.fail_next_job = True
        await wait_for(lambda: status(run.runner)["errors"] == 1, what="error counted")
        n = run.driver.jobs_run
        await wait_for(lambda: run.driver.jobs_run > n, what="next job")
        assert run.driver.starts == 1 and status(run.runner)["reconnects"] == 0


async def test_backpressure_keeps_everything_in_order() -> None:
    sink = Sink()
    async with Running(sink) as run:
        await wait_for(lambda: run.driver.jobs_run >= 1, what="first job")
        sink.accept = False
        offers = sink.offers
        await wait_for(lambda: sink.offers > offers + 3, what="refused offers")
        stalled = run.driver.jobs_run
        await wait_for(lambda: sink.offers > offers + 6, what="more refused offers")
        assert run.driver.jobs_run == stalled  # no new work while the store cannot take the last
        sink.accept = True
        await wait_for(lambda: run.driver.jobs_run > stalled + 2, what="jobs resume")
    ts = [r[0] for r in sink.rows(7) if r[2] == 0]
    assert ts == sorted(ts) and len(ts) == len(set(ts))  # in order, nothing lost or doubled


async def test_controls_go_to_the_driver_when_up_and_link_down_otherwise() -> None:
    sink = Sink()
    run = Running(sink)
    run.driver.refuse_connects = 1_000_000
    req = ControlRequest(device="rtu1", point="a", value=1.0)
    async with run:
        res = await run.runner.operate(req)
        assert res.status is ControlStatus.LINK_DOWN and run.driver.controls == []
        run.driver.refuse_connects = 0
        await wait_for(lambda: run.runner.up, what="session up")
        assert (await run.runner.select(req)).ok
        assert (await run.runner.operate(req)).ok
        assert (await run.runner.cancel(req)).ok
        assert [c[0] for c in run.driver.controls] == ["select", "operate", "cancel"]
        broken = await run.runner.cancel(ControlRequest(device="rtu1", point="b"))
        assert broken.status is ControlStatus.NO_RESPONSE and "connection reset" in broken.detail
        await wait_for(lambda: run.driver.starts == 2, what="the runner reconnects after the lost session")


def test_a_link_with_two_devices_or_unknown_points_is_refused() -> None:
    two = LinkConfig(name="x", protocol="dnp3_tcp", devices=(LINK.devices[0], LINK.devices[0]))
    with pytest.raises(ValueError, match="link x: a dnp3_tcp link has exactly one device"):
        SessionRunner(two, IDS, Sink(), driver_factory=ScriptedDriver)
    with pytest.raises(ValueError, match=r"link rtu: no point id for rtu1\.b"):
        SessionRunner(LINK, {"rtu1.a": 1}, Sink(), driver_factory=ScriptedDriver)


async def test_a_growing_device_counter_becomes_one_alarm_event() -> None:
    sink = Sink()
    run = Running(sink)
    run.driver.overflows = 2  # already counted at the session start
    async with run:
        await wait_for(lambda: len(run.events) == 1, what="alarm for the overflows at start")
        run.driver.overflows = 3
        await wait_for(lambda: len(run.events) == 2, what="alarm for one more overflow")
        n = run.driver.jobs_run
        await wait_for(lambda: run.driver.jobs_run > n + 60, what="more jobs (over one alarm check period)")
    first, second = run.events
    assert first.kind == "alarm" and first.priority == 1 and first.device == "rtu1"
    assert "event buffer overflowed" in first.message and "(2 more, 2 in all)" in first.message
    assert "(1 more, 3 in all)" in second.message

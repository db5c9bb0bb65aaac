"""The DNP3 driver against the real opendnp3 outstation (yadnp3) over loopback, and byte-level fakes for
malformed input (garbage, a fragment cut off mid-way, broken objects, silence)."""

from __future__ import annotations

import asyncio
import contextlib
import platform
import struct
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.config import PointConfig
from gateway.model import Q
from protocols.dnp3 import Dnp3Session
from protocols.session import (
    ControlAction,
    ControlMode,
    ControlRequest,
    ControlStatus,
    DriverError,
    SessionLost,
)
from tests.protocols.dnp3_helpers import (
    DEVICE,
    FakeOutstation,
    Sink,
    dnp3_link,
    link_frames,
    point_ids,
    response_apdu,
)
from tests.waiting import wait_for, wait_for_async

if platform.machine() != "x86_64":
    pytest.skip("yadnp3 (the opendnp3 test outstation) ships x86_64 wheels only", allow_module_level=True)

from hil_tests.dnp3_outstation import (
    OutstationSim,
    analog,
    analog_output,
    binary,
    binary_output,
    counter,
    double_bit,
)

POINTS = (
    PointConfig(name="bi0", kind="binary_input", address=0),
    PointConfig(name="bi1", kind="binary_input", address=1),
    PointConfig(name="db0", kind="double_bit_input", address=0),
    PointConfig(name="db1", kind="double_bit_input", address=1),
    PointConfig(name="ai0", kind="analog_input", address=0),
    PointConfig(name="ai1", kind="analog_input", address=1, scale=0.5, offset=10.0),
    PointConfig(name="ai2", kind="analog_input", address=2),
    PointConfig(name="ai3", kind="analog_input", address=3),
    PointConfig(name="c0", kind="counter", address=0),
    PointConfig(name="c1", kind="counter", address=1),
    PointConfig(name="bo0", kind="binary_output", address=0, writable=True),
    PointConfig(name="bo1", kind="binary_output", address=1, writable=True),
    PointConfig(name="bo2", kind="binary_output", address=2),  # not writable
    PointConfig(name="ao0", kind="analog_output", address=0, writable=True, scale=0.1),
    PointConfig(name="ao1", kind="analog_output", address=1, writable=True),
)
T0_MS = 1_700_000_000_123  # a source time the outstation stamps on events (UTC ms)
WALL_NS = 1_800_000_000_000_000_000  # our injected wall clock (UTC ns)


def wall() -> int:
    return WALL_NS


def iin_flags(d: Dnp3Session) -> list[str]:
    flags = d.status()["iin_flags"]
    assert isinstance(flags, list)
    return flags


def stat(d: Dnp3Session, key: str) -> int:
    value = d.status()[key]
    assert isinstance(value, int)
    return value


def make(port: int, sink: Sink, *, timeout_s: float = 2.0, timed_events: bool | None = None,
         **settings: object) -> Dnp3Session:
    link = dnp3_link(port, POINTS, timeout_s=timeout_s, **settings)
    return Dnp3Session(link, point_ids(POINTS), sink, wall_ns=wall, timed_events=timed_events)


@pytest.fixture
def sim() -> Iterator[OutstationSim]:
    with OutstationSim(points=10) as s:
        yield s


@pytest.fixture
def sink() -> Sink:
    return Sink(POINTS)


@contextlib.asynccontextmanager
async def session(driver: Dnp3Session, *, start: bool = True) -> AsyncIterator[Dnp3Session]:
    try:
        await driver.connect()
        if start:
            await driver.start_session()
        yield driver
    finally:
        driver.close()


@pytest.fixture
async def drv(sim: OutstationSim, sink: Sink) -> AsyncIterator[Dnp3Session]:
    async with session(make(sim.port, sink)) as d:
        yield d


def control(point: str, action: ControlAction = ControlAction.VALUE, *, mode: ControlMode = ControlMode.DIRECT,
            value: float = 0.0, on_time_ms: int = 1000, off_time_ms: int = 0, count: int = 1) -> ControlRequest:
    return ControlRequest(device=DEVICE, point=point, action=action, value=value, mode=mode,
                          on_time_ms=on_time_ms, off_time_ms=off_time_ms, count=count, origin="test")


# --------------------------------------------------------------------------------------- integrity / static


async def test_integrity_poll_values_restart_clear_and_truncation(sim: OutstationSim, sink: Sink) -> None:
    sim.apply(binary(0, True), double_bit(0, 2), double_bit(1, 3), analog(0, 42.0), analog(1, 100.0),
              counter(0, 7), binary_output(0, True), analog_output(0, 250.0))
    async with session(make(sim.port, sink)) as d:
        st = d.status()
        assert st["integrity_polls"] == 1 and st["restart_clears"] == 1
        expect = {"bi0": 1.0, "db0": 2.0, "db1": 3.0, "ai0": 42.0, "ai1": 60.0, "c0": 7.0, "bo0": 1.0,
                  "ao0": 25.0}
        for name, value in expect.items():
            ts, v, q = sink.last(name)
            assert (v, ts) == (value, WALL_NS), name
            assert q == Q.GATEWAY_TIME, name  # static data: receive time, flags ONLINE
        _, v, q = sink.last("bi1")  # never updated since the outstation started: RESTART, not ONLINE
        assert v == 0.0 and q == Q.INVALID | Q.OLD_DATA | Q.FAILURE | Q.GATEWAY_TIME
        # the outstation has 10 points of each type; the config names a few: the rest are ignored and counted
        assert st["ignored_points"] == 7 * 10 - len(POINTS)  # 7 types (frozen counters too) of 10
        assert st["ignored_values"] == st["ignored_points"]
        # its g50v4 time-and-interval points are an object dnp3py cannot size: alarm, values before it kept
        assert st["truncated"] == 1
        assert "DEVICE_RESTART" not in iin_flags(d)
        await d.run_job("class1")
        assert "DEVICE_RESTART" not in iin_flags(d) and stat(d, "restarts") == 1


async def test_flags_map_to_quality(sim: OutstationSim, sink: Sink) -> None:
    sim.apply(analog(0, 1.0, flags=0x05), analog(1, 2.0, flags=0x00), analog(2, 3.0, flags=0x21),
              analog(3, 4.0, flags=0x09), binary(0, True, flags=0x21), binary(1, False, flags=0x11),
              counter(0, 5, flags=0x41), counter(1, 6, flags=0x03))
    async with session(make(sim.port, sink)):
        g = Q.GATEWAY_TIME
        assert sink.last("ai0")[2] == Q.QUESTIONABLE | Q.OLD_DATA | Q.FAILURE | g  # COMM_LOST
        assert sink.last("ai1")[2] == Q.INVALID | Q.FAILURE | g  # not ONLINE
        assert sink.last("ai2")[2] == Q.QUESTIONABLE | Q.OVERFLOW | Q.OUT_OF_RANGE | g  # OVER_RANGE
        assert sink.last("ai3")[2] == Q.SUBSTITUTED | g  # REMOTE_FORCED
        assert sink.last("bi0")[1:] == (1.0, Q.QUESTIONABLE | Q.OSCILLATORY | g)  # CHATTER_FILTER
        assert sink.last("bi1")[2] == Q.SUBSTITUTED | g  # LOCAL_FORCED
        assert sink.last("c0")[2] == Q.QUESTIONABLE | Q.INCONSISTENT | g  # DISCONTINUITY
        assert sink.last("c1")[2] == Q.INVALID | Q.OLD_DATA | g  # RESTART


# ------------------------------------------------------------------------------------------------ events


async def test_event_polls_per_class_keep_every_event(sim: OutstationSim, sink: Sink,
                                                      drv: Dnp3Session) -> None:
    sink.clear()
    sim.apply(binary(0, False), analog(0, 1.0))
    sim.apply(binary(0, True), analog(0, 2.0))
    sim.apply(binary(0, False), analog(0, 3.0))
    sim.apply(binary(0, True))
    await drv.run_job("class2")  # opendnp3 puts every point in class 1: nothing for class 2/3
    await drv.run_job("class3")
    assert sink.count() == 0
    await drv.run_job("class1")
    # every event, in order (SOE); the first is bi0's flags changing from RESTART to ONLINE
    assert [v for _, v, _ in sink.rows("bi0")] == [0.0, 1.0, 0.0, 1.0]
    assert [v for _, v, _ in sink.rows("ai0")] == [1.0, 2.0, 3.0]
    # default event variations (g2v1, g32v1) carry no time: receive time, marked gateway time
    assert all(ts == WALL_NS and q == Q.GATEWAY_TIME for ts, _, q in sink.rows("bi0"))
    sink.clear()
    await drv.run_job("class1")
    assert sink.count() == 0  # confirmed: not sent twice
    assert drv.status()["class_polls"] == 4


async def test_event_timestamps_are_the_outstations(sim: OutstationSim, sink: Sink) -> None:
    async with session(make(sim.port, sink, timed_events=True)) as d:
        sink.clear()
        sim.apply(binary(0, True, time_ms=T0_MS), analog(0, 7.0, time_ms=T0_MS + 1), counter(0, 3, time_ms=T0_MS + 2))
        sim.apply(binary(0, False, time_ms=T0_MS + 5))
        await d.run_job("class1")
        ns = 1_000_000
        assert sink.rows("bi0") == [(T0_MS * ns, 1.0, Q.GOOD), ((T0_MS + 5) * ns, 0.0, Q.GOOD)]
        assert sink.rows("ai0") == [((T0_MS + 1) * ns, 7.0, Q.GOOD)]
        assert sink.rows("c0") == [((T0_MS + 2) * ns, 3.0, Q.GOOD)]
        # a source time read while the outstation asks for time sync is marked clock-not-synchronised
        sim.need_time = True
        sim.apply(analog(0, 8.0, time_ms=T0_MS + 9))
        await d.run_job("class1")
        assert sink.last("ai0") == ((T0_MS + 9) * ns, 8.0, Q.CLOCK_NOT_SYNCHRONISED)
        assert sim.time_writes and not sim.need_time  # the follow-up synchronised it


async def test_iin_class_bits_are_followed_up_in_idle(sim: OutstationSim, sink: Sink, drv: Dnp3Session) -> None:
    sink.clear()
    sim.apply(analog(0, 11.0))
    await drv.run_job("class2")  # its answer carries IIN CLASS_1_EVENTS
    assert sink.count() == 0 and "CLASS_1_EVENTS" in iin_flags(drv)
    await drv.idle(0.05)
    assert sink.last("ai0")[1] == 11.0
    assert "CLASS_1_EVENTS" not in iin_flags(drv)


async def test_unsolicited_responses(sink: Sink) -> None:
    with OutstationSim(points=10, unsolicited=True) as sim:
        async with session(make(sim.port, sink, unsolicited=True, class1_period_s=0.0,
                                      class2_period_s=0.0, class3_period_s=0.0)) as d:
            assert [j.name for j in d.jobs()] == ["integrity"]
            assert d.status()["unsolicited_enabled"] is True
            sink.clear()
            sim.apply(binary(1, True), analog(2, 6.0))  # g32v1 events are int32

            async def arrived() -> bool:
                await d.idle(0.2)
                return bool(sink.rows("bi1")) and bool(sink.rows("ai2"))

            await wait_for_async(arrived, what="unsolicited events")
            assert stat(d, "unsolicited") >= 1 and stat(d, "class_polls") == 0
            assert sink.last("bi1")[1] == 1.0 and sink.last("ai2")[1] == 6.0


# --------------------------------------------------------------------------------------------- IIN / link


async def test_outstation_restart_and_overflow_get_integrity_poll(sim: OutstationSim, sink: Sink,
                                                                   drv: Dnp3Session) -> None:
    sim.set_restart()
    await drv.run_job("class1")
    st = drv.status()
    assert (st["restarts"], st["restart_clears"], st["integrity_polls"]) == (2, 2, 2)
    assert "DEVICE_RESTART" not in iin_flags(drv)
    sim.overflow = True
    await drv.run_job("class1")
    assert (drv.status()["overflows"], drv.status()["integrity_polls"]) == (1, 3)
    await drv.run_job("class1")  # still set, but not newly: no poll storm
    assert drv.status()["integrity_polls"] == 3
    sim.overflow = False


async def test_time_sync_on_need_time_and_as_job(sim: OutstationSim, sink: Sink) -> None:
    sim.need_time = True
    async with session(make(sim.port, sink, time_sync_period_s=60.0)) as d:
        assert len(sim.time_writes) == 1 and not sim.need_time
        # LAN procedure: our clock at RECORD_CURRENT_TIME plus the outstation's own elapsed time since then
        assert 0 <= sim.time_writes[0] - WALL_NS // 1_000_000 < 60_000
        await d.run_job("time_sync")
        assert len(sim.time_writes) == 2 and d.status()["time_syncs"] == 2
        assert d.status()["time_sync_mode"] == "lan"


async def test_link_loss_then_reconnect(sim: OutstationSim, sink: Sink) -> None:
    d = make(sim.port, sink)
    async with session(d):
        sim.stop()
        with pytest.raises(SessionLost):
            await d.idle(5.0)  # the outstation closed the connection: EOF ends idle at once
        assert not d.connected
        with pytest.raises(SessionLost):
            await d.run_job("class1")
        r = await d.operate(control("bo0", ControlAction.LATCH_ON))
        assert r.status is ControlStatus.LINK_DOWN
        d.close()
        with pytest.raises(SessionLost):
            await d.connect()  # nothing listens
        sim.start()
        sim.apply(analog(0, 99.0))
        await d.connect()
        await d.start_session()
        assert d.connected and sink.last("ai0")[1] == 99.0
        assert d.status()["connects"] == 2


async def test_silent_outstation(sink: Sink) -> None:
    async with FakeOutstation(lambda seq, fc: b"") as fake:
        d = make(fake.port, sink, timeout_s=0.3)
        async with session(d, start=False):
            with pytest.raises(SessionLost, match="no complete answer"):
                await d.start_session()
            assert not d.connected and d.status()["timeouts"] == 1
        async with session(d, start=False):
            r = await d.operate(control("bo0", ControlAction.LATCH_ON))
            assert r.status is ControlStatus.NO_RESPONSE and not d.connected


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda seq, fc: b"\x05\x64\xff\xc4\x01\x00\x0a\x00\xde\xad" + bytes(range(256)) * 3,
                     id="garbage"),
        pytest.param(lambda seq, fc: link_frames(response_apdu(seq, bytes(600)), segments=1), id="cut_mid_fragment"),
        pytest.param(lambda seq, fc: link_frames(b"\xc0\x99"), id="short_apdu"),
        pytest.param(lambda seq, fc: link_frames(response_apdu((seq + 3) % 16)), id="wrong_sequence"),
        pytest.param(lambda seq, fc: link_frames(response_apdu(seq, fin=False)) + link_frames(
            response_apdu((seq + 5) % 16, fir=False), tseq=1), id="broken_burst"),
    ],
)
async def test_malformed_answers_end_the_session_in_time(sink: Sink, answer: object) -> None:
    async with FakeOutstation(answer) as fake:  # type: ignore[arg-type]
        d = make(fake.port, sink, timeout_s=0.5)
        async with session(d, start=False):
            with pytest.raises((SessionLost, DriverError)):
                await asyncio.wait_for(d.start_session(), 10)
            assert not d.connected
        assert fake.requests  # it did get our request


async def test_truncated_objects_deliver_what_came_before(sink: Sink) -> None:
    good = bytes((30, 1, 0x00, 0, 0)) + bytes((0x01,)) + struct.pack("<i", 321)  # g30v1 index 0: 321
    broken = bytes((1, 2, 0x00, 0, 200, 0x81, 0x81))  # g1v2 0..200 with 2 objects present

    def answer(seq: int, fc: int) -> bytes:
        return link_frames(response_apdu(seq, good + broken if fc == 0x01 else b""))

    async with FakeOutstation(answer) as fake, session(make(fake.port, sink, timeout_s=0.5)) as d:
        assert sink.last("ai0")[1] == 321.0
        assert not sink.rows("bi0")
        assert d.status()["truncated"] == 1 and d.connected



async def test_stubborn_outstation_gets_one_clear_and_one_time_write(sink: Sink) -> None:
    # always DEVICE_RESTART and NEED_TIME; no RECORD_CURRENT_TIME (so the g50v1 fallback is used)
    restart_need_time, no_func = 0x0080 | 0x0010, 0x0100

    def answer(seq: int, fc: int) -> bytes:
        return link_frames(response_apdu(seq, iin=restart_need_time | (no_func if fc == 0x18 else 0)))

    async with FakeOutstation(answer) as fake, session(make(fake.port, sink, timeout_s=0.5)) as d:
        await d.run_job("class1")
        await d.idle(0.01)
        # DISABLE_UNSOLICITED, integrity READ, WRITE g80v1.7, RECORD_CURRENT_TIME, WRITE g50v1, class 1 READ
        assert [fc for _, fc in fake.requests] == [0x15, 0x01, 0x02, 0x18, 0x02, 0x01]
        assert fake.apdus[2][2:] == bytes((80, 1, 0x00, 7, 7, 0))
        write_time = fake.apdus[4][2:]
        assert write_time[:4] == bytes((50, 1, 0x07, 1))
        assert int.from_bytes(write_time[4:10], "little") == WALL_NS // 1_000_000
        st = d.status()
        assert (st["restart_clears"], st["time_syncs"], st["time_sync_mode"]) == (1, 1, "write_g50v1")


# ---------------------------------------------------------------------------------------------- controls

CROB = [
    (ControlAction.LATCH_ON, "LATCH_ON", "NUL"),
    (ControlAction.LATCH_OFF, "LATCH_OFF", "NUL"),
    (ControlAction.PULSE_ON, "PULSE_ON", "NUL"),
    (ControlAction.PULSE_OFF, "PULSE_OFF", "NUL"),
    (ControlAction.TRIP, "PULSE_ON", "TRIP"),
    (ControlAction.CLOSE, "PULSE_ON", "CLOSE"),
]


@pytest.mark.parametrize("mode", [ControlMode.SBO, ControlMode.DIRECT])
@pytest.mark.parametrize(("action", "op_type", "tcc"), CROB)
async def test_crob_every_action_and_mode(sim: OutstationSim, drv: Dnp3Session, mode: ControlMode,
                                          action: ControlAction, op_type: str, tcc: str) -> None:
    req = control("bo1", action, mode=mode, on_time_ms=250, off_time_ms=750, count=3)
    if mode is ControlMode.SBO:
        assert (await drv.select(req)).status is ControlStatus.SUCCESS
    r = await drv.operate(req)
    assert r.ok and r.code == 0
    recs = sim.recorded()
    stages = ["select", "operate"] if mode is ControlMode.SBO else ["operate"]
    assert [c.stage for c in recs] == stages
    for c in recs:
        assert (c.index, c.kind, c.op_type, c.tcc, c.count, c.on_ms, c.off_ms) == (1, "crob", op_type, tcc, 3, 250,
                                                                                    750)
    assert recs[-1].operate_type == ("SelectBeforeOperate" if mode is ControlMode.SBO else "DirectOperate")


STATUS_CASES = [
    ("TIMEOUT", ControlStatus.SELECT_TIMEOUT, 1),
    ("NO_SELECT", ControlStatus.NO_SELECT, 2),
    ("FORMAT_ERROR", ControlStatus.FORMAT_ERROR, 3),
    ("NOT_SUPPORTED", ControlStatus.NOT_SUPPORTED, 4),
    ("ALREADY_ACTIVE", ControlStatus.ALREADY_ACTIVE, 5),
    ("HARDWARE_ERROR", ControlStatus.HARDWARE_ERROR, 6),
    ("LOCAL", ControlStatus.LOCAL, 7),
    ("TOO_MANY_OPS", ControlStatus.REJECTED, 8),
    ("NOT_AUTHORIZED", ControlStatus.REJECTED, 9),
    ("AUTOMATION_INHIBIT", ControlStatus.BLOCKED, 10),
    ("PROCESSING_LIMITED", ControlStatus.REJECTED, 11),
    ("OUT_OF_RANGE", ControlStatus.REJECTED, 12),
    ("DOWNSTREAM_LOCAL", ControlStatus.LOCAL, 13),
    ("ALREADY_COMPLETE", ControlStatus.REJECTED, 14),
    ("BLOCKED", ControlStatus.BLOCKED, 15),
    ("CANCELLED", ControlStatus.REJECTED, 16),
    ("BLOCKED_OTHER_MASTER", ControlStatus.BLOCKED, 17),
    ("DOWNSTREAM_FAIL", ControlStatus.REJECTED, 18),
    ("NON_PARTICIPATING", ControlStatus.REJECTED, 126),
    ("UNDEFINED", ControlStatus.REJECTED, 127),
]


@pytest.mark.parametrize(("name", "expected", "code"), STATUS_CASES)
async def test_every_operate_failure_status(sim: OutstationSim, drv: Dnp3Session, name: str,
                                            expected: ControlStatus, code: int) -> None:
    sim.operate_status = name
    r = await drv.operate(control("bo0", ControlAction.PULSE_ON))
    assert (r.status, r.code) == (expected, code)
    assert f"({code})" in r.detail
    r = await drv.operate(control("ao1", value=5.0))  # analog outputs echo the same status
    assert (r.status, r.code) == (expected, code)
    assert drv.connected  # a refusal leaves the session up


@pytest.mark.parametrize(("name", "expected"), [("LOCAL", ControlStatus.LOCAL), ("BLOCKED", ControlStatus.BLOCKED),
                                                ("TOO_MANY_OPS", ControlStatus.SELECT_FAILED),
                                                ("NOT_SUPPORTED", ControlStatus.NOT_SUPPORTED)])
async def test_select_refusals(sim: OutstationSim, drv: Dnp3Session, name: str, expected: ControlStatus) -> None:
    sim.select_status = name
    req = control("bo0", ControlAction.LATCH_ON, mode=ControlMode.SBO)
    assert (await drv.select(req)).status is expected
    assert [c.stage for c in sim.recorded()] == ["select"]


async def test_sbo_sequence_rules(sim: OutstationSim, sink: Sink, drv: Dnp3Session) -> None:
    req = control("bo0", ControlAction.LATCH_ON, mode=ControlMode.SBO)
    r = await drv.operate(req)  # no select first: the outstation refuses
    assert (r.status, r.code) == (ControlStatus.NO_SELECT, 2)
    assert (await drv.select(req)).ok
    sim.apply(analog(0, 5.0))
    await drv.run_job("class1")  # would break the select-operate pair: deferred
    await drv.idle(0.05)  # listens only
    assert drv.status()["jobs_deferred"] == 1
    assert (await drv.operate(req)).ok
    assert (await drv.cancel(req)).ok  # DNP3 has no cancel
    await drv.run_job("class1")
    assert sink.last("ai0")[1] == 5.0


@pytest.mark.parametrize("mode", [ControlMode.SBO, ControlMode.DIRECT])
async def test_analog_output(sim: OutstationSim, drv: Dnp3Session, mode: ControlMode) -> None:
    for point, value in (("ao0", 12.5), ("ao1", 2.25)):  # ao0: scale 0.1 → raw 125 (int32); ao1: float32
        req = control(point, value=value, mode=mode)
        if mode is ControlMode.SBO:
            assert (await drv.select(req)).ok
        assert (await drv.operate(req)).ok
    ops = [c for c in sim.recorded() if c.stage == "operate"]
    assert [(c.index, c.kind, c.value) for c in ops] == [(0, "AnalogOutputInt32", 125.0),
                                                         (1, "AnalogOutputFloat32", 2.25)]


async def test_controls_rejected_before_sending(sim: OutstationSim, sink: Sink, drv: Dnp3Session) -> None:
    cases = [
        control("bo2", ControlAction.LATCH_ON),  # not writable
        control("bo0", ControlAction.VALUE, value=1.0),  # CROB point, VALUE action
        control("ao0", ControlAction.TRIP),  # analog output, CROB action
        control("ai0", ControlAction.VALUE),  # inputs cannot be controlled
        control("nope", ControlAction.LATCH_ON),
        control("bo0", ControlAction.PULSE_ON, count=0),
        ControlRequest(device="other", point="bo0", action=ControlAction.LATCH_ON),
    ]
    for req in cases:
        r = await drv.operate(req)
        assert r.status is ControlStatus.REJECTED and r.detail, req
    assert sim.recorded() == []
    offline = make(sim.port, sink)
    assert (await offline.operate(control("bo0", ControlAction.LATCH_ON))).status is ControlStatus.LINK_DOWN


async def test_close_is_idempotent_and_status_reports(drv: Dnp3Session) -> None:
    st = drv.status()
    for key in ("iin", "fragments", "values", "ignored_points", "truncated", "unsolicited", "controls"):
        assert key in st
    drv.close()
    drv.close()
    assert not drv.connected
    with pytest.raises(SessionLost):
        await drv.idle(0.01)



async def test_concurrent_calls_fail_fast(sink: Sink) -> None:
    muted = [False]

    def answer(seq: int, fc: int) -> bytes:
        return b"" if muted[0] else link_frames(response_apdu(seq))

    async with FakeOutstation(answer) as fake, session(make(fake.port, sink, timeout_s=0.5)) as d:
        muted[0] = True
        sent = len(fake.requests)
        job = asyncio.create_task(d.run_job("class1"))
        await wait_for(lambda: len(fake.requests) > sent, what="the job's request")
        with pytest.raises(DriverError, match="another call is running"):
            await d.idle(0.1)
        r = await d.operate(control("bo0", ControlAction.LATCH_ON))
        assert r.status is ControlStatus.REJECTED and "busy" in r.detail
        assert len(fake.requests) == sent + 1  # nothing else was sent
        with pytest.raises(SessionLost):
            await job

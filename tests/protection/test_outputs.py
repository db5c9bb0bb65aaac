"""protection.outputs: trip → coil write on a real Modbus server, outcome records drained into an event ring."""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Iterator

import numpy as np
import pytest

from hil_tests.modbus_sim import SimUnit
from protection.outputs import ModbusCoilOutputSpec, TripOutputs
from protection.shm import (
    ELEMENT_OUTPUT,
    EVENT_DTYPE,
    OEV_CONFIRMED,
    OEV_FAILED,
    OEV_LINK_DOWN,
    OEV_LINK_UP,
    OEV_RETRY,
    OEV_SENT,
    OUT_ERR_BAD_RESPONSE,
    OUT_ERR_EXCEPTION,
    OUT_ERR_NOT_CONNECTED,
    OUT_ERR_TIMEOUT,
    EventRing,
)
from tests.protection.test_fastmodbus import SimRig
from tests.waiting import wait_until

WAIT_S = 20.0  # bound for a condition on a loaded machine; tests end as soon as it holds
NAMES = (("50P", "51P"), ("50P", "81U"))  # armed elements of group 1 and group 2
UTC0 = 1_750_000_000 * 1_000_000_000


@pytest.fixture
def rig() -> Iterator[SimRig]:
    r = SimRig()
    yield r
    r.close()


class Outs:
    """A started TripOutputs plus a local ring the test drains into, as the cycle would."""

    def __init__(self, specs: list[ModbusCoilOutputSpec], names: tuple[tuple[str, ...], tuple[str, ...]] = NAMES):
        self.t = TripOutputs(specs, names)
        self.ring = EventRing.local(256)
        self.recs = np.empty(0, dtype=EVENT_DTYPE)
        self.t.start()

    def drain(self) -> np.ndarray:
        now = time.monotonic_ns()
        self.t.drain_into(self.ring, now, UTC0 + now)
        self.recs = np.concatenate([self.recs, self.ring.read_new()])
        return self.recs

    def codes(self, output: int = 0) -> list[tuple[int, int]]:
        r = self.drain()
        r = r[r["group"] == output]
        return [(int(e), int(p)) for e, p in zip(r["events"], r["phases"], strict=True)]

    def events(self, output: int = 0) -> list[int]:
        return [e for e, _ in self.codes(output)]

    def has(self, ev: int, output: int = 0) -> bool:
        return ev in self.events(output)

    def trip(self, element: int = 0, group: int = 1) -> int:
        decision = time.monotonic_ns()
        self.t.on_trip(element, group, decision)
        return decision


@pytest.fixture
def made() -> Iterator[list[Outs]]:
    outs: list[Outs] = []
    yield outs
    for o in outs:
        o.t.close()


def spec(port: int, **kw: object) -> ModbusCoilOutputSpec:
    base: dict[str, object] = {"name": "feeder1-breaker", "host": "127.0.0.1", "port": port, "coil": 0}
    base.update(kw)
    return ModbusCoilOutputSpec(**base)  # type: ignore[arg-type]


def command_events(codes: list[tuple[int, int]]) -> list[int]:
    """The command's records (link records left out)."""
    return [e for e, _ in codes if e not in (OEV_LINK_UP, OEV_LINK_DOWN)]


def test_trip_sets_the_coil_and_records_sent_then_confirmed(rig: SimRig, made: list[Outs]) -> None:
    unit = SimUnit(1)
    srv = rig.serve([unit])
    o = Outs([spec(srv.port, coil=7)])
    made.append(o)
    wait_until(lambda: o.has(OEV_LINK_UP), WAIT_S, "the output link")
    decision = o.trip()
    wait_until(lambda: bool(unit.coils[7]), WAIT_S, "the coil on the server")
    wait_until(lambda: o.has(OEV_CONFIRMED), WAIT_S, "the confirmation record")
    r = o.recs
    assert set(r["element"].tolist()) == {ELEMENT_OUTPUT}
    assert set(r["group"].tolist()) == {0}
    assert command_events(o.codes()) == [OEV_SENT, OEV_CONFIRMED]
    sent = r[r["events"] == OEV_SENT][0]
    conf = r[r["events"] == OEV_CONFIRMED][0]
    assert sent["mono_ns"] >= decision and conf["mono_ns"] >= sent["mono_ns"]
    assert int(sent["phases"]) == (int(sent["mono_ns"]) - decision) // 1000  # µs decision -> send
    assert int(conf["phases"]) == (int(conf["mono_ns"]) - int(sent["mono_ns"])) // 1000  # µs send -> response
    assert (r["utc_ns"] - r["mono_ns"] == UTC0).all()  # utc = utc_ns + (mono - now_ns)
    assert o.t.confirmed == 1 and o.t.failed == 0
    assert o.t.fast_sends + o.t.handed_over == 1


def test_fast_path_writes_from_the_calling_thread(rig: SimRig, made: list[Outs]) -> None:
    unit = SimUnit(1)
    srv = rig.serve([unit])
    o = Outs([spec(srv.port)])
    made.append(o)
    wait_until(lambda: o.t.connected(0), WAIT_S, "the output link")
    # The I/O thread may hold the lock at the instant of a trip (then it sends): trip until one went the fast way.
    for n in range(1, 51):
        o.trip()
        wait_until(lambda n=n: o.t.confirmed == n, WAIT_S, "the confirmation")  # type: ignore[misc]
        if o.t.fast_sends:
            break
    assert o.t.fast_sends >= 1
    assert bool(unit.coils[0])


def test_element_filter_and_groups(rig: SimRig, made: list[Outs]) -> None:
    unit = SimUnit(1)
    srv = rig.serve([unit])
    o = Outs([
        spec(srv.port, name="only-50P", coil=0, elements=("50P",)),
        spec(srv.port, name="every-element", coil=1),
        spec(srv.port, name="only-81U", coil=2, elements=("81U",)),
    ])
    made.append(o)
    wait_until(lambda: all(o.t.connected(i) for i in range(3)), WAIT_S, "three links")
    o.trip(element=1, group=1)  # 51P: only the unfiltered output
    wait_until(lambda: o.has(OEV_CONFIRMED, 1), WAIT_S, "output 1 confirmed")
    assert not unit.coils[0] and not unit.coils[2]
    assert OEV_SENT not in o.events(0) and OEV_SENT not in o.events(2)
    o.trip(element=1, group=2)  # 81U in group 2: outputs 1 and 2
    wait_until(lambda: bool(unit.coils[2]), WAIT_S, "the 81U coil")
    wait_until(lambda: o.t.confirmed == 3, WAIT_S, "both confirmed")
    assert not unit.coils[0]
    o.trip(element=0, group=2)  # 50P in group 2 has the same name: asserts the 50P output
    wait_until(lambda: bool(unit.coils[0]), WAIT_S, "the 50P coil")
    o.trip(element=9, group=1)  # unknown indices are ignored
    o.trip(element=0, group=3)


def test_an_output_naming_an_unarmed_element_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'bay2-breaker'.*'67N'"):
        TripOutputs([spec(502, name="bay2-breaker", elements=("50P", "67N"))], NAMES)
    with pytest.raises(ValueError, match="duplicate"):
        TripOutputs([spec(502), spec(502)], NAMES)
    with pytest.raises(ValueError, match="coil"):
        TripOutputs([spec(502, coil=70000)], NAMES)


def test_timeout_retries_then_fails(rig: SimRig, made: list[Outs]) -> None:
    unit = SimUnit(1)
    srv = rig.serve([unit])
    o = Outs([spec(srv.port, timeout_s=0.02, retries=2)])
    made.append(o)
    wait_until(lambda: o.t.connected(0), WAIT_S, "the output link")
    unit.silent = True
    o.trip()
    wait_until(lambda: o.has(OEV_FAILED), WAIT_S, "the failure record")
    assert [c for c in o.codes() if c[0] not in (OEV_LINK_UP, OEV_LINK_DOWN)] == [
        (OEV_SENT, o.codes()[1][1]),
        (OEV_RETRY, 2),
        (OEV_RETRY, 3),
        (OEV_FAILED, OUT_ERR_TIMEOUT),
    ]
    assert o.t.failed == 1 and o.t.connected(0)  # a silent device keeps its connection
    unit.silent = False
    o.trip()  # the output works again
    wait_until(lambda: o.t.confirmed == 1, WAIT_S, "a confirmation")


def test_late_echo_of_an_earlier_attempt_confirms(rig: SimRig, made: list[Outs]) -> None:
    unit = SimUnit(1)
    srv = rig.serve([unit])
    o = Outs([spec(srv.port, timeout_s=0.001, retries=1000)])
    made.append(o)
    wait_until(lambda: o.t.connected(0), WAIT_S, "the output link")
    unit.delay_s = 0.05  # every answer comes after several attempts timed out; the same tid is re-sent
    o.trip()
    wait_until(lambda: o.has(OEV_CONFIRMED), WAIT_S, "a confirmation")
    ev = command_events(o.codes())
    assert ev[0] == OEV_SENT and OEV_RETRY in ev and OEV_FAILED not in ev
    assert bool(unit.coils[0])


def test_exception_response_fails_at_once(rig: SimRig, made: list[Outs]) -> None:
    unit = SimUnit(1)
    unit.exception = {"coil": 4}
    srv = rig.serve([unit])
    o = Outs([spec(srv.port)])
    made.append(o)
    wait_until(lambda: o.t.connected(0), WAIT_S, "the output link")
    o.trip()
    wait_until(lambda: o.has(OEV_FAILED), WAIT_S, "the failure record")
    assert [c for c in o.codes() if c[0] in (OEV_RETRY, OEV_FAILED)] == [(OEV_FAILED, OUT_ERR_EXCEPTION | 4 << 8)]
    assert "exception 4" in o.t.last_error(0)


def test_not_connected_at_trip_time_is_sent_when_the_link_comes_up(rig: SimRig, made: list[Outs]) -> None:
    unit = SimUnit(1)
    srv = rig.serve([unit])
    port = srv.port
    rig.stop(srv)  # nothing listens on the port now
    o = Outs([spec(port, connect_timeout_s=60.0)])  # the command waits up to 60 s for the link
    made.append(o)
    wait_until(lambda: o.has(OEV_LINK_DOWN), WAIT_S, "the refused connection")
    assert o.codes()[0] == (OEV_LINK_DOWN, OUT_ERR_NOT_CONNECTED)
    decision = o.trip()
    rig.serve([unit], port=port)
    wait_until(lambda: bool(unit.coils[0]), WAIT_S, "the coil once the device is back")
    wait_until(lambda: o.has(OEV_CONFIRMED), WAIT_S, "the confirmation")
    assert command_events(o.codes()) == [OEV_SENT, OEV_CONFIRMED]
    assert [e for e, _ in o.codes()].count(OEV_LINK_DOWN) == 1  # reported once, not per attempt
    sent = o.recs[o.recs["events"] == OEV_SENT][0]
    assert int(sent["phases"]) == (int(sent["mono_ns"]) - decision) // 1000  # the wait for the link counts


def test_not_connected_fails_after_the_connect_timeout(rig: SimRig, made: list[Outs]) -> None:
    srv = rig.serve([SimUnit(1)])
    port = srv.port
    rig.stop(srv)
    o = Outs([spec(port, connect_timeout_s=0.05)])
    made.append(o)
    o.trip()
    wait_until(lambda: o.has(OEV_FAILED), WAIT_S, "the failure record")
    assert command_events(o.codes()) == [OEV_FAILED]
    assert (OEV_FAILED, OUT_ERR_NOT_CONNECTED) in o.codes()


def test_garbage_drops_the_link_and_fails_after_the_retries(rig: SimRig, made: list[Outs]) -> None:
    async def garbage(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"\x00\x01\xff\xff garbage")
        return True

    bs = rig.byte_server(garbage)
    o = Outs([spec(bs.port, retries=1)])
    made.append(o)
    wait_until(lambda: o.t.connected(0), WAIT_S, "the output link")
    o.trip()
    wait_until(lambda: o.has(OEV_FAILED), WAIT_S, "the failure record")
    codes = o.codes()
    assert command_events(codes) == [OEV_SENT, OEV_RETRY, OEV_FAILED]
    assert (OEV_LINK_DOWN, OUT_ERR_BAD_RESPONSE) in codes
    assert codes[-1] == (OEV_FAILED, OUT_ERR_BAD_RESPONSE)
    assert bs.requests == 2


def test_a_trip_during_a_pending_command_is_coalesced(rig: SimRig, made: list[Outs]) -> None:
    unit = SimUnit(1)
    srv = rig.serve([unit])
    o = Outs([spec(srv.port, timeout_s=60.0, retries=0)])
    made.append(o)
    wait_until(lambda: o.t.connected(0), WAIT_S, "the output link")
    unit.silent = True  # the first command stays in flight
    o.trip(element=0)
    o.trip(element=1)
    wait_until(lambda: o.t.coalesced == 1, WAIT_S, "the second trip merged into the first")
    assert o.t.trips == 2
    wait_until(lambda: o.has(OEV_SENT), WAIT_S, "the one send")
    assert command_events(o.codes()) == [OEV_SENT]


def test_on_trip_before_start_is_sent_after_start(rig: SimRig) -> None:
    unit = SimUnit(1)
    srv = rig.serve([unit])
    t = TripOutputs([spec(srv.port)], NAMES)
    try:
        t.on_trip(0, 1, time.monotonic_ns())  # not started: waits for the link
        t.start()
        t.start()  # idempotent
        wait_until(lambda: bool(unit.coils[0]), WAIT_S, "the coil")
        wait_until(lambda: t.confirmed == 1, WAIT_S, "the confirmation")
    finally:
        t.close()
    t.close()


def test_construct_only_opens_nothing_and_close_is_idempotent() -> None:
    t = TripOutputs([spec(1)], NAMES)  # the parent process builds one just to validate
    t.close()
    t.close()
    t.start()  # after close: nothing starts
    assert t._thread is None


def test_drain_is_bounded_and_keeps_order() -> None:
    t = TripOutputs([spec(1)], NAMES)
    o = t._outs[0]
    for i in range(100):
        t._emit(1000 + i, o, OEV_RETRY, i)
    ring = EventRing.local(256)
    assert t.drain_into(ring, 0, UTC0) == 64
    assert t.drain_into(ring, 0, UTC0) == 36
    assert t.drain_into(ring, 0, UTC0) == 0
    r = ring.read_new()
    assert r["phases"].tolist() == list(range(100))
    assert (r["utc_ns"] == UTC0 + r["mono_ns"]).all()


def test_spec_is_picklable() -> None:
    s = spec(1502, elements=("50P",), value=False)
    assert pickle.loads(pickle.dumps(s)) == s

"""protection.modbus_source: a real Modbus server polled by the source's I/O thread; the cycle side never waits."""

from __future__ import annotations

import asyncio
import math
import pickle
import time
from collections.abc import Iterator

import pytest

from hil_tests.modbus_sim import SimUnit
from protection.measurements import V_ALL, V_F, V_IB, Measurements
from protection.modbus_source import ModbusMeasurementSource, ModbusMeasurementSpec
from tests.protection.test_fastmodbus import VALUES, SimRig, f32, load_floats
from tests.waiting import wait_until

WAIT_S = 20.0  # bound for a condition on a loaded machine; tests end as soon as it holds


@pytest.fixture
def rig() -> Iterator[SimRig]:
    r = SimRig()
    yield r
    r.close()


@pytest.fixture
def sources() -> Iterator[list[ModbusMeasurementSource]]:
    made: list[ModbusMeasurementSource] = []
    yield made
    for s in made:
        s.close()


def read(src: ModbusMeasurementSource) -> Measurements:
    m = Measurements(valid=0)
    src.read_into(m, time.monotonic_ns())
    return m


def values(m: Measurements) -> tuple[float, ...]:
    return (m.ia, m.ib, m.ic, m.i_n, m.va, m.vb, m.vc, m.f)


def start(sources: list[ModbusMeasurementSource], spec: ModbusMeasurementSpec) -> ModbusMeasurementSource:
    s = ModbusMeasurementSource(spec, time.monotonic_ns())
    sources.append(s)
    return s


@pytest.mark.parametrize(
    ("function", "word_order", "address"), [("input", "big", 0), ("holding", "little", 40), ("input", "little", 7)]
)
def test_decodes_the_block(
    rig: SimRig, sources: list[ModbusMeasurementSource], function: str, word_order: str, address: int
) -> None:
    unit = SimUnit(4)
    load_floats(unit, function, address, VALUES, word_order)
    srv = rig.serve([unit])
    spec = ModbusMeasurementSpec(
        "127.0.0.1", srv.port, unit_id=4, function=function, address=address,  # type: ignore[arg-type]
        word_order=word_order, stale_after_s=10.0,  # type: ignore[arg-type]
    )
    src = start(sources, spec)
    wait_until(lambda: read(src).valid == V_ALL, WAIT_S, "a valid sample")
    m = read(src)
    assert values(m) == tuple(f32(v) for v in VALUES)
    assert src.polls >= 1 and src.errors == 0 and src.last_error == ""


def test_nan_and_inf_clear_only_their_bits(rig: SimRig, sources: list[ModbusMeasurementSource]) -> None:
    unit = SimUnit(1)
    vals = list(VALUES)
    vals[1] = math.nan
    vals[7] = math.inf
    load_floats(unit, "input", 0, tuple(vals))
    srv = rig.serve([unit])
    src = start(sources, ModbusMeasurementSpec("127.0.0.1", srv.port, stale_after_s=10.0))
    wait_until(lambda: src.polls >= 1, WAIT_S, "a poll")
    m = read(src)
    assert m.valid == V_ALL & ~V_IB & ~V_F
    assert m.ia == f32(VALUES[0])


def test_exception_response_invalidates_then_recovers(rig: SimRig, sources: list[ModbusMeasurementSource]) -> None:
    unit = SimUnit(1)
    load_floats(unit, "input", 0, VALUES)
    srv = rig.serve([unit])
    src = start(sources, ModbusMeasurementSpec("127.0.0.1", srv.port, stale_after_s=10.0))
    wait_until(lambda: read(src).valid == V_ALL, WAIT_S, "a valid sample")
    unit.exception = {"input": 2}
    wait_until(lambda: read(src).valid == 0, WAIT_S, "the exception to invalidate the sample")
    assert "exception 2" in src.last_error and src.errors >= 1
    assert src.reconnects == 0  # the device answered: the connection stays
    unit.exception = {}
    wait_until(lambda: read(src).valid == V_ALL, WAIT_S, "valid again")
    assert src.reconnects == 0


def test_silent_unit_goes_stale_without_an_error(rig: SimRig, sources: list[ModbusMeasurementSource]) -> None:
    unit = SimUnit(1)
    load_floats(unit, "input", 0, VALUES)
    srv = rig.serve([unit])
    # A response timeout far beyond the test: the sample must go stale by age alone, before any error.
    src = start(sources, ModbusMeasurementSpec("127.0.0.1", srv.port, timeout_s=60.0, stale_after_s=0.05))
    wait_until(lambda: read(src).valid == V_ALL, WAIT_S, "a valid sample")
    unit.silent = True
    wait_until(lambda: read(src).valid == 0, WAIT_S, "the sample to go stale")
    assert src.errors == 0
    # close() returns although the I/O thread is waiting for a response that never comes (it aborts the socket)


def test_stale_after_server_stops_and_reconnects_after_restart(
    rig: SimRig, sources: list[ModbusMeasurementSource]
) -> None:
    unit = SimUnit(1)
    load_floats(unit, "input", 0, VALUES)
    srv = rig.serve([unit])
    port = srv.port
    spec = ModbusMeasurementSpec("127.0.0.1", port, stale_after_s=0.5, reconnect_min_s=0.01, reconnect_max_s=0.1)
    src = start(sources, spec)
    wait_until(lambda: read(src).valid == V_ALL, WAIT_S, "a valid sample")
    rig.stop(srv)
    wait_until(lambda: read(src).valid == 0, WAIT_S, "invalid after the server stopped")
    wait_until(lambda: src.errors >= 2, WAIT_S, "failed reconnects")
    polls = src.polls
    rig.serve([unit], port=port)
    wait_until(lambda: read(src).valid == V_ALL and src.polls > polls, WAIT_S, "valid again after the restart")
    assert src.reconnects >= 1
    assert values(read(src)) == tuple(f32(v) for v in VALUES)


def test_garbage_response_invalidates_and_reconnects(rig: SimRig, sources: list[ModbusMeasurementSource]) -> None:
    async def garbage(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"\xde\xad\xbe\xef" * 10)
        return True

    bs = rig.byte_server(garbage)
    spec = ModbusMeasurementSpec("127.0.0.1", bs.port, reconnect_min_s=0.01, reconnect_max_s=0.05)
    src = start(sources, spec)
    wait_until(lambda: src.reconnects >= 2, WAIT_S, "reconnects after garbage")
    assert "protocol id" in src.last_error
    assert src.polls == 0
    assert read(src).valid == 0


def test_read_into_never_blocks_while_the_io_thread_hangs(
    rig: SimRig, sources: list[ModbusMeasurementSource]
) -> None:
    unit = SimUnit(1)
    load_floats(unit, "input", 0, VALUES)
    srv = rig.serve([unit])
    src = start(sources, ModbusMeasurementSpec("127.0.0.1", srv.port, stale_after_s=0.05))
    wait_until(lambda: read(src).valid == V_ALL, WAIT_S, "a valid sample")
    lock = src.slot.lock
    lock.acquire()  # the I/O thread now hangs inside publish(), waiting for this lock
    try:
        misses = src.slot.lock_misses
        wait_until(lambda: read(src).valid == 0, WAIT_S, "stale while the producer hangs")
        assert src.slot.lock_misses > misses  # read_into found the lock taken and did not wait
        m = read(src)
        assert values(m) == tuple(f32(v) for v in VALUES)  # the last copy, just no longer valid
    finally:
        lock.release()
    wait_until(lambda: read(src).valid == V_ALL, WAIT_S, "valid once the producer runs again")


def test_never_connected_is_invalid_and_counts_errors(rig: SimRig, sources: list[ModbusMeasurementSource]) -> None:
    srv = rig.serve([SimUnit(1)])
    port = srv.port
    rig.stop(srv)
    src = start(sources, ModbusMeasurementSpec("127.0.0.1", port, reconnect_min_s=0.01, reconnect_max_s=0.02))
    wait_until(lambda: src.errors >= 3, WAIT_S, "failed connects")
    assert read(src).valid == 0 and "connect" in src.last_error and not src.connected


def test_close_is_idempotent_and_joins(rig: SimRig) -> None:
    srv = rig.serve([SimUnit(1)])
    src = ModbusMeasurementSource(ModbusMeasurementSpec("127.0.0.1", srv.port), time.monotonic_ns())
    with src:
        wait_until(lambda: src.polls >= 1, WAIT_S, "a poll")
    assert not src._thread.is_alive()
    src.close()


def test_spec_is_picklable_and_checked() -> None:
    spec = ModbusMeasurementSpec("10.0.0.5", 1502, unit_id=3, function="holding", word_order="little")
    assert pickle.loads(pickle.dumps(spec)) == spec
    for bad, match in [
        ({"port": 0}, "port"),
        ({"unit_id": 300}, "unit_id"),
        ({"address": 65530}, "address"),
        ({"function": "coil"}, "function"),
        ({"word_order": "middle"}, "word_order"),
        ({"timeout_s": 0.0}, "timeout_s"),
        ({"poll_period_s": -1.0}, "poll_period_s"),
        ({"reconnect_min_s": 1.0, "reconnect_max_s": 0.5}, "reconnect_max_s"),
    ]:
        with pytest.raises(ValueError, match=match):
            ModbusMeasurementSource(ModbusMeasurementSpec("127.0.0.1", **bad), 0)  # type: ignore[arg-type]

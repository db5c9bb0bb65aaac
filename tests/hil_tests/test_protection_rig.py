"""The protection rig: measurement IED registers, exact fault values, a breaker that obeys (and times) its coils.

Everything is checked through a real pymodbus client over TCP, as the protection process would see it.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator

import pytest
from pymodbus.client import ModbusTcpClient

from hil_tests.feeder import FeederModel
from hil_tests.modbus_sim import SimServer, SimUnit, Table
from hil_tests.protection_rig import (
    BREAKER_UNIT,
    CLOSE_COIL,
    FIRST_TIMING_COIL,
    IED_UNIT,
    MEASURED,
    TRIP_COIL,
    ProtectionRig,
    RigProcess,
)
from tests.waiting import wait_for, wait_until

SLOW_S = 3600.0  # an update period that never comes round during a test: the registers hold still


def decode(words: list[int]) -> dict[str, float]:
    raw = struct.pack(">16H", *words)
    return dict(zip(MEASURED, struct.unpack(">8f", raw), strict=True))


@pytest.fixture
def client_for() -> Iterator[list[ModbusTcpClient]]:
    opened: list[ModbusTcpClient] = []
    yield opened
    for c in opened:
        c.close()


def connect(port: int, opened: list[ModbusTcpClient]) -> ModbusTcpClient:
    c = ModbusTcpClient("127.0.0.1", port=port, timeout=5.0, retries=0)
    opened.append(c)
    assert c.connect()
    return c


def read_measured(c: ModbusTcpClient) -> dict[str, float]:
    rr = c.read_input_registers(0, count=16, device_id=IED_UNIT)
    assert not rr.isError(), rr
    return decode(list(rr.registers))


def breaker_closed_bit(c: ModbusTcpClient) -> bool:
    rr = c.read_discrete_inputs(0, count=1, device_id=BREAKER_UNIT)
    assert not rr.isError(), rr
    return bool(rr.bits[0])


def test_registers_decode_to_the_model_values(client_for: list[ModbusTcpClient]) -> None:
    with ProtectionRig(update_period_s=SLOW_S, seed=3, time_of_day_s=9 * 3600.0) as rig:
        c = connect(rig.port, client_for)
        got = read_measured(c)
        assert got == rig.values()
        expected = FeederModel(seed=3).step(rig.model_time_s)
        for k in MEASURED:
            assert got[k] == pytest.approx(expected[k], rel=1e-6), k
        assert 50 < got["Ia"] < 400 and 49.9 < got["f"] < 50.1 and 5.0 < got["Va"] < 7.0
        assert breaker_closed_bit(c)


def test_values_follow_the_model_at_the_update_rate(client_for: list[ModbusTcpClient]) -> None:
    with ProtectionRig() as rig:  # default: 1 ms updates
        first = rig.updates
        wait_until(lambda: rig.updates >= first + 50, what="50 register updates")
        c = connect(rig.port, client_for)
        got = read_measured(c)
        assert all(got[k] > 0 for k in MEASURED)
        # the model moves slowly: whatever update the client caught is within a hair of the latest one
        now = rig.values()
        assert got["Ia"] == pytest.approx(now["Ia"], rel=1e-3)


def test_fault_values_are_exact_and_inception_is_recorded(client_for: list[ModbusTcpClient]) -> None:
    with ProtectionRig(update_period_s=SLOW_S, pickup_a=600.0) as rig:
        c = connect(rig.port, client_for)
        load = read_measured(c)
        before = time.monotonic_ns()
        t0 = rig.inject_fault(multiple_of=5.0)
        after = time.monotonic_ns()
        assert before <= t0 <= after and rig.fault_inception_ns == t0
        got = read_measured(c)
        assert (got["Ia"], got["Ib"], got["Ic"]) == (3000.0, 3000.0, 3000.0)
        assert got["In"] == 0.0  # balanced three-phase fault
        # the other quantities keep following the model (which moves on with time: compare loosely)
        assert got["Va"] == pytest.approx(load["Va"], rel=1e-4) and got["f"] == pytest.approx(load["f"], rel=1e-4)

        rig.inject_fault(multiple_of=2.5, phases="b")  # single phase: exact, residual from the phasor sum
        got = read_measured(c)
        assert got["Ib"] == 1500.0
        assert got["Ia"] == pytest.approx(load["Ia"], rel=1e-4) and got["Ic"] == pytest.approx(load["Ic"], rel=1e-4)
        assert got["In"] > 1000.0

        rig.inject_fault(factor=4.0, phases="ac")
        got = read_measured(c)
        assert got["Ia"] == pytest.approx(4.0 * load["Ia"], rel=1e-4)
        assert got["Ic"] == pytest.approx(4.0 * load["Ic"], rel=1e-4)
        assert got["Ib"] == pytest.approx(load["Ib"], rel=1e-4)

        cleared = rig.clear_fault()
        assert cleared >= t0 and rig.fault_cleared_ns == cleared
        assert read_measured(c) == pytest.approx(load, rel=1e-4)

        with pytest.raises(ValueError, match="exactly one"):
            rig.inject_fault()
        with pytest.raises(ValueError, match="phases"):
            rig.inject_fault(multiple_of=2.0, phases="ax")


def test_trip_coil_opens_the_breaker_zeroes_currents_and_is_timed(client_for: list[ModbusTcpClient]) -> None:
    with ProtectionRig() as rig:
        c = connect(rig.port, client_for)
        rig.inject_fault(multiple_of=10.0)
        assert read_measured(c)["Ia"] == 6000.0
        assert rig.trip_arrival_ns is None and rig.breaker_closed
        before = time.monotonic_ns()
        rr = c.write_coil(TRIP_COIL, True, device_id=BREAKER_UNIT)
        after = time.monotonic_ns()
        assert not rr.isError() and rr.bits[0] is True  # the echo carries the written value
        arrival = rig.trip_arrival_ns
        assert arrival is not None and before <= arrival <= after
        assert rig.arrival_ns(TRIP_COIL) == arrival and rig.breaker_opened_ns == arrival
        assert not rig.breaker_closed
        wait_until(lambda: read_measured(c)["Ia"] == 0.0, what="currents to fall to zero")
        got = read_measured(c)
        assert got["Ib"] == got["Ic"] == got["In"] == 0.0 and got["Va"] > 5.0  # voltages stay on the bus side
        assert not breaker_closed_bit(c)
        # the trip command coil resets itself after the write
        wait_until(lambda: not c.read_coils(TRIP_COIL, count=1, device_id=BREAKER_UNIT).bits[0],
                   what="the trip coil to reset")

        rr = c.write_coil(CLOSE_COIL, True, device_id=BREAKER_UNIT)
        assert not rr.isError()
        assert rig.breaker_closed and rig.trip_arrival_ns is None
        wait_until(lambda: read_measured(c)["Ia"] == 6000.0, what="the fault current back after closing")
        assert breaker_closed_bit(c)
        rig.clear_fault()
        rig.inject_fault(multiple_of=2.0)
        rig.close_breaker()  # the API does the same as the close coil
        assert rig.breaker_closed


def test_timing_coils_are_recorded_without_opening_the_breaker(client_for: list[ModbusTcpClient]) -> None:
    with ProtectionRig(update_period_s=SLOW_S) as rig:
        c = connect(rig.port, client_for)
        rig.inject_fault(multiple_of=3.0)
        assert not c.write_coil(FIRST_TIMING_COIL + 1, True, device_id=BREAKER_UNIT).isError()
        assert not c.write_coil(FIRST_TIMING_COIL + 1, True, device_id=BREAKER_UNIT).isError()  # a retry
        assert not c.write_coil(FIRST_TIMING_COIL + 2, False, device_id=BREAKER_UNIT).isError()  # not a command
        arrivals = rig.arrivals()
        assert list(arrivals) == [FIRST_TIMING_COIL + 1]  # the first write counts, the retry does not move it
        assert rig.coil_writes == 2
        assert rig.breaker_closed and read_measured(c)["Ia"] == 1800.0
        rig.reset_arrivals()
        assert rig.arrivals() == {} and rig.arrival_ns(FIRST_TIMING_COIL + 1) is None


def test_specs_point_at_the_rig() -> None:
    with ProtectionRig(update_period_s=SLOW_S) as rig:
        src = rig.source_spec()
        assert (src.host, src.port, src.unit_id, src.function, src.address) == (
            "127.0.0.1", rig.port, IED_UNIT, "input", 0
        )
        assert src.poll_period_s == 0.001
        src.check()
        out = rig.output_spec("b1", coil=FIRST_TIMING_COIL, elements=("51P",), timeout_s=0.2)
        assert (out.port, out.unit_id, out.coil, out.elements, out.timeout_s) == (
            rig.port, BREAKER_UNIT, FIRST_TIMING_COIL, ("51P",), 0.2
        )
        out.check()


def test_stop_is_idempotent_and_calls_after_stop_fail() -> None:
    rig = ProtectionRig(update_period_s=SLOW_S).start()
    rig.stop()
    rig.stop()
    with pytest.raises(RuntimeError):
        rig.inject_fault(multiple_of=2.0)


def test_rig_process_serves_the_same_rig(client_for: list[ModbusTcpClient]) -> None:
    with RigProcess(update_period_s=SLOW_S) as rig:
        assert rig.sched_fifo == -1  # not asked
        c = connect(rig.port, client_for)
        t0 = rig.inject_fault(multiple_of=4.0)
        assert read_measured(c)["Ia"] == 2400.0
        assert not c.write_coil(FIRST_TIMING_COIL, True, device_id=BREAKER_UNIT).isError()
        arrival = rig.arrival_ns(FIRST_TIMING_COIL)
        assert arrival is not None and arrival > t0  # one system-wide monotonic clock
        assert rig.state()["fault_inception_ns"] == t0
        rig.clear_fault()
        assert read_measured(c)["Ia"] < 600.0
        with pytest.raises(RuntimeError, match="no remote method"):
            rig._rpc("stop_everything")
    rig.stop()  # idempotent


async def test_write_hook_sees_each_write_after_it_landed() -> None:
    from pymodbus.client import AsyncModbusTcpClient

    unit = SimUnit(1, holding=10, coils=10)
    seen: list[tuple[Table, int, list[int] | list[bool], list[int]]] = []
    unit.on_write = lambda kind, addr, vals: seen.append((kind, addr, list(vals), unit.get_words("holding", 0, 3)))
    async with SimServer([unit], tcp=("127.0.0.1", 0)) as srv:
        c = AsyncModbusTcpClient("127.0.0.1", port=srv.port, timeout=5.0, retries=0)
        try:
            assert await c.connect()
            assert not (await c.write_registers(1, [7, 8], device_id=1)).isError()
            assert not (await c.write_coil(4, True, device_id=1)).isError()
            await wait_for(lambda: len(seen) == 2, what="both writes")
        finally:
            c.close()
    assert seen[0] == ("holding", 1, [7, 8], [0, 7, 8])  # the array already holds the write
    assert seen[1][:3] == ("coil", 4, [True])

"""The simulated substation (hil_tests.substation.SimulatedRig), checked through real protocol clients.

Every value is read back over the wire, as the gateway or the protection process would see it. No sleeps: the
tests wait for behaviour (tests/waiting.py) and bound read times by monotonic clocks around each read.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator

import pytest
from dnp3.datalink.builder import build_request_link_status
from dnp3.datalink.parser import FrameParser
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from hil_tests import demo_ied61850
from hil_tests.feeder import NOMINAL_KV
from hil_tests.protection_rig import BREAKER_UNIT, TRIP_COIL
from hil_tests.rig import ALL_CAPABILITIES, DeviceEndpoint, Rig
from hil_tests.substation import InjectionUnsupported, SimulatedRig
from tests.waiting import wait_for, wait_for_async

pytestmark = pytest.mark.hil

NAMES = ("Ia", "Ib", "Ic", "In", "Va", "Vb", "Vc", "f")
LAG_NS = 50_000_000  # bound on how stale a served value may be (the rig's refresh periods, generously)


@pytest.fixture
async def rig() -> AsyncIterator[SimulatedRig]:
    r = SimulatedRig()  # the protection rig in its own process, as the runner uses it
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
async def fast_rig() -> AsyncIterator[SimulatedRig]:
    r = SimulatedRig(protection_process=False, samples_keep_s=0.3)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@contextlib.asynccontextmanager
async def client(ep: DeviceEndpoint, timeout: float = 5.0, **kw: object) -> AsyncIterator[AsyncModbusTcpClient]:
    c = AsyncModbusTcpClient(ep.host, port=ep.port, timeout=timeout, retries=0, reconnect_delay=0, **kw)  # type: ignore[arg-type]
    try:
        assert await c.connect()
        yield c
    finally:
        c.close()


async def measured(c: AsyncModbusTcpClient, unit: int) -> dict[str, float]:
    rr = await c.read_input_registers(0, count=16, device_id=unit)
    assert not rr.isError(), rr
    return dict(zip(NAMES, struct.unpack(">8f", struct.pack(">16H", *rr.registers)), strict=True))


async def test_starts_serves_every_protocol_and_stops_cleanly() -> None:
    r = SimulatedRig()
    await r.start()
    try:
        assert isinstance(r, Rig)
        assert r.capabilities() <= ALL_CAPABILITIES
        devs = r.devices()
        assert {"feeder1", "feeder2", "feeder3", "incomer", "feeder4"} <= set(devs)
        assert ("feeder5" in devs) == demo_ied61850.available()
        assert [devs[f"feeder{i}"].unit_id for i in (1, 2, 3)] == [1, 2, 3]
        assert devs["feeder4"].protocol == "dnp3_tcp" and devs["feeder4"].unit_id == 10
        prot = r.protection_endpoint()
        assert prot is not None and prot.port not in {d.port for d in devs.values()}
        for ep in devs.values():  # every port is bound and accepts connections
            _, w = await asyncio.open_connection(ep.host, ep.port)
            w.close()
            await w.wait_closed()
        async with client(devs["incomer"]) as c:
            inc = await measured(c, 1)
        assert inc["Ia"] > 0  # the sum of the feeders' load
        assert r.links_toml() == ""
    finally:
        await r.stop()
        await r.stop()  # idempotent
    with pytest.raises(OSError):
        await asyncio.open_connection(devs["feeder2"].host, devs["feeder2"].port)
    with pytest.raises(RuntimeError, match="not running"):
        r.inject_fault("feeder2", "3ph", multiple=2)


async def test_three_phase_fault_is_exact_multiple_of_pickup_at_both_ieds(rig: SimulatedRig) -> None:
    prot = rig.protection_endpoint()
    assert prot is not None
    async with client(prot) as pc, client(rig.devices()["feeder1"]) as gc:
        load = await measured(pc, prot.unit_id)
        assert 0 < load["Ia"] < 600
        t0 = rig.inject_fault("feeder1", "3ph", multiple=5)
        after = await measured(pc, prot.unit_id)  # the protection IED: at once, exactly
        assert (after["Ia"], after["Ib"], after["Ic"], after["In"]) == (3000.0, 3000.0, 3000.0, 0.0)
        # the relay the gateway polls mirrors the same model
        await wait_for_async(lambda: _ia_is(gc, 1, 3000.0), 10, "the gateway's feeder1 relay showing the fault")
        rig.inject_fault("feeder1", "3ph", multiple=3, pickup_a=400.0)  # the element's pickup, from the runner
        assert (await measured(pc, prot.unit_id))["Ia"] == 1200.0
        rig.inject_fault("feeder2", "3ph", current_a=2500.0)
        v2 = await measured(gc, 2)
        assert (v2["Ia"], v2["Ib"], v2["Ic"], v2["In"]) == (2500.0, 2500.0, 2500.0, 0.0)
        rig.clear_fault("feeder2")
        assert (await measured(gc, 2))["Ia"] < 600
        rig.clear_fault("feeder1")
        assert (await measured(pc, prot.unit_id))["Ia"] < 600
    s = rig.samples()
    n = len(s["t_mono_ns"])
    assert all(len(col) == n for col in s.values())
    faulted = [s["t_mono_ns"][i] for i in range(n) if s["feeder1.Ia"][i] == 3000.0]
    assert faulted and min(faulted) >= t0 - LAG_NS  # the recorder saw the fault, not before its inception
    assert s["feeder1.breaker"][-1] == 1.0


async def _ia_is(c: AsyncModbusTcpClient, unit: int, want: float) -> bool:
    return (await measured(c, unit))["Ia"] == want


async def test_trip_coils_open_breakers_record_arrival_and_zero_the_currents(rig: SimulatedRig) -> None:
    prot = rig.protection_endpoint()
    assert prot is not None
    devs = rig.devices()
    async with client(devs["feeder2"]) as gc, client(prot) as pc:
        before = time.monotonic_ns()
        assert not (await gc.write_coil(TRIP_COIL, True, device_id=2)).isError()
        after = time.monotonic_ns()
        log = [e for e in rig.breaker_log() if e["feeder"] == "feeder2"]
        assert [e["event"] for e in log] == ["trip_cmd"] and before <= log[0]["mono_ns"] <= after
        assert not rig.breaker_closed("feeder2")
        v = await measured(gc, 2)
        assert (v["Ia"], v["Ib"], v["Ic"]) == (0.0, 0.0, 0.0)
        assert (await gc.read_discrete_inputs(0, count=1, device_id=2)).bits[0] is False
        assert (await gc.read_coils(0, count=1, device_id=2)).bits[0] is False  # the command coil reset itself
        rig.close_breaker("feeder2")
        assert (await measured(gc, 2))["Ia"] > 0

        # the protection process's path: fault, trip coil at the breaker IED, arrival after the inception
        t0 = rig.inject_fault("feeder1", "3ph", multiple=4)
        assert not (await pc.write_coil(TRIP_COIL, True, device_id=BREAKER_UNIT)).isError()
        trip = [e for e in rig.breaker_log() if e["feeder"] == "feeder1"]
        assert len(trip) == 1 and trip[0]["event"] == "trip_cmd" and trip[0]["via"] == "protection"
        assert trip[0]["mono_ns"] > t0
        assert not rig.breaker_closed("feeder1")
        assert (await measured(pc, prot.unit_id))["Ia"] == 0.0
        rig.close_breaker("feeder1")  # the breaker interrupted the fault: closing again finds load current
        assert 0 < (await measured(pc, prot.unit_id))["Ia"] < 600
    s = rig.samples()
    assert 0.0 in s["feeder1.breaker"] and 0.0 in s["feeder2.breaker"]


async def test_phase_to_ground_fault_is_on_the_given_phase_only(fast_rig: SimulatedRig) -> None:
    rig = fast_rig
    prot = rig.protection_endpoint()
    assert prot is not None
    async with client(rig.devices()["feeder3"]) as gc, client(prot) as pc:
        rig.inject_fault("feeder3", "ph-g", phases="b", current_a=1500.0)
        v = await measured(gc, 3)
        assert v["Ib"] == 1500.0 and v["In"] == 1500.0
        assert 0 < v["Ia"] < 600 and 0 < v["Ic"] < 600
        rig.inject_fault("feeder1", "ph-g", phases="a", multiple=2)
        p = await measured(pc, prot.unit_id)
        assert p["Ia"] == 1200.0 and p["In"] == pytest.approx(1200.0, rel=1e-6)
        assert 0 < p["Ib"] < 600 and 0 < p["Ic"] < 600
    with pytest.raises(ValueError, match="3ph"):
        rig.inject_fault("feeder2", "3ph", phases="a", multiple=2)
    with pytest.raises(ValueError, match="exactly one"):
        rig.inject_fault("feeder2", "ph-g", phases="a", multiple=2, current_a=5.0)
    with pytest.raises(ValueError, match="kind"):
        rig.inject_fault("feeder2", "2ph", multiple=2)
    with pytest.raises(KeyError, match="feeder9"):
        rig.inject_fault("feeder9", "3ph", multiple=2)


async def test_frequency_ramp_follows_the_rocof_at_every_device(rig: SimulatedRig) -> None:
    prot = rig.protection_endpoint()
    assert prot is not None
    async with client(prot) as pc, client(rig.devices()["feeder2"]) as gc:
        rig.set_frequency(51.0)  # a step
        assert (await measured(pc, prot.unit_id))["f"] == 51.0
        assert (await measured(gc, 2))["f"] == 51.0
        rig.set_frequency(50.0, ramp_hz_per_s=-2.0)  # from 51 towards 50 at 2 Hz/s (the sign follows the target)

        async def read(c: AsyncModbusTcpClient, unit: int) -> tuple[int, float, int]:
            a = time.monotonic_ns()
            f = (await measured(c, unit))["f"]
            return a, f, time.monotonic_ns()

        a1, f1, b1 = await read(pc, prot.unit_id)
        await wait_for_async(lambda: _f_below(pc, prot.unit_id, f1 - 0.3), 10, "the frequency falling 0.3 Hz")
        a2, f2, b2 = await read(pc, prot.unit_id)
        # f2 - f1 over the time between the two reads; the values may be up to LAG_NS old when served
        assert 50.0 < f2 < f1 < 51.0
        slow_dt, fast_dt = (b2 - a1 + LAG_NS) / 1e9, max(1e-3, (a2 - LAG_NS - b1) / 1e9)
        assert (f1 - f2) / slow_dt <= 2.0 * 1.001 and (f1 - f2) / fast_dt >= 2.0 * 0.999
        await wait_for_async(lambda: _f_is(gc, 2, 50.0), 10, "the ramp holding its target at the relay")
        assert (await measured(pc, prot.unit_id))["f"] == 50.0
    rig.release_frequency()
    assert rig.frequency_profile() is None
    with pytest.raises(ValueError):
        rig.set_frequency(-1.0)


async def _f_below(c: AsyncModbusTcpClient, unit: int, f: float) -> bool:
    return (await measured(c, unit))["f"] < f


async def _f_is(c: AsyncModbusTcpClient, unit: int, f: float) -> bool:
    return (await measured(c, unit))["f"] == f


async def test_voltage_sag_and_swell(fast_rig: SimulatedRig) -> None:
    rig = fast_rig
    prot = rig.protection_endpoint()
    assert prot is not None
    nominal = struct.unpack(">f", struct.pack(">f", NOMINAL_KV))[0]
    async with client(rig.devices()["feeder2"]) as gc, client(prot) as pc:
        rig.set_voltage("feeder2", 0.7)
        v = await measured(gc, 2)
        for k in ("Va", "Vb", "Vc"):
            assert v[k] == pytest.approx(0.7 * nominal, rel=1e-6)
        rig.set_voltage("feeder1", 1.2, phases="a")
        p = await measured(pc, prot.unit_id)
        assert p["Va"] == pytest.approx(1.2 * nominal, rel=1e-6) and p["Vb"] < 1.01 * nominal
        rig.set_voltage("*", 1.0)
        v, p = await measured(gc, 2), await measured(pc, prot.unit_id)
        assert 0.9 * nominal < v["Va"] < 1.01 * nominal and 0.9 * nominal < p["Va"] < 1.01 * nominal


async def test_modbus_device_faults_seen_by_a_real_client(fast_rig: SimulatedRig) -> None:
    rig = fast_rig
    ep = rig.devices()["feeder2"]
    async with client(ep, timeout=0.3) as c:
        rig.device_fault("feeder2", "silent")
        with pytest.raises(ModbusIOException):
            await c.read_input_registers(0, count=2, device_id=2)
        assert not (await c.read_input_registers(0, count=2, device_id=3)).isError()  # its neighbour answers

        rig.device_fault("feeder2", "slow", delay_s=1.0)
        with pytest.raises(ModbusIOException):
            await c.read_input_registers(0, count=2, device_id=2)
    async with client(ep, timeout=5.0) as patient:
        assert not (await patient.read_input_registers(0, count=2, device_id=2)).isError()

    received: list[bytes] = []

    def trace(sending: bool, data: bytes) -> bytes:
        if not sending:
            received.append(data)
        return data

    rig.device_fault("feeder2", "garbage")
    async with client(ep, timeout=0.3, trace_packet=trace) as c:
        with pytest.raises(ModbusIOException):
            await c.read_input_registers(0, count=2, device_id=2)
        assert received and received[0][7] == 0x5A  # bytes arrived, but no valid response in them
        # (pymodbus' client then drops the connection: "Unable to decode"; the gateway's driver reports the
        # request as MalformedResponse either way)

    rig.device_fault("feeder2", "ok")
    async with client(ep, timeout=5.0) as c:
        assert not (await c.read_input_registers(0, count=2, device_id=2)).isError()

        rig.device_fault("feeder2", "restart", delay_s=0.3)
        await wait_for(lambda: not c.connected, 10, "the connection dropping")
    await wait_for_async(lambda: _answers(ep), 10, "the relay serving again")
    with pytest.raises(ValueError, match="delay_s"):
        rig.device_fault("feeder2", "slow")
    with pytest.raises(KeyError):
        rig.device_fault("feeder9", "silent")


async def _answers(ep: DeviceEndpoint) -> bool:
    c = AsyncModbusTcpClient(ep.host, port=ep.port, timeout=1.0, retries=0, reconnect_delay=0)
    try:
        if not await c.connect():
            return False
        return not (await c.read_input_registers(0, count=2, device_id=ep.unit_id)).isError()
    except ModbusIOException:
        return False
    finally:
        c.close()


async def _link_status(r: asyncio.StreamReader, w: asyncio.StreamWriter, timeout: float) -> bytes:
    """Send a DNP3 REQUEST_LINK_STATUS (master 1 -> outstation 10); the bytes that come back (b"" if none)."""
    w.write(build_request_link_status(10, 1, True).to_bytes())
    await w.drain()
    try:
        return await asyncio.wait_for(r.read(292), timeout)
    except TimeoutError:
        return b""


async def test_dnp3_and_iec61850_device_faults(fast_rig: SimulatedRig) -> None:
    rig = fast_rig
    ep = rig.devices()["feeder4"]
    r, w = await asyncio.open_connection(ep.host, ep.port)
    try:
        assert list(FrameParser().feed(await _link_status(r, w, 5.0)))  # a valid link frame
        rig.device_fault("feeder4", "silent")
        assert await _link_status(r, w, 0.3) == b""
        rig.device_fault("feeder4", "garbage")
        junk = await _link_status(r, w, 5.0)
        assert junk and not list(FrameParser().feed(junk))  # bytes, but no frame survives the CRC checks
        rig.device_fault("feeder4", "slow", delay_s=1.0)
        assert await _link_status(r, w, 0.3) == b""
        assert list(FrameParser().feed(await asyncio.wait_for(r.read(292), 5.0)))  # ... it came late
        rig.device_fault("feeder4", "ok")
        assert list(FrameParser().feed(await _link_status(r, w, 5.0)))
        rig.device_fault("feeder4", "restart", delay_s=0.3)
        assert await asyncio.wait_for(r.read(292), 5.0) == b""  # the connection dropped
    finally:
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()

    async def dnp3_back() -> bool:
        try:
            r2, w2 = await asyncio.open_connection(ep.host, ep.port)
        except OSError:
            return False
        try:
            return bool(list(FrameParser().feed(await _link_status(r2, w2, 2.0))))
        finally:
            w2.close()
            with contextlib.suppress(OSError):
                await w2.wait_closed()

    await wait_for_async(dnp3_back, 10, "the RTU serving again")
    assert rig.jump_clock("feeder4", 3600.0) > 0
    with pytest.raises(InjectionUnsupported):
        rig.jump_clock("feeder2", 1.0)

    if "feeder5" not in rig.devices():
        with pytest.raises(InjectionUnsupported, match="pyiec61850"):
            rig.device_fault("feeder5", "restart", delay_s=0.1)
        return
    ied = rig.devices()["feeder5"]
    with pytest.raises(InjectionUnsupported, match="garbage"):
        rig.device_fault("feeder5", "garbage")
    rig.device_fault("feeder5", "restart", delay_s=0.3)

    async def mms_back() -> bool:
        try:
            _, w3 = await asyncio.open_connection(ied.host, ied.port)
        except OSError:
            return False
        w3.close()
        with contextlib.suppress(OSError):
            await w3.wait_closed()
        return True

    await wait_for_async(mms_back, 10, "the IEC 61850 IED listening again")


async def test_samples_are_bounded(fast_rig: SimulatedRig) -> None:
    rig = fast_rig  # keeps 0.3 s at 10 ms: 30 rows
    await wait_for(lambda: len(rig.samples()["t_mono_ns"]) == 30, 10, "the sample ring filling")
    t = rig.samples()["t_mono_ns"]
    t0 = t[0]
    await wait_for(lambda: rig.samples()["t_mono_ns"][0] > t0, 10, "the oldest sample being dropped")
    s = rig.samples()
    assert len(s["t_mono_ns"]) == 30 and s["t_mono_ns"] == sorted(s["t_mono_ns"])
    assert {"feeder1.Ia", "feeder4.Ic", "incomer.breaker"} <= set(s)


async def test_the_protection_process_trips_the_protected_feeder_with_honest_timing(rig: SimulatedRig) -> None:
    """The real protection process on the rig's protection link: a 50 ms definite-time element trips the fault,
    the trip command's arrival (the protection rig's clock) is >= 50 ms after the inception, and the gateway's
    view of feeder1 shows the open breaker."""
    from protection.measurements import V_ALL
    from protection.process import start_protection_process
    from protection.settings import OvercurrentSettings, ProtectionSettings

    spec = rig.protection
    assert spec is not None
    settings = ProtectionSettings(group1=(OvercurrentSettings(name="50P", type="50", pickup_a=1000.0,
                                                              delay_s=0.05),))
    h = start_protection_process(settings, spec.source_spec(), period_s=0.001,
                                 outputs=(spec.output_spec("cb", elements=("50P",)),))
    try:
        await wait_for(lambda: h.stats().valid == V_ALL, 15, "valid measurements from the protection IED")
        assert rig.breaker_closed("feeder1")  # load only: no trip
        t0 = rig.inject_fault("feeder1", "3ph", multiple=5)
        await wait_for(lambda: not rig.breaker_closed("feeder1"), 15, "the protection tripping feeder1")
        trip = [e for e in rig.breaker_log() if e["feeder"] == "feeder1" and e["event"] == "trip_cmd"]
        assert trip and trip[0]["via"] == "protection"
        assert 50_000_000 <= trip[0]["mono_ns"] - t0 < 5_000_000_000
        async with client(rig.devices()["feeder1"]) as gc:
            await wait_for_async(lambda: _breaker_bit_is(gc, 1, False), 10, "the gateway's relay showing it open")
            assert (await measured(gc, 1))["Ia"] == 0.0
    finally:
        h.stop()


async def _breaker_bit_is(c: AsyncModbusTcpClient, unit: int, closed: bool) -> bool:
    return bool((await c.read_discrete_inputs(0, count=1, device_id=unit)).bits[0]) is closed

"""The Modbus driver against real peers over loopback: the pymodbus server (TCP and RTU through a pty pair)
and byte-level fakes for malformed input."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from gateway.config import DeviceConfig, LinkConfig, PointConfig
from gateway.model import Q
from hil_tests.modbus_sim import SimServer, SimUnit
from protocols.modbus import (
    DeviceTimeout,
    LinkDown,
    MalformedResponse,
    ModbusClient,
    ModbusError,
    ModbusExceptionResponse,
    plan_reads,
)
from tests.protocols.modbus_helpers import ByteServer, holding_response, pty_pair

ALL_TYPES = [
    PointConfig(name="i16", kind="holding", address=0, type="int16"),
    PointConfig(name="u16", kind="holding", address=1, type="uint16", scale=0.5),
    PointConfig(name="i32", kind="holding", address=2, type="int32", word_order="little"),
    PointConfig(name="u32", kind="holding", address=4, type="uint32", byte_order="little"),
    PointConfig(name="f32", kind="input", address=10, type="float32"),
    PointConfig(name="f64", kind="input", address=12, type="float64", word_order="little",
                byte_order="little"),
    PointConfig(name="hb", kind="holding", address=6, type="bool"),
    PointConfig(name="c", kind="coil", address=3),
    PointConfig(name="di", kind="discrete", address=9),
]
EXPECT = {"i16": -1234.0, "u16": 30000.0, "i32": -70000.0, "u32": 4_000_000_000.0, "f32": 50.125,
          "f64": -math.e, "hb": 1.0, "c": 1.0, "di": 1.0}


def fill(unit: SimUnit) -> None:
    unit.set("holding", 0, -1234, "int16")
    unit.set("holding", 1, 60000, "uint16")
    unit.set("holding", 2, -70000, "int32", word_order="little")
    unit.set("holding", 4, 4_000_000_000, "uint32", byte_order="little")
    unit.set("holding", 6, 7)
    unit.set("input", 10, 50.125, "float32")
    unit.set("input", 12, -math.e, "float64", word_order="little", byte_order="little")
    unit.coils[3] = True
    unit.discrete[9] = True


def tcp_link(port: int, *devices: DeviceConfig) -> LinkConfig:
    return LinkConfig(name="l", protocol="modbus_tcp", host="127.0.0.1", port=port, connect_timeout_s=2.0,
                      devices=devices)


async def read_all(client: ModbusClient, device: DeviceConfig) -> dict[str, float]:
    out: dict[str, float] = {}
    for block in plan_reads(device, device.points):
        values = await client.read(device, block)
        out.update(zip([p.name for p in block.points], values.tolist(), strict=True))
    return out


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    u1, u2 = SimUnit(1), SimUnit(2)
    fill(u1)
    async with SimServer([u1, u2], tcp=("127.0.0.1", 0)) as srv:
        yield srv


@pytest.fixture
async def client(sim: SimServer) -> AsyncIterator[ModbusClient]:
    d = DeviceConfig(name="d1", unit_id=1, timeout_s=0.3, points=tuple(ALL_TYPES))
    c = ModbusClient(tcp_link(sim.port, d))
    await c.connect()
    yield c
    c.close()


async def test_tcp_reads_every_type(client: ModbusClient) -> None:
    assert await read_all(client, client.link.devices[0]) == pytest.approx(EXPECT)


async def test_connect_close_idempotent(sim: SimServer) -> None:
    c = ModbusClient(tcp_link(sim.port))
    await c.connect()
    await c.connect()
    assert c.connected
    c.close()
    c.close()
    assert not c.connected
    with pytest.raises(LinkDown):
        await c.read(DeviceConfig(name="x"), plan_reads(DeviceConfig(name="x"), ALL_TYPES[:1])[0])


async def test_connect_refused_raises_linkdown() -> None:
    async with ByteServer(lambda req, w: _true()) as bs:
        port = bs.port
    c = ModbusClient(tcp_link(port))  # nothing listens there any more
    with pytest.raises(LinkDown):
        await c.connect()
    c.close()


async def _true() -> bool:
    return True


@pytest.mark.parametrize(
    ("code", "quality"),
    [
        (1, Q.INVALID | Q.BAD_REFERENCE),
        (2, Q.INVALID | Q.BAD_REFERENCE),
        (3, Q.INVALID | Q.INCONSISTENT),
        (4, Q.INVALID | Q.FAILURE),
        (6, Q.QUESTIONABLE | Q.OLD_DATA),
    ],
)
async def test_exception_codes_map_to_quality(
    sim: SimServer, client: ModbusClient, code: int, quality: Q
) -> None:
    sim[1].exception["holding"] = code
    device = client.link.devices[0]
    block = plan_reads(device, ALL_TYPES[:1])[0]
    with pytest.raises(ModbusExceptionResponse) as ei:
        await client.read(device, block)
    assert ei.value.code == code and ei.value.quality == quality and not ei.value.no_response
    sim[1].exception.clear()
    assert (await client.read(device, block))[0] == -1234.0  # the link is still usable


async def test_gateway_exceptions_count_as_no_response(sim: SimServer, client: ModbusClient) -> None:
    sim[1].exception["*"] = 0x0B
    device = client.link.devices[0]
    with pytest.raises(DeviceTimeout) as ei:
        await client.read(device, plan_reads(device, ALL_TYPES[:1])[0])
    assert ei.value.code == 0x0B and ei.value.no_response
    assert ei.value.quality == Q.QUESTIONABLE | Q.OLD_DATA | Q.FAILURE


async def test_illegal_address_from_real_server(client: ModbusClient) -> None:
    d = DeviceConfig(name="d1", unit_id=1, timeout_s=0.3)
    block = plan_reads(d, [PointConfig(name="far", kind="holding", address=5000)])[0]
    with pytest.raises(ModbusExceptionResponse) as ei:
        await client.read(d, block)
    assert ei.value.code == 2


async def test_timeout_then_other_unit_still_answers(sim: SimServer, client: ModbusClient) -> None:
    dead = DeviceConfig(name="dead", unit_id=7, timeout_s=0.2)  # no such unit: the server stays silent
    block = plan_reads(dead, ALL_TYPES[:1])[0]
    for _ in range(5):  # pymodbus would close the link after retries+3 timeouts; ours must not
        with pytest.raises(DeviceTimeout) as ei:
            await client.read(dead, block)
        assert ei.value.quality == Q.QUESTIONABLE | Q.OLD_DATA | Q.FAILURE
    assert client.connected
    assert (await client.read(client.link.devices[0], block))[0] == -1234.0


async def test_late_response_is_not_taken_for_the_next_request(sim: SimServer, client: ModbusClient) -> None:
    d1 = client.link.devices[0]
    d2 = DeviceConfig(name="d2", unit_id=2, timeout_s=0.5)
    sim[2].set("holding", 0, 99)
    block = plan_reads(d1, ALL_TYPES[:1])[0]
    sim[1].delay_s = 0.5  # answers after our 0.3 s timeout
    with pytest.raises(DeviceTimeout):
        await client.read(d1, block)
    assert (await client.read(d2, block))[0] == 99.0
    sim[1].delay_s = 0.0


async def test_writes_read_back_from_server(sim: SimServer) -> None:
    coil = PointConfig(name="brk", kind="coil", address=5, writable=True)
    sp = PointConfig(name="sp", kind="holding", address=20, type="int16", scale=0.1, writable=True)
    f = PointConfig(name="f", kind="holding", address=30, type="float32", word_order="little", writable=True)
    ro = PointConfig(name="ro", kind="holding", address=40)
    d = DeviceConfig(name="d1", unit_id=1, timeout_s=0.5, points=(coil, sp, f, ro))
    c = ModbusClient(tcp_link(sim.port, d))
    await c.connect()
    try:
        await c.write(d, coil, 1)
        await c.write(d, sp, -12.3)
        await c.write(d, f, 1.25)
        assert bool(sim[1].coils[5])
        assert sim[1].get_words("holding", 20, 1) == [(-123) & 0xFFFF]
        got = await read_all(c, DeviceConfig(name="d1", unit_id=1, points=(coil, sp, f)))
        assert got == pytest.approx({"brk": 1.0, "sp": -12.3, "f": 1.25})
        await c.write(d, coil, 0)
        assert not sim[1].coils[5]
        with pytest.raises(ValueError):
            await c.write(d, ro, 1)
        sim[1].exception["holding"] = 3
        with pytest.raises(ModbusExceptionResponse):
            await c.write(d, sp, 1.0)
    finally:
        c.close()


async def test_garbage_bytes_are_malformed() -> None:
    async def junk(req: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"\x13\x37garbage\xff\x00\x01 not modbus at all")
        return True

    async with ByteServer(junk) as bs:
        d = DeviceConfig(name="d", timeout_s=0.3)
        c = ModbusClient(tcp_link(bs.port, d))
        await c.connect()
        try:
            with pytest.raises(MalformedResponse) as ei:
                await c.read(d, plan_reads(d, ALL_TYPES[:1])[0])
            assert ei.value.quality == Q.INVALID | Q.INCONSISTENT
        finally:
            c.close()


async def test_wrong_length_response_is_malformed() -> None:
    async def short(req: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(holding_response(req, [1]))  # one register where ten were asked
        return True

    async with ByteServer(short) as bs:
        d = DeviceConfig(name="d", timeout_s=0.3)
        c = ModbusClient(tcp_link(bs.port, d))
        await c.connect()
        try:
            pts = [PointConfig(name=f"p{i}", kind="holding", address=i) for i in range(10)]
            with pytest.raises(MalformedResponse):
                await c.read(d, plan_reads(d, pts)[0])
        finally:
            c.close()


async def test_close_mid_response() -> None:
    async def half(req: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(holding_response(req, [1, 2, 3, 4])[:9])  # header and part of the data, then hang up
        await w.drain()
        return False

    async with ByteServer(half) as bs:
        d = DeviceConfig(name="d", timeout_s=5.0)  # the failure must come from the close, not the timeout
        c = ModbusClient(tcp_link(bs.port, d))
        await c.connect()
        try:
            pts = [PointConfig(name=f"p{i}", kind="holding", address=i) for i in range(4)]
            with pytest.raises((MalformedResponse, LinkDown)) as ei:
                await asyncio.wait_for(c.read(d, plan_reads(d, pts)[0]), 4.0)
            assert isinstance(ei.value, ModbusError)
            assert not c.connected
            await c.connect()  # reconnect works after the peer hung up
            assert c.connected
        finally:
            c.close()


async def test_peer_closes_between_requests() -> None:
    async def once(req: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(holding_response(req, [5]))
        return False  # answer, then close

    async with ByteServer(once) as bs:
        d = DeviceConfig(name="d", timeout_s=2.0)
        c = ModbusClient(tcp_link(bs.port, d))
        await c.connect()
        block = plan_reads(d, ALL_TYPES[1:2])[0]
        try:
            assert (await c.read(d, block))[0] == 2.5
            with pytest.raises(LinkDown):
                for _ in range(100):  # the close may race the next request: either way LinkDown, fast
                    await asyncio.wait_for(c.read(d, block), 1.5)
        finally:
            c.close()


async def test_rtu_two_units_on_one_line(tmp_path: Path) -> None:
    with pty_pair(tmp_path) as (server_tty, client_tty):
        u1, u2 = SimUnit(1), SimUnit(2)
        fill(u1)
        u2.set("holding", 0, 4321, "int16")
        async with SimServer([u1, u2], serial=server_tty, baudrate=115200):
            d1 = DeviceConfig(name="d1", unit_id=1, timeout_s=0.5, points=tuple(ALL_TYPES))
            d2 = DeviceConfig(name="d2", unit_id=2, timeout_s=0.5, points=tuple(ALL_TYPES[:1]))
            dead = DeviceConfig(name="d3", unit_id=3, timeout_s=0.2, points=tuple(ALL_TYPES[:1]))
            link = LinkConfig(name="rtu", protocol="modbus_rtu", serial_port=client_tty, baudrate=115200,
                              devices=(d1, d2, dead))
            c = ModbusClient(link)
            await c.connect()
            try:
                assert await read_all(c, d1) == pytest.approx(EXPECT)
                assert await read_all(c, d2) == {"i16": 4321.0}
                with pytest.raises(DeviceTimeout):
                    await read_all(c, dead)
                assert await read_all(c, d2) == {"i16": 4321.0}
                await c.write(d2, PointConfig(name="w", kind="holding", address=50, writable=True), 77)
                assert u2.holding[50] == 77 and u1.holding[50] == 0
            finally:
                c.close()


def test_decode_result_dtype() -> None:
    d = DeviceConfig(name="d")
    block = plan_reads(d, ALL_TYPES[:2])[0]
    out = block.decode([1, 2])
    assert out.dtype == np.float64 and out.tolist() == [1.0, 1.0]

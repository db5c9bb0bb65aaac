"""protection.fastmodbus: frames, response checks, float decoding, and the blocking client against real servers.

Real pymodbus servers (``hil_tests.modbus_sim``) run on an asyncio loop in a background thread (:class:`SimRig`,
also used by the source and output tests); byte-level fake servers only for malformed responses.
"""

from __future__ import annotations

import asyncio
import math
import struct
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from hil_tests.modbus_sim import SimServer, SimUnit, encode_words
from protection.fastmodbus import (
    FC_READ_HOLDING,
    FC_READ_INPUT,
    Float32Decoder,
    FrameBuffer,
    ModbusConnectionError,
    ModbusExceptionResponse,
    ModbusFrameError,
    ModbusTcpClient,
    ModbusTimeout,
    ModbusTransactionMismatch,
    ReadRequest,
    WriteCoilRequest,
    check_response,
)
from tests.protocols.modbus_helpers import ByteServer, mbap_response

T = TypeVar("T")

VALUES = (412.5, 398.25, 405.0, 7.5, 6.35, 6.3, 6.4, 49.98)  # Ia Ib Ic In (A) Va Vb Vc (kV) f (Hz)


class SimRig:
    """An asyncio loop on a background thread serving simulated IEDs to blocking clients under test.

    ``serve(units)`` starts a :class:`SimServer` (port 0 = a free one) and returns it; ``stop(server)`` stops it;
    ``byte_server(handler)`` starts a :class:`ByteServer`. ``close()`` stops everything and joins the thread.
    SimUnit tables may be read from the test thread; knobs (``silent``, ``exception``) are plain attributes.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sim-rig-loop")
        self._thread.start()
        self._servers: list[SimServer] = []
        self._byte_servers: list[ByteServer] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def serve(self, units: list[SimUnit], port: int = 0) -> SimServer:
        srv = SimServer(units, tcp=("127.0.0.1", port))
        self.run(srv.start())
        self._servers.append(srv)
        return srv

    def stop(self, srv: SimServer) -> None:
        self.run(self._stopped(srv.stop()))

    def byte_server(self, handler: Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]) -> ByteServer:
        bs = ByteServer(handler)
        self.run(bs.__aenter__())
        self._byte_servers.append(bs)
        return bs

    @staticmethod
    async def _stopped(stop: Awaitable[None]) -> None:
        """Run a server's stop after the loop has taken in every connection already waiting to be accepted.

        Python 3.11 asyncio leaks the socket of a connection accepted just as its server closes (the transport
        cannot attach to a closed server; a ResourceWarning later, which is an error here). A client that
        connected before the stop sits in the kernel's backlog until the loop polls the listening socket, so a
        few loop iterations first (accept callback, then the task that builds the transport) close that gap.
        """
        for _ in range(5):
            await asyncio.sleep(0)
        await stop

    @staticmethod
    async def _settle() -> None:
        """Let what the stopped servers left running finish (e.g. a delayed answer), then cancel the rest."""
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        if rest:
            await asyncio.wait(rest, timeout=2.0)
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def close(self) -> None:
        try:
            for srv in self._servers:
                self.run(self._stopped(srv.stop()))
            for bs in self._byte_servers:
                self.run(self._stopped(bs.__aexit__(None, None, None)))
            self.run(self._settle())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


@pytest.fixture
def rig() -> Iterator[SimRig]:
    r = SimRig()
    yield r
    r.close()


def load_floats(unit: SimUnit, kind: str, address: int, values: tuple[float, ...], word_order: str = "big") -> None:
    for i, v in enumerate(values):
        unit.set(kind, address + 2 * i, v, "float32", word_order=word_order)  # type: ignore[arg-type]


def f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


# --- frames ----------------------------------------------------------------------------------------------------


def test_read_request_frame_and_tid_patch() -> None:
    req = ReadRequest(7, FC_READ_INPUT, 0x0102, 16)
    assert bytes(req.frame) == bytes.fromhex("0000 0000 0006 07 04 0102 0010")
    frame_id = id(req.frame)
    req.set_tid(0xBEEF)
    assert bytes(req.frame[:2]) == b"\xbe\xef" and req.tid == 0xBEEF
    req.set_tid(0x1_0001)  # wraps to 16 bits
    assert req.tid == 1
    assert id(req.frame) == frame_id  # patched in place
    assert req.response_len == 7 + 2 + 32


def test_write_coil_frame() -> None:
    assert bytes(WriteCoilRequest(1, 3, True).frame) == bytes.fromhex("0000 0000 0006 01 05 0003 ff00")
    assert bytes(WriteCoilRequest(2, 0x1234, False).frame) == bytes.fromhex("0000 0000 0006 02 05 1234 0000")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1, FC_READ_INPUT, 0, 0), "register count"),
        ((1, FC_READ_INPUT, 0, 126), "register count"),
        ((256, FC_READ_INPUT, 0, 1), "unit id"),
        ((1, 6, 0, 1), "not a register read"),
        ((1, FC_READ_HOLDING, 65530, 16), "run past"),
    ],
)
def test_read_request_rejects_bad_fields(args: tuple[int, int, int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ReadRequest(*args)


def test_frame_buffer_assembles_frames_from_pieces() -> None:
    fb = FrameBuffer()
    a = bytes.fromhex("0001 0000 0006 01 05 0003 ff00")
    b = bytes.fromhex("0002 0000 0003 01 84 02")
    stream = a + b
    for i, byte in enumerate(stream[: len(a) - 1]):
        fb.buf[i] = byte
        fb.n = i + 1
        assert fb.frame() == 0  # incomplete
    fb.buf[len(a) - 1 : len(stream)] = stream[len(a) - 1 :]
    fb.n = len(stream)
    assert fb.frame() == len(a)
    fb.drop_frame()
    assert fb.frame() == len(b) and bytes(fb.buf[: len(b)]) == b
    fb.drop_frame()
    assert fb.n == 0 and fb.frame() == 0


@pytest.mark.parametrize(
    "header",
    [
        bytes.fromhex("0001 0001 0006 01"),  # protocol id 1
        bytes.fromhex("4854 5450 2f31 2e"),  # "HTTP/1." — not Modbus at all
        bytes.fromhex("0001 0000 0001 01"),  # length 1: no room for a function code
        bytes.fromhex("0001 0000 00ff 01"),  # length 255: beyond the largest ADU
    ],
)
def test_frame_buffer_rejects_garbage_headers(header: bytes) -> None:
    fb = FrameBuffer()
    fb.buf[: len(header)] = header
    fb.n = len(header)
    with pytest.raises(ModbusFrameError):
        fb.frame()


def _frame(req_frame: bytes, pdu: bytes, tid: int | None = None, unit: int | None = None) -> bytearray:
    out = bytearray(mbap_response(req_frame, pdu))
    if tid is not None:
        out[0:2] = tid.to_bytes(2, "big")
    if unit is not None:
        out[6] = unit
    return out


def test_check_response_accepts_a_good_read_and_echo() -> None:
    req = ReadRequest(1, FC_READ_INPUT, 0, 2)
    req.set_tid(9)
    good = _frame(bytes(req.frame), bytes([4, 4, 0, 1, 0, 2]))
    check_response(req, good, len(good))
    coil = WriteCoilRequest(1, 3, True)
    coil.set_tid(10)
    echo = bytearray(coil.frame)
    check_response(coil, echo, len(echo))


@pytest.mark.parametrize(
    ("pdu", "kw", "exc", "match"),
    [
        (bytes([4, 4, 0, 1, 0, 2]), {"tid": 8}, ModbusTransactionMismatch, "expected 9, got 8"),
        (bytes([4, 4, 0, 1, 0, 2]), {"unit": 2}, ModbusFrameError, "unit 2"),
        (bytes([3, 4, 0, 1, 0, 2]), {}, ModbusFrameError, "function 3"),
        (bytes([4, 2, 0, 1]), {}, ModbusFrameError, "byte count 2"),
        (bytes([4, 4, 0, 1]), {}, ModbusFrameError, "length"),  # short: byte count says 4, 2 bytes follow
        (bytes([4]), {}, ModbusFrameError, "too short"),
        (bytes([0x84, 2, 0]), {}, ModbusFrameError, "exception response length"),
    ],
)
def test_check_response_rejects(pdu: bytes, kw: dict[str, int], exc: type[Exception], match: str) -> None:
    req = ReadRequest(1, FC_READ_INPUT, 0, 2)
    req.set_tid(9)
    frame = _frame(bytes(req.frame), pdu, **kw)
    with pytest.raises(exc, match=match):
        check_response(req, frame, len(frame))


def test_check_response_exception_carries_the_code() -> None:
    req = ReadRequest(1, FC_READ_HOLDING, 0, 2)
    frame = _frame(bytes(req.frame), bytes([0x83, 2]))
    with pytest.raises(ModbusExceptionResponse, match="illegal data address") as ei:
        check_response(req, frame, len(frame))
    assert ei.value.code == 2 and ei.value.function == FC_READ_HOLDING


def test_check_response_write_echo_must_match() -> None:
    coil = WriteCoilRequest(1, 3, True)
    bad = bytearray(coil.frame)
    bad[10:12] = b"\x00\x00"  # echoes "off" for an "on" request
    with pytest.raises(ModbusFrameError, match="echo"):
        check_response(coil, bad, len(bad))


@pytest.mark.parametrize("word_order", ["big", "little"])
def test_float32_decoder_matches_the_simulator_encoding(word_order: str) -> None:
    words: list[int] = []
    for v in VALUES:
        words += encode_words(v, "float32", word_order=word_order)
    raw = b"\xaa" * 9 + b"".join(w.to_bytes(2, "big") for w in words)
    dec = Float32Decoder(8, word_order)  # type: ignore[arg-type]
    assert dec.decode(raw, 9) == tuple(f32(v) for v in VALUES)
    assert dec.decode(raw, 9) == dec.decode(raw, 9)  # the scratch buffer is reused, results are not


def test_float32_decoder_passes_nan_through() -> None:
    raw = struct.pack(">2f", math.nan, 1.0)
    out = Float32Decoder(2, "big").decode(raw)
    assert math.isnan(out[0]) and out[1] == 1.0


# --- the blocking client against a real server ------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "fc", "word_order"), [("input", 4, "big"), ("holding", 3, "little")])
def test_client_reads_floats(rig: SimRig, kind: str, fc: int, word_order: str) -> None:
    unit = SimUnit(3)
    load_floats(unit, kind, 20, VALUES, word_order)
    srv = rig.serve([unit])
    c = ModbusTcpClient("127.0.0.1", srv.port, timeout_s=5.0)
    try:
        c.connect()
        req = ReadRequest(3, fc, 20, 16)
        dec = Float32Decoder(8, word_order)  # type: ignore[arg-type]
        first = dec.decode(c.read_registers(req))
        assert first == tuple(f32(v) for v in VALUES)
        tid = req.tid
        assert dec.decode(c.read_registers(req)) == first
        assert req.tid == (tid + 1) & 0xFFFF  # a fresh transaction id per request
    finally:
        c.close()
    c.close()  # idempotent


def test_client_writes_a_coil(rig: SimRig) -> None:
    unit = SimUnit(1)
    srv = rig.serve([unit])
    c = ModbusTcpClient("127.0.0.1", srv.port, timeout_s=5.0)
    try:
        c.connect()
        c.write_coil(WriteCoilRequest(1, 5, True))
        assert bool(unit.coils[5])  # the echo came after the server stored it
        c.write_coil(WriteCoilRequest(1, 5, False))
        assert not unit.coils[5]
    finally:
        c.close()


def test_client_exception_response_keeps_the_connection(rig: SimRig) -> None:
    unit = SimUnit(1)
    unit.exception = {"input": 2}
    srv = rig.serve([unit])
    c = ModbusTcpClient("127.0.0.1", srv.port, timeout_s=5.0)
    try:
        c.connect()
        req = ReadRequest(1, FC_READ_INPUT, 0, 16)
        with pytest.raises(ModbusExceptionResponse) as ei:
            c.read_registers(req)
        assert ei.value.code == 2
        assert c.connected
        unit.exception = {}
        assert len(c.read_registers(req)) == 32
    finally:
        c.close()


def test_client_silent_unit_times_out_and_closes(rig: SimRig) -> None:
    unit = SimUnit(1)
    srv = rig.serve([unit])
    c = ModbusTcpClient("127.0.0.1", srv.port, timeout_s=0.05)
    try:
        c.connect()
        unit.silent = True
        with pytest.raises(ModbusTimeout):
            c.read_registers(ReadRequest(1, FC_READ_INPUT, 0, 16))
        assert not c.connected
        with pytest.raises(ModbusConnectionError, match="not connected"):
            c.read_registers(ReadRequest(1, FC_READ_INPUT, 0, 16))
    finally:
        c.close()


def test_client_connect_refused(rig: SimRig) -> None:
    srv = rig.serve([SimUnit(1)])
    port = srv.port
    rig.stop(srv)
    c = ModbusTcpClient("127.0.0.1", port, timeout_s=1.0, connect_timeout_s=1.0)
    with pytest.raises(ModbusConnectionError, match="connect"):
        c.connect()
    assert not c.connected


def test_client_server_gone_mid_session(rig: SimRig) -> None:
    srv = rig.serve([SimUnit(1)])
    c = ModbusTcpClient("127.0.0.1", srv.port, timeout_s=5.0)
    try:
        c.connect()
        req = ReadRequest(1, FC_READ_INPUT, 0, 16)
        c.read_registers(req)
        rig.stop(srv)
        with pytest.raises((ModbusConnectionError, ModbusTimeout)):
            c.read_registers(req)
        assert not c.connected
    finally:
        c.close()


# --- malformed responses (byte-level fake servers) -----------------------------------------------------------


def _fake(rig: SimRig, reply: Callable[[bytes], bytes], close_after: bool = False) -> ByteServer:
    async def handler(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply(request))
        return not close_after

    return rig.byte_server(handler)


@pytest.mark.parametrize(
    ("reply", "exc", "match"),
    [
        (lambda r: b"garbage garbage garbage!", ModbusFrameError, "protocol id"),
        (lambda r: bytes([r[0], r[1] ^ 1]) + mbap_response(r, bytes([4, 32]) + bytes(32))[2:],
         ModbusTransactionMismatch, "transaction id"),
        (lambda r: mbap_response(r, bytes([4, 32]) + bytes(8)), ModbusFrameError, "length"),  # short data
        (lambda r: mbap_response(r, bytes([5, 32]) + bytes(32)), ModbusFrameError, "function 5"),
    ],
)
def test_client_malformed_responses(
    rig: SimRig, reply: Callable[[bytes], bytes], exc: type[Exception], match: str
) -> None:
    bs = _fake(rig, reply)
    c = ModbusTcpClient("127.0.0.1", bs.port, timeout_s=5.0)
    try:
        c.connect()
        with pytest.raises(exc, match=match):
            c.read_registers(ReadRequest(1, FC_READ_INPUT, 0, 16))
        assert not c.connected  # the stream cannot be trusted any more
    finally:
        c.close()


def test_client_truncated_response_then_close(rig: SimRig) -> None:
    bs = _fake(rig, lambda r: mbap_response(r, bytes([4, 32]) + bytes(32))[:20], close_after=True)
    c = ModbusTcpClient("127.0.0.1", bs.port, timeout_s=5.0)
    try:
        c.connect()
        with pytest.raises(ModbusConnectionError, match="closed"):
            c.read_registers(ReadRequest(1, FC_READ_INPUT, 0, 16))
    finally:
        c.close()


def test_client_truncated_response_times_out(rig: SimRig) -> None:
    bs = _fake(rig, lambda r: mbap_response(r, bytes([4, 32]) + bytes(32))[:20])
    c = ModbusTcpClient("127.0.0.1", bs.port, timeout_s=0.05)
    try:
        c.connect()
        with pytest.raises(ModbusTimeout):
            c.read_registers(ReadRequest(1, FC_READ_INPUT, 0, 16))
    finally:
        c.close()

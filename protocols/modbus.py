"""Modbus TCP/RTU driver: read planning, vectorised decoding, and an async client over pymodbus.

The driver does I/O only: it never sleeps, retries, buffers or schedules (:mod:`gateway.runner` does).

Read planning
-------------
:func:`plan_reads` coalesces one device's points of one poll period into as few requests as the protocol
allows: one table at a time (coil FC1, discrete FC2, holding FC3, input FC4), blocks of at most
``device.max_registers_per_request`` (≤125) registers or ``device.max_bits_per_request`` (≤2000) bits,
bridging unused gaps of at most ``device.max_gap`` registers/bits. A multi-word value is never split across
two requests, so every value is read from one response (one snapshot); values in *different* blocks of the
same poll come from different responses and may be a few milliseconds apart.

Decoding
--------
Each :class:`ReadBlock` precomputes numpy index arrays at plan time. Decoding a response is: uint16
registers → big-endian bytes → one fancy-index gather per data type (word and byte order are baked into
the indices) → ``.view(dtype)`` → float64 → ``raw * scale + offset``. No Python object is created per point.

Outcome → quality (all Modbus readings also carry ``Q.GATEWAY_TIME``: Modbus has no source time)
-----------------------------------------------------------------------------------------------
- no response within ``device.timeout_s`` → :class:`DeviceTimeout` → QUESTIONABLE|OLD_DATA|FAILURE
- exception 0x0A/0x0B (gateway path/target failed) → :class:`DeviceTimeout` (``.code`` set)
  → QUESTIONABLE|OLD_DATA|FAILURE
- link not connected / connection lost → :class:`LinkDown` → QUESTIONABLE|OLD_DATA|FAILURE
- exception 1 (illegal function), 2 (illegal data address) → :class:`ModbusExceptionResponse`
  → INVALID|BAD_REFERENCE
- exception 3 (illegal data value) → INVALID|INCONSISTENT
- exception 4 (server device failure) and any other code → INVALID|FAILURE
- exception 5/6 (acknowledge / busy) → QUESTIONABLE|OLD_DATA
- bytes arrived but no valid response (garbage, wrong length) → :class:`MalformedResponse`
  → INVALID|INCONSISTENT

The runner decides what to do with each (keep last value, emit once on the transition, back off the device).

Threading: everything here runs on the owning asyncio loop; one :class:`ModbusClient` belongs to one link
runner task, which issues one request at a time.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gateway.config import DTYPE_WORDS, DeviceConfig, LinkConfig, PointConfig, RegisterKind
from gateway.model import Q

__all__ = [
    "FUNCTION_CODES",
    "MAX_BITS",
    "MAX_REGISTERS",
    "Q_BUSY",
    "Q_GARBAGE",
    "Q_NO_RESPONSE",
    "DeviceTimeout",
    "LinkDown",
    "MalformedResponse",
    "ModbusClient",
    "ModbusError",
    "ModbusExceptionResponse",
    "ReadBlock",
    "decode_block",
    "encode_value",
    "exception_quality",
    "group_by_period",
    "plan_device",
    "plan_reads",
    "point_words",
    "requests_per_second",
]

MAX_REGISTERS: Final = 125  # FC3/FC4 protocol maximum per request
MAX_BITS: Final = 2000  # FC1/FC2 protocol maximum per request
FUNCTION_CODES: Final[dict[str, int]] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
_TABLE_ORDER: Final[tuple[RegisterKind, ...]] = ("coil", "discrete", "holding", "input")
_BIT_TABLES: Final = frozenset({"coil", "discrete"})

# Quality words for failure outcomes (without GATEWAY_TIME; the runner adds it to every reading).
Q_NO_RESPONSE: Final = int(Q.QUESTIONABLE | Q.OLD_DATA | Q.FAILURE)
Q_BUSY: Final = int(Q.QUESTIONABLE | Q.OLD_DATA)
Q_GARBAGE: Final = int(Q.INVALID | Q.INCONSISTENT)
_EXCEPTION_QUALITY: Final[dict[int, int]] = {
    0x01: int(Q.INVALID | Q.BAD_REFERENCE),
    0x02: int(Q.INVALID | Q.BAD_REFERENCE),
    0x03: int(Q.INVALID | Q.INCONSISTENT),
    0x04: int(Q.INVALID | Q.FAILURE),
    0x05: Q_BUSY,
    0x06: Q_BUSY,
    0x0A: Q_NO_RESPONSE,
    0x0B: Q_NO_RESPONSE,
}
_GATEWAY_CODES: Final = frozenset({0x0A, 0x0B})

# numpy big-endian dtype of each register data type (bool is handled separately).
_NP_DTYPE: Final[dict[str, np.dtype[Any]]] = {
    "int16": np.dtype(">i2"),
    "uint16": np.dtype(">u2"),
    "int32": np.dtype(">i4"),
    "uint32": np.dtype(">u4"),
    "float32": np.dtype(">f4"),
    "float64": np.dtype(">f8"),
}
_STRUCT_FMT: Final[dict[str, str]] = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
    "float64": ">d",
}
_INT_RANGE: Final[dict[str, tuple[int, int]]] = {
    "int16": (-(1 << 15), (1 << 15) - 1),
    "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "uint32": (0, (1 << 32) - 1),
}


def exception_quality(code: int) -> int:
    """Quality word (without GATEWAY_TIME) for a Modbus exception code."""
    return _EXCEPTION_QUALITY.get(code, int(Q.INVALID | Q.FAILURE))


# ----------------------------------------------------------------------------------------------------
# Errors. One base class; ``quality`` tells the runner what to stamp on the affected points, ``no_response``
# whether the device (or the link) failed to answer at all (the runner backs such a device off).
# ----------------------------------------------------------------------------------------------------


class ModbusError(Exception):
    """Base of every driver error."""

    quality: int = int(Q.INVALID | Q.FAILURE)
    no_response: bool = False


class LinkDown(ModbusError):
    """The link is not connected, could not be opened, or dropped during a request."""

    quality = Q_NO_RESPONSE
    no_response = True


class DeviceTimeout(ModbusError):
    """No response within the device's timeout, or a gateway reported the target unreachable (0x0A/0x0B)."""

    quality = Q_NO_RESPONSE
    no_response = True

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ModbusExceptionResponse(ModbusError):
    """The device answered with a Modbus exception response."""

    def __init__(self, code: int, function_code: int) -> None:
        super().__init__(f"Modbus exception {code:#04x} for function {function_code}")
        self.code = code
        self.function_code = function_code
        self.quality = exception_quality(code)


class MalformedResponse(ModbusError):
    """Bytes arrived but they were not a valid response to the request (garbage, wrong length)."""

    quality = Q_GARBAGE


# ----------------------------------------------------------------------------------------------------
# Planning and decoding (pure functions; no I/O)
# ----------------------------------------------------------------------------------------------------


def point_words(point: PointConfig) -> int:
    """Registers (or bits, for coil/discrete) one point occupies."""
    if point.kind in _BIT_TABLES:
        return 1
    return DTYPE_WORDS[point.type]


def _byte_indices(reg_offset: int, words: int, word_order: str, byte_order: str) -> list[int]:
    """Indices into the block's wire bytes that yield the value's bytes most significant first."""
    idx: list[int] = []
    for rank in range(words):  # rank 0 = most significant word
        j = rank if word_order == "big" else words - 1 - rank
        hi = 2 * (reg_offset + j)
        idx.extend((hi, hi + 1) if byte_order == "big" else (hi + 1, hi))
    return idx


@dataclass(frozen=True, slots=True, eq=False)
class ReadBlock:
    """One read request and the precomputed plan to decode its response.

    ``points`` is the output order of :meth:`decode`. Immutable after planning; safe to share.
    """

    kind: RegisterKind
    address: int  # first register/bit requested (0-based protocol address)
    count: int  # registers (FC3/FC4) or bits (FC1/FC2) requested
    points: tuple[PointConfig, ...]
    scale: npt.NDArray[np.float64] = field(repr=False)
    offset: npt.NDArray[np.float64] = field(repr=False)
    # bits: offset of each point's bit within the response (all points)
    bit_offsets: npt.NDArray[np.intp] = field(repr=False)
    # registers: per numpy dtype, (output positions, byte index matrix of shape (n, 2*words))
    groups: tuple[tuple[np.dtype[Any], npt.NDArray[np.intp], npt.NDArray[np.intp]], ...] = field(repr=False)
    # registers holding bool points (!= 0): (output positions, register offsets)
    bool_pos: npt.NDArray[np.intp] = field(repr=False)
    bool_regs: npt.NDArray[np.intp] = field(repr=False)
    identity_scaling: bool = True

    @property
    def function_code(self) -> int:
        return FUNCTION_CODES[self.kind]

    @property
    def is_bits(self) -> bool:
        return self.kind in _BIT_TABLES

    def decode(self, data: Sequence[int] | Sequence[bool] | npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Decode a response (register words, or bits for FC1/FC2) into engineering values (float64).

        Raises :class:`MalformedResponse` if fewer than ``count`` registers/bits are given.
        """
        return decode_block(self, data)

    @classmethod
    def build(cls, kind: RegisterKind, address: int, count: int, points: Sequence[PointConfig]) -> ReadBlock:
        n = len(points)
        scale = np.fromiter((p.scale for p in points), dtype=np.float64, count=n)
        offset = np.fromiter((p.offset for p in points), dtype=np.float64, count=n)
        empty = np.zeros(0, dtype=np.intp)
        if kind in _BIT_TABLES:
            bits = np.fromiter((p.address - address for p in points), dtype=np.intp, count=n)
            return cls(kind, address, count, tuple(points), scale, offset, bits, (), empty, empty,
                       bool(np.all(scale == 1.0) and np.all(offset == 0.0)))
        by_type: dict[str, tuple[list[int], list[list[int]]]] = defaultdict(lambda: ([], []))
        bool_pos: list[int] = []
        bool_regs: list[int] = []
        for i, p in enumerate(points):
            off = p.address - address
            if p.type == "bool":
                bool_pos.append(i)
                bool_regs.append(off)
                continue
            pos, idx = by_type[p.type]
            pos.append(i)
            idx.append(_byte_indices(off, DTYPE_WORDS[p.type], p.word_order, p.byte_order))
        groups = tuple(
            (_NP_DTYPE[t], np.asarray(pos, dtype=np.intp), np.asarray(idx, dtype=np.intp))
            for t, (pos, idx) in sorted(by_type.items())
        )
        return cls(kind, address, count, tuple(points), scale, offset, empty, groups,
                   np.asarray(bool_pos, dtype=np.intp), np.asarray(bool_regs, dtype=np.intp),
                   bool(np.all(scale == 1.0) and np.all(offset == 0.0)))


def decode_block(
    block: ReadBlock, data: Sequence[int] | Sequence[bool] | npt.NDArray[Any]
) -> npt.NDArray[np.float64]:
    """Vectorised decode of one response for ``block``; see :meth:`ReadBlock.decode`."""
    out = np.empty(len(block.points), dtype=np.float64)
    if block.is_bits:
        bits = np.asarray(data, dtype=np.bool_)
        if bits.shape[0] < block.count:
            raise MalformedResponse(f"expected {block.count} bits, got {bits.shape[0]}")
        out[:] = bits[block.bit_offsets]
    else:
        regs = np.asarray(data, dtype=np.uint16)
        if regs.shape[0] < block.count:
            raise MalformedResponse(f"expected {block.count} registers, got {regs.shape[0]}")
        wire = regs[: block.count].astype(">u2").view(np.uint8)
        for dt, pos, idx in block.groups:
            out[pos] = wire[idx].view(dt).ravel()
        if block.bool_pos.size:
            out[block.bool_pos] = regs[block.bool_regs] != 0
    if block.identity_scaling:
        return out
    out *= block.scale
    out += block.offset
    return out


def plan_reads(device: DeviceConfig, points: Iterable[PointConfig]) -> list[ReadBlock]:
    """Coalesce ``points`` (normally one device's points of one poll period) into read requests.

    Pure and deterministic: blocks come out per table in the order coil, discrete, holding, input, then by
    address. Raises ``ValueError`` for a point that cannot fit in one request.
    """
    reg_limit = max(1, min(device.max_registers_per_request, MAX_REGISTERS))
    bit_limit = max(1, min(device.max_bits_per_request, MAX_BITS))
    gap = max(0, device.max_gap)
    by_table: dict[str, list[PointConfig]] = defaultdict(list)
    for p in points:
        by_table[p.kind].append(p)
    blocks: list[ReadBlock] = []
    for kind in _TABLE_ORDER:
        pts = sorted(by_table.get(kind, ()), key=lambda p: (p.address, point_words(p)))
        if not pts:
            continue
        limit = bit_limit if kind in _BIT_TABLES else reg_limit
        start = end = -1
        members: list[PointConfig] = []
        for p in pts:
            w = point_words(p)
            if w > limit:
                raise ValueError(
                    f"{device.name}.{p.name}: {p.type} needs {w} registers, "
                    f"more than max_registers_per_request={limit}"
                )
            if p.address < 0 or p.address + w > 65536:
                raise ValueError(f"{device.name}.{p.name}: address {p.address} out of range")
            if members and p.address - end <= gap and max(end, p.address + w) - start <= limit:
                end = max(end, p.address + w)
                members.append(p)
                continue
            if members:
                blocks.append(ReadBlock.build(kind, start, end - start, members))
            start, end, members = p.address, p.address + w, [p]
        blocks.append(ReadBlock.build(kind, start, end - start, members))
    return blocks


def group_by_period(points: Iterable[PointConfig]) -> dict[float, list[PointConfig]]:
    """Points grouped by ``period_s`` (sorted by period)."""
    groups: dict[float, list[PointConfig]] = defaultdict(list)
    for p in points:
        groups[p.period_s].append(p)
    return dict(sorted(groups.items()))


def plan_device(device: DeviceConfig) -> dict[float, list[ReadBlock]]:
    """The device's read plan: ``{period_s: blocks}``."""
    return {period: plan_reads(device, pts) for period, pts in group_by_period(device.points).items()}


def requests_per_second(device: DeviceConfig) -> float:
    """Read requests/s the device's plan issues when every poll runs (for ``gateway check-config``)."""
    return sum(len(blocks) / period for period, blocks in plan_device(device).items() if period > 0)


def encode_value(point: PointConfig, value: float) -> list[int]:
    """Register words (wire order) that write ``value`` (engineering units) to a holding-register point.

    The inverse of decoding: ``raw = (value - offset) / scale``, rounded for integer types, range-checked
    (``ValueError`` when it does not fit), packed with the point's word and byte order. ``bool`` → ``[0|1]``.
    """
    if point.kind in _BIT_TABLES:
        raise ValueError(f"{point.name}: coil/discrete points are written with write_coil, not registers")
    if point.type == "bool":
        return [1 if value else 0]
    if point.scale == 0:
        raise ValueError(f"{point.name}: scale is 0, cannot invert")
    raw = (float(value) - point.offset) / point.scale
    if point.type in _INT_RANGE:
        if not math.isfinite(raw):
            raise ValueError(f"{point.name}: {value} is not finite")
        iraw = round(raw)
        lo, hi = _INT_RANGE[point.type]
        if not lo <= iraw <= hi:
            raise ValueError(f"{point.name}: raw value {iraw} does not fit {point.type}")
        be = struct.pack(_STRUCT_FMT[point.type], iraw)
    else:
        try:
            be = struct.pack(_STRUCT_FMT[point.type], raw)
        except OverflowError as exc:
            raise ValueError(f"{point.name}: {value} does not fit {point.type}") from exc
    words = len(be) // 2
    out = [0] * words
    for rank in range(words):
        j = rank if point.word_order == "big" else words - 1 - rank
        hi, lo = be[2 * rank], be[2 * rank + 1]
        out[j] = (hi << 8 | lo) if point.byte_order == "big" else (lo << 8 | hi)
    return out


# ----------------------------------------------------------------------------------------------------
# Async client
# ----------------------------------------------------------------------------------------------------


class ModbusClient:
    """Async Modbus TCP or RTU client for one link (one socket / one serial port).

    Owned and called by exactly one task (the link runner); requests are issued one at a time. ``connect``
    and ``close`` are idempotent. A request raises a :class:`ModbusError` subclass on any failure and never
    retries; pymodbus' own retries, automatic reconnect and "close after N timeouts" are disabled.
    """

    def __init__(self, link: LinkConfig) -> None:
        self.link = link
        self._client: Any = None  # pymodbus AsyncModbusTcpClient / AsyncModbusSerialClient, made in connect()
        self._inflight: asyncio.Future[Any] | None = None
        self._rx_seen = False  # bytes arrived since the current request was sent
        self._lost = False  # the connection dropped (set from pymodbus' connect trace)
        # pymodbus' own response timeout is only a backstop; each request is bounded by the device's timeout.
        slowest = max((d.timeout_s for d in link.devices), default=1.0)
        self._backstop_s = max(slowest, link.connect_timeout_s) + 1.0

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected) and not self._lost

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending and data:
            self._rx_seen = True
        return data

    def _trace_connect(self, up: bool) -> None:
        if not up:
            self._lost = True
            if self._inflight is not None and not self._inflight.done():
                self._inflight.cancel()  # fail the request now instead of waiting for its timeout

    def _make_client(self) -> Any:
        from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
        from pymodbus.framer import FramerType

        common: dict[str, Any] = {
            "reconnect_delay": 0,  # no automatic reconnect: the runner owns reconnect policy
            "retries": 0,
            "timeout": self._backstop_s,
            "trace_packet": self._trace_packet,
            "trace_connect": self._trace_connect,
            "name": self.link.name,
        }
        if self.link.protocol == "modbus_tcp":
            return AsyncModbusTcpClient(self.link.host, port=self.link.port, **common)
        if self.link.protocol == "modbus_rtu":
            return AsyncModbusSerialClient(
                self.link.serial_port,
                framer=FramerType.RTU,
                baudrate=self.link.baudrate,
                bytesize=self.link.bytesize,
                parity=self.link.parity,
                stopbits=self.link.stopbits,
                **common,
            )
        raise ValueError(f"link {self.link.name}: unsupported protocol {self.link.protocol!r}")

    async def connect(self) -> None:
        """Open the link (TCP connection or serial port). Raises :class:`LinkDown` on failure."""
        if self.connected:
            return
        self.close()
        client = self._make_client()
        client.set_max_no_responses(1 << 30)  # never let pymodbus close the link after N timeouts
        self._client = client
        self._lost = False
        try:
            ok = await asyncio.wait_for(client.connect(), timeout=self.link.connect_timeout_s)
        except (TimeoutError, OSError) as exc:
            self.close()
            raise LinkDown(f"link {self.link.name}: connect failed: {exc!r}") from exc
        if not ok or not client.connected:
            self.close()
            raise LinkDown(f"link {self.link.name}: connect failed")

    def close(self) -> None:
        """Close the link. Idempotent; safe to call from any state (on the owning loop)."""
        client, self._client = self._client, None
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
        if client is not None:
            client.close()

    async def _call(self, timeout_s: float, make: Callable[[Any], Any]) -> Any:
        """Run one pymodbus request bounded by ``timeout_s``; map every failure to a :class:`ModbusError`."""
        client = self._client
        if client is None or not self.connected:
            raise LinkDown(f"link {self.link.name}: not connected")
        self._rx_seen = False
        task: asyncio.Future[Any] = asyncio.ensure_future(make(client))
        self._inflight = task
        try:
            done, _ = await asyncio.wait((task,), timeout=timeout_s)
        finally:
            self._inflight = None
            if not task.done():
                task.cancel()
        if not done:
            if self._rx_seen:
                raise MalformedResponse("bytes received but no valid response")
            raise DeviceTimeout(f"no response within {timeout_s:g} s")
        if task.cancelled():  # cancelled by _trace_connect: the connection dropped mid-request
            if self._rx_seen:
                raise MalformedResponse("connection dropped after invalid bytes")
            raise LinkDown(f"link {self.link.name}: connection lost during request")
        exc = task.exception()
        if exc is not None:
            from pymodbus.exceptions import ConnectionException, ModbusIOException

            if isinstance(exc, ConnectionException) or self._lost:
                raise LinkDown(f"link {self.link.name}: {exc}") from exc
            if isinstance(exc, ModbusIOException) and not self._rx_seen:
                raise DeviceTimeout(str(exc)) from exc
            raise MalformedResponse(repr(exc)) from exc
        response = task.result()
        if response is None:
            raise DeviceTimeout("no response")
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            if code in _GATEWAY_CODES:
                raise DeviceTimeout(f"gateway exception {code:#04x}", code)
            raise ModbusExceptionResponse(code, int(response.function_code) & 0x7F)
        return response

    async def read(self, device: DeviceConfig, block: ReadBlock) -> npt.NDArray[np.float64]:
        """Read one block from ``device``; return its points' engineering values in ``block.points`` order."""
        uid = device.unit_id
        addr, count = block.address, block.count
        if block.kind == "holding":
            resp = await self._call(device.timeout_s,
                                    lambda c: c.read_holding_registers(addr, count=count, device_id=uid))
            data: Any = resp.registers
        elif block.kind == "input":
            resp = await self._call(device.timeout_s,
                                    lambda c: c.read_input_registers(addr, count=count, device_id=uid))
            data = resp.registers
        elif block.kind == "coil":
            resp = await self._call(device.timeout_s,
                                    lambda c: c.read_coils(addr, count=count, device_id=uid))
            data = resp.bits
        else:
            resp = await self._call(device.timeout_s,
                                    lambda c: c.read_discrete_inputs(addr, count=count, device_id=uid))
            data = resp.bits
        if len(data) < count or (not block.is_bits and len(data) != count):
            raise MalformedResponse(f"asked for {count}, got {len(data)}")
        return decode_block(block, data)

    async def write(self, device: DeviceConfig, point: PointConfig, value: float) -> None:
        """Write ``value`` (engineering units) to a writable coil or holding-register point.

        Coils use FC5; one-register points FC6; multi-register points FC16. Raises ``ValueError`` for a point
        that is not writable or a value that does not fit, :class:`ModbusError` for protocol failures.
        """
        if not point.writable:
            raise ValueError(f"{device.name}.{point.name} is not writable")
        uid = device.unit_id
        if point.kind == "coil":
            bit = bool(value)
            await self._call(device.timeout_s, lambda c: c.write_coil(point.address, bit, device_id=uid))
            return
        if point.kind != "holding":
            raise ValueError(f"{device.name}.{point.name}: only coil and holding points can be written")
        words = encode_value(point, value)
        if len(words) == 1:
            await self._call(device.timeout_s,
                             lambda c: c.write_register(point.address, words[0], device_id=uid))
        else:
            await self._call(device.timeout_s,
                             lambda c: c.write_registers(point.address, words, device_id=uid))

"""Simulated Modbus devices (IEDs) served by the real pymodbus server stack, over TCP or a serial port.

Small API::

    unit = SimUnit(unit_id=1, holding=200)          # register tables are numpy arrays you may edit
    unit.set("holding", 10, 230.5, "float32")        # or unit.holding[0:4] = ...
    async with SimServer([unit, SimUnit(2)], tcp=("127.0.0.1", 0)) as srv:
        port = srv.port                              # the bound TCP port (0 = pick a free one)
        srv.every(0.1, lambda t: unit.set("input", 0, 50 + math.sin(t), "float32"))   # driven by a callback
        ...

- :class:`SimUnit` — one Modbus unit id: ``coils``/``discrete`` (bool arrays), ``holding``/``input`` (uint16
  arrays), plus fault knobs: ``silent`` (never answers, like a dead unit on a RS-485 line), ``delay_s``
  (answers late), ``exception`` (``{kind or "*": code}`` answers with that Modbus exception code), ``garbage``
  (answers with a malformed frame: the request's transaction id and unit, then a reserved function code and
  noise that decode to no response; TCP only), and an
  optional ``on_write(kind, address, values)`` hook called on the server's loop right after a client's write
  has landed in the arrays (e.g. a simulated breaker noting when its trip coil arrived), and an optional
  ``on_read(kind, address, count)`` hook called on the server's loop right before a valid read is answered from
  the arrays (it may change them: e.g. a per-read counter that makes every served value traceable).
- :class:`SimServer` — serves several units on one TCP port (``tcp=(host, port)``) or one serial port
  (``serial="/dev/ttyX"``, RTU framing). Unknown unit ids get no answer. ``every(period_s, fn)`` runs
  ``fn(t)`` on the server's loop each period (``t`` = seconds since start) to drive values; ``stop()`` is
  idempotent.
- :func:`serve_forever` — run servers until cancelled (handy in a child process).

All of it runs on one asyncio loop (the caller's). Values written by a Modbus client land in the same arrays.
Test/demo code only: never imported by the product packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

__all__ = ["ReadHook", "SimServer", "SimUnit", "Table", "WriteHook", "encode_words", "serve_forever"]

Table = Literal["coil", "discrete", "holding", "input"]
WriteHook = Callable[[Table, int, "list[int] | list[bool]"], None]
ReadHook = Callable[[Table, int, int], None]  # (table, first address, count), before the values are read
_FC_TABLE: dict[int, Table] = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 3: "holding", 6: "holding",
                               16: "holding", 22: "holding", 23: "holding", 4: "input"}
_FMT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f", "float64": ">d"}


def encode_words(
    value: float, dtype: str = "uint16", word_order: str = "big", byte_order: str = "big"
) -> list[int]:
    """Register words (wire order) holding ``value`` as ``dtype`` (no scaling); ints are rounded."""
    v: float | int = round(value) if dtype in ("int16", "uint16", "int32", "uint32") else float(value)
    if dtype == "bool":
        return [1 if value else 0]
    be = struct.pack(_FMT[dtype], v)
    n = len(be) // 2
    out = [0] * n
    for rank in range(n):
        j = rank if word_order == "big" else n - 1 - rank
        hi, lo = be[2 * rank], be[2 * rank + 1]
        out[j] = (hi << 8 | lo) if byte_order == "big" else (lo << 8 | hi)
    return out


class SimUnit:
    """One simulated Modbus unit. Mutate its arrays (or use :meth:`set`) from the server's loop thread."""

    def __init__(
        self,
        unit_id: int = 1,
        holding: int | Sequence[int] = 100,
        input: int | Sequence[int] = 100,
        coils: int | Sequence[bool] = 64,
        discrete: int | Sequence[bool] = 64,
    ) -> None:
        self.unit_id = unit_id
        self.holding: npt.NDArray[np.uint16] = _table(holding, np.uint16)
        self.input: npt.NDArray[np.uint16] = _table(input, np.uint16)
        self.coils: npt.NDArray[np.bool_] = _table(coils, np.bool_)
        self.discrete: npt.NDArray[np.bool_] = _table(discrete, np.bool_)
        self.silent = False  # True: never answer (dead unit)
        self.delay_s = 0.0  # answer this late
        self.garbage = False  # True: answer with a malformed frame instead of the response (TCP servers)
        # answer with a Modbus exception: {"holding"|"input"|"coil"|"discrete"|"*": exception code}
        self.exception: dict[str, int] = {}
        self.requests = 0  # requests answered (or refused with an exception)
        # Called on the server's loop after a client's write landed: (table, first address, values written).
        # It runs inside the request, before the response is built (a write-single echo reads the array back).
        self.on_write: WriteHook | None = None
        # Called on the server's loop when a valid read is about to be answered: (table, first address, count).
        # Whatever it writes into the arrays is what this read returns.
        self.on_read: ReadHook | None = None

    def table(self, kind: Table) -> npt.NDArray[Any]:
        tables = {"coil": self.coils, "discrete": self.discrete, "holding": self.holding, "input": self.input}
        return tables[kind]

    def set(self, kind: Table, address: int, value: float, dtype: str = "uint16",
            word_order: str = "big", byte_order: str = "big") -> None:
        """Store ``value`` at ``address`` of a table, encoded as ``dtype`` (bool for coil/discrete)."""
        arr = self.table(kind)
        if kind in ("coil", "discrete"):
            arr[address] = bool(value)
            return
        words = encode_words(value, dtype, word_order, byte_order)
        arr[address:address + len(words)] = words

    def get_words(self, kind: Table, address: int, count: int) -> list[int]:
        return [int(x) for x in self.table(kind)[address:address + count]]


def _table(spec: int | Sequence[Any], dtype: Any) -> npt.NDArray[Any]:
    if isinstance(spec, int):
        return np.zeros(spec, dtype=dtype)
    return np.array(spec, dtype=dtype)


class _Context(ModbusServerContext):
    """pymodbus datastore backed by :class:`SimUnit` s.

    Deliberately skips ``ModbusServerContext.__init__`` (it only logs a deprecation notice); the server takes
    a context with ``old_simulator = True`` as-is and calls the three methods below.
    """

    def __init__(self, units: Iterable[SimUnit]) -> None:
        self.old_simulator = True
        self.simdevices = []
        self.units = {u.unit_id: u for u in units}

    def device_ids(self) -> list[int]:
        return list(self.units)

    def _unit(self, device_id: int) -> SimUnit:
        u = self.units.get(device_id)
        if u is None or u.silent:
            raise NoSuchIdException(f"unit {device_id} does not answer")
        return u

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        u = self._unit(device_id)
        if u.delay_s > 0:
            await asyncio.sleep(u.delay_s)
            if u.silent:
                raise NoSuchIdException(f"unit {device_id} went silent")
        kind = _FC_TABLE.get(func_code)
        if kind is None:
            return ExcCodes.ILLEGAL_FUNCTION
        code = u.exception.get(kind, u.exception.get("*"))
        u.requests += 1
        if code:
            return ExcCodes(code)
        arr = u.table(kind)
        if address < 0 or count < 1 or address + count > len(arr):
            return ExcCodes.ILLEGAL_ADDRESS
        if u.on_read is not None:
            u.on_read(kind, address, count)
        return arr[address:address + count].tolist()

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        u = self._unit(device_id)
        kind = _FC_TABLE.get(func_code)
        if kind not in ("coil", "holding"):
            return ExcCodes.ILLEGAL_FUNCTION
        code = u.exception.get(kind, u.exception.get("*"))
        if code:
            return ExcCodes(code)
        arr = u.table(kind)
        vals = list(values)
        if address < 0 or address + len(vals) > len(arr):
            return ExcCodes.ILLEGAL_ADDRESS
        arr[address:address + len(vals)] = vals
        if u.on_write is not None:
            u.on_write(kind, address, vals)
        return None


class SimServer:
    """Serves :class:`SimUnit` s on one TCP port or one serial port (RTU). Start/stop on the caller's loop."""

    def __init__(
        self,
        units: Iterable[SimUnit],
        *,
        tcp: tuple[str, int] | None = None,
        serial: str | None = None,
        baudrate: int = 19200,
    ) -> None:
        if (tcp is None) == (serial is None):
            raise ValueError("give exactly one of tcp=(host, port) or serial=path")
        self.units = {u.unit_id: u for u in units}
        self._tcp = tcp
        self._serial = serial
        self._baudrate = baudrate
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._tickers: list[asyncio.Task[None]] = []
        self._t0 = time.monotonic()
        self.port = tcp[1] if tcp else 0  # bound TCP port once started

    def __getitem__(self, unit_id: int) -> SimUnit:
        return self.units[unit_id]

    async def start(self) -> SimServer:
        ctx = _Context(self.units.values())
        if self._tcp is not None:
            server: ModbusTcpServer | ModbusSerialServer = ModbusTcpServer(
                ctx, address=self._tcp, ignore_missing_devices=True, trace_packet=self._garble
            )
        else:
            server = ModbusSerialServer(
                ctx, framer=FramerType.RTU, port=self._serial or "", baudrate=self._baudrate,
                ignore_missing_devices=True,
            )
        await server.serve_forever(background=True)
        self._server = server
        if self._tcp is not None:
            self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._t0 = time.monotonic()
        return self

    def _garble(self, sending: bool, data: bytes) -> bytes:
        """pymodbus packet hook (server loop): a response of a unit in ``garbage`` mode leaves malformed."""
        if not sending or len(data) < 8:
            return data
        u = self.units.get(data[6])
        if u is None or not u.garbage:
            return data
        # same transaction id and unit (the client takes it for the answer), function code 0x5A (reserved: no
        # PDU decodes from it) and noise; the MBAP length matches, so the next answer is framed cleanly again
        noise = bytes((0xA5 ^ (i * 37)) & 0xFF for i in range(max(1, len(data) - 8)))
        return data[:4] + struct.pack(">H", len(noise) + 2) + data[6:7] + b"\x5a" + noise

    def every(self, period_s: float, fn: Callable[[float], None]) -> None:
        """Call ``fn(t)`` every ``period_s`` s on the loop (``t`` = seconds since start), until stop()."""

        async def tick() -> None:
            nxt = time.monotonic()
            while True:
                fn(time.monotonic() - self._t0)
                nxt += period_s
                await asyncio.sleep(max(0.0, nxt - time.monotonic()))

        self._tickers.append(asyncio.create_task(tick(), name="sim tick"))

    async def stop(self) -> None:
        """Stop serving and drop client connections. Idempotent."""
        for t in self._tickers:
            t.cancel()
        for t in self._tickers:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tickers.clear()
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
            await asyncio.sleep(0)  # let the transports run their close callbacks

    async def __aenter__(self) -> SimServer:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def serve_forever(servers: Sequence[SimServer]) -> None:
    """Start ``servers`` and serve until cancelled; then stop them."""
    for s in servers:
        await s.start()
    try:
        await asyncio.Event().wait()
    finally:
        for s in servers:
            await s.stop()

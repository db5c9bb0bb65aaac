"""A minimal Modbus TCP client for the protection process: pre-built frames, plain sockets, no asyncio.

Why not the gateway's driver (:mod:`protocols.modbus`)? It wraps pymodbus' *async* client: it needs an asyncio
loop (a second scheduler, its own timers and tasks) in a process whose only job is a deterministic cycle; every
request builds pymodbus PDU objects, futures and log-formatting calls (garbage in a process whose GC is frozen
and disabled); and its timeouts are loop timers, not socket deadlines. The protection process needs two
requests only (read 16 registers, write one coil), on links it owns, at 1 ms rates. This module does exactly
that with frames built once, a fixed receive buffer and ``socket`` calls that release the GIL while they wait.

Pieces (all single-owner: a frame, a buffer or a client belongs to one thread at a time; callers lock):

- :class:`ReadRequest` / :class:`WriteCoilRequest`: a request frame built once; :meth:`Request.set_tid` patches
  the MBAP transaction id in place (no allocation) before each send.
- :class:`FrameBuffer`: a fixed receive buffer that assembles MBAP frames from a stream (blocking or
  non-blocking socket) and rejects garbage headers.
- :func:`check_response`: validates a received frame against its request (transaction id, unit id, function,
  byte count or echo) and raises the matching exception below.
- :class:`Float32Decoder`: registers → float32 values, big or little word order (bytes within a word are always
  big-endian, as Modbus sends them), into a preallocated buffer.
- :class:`ModbusTcpClient`: a *blocking* client with deadlines (one request at a time): connect with a timeout,
  ``TCP_NODELAY``, transaction = patch id, ``sendall``, receive until the whole response or the deadline.

Exceptions (one base, :class:`ModbusError`):

- :class:`ModbusConnectionError` — connect refused/timed out, socket error, peer closed the connection.
- :class:`ModbusTimeout` — no complete response within the timeout (the connection is then in an unknown state:
  a late answer may still arrive; callers close it).
- :class:`ModbusFrameError` — bytes arrived that are not a valid response to the request: a bad MBAP header
  (protocol id not 0, length outside 2..254), wrong unit id or function, wrong byte count, a frame too short
  for its function, a write echo that differs. :class:`ModbusTransactionMismatch` (a subclass) — a
  well-formed frame with another transaction id.
- :class:`ModbusExceptionResponse` — the device answered with a Modbus exception (``.function``, ``.code``);
  the connection is fine.

Frames are MBAP (7 bytes: transaction id, protocol id 0, length, unit id) + PDU; all fields big-endian.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "EXCEPTION_NAMES",
    "FC_READ_HOLDING",
    "FC_READ_INPUT",
    "FC_WRITE_COIL",
    "MAX_FRAME",
    "Float32Decoder",
    "FrameBuffer",
    "ModbusConnectionError",
    "ModbusError",
    "ModbusExceptionResponse",
    "ModbusFrameError",
    "ModbusTcpClient",
    "ModbusTimeout",
    "ModbusTransactionMismatch",
    "ReadRequest",
    "Request",
    "WriteCoilRequest",
    "check_response",
    "configure_socket",
]

FC_READ_HOLDING: Final = 3
FC_READ_INPUT: Final = 4
FC_WRITE_COIL: Final = 5
MBAP_LEN: Final = 7  # transaction id (2), protocol id (2), length (2), unit id (1)
MAX_FRAME: Final = 260  # largest Modbus TCP ADU: MBAP 7 + PDU 253
MAX_READ_REGISTERS: Final = 125
DATA_OFFSET: Final = MBAP_LEN + 2  # first data byte of a read response (after function code and byte count)

EXCEPTION_NAMES: Final = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

_TID: Final = struct.Struct(">H")
_REQ: Final = struct.Struct(">HHHBBHH")  # every request we send: MBAP + function + two 16-bit fields


class ModbusError(Exception):
    """Base of every error raised here."""


class ModbusConnectionError(ModbusError):
    """No usable connection: connect failed or timed out, a socket error, or the peer closed it."""


class ModbusTimeout(ModbusError):
    """No complete response within the timeout."""


class ModbusFrameError(ModbusError):
    """Bytes that are not a valid response to the request (bad header, wrong unit/function/length/echo)."""


class ModbusTransactionMismatch(ModbusFrameError):
    """A well-formed response carrying another transaction id than the request's."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"transaction id mismatch: expected {expected}, got {got}")
        self.expected = expected
        self.got = got


class ModbusExceptionResponse(ModbusError):
    """The device answered with a Modbus exception. ``function`` is the request's function code."""

    def __init__(self, function: int, code: int) -> None:
        name = EXCEPTION_NAMES.get(code, "unknown")
        super().__init__(f"exception {code} ({name}) to function {function}")
        self.function = function
        self.code = code


class Request:
    """A pre-built request frame (MBAP + PDU). ``frame`` is reused: only the transaction id changes."""

    __slots__ = ("frame", "function", "unit_id")

    def __init__(self, unit_id: int, function: int, a: int, b: int) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit id {unit_id} out of range 0..255")
        if not 0 <= a <= 0xFFFF:
            raise ValueError(f"address {a} out of range 0..65535")
        self.unit_id = unit_id
        self.function = function
        self.frame = bytearray(_REQ.pack(0, 0, 6, unit_id, function, a, b))

    @property
    def tid(self) -> int:
        """The transaction id currently in the frame."""
        return int(_TID.unpack_from(self.frame, 0)[0])

    def set_tid(self, tid: int) -> None:
        """Patch the transaction id (0..65535) in place."""
        _TID.pack_into(self.frame, 0, tid & 0xFFFF)

    def check_pdu(self, buf: bytearray, frame_len: int) -> None:
        """Validate the normal (non-exception) response PDU at ``buf[7:frame_len]``; raise ModbusFrameError."""
        raise NotImplementedError


class ReadRequest(Request):
    """FC3 (holding) or FC4 (input) read of ``count`` registers from ``address``."""

    __slots__ = ("address", "count")

    def __init__(self, unit_id: int, function: int, address: int, count: int) -> None:
        if function not in (FC_READ_HOLDING, FC_READ_INPUT):
            raise ValueError(f"function {function} is not a register read (3 or 4)")
        if not 1 <= count <= MAX_READ_REGISTERS:
            raise ValueError(f"register count {count} out of range 1..{MAX_READ_REGISTERS}")
        if address + count > 0x10000:
            raise ValueError(f"registers {address}..{address + count - 1} run past 65535")
        super().__init__(unit_id, function, address, count)
        self.address = address
        self.count = count

    @property
    def response_len(self) -> int:
        """Length of the whole response frame (MBAP + function + byte count + data)."""
        return DATA_OFFSET + 2 * self.count

    def check_pdu(self, buf: bytearray, frame_len: int) -> None:
        if frame_len < DATA_OFFSET:
            raise ModbusFrameError(f"read response too short: {frame_len} bytes")
        nbytes = buf[MBAP_LEN + 1]
        if nbytes != 2 * self.count:
            raise ModbusFrameError(f"read response byte count {nbytes}, expected {2 * self.count}")
        if frame_len != self.response_len:
            raise ModbusFrameError(f"read response length {frame_len}, expected {self.response_len}")


class WriteCoilRequest(Request):
    """FC5 write of one coil (``value`` True = 0xFF00, False = 0x0000). A normal response echoes the request."""

    __slots__ = ("coil", "value")

    def __init__(self, unit_id: int, coil: int, value: bool) -> None:
        super().__init__(unit_id, FC_WRITE_COIL, coil, 0xFF00 if value else 0x0000)
        self.coil = coil
        self.value = value

    def check_pdu(self, buf: bytearray, frame_len: int) -> None:
        if frame_len != len(self.frame):
            raise ModbusFrameError(f"write-coil response length {frame_len}, expected {len(self.frame)}")
        if buf[MBAP_LEN + 1 : len(self.frame)] != self.frame[MBAP_LEN + 1 :]:
            raise ModbusFrameError("write-coil response does not echo the request")


def check_response(req: Request, buf: bytearray, frame_len: int) -> None:
    """Validate the frame ``buf[:frame_len]`` (from :meth:`FrameBuffer.frame`) as the response to ``req``.

    Returns normally for a valid normal response; raises :class:`ModbusTransactionMismatch`,
    :class:`ModbusExceptionResponse` or :class:`ModbusFrameError`. The transaction id is checked first, so a
    caller may skip a stale frame (mismatch) and keep the connection.
    """
    tid = (buf[0] << 8) | buf[1]
    expected = (req.frame[0] << 8) | req.frame[1]
    if tid != expected:
        raise ModbusTransactionMismatch(expected, tid)
    if buf[6] != req.unit_id:
        raise ModbusFrameError(f"response from unit {buf[6]}, expected {req.unit_id}")
    if frame_len < MBAP_LEN + 1:
        raise ModbusFrameError("response without a function code")
    fc = buf[MBAP_LEN]
    if fc == req.function | 0x80:
        if frame_len != MBAP_LEN + 2:
            raise ModbusFrameError(f"exception response length {frame_len}, expected {MBAP_LEN + 2}")
        raise ModbusExceptionResponse(req.function, buf[MBAP_LEN + 1])
    if fc != req.function:
        raise ModbusFrameError(f"response function {fc}, expected {req.function}")
    req.check_pdu(buf, frame_len)


class FrameBuffer:
    """Assembles MBAP frames from a byte stream in a fixed buffer. Owned by one thread (or used under a lock).

    ``fill(sock)`` appends what the socket has (``recv_into``; a non-blocking socket raises ``BlockingIOError``
    when empty, a blocking one waits up to its timeout); ``frame()`` returns the length of the complete frame at
    the front (0 = incomplete) or raises :class:`ModbusFrameError` on a garbage header; ``drop_frame()`` removes
    it. The front frame always starts at offset 0, so decoders may keep views at fixed offsets.
    """

    __slots__ = ("_mv", "buf", "n")

    def __init__(self, size: int = 2 * MAX_FRAME) -> None:
        if size < MAX_FRAME:
            raise ValueError(f"buffer must hold one frame ({MAX_FRAME} bytes)")
        self.buf = bytearray(size)
        self._mv = memoryview(self.buf)
        self.n = 0  # bytes held

    def clear(self) -> None:
        self.n = 0

    def fill(self, sock: socket.socket) -> int:
        """Receive into the free space; returns the byte count. Raises ``ModbusConnectionError`` on EOF."""
        k = sock.recv_into(self._mv[self.n :])
        if k == 0:
            raise ModbusConnectionError("connection closed by the peer")
        self.n += k
        return k

    def frame(self) -> int:
        """Length of the complete frame at the front, 0 if more bytes are needed. Raises on a garbage header."""
        n = self.n
        if n < MBAP_LEN:
            return 0
        b = self.buf
        if b[2] or b[3]:
            raise ModbusFrameError(f"protocol id {(b[2] << 8) | b[3]} is not 0 (garbage or not Modbus)")
        length = (b[4] << 8) | b[5]
        if not 2 <= length <= MAX_FRAME - 6:
            raise ModbusFrameError(f"MBAP length {length} out of range 2..{MAX_FRAME - 6}")
        total = 6 + length
        return total if n >= total else 0

    def drop_frame(self) -> None:
        """Remove the front frame (call after ``frame()`` returned its length)."""
        total = 6 + ((self.buf[4] << 8) | self.buf[5])
        rest = self.n - total
        if rest > 0:
            self.buf[0:rest] = self.buf[total : self.n]  # same-size slice assignment: no resize
        self.n = max(rest, 0)


class Float32Decoder:
    """``count`` float32 values from ``2*count`` registers, word order big (high word first) or little.

    ``decode(buf, offset)`` returns a tuple of Python floats (the one allocation: the caller needs floats).
    Little word order swaps the two words of each value with one ``numpy.take`` into a preallocated buffer.
    """

    __slots__ = ("_perm", "_scratch", "_struct", "count", "word_order")

    def __init__(self, count: int, word_order: Literal["big", "little"] = "big") -> None:
        if word_order not in ("big", "little"):
            raise ValueError(f"word order must be 'big' or 'little', got {word_order!r}")
        self.count = count
        self.word_order = word_order
        self._struct = struct.Struct(f">{count}f")
        perm = np.arange(2 * count, dtype=np.intp)
        if word_order == "little":
            perm = perm.reshape(-1, 2)[:, ::-1].ravel().copy()
        self._perm: npt.NDArray[np.intp] = perm
        self._scratch: npt.NDArray[np.uint16] = np.zeros(2 * count, dtype=">u2")

    def decode(self, buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[float, ...]:
        if self.word_order == "big":
            return self._struct.unpack_from(buf, offset)
        words = np.frombuffer(buf, dtype=">u2", count=2 * self.count, offset=offset)
        np.take(words, self._perm, out=self._scratch)
        return self._struct.unpack_from(self._scratch)  # type: ignore[arg-type]


def configure_socket(sock: socket.socket) -> None:
    """TCP_NODELAY (a 12-byte request must not wait for Nagle) and keep-alive probes after 1 s idle."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 1), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3)):
        opt = getattr(socket, name, None)
        if opt is not None:
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)


class ModbusTcpClient:
    """A blocking Modbus TCP client: one request at a time, every wait bounded by a deadline.

    One owner thread. ``connect()`` opens the connection (``connect_timeout_s``); ``read_registers(req)`` and
    ``write_coil(req)`` send the pre-built request with a fresh transaction id and wait at most ``timeout_s``
    for the response. Any error except :class:`ModbusExceptionResponse` leaves the connection unusable: the
    client closes it, and the owner reconnects (the owner has the backoff policy). ``close()`` is idempotent.
    """

    __slots__ = ("_rx", "_sock", "_tid", "connect_timeout_s", "host", "port", "timeout_s")

    def __init__(self, host: str, port: int = 502, *, timeout_s: float = 0.05, connect_timeout_s: float = 1.0) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s  # response deadline per request, seconds
        self.connect_timeout_s = connect_timeout_s
        self._sock: socket.socket | None = None
        self._rx = FrameBuffer()
        self._tid = 0

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def rx(self) -> FrameBuffer:
        """The receive buffer: after a read, the response frame is at offset 0 (data at ``DATA_OFFSET``)."""
        return self._rx

    def connect(self) -> None:
        """Open the connection (closes any previous one). Raises :class:`ModbusConnectionError`."""
        self.close()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        except OSError as e:
            raise ModbusConnectionError(f"connect to {self.host}:{self.port} failed: {e}") from e
        try:
            configure_socket(sock)
        except OSError as e:
            sock.close()
            raise ModbusConnectionError(f"socket options on {self.host}:{self.port} failed: {e}") from e
        self._sock = sock
        self._rx.clear()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self._rx.clear()

    def abort(self) -> None:
        """Any thread: shut the connection down so a request blocked in the owner thread returns at once (with
        :class:`ModbusConnectionError`). The owner still calls ``close``."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed by the owner, or never connected
                sock.shutdown(socket.SHUT_RDWR)

    def read_registers(self, req: ReadRequest) -> memoryview:
        """Send ``req`` and return the response's register bytes (a view into the receive buffer, valid until
        the next request)."""
        frame_len = self._transact(req)
        return memoryview(self._rx.buf)[DATA_OFFSET:frame_len]

    def write_coil(self, req: WriteCoilRequest) -> None:
        """Send ``req`` and wait for its echo."""
        self._transact(req)

    def _transact(self, req: Request) -> int:
        sock = self._sock
        if sock is None:
            raise ModbusConnectionError("not connected")
        rx = self._rx
        if rx.n:  # the previous response is still at the front
            rx.drop_frame()
        self._tid = (self._tid + 1) & 0xFFFF
        req.set_tid(self._tid)
        deadline = time.monotonic_ns() + round(self.timeout_s * 1e9)
        try:
            sock.settimeout(self.timeout_s)
            sock.sendall(req.frame)
            while True:
                frame_len = rx.frame()
                if frame_len:
                    break
                left = deadline - time.monotonic_ns()
                if left <= 0:
                    raise ModbusTimeout(f"no response within {self.timeout_s * 1e3:.1f} ms")
                sock.settimeout(left / 1e9)
                rx.fill(sock)
            check_response(req, rx.buf, frame_len)
        except ModbusExceptionResponse:
            raise  # the device answered: the connection stays usable
        except TimeoutError as e:
            self.close()
            raise ModbusTimeout(f"no response within {self.timeout_s * 1e3:.1f} ms") from e
        except OSError as e:
            self.close()
            raise ModbusConnectionError(f"socket error: {e}") from e
        except ModbusError:
            self.close()
            raise
        return frame_len

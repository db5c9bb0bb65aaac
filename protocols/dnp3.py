"""DNP3 TCP master session driver over ``dnp3py`` (pure Python; imports as ``dnp3``).

:class:`Dnp3Session` implements :class:`protocols.session.SessionDriver` for one outstation on one TCP
connection (one link = one device; a link with several devices is refused with ``ValueError``). It does I/O
only: the session runner owns reconnect, the schedule of :meth:`Dnp3Session.jobs` and shutdown.

What the session does
---------------------
- ``connect``: TCP connect (``link.connect_timeout_s``) and a data-link reset. Every request is bounded by the
  device's ``timeout_s`` (one deadline for the whole multi-fragment exchange, CONFIRMs included).
- ``start_session``: DISABLE_UNSOLICITED (classes 1-3) unless ``dnp3.unsolicited``; integrity poll (class
  1, 2, 3, 0); ENABLE_UNSOLICITED (classes 1-3) when ``dnp3.unsolicited``; then the IIN follow-ups below.
- Jobs: ``class1``/``class2``/``class3`` (event poll of that class, period ``dnp3.classN_period_s``, 0 = no
  job), ``integrity`` (``dnp3.integrity_period_s`` > 0) and ``time_sync`` (``dnp3.time_sync_period_s`` > 0).
- ``idle``: listens for unsolicited responses (confirmed when they ask for it), and does the IIN follow-ups.
- IIN follow-ups (after ``start_session``, after every job, in ``idle``; never in the middle of a control):
  DEVICE_RESTART seen → write g80v1 index 7 = 0 (clear it) and an integrity poll; EVENT_BUFFER_OVERFLOW
  newly set → integrity poll; NEED_TIME → time sync; CLASS_n_EVENTS set → (``idle`` only) poll those classes,
  again while each poll delivers something. A clear/sync the outstation ignores (bit still set in its answer)
  is not repeated until the bit has been seen clear, so a stubborn outstation cannot make us loop.
- Time sync: the LAN procedure (RECORD_CURRENT_TIME, then WRITE g50v3 with the time we sent it at); an
  outstation that does not support the function code gets WRITE g50v1 (our wall clock) for the rest of the
  session.

Readings
--------
Binary inputs (g1/g2), double-bit inputs (g3/g4), analog inputs (g30/g32), counters (g20/g22), binary output
status (g10/g11) and analog output status (g40/g42) become :class:`gateway.model.ReadingBatch` rows for the
configured points (``PointConfig.address`` = DNP3 index). Values of points the outstation has but the config
does not (and frozen counters) are ignored and counted (``ignored_values``, ``ignored_points``).

- ``value``: binary 0/1; double-bit the DNP3 state number: **0 intermediate, 1 off (determined off), 2 on
  (determined on), 3 indeterminate** (the same numbering as IEC 61850 Dbpos, where 3 is bad-state); analog and
  counter values ``raw * scale + offset``; binary output status 0/1; analog output status scaled like analogs.
- ``ts``: the object's own time when it carries one (g2v2, g4v2, g11v2, g22v5/6, g32v3/7, g42v3/7, or a
  relative time after a g51 CTO), UTC epoch ns. Every event is delivered, several of one index in one
  response included (sequence of events), in the order the outstation sent them. Values without time
  (static data, events in a variation without time, a time of 0) get the receive time and ``Q.GATEWAY_TIME``.
  A source time read while the outstation's IIN says NEED_TIME also gets ``Q.CLOCK_NOT_SYNCHRONISED``.
- Events without time are what an outstation configured with g2v1/g32v1 event variations sends. With
  ``timed_events=True`` (constructor) every event and integrity poll also asks for the six event groups by
  their variation with absolute time (g2v2, g4v2, g11v2, g22v5, g32v3, g42v3, qualifier 06, before the class
  headers), so events carry the outstation's time whatever its configuration; those groups' events are then
  read by every event poll whatever their class. Unsolicited responses always use the outstation's default
  variations.

DNP3 flags → quality (:data:`gateway.model.Q`)
------------------------------------------------
Validity precedence: RESTART → invalid; else COMM_LOST → questionable; else ONLINE clear → invalid; else any
questionable detail below → questionable; else good. Detail bits are OR-ed from every flag set.

================================  ==============================================  ====================
DNP3 flag (bit)                   detail bits                                     validity
================================  ==============================================  ====================
ONLINE (0x01) clear               FAILURE                                         invalid
RESTART (0x02)                    OLD_DATA (never updated since the restart)      invalid
COMM_LOST (0x04)                  OLD_DATA | FAILURE                              questionable
REMOTE_FORCED (0x08)              SUBSTITUTED                                     unchanged
LOCAL_FORCED (0x10)               SUBSTITUTED                                     unchanged
CHATTER_FILTER (0x20, binary,     OSCILLATORY                                     questionable
double-bit)
OVER_RANGE (0x20, analog in/out)  OVERFLOW | OUT_OF_RANGE (value clamped)         questionable
REFERENCE_ERR (0x40, analog)      INACCURATE                                      questionable
ROLLOVER (0x20, counter)          OVERFLOW                                        questionable
DISCONTINUITY (0x40, counter)     INCONSISTENT                                    questionable
0x20/0x40 of binary output status reserved: ignored                               unchanged
================================  ==============================================  ====================

Objects without a flag octet (packed g1v1/g3v1/g10v1, g20v5, g30v3/4) are taken as ONLINE (good).

Controls
--------
``binary_output`` points take CROB (g12v1) actions: LATCH_ON/LATCH_OFF/PULSE_ON/PULSE_OFF, TRIP (trip-close
code TRIP with PULSE_ON), CLOSE (CLOSE with PULSE_ON), with the request's ``count`` (1-255), ``on_time_ms`` and
``off_time_ms``. ``analog_output`` points take ``VALUE``: ``raw = (value - offset) / scale``, sent as g41v1
(int32) when integral (within 1e-9 relative) and in range, else g41v3 (float32). ``ControlMode.SBO``:
:meth:`select` sends SELECT, :meth:`operate` sends OPERATE with the same object; ``DIRECT``: :meth:`operate`
sends DIRECT_OPERATE. A point that is unknown, not ``writable``, or of the wrong kind for the action is
``REJECTED`` with nothing sent; a session that is not up gives ``LINK_DOWN``. The status octet the outstation
echoes for our index decides:

===========================================================  ========================================
DNP3 command status (code)                                   ControlStatus
===========================================================  ========================================
SUCCESS (0)                                                  SUCCESS
TIMEOUT (1)                                                  SELECT_TIMEOUT
NO_SELECT (2)                                                NO_SELECT
FORMAT_ERROR (3)                                             FORMAT_ERROR
NOT_SUPPORTED (4)                                            NOT_SUPPORTED
ALREADY_ACTIVE (5)                                           ALREADY_ACTIVE
HARDWARE_ERROR (6)                                           HARDWARE_ERROR
LOCAL (7), DOWNSTREAM_LOCAL (13)                             LOCAL
AUTOMATION_INHIBIT (10), BLOCKED (15), BLOCKED_OTHER_MASTER  BLOCKED
(17)
any other (TOO_MANY_OBJS 8, NOT_AUTHORIZED 9, PROCESSING_     REJECTED on operate, SELECT_FAILED on
LIMITED 11, OUT_OF_RANGE 12, ALREADY_COMPLETE 14, CANCELLED  select (``code`` and name in ``detail``)
16, DOWNSTREAM_FAIL 18, NON_PARTICIPATING 126, UNDEFINED
127, unknown)
no echo: IIN2 NO_FUNC_CODE_SUPPORT / OBJECT_UNKNOWN          NOT_SUPPORTED
no echo: IIN2 PARAMETER_ERROR                                FORMAT_ERROR
echo that differs from the request, or no echo otherwise     REJECTED
no answer within ``timeout_s``, connection lost after send   NO_RESPONSE (the session is then lost)
===========================================================  ========================================

DNP3 has no cancel: :meth:`cancel` returns SUCCESS (the selection expires on the outstation). While a select
is outstanding (until operate/cancel, at most :data:`SELECT_HOLD_S`) the session sends nothing else: jobs are
skipped (counted in ``jobs_deferred``) and ``idle`` only listens, because any request between SELECT and
OPERATE makes the outstation answer NO_SELECT.

Errors
------
Connection refused/lost, no answer within the timeout, and bytes that never form a valid answer (garbage, a
fragment cut off mid-way, a broken multi-fragment sequence, anything the parser chokes on) raise
:class:`protocols.session.SessionLost` within the device timeout. An answer with IIN2 error bits to a job's
request raises :class:`protocols.session.DriverError` (its values are still delivered). A response cut short
(``ResponseInfo.truncation``: an object dnp3py cannot size, e.g. g50v4 or g110, or a malformed block) is
delivered up to the cut, logged as a warning and counted (``truncated``).

Threading: every method runs on the runner's event loop, called by the runner's task one at a time; that
task alone drives the dnp3py ``MasterTcpRunner`` (which raises on concurrent requests). ``deliver`` is called on
that loop, once per request or unsolicited response, with all values of it in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from dnp3.application.builder import build_read_request, build_write_request
from dnp3.application.fragment import ObjectBlock, RequestFragment
from dnp3.application.header import RequestHeader
from dnp3.application.parser import ParseError, parse_response
from dnp3.application.qualifiers import ObjectHeader
from dnp3.core.enums import CommandStatus, FunctionCode
from dnp3.core.flags import IIN
from dnp3.master import LinkError, Master, MasterConfig, MasterRunnerError, MasterTcpRunner, ResponseTimeoutError
from dnp3.master.double_bit import DoubleBitValue
from dnp3.master.handler import AnalogValue, BinaryValue, CounterValue, ResponseInfo
from dnp3.objects.layout import layout_for
from dnp3.transport_io.channel import (
    ChannelClosedError,
    ChannelConnectionError,
    ChannelError,
    ChannelState,
    ChannelStatistics,
)

from gateway.config import DeviceConfig, LinkConfig, PointConfig
from gateway.model import Q, ReadingBatch
from protocols.session import (
    ControlAction,
    ControlMode,
    ControlRequest,
    ControlResult,
    ControlStatus,
    Deliver,
    DriverError,
    Job,
    SessionLost,
)

__all__ = [
    "COMMAND_STATUS_MAP",
    "SELECT_HOLD_S",
    "Dnp3Session",
    "command_status",
    "flags_quality",
]

logger = logging.getLogger(__name__)

SELECT_HOLD_S: Final = 10.0  # longest a select holds back other requests (s); opendnp3's default select timeout
_READ_CHUNK: Final = 65536  # bytes per socket read

# --------------------------------------------------------------------------------------------------------
# Flags → quality (pure; tables built once at import)
# --------------------------------------------------------------------------------------------------------

_ONLINE, _RESTART, _COMM_LOST, _REMOTE_FORCED, _LOCAL_FORCED, _BIT5, _BIT6 = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
# kind → (detail bits of flag 0x20, of flag 0x40); both questionable when set. Absent bits: reserved.
_KIND_BITS: Final[dict[str, tuple[int, int]]] = {
    "binary_input": (int(Q.OSCILLATORY), 0),
    "double_bit_input": (int(Q.OSCILLATORY), 0),
    "binary_output": (0, 0),
    "analog_input": (int(Q.OVERFLOW | Q.OUT_OF_RANGE), int(Q.INACCURATE)),
    "analog_output": (int(Q.OVERFLOW | Q.OUT_OF_RANGE), int(Q.INACCURATE)),
    "counter": (int(Q.OVERFLOW), int(Q.INCONSISTENT)),
}


def flags_quality(kind: str, flags: int) -> int:
    """Quality word (without GATEWAY_TIME) for a DNP3 flag octet of a point of ``kind`` (see module table)."""
    detail = 0
    questionable = False
    if not flags & _ONLINE:
        detail |= Q.FAILURE
    if flags & _RESTART:
        detail |= Q.OLD_DATA
    if flags & _COMM_LOST:
        detail |= Q.OLD_DATA | Q.FAILURE
    if flags & (_REMOTE_FORCED | _LOCAL_FORCED):
        detail |= Q.SUBSTITUTED
    bit5, bit6 = _KIND_BITS[kind]
    if flags & _BIT5 and bit5:
        detail |= bit5
        questionable = True
    if flags & _BIT6 and bit6:
        detail |= bit6
        questionable = True
    if flags & _RESTART:
        validity = int(Q.INVALID)
    elif flags & _COMM_LOST:
        validity = int(Q.QUESTIONABLE)
    elif not flags & _ONLINE:
        validity = int(Q.INVALID)
    elif questionable:
        validity = int(Q.QUESTIONABLE)
    else:
        validity = int(Q.GOOD)
    return int(detail) | validity


_QUALITY_TABLES: Final[dict[str, npt.NDArray[np.uint16]]] = {
    kind: np.array([flags_quality(kind, f) for f in range(256)], dtype=np.uint16) for kind in _KIND_BITS
}

# --------------------------------------------------------------------------------------------------------
# Command status → ControlStatus
# --------------------------------------------------------------------------------------------------------

COMMAND_STATUS_MAP: Final[dict[int, ControlStatus]] = {
    CommandStatus.SUCCESS: ControlStatus.SUCCESS,
    CommandStatus.TIMEOUT: ControlStatus.SELECT_TIMEOUT,
    CommandStatus.NO_SELECT: ControlStatus.NO_SELECT,
    CommandStatus.FORMAT_ERROR: ControlStatus.FORMAT_ERROR,
    CommandStatus.NOT_SUPPORTED: ControlStatus.NOT_SUPPORTED,
    CommandStatus.ALREADY_ACTIVE: ControlStatus.ALREADY_ACTIVE,
    CommandStatus.HARDWARE_ERROR: ControlStatus.HARDWARE_ERROR,
    CommandStatus.LOCAL: ControlStatus.LOCAL,
    CommandStatus.DOWNSTREAM_LOCAL: ControlStatus.LOCAL,
    CommandStatus.AUTOMATION_INHIBIT: ControlStatus.BLOCKED,
    CommandStatus.BLOCKED: ControlStatus.BLOCKED,
    CommandStatus.BLOCKED_OTHER_MASTER: ControlStatus.BLOCKED,
}


def _status_name(code: int) -> str:
    try:
        return CommandStatus(code).name
    except ValueError:
        return f"UNKNOWN_{code}"


def command_status(code: int, *, select: bool = False) -> ControlResult:
    """The :class:`ControlResult` for a DNP3 command status octet (0-127) echoed by the outstation."""
    name = _status_name(code)
    status = COMMAND_STATUS_MAP.get(code)
    if status is None:
        status = ControlStatus.SELECT_FAILED if select else ControlStatus.REJECTED
    detail = "" if status is ControlStatus.SUCCESS else f"outstation answered {name} ({code})"
    return ControlResult(status, detail, code)


# --------------------------------------------------------------------------------------------------------
# Request building (pure)
# --------------------------------------------------------------------------------------------------------

_CLASS_HEADERS: Final[dict[int, ObjectHeader]] = {n: ObjectHeader(60, n + 1, 0x06) for n in range(4)}
# Event groups read by variation with absolute time when timed_events is on (qualifier 06 = all objects).
_TIMED_EVENT_HEADERS: Final[tuple[ObjectHeader, ...]] = tuple(
    ObjectHeader(g, v, 0x06) for g, v in ((2, 2), (4, 2), (11, 2), (22, 5), (32, 3), (42, 3))
)
_CROB_CODES: Final[dict[ControlAction, int]] = {
    ControlAction.PULSE_ON: 0x01,
    ControlAction.PULSE_OFF: 0x02,
    ControlAction.LATCH_ON: 0x03,
    ControlAction.LATCH_OFF: 0x04,
    ControlAction.CLOSE: 0x41,  # trip-close code CLOSE (bits 7-6 = 01), op type PULSE_ON
    ControlAction.TRIP: 0x81,  # trip-close code TRIP (bits 7-6 = 10), op type PULSE_ON
}
_IIN_REQUEST_ERRORS: Final = IIN.NO_FUNC_CODE_SUPPORT | IIN.OBJECT_UNKNOWN | IIN.PARAMETER_ERROR
_CLASS_BITS: Final[dict[int, IIN]] = {1: IIN.CLASS_1_EVENTS, 2: IIN.CLASS_2_EVENTS, 3: IIN.CLASS_3_EVENTS}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_FLOAT32_MAX: Final = 3.4028234663852886e38


def _indexed_block(group: int, variation: int, index: int, body: bytes) -> ObjectBlock:
    """One object with a count of 1 and an index prefix (qualifier 0x17, or 0x28 for indices over 255)."""
    if index <= 0xFF:
        return ObjectBlock(ObjectHeader(group, variation, 0x17), bytes((1, index)) + body)
    return ObjectBlock(ObjectHeader(group, variation, 0x28), struct.pack("<HH", 1, index) + body)


def _class_read_headers(classes: Sequence[int], timed: bool) -> tuple[ObjectBlock, ...]:
    headers = (_TIMED_EVENT_HEADERS if timed else ()) + tuple(_CLASS_HEADERS[c] for c in classes)
    return tuple(ObjectBlock(h) for h in headers)


def _echoed_objects(raw: bytes, group: int) -> list[tuple[int, int, bytes]]:
    """``(variation, index, object bytes)`` of every prefixed ``group`` object in a response fragment."""
    frag = parse_response(raw)
    out: list[tuple[int, int, bytes]] = []
    for block in frag.objects:
        h = block.header
        wire = layout_for(h.group, h.variation)
        if h.group != group or wire is None or wire.width <= 0:
            continue
        prefix = {1: 1, 2: 2, 3: 4}.get((h.qualifier >> 4) & 0x07)
        count_width = {7: 1, 8: 2, 9: 4}.get(h.qualifier & 0x0F)
        if prefix is None or count_width is None or len(block.data) < count_width:
            continue
        count = int.from_bytes(block.data[:count_width], "little")
        pos = count_width
        for _ in range(count):
            end = pos + prefix + wire.width
            if end > len(block.data):
                break
            index = int.from_bytes(block.data[pos : pos + prefix], "little")
            out.append((h.variation, index, block.data[pos + prefix : end]))
            pos = end
    return out


# --------------------------------------------------------------------------------------------------------
# Transport: an asyncio-stream channel with a synchronous abort (SessionDriver.close() is synchronous,
# dnp3py's TcpClientChannel.close() is a coroutine).
# --------------------------------------------------------------------------------------------------------


class _StreamChannel:
    """dnp3py ``Channel`` over asyncio streams. Owned by one :class:`Dnp3Session`; used on its loop only."""

    def __init__(self, host: str, port: int, connect_timeout_s: float) -> None:
        self._host = host
        self._port = port
        self._connect_timeout_s = connect_timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._state = ChannelState.CLOSED
        self._stats = ChannelStatistics()

    @property
    def state(self) -> ChannelState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is ChannelState.OPEN

    @property
    def statistics(self) -> ChannelStatistics:
        return self._stats

    async def open(self) -> None:
        self._state = ChannelState.OPENING
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port), timeout=self._connect_timeout_s
            )
        except (TimeoutError, OSError) as exc:
            self._state = ChannelState.CLOSED
            raise ChannelConnectionError(f"connect to {self._host}:{self._port} failed: {exc!r}") from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # A peer that vanishes without FIN is noticed in ~90 s even when nothing is polled.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        self._reader, self._writer = reader, writer
        self._state = ChannelState.OPEN
        self._stats.connect_count += 1

    async def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        """Close the socket now (no drain). Idempotent."""
        writer, self._writer, self._reader = self._writer, None, None
        if self._state is not ChannelState.CLOSED:
            self._stats.disconnect_count += 1
        self._state = ChannelState.CLOSED
        if writer is not None:
            writer.transport.abort()

    async def read(self, max_bytes: int) -> bytes:
        reader = self._reader
        if reader is None or self._state is not ChannelState.OPEN:
            raise ChannelClosedError("channel is not open")
        try:
            data = await reader.read(max_bytes)
        except (OSError, ConnectionError) as exc:
            self._stats.errors += 1
            raise ChannelError(f"read failed: {exc!r}") from exc
        self._stats.bytes_received += len(data)
        return data

    async def read_exactly(self, num_bytes: int) -> bytes:
        reader = self._reader
        if reader is None or self._state is not ChannelState.OPEN:
            raise ChannelClosedError("channel is not open")
        try:
            data = await reader.readexactly(num_bytes)
        except asyncio.IncompleteReadError as exc:
            raise ChannelClosedError("EOF") from exc
        except (OSError, ConnectionError) as exc:
            raise ChannelError(f"read failed: {exc!r}") from exc
        self._stats.bytes_received += len(data)
        return data

    async def write(self, data: bytes) -> int:
        writer = self._writer
        if writer is None or self._state is not ChannelState.OPEN:
            raise ChannelClosedError("channel is not open")
        try:
            writer.write(data)
            await writer.drain()
        except (OSError, ConnectionError) as exc:
            self._stats.errors += 1
            raise ChannelError(f"write failed: {exc!r}") from exc
        self._stats.bytes_sent += len(data)
        self._stats.messages_sent += 1
        return len(data)

    async def write_all(self, data: bytes) -> None:
        await self.write(data)


# --------------------------------------------------------------------------------------------------------
# dnp3py hooks: a Master that shows us every raw fragment and its ResponseInfo, and an SOE handler that
# forwards every value list (in fragment order) to the session.
# --------------------------------------------------------------------------------------------------------


@dataclass
class _ObservedMaster(Master):
    """``Master`` whose ``process_response`` also hands the raw fragment (before parsing, for the control
    echo) and its ``ResponseInfo`` (after the values were delivered, for IIN) to the session."""

    on_raw: Callable[[bytes], None] | None = field(default=None, repr=False)
    on_info: Callable[[ResponseInfo], None] | None = field(default=None, repr=False)

    def process_response(self, data: bytes) -> ResponseInfo | None:
        if self.on_raw is not None:
            self.on_raw(data)
        info = super().process_response(data)
        if info is not None and self.on_info is not None:
            self.on_info(info)
        return info


class _Handler:
    """dnp3py SOE handler (and double-bit handler): forwards each callback's values to ``ingest``."""

    def __init__(self, ingest: Callable[[str, Sequence[Any], ResponseInfo], None]) -> None:
        self._ingest = ingest

    def on_binary_input(self, values: list[BinaryValue], info: ResponseInfo) -> None:
        self._ingest("binary_input", values, info)

    def on_double_bit_input(self, values: list[DoubleBitValue], info: ResponseInfo) -> None:
        self._ingest("double_bit_input", values, info)

    def on_binary_output(self, values: list[BinaryValue], info: ResponseInfo) -> None:
        self._ingest("binary_output", values, info)

    def on_analog_input(self, values: list[AnalogValue], info: ResponseInfo) -> None:
        self._ingest("analog_input", values, info)

    def on_analog_output(self, values: list[AnalogValue], info: ResponseInfo) -> None:
        self._ingest("analog_output", values, info)

    def on_counter(self, values: list[CounterValue], info: ResponseInfo) -> None:
        self._ingest("counter", values, info)

    def on_frozen_counter(self, values: list[CounterValue], info: ResponseInfo) -> None:
        self._ingest("frozen_counter", values, info)


@dataclass(frozen=True, slots=True)
class _KindPoints:
    """The configured points of one DNP3 kind: index → row, and per-row id/scale/offset arrays."""

    rows: dict[int, int]
    ids: npt.NDArray[np.int32]
    scale: npt.NDArray[np.float64]
    offset: npt.NDArray[np.float64]
    identity: bool  # every scale is 1 and offset 0 (skip the arithmetic)


_SCALED_KINDS: Final = frozenset({"analog_input", "analog_output", "counter"})


# --------------------------------------------------------------------------------------------------------
# The session driver
# --------------------------------------------------------------------------------------------------------


class Dnp3Session:
    """DNP3 master for one outstation over one TCP connection; see the module docstring.

    Owned by one session runner task: every method is called on its loop, one at a time. ``wall_ns`` is the
    wall clock (UTC epoch ns) for receive times and time sync; ``timed_events`` see the module docstring
    (``None``: the device's ``dnp3.timed_events`` setting).
    """

    def __init__(
        self,
        link: LinkConfig,
        point_ids: Mapping[str, int],
        deliver: Deliver,
        *,
        wall_ns: Callable[[], int] = time.time_ns,
        timed_events: bool | None = None,
    ) -> None:
        if link.protocol != "dnp3_tcp":
            raise ValueError(f"link {link.name}: Dnp3Session drives dnp3_tcp links, not {link.protocol!r}")
        if len(link.devices) != 1:
            raise ValueError(
                f"link {link.name}: a DNP3 link supports exactly one device (outstation) for now, "
                f"got {len(link.devices)}; give each outstation its own link"
            )
        self.link = link
        self.device: DeviceConfig = link.devices[0]
        self.settings = self.device.dnp3
        self._deliver = deliver
        self._wall_ns = wall_ns
        self._timed = self.settings.timed_events if timed_events is None else timed_events
        # Validates the addresses and timeout now rather than at connect.
        self._master_config = MasterConfig(
            address=self.settings.master_address,
            outstation_address=self.settings.outstation_address,
            response_timeout=self.device.timeout_s,
        )
        self._points_by_name: dict[str, PointConfig] = {p.name: p for p in self.device.points}
        self._kinds = self._build_points(point_ids)
        self._jobs = self._build_jobs()

        self._channel: _StreamChannel | None = None
        self._runner: MasterTcpRunner | None = None
        self._master: _ObservedMaster | None = None
        self._lost = False  # a request failed in a way that leaves the session unusable
        self._busy = False  # a public coroutine is running (see _owned)
        self._pending: list[ReadingBatch] = []  # readings of the current request, delivered by _flush()
        self._capture: list[bytes] | None = None  # raw fragments recorded while a control is in flight
        self._reset_session_state()
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "connects", "fragments", "unsolicited", "values", "timed_values", "ignored_values",
                "truncated", "relative_time_without_cto", "integrity_polls", "class_polls", "restarts",
                "restart_clears", "overflows", "time_syncs", "iin_errors", "timeouts", "malformed",
                "controls", "control_failures", "jobs_deferred",
            ),
            0,
        )
        self._ignored_points: set[tuple[str, int]] = set()
        self._last_error = ""

    # ---- construction helpers ----------------------------------------------------------------------

    def _build_points(self, point_ids: Mapping[str, int]) -> dict[str, _KindPoints]:
        by_kind: dict[str, list[tuple[int, int, float, float]]] = {k: [] for k in _KIND_BITS}
        seen: dict[tuple[str, int], str] = {}
        for p in self.device.points:
            if p.kind not in by_kind:
                raise ValueError(f"{self.device.name}.{p.name}: kind {p.kind!r} is not a DNP3 point kind")
            name = f"{self.device.name}.{p.name}"
            if name not in point_ids:
                raise ValueError(f"{name}: no store id in point_ids")
            if not 0 <= p.address <= 0xFFFF:
                raise ValueError(f"{name}: DNP3 index {p.address} out of range 0-65535")
            other = seen.get((p.kind, p.address))
            if other is not None:
                raise ValueError(f"{name}: {p.kind} index {p.address} is already point {other}")
            seen[(p.kind, p.address)] = p.name
            by_kind[p.kind].append((p.address, int(point_ids[name]), p.scale, p.offset))
        out: dict[str, _KindPoints] = {}
        for kind, rows in by_kind.items():
            scale = np.array([r[2] for r in rows], dtype=np.float64)
            offset = np.array([r[3] for r in rows], dtype=np.float64)
            out[kind] = _KindPoints(
                rows={r[0]: i for i, r in enumerate(rows)},
                ids=np.array([r[1] for r in rows], dtype=np.int32),
                scale=scale,
                offset=offset,
                identity=kind not in _SCALED_KINDS or bool(np.all(scale == 1.0) and np.all(offset == 0.0)),
            )
        return out

    def _build_jobs(self) -> tuple[Job, ...]:
        s = self.settings
        jobs = [Job(f"class{n}", p) for n, p in ((1, s.class1_period_s), (2, s.class2_period_s),
                                                  (3, s.class3_period_s)) if p > 0]
        if s.integrity_period_s > 0:
            jobs.append(Job("integrity", s.integrity_period_s))
        if s.time_sync_period_s > 0:
            jobs.append(Job("time_sync", s.time_sync_period_s))
        return tuple(jobs)

    def _reset_session_state(self) -> None:
        self._prev_iin = IIN(0)
        self._iin = IIN(0)
        self._need_integrity = False
        self._need_restart_clear = False
        self._restart_clear_failed = False
        self._need_time = False
        self._time_sync_failed = False
        self._lan_time = True  # try the LAN procedure until the outstation says it lacks RECORD_CURRENT_TIME
        self._select_hold_until = 0.0  # loop time until which a select holds back other requests
        self._unsolicited_enabled = False

    # ---- SessionDriver: lifecycle ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        runner = self._runner
        return runner is not None and runner.is_open and not self._lost

    async def connect(self) -> None:
        """Open the TCP connection and reset the data link. Raises :class:`SessionLost`; never retries."""
        self.close()
        channel = _StreamChannel(self.link.host, self.link.port, self.link.connect_timeout_s)
        master = _ObservedMaster(
            config=self._master_config,
            handler=_Handler(self._ingest),
            on_raw=self._on_raw,
            on_info=self._on_info,
        )
        runner = MasterTcpRunner(
            master=master,
            host=self.link.host,
            port=self.link.port,
            response_timeout=self.device.timeout_s,
            channel=channel,
        )
        try:
            await channel.open()
            await runner.open()
        except (ChannelError, MasterRunnerError, OSError) as exc:
            channel.abort()
            self._last_error = f"connect failed: {exc}"
            raise SessionLost(f"link {self.link.name}: {self._last_error}") from exc
        except BaseException:
            channel.abort()
            raise
        self._channel, self._master, self._runner = channel, master, runner
        self._lost = False
        self._reset_session_state()
        self._counters["connects"] += 1

    def close(self) -> None:
        """Close the connection (idempotent; any time between calls). Undelivered readings are dropped
        only if a request was cut off by cancellation; normally every request delivered before returning."""
        channel, self._channel, self._runner, self._master = self._channel, None, None, None
        self._pending.clear()
        self._capture = None
        if channel is not None:
            channel.abort()

    async def start_session(self) -> None:
        """Disable/enable unsolicited, integrity poll, IIN follow-ups. Raises SessionLost or DriverError."""
        with self._owned():
            self._require()
            if not self.settings.unsolicited:
                await self._unsolicited_request(enable=False)
            await self._integrity_poll(raise_on_error=False)
            if self.settings.unsolicited:
                await self._unsolicited_request(enable=True)
            await self._follow_up(classes=False)

    def jobs(self) -> Sequence[Job]:
        return self._jobs

    async def run_job(self, name: str) -> None:
        """Run one job (``class1``-``class3``, ``integrity``, ``time_sync``) and the IIN follow-ups."""
        with self._owned():
            self._require()
            if self._select_held():
                self._counters["jobs_deferred"] += 1
                return
            if name == "integrity":
                await self._integrity_poll(raise_on_error=True)
            elif name in ("class1", "class2", "class3"):
                await self._class_poll((int(name[-1]),), raise_on_error=True)
            elif name == "time_sync":
                await self._time_sync()
            else:
                raise DriverError(f"link {self.link.name}: unknown DNP3 job {name!r}")
            await self._follow_up(classes=False)

    async def idle(self, timeout_s: float) -> None:
        """Listen for unsolicited responses for at most ``timeout_s`` (s), doing the IIN follow-ups (class polls
        included) between them. Raises :class:`SessionLost` when the connection dropped."""
        with self._owned():
            runner = self._require()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max(0.0, timeout_s)
            while True:
                await self._follow_up(classes=True, deadline=deadline)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                try:
                    await runner.listen_unsolicited(timeout=remaining)
                except (LinkError, MasterRunnerError, ChannelError, OSError) as exc:
                    self._fail(f"connection lost while listening: {exc}")
                    raise SessionLost(f"link {self.link.name}: {self._last_error}") from exc
                except Exception as exc:  # the parser choked on what the outstation sent
                    self._counters["malformed"] += 1
                    self._fail(f"malformed unsolicited data: {exc!r}")
                    logger.warning("link %s: %s", self.link.name, self._last_error, exc_info=True)
                    raise SessionLost(f"link {self.link.name}: {self._last_error}") from exc
                finally:
                    self._flush()

    # ---- SessionDriver: controls -------------------------------------------------------------------

    async def select(self, request: ControlRequest) -> ControlResult:
        """SELECT (first half of SBO). On success, other requests are held back until operate/cancel."""
        result = await self._control(request, FunctionCode.SELECT)
        if result.ok:
            self._select_hold_until = asyncio.get_running_loop().time() + SELECT_HOLD_S
        return result

    async def operate(self, request: ControlRequest) -> ControlResult:
        """OPERATE after a select (``SBO``) or DIRECT_OPERATE (``DIRECT``)."""
        fc = FunctionCode.OPERATE if request.mode is ControlMode.SBO else FunctionCode.DIRECT_OPERATE
        try:
            return await self._control(request, fc)
        finally:
            self._select_hold_until = 0.0

    async def cancel(self, request: ControlRequest) -> ControlResult:
        """DNP3 has no cancel: release our hold; the outstation's selection simply expires."""
        self._select_hold_until = 0.0
        return ControlResult(ControlStatus.SUCCESS, "DNP3 has no cancel; the selection expires on the outstation")

    # ---- SessionDriver: status ---------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        iin = self._iin
        out: dict[str, object] = {
            "connected": self.connected,
            "outstation": self.settings.outstation_address,
            "iin": int(iin),
            "iin_flags": [b.name for b in IIN if b.name and iin & b],
            "unsolicited_enabled": self._unsolicited_enabled,
            "timed_events": self._timed,
            "time_sync_mode": "lan" if self._lan_time else "write_g50v1",
            "ignored_points": len(self._ignored_points),
            "last_error": self._last_error,
        }
        out.update(self._counters)
        return out

    # ---- requests ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _owned(self) -> Iterator[None]:
        """Marks a call in progress: the runner calls one method at a time, and dnp3py's runner must never see
        two requests at once; a second concurrent call fails fast instead of corrupting the exchange."""
        if self._busy:
            raise DriverError(f"link {self.link.name}: called while another call is running (one owner task)")
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    def _require(self) -> MasterTcpRunner:
        runner = self._runner
        if runner is None or self._lost or not runner.is_open:
            raise SessionLost(f"link {self.link.name}: not connected" + (f" ({self._last_error})"
                                                                          if self._last_error else ""))
        return runner

    def _fail(self, why: str) -> None:
        self._lost = True
        self._last_error = why

    def _select_held(self) -> bool:
        return self._select_hold_until > asyncio.get_running_loop().time()

    def _next_seq(self) -> int:
        master = self._master
        if master is None:
            raise SessionLost(f"link {self.link.name}: not connected")
        return master.next_request_sequence()

    async def _request(self, make: Callable[[int], RequestFragment], what: str) -> list[ResponseInfo]:
        """Send one request (built with the next sequence number) and consume its whole answer; deliver its
        readings. Maps every failure to :class:`SessionLost`."""
        runner = self._require()
        request = make(self._next_seq())
        try:
            return await runner.request(request)
        except ResponseTimeoutError as exc:
            self._counters["timeouts"] += 1
            self._fail(f"{what}: no complete answer within {self.device.timeout_s:g} s ({exc})")
            raise SessionLost(f"link {self.link.name}: {self._last_error}") from exc
        except (LinkError, MasterRunnerError, ChannelError, OSError) as exc:
            self._fail(f"{what}: {exc}")
            raise SessionLost(f"link {self.link.name}: {self._last_error}") from exc
        except Exception as exc:  # the parser or a decoder choked on the answer: the stream is not trustworthy
            self._counters["malformed"] += 1
            self._fail(f"{what}: malformed answer: {exc!r}")
            logger.warning("link %s: %s", self.link.name, self._last_error, exc_info=True)
            raise SessionLost(f"link {self.link.name}: {self._last_error}") from exc
        finally:
            self._flush()

    def _iin_errors(self, infos: Sequence[ResponseInfo], what: str, *, raise_: bool) -> IIN:
        bits = IIN(0)
        for info in infos:
            bits |= info.iin & _IIN_REQUEST_ERRORS
        if bits:
            self._counters["iin_errors"] += 1
            msg = f"link {self.link.name}: outstation answered {what} with {bits!r}"
            if raise_:
                raise DriverError(msg)
            logger.warning("%s", msg)
        return bits

    async def _integrity_poll(self, *, raise_on_error: bool) -> None:
        headers = _class_read_headers((1, 2, 3, 0), self._timed)
        infos = await self._request(lambda seq: build_read_request(headers, seq=seq), "integrity poll")
        self._counters["integrity_polls"] += 1
        self._need_integrity = False  # this poll read everything; edges seen during it are covered
        self._iin_errors(infos, "the integrity poll", raise_=raise_on_error)

    async def _class_poll(self, classes: Sequence[int], *, raise_on_error: bool) -> int:
        """Event poll of ``classes``; returns the number of values it delivered."""
        headers = _class_read_headers(classes, self._timed)
        before = self._counters["values"] + self._counters["ignored_values"]
        names = "+".join(str(c) for c in classes)
        infos = await self._request(lambda seq: build_read_request(headers, seq=seq), f"class {names} poll")
        self._counters["class_polls"] += 1
        self._iin_errors(infos, f"the class {names} poll", raise_=raise_on_error)
        return self._counters["values"] + self._counters["ignored_values"] - before

    async def _unsolicited_request(self, *, enable: bool) -> None:
        fc = FunctionCode.ENABLE_UNSOLICITED if enable else FunctionCode.DISABLE_UNSOLICITED
        headers = tuple(ObjectBlock(_CLASS_HEADERS[c]) for c in (1, 2, 3))
        infos = await self._request(
            lambda seq: RequestFragment(header=RequestHeader.build(function=fc, seq=seq), objects=headers),
            fc.name.lower(),
        )
        errors = IIN(0)
        for info in infos:
            errors |= info.iin & _IIN_REQUEST_ERRORS
        if errors:  # e.g. an outstation without unsolicited support: normal for DISABLE, worth a warning for ENABLE
            self._counters["iin_errors"] += 1
            logger.log(logging.WARNING if enable else logging.INFO, "link %s: outstation answered %s with %r",
                       self.link.name, fc.name, errors)
        self._unsolicited_enabled = enable and not errors

    async def _write(self, blocks: tuple[ObjectBlock, ...], what: str) -> list[ResponseInfo]:
        return await self._request(lambda seq: build_write_request(blocks, seq=seq), what)

    async def _clear_restart(self) -> None:
        self._need_restart_clear = False
        # g80v1, start-stop 7..7, one packed bit = 0: clear IIN1.7 DEVICE_RESTART.
        infos = await self._write((ObjectBlock(ObjectHeader(80, 1, 0x00), bytes((7, 7, 0))),), "clear restart")
        self._counters["restart_clears"] += 1
        errors = self._iin_errors(infos, "the restart clear (write g80v1.7)", raise_=False)
        if errors or (infos and infos[-1].iin & IIN.DEVICE_RESTART):
            self._restart_clear_failed = True
            self._need_restart_clear = False
            logger.warning("link %s: outstation kept DEVICE_RESTART after our clear; not retrying until it "
                           "clears", self.link.name)

    async def _time_sync(self) -> None:
        """Set the outstation's clock: LAN procedure (record current time + g50v3), else write g50v1."""
        self._need_time = False
        infos: list[ResponseInfo] = []
        if self._lan_time:
            sent_ms = 0

            def record(seq: int) -> RequestFragment:
                nonlocal sent_ms
                sent_ms = self._wall_ns() // 1_000_000
                return RequestFragment(header=RequestHeader.build(function=FunctionCode.RECORD_CURRENT_TIME,
                                                                  seq=seq))

            infos = await self._request(record, "record current time")
            if any(i.iin & (IIN.NO_FUNC_CODE_SUPPORT | IIN.PARAMETER_ERROR) for i in infos):
                self._lan_time = False
                logger.info("link %s: outstation lacks RECORD_CURRENT_TIME; time sync writes g50v1", self.link.name)
            else:
                body = bytes((1,)) + sent_ms.to_bytes(6, "little")
                infos = await self._write((ObjectBlock(ObjectHeader(50, 3, 0x07), body),), "write time (g50v3)")
        if not self._lan_time:
            now_ms = self._wall_ns() // 1_000_000
            body = bytes((1,)) + now_ms.to_bytes(6, "little")
            infos = await self._write((ObjectBlock(ObjectHeader(50, 1, 0x07), body),), "write time (g50v1)")
        self._counters["time_syncs"] += 1
        errors = self._iin_errors(infos, "the time write", raise_=False)
        if errors or (infos and infos[-1].iin & IIN.NEED_TIME):
            self._time_sync_failed = True
            self._need_time = False
            logger.warning("link %s: outstation kept NEED_TIME after our time write; not retrying until it clears",
                           self.link.name)

    async def _follow_up(self, *, classes: bool, deadline: float = 0.0) -> None:
        """Act on the IIN bits seen so far (see the module docstring). Not while a select is held. With
        ``classes``, also poll the event classes whose IIN bits are set, again and again while polls bring
        values, until the loop time ``deadline``."""
        if self._select_held():
            return
        if self._need_restart_clear:
            await self._clear_restart()
        if self._need_time:
            await self._time_sync()
        if self._need_integrity:
            await self._integrity_poll(raise_on_error=False)
        if not classes:
            return
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            pending = [c for c, bit in _CLASS_BITS.items() if self._iin & bit]
            if not pending or self._select_held():
                return
            if await self._class_poll(pending, raise_on_error=False) == 0:
                return  # bits set but nothing came: do not spin on a stuck bit

    # ---- controls ----------------------------------------------------------------------------------

    def _control_block(self, request: ControlRequest) -> ObjectBlock | ControlResult:
        """The g12v1/g41 object for ``request``, or a REJECTED result (nothing will be sent)."""

        def reject(why: str) -> ControlResult:
            return ControlResult(ControlStatus.REJECTED, f"{request.device}.{request.point}: {why}")

        if request.device != self.device.name:
            return reject(f"device {request.device!r} is not on DNP3 link {self.link.name}")
        point = self._points_by_name.get(request.point)
        if point is None:
            return reject("no such point")
        if not point.writable:
            return reject("point is not writable")
        if point.kind == "binary_output":
            code = _CROB_CODES.get(request.action)
            if code is None:
                return reject(f"binary_output points take CROB actions, not {request.action.value}")
            if not 1 <= request.count <= 255:
                return reject(f"count {request.count} out of range 1-255")
            if not (0 <= request.on_time_ms <= 0xFFFFFFFF and 0 <= request.off_time_ms <= 0xFFFFFFFF):
                return reject("on/off time out of range 0-4294967295 ms")
            body = struct.pack("<BBIIB", code, request.count, request.on_time_ms, request.off_time_ms, 0)
            return _indexed_block(12, 1, point.address, body)
        if point.kind == "analog_output":
            if request.action is not ControlAction.VALUE:
                return reject(f"analog_output points take the VALUE action, not {request.action.value}")
            if point.scale == 0:
                return reject("scale is 0")
            raw = (request.value - point.offset) / point.scale
            if not math.isfinite(raw):
                return reject(f"value {request.value} is not finite")
            iraw = round(raw)
            if abs(raw - iraw) <= 1e-9 * max(1.0, abs(raw)) and _INT32_MIN <= iraw <= _INT32_MAX:
                return _indexed_block(41, 1, point.address, struct.pack("<iB", iraw, 0))
            if abs(raw) > _FLOAT32_MAX:
                return reject(f"value {request.value} does not fit float32")
            return _indexed_block(41, 3, point.address, struct.pack("<fB", raw, 0))
        return reject(f"{point.kind} points cannot be controlled")

    async def _control(self, request: ControlRequest, fc: FunctionCode) -> ControlResult:
        """One SELECT/OPERATE/DIRECT_OPERATE exchange; never raises for the outstation's refusal or a lost link."""
        self._counters["controls"] += 1
        if self._busy:
            result = ControlResult(ControlStatus.REJECTED, "driver busy: another call is running (nothing sent)")
        else:
            with self._owned():
                result = await self._control_exchange(request, fc)
        if not result.ok:
            self._counters["control_failures"] += 1
        return result

    async def _control_exchange(self, request: ControlRequest, fc: FunctionCode) -> ControlResult:
        block = self._control_block(request)
        if isinstance(block, ControlResult):
            return block
        if not self.connected or self._channel is None:
            return ControlResult(ControlStatus.LINK_DOWN, f"link {self.link.name} is not connected")
        channel = self._channel
        sent_before = channel.statistics.bytes_sent
        seq = self._next_seq()
        req = RequestFragment(header=RequestHeader.build(function=fc, seq=seq), objects=(block,))
        self._capture = []
        try:
            assert self._runner is not None  # connected implies a runner
            infos = await self._runner.request(req)
            captured = self._capture
        except ResponseTimeoutError as exc:
            self._counters["timeouts"] += 1
            self._fail(f"{fc.name}: no answer within {self.device.timeout_s:g} s")
            return ControlResult(ControlStatus.NO_RESPONSE, f"{self._last_error} ({exc})")
        except (LinkError, MasterRunnerError, ChannelError, OSError) as exc:
            self._fail(f"{fc.name}: {exc}")
            sent = channel.statistics.bytes_sent > sent_before
            return ControlResult(ControlStatus.NO_RESPONSE if sent else ControlStatus.LINK_DOWN, self._last_error)
        except Exception as exc:  # malformed answer
            self._counters["malformed"] += 1
            self._fail(f"{fc.name}: malformed answer: {exc!r}")
            logger.warning("link %s: %s", self.link.name, self._last_error, exc_info=True)
            return ControlResult(ControlStatus.NO_RESPONSE, self._last_error)
        finally:
            self._capture = None
            self._flush()
        return self._control_outcome(block, infos, captured or [], seq, fc)

    def _control_outcome(
        self, block: ObjectBlock, infos: Sequence[ResponseInfo], captured: Sequence[bytes], seq: int,
        fc: FunctionCode,
    ) -> ControlResult:
        group = block.header.group
        sent_variation = block.header.variation
        prefix = 1 if block.header.qualifier == 0x17 else 2
        index = int.from_bytes(block.data[prefix : 2 * prefix], "little")
        sent_body = block.data[2 * prefix : -1]
        for raw in captured:
            try:
                if len(raw) < 2 or raw[0] & 0x10 or raw[0] & 0x0F != seq:  # unsolicited, or another sequence
                    continue
                objects = _echoed_objects(raw, group)
            except (ParseError, ValueError, IndexError):
                continue
            for variation, idx, body in objects:
                if idx != index:
                    continue
                if variation != sent_variation or body[:-1] != sent_body:
                    return ControlResult(ControlStatus.REJECTED,
                                         f"outstation echoed g{group}v{variation} index {idx} that differs "
                                         "from the request", body[-1] & 0x7F)
                return command_status(body[-1] & 0x7F, select=fc is FunctionCode.SELECT)
        iin = IIN(0)
        for info in infos:
            iin |= info.iin
        if iin & (IIN.NO_FUNC_CODE_SUPPORT | IIN.OBJECT_UNKNOWN):
            return ControlResult(ControlStatus.NOT_SUPPORTED, f"outstation answered {fc.name} with {iin!r}")
        if iin & IIN.PARAMETER_ERROR:
            return ControlResult(ControlStatus.FORMAT_ERROR, f"outstation answered {fc.name} with {iin!r}")
        return ControlResult(ControlStatus.REJECTED, f"outstation echoed no status for index {index}")

    # ---- response observation (called by dnp3py inside a request, on this loop) --------------------

    def _on_raw(self, data: bytes) -> None:
        if self._capture is not None:
            self._capture.append(bytes(data))

    def _on_info(self, info: ResponseInfo) -> None:
        iin = info.iin
        self._counters["fragments"] += 1
        if info.is_unsolicited:
            self._counters["unsolicited"] += 1
        if info.truncation is not None:
            t = info.truncation
            self._counters["truncated"] += 1
            logger.warning(
                "link %s: response seq=%d cut short (%s) at g%sv%s: values from there on were not delivered",
                self.link.name, info.sequence, t.reason.value, t.group, t.variation,
            )
        self._counters["relative_time_without_cto"] += info.relative_time_without_cto
        rising = iin & ~self._prev_iin
        if rising & IIN.DEVICE_RESTART:
            self._counters["restarts"] += 1
            self._need_integrity = True
        if rising & IIN.EVENT_BUFFER_OVERFLOW:
            self._counters["overflows"] += 1
            self._need_integrity = True
        if iin & IIN.DEVICE_RESTART:
            self._need_restart_clear = not self._restart_clear_failed
        else:
            self._restart_clear_failed = False
            self._need_restart_clear = False
        if iin & IIN.NEED_TIME:
            self._need_time = not self._time_sync_failed
        else:
            self._time_sync_failed = False
            self._need_time = False
        self._prev_iin = iin
        self._iin = iin

    def _ingest(self, kind: str, values: Sequence[Any], info: ResponseInfo) -> None:
        """Turn one dnp3py callback's values into readings (pending until :meth:`_flush`)."""
        points = self._kinds.get(kind)
        if points is None:  # frozen counters: not a configurable kind
            self._counters["ignored_values"] += len(values)
            for v in values:
                self._ignored_points.add((kind, v.index))
            return
        lookup = points.rows
        rows: list[int] = []
        raw: list[float] = []
        flags: list[int] = []
        stamps: list[int] = []
        double = kind == "double_bit_input"
        for v in values:
            row = lookup.get(v.index)
            if row is None:
                self._counters["ignored_values"] += 1
                self._ignored_points.add((kind, v.index))
                continue
            rows.append(row)
            raw.append(v.state if double else v.value)
            flags.append(v.quality)
            t = v.timestamp
            stamps.append(0 if t is None else (t - _EPOCH) // _ONE_MS)
        n = len(rows)
        if n == 0:
            return
        r = np.fromiter(rows, dtype=np.intp, count=n)
        value = np.asarray(raw, dtype=np.float64)
        if not points.identity:
            value = value * points.scale[r] + points.offset[r]
        quality = _QUALITY_TABLES[kind][np.asarray(flags, dtype=np.intp) & 0xFF]
        ts = np.asarray(stamps, dtype=np.int64)
        untimed = ts <= 0  # no time, or DNP3 time 0 (an outstation that never had a clock)
        timed_count = n - int(np.count_nonzero(untimed))
        ts *= 1_000_000
        ts[untimed] = self._wall_ns()
        extra = np.where(untimed, np.uint16(Q.GATEWAY_TIME), np.uint16(0))
        if timed_count and info.iin & IIN.NEED_TIME:
            extra[~untimed] = np.uint16(Q.CLOCK_NOT_SYNCHRONISED)
        self._counters["values"] += n
        self._counters["timed_values"] += timed_count
        self._pending.append(ReadingBatch(ts, points.ids[r], value, (quality | extra).astype(np.uint16)))

    def _flush(self) -> None:
        """Deliver the readings gathered since the last flush, as one batch in arrival order."""
        if not self._pending:
            return
        batch = ReadingBatch.concat(self._pending)
        self._pending = []
        self._deliver(batch)

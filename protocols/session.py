"""The driver interface for session protocols (DNP3, IEC 61850 MMS) and the control vocabulary of every driver.

A *session driver* owns one association with one remote device (a DNP3 outstation over one TCP connection, an
MMS association with one IED). Unlike Modbus, these devices also talk on their own (unsolicited responses,
reports), so the driver does not only answer polls: it delivers readings whenever they arrive.

Who does what (the same split as Modbus: :mod:`gateway.runner` owns policy, the driver does I/O):

- :class:`gateway.session_runner.SessionRunner` owns reconnect with back-off and jitter, the schedule of the
  driver's periodic :class:`Job` s (absolute deadlines, missed slots skipped and counted), marking every point
  QUESTIONABLE|OLD_DATA|FAILURE when the session is lost, back-pressure (batches are kept and offered again,
  never dropped), status and shutdown.
- The driver connects, starts the session (:meth:`SessionDriver.start_session`: integrity poll, enable
  unsolicited responses or report control blocks, resume buffered reports), runs a job when told, waits for
  spontaneous traffic in :meth:`SessionDriver.idle`, and executes controls. It never sleeps beyond the time it
  is given, never retries a failed connect and never schedules.

Construction: ``Driver(link: LinkConfig, point_ids: Mapping[str, int], deliver: Deliver, *, wall_ns=time.time_ns)``;
``point_ids`` maps every ``device.point`` of the link to its store id (the driver builds batches with them).

Threading contract: every method is called on the runner's event loop, by the runner's task, one at a time
(a control waits for the running job to finish). ``deliver`` (given to the driver's constructor) must be called
on that loop too; a driver whose library calls back on another thread hands the data over with
``loop.call_soon_threadsafe``. ``deliver`` never blocks and never fails.

Errors: :class:`SessionLost` (connection gone, connect failed, the device stopped answering) makes the runner
close the driver, mark the points and reconnect; any other :class:`DriverError` from a job is counted and logged,
and the session goes on.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.model import ReadingBatch

__all__ = [
    "ControlAction",
    "ControlMode",
    "ControlRequest",
    "ControlResult",
    "ControlStatus",
    "Deliver",
    "DriverError",
    "Job",
    "SessionDriver",
    "SessionLost",
]

# Readings for the store: the runner buffers them (never dropped) and hands them on in arrival order.
Deliver = Callable[[ReadingBatch], None]


class DriverError(Exception):
    """A request failed but the session is still usable (the device answered with an error, a bad reference)."""


class SessionLost(DriverError):
    """The session is gone: connect failed, the connection dropped, or the device stopped answering."""


@dataclass(frozen=True, slots=True)
class Job:
    """A periodic task of a session, e.g. ``class1`` event poll every 5 s, ``time_sync`` hourly, a poll group.

    ``period_s`` > 0. The runner runs ``driver.run_job(name)`` at ``start + k × period`` (absolute deadlines)
    after every (re)start of the session; the first run is one period after the session started (the start
    itself does the integrity poll / general interrogation).
    """

    name: str
    period_s: float


class ControlAction(enum.Enum):
    """What a control asks for. DNP3 CROB operation types map one to one; IEC 61850 and Modbus use ``VALUE``."""

    VALUE = "value"  # write/operate with the request's value (analog output, 61850 ctlVal, Modbus write)
    LATCH_ON = "latch_on"
    LATCH_OFF = "latch_off"
    PULSE_ON = "pulse_on"
    PULSE_OFF = "pulse_off"
    TRIP = "trip"  # DNP3 trip/close pair: TRIP = trip-close code TRIP with PULSE_ON
    CLOSE = "close"


class ControlMode(enum.Enum):
    DIRECT = "direct"  # DNP3 direct operate; 61850 direct-with-normal-security; Modbus write
    SBO = "sbo"  # select-before-operate (DNP3), SBO-with-enhanced-security (61850)


class ControlStatus(enum.Enum):
    """Every outcome a caller (operator panel, audit log) can tell apart. One per distinct cause."""

    SUCCESS = "success"
    SELECT_FAILED = "select_failed"  # the device refused the select (61850 AddCause in ``detail``)
    SELECT_TIMEOUT = "select_timeout"  # operate arrived after the select expired (DNP3 status 1, 61850 cause 18)
    NO_SELECT = "no_select"  # operate without a matching select (DNP3 NO_SELECT, 61850 object-not-selected)
    FORMAT_ERROR = "format_error"  # the device did not understand the request (DNP3 FORMAT_ERROR)
    NOT_SUPPORTED = "not_supported"  # operation or point not supported (DNP3 NOT_SUPPORTED, 61850 not-supported)
    ALREADY_ACTIVE = "already_active"  # DNP3 ALREADY_ACTIVE / 61850 command-already-in-execution
    HARDWARE_ERROR = "hardware_error"  # DNP3 HARDWARE_ERROR / 61850 hardware fault
    LOCAL = "local"  # the device is in local control (DNP3 LOCAL, 61850 blocked-by-switching-hierarchy)
    BLOCKED = "blocked"  # blocked by the device (DNP3 BLOCKED, 61850 blocked-by-interlocking/-mode/…)
    INTERLOCKED = "interlocked"  # refused by a gateway interlock hook before anything was sent
    NO_RESPONSE = "no_response"  # sent, no answer within the timeout (the outcome on the device is unknown)
    LINK_DOWN = "link_down"  # not sent: the session is not up
    TERMINATION_FAILED = "termination_failed"  # 61850 CommandTermination negative after a positive operate
    REJECTED = "rejected"  # any other refusal; ``detail`` has the device's code and text


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """A control on one point. ``value`` is in engineering units (ignored by CROB actions other than VALUE)."""

    device: str
    point: str
    action: ControlAction = ControlAction.VALUE
    value: float = 0.0
    mode: ControlMode = ControlMode.DIRECT
    on_time_ms: int = 1000  # DNP3 pulse on-time
    off_time_ms: int = 0  # DNP3 pulse off-time
    count: int = 1  # DNP3 pulse count
    origin: str = ""  # who asked (user name, "panel", "api"): written to the audit event and 61850 origin


@dataclass(frozen=True, slots=True)
class ControlResult:
    """The outcome of one select, operate or cancel. ``code`` is the device's own code (DNP3 status, 61850
    AddCause) when it gave one, else -1; ``detail`` is human-readable."""

    status: ControlStatus
    detail: str = ""
    code: int = -1

    @property
    def ok(self) -> bool:
        return self.status is ControlStatus.SUCCESS


class SessionDriver(Protocol):
    """One association with one device. See the module docstring for the threading and error contract."""

    @property
    def connected(self) -> bool:
        """True while the transport is open (a session may still fail to start)."""
        ...

    async def connect(self) -> None:
        """Open the transport. Raises :class:`SessionLost` on failure; never retries."""

    async def start_session(self) -> None:
        """After every connect: integrity poll / general interrogation, enable unsolicited or report control
        blocks (a buffered one resumes from the last entry id it delivered), clear restart flags. Delivers the
        readings it gets. Raises :class:`SessionLost` (the runner reconnects) or :class:`DriverError`."""

    def jobs(self) -> Sequence[Job]:
        """The periodic jobs of this session (fixed for the driver's life)."""
        ...

    async def run_job(self, name: str) -> None:
        """Run one job now. Raises :class:`SessionLost` or :class:`DriverError`."""

    async def idle(self, timeout_s: float) -> None:
        """Handle spontaneous traffic (unsolicited responses, reports, IIN follow-ups) for at most
        ``timeout_s`` and return; return earlier when nothing more is pending is allowed. Raises
        :class:`SessionLost` when the connection dropped."""

    async def select(self, request: ControlRequest) -> ControlResult:
        """Select a point for a later :meth:`operate` (SBO). Never raises for a device's refusal.

        The runner may call jobs and ``idle`` between a select and its operate; a driver whose protocol forbids
        other requests in between (DNP3: any request cancels the selection) defers its jobs until the operate
        or the select timeout, and only listens in ``idle``."""
        ...

    async def operate(self, request: ControlRequest) -> ControlResult:
        """Operate: after a select in SBO mode, or alone in direct mode. Never raises for a device's refusal;
        a lost session is ``ControlStatus.NO_RESPONSE`` (sent) or ``LINK_DOWN`` (not sent)."""
        ...

    async def cancel(self, request: ControlRequest) -> ControlResult:
        """Cancel a selection (61850 Cancel; DNP3 has none: the select just expires — return SUCCESS)."""
        ...

    def status(self) -> dict[str, object]:
        """Protocol counters for the status page (e.g. events, unsolicited, IIN bits, report entries)."""
        ...

    def close(self) -> None:
        """Close the transport (idempotent; the runner may call it at any time between calls)."""

"""Session runner: the policy around one DNP3 or IEC 61850 association (one link, one device), or one MQTT
broker session (one link, one device per sensor: ``MULTI_DEVICE_PROTOCOLS``).

The counterpart of :class:`gateway.runner.LinkRunner` for protocols whose devices also talk on their own. The
driver (:class:`protocols.session.SessionDriver`) does I/O; this module owns:

- **Reconnect** with exponential back-off and jitter (``reconnect_min_s`` … ``reconnect_max_s``): connect, then
  ``start_session()`` (integrity poll / general interrogation, enable unsolicited responses or report control
  blocks). A failure of either closes the driver and waits before the next attempt.
- **Schedule** of the driver's :class:`~protocols.session.Job` s on absolute deadlines (``session start + k ×
  period``); a job started one or more whole periods late skips the missed slots (counted in ``missed_slots``),
  never bursts. Lateness of every job start goes into a bounded window (``lateness_p99_ms``).
- **Spontaneous traffic**: between jobs the runner gives the driver the time until the next deadline, in slices
  of at most ``IDLE_SLICE_S``, through ``driver.idle()`` (unsolicited responses, reports). A control waits at
  most one slice for the link.
- **Quality on loss**: when the session is lost, every point of the link that is not already marked gets
  QUESTIONABLE|OLD_DATA|FAILURE|GATEWAY_TIME once, with its last value (NaN if it never had one). The next
  integrity poll / general interrogation after the reconnect brings fresh values. There is no staleness timer:
  report-by-exception values stay valid until the device says otherwise or the session is lost.
- **Back-pressure**: ``emit`` returning False keeps the readings and offers them again every ``EMIT_RETRY_S``;
  meanwhile the runner does not ask the driver for more (no job, no idle), so nothing is dropped and the device's
  own buffers (DNP3 event buffer, buffered reports) hold the rest.
- **Controls**: :meth:`select`, :meth:`operate`, :meth:`cancel` run between jobs, one at a time with them.
- **Device alarms**: what a driver only counts (a DNP3 outstation that restarted or overflowed its event buffer,
  a truncated response; an IED whose report buffer overflowed, a report that could not resume, a bad reference)
  becomes an ``alarm`` event for the operator: the runner looks at the driver's counters (``ALARM_COUNTERS``)
  after the session start and at most every ``ALARM_CHECK_S`` after that, and hands one event per counter
  that grew to ``on_event``.

Threading: every method runs on the runner's event loop (the driver's contract, see :mod:`protocols.session`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from gateway.config import LinkConfig
from gateway.emit_buffer import (
    EMIT_RETRY_S,
    EmitBuffer,
    PendingBudget,
    RunnerLoop,
    backoff_delay,
    gap_reporter,
    old_data_quality,
)
from gateway.histogram import LatencyHistogram
from gateway.model import Event, Q, ReadingBatch
from protocols.session import (
    ControlRequest,
    ControlResult,
    ControlStatus,
    Deliver,
    DriverError,
    SessionDriver,
    SessionLost,
)

__all__ = ["IDLE_SLICE_S", "DriverFactory", "SessionRunner"]

log = logging.getLogger(__name__)

IDLE_SLICE_S: Final = 0.05  # longest idle() call: bounds how long a control waits for the link
ALARM_CHECK_S: Final = 0.5  # how often the driver's counters are compared for device alarms
# Driver counter (in its status()) → what it means to an operator, and the alarm's priority (1 = data lost).
ALARM_COUNTERS: Final[dict[str, tuple[str, int]]] = {
    "restarts": ("device restarted (DNP3 IIN device restart); an integrity poll follows", 2),
    "overflows": ("device event buffer overflowed: events were lost in the device", 1),
    "truncated": ("response cut at objects the master cannot decode: values after them were lost", 1),
    "buffer_overflows": ("IED report buffer overflowed: reports were lost in the IED", 1),
    "resume_failures": (
        "buffered report could not resume from the last entry: events buffered meanwhile may be lost", 1
    ),
    "bad_references": ("data references the IED does not have (see the device's points, marked bad-reference)", 2),
}
# Protocols whose one session serves several devices (mqtt: one device per sensor); the others have exactly one.
MULTI_DEVICE_PROTOCOLS: Final = frozenset({"mqtt"})
LATENESS_WINDOW: Final = 1024  # job starts kept for lateness_p99_ms
Q_LOST: Final = int(Q.QUESTIONABLE | Q.OLD_DATA | Q.FAILURE | Q.GATEWAY_TIME)

# Builds the driver for a link: (link, point ids, deliver) -> driver.
DriverFactory = Callable[[LinkConfig, Mapping[str, int], Deliver], SessionDriver]


@dataclass(eq=False)
class _JobState:
    name: str
    period_ns: int
    deadline: int = 0


@dataclass(eq=False)
class _Counters:
    state: str = "starting"  # "starting", "ok", "disconnected"
    last_good_ns: int = 0  # wall ns of the last successful job, start or delivery
    last_latency_ms: float = math.nan  # duration of the last job
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)  # every completed job (/metrics)
    polls: int = 0  # jobs completed
    errors: int = 0  # jobs that failed with a DriverError (session kept)
    timeouts: int = 0  # sessions lost during a job, a start or idle
    missed_slots: int = 0
    lateness: deque[int] = field(default_factory=lambda: deque(maxlen=LATENESS_WINDOW))


class SessionRunner(RunnerLoop):
    """Keeps one session up and its jobs on schedule; hands the driver's readings to ``emit``.

    :param link: the link (exactly one device).
    :param point_ids: ``"device.point"`` → store id for every point of the link (``ValueError`` if missing).
    :param emit: non-blocking sink; False when it cannot take the batch now (kept and retried, never dropped).
    :param driver_factory: builds the :class:`SessionDriver` (the registry in :mod:`gateway.drivers`).
    :param mono_ns: monotonic clock (ns) for deadlines; ``wall_ns``: UTC epoch ns for gateway timestamps.
    :param rng: randomness for reconnect jitter.
    :param on_event: takes device alarm events and gap records (non-blocking; e.g. schedules the store write).
    :param pending: the bound on readings all runners hold for a store that does not accept them.
    """

    def __init__(
        self,
        link: LinkConfig,
        point_ids: Mapping[str, int],
        emit: Callable[[ReadingBatch], bool],
        *,
        driver_factory: DriverFactory,
        mono_ns: Callable[[], int] = time.monotonic_ns,
        wall_ns: Callable[[], int] = time.time_ns,
        rng: random.Random | None = None,
        on_event: Callable[[Event], None] | None = None,
        pending: PendingBudget | None = None,
    ) -> None:
        if len(link.devices) != 1 and not (link.devices and link.protocol in MULTI_DEVICE_PROTOCOLS):
            raise ValueError(f"link {link.name}: a {link.protocol} link has exactly one device")
        self.link = link
        self.device = link.devices[0]  # DNP3/61850: the one device; mqtt: one device per sensor, all on one session
        names = [f"{d.name}.{p.name}" for d in link.devices for p in d.points]
        missing = [n for n in names if n not in point_ids]
        if missing:
            raise ValueError(f"link {link.name}: no point id for {', '.join(missing[:10])}")
        self._mono = mono_ns
        self._wall = wall_ns
        self._rng = rng or random.Random()
        self._ids = np.sort(np.array([point_ids[n] for n in names], dtype=np.int32))
        n = len(self._ids)
        self._last_val = np.full(n, np.nan)
        self._last_q = np.zeros(n, dtype=np.uint16)
        self._seen = np.zeros(n, dtype=np.bool_)  # a reading (or a loss mark) was emitted for this point
        self._out = EmitBuffer(emit, f"link {link.name}", budget=pending,
                               on_gap=gap_reporter(link.name, wall_ns, on_event))  # fmt: skip
        self._lock = asyncio.Lock()  # one driver call at a time: jobs, idle, controls
        self._wake = asyncio.Event()
        self._stopping = False
        self._up = False  # session started (connect + start_session succeeded)
        self._ever_up = False
        self.reconnects = 0
        self._init_liveness()  # loop_iterations, awake_by_ns, first_attempt_done: see RunnerLoop
        self.foreign_readings = 0  # readings the driver delivered for ids not on this link (dropped; a bug)
        self._c = _Counters()
        self._on_event = on_event
        self._alarm_seen: dict[str, int] = {}  # counter → value already alarmed
        self._alarm_checked = 0  # monotonic ns of the last check
        self.driver = driver_factory(link, point_ids, self._deliver)
        self._jobs = [_JobState(j.name, max(1, round(j.period_s * 1e9))) for j in self.driver.jobs()]

    # ------------------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the session until :meth:`stop`; then mark every point OLD_DATA once, flush, close."""
        try:
            while not self._stopping:
                self._advance()
                if not self._flush():
                    await self._sleep(EMIT_RETRY_S)
                    continue
                if not self._up:
                    await self._start()
                    continue
                await self._step()
        finally:
            await self._shutdown()

    def stop(self) -> None:
        """Ask :meth:`run` to finish (call on the runner's loop). Idempotent."""
        self._stopping = True
        self._wake.set()

    async def select(self, request: ControlRequest) -> ControlResult:
        return await self._control("select", request)

    async def operate(self, request: ControlRequest) -> ControlResult:
        return await self._control("operate", request)

    async def cancel(self, request: ControlRequest) -> ControlResult:
        return await self._control("cancel", request)

    @property
    def up(self) -> bool:
        return self._up

    def status(self) -> list[dict[str, Any]]:
        """One dict per device, with the same fields as :meth:`LinkRunner.status` plus ``protocol`` (and
        ``location`` when the device has one). Devices sharing the session share its counters."""
        c = self._c
        lat = np.fromiter(c.lateness, dtype=np.int64, count=len(c.lateness))
        proto = {"name": self.link.protocol, **self.driver.status()}
        return [
            {
                "device": dev.name,
                "link": self.link.name,
                "state": c.state,
                "last_good_ns": c.last_good_ns,
                "last_latency_ms": c.last_latency_ms,
                "latency_hist": c.latency.snapshot(),
                "polls": c.polls,
                "errors": c.errors,
                "timeouts": c.timeouts,
                "reconnects": self.reconnects,
                "missed_slots": c.missed_slots,
                "lateness_p99_ms": float(np.percentile(lat, 99)) / 1e6 if lat.size else math.nan,
                "protocol": proto,
                **({"location": dict(dev.location)} if dev.location else {}),
            }
            for dev in self.link.devices
        ]

    # ------------------------------------------------------------------------------------------------------
    # Internals (all on the runner's task)
    # ------------------------------------------------------------------------------------------------------

    def _deliver(self, batch: ReadingBatch) -> None:
        """The driver's sink: keep the batch in order and remember each point's last value and quality."""
        if not len(batch):
            return
        pos = np.searchsorted(self._ids, batch.point_id)
        ok = (pos < len(self._ids)) & (self._ids[np.minimum(pos, len(self._ids) - 1)] == batch.point_id)
        if not ok.all():  # a driver bug: keep the link's own readings, say what was refused
            self.foreign_readings += int((~ok).sum())
            log.error("link %s: driver delivered %d readings of other links' points", self.link.name, (~ok).sum())
            batch = ReadingBatch(batch.ts[ok], batch.point_id[ok], batch.value[ok], batch.quality[ok])
            pos = pos[ok]
            if not len(batch):
                return
        # Fancy assignment with repeated positions keeps the last one: the latest reading of each point wins.
        self._last_val[pos] = batch.value
        self._last_q[pos] = batch.quality
        self._seen[pos] = True
        self._c.last_good_ns = self._wall()
        self._out.add(batch)

    def _flush(self) -> bool:
        return self._out.flush()

    def _mark_lost(self) -> None:
        """Every point not already marked lost gets Q_LOST once, with its last value."""
        mask = self._last_q != np.uint16(Q_LOST)
        if not mask.any():
            return
        idx = np.flatnonzero(mask)
        self._last_q[idx] = Q_LOST
        self._seen[idx] = True
        n = len(idx)
        self._out.add(
            ReadingBatch(
                np.full(n, self._wall(), dtype=np.int64), self._ids[idx], self._last_val[idx].copy(),
                np.full(n, Q_LOST, dtype=np.uint16),
            )
        )

    def _lost(self, why: BaseException | str) -> None:
        if self._up or self._c.state != "disconnected":
            log.info("link %s: session lost: %s", self.link.name, why)
        self.driver.close()
        self._up = False
        self._c.state = "disconnected"
        self._mark_lost()

    async def _start(self) -> None:
        """Connect and start the session, retrying with exponential back-off and jitter."""
        attempt = 0
        delay = 0.0
        while not self._stopping:
            if delay > 0:
                self._flush()
                await self._sleep(delay)
                if self._stopping:
                    return
            self._advance()
            try:
                async with self._lock:
                    await self.driver.connect()
                    await self.driver.start_session()
            except DriverError as exc:  # SessionLost or a start that the device refused
                self.first_attempt_done = True
                attempt += 1
                self._c.timeouts += isinstance(exc, SessionLost)
                self._c.errors += not isinstance(exc, SessionLost)
                self._lost(exc)
                delay = backoff_delay(attempt, self.link.reconnect_min_s, self.link.reconnect_max_s, self._rng)
                log.info("link %s: %s; retry in %.2f s", self.link.name, exc, delay)
                continue
            if self._ever_up:
                self.reconnects += 1
            self._ever_up = True
            self.first_attempt_done = True
            self._up = True
            self._c.state = "ok"
            now = self._mono()
            for j in self._jobs:
                j.deadline = now + j.period_ns
            self._check_alarms(now)
            return

    async def _step(self) -> None:
        """Run the most urgent due job, or give the driver the time until it is due."""
        job = min(self._jobs, key=lambda j: j.deadline, default=None)
        async with self._lock:
            if self._stopping or not self._up:
                return
            now = self._mono()  # read after the lock: a control may have held it
            try:
                if job is not None and job.deadline <= now:
                    await self._run_job(job, now)
                else:
                    wait = IDLE_SLICE_S if job is None else min(IDLE_SLICE_S, (job.deadline - now) / 1e9)
                    self.awake_by_ns = max(self.awake_by_ns, now + round(wait * 1e9))  # a scheduled wait
                    await self.driver.idle(wait)
                    if not self.driver.connected:
                        raise SessionLost("connection closed")
            except SessionLost as exc:
                self._c.timeouts += 1
                self._lost(exc)
        if self._up and now - self._alarm_checked >= ALARM_CHECK_S * 1e9:
            self._check_alarms(now)

    def _check_alarms(self, now: int) -> None:
        """One alarm event per driver counter of ``ALARM_COUNTERS`` that grew since the last check."""
        self._alarm_checked = now
        st = self.driver.status()
        for name, (meaning, priority) in ALARM_COUNTERS.items():
            value = st.get(name)
            if not isinstance(value, int):
                continue
            before = self._alarm_seen.get(name, 0)
            self._alarm_seen[name] = value
            if value <= before:
                continue
            message = f"{self.device.name}: {meaning} ({value - before} more, {value} in all)"
            log.warning("link %s: %s", self.link.name, message)
            if self._on_event is not None:
                self._on_event(
                    Event(ts=self._wall(), kind="alarm", message=message, priority=priority, device=self.device.name)
                )

    async def _run_job(self, job: _JobState, now: int) -> None:
        c = self._c
        late = now - job.deadline
        if late >= job.period_ns:
            k = late // job.period_ns
            job.deadline += k * job.period_ns
            c.missed_slots += k
            late -= k * job.period_ns
        c.lateness.append(late)
        job.deadline += job.period_ns
        t0 = self._mono()
        try:
            await self.driver.run_job(job.name)
        except SessionLost:
            raise
        except DriverError as exc:
            c.errors += 1
            log.info("link %s: job %s failed: %s", self.link.name, job.name, exc)
            return
        took = self._mono() - t0
        c.last_latency_ms = took / 1e6
        c.latency.observe(took)
        c.polls += 1
        c.last_good_ns = self._wall()

    async def _control(self, what: str, request: ControlRequest) -> ControlResult:
        async with self._lock:
            if not self._up:
                return ControlResult(ControlStatus.LINK_DOWN, f"link {self.link.name} is not connected")
            fn = getattr(self.driver, what)
            try:
                result: ControlResult = await fn(request)
            except SessionLost as exc:  # the contract says drivers return this; a slip must not reach the caller
                result = ControlResult(ControlStatus.NO_RESPONSE, f"{exc}; outcome unknown")
                self.driver.close()
            except DriverError as exc:
                result = ControlResult(ControlStatus.REJECTED, str(exc))
            if not self.driver.connected:
                self._c.timeouts += 1
                self._lost("connection lost during a control")
            return result

    async def _shutdown(self) -> None:
        mask = self._seen & ((self._last_q & np.uint16(int(Q.OLD_DATA))) == 0)
        if mask.any():
            idx = np.flatnonzero(mask)
            q = old_data_quality(self._last_q[idx]) | np.uint16(int(Q.GATEWAY_TIME))
            ts = np.full(len(idx), self._wall(), dtype=np.int64)
            self._out.add(ReadingBatch(ts, self._ids[idx], self._last_val[idx].copy(), q))
        await self._out.drain()
        self.driver.close()

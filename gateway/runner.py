"""Link runner: the policy around one physical Modbus link (one TCP endpoint or one serial line).

One :class:`LinkRunner` per link, one asyncio task each (``await runner.run()``); devices on the link are
accessed one request at a time. The driver (:mod:`protocols.modbus`) does I/O; this module owns:

- **Schedule**: one absolute-deadline slot grid per (device, poll period). A poll starts at or after its
  deadline; the next deadline is the previous one plus the period. Each grid is offset from the start by a
  fixed phase (a hash of link/device/period, within ``min(period, PHASE_SPREAD_S)``) so that hundreds of links
  started together do not all poll in the same millisecond; the first poll after start, reconnect or
  recovery runs at once. If a poll starts one or more whole periods
  late, the missed slots are skipped (not burst) and counted in ``missed_slots``; lateness (start − deadline)
  of every poll goes into a bounded window for ``lateness_p99_ms``.
- **Link reconnect** with exponential back-off and jitter (``reconnect_min_s`` … ``reconnect_max_s``). While
  disconnected, the link's points are marked QUESTIONABLE|OLD_DATA|FAILURE once (last value kept).
- **Device back-off**: a device that does not answer (timeout, or gateway exception 0x0A/0x0B) has all its
  points marked QUESTIONABLE|OLD_DATA|FAILURE once and is backed off (``backoff_min_s`` … ``backoff_max_s``,
  doubling). During back-off it gets one probe request per interval and nothing else, so other devices on the
  link keep their schedule. A successful probe resumes normal polls at once.
- **Other failures** (exception responses, garbage) stamp the affected block's points with the driver's
  quality (see :mod:`protocols.modbus`), emitted once on the transition, last value kept.
- **Staleness**: a point not successfully read for ``stale_after_periods × period`` gets OLD_DATA (validity
  questionable if it was good), emitted once with its last value; never re-sent as fresh.
- **Deadband**: vectorised; a reading is emitted when it is the point's first, its quality changed, the
  point's deadband is 0 ("every poll"), or ``|value − last emitted value| > deadband``.
- **Back-pressure**: ``emit`` returning False (store queue full) keeps the batch and retries it every
  ``EMIT_RETRY_S``; polling pauses meanwhile (slots are skipped and counted), nothing is dropped.

Values of points never read successfully are NaN. Every Modbus reading carries ``Q.GATEWAY_TIME``; ``ts`` is
``wall_ns()`` taken when the response arrived.

Threading: all methods run on the runner's event loop. ``stop()`` may be called from another thread only via
``loop.call_soon_threadsafe(runner.stop)``. ``emit`` is called on the loop and must not block.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gateway.config import DeviceConfig, LinkConfig, PointConfig
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
from protocols.modbus import (
    Q_NO_RESPONSE,
    DeviceTimeout,
    LinkDown,
    MalformedResponse,
    ModbusClient,
    ModbusError,
    ModbusExceptionResponse,
    ReadBlock,
    plan_device,
)
from protocols.session import ControlAction, ControlRequest, ControlResult, ControlStatus

__all__ = ["EMIT_RETRY_S", "LATENESS_WINDOW", "LinkRunner"]

log = logging.getLogger(__name__)

LATENESS_WINDOW: Final = 1024  # polls per device kept for lateness_p99_ms
STALE_CHECK_NS: Final = 100_000_000  # at most this often, check every group for staleness
PHASE_SPREAD_S: Final = 1.0  # slot grids are offset by up to min(period, this) so links do not poll in bursts
_GT: Final = int(Q.GATEWAY_TIME)
# Modbus exception code of a refused write → control outcome.
_WRITE_EXCEPTION_STATUS: Final = {
    0x01: ControlStatus.NOT_SUPPORTED,  # illegal function
    0x02: ControlStatus.NOT_SUPPORTED,  # illegal data address
    0x03: ControlStatus.FORMAT_ERROR,  # illegal data value
    0x04: ControlStatus.HARDWARE_ERROR,  # server device failure
    0x06: ControlStatus.ALREADY_ACTIVE,  # server busy
}
_OLD: Final = int(Q.OLD_DATA)
_VALIDITY: Final = 0x0003


@dataclass(eq=False)
class _Group:
    """The points of one device that share a poll period, their read blocks and their emission state.

    Block ``k`` decodes into positions ``spans[k][0]:spans[k][1]`` of the per-point arrays.
    """

    dev: _Device
    period_ns: int
    stale_ns: int
    blocks: list[ReadBlock]
    spans: list[tuple[int, int]]
    ids: npt.NDArray[np.int32]
    deadband: npt.NDArray[np.float64]
    phase_ns: int = 0  # offset of this group's slot grid (spreads polls of many links over the period)
    deadline: int = 0  # monotonic ns of the next slot
    cur_val: npt.NDArray[np.float64] = field(init=False)  # latest known value (NaN = never read)
    last_val: npt.NDArray[np.float64] = field(init=False)  # last emitted value
    last_q: npt.NDArray[np.uint16] = field(init=False)  # last emitted quality
    emitted: npt.NDArray[np.bool_] = field(init=False)  # emitted at least once
    last_good: npt.NDArray[np.int64] = field(init=False)  # monotonic ns of the last good read
    first: bool = True  # the next poll is the first since start/reconnect/recovery (runs at once)

    def __post_init__(self) -> None:
        n = len(self.ids)
        self.cur_val = np.full(n, np.nan)
        self.last_val = np.full(n, np.nan)
        self.last_q = np.zeros(n, dtype=np.uint16)
        self.emitted = np.zeros(n, dtype=np.bool_)
        self.last_good = np.zeros(n, dtype=np.int64)
        self.every_poll = self.deadband <= 0

    def good(self, s: int, e: int, values: npt.NDArray[np.float64], ts: int, now: int) -> ReadingBatch | None:
        """A successful read of positions ``s:e``; returns the readings to emit (deadband applied)."""
        self.cur_val[s:e] = values
        self.last_good[s:e] = now
        last = self.last_val[s:e]
        with np.errstate(invalid="ignore"):
            moved = np.abs(values - last) > self.deadband[s:e]
        mask = (
            moved
            | self.every_poll[s:e]
            | ~self.emitted[s:e]
            | (self.last_q[s:e] != _GT)
            | (np.isnan(values) != np.isnan(last))
        )
        if not mask.any():
            return None
        if mask.all():
            idx: Any = slice(s, e)
            vals = values
        else:
            idx = np.flatnonzero(mask) + s
            vals = values[mask]
        self.last_val[idx] = vals
        self.last_q[idx] = _GT
        self.emitted[idx] = True
        n = len(vals)
        return ReadingBatch(
            np.full(n, ts, dtype=np.int64),
            self.ids[idx],
            np.array(vals, dtype=np.float64),
            np.full(n, _GT, dtype=np.uint16),
        )

    def mark(self, s: int, e: int, quality: int, ts: int) -> ReadingBatch | None:
        """Stamp positions ``s:e`` with a failure ``quality`` (GATEWAY_TIME added); emit only transitions."""
        q = np.uint16(quality | _GT)
        mask = (self.last_q[s:e] != q) | ~self.emitted[s:e]
        if not mask.any():
            return None
        idx = np.flatnonzero(mask) + s
        return self._emit_at(idx, np.full(len(idx), q, dtype=np.uint16), ts)

    def stale(self, now: int, ts: int) -> ReadingBatch | None:
        """Add OLD_DATA to points not read successfully for ``stale_ns``; emit each such transition once."""
        fresh = (self.last_q & np.uint16(_OLD)) == 0
        mask = ((now - self.last_good) > self.stale_ns) & fresh & self.emitted
        if not mask.any():
            return None
        idx = np.flatnonzero(mask)
        return self._emit_at(idx, old_data_quality(self.last_q[idx]), ts)

    def old_all(self, ts: int) -> ReadingBatch | None:
        """Mark every emitted point OLD_DATA (used on stop)."""
        mask = ((self.last_q & np.uint16(_OLD)) == 0) & self.emitted
        if not mask.any():
            return None
        idx = np.flatnonzero(mask)
        return self._emit_at(idx, old_data_quality(self.last_q[idx]), ts)

    def _emit_at(self, idx: npt.NDArray[np.intp], q: npt.NDArray[np.uint16], ts: int) -> ReadingBatch:
        vals = self.cur_val[idx]
        self.last_val[idx] = vals
        self.last_q[idx] = q
        self.emitted[idx] = True
        return ReadingBatch(np.full(len(idx), ts, dtype=np.int64), self.ids[idx], vals, q)


@dataclass(eq=False)
class _Device:
    cfg: DeviceConfig
    points: dict[str, PointConfig]
    groups: list[_Group] = field(default_factory=list)
    state: str = "starting"  # "starting", "ok", "backoff", "disconnected"
    backoff_s: float = 0.0  # current back-off interval (0 = not backed off)
    probe_at: int = 0  # monotonic ns of the next probe while backed off
    last_good_ns: int = 0  # wall ns of the last successful response
    last_latency_ms: float = math.nan
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)  # every answered request (/metrics)
    polls: int = 0  # completed group polls and probes with at least one response
    errors: int = 0  # exception / malformed responses
    timeouts: int = 0  # requests without response
    missed_slots: int = 0
    lateness: deque[int] = field(default_factory=lambda: deque(maxlen=LATENESS_WINDOW))


def _default_client_factory(link: LinkConfig) -> ModbusClient:
    return ModbusClient(link)


class LinkRunner(RunnerLoop):
    """Polls every device of one link on its schedule and emits :class:`ReadingBatch` es.

    :param link: the link and its devices.
    :param point_ids: ``"device.point"`` → store id for every point of the link (``ValueError`` if missing).
    :param emit: non-blocking sink; False when it cannot take the batch now (retried later, never dropped).
    :param mono_ns: monotonic clock (ns) for deadlines, back-off and staleness.
    :param wall_ns: UTC epoch clock (ns) for reading timestamps.
    :param client_factory: builds the driver client for the link (tests inject wrappers).
    :param rng: randomness for reconnect jitter.
    """

    def __init__(
        self,
        link: LinkConfig,
        point_ids: Mapping[str, int],
        emit: Callable[[ReadingBatch], bool],
        *,
        mono_ns: Callable[[], int] = time.monotonic_ns,
        wall_ns: Callable[[], int] = time.time_ns,
        client_factory: Callable[[LinkConfig], ModbusClient] = _default_client_factory,
        rng: random.Random | None = None,
        pending: PendingBudget | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.link = link
        self._mono = mono_ns
        self._wall = wall_ns
        self._client = client_factory(link)
        self._rng = rng or random.Random()
        self._lock = asyncio.Lock()  # serialises polls and writes on the link (created lazily on the loop)
        self._wake = asyncio.Event()
        self._stopping = False
        self._out = EmitBuffer(emit, f"link {link.name}", budget=pending,
                               on_gap=gap_reporter(link.name, wall_ns, on_event))  # fmt: skip
        self._link_up = False
        self._ever_connected = False
        self.reconnects = 0
        self._answered_since_connect = False  # a request was answered on the current connection
        self._dead_connections = 0  # connections in a row lost before any answer (their reconnects back off)
        self._init_liveness()  # loop_iterations, awake_by_ns, first_attempt_done: see RunnerLoop
        self._last_stale_check = 0
        self._devices: dict[str, _Device] = {}
        missing: list[str] = []
        for dcfg in link.devices:
            dev = _Device(dcfg, {p.name: p for p in dcfg.points})
            for period, blocks in plan_device(dcfg).items():
                names = [f"{dcfg.name}.{p.name}" for b in blocks for p in b.points]
                missing += [n for n in names if n not in point_ids]
                spans: list[tuple[int, int]] = []
                pos = 0
                for b in blocks:
                    spans.append((pos, pos + len(b.points)))
                    pos += len(b.points)
                period_ns = max(1, round(period * 1e9))
                frac = zlib.crc32(f"{link.name}/{dcfg.name}/{period!r}".encode()) / 2**32
                dev.groups.append(
                    _Group(
                        dev=dev,
                        period_ns=period_ns,
                        stale_ns=round(dcfg.stale_after_periods * period_ns),
                        blocks=blocks,
                        spans=spans,
                        ids=np.array([point_ids.get(n, -1) for n in names], dtype=np.int32),
                        deadband=np.array([p.deadband for b in blocks for p in b.points], dtype=np.float64),
                        phase_ns=round(frac * min(period_ns, PHASE_SPREAD_S * 1e9)),
                    )
                )
            self._devices[dcfg.name] = dev
        if missing:
            raise ValueError(f"link {link.name}: no point id for {', '.join(missing[:10])}")

    # ------------------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until :meth:`stop`; then mark all points OLD_DATA once, flush, and close the link."""
        start = self._mono()
        for dev in self._devices.values():
            for g in dev.groups:
                g.deadline = start
                g.first = True
                g.last_good[:] = start
        try:
            while not self._stopping:
                self._advance()
                if not self._flush():
                    await self._sleep(EMIT_RETRY_S)
                    continue
                if not self._client.connected:
                    await self._reconnect()
                    continue
                now = self._mono()
                if now - self._last_stale_check >= STALE_CHECK_NS:
                    self._check_stale(now)
                item = self._next_due()
                if item is None:  # a link without points: nothing to do but wait for stop()
                    self.first_attempt_done = True
                    await self._sleep(1.0)
                    continue
                dev, group, due = item
                if due > now:
                    await self._sleep((due - now) / 1e9)
                    continue
                async with self._lock:
                    if self._stopping or not self._client.connected:
                        continue
                    if group is None:
                        await self._probe(dev)
                    else:
                        await self._poll(group, self._mono())
                    self.first_attempt_done = True
        finally:
            await self._shutdown()

    def stop(self) -> None:
        """Ask :meth:`run` to finish (call on the runner's loop). Idempotent."""
        self._stopping = True
        self._wake.set()

    async def write(self, device: str, point: str, value: float) -> None:
        """Write a control value (engineering units) to a writable coil/holding point, between polls.

        Raises ``KeyError`` for an unknown device/point, ``ValueError`` for a non-writable point or a value
        that does not fit, :class:`protocols.modbus.ModbusError` (e.g. ``LinkDown``) when the write failed.
        """
        dev = self._devices[device]
        p = dev.points[point]
        if not p.writable:
            raise ValueError(f"{device}.{point} is not writable")
        async with self._lock:
            if not self._client.connected:
                raise LinkDown(f"link {self.link.name} is not connected")
            try:
                await self._client.write(dev.cfg, p, value)
            except ModbusError as exc:
                if exc.no_response and not isinstance(exc, LinkDown):
                    dev.timeouts += 1
                elif not exc.no_response:
                    dev.errors += 1
                raise

    async def select(self, request: ControlRequest) -> ControlResult:
        """Modbus has no select: the control service's own selection is the whole of it. Nothing is sent."""
        return ControlResult(ControlStatus.SUCCESS, "gateway-side selection (Modbus has no select)")

    async def cancel(self, request: ControlRequest) -> ControlResult:
        return ControlResult(ControlStatus.SUCCESS, "gateway-side selection released")

    async def operate(self, request: ControlRequest) -> ControlResult:
        """Write the control: ``VALUE`` writes the value, ``LATCH_ON``/``LATCH_OFF`` write 1/0 (coils and holding
        registers); pulses and trip/close need a device-side timer and are ``NOT_SUPPORTED`` over Modbus."""
        action = request.action
        if action is ControlAction.VALUE:
            value = request.value
        elif action in (ControlAction.LATCH_ON, ControlAction.LATCH_OFF):
            value = 1.0 if action is ControlAction.LATCH_ON else 0.0
        else:
            return ControlResult(ControlStatus.NOT_SUPPORTED, f"{action.value} is not a Modbus write")
        if not self._client.connected:
            return ControlResult(ControlStatus.LINK_DOWN, f"link {self.link.name} is not connected")
        try:
            await self.write(request.device, request.point, value)
        except (KeyError, ValueError) as exc:
            return ControlResult(ControlStatus.REJECTED, str(exc).strip("'\""))
        except ModbusExceptionResponse as exc:
            return ControlResult(_WRITE_EXCEPTION_STATUS.get(exc.code, ControlStatus.REJECTED), str(exc), exc.code)
        except (LinkDown, DeviceTimeout) as exc:
            return ControlResult(ControlStatus.NO_RESPONSE, f"{exc}; outcome unknown")
        except ModbusError as exc:  # garbage in reply: the device may or may not have written
            return ControlResult(ControlStatus.REJECTED, f"{exc}; outcome unknown")
        return ControlResult(ControlStatus.SUCCESS)

    def status(self) -> list[dict[str, Any]]:
        """One dict per device for the panel and metrics (see module docstring for the fields)."""
        out: list[dict[str, Any]] = []
        for dev in self._devices.values():
            lat = np.fromiter(dev.lateness, dtype=np.int64, count=len(dev.lateness))
            out.append(
                {
                    "device": dev.cfg.name,
                    "link": self.link.name,
                    "state": dev.state,
                    "last_good_ns": dev.last_good_ns,
                    "last_latency_ms": dev.last_latency_ms,
                    "latency_hist": dev.latency.snapshot(),
                    "polls": dev.polls,
                    "errors": dev.errors,
                    "timeouts": dev.timeouts,
                    "reconnects": self.reconnects,
                    "backoff_s": dev.backoff_s,
                    "missed_slots": dev.missed_slots,
                    "lateness_p99_ms": float(np.percentile(lat, 99)) / 1e6 if lat.size else math.nan,
                    "protocol": {"name": self.link.protocol},
                }
            )
        return out

    def lateness_ns(self) -> npt.NDArray[np.int64]:
        """All lateness samples (ns) currently in the devices' windows (for benchmarks and metrics)."""
        return np.fromiter((x for d in self._devices.values() for x in d.lateness), dtype=np.int64)

    def reset_window(self) -> None:
        """Forget the lateness samples (e.g. after a warm-up, or per metrics scrape); counters are kept."""
        for dev in self._devices.values():
            dev.lateness.clear()

    # ------------------------------------------------------------------------------------------------------
    # Internals (all on the runner's task)
    # ------------------------------------------------------------------------------------------------------

    def _emit(self, batch: ReadingBatch | None) -> None:
        self._out.add(batch)

    def _flush(self) -> bool:
        return self._out.flush()

    def _next_due(self) -> tuple[_Device, _Group | None, int] | None:
        """The most urgent work item: (device, group to poll | None = probe, due monotonic ns)."""
        best: tuple[_Device, _Group | None, int] | None = None
        for dev in self._devices.values():
            if dev.state == "backoff":
                if best is None or dev.probe_at < best[2]:
                    best = (dev, None, dev.probe_at)
                continue
            for g in dev.groups:
                if best is None or g.deadline < best[2]:
                    best = (dev, g, g.deadline)
        return best

    def _check_stale(self, now: int) -> None:
        self._last_stale_check = now
        ts = self._wall()
        for dev in self._devices.values():
            for g in dev.groups:
                self._emit(g.stale(now, ts))

    def _mark_device(self, dev: _Device, quality: int) -> None:
        ts = self._wall()
        for g in dev.groups:
            self._emit(g.mark(0, len(g.ids), quality, ts))

    async def _poll(self, g: _Group, now: int) -> None:
        dev = g.dev
        late = now - g.deadline
        if late >= g.period_ns:  # started a whole period (or more) late: skip to the most recent slot
            k = late // g.period_ns
            g.deadline += k * g.period_ns
            dev.missed_slots += k
            late -= k * g.period_ns
        dev.lateness.append(late)
        if g.first:  # first poll (start/reconnect/recovery) ran at once; continue on the phase-shifted grid
            g.first = False
            g.deadline += g.phase_ns
        g.deadline += g.period_ns
        answered = False
        for block, (s, e) in zip(g.blocks, g.spans, strict=True):
            t0 = self._mono()
            try:
                values = await self._client.read(dev.cfg, block)
            except ModbusError as exc:
                if self._on_error(dev, exc, g, s, e):
                    return
                answered = True
                continue
            t1 = self._mono()
            answered = True
            dev.last_latency_ms = (t1 - t0) / 1e6
            dev.latency.observe(t1 - t0)
            ts = self._wall()
            dev.last_good_ns = ts
            self._emit(g.good(s, e, values, ts, t1))
        if answered:
            self._answered_since_connect = True
            self._dead_connections = 0
            dev.polls += 1
            dev.state = "ok"
            dev.backoff_s = 0.0

    def _on_error(self, dev: _Device, exc: ModbusError, g: _Group, s: int, e: int) -> bool:
        """Handle a failed request; True when the rest of this poll must be abandoned."""
        if isinstance(exc, LinkDown):
            log.info("link %s: %s", self.link.name, exc)
            self._link_lost()
            return True
        if exc.no_response or isinstance(exc, MalformedResponse):
            # no answer, or bytes that are no Modbus answer (a broken device or a wrong one at that address):
            # either way its polls back off, so it degrades only itself (not its points' row rate, not the link)
            if exc.no_response:
                dev.timeouts += 1
            else:
                dev.errors += 1
            self._mark_device(dev, exc.quality)
            dev.backoff_s = (
                dev.cfg.backoff_min_s if dev.backoff_s <= 0 else min(dev.backoff_s * 2, dev.cfg.backoff_max_s)
            )
            dev.probe_at = self._mono() + round(dev.backoff_s * 1e9)
            if not exc.no_response and not self._client.connected:
                # the peer hung up after this device's garbage: the device is at fault, not the link, so the
                # reconnect that follows marks nothing on the link's other devices (they were fine a moment ago)
                self._client.close()
                self._link_up = False
            if dev.state != "backoff":
                what = "no response" if exc.no_response else "malformed response"
                log.info("device %s: %s (%s); backing off %.1f s", dev.cfg.name, what, exc, dev.backoff_s)
            dev.state = "backoff"
            return True
        dev.errors += 1
        self._emit(g.mark(s, e, exc.quality, self._wall()))
        return False

    async def _probe(self, dev: _Device) -> None:
        """One request to a backed-off device; on an answer, resume its normal polls at once."""
        g = dev.groups[0]
        s, e = g.spans[0]
        t0 = self._mono()
        try:
            values = await self._client.read(dev.cfg, g.blocks[0])
        except ModbusError as exc:
            if not self._on_error(dev, exc, g, s, e):
                self._resume(dev)  # it answered (with an exception): it is alive
            return
        t1 = self._mono()
        dev.last_latency_ms = (t1 - t0) / 1e6
        dev.latency.observe(t1 - t0)
        self._answered_since_connect = True
        self._dead_connections = 0
        ts = self._wall()
        dev.last_good_ns = ts
        self._emit(g.good(s, e, values, ts, t1))
        dev.polls += 1
        log.info("device %s answers again", dev.cfg.name)
        self._resume(dev)

    def _resume(self, dev: _Device) -> None:
        now = self._mono()
        dev.state = "ok"
        dev.backoff_s = 0.0
        for g in dev.groups:
            g.deadline = now
            g.first = True

    def _link_lost(self) -> None:
        """Close the link and mark every point of it failed (emitted once: marks only emit transitions)."""
        self._client.close()
        self._link_up = False
        for dev in self._devices.values():
            dev.state = "disconnected"
            self._mark_device(dev, Q_NO_RESPONSE)

    async def _reconnect(self) -> None:
        """Connect, retrying with exponential back-off and jitter until connected or stopped."""
        if self._link_up:  # dropped while idle (noticed here rather than by a failed request)
            self._link_lost()
        delay = 0.0
        attempt = 0
        if self._ever_connected and not self._answered_since_connect:
            # the last connection died before any request was answered (a peer that accepts, then sends garbage
            # or hangs up): reconnecting at once would spin, marking every point at each turn — back off instead
            self._dead_connections += 1
            delay = backoff_delay(self._dead_connections, self.link.reconnect_min_s, self.link.reconnect_max_s,
                                  self._rng)
            log.info("link %s: connection lost before any answer; reconnecting in %.2f s", self.link.name, delay)
        while not self._stopping:
            if delay > 0:
                self._flush()
                await self._sleep(delay)
                if self._stopping:
                    return
            self._advance()
            try:
                await self._client.connect()
            except ModbusError as exc:
                self.first_attempt_done = True
                attempt += 1
                if attempt == 1:
                    self._link_lost()
                delay = backoff_delay(attempt, self.link.reconnect_min_s, self.link.reconnect_max_s, self._rng)
                log.info("link %s: %s; retry in %.2f s", self.link.name, exc, delay)
                continue
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
            self._link_up = True
            self._answered_since_connect = False
            now = self._mono()
            for dev in self._devices.values():
                if dev.backoff_s > 0 and dev.probe_at > now:
                    dev.state = "backoff"  # its own fault (garbage that cost the connection): keep backing off
                    continue
                dev.state = "starting"
                dev.backoff_s = 0.0
                for g in dev.groups:
                    g.deadline = now
                    g.first = True
            return

    async def _shutdown(self) -> None:
        ts = self._wall()
        for dev in self._devices.values():
            for g in dev.groups:
                self._emit(g.old_all(ts))
        await self._out.drain()
        self._client.close()

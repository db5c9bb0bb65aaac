"""A fast Modbus TCP measurement source for the protection cycle: one I/O thread polls, the cycle never waits.

:class:`ModbusMeasurementSpec` (frozen, picklable: it crosses into the spawned protection process) names the
measurement IED and a block of **16 registers** holding 8 float32 values, in this order: ``Ia Ib Ic In`` (A
primary), ``Va Vb Vc`` (kV primary, phase-to-neutral), ``f`` (Hz) — 2 words each, bytes big-endian within a word,
words high-first (``word_order="big"``) or low-first (``"little"``). FC4 (input) or FC3 (holding).

Threads and contract:

- :class:`ModbusMeasurementSource` starts one **I/O thread** (``protection-source host:port``) in its
  constructor. It owns the socket (:class:`protection.fastmodbus.ModbusTcpClient`, blocking calls bounded by
  ``timeout_s``), polls on absolute deadlines every ``poll_period_s`` (slot ``k`` at ``t0 + k·period``; slots
  missed by a slow response are skipped, never burst; 0 = back to back) and publishes each frame into a
  :class:`protection.sources.SampleSlot`.
- :meth:`~ModbusMeasurementSource.read_into` runs on the **cycle thread** and never blocks: it is
  ``SampleSlot.read_into``, which only *tries* the slot's lock and otherwise keeps the copy taken last cycle.
  So a dead, silent or garbage-speaking device, or an I/O thread stuck anywhere (even inside ``publish``), only
  makes the sample age; after ``stale_after_s`` every quantity is invalid and the elements that need it block.
- **Sample time = the monotonic time the request was sent** (taken just before ``send``). The device cannot have
  measured the values before it received the request (assuming it serves live values), so this is the earliest
  instant they can describe, and ``now − sample time`` is an upper bound of their age: a slow response is judged
  by its full round trip (a response slower than ``stale_after_s`` is stale on arrival). The receive time would
  make late answers look fresh. Fail-safe wins.
- **Validity**: a value that is NaN or ±inf clears its own ``V_*`` bit (the other quantities stay valid). An
  exception response (the device refused the read) publishes a frame with *every* bit cleared (one request
  reads all eight; none of them arrived) at once, rather than waiting for staleness, and polling goes on on the
  same connection. A timeout, a socket error, a garbage or mismatched response also publishes an all-invalid
  frame at once, closes the connection and reconnects after a backoff.
- **Reconnect**: exponential backoff from ``reconnect_min_s`` doubling to ``reconnect_max_s``, each wait
  multiplied by a random factor in [0.5, 1.0] (jitter, so a bay of relays restarting together does not
  reconnect in lockstep); reset to ``reconnect_min_s`` by the first good response. The connect itself is bounded
  by ``timeout_s``.
- Counters (plain ``int`` attributes written only by the I/O thread, readable anywhere): ``polls`` (responses
  with data), ``errors`` (failed connects and failed requests, exception responses included), ``reconnects``
  (connections opened after the first one), ``last_error`` (text of the latest error, "" if none).
- :meth:`~ModbusMeasurementSource.close` (idempotent, any thread but the I/O thread) sets the stop flag and
  joins the thread: it shuts the socket down (a request waiting for a response returns at once), every wait is
  interruptible and a connect attempt is bounded by ``timeout_s``, so the thread ends within about one
  ``timeout_s``; the join gives up after ``join_timeout_s`` and logs (the thread is a daemon).

The GIL: the I/O thread releases it in every wait (socket, sleep); its own Python work per poll is a few tens of
µs, which can delay the cycle thread's wake-up by as much. ``sys.setswitchinterval`` bounds worse cases.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Final, Literal

from protection.fastmodbus import (
    FC_READ_HOLDING,
    FC_READ_INPUT,
    Float32Decoder,
    ModbusError,
    ModbusExceptionResponse,
    ModbusTcpClient,
    ReadRequest,
)
from protection.measurements import V_F, V_IA, V_IB, V_IC, V_IN, V_VA, V_VB, V_VC, Measurements
from protection.sources import SampleSlot

__all__ = ["REGISTERS", "ModbusMeasurementSource", "ModbusMeasurementSpec"]

log = logging.getLogger(__name__)

REGISTERS: Final = 16  # Ia Ib Ic In Va Vb Vc f, float32 each
_BITS: Final = (V_IA, V_IB, V_IC, V_IN, V_VA, V_VB, V_VC, V_F)  # validity bit of each value, in register order
_NAN: Final = math.nan
_NS: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ModbusMeasurementSpec:
    """A measurement IED polled over Modbus TCP by the protection process (see the module doc)."""

    host: str  # IED address (an IP address avoids a DNS lookup on the I/O thread)
    port: int = 502  # TCP port
    unit_id: int = 1  # Modbus unit id (0..255)
    function: Literal["input", "holding"] = "input"  # FC4 input registers or FC3 holding registers
    address: int = 0  # first of 16 registers: Ia Ib Ic In Va Vb Vc f as float32 (2 words each); A and kV primary, Hz
    word_order: Literal["big", "little"] = "big"  # "big": high word first; bytes within a word are always big-endian
    poll_period_s: float = 0.001  # the I/O thread's period (absolute deadlines); 0 = back to back
    timeout_s: float = 0.05  # response (and connect) timeout per request
    stale_after_s: float = 0.02  # samples older than this (by their request time) are invalid
    reconnect_min_s: float = 0.05  # first backoff after an error
    reconnect_max_s: float = 2.0  # backoff ceiling

    def check(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if not self.host:
            raise ValueError("modbus source: host is empty")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"modbus source: port {self.port} out of range 1..65535")
        if not 0 <= self.unit_id <= 255:
            raise ValueError(f"modbus source: unit_id {self.unit_id} out of range 0..255")
        if self.function not in ("input", "holding"):
            raise ValueError(f"modbus source: function {self.function!r} is not 'input' or 'holding'")
        if not 0 <= self.address <= 0x10000 - REGISTERS:
            raise ValueError(f"modbus source: address {self.address} out of range 0..{0x10000 - REGISTERS}")
        if self.word_order not in ("big", "little"):
            raise ValueError(f"modbus source: word_order {self.word_order!r} is not 'big' or 'little'")
        if not self.poll_period_s >= 0:
            raise ValueError(f"modbus source: poll_period_s {self.poll_period_s} must be >= 0")
        for name in ("timeout_s", "stale_after_s", "reconnect_min_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"modbus source: {name} {getattr(self, name)} must be > 0")
        if not self.reconnect_max_s >= self.reconnect_min_s:
            raise ValueError(
                f"modbus source: reconnect_max_s {self.reconnect_max_s} is below reconnect_min_s {self.reconnect_min_s}"
            )


class ModbusMeasurementSource:
    """Polls a :class:`ModbusMeasurementSpec` device on its own I/O thread; ``read_into`` never blocks.

    ``start_ns`` is the monotonic time the process started (the poll grid starts at the first connection; kept
    for the :func:`protection.sources.build_source` signature).
    """

    def __init__(self, spec: ModbusMeasurementSpec, start_ns: int) -> None:
        spec.check()
        self.spec = spec
        self.start_ns = start_ns
        self.polls = 0  # responses with data (I/O thread writes; anyone reads)
        self.errors = 0  # failed connects + failed requests (exception responses included)
        self.reconnects = 0  # connections opened after the first one
        self.last_error = ""  # the latest error, as text
        self.join_timeout_s = 2 * spec.timeout_s + 1.0  # how long close() waits for the I/O thread
        self._slot = SampleSlot(spec.stale_after_s)
        self._client = ModbusTcpClient(spec.host, spec.port, timeout_s=spec.timeout_s, connect_timeout_s=spec.timeout_s)
        fc = FC_READ_INPUT if spec.function == "input" else FC_READ_HOLDING
        self._req = ReadRequest(spec.unit_id, fc, spec.address, REGISTERS)
        self._decoder = Float32Decoder(REGISTERS // 2, spec.word_order)
        self._rng = random.Random()
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"protection-source {spec.host}:{spec.port}", daemon=True
        )
        self._thread.start()

    @property
    def slot(self) -> SampleSlot:
        """The slot the I/O thread publishes into (its lock is exposed for tests of a hung producer)."""
        return self._slot

    @property
    def connected(self) -> bool:
        return self._client.connected

    def read_into(self, m: Measurements, now_ns: int) -> None:
        """Cycle thread: the latest sample into ``m``; stale or invalid quantities have their bit cleared."""
        self._slot.read_into(m, now_ns)

    def close(self) -> None:
        """Stop and join the I/O thread (bounded by ``join_timeout_s``). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._client.abort()  # a request waiting for a silent device returns now
        if self._thread is not threading.current_thread():
            self._thread.join(self.join_timeout_s)
            if self._thread.is_alive():
                log.warning("protection: modbus source %s:%s I/O thread did not stop in %.1f s",
                            self.spec.host, self.spec.port, self.join_timeout_s)

    def __enter__(self) -> ModbusMeasurementSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- I/O thread ----------------------------------------------------------------------------------------

    def _invalid(self, sample_ns: int) -> None:
        self._slot.publish(sample_ns, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN, 0)

    def _run(self) -> None:
        spec = self.spec
        client = self._client
        req = self._req
        decoder = self._decoder
        slot = self._slot
        stop = self._stop
        period = round(spec.poll_period_s * _NS)
        backoff = spec.reconnect_min_s
        ever_connected = False
        up: bool | None = None  # link state as last logged (None = not yet known)
        t0 = 0
        k = 0
        try:
            while not stop.is_set():
                if not client.connected:
                    try:
                        client.connect()
                    except ModbusError as e:
                        self.errors += 1
                        self.last_error = str(e)
                        if up is not False:
                            log.warning("protection: modbus source %s:%s down: %s", spec.host, spec.port, e)
                        up = False
                        stop.wait(backoff * (0.5 + 0.5 * self._rng.random()))
                        backoff = min(2 * backoff, spec.reconnect_max_s)
                        continue
                    if ever_connected:
                        self.reconnects += 1
                    ever_connected = True
                    t0 = time.monotonic_ns()
                    k = 0
                sent_ns = time.monotonic_ns()
                try:
                    data = client.read_registers(req)
                except ModbusExceptionResponse as e:
                    self.errors += 1
                    self.last_error = str(e)
                    self._invalid(sent_ns)
                except ModbusError as e:
                    self.errors += 1
                    self.last_error = str(e)
                    self._invalid(sent_ns)
                    if up is not False:
                        log.warning("protection: modbus source %s:%s lost: %s", spec.host, spec.port, e)
                    up = False
                    stop.wait(backoff * (0.5 + 0.5 * self._rng.random()))
                    backoff = min(2 * backoff, spec.reconnect_max_s)
                    continue
                else:
                    v = decoder.decode(data)
                    valid = 0
                    for i in range(8):
                        if math.isfinite(v[i]):
                            valid |= _BITS[i]
                    slot.publish(sent_ns, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], valid)
                    self.polls += 1
                    backoff = spec.reconnect_min_s
                    if not up:
                        up = True
                        log.info("protection: modbus source %s:%s up", spec.host, spec.port)
                if period > 0:
                    k += 1
                    now = time.monotonic_ns()
                    due = t0 + k * period
                    if due <= now:  # a slow response: skip the missed slots, never poll in a burst
                        k = (now - t0) // period + 1
                        due = t0 + k * period
                    stop.wait((due - now) / _NS)
        finally:
            client.close()


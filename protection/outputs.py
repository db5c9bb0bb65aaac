"""Trip outputs of the protection process: a trip decision becomes a Modbus coil write to a breaker IED.

:class:`ModbusCoilOutputSpec` (frozen, picklable: it crosses into the spawned process) names one output: the
breaker IED, the coil, the value written on a trip (FC5: True = 0xFF00) and the elements whose TRIP asserts it.
:class:`TripOutputs` runs all outputs of the process.

Threads (who may call what):

- **cycle thread**: :meth:`TripOutputs.on_trip` and :meth:`TripOutputs.drain_into`. Neither ever blocks.
- **output I/O thread** (one, ``protection-outputs``, started by :meth:`TripOutputs.start`): connects each
  output (non-blocking connect, ``TCP_NODELAY``, keep-alive) and keeps it connected (reconnect with exponential
  backoff 50 ms → 2 s and jitter), reads responses, applies timeouts and retries, finishes sends the cycle could
  not do. It only ever waits in ``select`` (bounded by 100 ms, so ``close`` is prompt): every socket is
  non-blocking, so one dead breaker IED cannot delay another output. (The one blocking call is the name lookup
  of a host that is not an IP address, once per output, on this thread.)
- any thread: ``start`` and ``close`` (the owner), the counters.

**The fast path.** Each output's FC5 frame is built once. ``on_trip`` *tries* the output's lock (never waits for
it); holding it, with the output connected and idle, it patches the transaction id and writes the frame with a
non-blocking ``send`` on the already-connected socket, straight from the cycle thread, then pokes the I/O thread
(one byte on a non-blocking socketpair) so it watches for the response. When the lock is held by the I/O thread,
the output is not connected, or ``send`` would block (or writes part of the frame), the command is handed to the
I/O thread (a ``collections.deque``; ``append``/``popleft`` are atomic), which sends it as soon as it can: at
once, when the link comes up, or when the socket is writable. "Never blocks" therefore relies on: a
non-blocking lock try, a non-blocking socket, a non-blocking wake-up write, and deque appends. (The GIL remains:
the I/O thread's Python work between its waits is short, tens of µs.) The lock is held by the I/O thread only
for non-blocking socket calls and state updates.

**Command life** (one command per output at a time; a trip that arrives while the output's command is still
pending or in flight is *coalesced* into it — the coil write is idempotent — and counted in ``coalesced``):

1. sent → ``OEV_SENT`` (phases = µs from ``decision_ns`` to the end of the write);
2. the device echoes it → ``OEV_CONFIRMED`` (phases = µs from the latest send to the response);
3. no response within ``timeout_s`` → sent again with the same transaction id (so a late echo of an earlier
   attempt still confirms) → ``OEV_RETRY`` (phases = attempt number 2, 3, ...) — up to ``retries`` extra
   attempts, then ``OEV_FAILED`` (``OUT_ERR_TIMEOUT``); a response that is not a valid echo is treated the same
   (``OUT_ERR_BAD_RESPONSE``);
4. the device answers with a Modbus exception → ``OEV_FAILED`` (``OUT_ERR_EXCEPTION | code << 8``) at once (the
   device refused; resending will not change its mind);
5. not connected when the command is due, or the connection is lost while it is pending → it waits for the link
   up to ``connect_timeout_s`` (from the decision, or from the loss) and is then sent (``OEV_SENT``, or
   ``OEV_RETRY`` if an earlier attempt went out), or it ends as ``OEV_FAILED`` with ``OUT_ERR_NOT_CONNECTED``
   (never connected) or the code of the loss (``OUT_ERR_IO``, ``OUT_ERR_TIMEOUT``, ``OUT_ERR_BAD_RESPONSE``).

Link records: ``OEV_LINK_UP`` when a connection comes up; ``OEV_LINK_DOWN`` on the transition to down (not per
failed attempt): lost (``OUT_ERR_IO``), garbage from the device (``OUT_ERR_BAD_RESPONSE``), connect refused
(``OUT_ERR_NOT_CONNECTED``) or connect timed out (``OUT_ERR_TIMEOUT``).

**Records.** Outcomes travel as ``(mono_ns, output index, OEV_*, phases)`` tuples through a thread-safe deque
(bounded: beyond ``MAX_OUTCOMES`` waiting, new ones are dropped and counted in ``dropped_outcomes``). The cycle
thread calls :meth:`TripOutputs.drain_into` once per cycle and pushes them into the event ring (it stays the
ring's only producer): ``element = ELEMENT_OUTPUT``, ``group`` = the output's index in the specs,
``events`` = the ``OEV_*`` code, ``phases`` = its detail, ``mono_ns`` = when the outcome happened,
``utc_ns = utc_ns + (mono_ns − now_ns)``. Times are ``time.monotonic_ns()`` (real I/O: no injected clock).
Allocation on the cycle thread: one small tuple per record on a trip; nothing on a cycle without trips.
"""

from __future__ import annotations

import errno
import logging
import random
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from protection.fastmodbus import (
    FrameBuffer,
    ModbusError,
    ModbusExceptionResponse,
    ModbusFrameError,
    ModbusTransactionMismatch,
    WriteCoilRequest,
    check_response,
    configure_socket,
)
from protection.shm import (
    ELEMENT_OUTPUT,
    OEV_CONFIRMED,
    OEV_FAILED,
    OEV_LINK_DOWN,
    OEV_LINK_UP,
    OEV_RETRY,
    OEV_SENT,
    OUT_ERR_BAD_RESPONSE,
    OUT_ERR_EXCEPTION,
    OUT_ERR_IO,
    OUT_ERR_NOT_CONNECTED,
    OUT_ERR_TIMEOUT,
    EventRing,
)

__all__ = ["MAX_OUTCOMES", "ModbusCoilOutputSpec", "OutputSpec", "TripOutputs"]

log = logging.getLogger(__name__)

RECONNECT_MIN_S: Final = 0.05  # first reconnect backoff of an output link
RECONNECT_MAX_S: Final = 2.0  # backoff ceiling
IDLE_WAIT_S: Final = 0.1  # longest select() wait of the I/O thread (bounds close() latency)
MAX_OUTCOMES: Final = 1024  # outcome records waiting for the cycle; more are dropped and counted
DRAIN_MAX: Final = 64  # records moved into the ring per drain_into call (bounds the cycle's cost)
_NS: Final = 1_000_000_000
_IDLE_WAIT_NS: Final = round(IDLE_WAIT_S * _NS)
_U32: Final = 0xFFFFFFFF

# command states of an output
_IDLE: Final = 0  # nothing to do
_WAITING: Final = 1  # due, waiting for the link (deadline = give up)
_SENDING: Final = 2  # being written (socket would block / partial write); deadline = give up on this connection
_INFLIGHT: Final = 3  # written, waiting for the echo (deadline = response timeout)

# link states (for the up/down records)
_LINK_UNKNOWN: Final = 0
_LINK_UP: Final = 1
_LINK_DOWN: Final = -1


@dataclass(frozen=True, slots=True)
class ModbusCoilOutputSpec:
    """A trip output: write ``value`` to ``coil`` of a Modbus TCP device (FC5) when one of ``elements`` trips."""

    name: str  # e.g. "feeder1-breaker" (unique among the outputs)
    host: str  # breaker IED address (an IP address avoids a name lookup)
    port: int = 502  # TCP port
    unit_id: int = 1  # Modbus unit id (0..255)
    coil: int = 0  # coil address (0..65535)
    value: bool = True  # value written on a trip (True = 0xFF00)
    elements: tuple[str, ...] = ()  # names of elements whose TRIP asserts this output; () = every element
    timeout_s: float = 0.1  # response timeout per attempt
    retries: int = 2  # extra attempts after a timeout/error
    connect_timeout_s: float = 1.0  # connect timeout; also how long a due command waits for the link

    def check(self) -> None:
        """Raise ``ValueError`` naming the output and the bad field."""
        where = f"trip output {self.name!r}"
        if not self.name:
            raise ValueError("trip output: name is empty")
        if not self.host:
            raise ValueError(f"{where}: host is empty")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"{where}: port {self.port} out of range 1..65535")
        if not 0 <= self.unit_id <= 255:
            raise ValueError(f"{where}: unit_id {self.unit_id} out of range 0..255")
        if not 0 <= self.coil <= 0xFFFF:
            raise ValueError(f"{where}: coil {self.coil} out of range 0..65535")
        if not self.timeout_s > 0:
            raise ValueError(f"{where}: timeout_s {self.timeout_s} must be > 0")
        if not self.connect_timeout_s > 0:
            raise ValueError(f"{where}: connect_timeout_s {self.connect_timeout_s} must be > 0")
        if self.retries < 0:
            raise ValueError(f"{where}: retries {self.retries} must be >= 0")


OutputSpec = ModbusCoilOutputSpec  # DNP3 CROB / IEC 61850 XCBR specs will join this union later


def _us(ns: int) -> int:
    """ns → µs for a record's u32 ``phases`` (clamped)."""
    us = ns // 1000
    return 0 if us < 0 else (_U32 if us > _U32 else us)


class _Output:
    """State of one output. Fields marked (lock) are shared with the cycle thread and change only under ``lock``;
    the others belong to the I/O thread."""

    __slots__ = (
        "addr",
        "attempt",
        "backoff_s",
        "broken",
        "cmd",
        "connect_deadline",
        "csock",
        "deadline_ns",
        "decision_ns",
        "fail_code",
        "family",
        "frame_len",
        "index",
        "last_attempt_ns",
        "last_error",
        "link",
        "lock",
        "mask",
        "mv",
        "next_connect_ns",
        "req",
        "rx",
        "send_ns",
        "sock",
        "spec",
        "tid",
        "tx_off",
    )

    def __init__(self, index: int, spec: ModbusCoilOutputSpec) -> None:
        self.index = index
        self.spec = spec
        self.lock = threading.Lock()
        self.req = WriteCoilRequest(spec.unit_id, spec.coil, spec.value)  # (lock) the frame; tid patched per command
        self.mv = memoryview(self.req.frame)
        self.frame_len = len(self.req.frame)
        self.tid = 0  # (lock) transaction id of the current command
        self.sock: socket.socket | None = None  # (lock) the connected socket, None when down
        self.broken = 0  # (lock) OUT_ERR_* when the cycle saw the socket fail; the I/O thread drops it
        self.cmd = _IDLE  # (lock) command state
        self.decision_ns = 0  # (lock) the trip decision of the current command
        self.attempt = 0  # (lock) attempts written (or being written) so far
        self.tx_off = 0  # (lock) bytes of the frame written in the current attempt
        self.send_ns = 0  # (lock) end of the latest write
        self.deadline_ns = 0  # (lock) see the command states
        self.fail_code = OUT_ERR_NOT_CONNECTED  # (lock) reported if a waiting command gives up
        self.rx = FrameBuffer()  # (lock) responses
        self.link = _LINK_UNKNOWN
        self.csock: socket.socket | None = None  # connect in progress
        self.connect_deadline = 0
        self.next_connect_ns = 0
        self.last_attempt_ns = -(1 << 62)
        self.backoff_s = RECONNECT_MIN_S
        self.mask = 0  # selector events registered for sock
        self.addr: Any = None
        self.family = socket.AF_INET
        self.last_error = ""


class TripOutputs:
    """All trip outputs of the protection process (see the module doc for threads and records).

    ``element_names`` = the armed element names of group 1 and group 2 (index = the ring's ``element``). An
    output whose ``elements`` names an element armed in neither group is a ``ValueError`` naming both; so are
    duplicate output names and out-of-range spec fields. The constructor opens nothing: ``start`` does.
    """

    def __init__(
        self, specs: Sequence[OutputSpec], element_names: tuple[tuple[str, ...], tuple[str, ...]]
    ) -> None:
        names1, names2 = element_names
        armed = set(names1) | set(names2)
        seen: set[str] = set()
        for spec in specs:
            if not isinstance(spec, ModbusCoilOutputSpec):
                raise TypeError(f"unknown trip output spec {type(spec).__name__}")
            spec.check()
            if spec.name in seen:
                raise ValueError(f"trip output {spec.name!r}: duplicate output name")
            seen.add(spec.name)
            for e in spec.elements:
                if e not in armed:
                    raise ValueError(
                        f"trip output {spec.name!r}: element {e!r} is not armed "
                        f"(group 1: {', '.join(names1) or 'none'}; group 2: {', '.join(names2) or 'none'})"
                    )
        self._outs = tuple(_Output(i, s) for i, s in enumerate(specs))
        # (group-1)[element] -> the outputs that element's TRIP asserts
        self._targets: tuple[tuple[tuple[_Output, ...], ...], ...] = tuple(
            tuple(tuple(o for o in self._outs if not o.spec.elements or n in o.spec.elements) for n in names)
            for names in (names1, names2)
        )
        self._cmds: deque[tuple[_Output, int]] = deque()  # cycle -> I/O thread: commands it could not send
        self._outcomes: deque[tuple[int, int, int, int]] = deque()  # both -> cycle: (mono, output, OEV_*, phases)
        self._rng = random.Random()
        self._sel: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self.join_timeout_s = 5.0  # close() waits this long for the I/O thread
        # counters (plain ints; written by the thread named, readable anywhere)
        self.trips = 0  # on_trip calls that asserted at least one output (cycle)
        self.fast_sends = 0  # commands written straight from the cycle thread (cycle)
        self.handed_over = 0  # commands the cycle handed to the I/O thread (lock busy) (cycle)
        self.coalesced = 0  # trips merged into a command already pending (cycle / I/O)
        self.confirmed = 0  # commands confirmed (I/O)
        self.failed = 0  # commands given up (I/O)
        self.stray_responses = 0  # responses matching no pending command (I/O)
        self.dropped_outcomes = 0  # records dropped because MAX_OUTCOMES were waiting

    @property
    def specs(self) -> tuple[OutputSpec, ...]:
        return tuple(o.spec for o in self._outs)

    def connected(self, index: int) -> bool:
        """Whether output ``index`` has a connection now (any thread; a snapshot)."""
        return self._outs[index].sock is not None

    def last_error(self, index: int) -> str:
        return self._outs[index].last_error

    # --- owner --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the output I/O thread (it connects every output). Idempotent; not after ``close``."""
        if self._thread is not None or self._closed:
            return
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="protection-outputs", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop and join the I/O thread, close every socket. Idempotent. Pending commands are abandoned."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        t = self._thread
        if t is not None:
            self._wake()
            t.join(self.join_timeout_s)
            if t.is_alive():
                log.warning("protection: output I/O thread did not stop in %.1f s", self.join_timeout_s)
                return  # it still uses the sockets; it is a daemon
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()

    def __enter__(self) -> TripOutputs:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- cycle thread -------------------------------------------------------------------------------------

    def on_trip(self, element: int, group: int, decision_ns: int) -> None:
        """Element ``element`` of ``group`` (1/2) tripped at monotonic ``decision_ns``: assert its outputs.

        Cycle thread; never blocks (see the module doc). Unknown group/element indices are ignored.
        """
        if group != 1 and group != 2:
            return
        row = self._targets[group - 1]
        if not 0 <= element < len(row):
            return
        outs = row[element]
        if not outs:
            return
        self.trips += 1
        for o in outs:
            if o.lock.acquire(blocking=False):
                try:
                    if o.cmd != _IDLE:
                        self.coalesced += 1
                    else:
                        self._begin(o, decision_ns)
                        if o.cmd == _INFLIGHT:
                            self.fast_sends += 1
                finally:
                    o.lock.release()
            else:
                self.handed_over += 1
                self._cmds.append((o, decision_ns))
        self._wake()

    def drain_into(self, ring: EventRing, now_ns: int, utc_ns: int) -> int:
        """Push waiting outcome records into ``ring`` (cycle thread; at most ``DRAIN_MAX``). Returns how many."""
        q = self._outcomes
        n = 0
        while q and n < DRAIN_MAX:
            mono, index, ev, phases = q.popleft()
            ring.push(mono, utc_ns + (mono - now_ns), ELEMENT_OUTPUT, index, ev, phases)
            n += 1
        return n

    # --- both threads, under o.lock -----------------------------------------------------------------------

    def _emit(self, mono_ns: int, o: _Output, ev: int, phases: int) -> None:
        if len(self._outcomes) >= MAX_OUTCOMES:
            self.dropped_outcomes += 1
            return
        self._outcomes.append((mono_ns, o.index, ev, phases))

    def _wake(self) -> None:
        w = self._wake_w
        if w is not None:
            try:  # noqa: SIM105 -- cycle thread: no context-manager object per call
                w.send(b"\x00")
            except OSError:  # full (a wake-up is already pending) or closed
                pass

    def _begin(self, o: _Output, decision_ns: int) -> None:
        """A new command (o.cmd is _IDLE). Sends at once when connected, else waits for the link."""
        o.decision_ns = decision_ns
        o.attempt = 0
        o.fail_code = OUT_ERR_NOT_CONNECTED
        o.tid = (o.tid + 1) & 0xFFFF
        o.req.set_tid(o.tid)
        if o.sock is not None and not o.broken:
            self._send(o)
        else:
            o.cmd = _WAITING
            o.deadline_ns = decision_ns + round(o.spec.connect_timeout_s * _NS)

    def _send(self, o: _Output) -> None:
        """Start the next attempt on the connected socket."""
        o.attempt += 1
        o.tx_off = 0
        o.cmd = _SENDING
        o.deadline_ns = time.monotonic_ns() + round(o.spec.timeout_s * _NS)
        self._write(o)

    def _write(self, o: _Output) -> None:
        """Write (the rest of) the frame without blocking; on completion the command is in flight."""
        sock = o.sock
        if sock is None:
            return
        try:
            n = sock.send(o.req.frame if o.tx_off == 0 else o.mv[o.tx_off :])
        except BlockingIOError:
            return  # the I/O thread finishes it when the socket is writable
        except OSError as e:
            o.last_error = f"send: {e}"
            if o.tx_off == 0:
                o.attempt -= 1  # nothing of this attempt reached the wire
            o.broken = OUT_ERR_IO  # the I/O thread drops the link; the command waits for the next one
            return
        o.tx_off += n
        if o.tx_off < o.frame_len:
            return
        now = time.monotonic_ns()
        o.send_ns = now
        o.deadline_ns = now + round(o.spec.timeout_s * _NS)
        o.cmd = _INFLIGHT
        if o.attempt == 1:
            self._emit(now, o, OEV_SENT, _us(now - o.decision_ns))
        else:
            self._emit(now, o, OEV_RETRY, o.attempt)

    # --- I/O thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        sel = self._sel
        assert sel is not None
        cmds = self._cmds
        try:
            while not self._stopping:
                while cmds:
                    o, decision_ns = cmds.popleft()
                    with o.lock:
                        if o.cmd != _IDLE:
                            self.coalesced += 1
                        else:
                            self._begin(o, decision_ns)
                now = time.monotonic_ns()
                wait = _IDLE_WAIT_NS
                for o in self._outs:
                    wait = min(wait, self._service(o, now))
                events = sel.select(max(wait, 0) / _NS)
                for key, mask in events:
                    o = key.data
                    if o is None:
                        self._drain_wake()
                    elif key.fileobj is o.csock:
                        self._connect_done(o)
                    else:
                        with o.lock:
                            if mask & selectors.EVENT_WRITE and o.cmd == _SENDING:
                                self._write(o)
                            if mask & selectors.EVENT_READ and o.sock is not None:
                                self._read(o)
        except BaseException:
            log.exception("protection: output I/O thread failed")
            raise
        finally:
            for o in self._outs:
                with o.lock:
                    for s in (o.sock, o.csock):
                        if s is not None:
                            s.close()
                    o.sock = o.csock = None
            sel.close()

    def _drain_wake(self) -> None:
        r = self._wake_r
        assert r is not None
        try:
            while r.recv(4096):
                pass
        except OSError:
            pass

    def _service(self, o: _Output, now: int) -> int:
        """Deadlines, pending sends and connects of one output. Returns ns until it next needs attention."""
        with o.lock:
            if o.broken and o.sock is not None:
                self._drop_link(o, o.broken, now)
            o.broken = 0
            if o.sock is not None:
                if o.cmd == _WAITING:
                    self._send(o)
                elif o.cmd == _INFLIGHT and now >= o.deadline_ns:
                    o.last_error = f"no response within {o.spec.timeout_s * 1e3:.0f} ms"
                    self._retry_or_fail(o, now, OUT_ERR_TIMEOUT)
                elif o.cmd == _SENDING and now >= o.deadline_ns:  # the socket never took the frame
                    o.last_error = "send stalled"
                    self._drop_link(o, OUT_ERR_TIMEOUT, now)
            elif o.cmd == _WAITING and now >= o.deadline_ns:
                self._fail(o, now, o.fail_code)
            cmd = o.cmd
            cmd_deadline = o.deadline_ns
            sock = o.sock
        wait = _IDLE_WAIT_NS
        if cmd != _IDLE:
            wait = min(wait, cmd_deadline - now)
        if sock is None:
            if o.csock is None:
                due = o.next_connect_ns
                if cmd == _WAITING:  # a command waits: try again at the minimum backoff
                    due = min(due, o.last_attempt_ns + round(RECONNECT_MIN_S * _NS))
                if now >= due:
                    self._start_connect(o, now)
                else:
                    wait = min(wait, due - now)
            if o.csock is not None:
                if now >= o.connect_deadline:
                    self._connect_failed(o, now, OUT_ERR_TIMEOUT, "connect timed out")
                    wait = 0
                else:
                    wait = min(wait, o.connect_deadline - now)
        else:
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if cmd == _SENDING else 0)
            if mask != o.mask and self._sel is not None:
                self._sel.modify(sock, mask, o)
                o.mask = mask
        return wait

    def _retry_or_fail(self, o: _Output, now: int, code: int) -> None:
        """(lock) The current attempt failed with ``code``: try again if attempts are left."""
        if o.attempt < 1 + o.spec.retries:
            if o.sock is not None:
                self._send(o)
            else:
                o.cmd = _WAITING
                o.fail_code = code
                o.deadline_ns = now + round(o.spec.connect_timeout_s * _NS)
        else:
            self._fail(o, now, code)

    def _fail(self, o: _Output, now: int, phases: int) -> None:
        """(lock) Give the command up."""
        o.cmd = _IDLE
        self.failed += 1
        self._emit(now, o, OEV_FAILED, phases)

    def _read(self, o: _Output) -> None:
        """(lock) Receive what the socket has and handle every complete response."""
        sock = o.sock
        assert sock is not None
        rx = o.rx
        try:
            while True:
                try:
                    rx.fill(sock)
                except BlockingIOError:
                    return
                now = time.monotonic_ns()
                while True:
                    flen = rx.frame()
                    if not flen:
                        break
                    self._response(o, flen, now)
                    rx.drop_frame()
        except ModbusFrameError as e:  # a garbage header: the stream cannot be resynchronised
            o.last_error = str(e)
            self._drop_link(o, OUT_ERR_BAD_RESPONSE, time.monotonic_ns())
        except (ModbusError, OSError) as e:
            o.last_error = str(e)
            self._drop_link(o, OUT_ERR_IO, time.monotonic_ns())

    def _response(self, o: _Output, flen: int, now: int) -> None:
        """(lock) One complete response frame at the front of ``o.rx``."""
        if o.cmd != _INFLIGHT:
            self.stray_responses += 1
            return
        try:
            check_response(o.req, o.rx.buf, flen)
        except ModbusTransactionMismatch:
            self.stray_responses += 1  # a late answer to an earlier command
        except ModbusExceptionResponse as e:
            o.last_error = str(e)
            self._fail(o, now, OUT_ERR_EXCEPTION | (e.code & 0xFF) << 8)
        except ModbusFrameError as e:
            o.last_error = str(e)
            self._retry_or_fail(o, now, OUT_ERR_BAD_RESPONSE)
        else:
            o.cmd = _IDLE
            self.confirmed += 1
            self._emit(now, o, OEV_CONFIRMED, _us(now - o.send_ns))

    def _drop_link(self, o: _Output, code: int, now: int) -> None:
        """(lock) Close the connection; a command in progress waits for the next one (or fails)."""
        sock = o.sock
        if sock is not None:
            if self._sel is not None and o.mask:
                self._sel.unregister(sock)
            o.mask = 0
            sock.close()
        o.sock = None
        o.broken = 0
        o.rx.clear()
        self._link_down(o, code, now)
        if o.cmd == _SENDING or o.cmd == _INFLIGHT:
            if o.attempt < 1 + o.spec.retries:
                o.cmd = _WAITING
                o.fail_code = code
                o.deadline_ns = now + round(o.spec.connect_timeout_s * _NS)
            else:
                self._fail(o, now, code)

    def _link_down(self, o: _Output, code: int, now: int) -> None:
        o.next_connect_ns = now + round(o.backoff_s * (0.5 + 0.5 * self._rng.random()) * _NS)
        o.backoff_s = min(2 * o.backoff_s, RECONNECT_MAX_S)
        if o.link != _LINK_DOWN:
            o.link = _LINK_DOWN
            self._emit(now, o, OEV_LINK_DOWN, code)
            log.warning("protection: trip output %s (%s:%s) down: %s", o.spec.name, o.spec.host, o.spec.port,
                        o.last_error)

    def _start_connect(self, o: _Output, now: int) -> None:
        o.last_attempt_ns = now
        spec = o.spec
        if o.addr is None:
            try:
                family, _, _, _, addr = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM)[0]
            except OSError as e:
                self._connect_failed(o, now, OUT_ERR_NOT_CONNECTED, f"resolve {spec.host}: {e}")
                return
            o.family, o.addr = family, addr
        try:
            s = socket.socket(o.family, socket.SOCK_STREAM)
        except OSError as e:  # out of descriptors, ...
            self._connect_failed(o, now, OUT_ERR_NOT_CONNECTED, f"socket: {e}")
            return
        try:
            s.setblocking(False)
            configure_socket(s)
            err = s.connect_ex(o.addr)
        except OSError as e:
            err = e.errno or errno.EIO
        o.csock = s
        if err == 0:
            self._connected(o)
        elif err in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK, errno.EAGAIN):
            o.connect_deadline = now + round(spec.connect_timeout_s * _NS)
            assert self._sel is not None
            self._sel.register(s, selectors.EVENT_WRITE, o)
        else:
            self._connect_failed(o, now, OUT_ERR_NOT_CONNECTED, f"connect: {errno.errorcode.get(err, err)}")

    def _connect_done(self, o: _Output) -> None:
        s = o.csock
        assert s is not None
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(o, time.monotonic_ns(), OUT_ERR_NOT_CONNECTED,
                                 f"connect: {errno.errorcode.get(err, err)}")
        else:
            self._connected(o)

    def _connect_failed(self, o: _Output, now: int, code: int, why: str) -> None:
        s = o.csock
        o.csock = None
        if s is not None:
            if self._sel is not None and s in self._sel.get_map():
                self._sel.unregister(s)
            s.close()
        o.last_error = why
        with o.lock:
            self._link_down(o, code, now)

    def _connected(self, o: _Output) -> None:
        s = o.csock
        assert s is not None and self._sel is not None
        o.csock = None
        if s in self._sel.get_map():
            self._sel.unregister(s)
        self._sel.register(s, selectors.EVENT_READ, o)
        o.mask = selectors.EVENT_READ
        now = time.monotonic_ns()
        with o.lock:
            o.sock = s
            o.broken = 0
            o.rx.clear()
            o.backoff_s = RECONNECT_MIN_S
            o.link = _LINK_UP
            self._emit(now, o, OEV_LINK_UP, 0)
            if o.cmd == _WAITING:
                self._send(o)
        log.info("protection: trip output %s (%s:%s) up", o.spec.name, o.spec.host, o.spec.port)

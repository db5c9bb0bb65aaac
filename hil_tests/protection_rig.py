"""A simulated bay for the protection process: a measurement IED and a breaker IED on one Modbus TCP port.

Served by the real pymodbus server stack (:mod:`hil_tests.modbus_sim`) on its own asyncio loop in a background
thread, so blocking tests and benchmarks can drive it::

    with ProtectionRig() as rig:                       # 127.0.0.1, a free port
        spec = rig.source_spec()                       # protection.modbus_source.ModbusMeasurementSpec
        out = rig.output_spec("trip", coil=TRIP_COIL)  # protection.outputs.ModbusCoilOutputSpec
        t0 = rig.inject_fault(multiple_of=5.0)         # Ia = Ib = Ic = 5 x pickup_a, exactly; t0 = monotonic ns
        ...                                            # the protection process trips
        rig.trip_arrival_ns - t0                       # fault inception -> trip coil received, ns

**Measurement IED** (unit ``ied_unit``, default 1): the feeder relay map of :mod:`hil_tests.feeder` — input
registers 0..15 hold Ia Ib Ic In Va Vb Vc f as big-endian float32 (A and kV primary, Hz; what
:class:`protection.modbus_source.ModbusMeasurementSpec` reads), 16..23 P, Q, PF, energy, temperature; discrete
input 0 = breaker closed. The values come from a :class:`hil_tests.feeder.FeederModel` recomputed every
``update_period_s`` (default 1 ms; absolute deadlines, missed slots skipped) at model time ``time_of_day_s`` +
seconds since start.

**Breaker IED** (unit ``breaker_unit``, default 2): coil :data:`TRIP_COIL` (0) opens the breaker, coil
:data:`CLOSE_COIL` (1) closes it, discrete input 0 = breaker closed. Every coil write of ``True`` is
time-stamped (``time.monotonic_ns()``, on the server's loop, right after the write landed; CLOCK_MONOTONIC is
system-wide on Linux, so it compares with the protection process's ring timestamps): the first one per coil
since :meth:`ProtectionRig.reset_arrivals` is :meth:`~ProtectionRig.arrival_ns`. Coils from
:data:`FIRST_TIMING_COIL` (2) on are **timing inputs**: recorded, no breaker action (a test set's binary inputs:
several elements can each trip their own coil while the fault stays on). Command coils reset themselves at the
next update (after the write's echo was sent). An open breaker carries no current: the currents fall to zero
at the update that follows the trip write (scheduled at once, not waiting for the next tick).

**Fault injection** (:meth:`~ProtectionRig.inject_fault`): the faulted phase currents are set either to an
exact value, ``multiple_of`` × ``pickup_a`` (so an inverse-time trip is predictable: the relay sees exactly
that multiple; integer multiples of the default 600 A are exact in float32), or to ``factor`` × the model's
load current. The registers are written on the loop at once; the returned **inception time** is the monotonic
ns right after they were written (no request can be served in between: the loop is single-threaded). In
follows from the phasor sum (0 for a balanced three-phase fault).

**Substation hooks** (used by :class:`hil_tests.substation.SimulatedRig`, which mirrors this bay as the feeder
relay the gateway polls): ``inject_fault(current_a=...)`` sets an exact current; ``ground=True`` makes In the
phasor sum of the faulted phases only (a phase-to-ground fault: In equals the fault current on one phase);
:meth:`~ProtectionRig.set_frequency` applies a :class:`hil_tests.feeder.FrequencyProfile` (step or ROCOF ramp;
``None`` returns to the model's own frequency); :meth:`~ProtectionRig.set_voltage` sags/swells the phase
voltages to ``pu`` × nominal (1.0 restores); :meth:`~ProtectionRig.open_breaker` opens the breaker as a command
from elsewhere (not a coil of this IED: no arrival is recorded); :meth:`~ProtectionRig.bay_state` returns the
input registers, the breaker and the coil writes logged since a given index (every True write of a coil with
its arrival ns, bounded to the last :data:`COIL_LOG_MAX`).

Threads: the rig's loop thread (``protection-rig``) owns the model and the register arrays; every public
method may be called from any thread (it runs on the loop and waits for it). :class:`RigProcess` runs the same
rig in a spawned child process with the same methods, for callers whose own process is busy (a loaded
gateway): its timestamps then do not wait for the caller's GIL.

Test/demo code only: never imported by the product packages.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import multiprocessing as mp
import os
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import numpy as np

from hil_tests.feeder import INPUT_REGISTERS, NOMINAL_KV, FeederModel, FrequencyProfile, encode_input_registers
from hil_tests.loop_call import call_on_loop
from hil_tests.modbus_sim import SimServer, SimUnit, Table

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from protection.modbus_source import ModbusMeasurementSpec
    from protection.outputs import ModbusCoilOutputSpec

__all__ = [
    "BREAKER_UNIT",
    "CLOSE_COIL",
    "FIRST_TIMING_COIL",
    "IED_UNIT",
    "TRIP_COIL",
    "ProtectionRig",
    "RigProcess",
]

IED_UNIT: Final = 1  # default unit id of the measurement IED
BREAKER_UNIT: Final = 2  # default unit id of the breaker IED
TRIP_COIL: Final = 0  # breaker coil: write True to open
CLOSE_COIL: Final = 1  # breaker coil: write True to close
FIRST_TIMING_COIL: Final = 2  # coils from here on: time-stamped only (timing inputs), no breaker action
MEASURED: Final = ("Ia", "Ib", "Ic", "In", "Va", "Vb", "Vc", "f")  # input registers 0..15, float32 each
_PHASES: Final = {"a": "Ia", "b": "Ib", "c": "Ic"}
_NS: Final = 1_000_000_000
COIL_LOG_MAX: Final = 10_000  # coil writes kept for bay_state (oldest dropped first)
_CALL_TIMEOUT_S: Final = 10.0  # bound on a call into the loop (a hung loop fails the caller, never hangs it)

T = TypeVar("T")


def _f32(x: float) -> float:
    """``x`` as a Modbus client decodes it from two float32 registers."""
    v: float = struct.unpack(">f", struct.pack(">f", x))[0]
    return v


class _Specs:
    """Spec builders shared by the in-thread rig and the rig process (need ``host``, ``port`` and the unit ids)."""

    host: str
    port: int
    ied_unit: int
    breaker_unit: int

    def source_spec(self, **kw: Any) -> ModbusMeasurementSpec:
        """A protection measurement source polling this rig's IED (FC4 at 0; ``poll_period_s`` 1 ms by default)."""
        from protection.modbus_source import ModbusMeasurementSpec

        kw.setdefault("poll_period_s", 0.001)
        return ModbusMeasurementSpec(self.host, self.port, self.ied_unit, function="input", address=0, **kw)

    def output_spec(
        self, name: str, coil: int = TRIP_COIL, elements: tuple[str, ...] = (), **kw: Any
    ) -> ModbusCoilOutputSpec:
        """A protection trip output writing ``coil`` of this rig's breaker IED when one of ``elements`` trips."""
        from protection.outputs import ModbusCoilOutputSpec

        return ModbusCoilOutputSpec(name, self.host, self.port, self.breaker_unit, coil, elements=elements, **kw)


class ProtectionRig(_Specs):
    """Measurement IED + breaker IED on one Modbus TCP port, run on a background thread (see the module doc)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ied_unit: int = IED_UNIT,
        breaker_unit: int = BREAKER_UNIT,
        update_period_s: float = 0.001,
        seed: int = 1,
        time_of_day_s: float = 10 * 3600.0,
        pickup_a: float = 600.0,
        peak_load_a: float = 320.0,
        coils: int = 64,
    ) -> None:
        if ied_unit == breaker_unit:
            raise ValueError("the IED and the breaker need different unit ids")
        if not update_period_s > 0:
            raise ValueError(f"update_period_s {update_period_s} must be > 0")
        self.host = host
        self.port = port  # the bound port once started (0 = pick a free one)
        self.ied_unit = ied_unit
        self.breaker_unit = breaker_unit
        self.update_period_s = update_period_s  # model update period, s
        self.time_of_day_s = time_of_day_s  # model time at start, s since midnight
        self.pickup_a = pickup_a  # the current a fault's ``multiple_of`` multiplies, A
        self.model = FeederModel(seed=seed, peak_load_a=peak_load_a, pickup_a=round(pickup_a))
        self.ied = SimUnit(ied_unit, holding=8, input=INPUT_REGISTERS, coils=8, discrete=8)
        self.ied.holding[0] = self.model.pickup_a
        self.breaker = SimUnit(breaker_unit, holding=8, input=8, coils=coils, discrete=8)
        self.breaker.on_write = self._on_breaker_write
        # Written on the loop thread only; plain reads from any thread see whole values.
        self.updates = 0  # register refreshes done
        self.model_time_s = time_of_day_s  # model time of the values in the registers
        self.fault_inception_ns: int | None = None  # monotonic ns the latest fault's values were in the registers
        self.fault_cleared_ns: int | None = None  # monotonic ns the latest clear_fault took effect
        self.trip_arrival_ns: int | None = None  # first trip-coil write since the breaker was last closed
        self.breaker_opened_ns: int | None = None  # when the breaker opened (the trip write), monotonic ns
        self.coil_writes = 0  # coil writes of True received by the breaker IED (retries included)
        self._arrivals: dict[int, int] = {}  # coil -> first True write since reset_arrivals, monotonic ns
        self._values: dict[str, float] = {}  # the 8 measured quantities as a client decodes them
        self._fault: tuple[str, float, tuple[str, ...]] | None = None  # ("multiple"|"factor", value, phase keys)
        self._pulse: set[int] = set()  # command coils to reset at the next refresh (after their write's echo)
        self._ground = False  # the fault is to ground: In = phasor sum of the faulted phases only
        self._freq: FrequencyProfile | None = None  # system-frequency override (None: the model's own)
        self._voltage: tuple[float, tuple[str, ...]] | None = None  # (pu of nominal, phase voltage keys)
        self._coil_log: collections.deque[tuple[int, int]] = collections.deque(maxlen=COIL_LOG_MAX)
        self._coil_log_end = 0  # coil writes logged so far (index of the next one)
        self._t0_ns = 0
        self._updated_ns = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_ev: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle (any thread but the rig's) ------------------------------------------------------------------
    def start(self) -> ProtectionRig:
        """Start serving (returns once the port is bound and the first values are in). Raises on failure."""
        if self._thread is not None:
            raise RuntimeError("rig already started")
        self._thread = threading.Thread(target=self._thread_main, name="protection-rig", daemon=True)
        self._thread.start()
        if not self._ready.wait(_CALL_TIMEOUT_S):
            self.stop()
            raise RuntimeError("protection rig did not start")
        if self._error is not None:
            err = self._error
            self.stop()
            raise RuntimeError(f"protection rig failed to start: {err!r}") from err
        return self

    def stop(self) -> None:
        """Stop serving and join the thread. Idempotent."""
        t = self._thread
        if t is None:
            return
        loop, ev = self._loop, self._stop_ev
        if loop is not None and ev is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(ev.set)
        t.join(_CALL_TIMEOUT_S)
        self._thread = None

    def __enter__(self) -> ProtectionRig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- commands (any thread) ---------------------------------------------------------------------------------
    def inject_fault(
        self, multiple_of: float | None = None, factor: float | None = None, phases: str = "abc",
        current_a: float | None = None, ground: bool = False,
    ) -> int:
        """Fault on ``phases`` (any of "abc"): currents = ``multiple_of`` × ``pickup_a`` exactly, ``current_a``
        exactly, or ``factor`` × the load current; ``ground``: In = phasor sum of the faulted phases only.
        Returns the inception time (monotonic ns the faulted values were in the registers)."""
        given = [(k, v) for k, v in (("multiple", multiple_of), ("factor", factor), ("current", current_a))
                 if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of multiple_of, factor or current_a")
        keys = tuple(_PHASES[p] for p in sorted(set(phases.lower())) if p in _PHASES)
        if not keys or len(keys) != len(set(phases.lower())):
            raise ValueError(f"phases {phases!r}: use one or more of 'a', 'b', 'c'")
        kind, value = given[0]
        if not value > 0:
            raise ValueError(f"fault magnitude {value} must be > 0")
        fault = (kind, float(value), keys)

        def apply() -> int:
            self._fault = fault
            self._ground = ground
            ns = self._refresh()
            self.fault_inception_ns = ns
            return ns

        return self._call(apply)

    def clear_fault(self) -> int:
        """Back to load currents; returns the monotonic ns the healthy values were in the registers."""

        def apply() -> int:
            self._fault = None
            ns = self._refresh()
            self.fault_cleared_ns = ns
            return ns

        return self._call(apply)

    def set_frequency(self, profile: FrequencyProfile | None) -> int:
        """Override the frequency register with ``profile`` (None: the model's own); returns the monotonic ns
        the first value was in the registers."""

        def apply() -> int:
            self._freq = profile
            return self._refresh()

        return self._call(apply)

    def set_voltage(self, pu: float, phases: str = "abc") -> int:
        """Phase voltages of ``phases`` = ``pu`` × nominal exactly (1.0 on all phases restores the model's own);
        returns the monotonic ns the values were in the registers."""
        keys = tuple("V" + p for p in sorted(set(phases.lower())) if p in "abc")
        if not keys or len(keys) != len(set(phases.lower())) or not pu >= 0:
            raise ValueError(f"set_voltage({pu!r}, {phases!r}): pu >= 0 on one or more of 'a', 'b', 'c'")

        def apply() -> int:
            self._voltage = None if pu == 1.0 and len(keys) == 3 else (float(pu), keys)
            return self._refresh()

        return self._call(apply)

    def open_breaker(self) -> int:
        """Open the breaker on a command from elsewhere (no coil arrival recorded); returns the monotonic ns the
        zero currents were in the registers."""

        def apply() -> int:
            if self.model.breaker_closed:
                self.model.trip(self.model_time_s)
                self.breaker_opened_ns = time.monotonic_ns()
            return self._refresh()

        return self._call(apply)

    def bay_state(self, log_since: int = 0) -> dict[str, Any]:
        """Input registers (list of ints), ``breaker_closed``, ``updated_ns`` (monotonic ns of the last refresh),
        ``coil_log`` (``(coil, arrival ns)`` of every True coil write with index >= ``log_since``, as far as kept)
        and ``coil_log_end`` (the index to ask from next time)."""

        def snap() -> dict[str, Any]:
            skip = max(0, log_since - (self._coil_log_end - len(self._coil_log)))
            return {
                "input": self.ied.input.tolist(),
                "breaker_closed": self.model.breaker_closed,
                "updated_ns": self._updated_ns,
                "coil_log": list(self._coil_log)[skip:],
                "coil_log_end": self._coil_log_end,
            }

        return self._call(snap)

    def close_breaker(self) -> None:
        """Close the breaker (as a close-coil write would), values refreshed at once; forgets the trip arrival."""

        def apply() -> None:
            self.model.close()
            self.trip_arrival_ns = None
            self.breaker_opened_ns = None
            self._refresh()

        self._call(apply)

    def reset_arrivals(self) -> None:
        """Forget the coil arrival times (and the trip arrival) and clear every breaker coil."""

        def apply() -> None:
            self._arrivals.clear()
            self.trip_arrival_ns = None
            self.breaker.coils[:] = False
            self._pulse.clear()

        self._call(apply)

    def arrival_ns(self, coil: int) -> int | None:
        """Monotonic ns of the first True write of ``coil`` since :meth:`reset_arrivals` (None: none yet)."""
        return self._arrivals.get(coil)

    def arrivals(self) -> dict[int, int]:
        """A copy of every coil's first arrival since :meth:`reset_arrivals` (coil -> monotonic ns)."""
        return self._call(lambda: dict(self._arrivals))

    def values(self) -> dict[str, float]:
        """The measured quantities now in input registers 0..15, as a client decodes them (float32)."""
        return self._call(lambda: dict(self._values))

    @property
    def breaker_closed(self) -> bool:
        return self.model.breaker_closed

    def state(self) -> dict[str, Any]:
        """Plain-data snapshot: breaker, fault, arrivals, counters (for the rig process and reports)."""

        def snap() -> dict[str, Any]:
            return {
                "breaker_closed": self.model.breaker_closed,
                "fault": self._fault,
                "fault_inception_ns": self.fault_inception_ns,
                "fault_cleared_ns": self.fault_cleared_ns,
                "trip_arrival_ns": self.trip_arrival_ns,
                "breaker_opened_ns": self.breaker_opened_ns,
                "arrivals": dict(self._arrivals),
                "coil_writes": self.coil_writes,
                "updates": self.updates,
                "model_time_s": self.model_time_s,
                "values": dict(self._values),
            }

        return self._call(snap)

    # -- loop thread ------------------------------------------------------------------------------------------
    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the loop thread and return its result (directly when already there)."""
        if threading.current_thread() is self._thread:
            return fn()
        loop = self._loop
        if loop is None or not self._ready.is_set() or self._error is not None:
            raise RuntimeError("protection rig is not running")
        return call_on_loop(loop, fn, _CALL_TIMEOUT_S)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported by start()
            self._error = e
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_ev = asyncio.Event()
        server = SimServer([self.ied, self.breaker], tcp=(self.host, self.port))
        try:
            await server.start()
            self.port = server.port
            self._t0_ns = time.monotonic_ns()
            self._refresh()
            ticker = asyncio.create_task(self._tick(), name="protection-rig tick")
            self._ready.set()
            try:
                await self._stop_ev.wait()
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
        finally:
            await server.stop()

    async def _tick(self) -> None:
        """Refresh the registers on absolute deadlines; slots missed by a busy loop are skipped, never burst."""
        period = round(self.update_period_s * _NS)
        t0 = time.monotonic_ns()
        k = 0
        while True:
            k += 1
            now = time.monotonic_ns()
            due = t0 + k * period
            if due <= now:
                k = (now - t0) // period + 1
                due = t0 + k * period
            await asyncio.sleep((due - now) / _NS)
            self._refresh()

    def _refresh(self) -> int:
        """Recompute the model, apply breaker and fault, write the registers. Returns the monotonic ns after."""
        m = self.model
        for coil in self._pulse:  # command coils reset themselves (their write's echo has been sent)
            self.breaker.coils[coil] = False
        self._pulse.clear()
        t = self.time_of_day_s + (time.monotonic_ns() - self._t0_ns) / _NS
        v = m.step(t)
        fault = self._fault
        if fault is not None and m.breaker_closed:
            kind, value, keys = fault
            for k in keys:
                if kind == "multiple":
                    v[k] = value * self.pickup_a
                elif kind == "current":
                    v[k] = value
                else:
                    v[k] = value * v[k]
            ia, ib, ic = ((v[k] if not self._ground or k in keys else 0.0) for k in ("Ia", "Ib", "Ic"))
            re = ia - 0.5 * ib - 0.5 * ic
            im = 0.8660254037844386 * (ib - ic)
            v["In"] = (re * re + im * im) ** 0.5
        if self._freq is not None:
            v["f"] = self._freq.at(time.monotonic_ns())
        if self._voltage is not None:
            pu, vkeys = self._voltage
            for k in vkeys:
                v[k] = pu * NOMINAL_KV
        self.ied.input[:INPUT_REGISTERS] = np.asarray(encode_input_registers(v), dtype=np.uint16)
        closed = m.breaker_closed
        self.ied.discrete[0] = closed
        self.breaker.discrete[0] = closed
        ns = time.monotonic_ns()
        self._updated_ns = ns
        self._values = {k: _f32(v[k]) for k in MEASURED}
        self.model_time_s = t
        self.updates += 1
        return ns

    def _on_breaker_write(self, kind: Table, address: int, values: list[int] | list[bool]) -> None:
        """SimUnit write hook of the breaker IED (loop thread, inside the request: keep it short)."""
        if kind != "coil":
            return
        now = time.monotonic_ns()
        refresh = False
        for j, val in enumerate(values):
            if not val:
                continue
            coil = address + j
            self.coil_writes += 1
            self._coil_log.append((coil, now))
            self._coil_log_end += 1
            self._arrivals.setdefault(coil, now)
            self._pulse.add(coil)
            if coil == TRIP_COIL:
                if self.trip_arrival_ns is None:
                    self.trip_arrival_ns = now
                if self.model.breaker_closed:
                    self.model.trip(self.model_time_s)
                    self.breaker_opened_ns = now
                    refresh = True
            elif coil == CLOSE_COIL and not self.model.breaker_closed:
                self.model.close()
                self.trip_arrival_ns = None
                self.breaker_opened_ns = None
                refresh = True
        if self._loop is not None and (refresh or self._pulse):
            self._loop.call_soon(self._refresh)  # after this request's echo: currents follow the breaker


# ------------------------------------------------------------------------------------------ in a child process

_RPC: Final = frozenset(
    {"inject_fault", "clear_fault", "close_breaker", "reset_arrivals", "arrival_ns", "arrivals", "values", "state",
     "set_frequency", "set_voltage", "open_breaker", "bay_state"}
)


def _rig_process_main(conn: Connection, kwargs: dict[str, Any], fifo_priority: int, quiet: bool) -> None:
    """Entry point of :class:`RigProcess`'s child: run a rig, answer calls until told to stop or the parent dies."""
    parent = os.getppid()
    if quiet:  # pymodbus logs a client closing mid-request (the protection process stopping) with a frame dump
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    fifo = -1
    if fifo_priority > 0:  # before the rig's thread starts: threads inherit the calling thread's policy
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(fifo_priority))
            fifo = 1
        except (OSError, AttributeError):
            fifo = 0
    rig = ProtectionRig(**kwargs)
    try:
        rig.start()
    except BaseException as e:
        conn.send(("error", repr(e)))
        conn.close()
        return
    gc.collect()
    gc.freeze()  # the rig's own collector pauses stay out of its timestamps (the heap built so far is never walked)
    try:
        conn.send(("ready", (rig.port, fifo)))
        while True:
            if not conn.poll(0.2):
                if os.getppid() != parent:
                    break
                continue
            try:
                name, args, kw = conn.recv()
            except EOFError:
                break
            if name == "stop":
                conn.send((True, None))
                break
            try:
                if name not in _RPC:
                    raise AttributeError(f"rig has no remote method {name!r}")
                conn.send((True, getattr(rig, name)(*args, **kw)))
            except Exception as e:
                conn.send((False, repr(e)))
    finally:
        rig.stop()
        conn.close()


class RigProcess(_Specs):
    """A :class:`ProtectionRig` in a spawned child process, with the same commands (each one a pipe round trip).

    Timestamps (inception, coil arrivals) are taken in the child, so a busy caller cannot delay them; the child
    freezes its heap after start (no collector pauses of its own). ``fifo_priority`` > 0 asks SCHED_FIFO at that
    priority for the child (the rig then stands for separate hardware: a loaded machine's run queue does not
    delay its timestamps); the outcome is ``sched_fifo`` (1 granted, 0 refused, -1 not asked). ``quiet``
    silences pymodbus' logging in the child. ``rig_kwargs`` go to :class:`ProtectionRig`. One thread of the
    caller uses it. ``start()``/``stop()`` (idempotent), or a context manager.
    """

    def __init__(self, *, fifo_priority: int = 0, quiet: bool = True, **rig_kwargs: Any) -> None:
        self._kwargs = rig_kwargs
        self._fifo_priority = fifo_priority
        self._quiet = quiet
        self.sched_fifo = -1  # the child's scheduling outcome once started
        self.host = str(rig_kwargs.get("host", "127.0.0.1"))
        self.port = int(rig_kwargs.get("port", 0))
        self.ied_unit = int(rig_kwargs.get("ied_unit", IED_UNIT))
        self.breaker_unit = int(rig_kwargs.get("breaker_unit", BREAKER_UNIT))
        self.pickup_a = float(rig_kwargs.get("pickup_a", 600.0))
        self._proc: Any = None
        self._conn: Connection | None = None

    def start(self, timeout_s: float = 30.0) -> RigProcess:
        if self._proc is not None:
            raise RuntimeError("rig process already started")
        ctx = mp.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(
            target=_rig_process_main,
            args=(child_conn, self._kwargs, self._fifo_priority, self._quiet),
            name="protection-rig",
            daemon=True,
        )
        self._proc.start()
        child_conn.close()
        self._conn = parent_conn
        if not parent_conn.poll(timeout_s):
            self.stop()
            raise RuntimeError("protection rig process did not start")
        kind, detail = parent_conn.recv()
        if kind != "ready":
            self.stop()
            raise RuntimeError(f"protection rig process failed: {detail}")
        self.port, self.sched_fifo = int(detail[0]), int(detail[1])
        return self

    def _rpc(self, name: str, *args: Any, **kw: Any) -> Any:
        conn = self._conn
        if conn is None:
            raise RuntimeError("rig process is not running")
        conn.send((name, args, kw))
        if not conn.poll(_CALL_TIMEOUT_S):
            raise RuntimeError(f"rig process did not answer {name}")
        ok, value = conn.recv()
        if not ok:
            raise RuntimeError(f"rig process: {name} failed: {value}")
        return value

    def inject_fault(
        self, multiple_of: float | None = None, factor: float | None = None, phases: str = "abc",
        current_a: float | None = None, ground: bool = False,
    ) -> int:
        return int(self._rpc("inject_fault", multiple_of, factor, phases, current_a, ground))

    def set_frequency(self, profile: FrequencyProfile | None) -> int:
        return int(self._rpc("set_frequency", profile))

    def set_voltage(self, pu: float, phases: str = "abc") -> int:
        return int(self._rpc("set_voltage", pu, phases))

    def open_breaker(self) -> int:
        return int(self._rpc("open_breaker"))

    def bay_state(self, log_since: int = 0) -> dict[str, Any]:
        return dict(self._rpc("bay_state", log_since))

    def clear_fault(self) -> int:
        return int(self._rpc("clear_fault"))

    def close_breaker(self) -> None:
        self._rpc("close_breaker")

    def reset_arrivals(self) -> None:
        self._rpc("reset_arrivals")

    def arrival_ns(self, coil: int) -> int | None:
        v = self._rpc("arrival_ns", coil)
        return None if v is None else int(v)

    def arrivals(self) -> dict[int, int]:
        return dict(self._rpc("arrivals"))

    def values(self) -> dict[str, float]:
        return dict(self._rpc("values"))

    def state(self) -> dict[str, Any]:
        return dict(self._rpc("state"))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the child (ask, then terminate, then kill) and release the pipe. Idempotent."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            with contextlib.suppress(OSError, EOFError):
                conn.send(("stop", (), {}))
                if conn.poll(timeout_s):
                    conn.recv()
            conn.close()
        if proc is not None:
            proc.join(timeout_s)
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
            with contextlib.suppress(ValueError):
                proc.close()

    def __enter__(self) -> RigProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

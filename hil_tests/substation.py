"""The simulated substation the HIL runner drives: one model behind every protocol simulator (a :class:`Rig`).

Devices (all on loopback, free ports; :meth:`SimulatedRig.devices`):

- ``feeder1``..``feeder3``: Modbus TCP feeder relays, units 1..3 on one port (the demo's "bay-switch" link), the
  register map of :mod:`hil_tests.feeder` (template ``feeder_relay`` of ``gateway/configs/demo.toml``): input
  registers Ia Ib Ic In Va Vb Vc f P Q PF E_import temp, discrete input 0 breaker closed, coils 0 trip_cmd and
  1 close_cmd (self-resetting), holding 0 pickup_A;
- ``incomer``: the same map, unit 1 on its own port; its currents are the sum of the feeders' currents (scalar
  sum per phase) while its breaker is closed;
- ``feeder4``: the demo DNP3 RTU (:mod:`hil_tests.demo_rtu`, dnp3py's outstation; outstation address 10, master
  1); trip/close by CROB on binary outputs 0/1;
- ``feeder5``: the demo IEC 61850 IED (:mod:`hil_tests.demo_ied61850`), only where pyiec61850 is installed
  (x86_64); elsewhere it is absent from :meth:`~SimulatedRig.devices` and :attr:`SimulatedRig.missing` says why.

**The protected feeder** (``protected``, default ``feeder1``) is a :class:`hil_tests.protection_rig.RigProcess`
(or an in-thread :class:`~hil_tests.protection_rig.ProtectionRig` with ``protection_process=False``): its
measurement IED (unit 1) and breaker IED (unit 2) on their own port are :meth:`~SimulatedRig.protection_endpoint`
(the protection process's fast link). Its model is the only model of that feeder: the feeder relay the gateway
polls (``feeder1``, unit 1 of the bay port) mirrors the rig's input registers and breaker every
``sample_period_s`` (10 ms), and a trip/close coil written there opens/closes the rig's breaker. Fault timing is
the rig's own: :meth:`~SimulatedRig.inject_fault` on the protected feeder returns the inception the rig took
(monotonic ns right after the faulted registers were written, in its process), and the trip coil's arrival in
:meth:`~SimulatedRig.breaker_log` is the rig's timestamp (monotonic ns right after the write landed) — both on
the one system-wide CLOCK_MONOTONIC, so "trip within [t_min, t_max] ms of inception" is exact to the rig's
clock, not to this process's scheduling. Coils 2.. of the breaker IED are timing inputs (one per element, as in
``bench/protection.py``): :meth:`~SimulatedRig.coil_log`.

**Injections** (each returns ``time.monotonic_ns()`` right after it took effect, see :mod:`hil_tests.rig`):

- ``inject_fault(feeder, "3ph" | "ph-g", phases=, current_a= | multiple=, pickup_a=)``: the faulted phase
  currents become exactly ``current_a`` or ``multiple`` × ``pickup_a`` (default: the feeder's pickup, 600 A);
  "3ph" is balanced on a b c (In = 0); "ph-g" faults ``phases`` to ground: In is the phasor sum of the faulted
  phases only (one phase: In = that current); the other phases keep their load. The fault lasts until
  :meth:`~SimulatedRig.clear_fault` or until the breaker opens (it is cleared then: closing again is healthy);
- ``set_frequency(hz, ramp_hz_per_s)``: every device's f (the protection IED's included) steps to ``hz`` or
  ramps from its present value towards ``hz`` at ``|ramp|`` Hz/s (ROCOF), then holds ``hz``
  (:class:`hil_tests.feeder.FrequencyProfile`; :meth:`~SimulatedRig.release_frequency` returns to the models'
  own wander);
- ``set_voltage(feeder | "*", pu, phases="abc")``: phase voltages = ``pu`` × nominal (6.35 kV) exactly; 1.0 on
  all phases restores the model's own (load-dependent) voltage;
- ``device_fault(device, mode, delay_s)``: Modbus devices: "silent" (the unit never answers), "slow" (answers
  after ``delay_s``), "garbage" (answers with a malformed frame, :class:`hil_tests.modbus_sim.SimUnit`),
  "restart" (the device's TCP server stops — every connection to that port drops, so feeders 1-3 restart
  together, as the one Ethernet gateway they sit behind would — and serves again after ``delay_s``), "ok";
  the DNP3 RTU: all five (silent/slow/garbage act on its outgoing link frames; garbage frames fail their
  CRC); the IEC 61850 IED: "restart" and "ok" only (libiec61850 has no hook for the others:
  :class:`InjectionUnsupported`);
- ``jump_clock(device, offset_s)`` (the optional extension of :mod:`hil_tests.rig`): the DNP3 RTU's own clock
  (its event timestamps) moves by ``offset_s``; other devices carry no source time of their own here.

**Samples**: every ``sample_period_s`` the loop records ``t_mono_ns`` and each feeder's Ia Ib Ic (A) and
breaker (1/0) — the protected feeder from its rig's registers — in a ring of the last ``samples_keep_s``.

Threads: the rig runs its own asyncio loop on a thread (``substation-rig``), so a busy runner loop never delays
an answer; every public method but ``start``/``stop`` may be called from any thread and runs on that loop (a
call into the protection rig process is a pipe round trip, < 1 ms). The protection rig process is only ever
called from the rig's loop thread.

Test/demo code only: never imported by the product packages.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import random
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import numpy as np
import numpy.typing as npt
from dnp3.outstation.tcp_runner import OutstationTcpRunner

from hil_tests import demo_ied61850
from hil_tests.demo_rtu import OUTSTATION_ADDRESS, DemoRtu
from hil_tests.feeder import INPUT_REGISTERS, NOMINAL_KV, FeederModel, FrequencyProfile, encode_input_registers
from hil_tests.loop_call import call_on_loop
from hil_tests.modbus_sim import SimServer, SimUnit, Table
from hil_tests.net import free_port
from hil_tests.protection_rig import CLOSE_COIL, TRIP_COIL, ProtectionRig, RigProcess
from hil_tests.rig import DeviceEndpoint

__all__ = ["DEVICE_MODES", "FAULT_KINDS", "InjectionUnsupported", "SimulatedRig", "SubstationFeeder"]

log = logging.getLogger(__name__)

FAULT_KINDS: Final = ("3ph", "ph-g")
DEVICE_MODES: Final = ("silent", "garbage", "slow", "restart", "ok")
_PHASE_KEYS: Final = {"a": "Ia", "b": "Ib", "c": "Ic"}
_NS: Final = 1_000_000_000
_CALL_TIMEOUT_S: Final = 10.0  # bound on a call into the rig's loop
_SLOW_TICK_EVERY: Final = 10  # the DNP3 / 61850 publishers run every 10th sample tick (100 ms at 10 ms)
T = TypeVar("T")


class InjectionUnsupported(NotImplementedError):
    """This rig cannot perform the injection on that device (the message names the limitation)."""


def _phase_keys(phases: str) -> tuple[str, ...]:
    ph = phases.lower()
    keys = tuple(_PHASE_KEYS[p] for p in sorted(set(ph)) if p in _PHASE_KEYS)
    if not keys or len(keys) != len(set(ph)):
        raise ValueError(f"phases {phases!r}: use one or more of 'a', 'b', 'c'")
    return keys


def _residual(ia: float, ib: float, ic: float) -> float:
    """Magnitude of the phasor sum of three 120°-spaced currents."""
    re = ia - 0.5 * ib - 0.5 * ic
    im = 0.8660254037844386 * (ib - ic)
    return math.hypot(re, im)


@dataclass
class _Bus:
    """What every feeder of the substation shares: the system frequency override."""

    freq: FrequencyProfile | None = None


@dataclass
class SubstationFeeder(FeederModel):
    """A :class:`FeederModel` with the rig's injections applied on top of its values (see the module doc)."""

    bus: _Bus = field(default_factory=_Bus)
    fault: tuple[str, float, tuple[str, ...]] | None = None  # (kind, current A, phase current keys)
    voltage: tuple[float, tuple[str, ...]] | None = None  # (pu of nominal, phase voltage keys)
    currents_from: Callable[[], tuple[float, float, float]] | None = None  # load currents from elsewhere

    def trip(self, t: float) -> None:
        super().trip(t)
        self.fault = None  # the breaker interrupted the fault: closing again finds a healthy feeder

    def step(self, t: float) -> dict[str, float]:
        v = super().step(t)
        closed = self.breaker_closed
        if self.currents_from is not None and closed:
            v["Ia"], v["Ib"], v["Ic"] = self.currents_from()
            v["In"] = _residual(v["Ia"], v["Ib"], v["Ic"])
        if self.fault is not None and closed:
            kind, current, keys = self.fault
            for k in keys:
                v[k] = current
            if kind == "ph-g":
                v["In"] = _residual(*((current if k in keys else 0.0) for k in ("Ia", "Ib", "Ic")))
            else:
                v["In"] = _residual(v["Ia"], v["Ib"], v["Ic"])
        if self.bus.freq is not None:
            v["f"] = self.bus.freq.at(time.monotonic_ns())
        if self.voltage is not None:
            pu, vkeys = self.voltage
            for k in vkeys:
                v[k] = pu * NOMINAL_KV
        return v


class _ModbusBay:
    """One Modbus feeder relay served by this rig: a :class:`SubstationFeeder` and its :class:`SimUnit`."""

    def __init__(self, name: str, unit_id: int, model: SubstationFeeder) -> None:
        self.name = name
        self.model = model
        self.unit = SimUnit(unit_id, holding=8, input=INPUT_REGISTERS, coils=8, discrete=8)
        self.unit.holding[0] = model.pickup_a
        self.values: dict[str, float] = {}

    def refresh(self, t: float) -> None:
        u, m = self.unit, self.model
        u.coils[TRIP_COIL] = False  # command coils reset themselves (after their write's echo went out)
        u.coils[CLOSE_COIL] = False
        m.pickup_a = int(u.holding[0])
        self.values = m.step(t)
        u.input[:INPUT_REGISTERS] = np.asarray(encode_input_registers(self.values), dtype=np.uint16)
        u.discrete[0] = m.breaker_closed


class _FaultyChannel:
    """Wraps a dnp3py server channel: what the outstation writes is dropped, delayed or garbled per the RTU's mode."""

    def __init__(self, inner: Any, state: _DeviceState) -> None:
        self._inner = inner
        self._state = state

    async def read(self, n: int) -> bytes:
        data: bytes = await self._inner.read(n)
        return data

    async def write_all(self, data: bytes) -> None:
        st = self._state
        if st.silent:
            return
        if st.delay_s > 0:
            await asyncio.sleep(st.delay_s)
            if st.silent:
                return
        if st.garbage:  # link-layer start bytes, then noise: every block CRC fails
            data = b"\x05\x64" + bytes(random.getrandbits(8) for _ in range(max(8, len(data) - 2)))
        await self._inner.write_all(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _FaultyOutstationRunner(OutstationTcpRunner):
    """dnp3py's TCP runner with :class:`_FaultyChannel` around each connection (dnp3py is pinned: 0.6.0)."""

    def __init__(self, outstation: Any, host: str, port: int, state: _DeviceState) -> None:
        super().__init__(outstation, host=host, port=port)
        self._fault_state = state

    async def _handle_connection(self, channel: Any) -> None:
        await super()._handle_connection(_FaultyChannel(channel, self._fault_state))


@dataclass
class _DeviceState:
    """Fault knobs of a non-Modbus device (Modbus devices keep theirs on the SimUnit)."""

    silent: bool = False
    delay_s: float = 0.0
    garbage: bool = False


def _f32_words(words: list[int]) -> list[float]:
    return list(struct.unpack(f">{len(words) // 2}f", struct.pack(f">{len(words)}H", *words)))


class SimulatedRig:
    """The simulated substation (implements :class:`hil_tests.rig.Rig`; see the module doc)."""

    def __init__(
        self,
        *,
        name: str = "simulated",
        host: str = "127.0.0.1",
        protected: str = "feeder1",
        pickup_a: float = 600.0,
        protection_process: bool = True,
        rig_fifo_priority: int = 0,
        protection_update_period_s: float = 0.001,
        sample_period_s: float = 0.01,
        samples_keep_s: float = 600.0,
        with_iec61850: bool = True,
    ) -> None:
        if protected not in ("feeder1", "feeder2", "feeder3"):
            raise ValueError(f"protected {protected!r}: one of feeder1, feeder2, feeder3 (a Modbus feeder relay)")
        self.name = name
        self.host = host
        self.protected = protected  # the feeder whose model is the protection rig's
        self.pickup_a = pickup_a  # default pickup a fault's ``multiple`` multiplies, A
        self.sample_period_s = sample_period_s
        self._protection_process = protection_process
        self._rig_fifo_priority = rig_fifo_priority
        self._prot_update_s = protection_update_period_s
        self._with_iec61850 = with_iec61850
        # why a device is absent ({device: reason}); filled at start
        self.missing: dict[str, str] = {}
        self._bus = _Bus()
        self._t0_model = 0.0
        self._t0_ns = 0
        self._bays: dict[str, _ModbusBay] = {}
        self._incomer: _ModbusBay | None = None
        self._prot: ProtectionRig | RigProcess | None = None
        self._prot_unit: SimUnit | None = None  # the gateway's relay that mirrors the protection rig
        self._prot_values: dict[str, float] = {}
        self._prot_closed = True
        self._prot_log_idx = 0
        self._bay_server: SimServer | None = None
        self._incomer_server: SimServer | None = None
        self._bay_port = 0
        self._incomer_port = 0
        self._rtu: DemoRtu | None = None
        self._rtu_task: asyncio.Task[None] | None = None
        self._rtu_state = _DeviceState()
        self._rtu_port = 0
        self._ied: Any = None  # DemoIed61850
        self._ied_model: SubstationFeeder | None = None  # feeder5's model (kept across IED restarts)
        self._rtu_values: dict[str, float] = {}
        self._ied_values: dict[str, float] = {}
        self._ied_port = 0
        self._ied_ops_seen = 0
        self._restarts: set[asyncio.Task[None]] = set()
        self._breaker_log: list[dict[str, Any]] = []
        self._coil_log: list[dict[str, int]] = []
        self._ticks = 0
        # samples ring
        self._feeder_order: list[str] = []
        self._ring: npt.NDArray[np.float64] = np.zeros((0, 0))
        self._ring_t: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._ring_n = 0  # rows written so far
        self._ring_rows = max(10, round(samples_keep_s / sample_period_s))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_ev: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start every simulator; returns once every port is bound and serving. Raises on failure."""
        if self._thread is not None:
            raise RuntimeError("rig already started")
        self._thread = threading.Thread(target=self._thread_main, name="substation-rig", daemon=True)
        self._thread.start()
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._ready), 60.0)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop everything (servers, the protection rig process, the thread). Idempotent."""
        t = self._thread
        if t is None:
            return
        loop, ev = self._loop, self._stop_ev
        if loop is not None and ev is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(ev.set)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.wrap_future(self._done), 30.0)
        t.join(5.0)
        self._thread = None

    async def __aenter__(self) -> SimulatedRig:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:
            if not self._ready.done():
                self._ready.set_exception(e)
            else:
                log.exception("substation rig loop failed")
        finally:
            if not self._ready.done():
                self._ready.set_exception(RuntimeError("substation rig ended before it was ready"))
            self._done.set_result(None)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_ev = asyncio.Event()
        self._t0_model = time.time()
        self._t0_ns = time.monotonic_ns()
        try:
            await self._start_all()
            ticker = asyncio.create_task(self._tick_loop(), name="substation-rig tick")
            self._ready.set_result(None)
            try:
                await self._stop_ev.wait()
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
        finally:
            await self._stop_all()

    async def _start_all(self) -> None:
        kw: dict[str, Any] = {
            "host": self.host, "pickup_a": self.pickup_a, "update_period_s": self._prot_update_s,
            "seed": int(self.protected[-1]), "time_of_day_s": self._t0_model,
        }
        if self._protection_process:
            self._prot = RigProcess(fifo_priority=self._rig_fifo_priority, **kw).start()
        else:
            self._prot = ProtectionRig(**kw).start()
        # Modbus feeder relays, units 1..3 on one port; the protected one mirrors the protection rig
        units: list[SimUnit] = []
        for i in (1, 2, 3):
            name = f"feeder{i}"
            if name == self.protected:
                unit = SimUnit(i, holding=8, input=INPUT_REGISTERS, coils=8, discrete=8)
                unit.holding[0] = round(self.pickup_a)
                unit.on_write = self._on_protected_relay_write
                self._prot_unit = unit
            else:
                bay = _ModbusBay(name, i, SubstationFeeder(seed=i, bus=self._bus, pickup_a=round(self.pickup_a)))
                bay.unit.on_write = self._bay_write_hook(bay)
                self._bays[name] = bay
                unit = bay.unit
            units.append(unit)
        incomer = _ModbusBay("incomer", 1, SubstationFeeder(seed=7, peak_load_a=900.0, bus=self._bus))
        incomer.model.currents_from = self._feeder_sum
        incomer.unit.on_write = self._bay_write_hook(incomer)
        self._incomer = incomer
        # DNP3 RTU (feeder4)
        rtu = DemoRtu(0, host=self.host)
        rtu.model = SubstationFeeder(seed=4, peak_load_a=280.0, bus=self._bus)
        rtu.runner = _FaultyOutstationRunner(rtu.outstation, self.host, 0, self._rtu_state)
        rtu.on_command = self._on_rtu_command
        self._rtu = rtu
        # IEC 61850 IED (feeder5)
        if not self._with_iec61850:
            self.missing["feeder5"] = "IEC 61850 IED left out (with_iec61850=False)"
        elif not demo_ied61850.available():
            self.missing["feeder5"] = "IEC 61850 IED absent: pyiec61850 (libiec61850) is not installed here"
        else:
            self._ied_port = free_port()
            self._ied_model = SubstationFeeder(seed=5, peak_load_a=240.0, bus=self._bus)
            self._ied = self._new_ied(self._ied_model)
        self._setup_ring()
        self._mirror()
        self._refresh_local(with_slow=True)
        self._bay_server = await SimServer(units, tcp=(self.host, 0)).start()
        self._bay_port = self._bay_server.port
        self._incomer_server = await SimServer([incomer.unit], tcp=(self.host, 0)).start()
        self._incomer_port = self._incomer_server.port
        await self._start_rtu()
        if self._ied is not None:
            self._ied.start()
        self._record()

    def _new_ied(self, model: SubstationFeeder) -> Any:
        ied = demo_ied61850.DemoIed61850(self._ied_port, host=self.host)
        ied.model = model
        self._ied_ops_seen = 0
        return ied

    async def _start_rtu(self) -> None:
        rtu = self._rtu
        assert rtu is not None
        self._rtu_task = asyncio.create_task(rtu.runner.run(), name="substation-rig rtu")
        deadline = time.monotonic() + 10.0
        while rtu.runner.local_address is None:
            if self._rtu_task.done() or time.monotonic() > deadline:
                raise RuntimeError("the DNP3 RTU did not start listening")
            await asyncio.sleep(0.005)
        self._rtu_port = int(rtu.runner.local_address[1])

    async def _stop_rtu(self) -> None:
        rtu, task = self._rtu, self._rtu_task
        self._rtu_task = None
        if rtu is not None:
            with contextlib.suppress(Exception):
                await rtu.runner.stop()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _stop_all(self) -> None:
        for t in list(self._restarts):
            t.cancel()
        for t in list(self._restarts):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self._stop_rtu()
        for srv in (self._bay_server, self._incomer_server):
            if srv is not None:
                await srv.stop()
        if self._ied is not None:
            self._ied.stop()
            self._ied = None
        if self._prot is not None:
            self._prot.stop()
            self._prot = None

    # ---------------------------------------------------------------------------------------- the model loop
    def _now_model(self) -> float:
        return self._t0_model + (time.monotonic_ns() - self._t0_ns) / _NS

    async def _tick_loop(self) -> None:
        period = round(self.sample_period_s * _NS)
        t0 = time.monotonic_ns()
        k = 0
        failing = False
        while True:
            k += 1
            now = time.monotonic_ns()
            due = t0 + k * period
            if due <= now:
                k = (now - t0) // period + 1
                due = t0 + k * period
            await asyncio.sleep((due - now) / _NS)
            try:
                self._ticks += 1
                self._mirror()
                self._refresh_local(with_slow=self._ticks % _SLOW_TICK_EVERY == 0)
                self._record()
                failing = False
            except Exception:  # a tick must never end the loop (the rig would go silent); logged once per streak
                if not failing:
                    log.exception("substation rig tick failed")
                failing = True

    def _mirror(self) -> None:
        """Copy the protection rig's registers and breaker to the relay the gateway polls; collect its coil log."""
        prot, unit = self._prot, self._prot_unit
        if prot is None or unit is None:
            return
        st = prot.bay_state(self._prot_log_idx)
        regs = [int(x) for x in st["input"]]
        unit.input[:INPUT_REGISTERS] = np.asarray(regs[:INPUT_REGISTERS], dtype=np.uint16)
        closed = bool(st["breaker_closed"])
        unit.discrete[0] = closed
        unit.coils[TRIP_COIL] = False
        unit.coils[CLOSE_COIL] = False
        self._prot_values = dict(zip(("Ia", "Ib", "Ic", "In", "Va", "Vb", "Vc", "f"),
                                     _f32_words(regs[:16]), strict=True))
        for coil, ns in st["coil_log"]:
            if coil in (TRIP_COIL, CLOSE_COIL):
                event = "trip_cmd" if coil == TRIP_COIL else "close_cmd"
                self._breaker_log.append({"feeder": self.protected, "event": event, "mono_ns": int(ns),
                                          "via": "protection"})
            else:
                self._coil_log.append({"coil": int(coil), "mono_ns": int(ns)})
        self._prot_log_idx = int(st["coil_log_end"])
        changed = closed != self._prot_closed
        if self._prot_closed and not closed:  # the breaker interrupted the fault (see the module doc)
            prot.clear_fault()
        self._prot_closed = closed
        if changed and self._ring.size:
            self._record()  # the plots show every breaker change, even one that lasted less than a tick

    def _feeder_sum(self) -> tuple[float, float, float]:
        """The incomer's load: the feeders' phase currents summed (scalar sum: the feeders are nearly in phase)."""
        vals = [self._prot_values, *(b.values for b in self._bays.values())]
        if self._rtu is not None:
            vals.append(self._rtu_values)
        if self._ied_model is not None:
            vals.append(self._ied_values)
        return tuple(sum(v.get(k, 0.0) for v in vals) for k in ("Ia", "Ib", "Ic"))  # type: ignore[return-value]

    def _refresh_local(self, with_slow: bool = False) -> None:
        """Recompute this process's feeders and publish them (DNP3 / 61850 too when ``with_slow``)."""
        t = self._now_model()
        for bay in self._bays.values():
            bay.refresh(t)
        if with_slow:
            self._refresh_slow(t)
        elif self._ied is not None and len(self._ied.server.operations) > self._ied_ops_seen:
            self._refresh_slow(t)  # a control arrived at the IED: apply it now
        if self._incomer is not None:
            self._incomer.refresh(t)

    def _refresh_slow(self, t: float) -> None:
        if self._rtu is not None:
            self._rtu.tick(t)
            self._rtu_values = self._rtu.model.step(t)
        ied = self._ied
        if ied is not None:
            ops = ied.server.operations
            now = time.monotonic_ns()
            for op in ops[self._ied_ops_seen:]:
                if isinstance(op.ctl_val, bool):
                    self._breaker_log.append({"feeder": "feeder5", "event": "close_cmd" if op.ctl_val else "trip_cmd",
                                              "mono_ns": now, "via": "iec61850 (seen at the rig's tick)"})
            self._ied_ops_seen = len(ops)
            ied.tick(t)
        if self._ied_model is not None:
            self._ied_values = self._ied_model.step(t)

    def _setup_ring(self) -> None:
        names = ["feeder1", "feeder2", "feeder3", "feeder4"]
        if self._ied_model is not None:
            names.append("feeder5")
        names.append("incomer")
        self._feeder_order = names
        self._ring = np.zeros((self._ring_rows, 4 * len(names)), dtype=np.float64)
        self._ring_t = np.zeros(self._ring_rows, dtype=np.int64)

    def _values_of(self, feeder: str) -> tuple[dict[str, float], bool]:
        if feeder == self.protected:
            return self._prot_values, self._prot_closed
        if feeder in self._bays:
            b = self._bays[feeder]
            return b.values, b.model.breaker_closed
        if feeder == "incomer" and self._incomer is not None:
            return self._incomer.values, self._incomer.model.breaker_closed
        if feeder == "feeder4" and self._rtu is not None:
            return self._rtu_values, self._rtu.model.breaker_closed
        if feeder == "feeder5" and self._ied_model is not None:
            return self._ied_values, self._ied_model.breaker_closed
        raise KeyError(feeder)

    def _record(self) -> None:
        row = self._ring_n % self._ring_rows
        self._ring_t[row] = time.monotonic_ns()
        out = self._ring[row]
        for j, name in enumerate(self._feeder_order):
            v, closed = self._values_of(name)
            out[4 * j] = v.get("Ia", 0.0)
            out[4 * j + 1] = v.get("Ib", 0.0)
            out[4 * j + 2] = v.get("Ic", 0.0)
            out[4 * j + 3] = 1.0 if closed else 0.0
        self._ring_n += 1

    # --------------------------------------------------------------------------------------- write hooks (loop)
    def _bay_write_hook(self, bay: _ModbusBay) -> Callable[[Table, int, list[int] | list[bool]], None]:
        def hook(kind: Table, address: int, values: list[int] | list[bool]) -> None:
            if kind != "coil":
                return
            now = time.monotonic_ns()
            for j, val in enumerate(values):
                coil = address + j
                if not val or coil not in (TRIP_COIL, CLOSE_COIL):
                    continue
                event = "trip_cmd" if coil == TRIP_COIL else "close_cmd"
                self._breaker_log.append({"feeder": bay.name, "event": event, "mono_ns": now, "via": "modbus"})
                if coil == TRIP_COIL:
                    if bay.model.breaker_closed:
                        bay.model.trip(self._now_model())
                else:
                    bay.model.close()
            assert self._loop is not None
            self._loop.call_soon(self._refresh_after_write)  # after this request's echo

        return hook

    def _refresh_after_write(self) -> None:
        self._refresh_local()
        self._record()

    def _on_protected_relay_write(self, kind: Table, address: int, values: list[int] | list[bool]) -> None:
        """A coil written at the gateway's relay of the protected feeder operates the protection rig's breaker."""
        if kind != "coil":
            return
        now = time.monotonic_ns()
        cmds: list[int] = []
        for j, val in enumerate(values):
            coil = address + j
            if val and coil in (TRIP_COIL, CLOSE_COIL):
                cmds.append(coil)
                event = "trip_cmd" if coil == TRIP_COIL else "close_cmd"
                self._breaker_log.append({"feeder": self.protected, "event": event, "mono_ns": now,
                                          "via": "modbus"})
        if cmds:
            assert self._loop is not None
            self._loop.call_soon(self._operate_protected, cmds)

    def _operate_protected(self, coils: list[int]) -> None:
        prot = self._prot
        if prot is None:
            return
        for coil in coils:
            if coil == TRIP_COIL:
                prot.open_breaker()
            else:
                prot.close_breaker()
        self._mirror()
        self._record()

    def _on_rtu_command(self, index: int) -> None:
        self._breaker_log.append({"feeder": "feeder4", "event": "trip_cmd" if index == 0 else "close_cmd",
                                  "mono_ns": time.monotonic_ns(), "via": "dnp3"})
        assert self._loop is not None
        self._loop.call_soon(self._refresh_slow, self._now_model())

    # ------------------------------------------------------------------------------------------- plumbing
    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the rig's loop thread and return its result (directly when already there)."""
        if threading.current_thread() is self._thread:
            return fn()
        loop = self._loop
        if loop is None or not self._ready.done() or self._ready.exception() is not None or self._done.done():
            raise RuntimeError("substation rig is not running")
        return call_on_loop(loop, fn, _CALL_TIMEOUT_S)

    def _feeders(self) -> list[str]:
        return list(self._feeder_order)

    def _check_feeder(self, feeder: str) -> None:
        if feeder not in self._feeder_order:
            raise KeyError(f"no feeder {feeder!r}; this rig has {', '.join(self._feeder_order)}")

    def _local_model(self, feeder: str) -> SubstationFeeder:
        if feeder in self._bays:
            return self._bays[feeder].model
        if feeder == "incomer" and self._incomer is not None:
            return self._incomer.model
        if feeder == "feeder4" and self._rtu is not None:
            m = self._rtu.model
        elif feeder == "feeder5" and self._ied_model is not None:
            m = self._ied_model
        else:
            raise KeyError(feeder)
        assert isinstance(m, SubstationFeeder)
        return m

    def _publish(self) -> int:
        """Recompute and publish every local feeder at once; returns the monotonic ns after."""
        self._refresh_local(with_slow=True)
        ns = time.monotonic_ns()
        self._record()
        return ns

    # ------------------------------------------------------------------------------------------- the Rig API
    def capabilities(self) -> frozenset[str]:
        return frozenset({"fault", "frequency", "voltage", "device_fault", "breaker", "clock_jump"})

    def devices(self) -> dict[str, DeviceEndpoint]:
        """The devices the gateway polls (name -> endpoint); feeder5 only where its server library exists."""
        h = self.host
        out = {f"feeder{i}": DeviceEndpoint(f"feeder{i}", "modbus_tcp", h, self._bay_port, i) for i in (1, 2, 3)}
        out["incomer"] = DeviceEndpoint("incomer", "modbus_tcp", h, self._incomer_port, 1)
        out["feeder4"] = DeviceEndpoint("feeder4", "dnp3_tcp", h, self._rtu_port, OUTSTATION_ADDRESS)
        if self._ied_port and "feeder5" not in self.missing:
            out["feeder5"] = DeviceEndpoint("feeder5", "iec61850", h, self._ied_port, 0)
        return out

    def protection_endpoint(self) -> DeviceEndpoint | None:
        """The protected feeder's measurement IED (unit 1) + breaker IED (unit 2) on the protection rig's port."""
        prot = self._prot
        if prot is None:
            return None
        return DeviceEndpoint("protection", "modbus_tcp", prot.host, prot.port, prot.ied_unit)

    @property
    def protection(self) -> ProtectionRig | RigProcess | None:
        """The protection rig: use only its spec builders (``source_spec``, ``output_spec``) from outside."""
        return self._prot

    def links_toml(self) -> str:
        """Nothing extra: the runner writes the links with the demo maps (see :mod:`hil_tests.rig`)."""
        return ""

    def inject_fault(self, feeder: str, kind: str, *, phases: str = "abc", current_a: float | None = None,
                     multiple: float | None = None, pickup_a: float | None = None) -> int:
        """Fault on ``feeder`` (see the module doc); ``pickup_a`` (default the rig's, 600 A) is what ``multiple``
        multiplies. Returns the inception, monotonic ns (the protection rig's own for the protected feeder)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind {kind!r}: one of {', '.join(FAULT_KINDS)}")
        if (current_a is None) == (multiple is None):
            raise ValueError("give exactly one of current_a or multiple")
        amps = float(current_a) if current_a is not None else float(multiple) * (pickup_a or self.pickup_a)  # type: ignore[arg-type]
        if not amps > 0:
            raise ValueError(f"fault current {amps} A must be > 0")
        keys = _phase_keys("abc" if kind == "3ph" else phases)
        if kind == "3ph" and set(phases.lower()) != set("abc"):
            raise ValueError(f"a 3ph fault is on phases abc, not {phases!r} (use ph-g for a ground fault)")
        self._check_feeder(feeder)

        def apply() -> int:
            if feeder == self.protected:
                assert self._prot is not None
                ns = self._prot.inject_fault(current_a=amps, phases=phases if kind == "ph-g" else "abc",
                                             ground=kind == "ph-g")
                self._mirror()
                self._record()
                return ns
            self._local_model(feeder).fault = (kind, amps, keys)
            return self._publish()

        return self._call(apply)

    def clear_fault(self, feeder: str) -> int:
        self._check_feeder(feeder)

        def apply() -> int:
            if feeder == self.protected:
                assert self._prot is not None
                ns = self._prot.clear_fault()
                self._mirror()
                self._record()
                return ns
            self._local_model(feeder).fault = None
            return self._publish()

        return self._call(apply)

    def set_frequency(self, hz: float, ramp_hz_per_s: float = 0.0) -> int:
        """Every device's f: a step to ``hz``, or a ramp from the present value towards ``hz`` at
        ``|ramp_hz_per_s|`` (then held). Returns, for a ramp, the monotonic ns it starts from (its ``start_ns``:
        the frequency moves from then on); for a step, the ns the protection IED's registers held the new value."""
        if not 0 < hz < 1000 or not math.isfinite(ramp_hz_per_s):
            raise ValueError(f"set_frequency({hz!r}, {ramp_hz_per_s!r}): hz in (0, 1000), a finite ramp")

        def apply() -> int:
            now = time.monotonic_ns()
            cur = self._bus.freq
            present = cur.at(now) if cur is not None else self._prot_values.get("f", 50.0)
            profile = FrequencyProfile(present, now, float(hz), abs(float(ramp_hz_per_s)))
            self._bus.freq = profile
            ns = now
            if self._prot is not None:
                ns = self._prot.set_frequency(profile)
                self._mirror()
            ns_local = self._publish()
            if profile.rocof_hz_per_s:
                return now
            return ns if self._prot is not None else ns_local

        return self._call(apply)

    def release_frequency(self) -> int:
        """Back to the models' own frequency wander; returns the monotonic ns after."""

        def apply() -> int:
            self._bus.freq = None
            if self._prot is not None:
                self._prot.set_frequency(None)
                self._mirror()
            return self._publish()

        return self._call(apply)

    def frequency_profile(self) -> FrequencyProfile | None:
        """The frequency override in force (None: the models' own)."""
        return self._bus.freq

    def set_voltage(self, feeder: str, pu: float, phases: str = "abc") -> int:
        """Phase voltages of ``feeder`` ("*": every feeder, i.e. the bus) = ``pu`` × nominal; 1.0 restores.
        Returns the protection IED's inception where the protected feeder is among them, else the ns after."""
        keys = tuple("V" + k[1] for k in _phase_keys(phases))
        if not (pu >= 0 and math.isfinite(pu)):
            raise ValueError(f"voltage {pu!r} pu must be >= 0")
        targets = self._feeders() if feeder == "*" else [feeder]
        for f in targets:
            self._check_feeder(f)

        def apply() -> int:
            for f in targets:
                if f != self.protected:
                    self._local_model(f).voltage = None if pu == 1.0 and len(keys) == 3 else (float(pu), keys)
            ns = self._publish()
            if self.protected in targets:  # last: its inception is the protection IED's own
                assert self._prot is not None
                ns = self._prot.set_voltage(pu, phases)
                self._mirror()
                self._record()
            return ns

        return self._call(apply)

    def device_fault(self, device: str, mode: str, delay_s: float = 0.0) -> int:
        """Make ``device`` misbehave (see the module doc). Raises :class:`InjectionUnsupported` where this rig
        cannot, ``KeyError`` for an unknown device, ``ValueError`` for an unknown mode or a bad delay."""
        if mode not in DEVICE_MODES:
            raise ValueError(f"device fault mode {mode!r}: one of {', '.join(DEVICE_MODES)}")
        if mode in ("slow", "restart") and not delay_s > 0:
            raise ValueError(f"device fault {mode!r} needs delay_s > 0")
        if device in self.missing:
            raise InjectionUnsupported(f"{device}: {self.missing[device]}")
        if device == "protection":
            raise InjectionUnsupported("the protection IED (the protection process's own link) takes no device "
                                       "faults here; fault its feeder's relay, or the link")
        if device not in self.devices():
            raise KeyError(f"no device {device!r}; this rig has {', '.join(self.devices())}")

        def apply() -> int:
            if device == "feeder4":
                return self._rtu_fault(mode, delay_s)
            if device == "feeder5":
                return self._ied_fault(mode, delay_s)
            return self._modbus_fault(device, mode, delay_s)

        return self._call(apply)

    def _modbus_fault(self, device: str, mode: str, delay_s: float) -> int:
        srv = self._incomer_server if device == "incomer" else self._bay_server
        assert srv is not None
        unit = srv.units[self.devices()[device].unit_id]
        if mode == "restart":
            return self._restart_modbus(device == "incomer", delay_s)
        unit.silent = mode == "silent"
        unit.delay_s = delay_s if mode == "slow" else 0.0
        unit.garbage = mode == "garbage"
        return time.monotonic_ns()

    def _restart_modbus(self, incomer: bool, delay_s: float) -> int:
        srv = self._incomer_server if incomer else self._bay_server
        assert srv is not None
        port = srv.port
        units = list(srv.units.values())
        stopping = asyncio.ensure_future(srv.stop())

        async def again() -> None:
            await stopping
            await asyncio.sleep(delay_s)
            new = await SimServer(units, tcp=(self.host, port)).start()
            if incomer:
                self._incomer_server = new
            else:
                self._bay_server = new

        self._spawn(again())
        return time.monotonic_ns()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._restarts.add(task)
        task.add_done_callback(self._restart_done)

    def _restart_done(self, task: asyncio.Task[None]) -> None:
        self._restarts.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("device restart failed: %r", task.exception())

    def _rtu_fault(self, mode: str, delay_s: float) -> int:
        st = self._rtu_state
        if mode == "restart":
            rtu = self._rtu
            assert rtu is not None
            stopping = asyncio.ensure_future(self._stop_rtu())

            async def again() -> None:
                await stopping
                await asyncio.sleep(delay_s)
                rtu.runner = _FaultyOutstationRunner(rtu.outstation, self.host, self._rtu_port, st)
                await self._start_rtu()

            self._spawn(again())
            return time.monotonic_ns()
        st.silent = mode == "silent"
        st.delay_s = delay_s if mode == "slow" else 0.0
        st.garbage = mode == "garbage"
        return time.monotonic_ns()

    def _ied_fault(self, mode: str, delay_s: float) -> int:
        if mode == "ok":
            return time.monotonic_ns()
        if mode != "restart":
            raise InjectionUnsupported(
                f"feeder5 (IEC 61850, libiec61850 server): {mode!r} is not supported — the C server has no hook "
                "to drop, delay or garble its MMS answers; only 'restart' and 'ok'"
            )
        ied = self._ied
        assert ied is not None
        ied.halt()  # the same server and model: buffered reports keep buffering, controls stay wired

        async def again() -> None:
            await asyncio.sleep(delay_s)
            ied.resume()

        self._spawn(again())
        return time.monotonic_ns()

    def jump_clock(self, device: str, offset_s: float) -> int:
        """Move ``device``'s own clock by ``offset_s`` (cumulative). Only the DNP3 RTU (feeder4) has one here."""
        if device != "feeder4":
            raise InjectionUnsupported(f"{device}: no device clock in this rig (only feeder4, the DNP3 RTU)")

        def apply() -> int:
            assert self._rtu is not None
            self._rtu.clock_offset_s += float(offset_s)
            return self._publish()

        return self._call(apply)

    def breaker_closed(self, feeder: str) -> bool:
        self._check_feeder(feeder)

        def get() -> bool:
            if feeder == self.protected:
                self._mirror()
                return self._prot_closed
            return self._local_model(feeder).breaker_closed

        return self._call(get)

    def close_breaker(self, feeder: str) -> None:
        """Close ``feeder``'s breaker as an operator would (not logged as a command arrival)."""
        self._check_feeder(feeder)

        def apply() -> None:
            if feeder == self.protected:
                assert self._prot is not None
                self._prot.close_breaker()
                self._mirror()
            else:
                self._local_model(feeder).close()
            self._publish()

        self._call(apply)

    def breaker_log(self) -> list[dict[str, Any]]:
        """Breaker command arrivals, oldest first: {"feeder", "event": "trip_cmd"|"close_cmd", "mono_ns", "via"}.

        ``via``: "protection" (the protection rig's breaker IED coil, its own timestamp), "modbus" (a coil of the
        gateway's relay, stamped on the rig's loop right after the write landed), "dnp3" (a CROB accepted by the
        RTU), "iec61850 (seen at the rig's tick)" (a control seen within one tick, <= ``sample_period_s``, late).
        """

        def get() -> list[dict[str, Any]]:
            self._mirror()
            return sorted((dict(e) for e in self._breaker_log), key=lambda e: int(e["mono_ns"]))

        return self._call(get)

    def coil_log(self) -> list[dict[str, int]]:
        """True writes of the protection breaker IED's timing coils (2..): {"coil", "mono_ns"}, oldest first."""

        def get() -> list[dict[str, int]]:
            self._mirror()
            return [dict(e) for e in self._coil_log]

        return self._call(get)

    def samples(self) -> dict[str, list[float]]:
        """``t_mono_ns`` (ints) and ``<feeder>.Ia|Ib|Ic`` (A) / ``<feeder>.breaker`` (1/0) of every feeder, the
        last ``samples_keep_s``, oldest first."""

        def get() -> dict[str, list[float]]:
            n, rows = self._ring_n, self._ring_rows
            idx = np.arange(max(0, n - rows), n) % rows
            out: dict[str, list[float]] = {"t_mono_ns": self._ring_t[idx].tolist()}
            for j, name in enumerate(self._feeder_order):
                for k, col in enumerate(("Ia", "Ib", "Ic", "breaker")):
                    out[f"{name}.{col}"] = self._ring[idx, 4 * j + k].tolist()
            return out

        return self._call(get)

    def values(self, feeder: str) -> dict[str, float]:
        """The feeder's present values as the rig computed them last (engineering units; for tests and plots)."""
        self._check_feeder(feeder)

        def get() -> dict[str, float]:
            if feeder == self.protected:
                self._mirror()
            v, _ = self._values_of(feeder)
            return dict(v)

        return self._call(get)


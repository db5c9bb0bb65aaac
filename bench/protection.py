"""Protection benchmark: the real protection process under a loaded gateway, a thread baseline, end-to-end trips.

Run from the repo root: ``.venv/bin/python -m bench.protection [--cycles 200000 --period-ms 5 --grid full]``.

Phases (progress on stderr; the last stdout line is one JSON object):

a. **Load.** This process becomes a loaded gateway: the real :class:`gateway.app.Gateway` (its
   :class:`storefwd.Store` on a temp DuckDB file, its latest-value table, one :class:`gateway.runner.LinkRunner`
   per device) on its own asyncio loop thread, polling ``--load-devices`` simulated Modbus TCP devices ×
   ``--load-points`` holding registers at 0.1/0.25/0.5/1 s (device *k* gets period *k* mod 4); the devices are
   the simulator of :mod:`bench.poll` (``--role sim``) in a child process. Beside it a thread encodes big JSON
   documents (``--load-json-readings`` readings each, as an uploader would) and drops reference cycles while a
   long-lived heap of ``--load-heap`` objects stays reachable, so the collector runs often and full
   collections take real time (GC pressure). Pauses are measured with ``gc.callbacks``. ``--no-load``: none.
b. **Lateness of the process.** :func:`protection.process.start_protection_process` with a typical element
   set (50P 50N 51P 51N 27 59 81U 81O 81R) on a :class:`protection.sources.SimulatedFeederSpec` source, for
   ``--cycles`` cycles at ``--period-ms``, then ``--fast-cycles`` at 1 ms. Figures from its statistics block
   (:class:`protection.shm.StatsSnapshot`): lateness percentiles are the **upper edges of the histogram bin**
   holding the percentile (8 bins per decade: a bound at most 33 % above the true value); the max is exact.
c. **Baseline.** The same elements, :class:`protection.cycle.Cycle` with a local ring and statistics, on a plain
   thread of this (loaded) process, for ``--baseline-cycles`` at ``--period-ms``: what the separate process
   buys (GIL, collector, scheduler).
d. **Trips, end to end.** A :class:`hil_tests.protection_rig.RigProcess` (measurement IED + breaker IED served
   in its own child process, so its timestamps do not wait for this loaded process's GIL; heap frozen; SCHED_FIFO
   ``--rig-fifo-priority``, default 10, below the cycle's 80: it stands for separate hardware) is polled by the
   protection process through :class:`protection.modbus_source.ModbusMeasurementSpec` (FC4, 1 ms), which trips
   through :class:`protection.outputs.ModbusCoilOutputSpec`. One 51 element per curve (IEC SI VI EI LTI STI,
   IEEE MI VI EI), each on its own timing coil of the breaker IED, so one fault times every curve at once; one
   process per fault multiple (TMS/TD chosen per multiple so trip times spread over ``--grid``'s range).
   A fault is injected as exactly M × pickup on all three phases; per curve:

   - trip time = coil received at the rig − fault inception at the rig (both ``CLOCK_MONOTONIC``);
   - trip error = trip time − ``operate_time(curve, M, TMS/TD)`` (ms and %; target ≤ max(2 %, 10 ms));
   - decision to wire = coil received − the trip decision (the monotonic time the cycle took right after the
     element reported the trip: the ``OEV_SENT`` record's time less its decision → ``send`` µs); the
     ``OEV_SENT`` figure itself (decision → ``send`` returned) beside it;
   - its parts: detection (``EV_PICKUP`` − inception; the ring's element times are the measurement time of the
     sample that showed the change, i.e. when the source's poll went out), the element's own excess
     (``EV_TRIP`` − ``EV_PICKUP`` − operate time: the cycle grid), and the wire.

JSON keys: ``cycle_ms``, ``cycles``, ``overruns``, ``lateness_p50_ms``, ``lateness_p99_ms``,
``lateness_p999_ms``, ``baseline_thread_p999_ms``, ``trip_error_max_pct``, ``trip_error_max_ms``,
``decision_to_wire_p99_ms``, plus the 1 ms run (``fast_*``), the baseline's other figures, the trip grid's
breakdown, the load's figures and the machine (CPU model, cores, Python, kernel, whether SCHED_FIFO and
pinning were granted). ``*system_cpu_busy_pct`` is the whole machine's CPU use during a phase (``/proc/stat``,
100 = every core busy): anything else running on the machine shows there. Non-finite numbers are ``null``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from protection.bank import ElementBank
from protection.curves import CURVES, operate_time
from protection.cycle import Cycle
from protection.measurements import V_ALL
from protection.output import EV_DROPOUT, EV_PICKUP, EV_TRIP
from protection.process import ProtectionHandle, start_protection_process
from protection.settings import (
    ElementSettings,
    FrequencySettings,
    InverseTimeSettings,
    OvercurrentSettings,
    OvervoltageSettings,
    ProtectionSettings,
    RocofSettings,
    UndervoltageSettings,
)
from protection.shm import (
    CEV_VALIDITY,
    ELEMENT_CYCLE,
    ELEMENT_OUTPUT,
    EVENT_DTYPE,
    OEV_LINK_UP,
    OEV_SENT,
    CycleStats,
    EventRing,
    StatsSnapshot,
)
from protection.sources import SimulatedFeederSource, SimulatedFeederSpec

if TYPE_CHECKING:
    from hil_tests.protection_rig import RigProcess

LOAD_PERIODS_S = (0.1, 0.25, 0.5, 1.0)  # device k polls every LOAD_PERIODS_S[k % 4]
PICKUP_A = 600.0  # 51 pickup of the trip grid (the rig's pickup_a: M x 600 A is exact in float32)
NOMINAL_KV = 11.0 / math.sqrt(3)  # the feeder model's phase-to-neutral voltage
BIN_NOTE = (
    "lateness percentiles are the upper edge of the histogram bin holding them (8 log bins per decade, "
    "<= 1.33x the true value); lateness_max_ms is exact"
)


def log(msg: str) -> None:
    print(f"[bench.protection {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ machine


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model or platform.processor(),
        "cores": os.cpu_count(),
        "cores_allowed": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "kernel_preempt": next((w for w in platform.version().split() if "PREEMPT" in w), ""),
    }


class SystemCpu:
    """Whole-machine CPU busy share between ``__init__`` and :meth:`busy_pct` (``/proc/stat``; 100 = every core)."""

    def __init__(self) -> None:
        self._t0 = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return 0, 0
        idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
        return sum(v[:8]), idle

    def busy_pct(self) -> float:
        total, idle = self._read()
        dt = total - self._t0[0]
        return 100.0 * (dt - (idle - self._t0[1])) / dt if dt > 0 else math.nan


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ------------------------------------------------------------------------------------------------ a. load


class _GcPauses:
    """Collector pauses of this process (``gc.callbacks``): count and max per generation, total time."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.max_ns = [0, 0, 0]
        self.total_ns = 0
        self._t0 = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter_ns()
            return
        d = time.perf_counter_ns() - self._t0
        g = int(info.get("generation", 0))
        self.count[g] += 1
        self.total_ns += d
        if d > self.max_ns[g]:
            self.max_ns[g] = d


class GatewayLoad:
    """A loaded gateway in this process: real Gateway + store polling simulated devices, JSON + GC pressure.

    ``start()``/``stop()`` from the main thread. Threads: ``load-gateway`` (the gateway's asyncio loop; the
    store adds its writer thread), ``load-json`` (encoding and garbage). The simulator is a child process.
    """

    def __init__(self, devices: int, points: int, json_readings: int, heap_objects: int, tmp: Path) -> None:
        self.devices = devices
        self.points = points
        self.json_readings = json_readings
        self.heap_objects = heap_objects
        self.tmp = tmp
        self.delivered = 0  # readings the store accepted (gateway loop thread writes)
        self.json_bytes = 0  # bytes of JSON encoded (load-json thread writes)
        self.json_docs = 0
        self.gc = _GcPauses()
        self._sim: subprocess.Popen[str] | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._gw_ready = threading.Event()
        self._gw_error: BaseException | None = None
        self._gw_stop: Callable[[], None] | None = None
        self._gw: Any = None
        self._window: tuple[float, int, int, float] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        self._sim = subprocess.Popen(
            [sys.executable, "-m", "bench.poll", "--role", "sim", "--devices", str(self.devices),
             "--registers", str(self.points)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        assert self._sim.stdout is not None
        line = self._sim.stdout.readline()
        if not line:
            raise RuntimeError("load simulator failed to start")
        ports: list[int] = json.loads(line)["ports"]
        t = threading.Thread(target=self._gateway_thread, args=(ports,), name="load-gateway", daemon=True)
        t.start()
        self._threads.append(t)
        if not self._gw_ready.wait(60) or self._gw_error is not None:
            raise RuntimeError(f"load gateway failed to start: {self._gw_error!r}")
        gc.callbacks.append(self.gc)
        j = threading.Thread(target=self._json_thread, name="load-json", daemon=True)
        j.start()
        self._threads.append(j)

    def _gateway_thread(self, ports: list[int]) -> None:
        try:
            asyncio.run(self._gateway_main(ports))
        except BaseException as e:
            self._gw_error = e
            self._gw_ready.set()

    async def _gateway_main(self, ports: list[int]) -> None:
        from gateway.app import Gateway
        from gateway.config import DeviceConfig, GatewayConfig, LinkConfig, PanelConfig, PointConfig, StorageConfig
        from gateway.model import ReadingBatch

        load = self

        class _CountingGateway(Gateway):
            def _emit(self, batch: ReadingBatch) -> bool:
                ok = super()._emit(batch)
                if ok:
                    load.delivered += len(batch)
                return ok

        links = []
        for k, port in enumerate(ports):
            period = LOAD_PERIODS_S[k % len(LOAD_PERIODS_S)]
            points = tuple(
                PointConfig(name=f"r{i}", kind="holding", address=i, period_s=period) for i in range(self.points)
            )
            links.append(
                LinkConfig(name=f"l{k}", protocol="modbus_tcp", host="127.0.0.1", port=port,
                           devices=(DeviceConfig(name=f"d{k}", unit_id=1, timeout_s=1.0, points=points),))
            )
        cfg = GatewayConfig(id="bench-protection", data_dir=self.tmp, links=tuple(links),
                            storage=StorageConfig(path=self.tmp / "load.duckdb"), panel=PanelConfig(port=0))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def request_stop() -> None:
            loop.call_soon_threadsafe(stop.set)

        self._gw_stop = request_stop
        gw = _CountingGateway(cfg)
        self._gw = gw
        await gw.start()
        try:
            self._gw_ready.set()
            await stop.wait()
        finally:
            await gw.stop()

    def _json_thread(self) -> None:
        """JSON encoding of upload-sized documents and reference-cycle garbage, ~every 10 ms."""
        rng = random.Random(1)
        # long-lived, reachable heap: every full collection walks it (a gateway's caches, history, config)
        retained = [
            {"id": i, "hist": [float(i), float(i) + 0.5], "tag": f"p{i}"} for i in range(self.heap_objects // 3)
        ]
        names = [f"d{k % 50}.r{k % 100}" for k in range(self.json_readings)]
        while not self._stop.is_set():
            doc = {
                "gateway": "bench-protection",
                "ts": time.time_ns(),
                "readings": [
                    {"point": names[k], "ts": 1_700_000_000_000_000_000 + k, "value": rng.random() * 1000.0,
                     "quality": 0}
                    for k in range(self.json_readings)
                ],
            }
            s = json.dumps(doc)
            self.json_bytes += len(s)
            self.json_docs += 1
            for _ in range(self.json_readings // 4):  # cycles only the collector can free
                a: dict[str, Any] = {}
                b = {"a": a, "payload": [0] * 4}
                a["b"] = b
            self._stop.wait(0.01)
        del retained

    def mark(self) -> None:
        """Start a measuring window (points/s, JSON, CPU are reported over it)."""
        self._window = (time.monotonic(), self.delivered, self.json_bytes, _cpu_s())

    def report(self) -> dict[str, Any]:
        if self._window is None:
            self.mark()
        assert self._window is not None
        t0, d0, j0, c0 = self._window
        dt = max(1e-9, time.monotonic() - t0)
        st: dict[str, Any] = {}
        gw = self._gw
        if gw is not None and gw.store is not None:
            st = dict(gw.store.stats())
        runners = list(gw.runners) if gw is not None else []
        status = [d for r in runners for d in r.status()]
        return {
            "load": True,
            "load_devices": self.devices,
            "load_points": self.devices * self.points,
            "load_expected_points_per_s": round(
                sum(self.points / LOAD_PERIODS_S[k % len(LOAD_PERIODS_S)] for k in range(self.devices)), 1
            ),
            "load_points_per_s": round((self.delivered - d0) / dt, 1),
            "load_store_rows": int(st.get("rows", 0)),
            "load_store_commits": int(st.get("commits", 0)),
            "load_store_refused": int(gw.emit_backpressure) if gw is not None else 0,
            "load_poll_timeouts": sum(int(s.get("timeouts", 0)) for s in status),
            "load_json_mb_per_s": round((self.json_bytes - j0) / dt / 1e6, 2),
            "load_json_readings_per_doc": self.json_readings,
            "load_heap_objects": self.heap_objects,
            "load_gc_collections": list(self.gc.count),
            "load_gc_max_pause_ms": [round(x / 1e6, 3) for x in self.gc.max_ns],
            "load_process_cpu_pct": round(100.0 * (_cpu_s() - c0) / dt, 1),
        }

    def stop(self) -> None:
        self._stop.set()
        if self._gw_stop is not None:
            self._gw_stop()
        for t in self._threads:
            t.join(30)
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self.gc)
        sim = self._sim
        if sim is not None:
            with contextlib.suppress(OSError):
                assert sim.stdin is not None
                sim.stdin.write("stop\n")
                sim.stdin.flush()
            try:
                sim.wait(10)
            except subprocess.TimeoutExpired:
                sim.terminate()
                sim.wait(10)
            if sim.stdout is not None:
                sim.stdout.close()
            if sim.stdin is not None:
                with contextlib.suppress(OSError):
                    sim.stdin.close()


# ------------------------------------------------------------------------------- b/c. lateness and baseline


def typical_settings() -> ProtectionSettings:
    """A feeder's element set; nothing operates on the simulated load (≈ 180 A, 6.35 kV, 50 Hz)."""
    return ProtectionSettings(
        group1=(
            OvercurrentSettings(name="50P", type="50", pickup_a=3000.0),
            OvercurrentSettings(name="50N", type="50N", pickup_a=400.0, delay_s=0.1),
            InverseTimeSettings(name="51P", type="51", pickup_a=600.0, curve="IEC_SI", tms=0.1, pickup_factor=1.05),
            InverseTimeSettings(name="51N", type="51N", pickup_a=100.0, curve="IEEE_VI", td=2.0, reset="disk"),
            UndervoltageSettings(name="27", type="27", pickup_kv=0.8 * NOMINAL_KV, delay_s=1.0),
            OvervoltageSettings(name="59", type="59", pickup_kv=1.1 * NOMINAL_KV, delay_s=1.0),
            FrequencySettings(name="81U", type="81U", pickup_hz=49.5, uv_block_kv=3.0, delay_s=0.2),
            FrequencySettings(name="81O", type="81O", pickup_hz=50.5, uv_block_kv=3.0, delay_s=0.2),
            RocofSettings(name="81R", type="81R", pickup_hz_s=1.0, window_s=0.1, uv_block_kv=3.0, delay_s=0.1),
        )
    )


def _ms(us: float) -> float:
    return us / 1000.0


def lateness_figures(s: StatsSnapshot) -> dict[str, Any]:
    return {
        "cycles": s.cycles,
        "overruns": s.overruns,
        "skipped_slots": s.skipped_slots,
        "lateness_p50_ms": _ms(s.lateness_percentile_us(50)),
        "lateness_p99_ms": _ms(s.lateness_percentile_us(99)),
        "lateness_p999_ms": _ms(s.lateness_percentile_us(99.9)),
        "lateness_max_ms": s.max_lateness_ns / 1e6,
        "exec_mean_us": s.mean_exec_ns / 1000.0,
        "exec_max_us": s.max_exec_ns / 1000.0,
    }


def _wait_cycles(read: Callable[[], StatsSnapshot], cycles: int, period_s: float, label: str,
                 alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + cycles * period_s * 2.0 + 60.0
    next_log = time.monotonic() + 10.0
    while True:
        s = read()
        if s.cycles >= cycles:
            return
        if not alive():
            raise RuntimeError(f"{label}: cycle ended early (state {s.state}, {s.cycles} cycles)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label}: only {s.cycles} of {cycles} cycles in time")
        now = time.monotonic()
        if now >= next_log:
            log(f"{label}: {s.cycles}/{cycles} cycles, {s.overruns} overruns, "
                f"p99.9 ≤ {s.lateness_percentile_us(99.9):.0f} µs")
            next_log = now + 10.0
        time.sleep(min(0.5, max(0.02, (cycles - s.cycles) * period_s)))


def run_process_lateness(settings: ProtectionSettings, period_s: float, cycles: int, label: str) -> dict[str, Any]:
    """Phase b: the spawned protection process on a simulated feeder for ``cycles`` cycles."""
    log(f"{label}: protection process at {period_s * 1e3:g} ms for {cycles} cycles "
        f"(≈ {cycles * period_s:.0f} s)")
    h = start_protection_process(settings, SimulatedFeederSpec(), period_s)
    sys_cpu = SystemCpu()
    try:
        _wait_cycles(h.stats, cycles, period_s, label, h.alive)
        h.events()  # keep the ring drained (nothing waits on these records)
    finally:
        h.stop()
    s = h.stats()
    out = lateness_figures(s)
    out.update(
        sched_fifo=s.sched_fifo == 1,
        sched_errno=s.sched_errno,
        fifo_priority=s.fifo_priority,
        cpu_pinned=s.cpu,
        gc_collects=s.gc_collects,
        state=s.state,
        system_cpu_busy_pct=sys_cpu.busy_pct(),
    )
    log(f"{label}: {s.cycles} cycles, {s.overruns} overruns, lateness p50/p99/p99.9 ≤ "
        f"{out['lateness_p50_ms']:.3f}/{out['lateness_p99_ms']:.3f}/{out['lateness_p999_ms']:.3f} ms, "
        f"max {out['lateness_max_ms']:.3f} ms; SCHED_FIFO {'granted' if s.sched_fifo == 1 else 'refused'}, "
        f"CPU {s.cpu}")
    return out


def run_thread_baseline(settings: ProtectionSettings, period_s: float, cycles: int) -> dict[str, Any]:
    """Phase c: the same elements and cycle on a plain thread of this process."""
    log(f"baseline: cycle thread in this process at {period_s * 1e3:g} ms for {cycles} cycles")
    stats = CycleStats.local()
    ring = EventRing.local()
    cycle = Cycle(ElementBank(settings), SimulatedFeederSource(SimulatedFeederSpec(), time.monotonic_ns()),
                  round(period_s * 1e9), ring=ring, stats=stats)
    stop = threading.Event()
    t = threading.Thread(target=cycle.run, args=(stop,), name="baseline-cycle", daemon=True)
    sys_cpu = SystemCpu()
    t.start()
    try:
        _wait_cycles(stats.snapshot, cycles, period_s, "baseline", t.is_alive)
    finally:
        stop.set()
        t.join(10)
    out = lateness_figures(stats.snapshot())
    out["system_cpu_busy_pct"] = sys_cpu.busy_pct()
    log(f"baseline: {out['cycles']} cycles, {out['overruns']} overruns, lateness p50/p99/p99.9 ≤ "
        f"{out['lateness_p50_ms']:.3f}/{out['lateness_p99_ms']:.3f}/{out['lateness_p999_ms']:.3f} ms, "
        f"max {out['lateness_max_ms']:.3f} ms")
    return out


# --------------------------------------------------------------------------------------------- d. trip grid


@dataclass(frozen=True, slots=True)
class Grid:
    multiples: tuple[float, ...]  # fault currents, multiples of the pickup
    repeats: int  # faults per multiple
    t_lo: float  # trip times are aimed at [t_lo, t_hi] s (settings ranges permitting)
    t_hi: float


GRIDS = {
    "quick": Grid((2.0, 10.0), 1, 0.05, 0.4),
    "full": Grid((2.0, 5.0, 10.0, 20.0), 3, 0.05, 3.0),
}


def curve_multiplier(curve_name: str, m: float, target_s: float) -> float:
    """TMS (IEC) or TD (IEEE) giving about ``target_s`` at multiple ``m``, inside the setting's range, 3 decimals."""
    curve = CURVES[curve_name]
    key = "tms" if curve.family == "IEC" else "td"
    lo, hi = InverseTimeSettings.RANGES[key]
    mult = target_s / operate_time(curve, m, 1.0)
    return min(hi, max(lo, round(mult, 3)))


def grid_case_settings(m: float, m_index: int, grid: Grid) -> tuple[ProtectionSettings, list[dict[str, Any]]]:
    """One 51 element per curve, multipliers spread so the trip times cover the grid's range."""
    names = list(CURVES)
    elements: list[ElementSettings] = []
    cases: list[dict[str, Any]] = []
    lo, hi = max(grid.t_lo, 0.06), grid.t_hi * 0.9
    for i, name in enumerate(names):
        frac = ((i + 3 * m_index) % len(names)) / (len(names) - 1)
        target = lo * (hi / lo) ** frac
        mult = curve_multiplier(name, m, target)
        iec = CURVES[name].family == "IEC"
        el = f"51-{name}"
        elements.append(InverseTimeSettings(name=el, type="51", pickup_a=PICKUP_A, curve=name,  # type: ignore[arg-type]
                                            tms=mult if iec else None, td=None if iec else mult))
        cases.append({"curve": name, "element": el, "multiple": m, "tms" if iec else "td": mult,
                      "expected_s": operate_time(CURVES[name], m, mult)})
    return ProtectionSettings(group1=tuple(elements)), cases


class _Records:
    """Every ring record read from a handle, accumulated."""

    def __init__(self, h: ProtectionHandle) -> None:
        self.h = h
        self.parts: list[npt.NDArray[np.void]] = []

    def poll(self) -> None:
        r = self.h.events()
        if r.size:
            self.parts.append(r)

    def all(self) -> npt.NDArray[np.void]:
        self.poll()
        if not self.parts:
            return np.empty(0, dtype=EVENT_DTYPE)
        if len(self.parts) > 1:
            self.parts = [np.concatenate(self.parts)]
        return self.parts[0]


# Elements are timed from the sample's request send time: a poll sent just before the fault was injected can
# return faulted values, so a pickup may be stamped up to one poll round trip *before* the injection. Records are
# searched from this much before it (repeats are seconds apart, so no earlier fault's record can match).
PICKUP_SLACK_NS = 20_000_000


def _first(recs: npt.NDArray[np.void], element: int, bit: int, after_ns: int, group: int | None = None) -> Any:
    sel = (recs["element"] == element) & (recs["events"] & bit != 0) & (recs["mono_ns"] >= after_ns)
    if group is not None:
        sel &= recs["group"] == group
    hit = recs[sel]
    return hit[0] if hit.size else None


def _wait(cond: Callable[[], bool], timeout_s: float, poll: Callable[[], None], step_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        poll()
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step_s)


def _one_fault(rig: RigProcess, recs: _Records, index: dict[str, int], cases: list[dict[str, Any]], m: float,
               rep: int) -> tuple[list[dict[str, Any]], list[int], int]:
    """Inject one fault of ``m`` × pickup, wait for every curve's coil, clear it, wait for the elements to reset."""
    from hil_tests.protection_rig import FIRST_TIMING_COIL

    coils = [FIRST_TIMING_COIL + i for i in range(len(cases))]
    longest = max(c["expected_s"] for c in cases)
    wait_s = longest * 1.5 + 2.0
    got: dict[int, int] = {}

    def all_in() -> bool:
        got.update(rig.arrivals())
        return all(c in got for c in coils)

    rig.reset_arrivals()
    t0 = rig.inject_fault(multiple_of=m)
    _wait(all_in, wait_s, recs.poll, 0.05)
    rig.clear_fault()
    r = recs.all()
    bad = r[(r["element"] == ELEMENT_CYCLE) & (r["events"] & CEV_VALIDITY != 0) & (r["mono_ns"] >= t0)
            & (r["phases"] != V_ALL)]
    rows: list[dict[str, Any]] = []
    sent_us: list[int] = []
    for i, c in enumerate(cases):
        el = index[c["element"]]
        pick = _first(r, el, EV_PICKUP, t0 - PICKUP_SLACK_NS)
        trip = _first(r, el, EV_TRIP, t0)
        sent = _first(r, ELEMENT_OUTPUT, OEV_SENT, t0, group=i)
        arrival = got.get(coils[i])
        exp_ms = c["expected_s"] * 1e3
        row = dict(c, repeat=rep, tripped=arrival is not None)
        if arrival is not None:
            err_ms = (arrival - t0) / 1e6 - exp_ms
            row.update(trip_ms=(arrival - t0) / 1e6, error_ms=err_ms, error_pct=100.0 * err_ms / exp_ms,
                       within_target=abs(err_ms) <= max(0.02 * exp_ms, 10.0))
            if sent is not None:  # the decision: the OEV_SENT record's time less its decision-to-send µs
                decision_ns = int(sent["mono_ns"]) - int(sent["phases"]) * 1000
                row["decision_to_wire_ms"] = (arrival - decision_ns) / 1e6
        else:
            log(f"trip grid: {c['curve']} at M = {m:g} did not trip within {wait_s:.1f} s")
        if pick is not None:
            row["detect_ms"] = (int(pick["mono_ns"]) - t0) / 1e6
            if trip is not None:
                row["element_excess_ms"] = (int(trip["mono_ns"]) - int(pick["mono_ns"])) / 1e6 - exp_ms
        if sent is not None:
            row["sent_us"] = int(sent["phases"])
            sent_us.append(int(sent["phases"]))
        rows.append(row)

    def at_rest() -> bool:  # every element dropped out (integrals reset) before the next fault
        recs_now = recs.all()
        return all(_first(recs_now, index[c["element"]], EV_DROPOUT, t0) is not None for c in cases)

    _wait(at_rest, 5.0, recs.poll)
    return rows, sent_us, int(bad.size)


def run_trip_grid(rig: RigProcess, period_s: float, grid: Grid) -> dict[str, Any]:
    """Phase d: faults at every multiple of ``grid``; one protection process per multiple."""
    from hil_tests.protection_rig import FIRST_TIMING_COIL

    rows: list[dict[str, Any]] = []
    sent_us: list[int] = []
    invalid_during_faults = 0
    process_sched: list[int] = []
    sys_cpu = SystemCpu()
    for mi, m in enumerate(grid.multiples):
        settings, cases = grid_case_settings(m, mi, grid)
        outputs = tuple(
            rig.output_spec(f"coil-{c['curve']}", coil=FIRST_TIMING_COIL + i, elements=(c["element"],))
            for i, c in enumerate(cases)
        )
        log(f"trip grid: M = {m:g}, expected trip times "
            + ", ".join(f"{c['curve']} {c['expected_s']:.3f}" for c in cases) + " s")
        h = start_protection_process(settings, rig.source_spec(), period_s, outputs=outputs)
        recs = _Records(h)
        try:
            index = {n: i for i, n in enumerate(h.element_names(1))}
            process_sched.append(h.stats().sched_fifo)

            def ready(h: ProtectionHandle = h, recs: _Records = recs, n: int = len(outputs)) -> bool:
                r = recs.all()
                return h.stats().valid == V_ALL and all(
                    _first(r, ELEMENT_OUTPUT, OEV_LINK_UP, 0, group=i) is not None for i in range(n)
                )

            if not _wait(ready, 30.0, recs.poll):
                raise RuntimeError("trip grid: source not valid or outputs not connected within 30 s")
            for rep in range(grid.repeats):
                r_rows, r_sent, r_bad = _one_fault(rig, recs, index, cases, m, rep)
                rows += r_rows
                sent_us += r_sent
                invalid_during_faults += r_bad
        finally:
            h.stop()
        done = [x for x in rows if x["multiple"] == m and x["tripped"]]
        if done:
            log(f"trip grid: M = {m:g}: errors " + ", ".join(f"{x['curve']} {x['error_ms']:+.1f}" for x in done)
                + " ms")
    out = summarise_trips(rows, sent_us, invalid_during_faults, process_sched)
    out["trip_system_cpu_busy_pct"] = sys_cpu.busy_pct()
    return out


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q, method="inverted_cdf")) if xs else math.nan


def summarise_trips(rows: list[dict[str, Any]], sent_us: list[int], invalid: int,
                    sched: list[int]) -> dict[str, Any]:
    tripped = [r for r in rows if r["tripped"]]
    err_ms = [abs(r["error_ms"]) for r in tripped]
    err_pct = [abs(r["error_pct"]) for r in tripped]
    d2w = [r["decision_to_wire_ms"] for r in tripped if "decision_to_wire_ms" in r]
    detect = [r["detect_ms"] for r in rows if "detect_ms" in r]
    excess = [r["element_excess_ms"] for r in rows if "element_excess_ms" in r]
    sent_ms = [u / 1000.0 for u in sent_us]
    return {
        "trip_error_max_pct": max(err_pct, default=math.nan),
        "trip_error_max_ms": max(err_ms, default=math.nan),
        "trip_error_mean_ms": float(np.mean([r["error_ms"] for r in tripped])) if tripped else math.nan,
        "trip_error_p50_ms": _pct(err_ms, 50),
        "trips": len(tripped),
        "trips_expected": len(rows),
        "trips_within_target": sum(1 for r in tripped if r["within_target"]),
        "decision_to_wire_p50_ms": _pct(d2w, 50),
        "decision_to_wire_p99_ms": _pct(d2w, 99),
        "decision_to_wire_max_ms": max(d2w, default=math.nan),
        "decision_to_send_p99_ms": _pct(sent_ms, 99),
        "decision_to_send_max_ms": max(sent_ms, default=math.nan),
        "detect_mean_ms": float(np.mean(detect)) if detect else math.nan,
        "detect_max_ms": max(detect, default=math.nan),
        "element_excess_mean_ms": float(np.mean(excess)) if excess else math.nan,
        "element_excess_max_ms": max(excess, default=math.nan),
        "source_invalid_during_faults": invalid,
        "trip_sched_fifo": all(s == 1 for s in sched) if sched else None,
        "trip_grid": [
            {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "element"} for r in rows
        ],
    }


# --------------------------------------------------------------------------------------------------- main


def _clean(v: Any) -> Any:
    """JSON-safe: non-finite floats → None, floats rounded to µs-ish precision."""
    if isinstance(v, float):
        return round(v, 4) if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        return _clean(v.item())
    return v


@contextlib.contextmanager
def _maybe_load(a: argparse.Namespace) -> Iterator[GatewayLoad | None]:
    if not a.load:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="bench-protection-") as tmp:
        load = GatewayLoad(a.load_devices, a.load_points, a.load_json_readings, a.load_heap, Path(tmp))
        log(f"load: gateway polling {a.load_devices} devices x {a.load_points} points, JSON + GC thread")
        try:
            load.start()
            t_end = time.monotonic() + a.load_warmup_s
            while time.monotonic() < t_end:
                time.sleep(0.2)
            load.mark()
            log(f"load: warm ({load.delivered} readings stored so far)")
            yield load
        finally:
            load.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=200_000, help="cycles of the process at --period-ms")
    ap.add_argument("--period-ms", type=float, default=5.0, help="cycle period of the main run, baseline, trips")
    ap.add_argument("--fast-cycles", type=int, default=200_000, help="cycles of the run at 1 ms (0: skip)")
    ap.add_argument("--fast-period-ms", type=float, default=1.0, help=argparse.SUPPRESS)
    ap.add_argument("--baseline-cycles", type=int, default=20_000, help="cycles of the thread baseline (0: skip)")
    ap.add_argument("--trip-period-ms", type=float, default=None, help="cycle period of the trip grid "
                    "(default: --period-ms)")
    ap.add_argument("--grid", choices=["quick", "full", "none"], default="full", help="trip grid (none: skip)")
    ap.add_argument("--rig-fifo-priority", type=int, default=10, help="SCHED_FIFO priority asked for the rig "
                    "process (it stands for separate hardware); below the protection cycle's 80; 0: do not ask")
    ap.add_argument("--load", action=argparse.BooleanOptionalAction, default=True, help="run a loaded gateway")
    ap.add_argument("--load-devices", type=int, default=50)
    ap.add_argument("--load-points", type=int, default=100, help="holding registers (points) per device")
    ap.add_argument("--load-json-readings", type=int, default=2000, help="readings per JSON document")
    ap.add_argument("--load-heap", type=int, default=300_000, help="long-lived objects the collector walks")
    ap.add_argument("--load-warmup-s", type=float, default=3.0)
    ap.add_argument("--json-only", action="store_true", help="print only the JSON line on stdout")
    a = ap.parse_args(argv)

    period_s = a.period_ms / 1e3
    fast_s = a.fast_period_ms / 1e3
    trip_s = (a.trip_period_ms if a.trip_period_ms is not None else a.period_ms) / 1e3
    settings = typical_settings()
    out: dict[str, Any] = {"cycle_ms": a.period_ms}
    t_start = time.monotonic()
    with _maybe_load(a) as load:
        main_run = run_process_lateness(settings, period_s, a.cycles, f"process {a.period_ms:g} ms")
        out.update(main_run)
        if a.fast_cycles > 0:
            fast = run_process_lateness(settings, fast_s, a.fast_cycles, f"process {a.fast_period_ms:g} ms")
            out["fast_cycle_ms"] = a.fast_period_ms
            out.update({f"fast_{k}": v for k, v in fast.items() if k not in ("sched_errno", "fifo_priority")})
        if a.baseline_cycles > 0:
            base = run_thread_baseline(settings, period_s, a.baseline_cycles)
            out.update({
                "baseline_thread_p999_ms": base["lateness_p999_ms"],
                "baseline_thread_p99_ms": base["lateness_p99_ms"],
                "baseline_thread_p50_ms": base["lateness_p50_ms"],
                "baseline_thread_max_ms": base["lateness_max_ms"],
                "baseline_thread_cycles": base["cycles"],
                "baseline_thread_overruns": base["overruns"],
                "baseline_thread_exec_mean_us": base["exec_mean_us"],
                "baseline_system_cpu_busy_pct": base["system_cpu_busy_pct"],
                "baseline_over_process_p999": base["lateness_p999_ms"] / main_run["lateness_p999_ms"],
                "baseline_over_process_p99": base["lateness_p99_ms"] / main_run["lateness_p99_ms"],
            })
        if a.grid != "none":
            from hil_tests.protection_rig import RigProcess

            grid = GRIDS[a.grid]
            log(f"trip grid '{a.grid}': multiples {grid.multiples}, {grid.repeats} fault(s) each, "
                f"cycle {trip_s * 1e3:g} ms")
            with RigProcess(fifo_priority=a.rig_fifo_priority, pickup_a=PICKUP_A, update_period_s=0.001) as rig:
                log(f"rig process: SCHED_FIFO {a.rig_fifo_priority} "
                    + {1: "granted", 0: "refused", -1: "not asked"}[rig.sched_fifo])
                trips = run_trip_grid(rig, trip_s, grid)
            out.update(trips)
            out["rig_sched_fifo"] = rig.sched_fifo
            out["trip_cycle_ms"] = trip_s * 1e3
            out["trip_grid_name"] = a.grid
        out.update(load.report() if load is not None else {"load": False})
    out["lateness_note"] = BIN_NOTE
    out["wall_s"] = round(time.monotonic() - t_start, 1)
    out.update(machine_info())
    out["targets"] = {
        "lateness_p999_ms_le_1_at_5ms": bool(out["lateness_p999_ms"] <= 1.0 and out["overruns"] == 0)
        if a.period_ms == 5.0 else None,
        "trip_error_le_max_2pct_10ms": (out["trips_within_target"] == out["trips_expected"])
        if "trips_expected" in out else None,
        "decision_to_wire_p99_ms_le_5": bool(out["decision_to_wire_p99_ms"] <= 5.0)
        if math.isfinite(out.get("decision_to_wire_p99_ms", math.nan)) else None,
    }
    clean = _clean(out)
    if not a.json_only:
        summary = {k: v for k, v in clean.items() if k != "trip_grid"}
        for k, v in summary.items():
            print(f"{k:32s} {v}")
    print(json.dumps(clean))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

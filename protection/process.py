"""The protection process: spawned by the gateway, runs the cycle thread, talks back only through shared memory.

:func:`start_protection_process` creates the event ring and the statistics block (the parent owns both
segments), spawns a child with the ``spawn`` start method (a fresh interpreter: no inherited threads, locks or
event loop) and returns a :class:`ProtectionHandle`. In the child (:func:`_child_main`):

1. attach the segments (event ring, statistics, sample recorder), arm the :class:`ElementBank`, build the
   measurement source from its spec and the trip outputs from theirs (their I/O threads start here, before the
   heap is frozen);
2. ``gc.collect()``, ``gc.freeze()`` (everything built so far moves to the permanent generation and is never
   scanned again), ``gc.disable()`` for the whole run;
3. set the GIL switch interval to 0.5 ms (another thread holding the GIL delays a wake-up by at most that), start
   the cycle thread, which first asks for ``SCHED_FIFO`` (``os.sched_setscheduler(0, ...)`` applies to the
   calling thread on Linux) and pins itself to one CPU (``os.sched_setaffinity(0, {cpu})``). Either may be refused
   (no CAP_SYS_NICE / RLIMIT_RTPRIO, a container, a CPU outside the allowed set): that is logged as a warning and
   reported in the statistics block (``sched_fifo``/``sched_errno``, ``cpu``/``affinity_errno``); never fatal.
   When SCHED_FIFO was granted, every other thread (the source's and the outputs' I/O threads, the main thread)
   gets it too, one priority lower: a poll waiting behind other work delays detection, and a normal-priority
   thread preempted while it holds the GIL would stall the cycle (priority inversion). They are pinned to the
   cycle's CPU (the GIL runs them one at a time anyway, and a GIL holder on another CPU could be held up there by
   work we do not control), and the process locks its pages in RAM (``mlockall``) so no page fault stalls it;
4. the main thread waits for the stop word (and exits when the parent dies); then it stops and joins the cycle
   thread, closes the outputs and the source (joining their threads), marks the state ``stopped`` and exits.

The settings group is switched through the statistics block (:meth:`ProtectionHandle.switch_group`): the cycle
reads the request word once per slot.

Garbage collection stays off the cycle: with the heap frozen and the hot path creating no reference cycles,
collection is never needed for correctness. The one safe point is the cycle's ``idle`` hook, called right after a
cycle that ended before the next deadline: when generation 0 holds more than ``GC_GEN0_LIMIT`` objects it runs
``gc.collect(0)`` there (counted as ``gc_collects``), so a collection can only delay the following wake-up, whose
lateness the histogram shows.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from protection.bank import ElementBank
from protection.cycle import MIN_PERIOD_NS, Cycle
from protection.recorder import RecordedWindow, SampleRecorder
from protection.settings import ProtectionSettings
from protection.shm import EVENT_DTYPE, STATE_FAILED, STATE_RUNNING, STATE_STOPPED, CycleStats, EventRing, StatsSnapshot
from protection.sources import SourceSpec, build_source

if TYPE_CHECKING:
    from protection.outputs import OutputSpec

log = logging.getLogger(__name__)

GC_GEN0_LIMIT = 5000  # safe-point collection threshold (objects in generation 0)
STOP_POLL_S = 0.02  # how often the child's main thread looks at the stop word (stop latency)
SWITCH_INTERVAL_S = 0.0005  # the child's GIL switch interval: bounds how long another thread can delay the cycle
MCL_CURRENT = 1  # mlockall(2) flags (Linux)
MCL_FUTURE = 2
DEFAULT_FIFO_PRIORITY = 80  # SCHED_FIFO priority asked for (1..99); above the kernel's threaded IRQs at 50


@dataclass(frozen=True, slots=True)
class _ChildArgs:
    settings: ProtectionSettings
    source: SourceSpec
    period_ns: int
    ring_name: str
    stats_name: str
    recorder_name: str
    outputs: tuple[OutputSpec, ...]
    cpu: int | None  # CPU to pin the cycle thread to; None = the last CPU this process may use; -1 = do not pin
    fifo_priority: int  # 0 = do not ask for SCHED_FIFO


def _set_realtime(stats: CycleStats, cpu: int | None, priority: int) -> None:
    """Ask for SCHED_FIFO and a CPU for the calling thread; report the outcome, never raise."""
    if priority > 0:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
            stats.set_fields(sched_fifo=1, sched_errno=0, fifo_priority=priority)
        except (OSError, AttributeError) as e:
            err = getattr(e, "errno", None) or -1
            log.warning("protection: SCHED_FIFO %d refused (%s); running with the default scheduler", priority, e)
            stats.set_fields(sched_fifo=0, sched_errno=err, fifo_priority=0)
    if cpu is None or cpu >= 0:
        try:
            target = max(os.sched_getaffinity(0)) if cpu is None else cpu
            os.sched_setaffinity(0, {target})
            stats.set_fields(cpu=target, affinity_errno=0)
        except (OSError, AttributeError, ValueError) as e:
            err = getattr(e, "errno", None) or -1
            log.warning("protection: pinning the cycle thread to CPU %s refused (%s); not pinned", cpu, e)
            stats.set_fields(cpu=-1, affinity_errno=err)


def _lock_memory() -> None:
    """Lock the process's pages in RAM (``mlockall``) so the cycle never waits on a page fault.

    ``MCL_FUTURE`` is added only when ``RLIMIT_MEMLOCK`` is unlimited: with a finite limit a later allocation
    beyond it would fail with ``MemoryError``. Refusal (no privilege, limit too small) is logged, never fatal.
    Called with SCHED_FIFO granted, where a major fault (code paged back in after the page cache was squeezed)
    is the remaining source of multi-millisecond stalls.
    """
    try:
        import ctypes
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        flags = MCL_CURRENT | (MCL_FUTURE if soft == resource.RLIM_INFINITY else 0)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mlockall(flags) != 0:
            err = ctypes.get_errno()
            log.warning("protection: mlockall refused (%s); pages may fault", os.strerror(err))
    except (OSError, AttributeError, ValueError) as e:
        log.warning("protection: mlockall unavailable (%s)", e)


def _set_io_realtime(priority: int, cpu: int) -> None:
    """Give every other thread of the process SCHED_FIFO just below the cycle (I/O threads, the main thread).

    The I/O threads (source poller, trip outputs) are part of the real-time path: a poll that waits behind the
    gateway's work on a busy CPU delays fault detection as surely as a late cycle does. And every thread of
    this process takes the GIL: one left at normal priority can be preempted by unrelated load *while holding
    it*, and the cycle then waits until that thread is scheduled again (tens of ms on a loaded CPU) — a
    priority inversion no switch interval can bound. Applied by thread id (Linux scheduling is per thread);
    refusal is logged, never fatal. Called from the cycle thread once its own settings are in force.

    When the cycle is pinned (``cpu`` ≥ 0) the other threads are pinned to the same CPU. The GIL runs the threads
    of this process one at a time anyway, so nothing is lost; and a thread holding the GIL can then never be
    stuck on another CPU behind work we do not control (another process in a non-preemptible kernel section, a
    descheduled virtual CPU) while the cycle waits for it: on the cycle's CPU it is simply preempted by the cycle.
    """
    if priority <= 1:
        return
    me = threading.get_ident()
    for t in threading.enumerate():
        if t.ident == me or t.native_id is None:
            continue
        try:
            os.sched_setscheduler(t.native_id, os.SCHED_FIFO, os.sched_param(priority - 1))
            if cpu >= 0:
                os.sched_setaffinity(t.native_id, {cpu})
        except (OSError, AttributeError) as e:
            log.warning("protection: SCHED_FIFO/CPU for thread %s refused (%s)", t.name, e)


def _child_main(args: _ChildArgs) -> None:
    """Entry point of the protection process (spawned). See the module doc for the sequence."""
    # Ctrl-C in a terminal reaches the whole process group: the gateway handles it and stops us through the stop
    # word (the segments stay consistent); SIGTERM keeps its default (end at once, no traceback).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s protection[%(process)d] %(levelname)s %(message)s")
    ring = EventRing.attach(args.ring_name)
    stats = CycleStats.attach(args.stats_name)
    recorder = SampleRecorder.attach(args.recorder_name)
    parent = os.getppid()
    outputs: Any = None
    source: Any = None
    try:
        stats.set_fields(pid=os.getpid())
        bank = ElementBank(args.settings)
        for err in bank.errors:
            log.warning("protection: element not armed: %s", err)
        if args.outputs:
            from protection.outputs import TripOutputs  # only a process with outputs needs their I/O code

            names = (tuple(e.name for e in bank.elements(1)), tuple(e.name for e in bank.elements(2)))
            outputs = TripOutputs(args.outputs, names)
            outputs.start()
        source = build_source(args.source, time.monotonic_ns())
        thread_stop = threading.Event()
        failure: list[BaseException] = []

        collects = [0]

        def idle(deadline_ns: int) -> None:
            if gc.get_count()[0] > GC_GEN0_LIMIT:
                gc.collect(0)
                collects[0] += 1
                stats.set_fields(gc_collects=collects[0])

        def cycle_thread() -> None:
            try:
                _set_realtime(stats, args.cpu, args.fifo_priority)
                snap = stats.snapshot()
                if snap.sched_fifo == 1:
                    _set_io_realtime(args.fifo_priority, snap.cpu)
                    _lock_memory()
                cycle = Cycle(
                    bank, source, args.period_ns, ring=ring, stats=stats, idle=idle, outputs=outputs,
                    recorder=recorder,
                )
                stats.set_fields(state=STATE_RUNNING)
                cycle.run(thread_stop)
            except BaseException as e:  # reported through the stats block; the main thread exits
                failure.append(e)
                log.exception("protection: cycle thread failed")
                stats.set_fields(state=STATE_FAILED)

        # A thread holding the GIL when the cycle wakes keeps it for at most this long (default 5 ms).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        gc.collect()
        gc.freeze()
        gc.disable()
        t = threading.Thread(target=cycle_thread, name="protection-cycle")
        t.start()
        # The main thread polls the stop word: no multiprocessing lock or event is shared with the gateway, so a
        # process killed at any point can leave nothing locked on either side.
        while not stats.stop_requested() and t.is_alive():
            if os.getppid() != parent:  # the gateway died: nobody reads our events any more
                log.warning("protection: parent process gone; stopping")
                break
            time.sleep(STOP_POLL_S)
        thread_stop.set()
        t.join()
        if not failure:
            stats.set_fields(state=STATE_STOPPED)
    finally:
        gc.enable()
        for part in (outputs, source):
            close = getattr(part, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):  # best effort at exit; each close joins its own thread
                    close()
        ring.close()
        stats.close()
        recorder.close()


class ProtectionHandle:
    """The gateway's side of a running protection process. Owns the shared-memory segments. One thread uses it."""

    def __init__(
        self,
        proc: Any,
        ring: EventRing,
        stats: CycleStats,
        recorder: SampleRecorder,
        bank: ElementBank,
    ) -> None:
        self._proc = proc
        self._ring = ring
        self._stats = stats
        self._recorder = recorder
        self._names = (tuple(e.name for e in bank.elements(1)), tuple(e.name for e in bank.elements(2)))
        self._closed = False
        self.exitcode: int | None = None  # the child's exit code once stopped (negative: killed by that signal)

    @property
    def pid(self) -> int | None:
        pid: int | None = self._proc.pid
        return pid

    def alive(self) -> bool:
        """True while the child process runs."""
        return not self._closed and bool(self._proc.is_alive())

    def wait_exit(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the child to end (however it ends); True if it has."""
        if not self._closed:
            self._proc.join(timeout_s)
        return not self.alive()

    def element_name(self, group: int, index: int) -> str:
        """Name of the element a ring record points at (``group`` 1/2, ``index`` its ``element`` field)."""
        return self._names[group - 1][index]

    def element_names(self, group: int) -> tuple[str, ...]:
        """Armed element names of ``group`` (1/2), in ring-index order."""
        return self._names[group - 1]

    def switch_group(self, group: int) -> None:
        """Ask the cycle to put settings ``group`` (1/2) in service at its next slot (see ``stats().active_group``)."""
        if not self._closed:
            self._stats.request_group(group)

    def recording(self, from_ns: int, to_ns: int) -> RecordedWindow | None:
        """The cycle's samples between two monotonic times (None: not, or no longer, all in the buffer)."""
        if self._closed:
            return None
        return self._recorder.window(from_ns, to_ns)

    def recording_latest_ns(self) -> int:
        """Monotonic ns of the newest recorded sample (-1: none)."""
        return -1 if self._closed else self._recorder.latest_ns()

    def stats(self) -> StatsSnapshot:
        """The cycle statistics (after ``stop``: the last figures)."""
        return self._stats.snapshot()

    def events(self) -> npt.NDArray[np.void]:
        """Records published since the last call (``EVENT_DTYPE``); empty after ``stop``."""
        if self._closed:
            return np.empty(0, dtype=EVENT_DTYPE)
        return self._ring.read_new()

    @property
    def events_overflow(self) -> int:
        return 0 if self._closed else self._ring.overflow

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """Stop the child (idempotent, bounded): ask, then SIGTERM, then SIGKILL; free the segments.

        Returns the exit code. Events still in the ring are dropped: read them before stopping.
        """
        if self._closed:
            return self.exitcode
        self._stats.request_stop()
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            log.warning("protection: process %s did not stop in %.1f s; terminating", self._proc.pid, timeout_s)
            self._proc.terminate()
            self._proc.join(1.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(1.0)
        self.exitcode = self._proc.exitcode
        with contextlib.suppress(ValueError):  # already closed
            self._proc.close()
        self._closed = True
        self._ring.close(unlink=True)
        self._stats.close(unlink=True)
        self._recorder.close(unlink=True)
        return self.exitcode

    def __enter__(self) -> ProtectionHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_protection_process(
    settings: ProtectionSettings,
    source_spec: SourceSpec,
    period_s: float = 0.005,
    *,
    cpu: int | None = None,
    fifo_priority: int = DEFAULT_FIFO_PRIORITY,
    ring_capacity: int = 4096,
    record_s: float = 4.0,
    outputs: tuple[OutputSpec, ...] = (),
    start_timeout_s: float = 30.0,
) -> ProtectionHandle:
    """Spawn the protection process and wait until its cycle runs (or it failed). Returns its handle.

    ``cpu``: CPU for the cycle thread (None: the highest this process may use; -1: do not pin).
    ``fifo_priority``: SCHED_FIFO priority to ask for (0: do not ask). ``record_s``: seconds of cycle samples the
    recorder keeps (fault records are cut from it). ``outputs``: trip output specs (an output naming an element
    that is not armed is a ``ValueError`` raised here, before anything starts). Raises ``RuntimeError`` when the
    child does not come up within ``start_timeout_s`` (it is then stopped and the segments freed).
    """
    period_ns = round(period_s * 1e9)
    if period_ns < MIN_PERIOD_NS:
        raise ValueError(f"period_s {period_s} is below the minimum {MIN_PERIOD_NS / 1e9} s")
    bank = ElementBank(settings)  # the parent's copy: element names for ring records, arming errors
    if outputs:
        from protection.outputs import TripOutputs

        names = (tuple(e.name for e in bank.elements(1)), tuple(e.name for e in bank.elements(2)))
        TripOutputs(outputs, names)  # validates the element names; starts nothing
    ctx = mp.get_context("spawn")
    ring = EventRing.create(ring_capacity)
    stats = CycleStats.create()
    stats.set_fields(period_ns=period_ns)
    recorder = SampleRecorder.create(max(16, math.ceil(record_s * 1e9 / period_ns)))
    args = _ChildArgs(
        settings, source_spec, period_ns, ring.name, stats.name, recorder.name, tuple(outputs), cpu, fifo_priority
    )
    proc = ctx.Process(target=_child_main, args=(args,), name="protection", daemon=True)
    proc.start()
    handle = ProtectionHandle(proc, ring, stats, recorder, bank)
    deadline = time.monotonic() + start_timeout_s
    while stats.snapshot().state == "starting" and proc.is_alive() and time.monotonic() < deadline:
        proc.join(0.01)  # waits on the child's sentinel: returns early if it dies
    if stats.snapshot().state != "running":
        state = handle.stats().state
        handle.stop()
        raise RuntimeError(f"protection process did not start (state {state}, exit code {handle.exitcode})")
    return handle

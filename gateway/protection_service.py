"""The gateway's side of protection: start the process, supervise and restart it, SOE into the store, fault records.

:class:`ProtectionService` runs as one task on the gateway's loop (``run()``); blocking work (spawning, stopping,
committing events, writing COMTRADE files) goes through ``asyncio.to_thread``. Every ``poll_s`` it

1. reads the process's event ring and stores the records as events (:mod:`protection.soe`: element and output
   transitions are priority-0 ``soe`` events, overruns a priority-0 ``alarm``) — committed before the next read;
2. cuts a **fault record** for each trip once the recorder holds ``record_post_ms`` after it: the samples from
   ``record_pre_ms`` before the first trip to ``record_post_ms`` after it (trips inside that window join the same
   record), written as COMTRADE into ``records_dir``, announced by a priority-0 ``fault_record`` event;
3. checks health: the process alive, its state not ``failed``, and a cycle within ``heartbeat_timeout_ms``.

A dead, failed or unresponsive process raises a priority-0 alarm naming the reason, is stopped (SIGTERM, then
SIGKILL), and is started again after 1 s, doubling up to ``restart_max_s``; the delay returns to 1 s after a
minute of healthy running. Pending fault records are cut from what the recorder holds before the segments go.

**Fail-safe behaviour** (docs/protection.md): while the process is down nothing trips from the gateway. The
breaker stays as it is (a trip output is a pulse command, never a "hold closed" signal), the IEDs' own protection
remains the primary protection, and the alarm tells the operator that the gateway's protection is out of service.
After a restart the elements start from rest (timers and integrals are not carried over).

**Settings changes** (the panel, docs/panel.md): the process takes its settings at start only, so
:meth:`ProtectionService.change_settings` persists the new settings in ``<data_dir>/panel/protection-settings.json``
(written atomically) and restarts the process with them at once (a priority-0 alarm names the short window without
protection; no back-off, not counted as a failure restart). At construction that file, when present and valid, is
used in preference to the config file's ``[protection]`` groups, and a priority-1 alarm says so (who changed them,
when). A group switch also survives a restart of the process (the group in service is kept).

Threads: ``run``, ``status`` and ``change_settings`` on the loop thread; ``switch_group`` from any thread (one
shared-memory word); ``record_files`` and ``record_zip`` in a worker thread (file I/O).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import os
import time
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.model import Event
from protection.output import EV_PICKUP, EV_TRIP, describe_events
from protection.runtime import ComtradeFileSource, ProtectionRuntime
from protection.settings import ElementSettings, ProtectionSettings, diff_elements, element_to_raw, settings_version
from protection.shm import ELEMENT_OUTPUT, OEV_CONFIRMED, OEV_FAILED, OEV_LINK_DOWN, OEV_LINK_UP, OEV_SENT
from protection.soe import DEVICE, output_outcome, phase_names, records_to_events

if TYPE_CHECKING:
    from protection.process import ProtectionHandle
    from protection.sources import SourceSpec
    from storefwd.store import Store

log = logging.getLogger("gateway.protection")

POLL_S = 0.02  # how often the ring and the process's health are read
STABLE_S = 60.0  # healthy running that resets the restart delay to its minimum
RESTART_MIN_S = 1.0
LAST_TRIPS = 20  # trips kept for the panel
OVERRIDE_FILE = Path("panel") / "protection-settings.json"  # under data_dir: settings changed in the panel
RECORD_SUFFIXES = (".cfg", ".dat", ".hdr", ".inf")  # files of one COMTRADE record that a download zips
_RELOAD = "restarting to apply new settings"  # _supervise's reason for a planned restart


def override_path(data_dir: Path) -> Path:
    """Where the settings changed in the panel are kept (they win over the config file's groups)."""
    return data_dir / OVERRIDE_FILE


class StaleSettingsError(Exception):
    """A settings change was based on a version that is no longer the current one (someone changed them)."""

    def __init__(self, based_on: str, current: str) -> None:
        super().__init__(f"the settings changed meanwhile (your version {based_on}, current {current}): reload")
        self.based_on = based_on
        self.current = current


@dataclass
class _PendingRecord:
    first_trip_mono: int
    first_trip_utc: int
    from_ns: int  # monotonic bounds of the record (protection.comtrade.record_bounds)
    to_ns: int
    elements: list[str] = field(default_factory=list)


@dataclass
class _ElementState:
    name: str
    type: str
    group: int
    picked_up: bool = False
    tripped: bool = False
    blocked: bool = False
    pickup_mono: int = -1  # monotonic ns of the latest pickup (start of the disturbance for the fault record)


class ProtectionService:
    """Start, supervise and restart the protection process; feed its events to the store. See the module doc."""

    def __init__(
        self,
        settings: ProtectionSettings,
        runtime: ProtectionRuntime,
        store: Store,
        *,
        station: str,
        data_dir: Path,
        poll_s: float = POLL_S,
        starter: Callable[..., ProtectionHandle] | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.store = store
        self.station = station
        rd = runtime.records_dir
        self.records_dir = rd if rd.is_absolute() else data_dir / rd
        self.poll_s = poll_s
        if starter is None:
            from protection.process import start_protection_process

            starter = start_protection_process
        self._starter = starter
        self.handle: ProtectionHandle | None = None
        self.state = "stopped"  # starting, running, restarting, start failed, stopped
        self.last_error = ""
        self.starts = 0
        self.restarts = 0
        self.events_stored = 0
        self.records: deque[str] = deque(maxlen=LAST_TRIPS)  # fault record .cfg names, newest last
        self.last_trips: deque[dict[str, Any]] = deque(maxlen=LAST_TRIPS)
        self.trips: dict[str, int] = {}  # element name -> trips since the gateway started (metrics)
        self.group_trips: dict[tuple[int, str], int] = {}  # (group, element name) -> trips since the gateway started
        self.outputs: dict[str, dict[str, Any]] = {o.name: {"link": "unknown", "last": ""} for o in runtime.outputs}
        self._elements: dict[tuple[int, int], _ElementState] = {}
        self._pending: list[_PendingRecord] = []
        self._stop = asyncio.Event()
        self._restart_delay = RESTART_MIN_S
        self.data_dir = data_dir
        self.override_file = override_path(data_dir)
        self.settings_source = "config"  # or "panel": loaded from / changed through the override file
        self.settings_changed: dict[str, Any] = {}  # {"user", "ts_ns"} of the panel change in force
        self.reloads = 0  # planned restarts that applied new settings
        self._reload = asyncio.Event()
        self._planned_start = False
        self._settings_lock = asyncio.Lock()
        self._record_info: dict[str, dict[str, Any]] = {}  # record stem -> elements, trip values (this run)
        self._notes: list[tuple[int, str]] = []  # (priority, message) alarms to store when run() starts
        self._load_override()

    # -- lifecycle -------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask ``run`` to stop the process and return (loop thread)."""
        self._stop.set()

    async def run(self) -> None:
        """Start the process and keep it running until ``stop``; see the module doc."""
        if self._notes:
            notes, self._notes = self._notes, []
            await asyncio.to_thread(self.store.add_events, [
                Event(ts=time.time_ns(), kind="alarm", priority=prio, device=DEVICE, point="settings", message=msg)
                for prio, msg in notes
            ])
        try:
            while not self._stop.is_set():
                self.state = "starting"
                self._reload.clear()  # this start takes the latest settings
                try:
                    handle = await asyncio.to_thread(self._start)
                except Exception as e:  # a bad COMTRADE file, a spawn failure, a child that never ran
                    self.state = "start failed"
                    self.last_error = f"could not start: {e}"
                    await self._alarm(f"protection process {self.last_error}; retrying in {self._restart_delay:g} s")
                    await self._pause_before_restart()
                    continue
                self.handle = handle
                self.starts += 1
                if self.starts > 1 and not self._planned_start:
                    self.restarts += 1
                self._planned_start = False
                await self._report_start(handle)
                reason = await self._supervise(handle)
                if reason == _RELOAD:
                    self.state = "restarting"
                    self.reloads += 1
                    self._planned_start = True
                    by = self.settings_changed.get("user")
                    await self._alarm(f"protection process {reason}" + (f" (changed by {by})" if by else "")
                                      + ": the gateway's protection is out of service until it runs again")
                await self._finish(handle)
                self.handle = None
                if reason is None:
                    break
                if reason == _RELOAD:
                    continue  # at once: no back-off for a planned restart
                self.state = "restarting"
                self.last_error = reason
                await self._alarm(f"protection process {reason}; restarting in {self._restart_delay:g} s")
                await self._pause_before_restart()
        finally:
            if self.handle is not None:  # cancelled mid-supervision
                handle, self.handle = self.handle, None
                await asyncio.to_thread(handle.stop)
            self.state = "stopped"

    def _start(self) -> ProtectionHandle:
        rt = self.runtime
        source = _source_spec(rt.source)
        return self._starter(
            self.settings,
            source,
            rt.period_s,
            cpu=rt.cpu if rt.pin_cpu and rt.cpu >= 0 else (None if rt.pin_cpu else -1),
            fifo_priority=rt.fifo_priority,
            record_s=max(4.0, 2.0 * (rt.record_pre_ms + rt.record_post_ms) / 1000.0),
            outputs=rt.outputs,
        )

    async def _pause_before_restart(self) -> None:
        """Wait the restart delay; a stop or a settings change (start with the new settings now) ends it early."""
        waits = [asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._reload.wait())]
        try:
            await asyncio.wait(waits, timeout=self._restart_delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        self._restart_delay = min(self._restart_delay * 2.0, self.runtime.restart_max_s)

    async def _supervise(self, h: ProtectionHandle) -> str | None:
        """Poll until stop (None) or until the process is unhealthy (the reason)."""
        self.state = "running"
        started = time.monotonic()
        heartbeat_ns = round(self.runtime.heartbeat_timeout_ms * 1e6)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.poll_s)
            await self._drain(h)
            await self._cut_records(h, final=False)
            if self._reload.is_set():
                return _RELOAD
            if not h.alive():
                return f"died (exit code {h.exitcode if h.exitcode is not None else h.stats().state})"
            st = h.stats()
            if st.state == "failed":
                return "failed: its cycle thread stopped"
            if st.last_cycle_ns > 0 and time.monotonic_ns() - st.last_cycle_ns > heartbeat_ns:
                return f"unresponsive: no cycle for {(time.monotonic_ns() - st.last_cycle_ns) / 1e6:.0f} ms"
            if time.monotonic() - started > STABLE_S:
                self._restart_delay = RESTART_MIN_S
        return None

    async def _finish(self, h: ProtectionHandle) -> None:
        """Last events and fault records from a process that is stopping or gone, then stop it (frees memory)."""
        await self._drain(h)
        await self._cut_records(h, final=True)
        await asyncio.to_thread(h.stop)

    # -- events ----------------------------------------------------------------------------------------------
    async def _report_start(self, h: ProtectionHandle) -> None:
        st = h.stats()
        self._elements = {}
        for g in (1, 2):
            armed = h.element_names(g)
            for e in self.settings.group(g):
                if e.name in armed:
                    self._elements[(g, armed.index(e.name))] = _ElementState(e.name, e.type, g)
        notes = []
        if st.sched_fifo == 0:
            notes.append(f"SCHED_FIFO refused (errno {st.sched_errno}): running with the default scheduler")
        if st.cpu < 0 and self.runtime.pin_cpu:
            notes.append(f"CPU pinning refused (errno {st.affinity_errno})")
        msg = f"protection process started (pid {st.pid}, {self.runtime.period_ms:g} ms cycle"
        msg += f", SCHED_FIFO {st.fifo_priority}" if st.sched_fifo == 1 else ""
        msg += f", CPU {st.cpu})" if st.cpu >= 0 else ")"
        events = [Event(ts=time.time_ns(), kind="protection", priority=1, device=DEVICE, point="process", message=msg)]
        for n in notes:
            log.warning("protection: %s", n)
            events.append(Event(ts=time.time_ns(), kind="alarm", priority=1, device=DEVICE, point="process",
                                message=f"protection real-time fallback: {n}"))
        log.info(msg)
        await asyncio.to_thread(self.store.add_events, events)

    async def _alarm(self, message: str) -> None:
        log.error(message)
        ev = Event(ts=time.time_ns(), kind="alarm", priority=0, device=DEVICE, point="process", message=message)
        await asyncio.to_thread(self.store.add_events, [ev])

    async def _drain(self, h: ProtectionHandle) -> None:
        recs = h.events()
        if recs.size == 0:
            return
        names = (h.element_names(1), h.element_names(2))
        types = tuple(tuple(e.type for e in self.settings.group(g) if e.name in names[g - 1]) for g in (1, 2))
        out_names = [o.name for o in self.runtime.outputs]
        events = records_to_events(recs, names, out_names, (types[0], types[1]))
        self._track(recs, names, out_names)
        await asyncio.to_thread(self.store.add_events, events)
        self.events_stored += len(events)

    def _track(self, recs: Any, names: tuple[tuple[str, ...], tuple[str, ...]], out_names: list[str]) -> None:
        """Element states, last trips, output states and pending fault records from a batch of records."""
        from protection.comtrade import record_bounds

        rt = self.runtime
        period_ns = round(rt.period_ms * 1e6)
        for r in recs:
            el, grp, ev, ph = int(r["element"]), int(r["group"]), int(r["events"]), int(r["phases"])
            if el >= 0:
                st = self._elements.get((grp, el))
                if st is None:
                    continue
                mono, utc = int(r["mono_ns"]), int(r["utc_ns"])
                if ev & EV_PICKUP:
                    st.pickup_mono = mono
                if ev & EV_TRIP:
                    self.trips[st.name] = self.trips.get(st.name, 0) + 1
                    self.group_trips[(grp, st.name)] = self.group_trips.get((grp, st.name), 0) + 1
                    self.last_trips.append({"element": st.name, "type": st.type, "group": grp, "utc_ns": utc,
                                            "phases": phase_names(ph)})
                    p = self._pending[-1] if self._pending else None
                    if p is not None and mono <= p.to_ns:  # inside the record being cut: the same disturbance
                        p.elements.append(st.name)
                    else:
                        pickup = st.pickup_mono if 0 <= st.pickup_mono <= mono else mono
                        lo, hi = record_bounds(pickup, mono, period_ns=period_ns, pre_s=rt.record_pre_ms / 1000,
                                               post_s=rt.record_post_ms / 1000)
                        self._pending.append(_PendingRecord(mono, utc, lo, hi, [st.name]))
                _apply(st, ev)
            elif el == ELEMENT_OUTPUT and 0 <= grp < len(out_names):
                o = self.outputs[out_names[grp]]
                if ev & OEV_LINK_UP:
                    o["link"] = "up"
                elif ev & OEV_LINK_DOWN:
                    o["link"] = "down"
                if ev & (OEV_SENT | OEV_CONFIRMED | OEV_FAILED):
                    o["last"] = output_outcome(ev, ph)
                    o["last_utc_ns"] = int(r["utc_ns"])

    # -- fault records ---------------------------------------------------------------------------------------
    async def _cut_records(self, h: ProtectionHandle, *, final: bool) -> None:
        if not self._pending:
            return
        latest = h.recording_latest_ns()
        while self._pending:
            p = self._pending[0]
            end = p.to_ns
            if latest < end and not final:
                return
            self._pending.pop(0)
            window = h.recording(p.from_ns, min(end, latest))
            if window is None or len(window.mono_ns) == 0:
                await self._alarm(f"fault record for the {', '.join(p.elements)} trip lost: samples overwritten")
                continue
            await self._write_record(h, p, window, complete=latest >= end)

    async def _write_record(self, h: ProtectionHandle, p: _PendingRecord, window: Any, *, complete: bool) -> None:
        from protection.comtrade import ComtradeError, fault_record_name, write_comtrade

        elements = "-".join(dict.fromkeys(p.elements))
        stem = f"{fault_record_name(p.first_trip_utc, self.station, DEVICE)}_{elements}"
        group = h.stats().active_group or self.settings.active_group
        try:
            cfg, dat = await asyncio.to_thread(
                write_comtrade, self.records_dir, stem, window, trigger_utc_ns=p.first_trip_utc,
                station=self.station, device=DEVICE, element_names=h.element_names(group),
                period_ns=round(self.runtime.period_ms * 1e6),
            )
        except (OSError, ComtradeError) as e:
            await self._alarm(f"fault record for the {', '.join(p.elements)} trip not written: {e}")
            return
        self.records.append(cfg.name)
        self._note_record(cfg.stem, p, window)
        await asyncio.to_thread(self._prune_records)
        note = "" if complete else " (cut short: the process stopped before the post-fault time)"
        data = json.dumps({"cfg": str(cfg), "dat": str(dat), "elements": p.elements, "samples": len(window.mono_ns)})
        ev = Event(ts=p.first_trip_utc, kind="fault_record", priority=0, device=DEVICE, point=p.elements[0],
                   message=f"fault record {cfg.name} written{note}", data=data)
        await asyncio.to_thread(self.store.add_events, [ev])

    def _prune_records(self) -> None:
        cfgs = sorted(self.records_dir.glob("*.cfg"), key=lambda f: f.stat().st_mtime)
        for old in cfgs[: max(0, len(cfgs) - self.runtime.max_records)]:
            for f in (old, old.with_suffix(".dat")):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()

    # -- operator side ---------------------------------------------------------------------------------------
    def switch_group(self, group: int) -> None:
        """Ask the running process to put settings ``group`` (1/2) in service. ValueError for another number."""
        if group not in (1, 2):
            raise ValueError(f"settings group must be 1 or 2, got {group!r}")
        h = self.handle
        if h is None:
            raise RuntimeError("the protection process is not running")
        h.switch_group(group)
        # a restart of the process keeps this group in service
        self.settings = dataclasses.replace(self.settings, active_group=1 if group == 1 else 2)

    # -- settings changes (the panel) -----------------------------------------------------------------------
    @property
    def version(self) -> str:
        """The version (hash) of the settings in force; a change must be based on it."""
        return settings_version(self.settings)

    def settings_info(self) -> dict[str, Any]:
        """The settings in force: version, where they come from, who changed them last, both groups' elements."""
        return {
            "version": self.version,
            "source": self.settings_source,
            "override_file": str(self.override_file),
            "changed_by": self.settings_changed.get("user"),
            "changed_at_ns": self.settings_changed.get("ts_ns"),
            "active_group": self.settings.active_group,
            "reloads": self.reloads,
            "groups": {str(g): [element_to_raw(e) for e in self.settings.group(g)] for g in (1, 2)},
        }

    def validate_group(self, group: int, raw_elements: Any) -> tuple[ProtectionSettings, list[dict[str, str]]]:
        """The settings with group ``group`` replaced by ``raw_elements`` (a list of element tables, the keys of
        ``[[protection.groupN.elements]]``) and every problem (``{"key", "message"}``; empty: may be applied).
        The same checks as the config file (:func:`protection.config.parse_group_elements`, ranges included),
        plus: every trip output's elements must stay armed in one of the groups."""
        from protection.config import parse_group_elements

        elements, problems = parse_group_elements(raw_elements, group, file="panel")
        out = [{"key": p.key, "message": p.message} for p in problems]
        if group not in (1, 2):
            return self.settings, out
        g1 = elements if group == 1 else self.settings.group1
        g2 = elements if group == 2 else self.settings.group2
        candidate = dataclasses.replace(self.settings, group1=g1, group2=g2)
        if not out:
            armed = {e.name for e in (*g1, *g2) if e.enabled}
            for o in self.runtime.outputs:
                for el in o.elements:
                    if el not in armed:
                        out.append({"key": f"protection.group{group}.elements",
                                    "message": f"trip output {o.name!r} needs element {el!r}, which would be "
                                               "armed in neither group (keep it, or change the output in the "
                                               "config file)"})
        return candidate, out

    async def change_settings(
        self, group: int, elements: tuple[ElementSettings, ...], *, user: str, based_on: str
    ) -> dict[str, Any]:
        """Put ``elements`` in service as group ``group`` (loop thread). Validate first with
        :meth:`validate_group`: this only checks the version. :class:`StaleSettingsError` when ``based_on`` is not
        the current version (nothing changes); OSError when the override file cannot be written (nothing
        changes). Otherwise the override file is written, the settings are replaced and a running process is
        restarted with them (``applied`` = "restart"; "next start" when none runs now). Returns ``applied``,
        ``old_version``, ``version`` and ``diff`` (:func:`protection.settings.diff_elements`)."""
        async with self._settings_lock:
            current = self.version
            if based_on != current:
                raise StaleSettingsError(based_on, current)
            old = self.settings.group(group)
            g1 = elements if group == 1 else self.settings.group1
            g2 = elements if group == 2 else self.settings.group2
            new = dataclasses.replace(self.settings, group1=g1, group2=g2)
            ts_ns = time.time_ns()
            await asyncio.to_thread(write_settings_override, self.override_file, new, user=user, ts_ns=ts_ns)
            self.settings = new
            self.settings_source = "panel"
            self.settings_changed = {"user": user, "ts_ns": ts_ns}
            running = self.handle is not None and self.state == "running"
            self._reload.set()
            log.warning("protection settings of group %d changed by %s (version %s -> %s)%s", group, user, current,
                        self.version, ": restarting the process" if running else "")
            return {"applied": "restart" if running else "next start", "old_version": current,
                    "version": self.version, "diff": diff_elements(old, elements)}

    def _load_override(self) -> None:
        """Use the panel's settings file instead of the config file's groups when there is a valid one."""
        path = self.override_file
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            self._notes.append((0, f"protection settings override {path} not used (unreadable: {e}); "
                                   "the config file's settings are in force"))
            log.error(self._notes[-1][1])
            return
        from protection.config import parse_group_elements

        groups: list[tuple[ElementSettings, ...]] = []
        problems: list[str] = []
        for g in (1, 2):
            els, probs = parse_group_elements(doc.get(f"group{g}", []) if isinstance(doc, dict) else None, g,
                                              file=str(path))
            groups.append(els)
            problems += [str(p) for p in probs]
        if problems:
            self._notes.append((0, f"protection settings override {path} not used ({'; '.join(problems)}); "
                                   "the config file's settings are in force"))
            log.error(self._notes[-1][1])
            return
        self.settings = dataclasses.replace(self.settings, group1=groups[0], group2=groups[1])
        self.settings_source = "panel"
        user, ts_ns = doc.get("changed_by"), doc.get("changed_at_ns")
        self.settings_changed = {"user": user, "ts_ns": ts_ns}
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts_ns / 1e9)) if isinstance(ts_ns, int) else "?"
        msg = (f"protection settings come from the panel override {path} (changed by {user or '?'} at {when}), "
               "not from the config file's [protection] groups")
        self._notes.append((1, msg))
        log.warning(msg)

    # -- fault records on disk (the panel's downloads) -----------------------------------------------------
    def _note_record(self, stem: str, p: _PendingRecord, window: Any) -> None:
        """Keep what the panel shows with a record and its trips: the elements and the values at each trip (the
        recorded sample at the trip's time: RMS currents A, voltages kV, frequency Hz)."""

        def values_at(utc_ns: int) -> dict[str, float | None]:
            i = min(max(int(np.searchsorted(window.utc_ns, utc_ns)), 0), len(window.utc_ns) - 1)
            v = window.values[i]
            return {q: _finite(float(v[k])) for k, q in enumerate(("ia", "ib", "ic", "in", "va", "vb", "vc", "f"))}

        self._record_info[stem] = {"elements": list(dict.fromkeys(p.elements)), "trigger_utc_ns": p.first_trip_utc,
                                   "samples": len(window.mono_ns), "at_trip": values_at(p.first_trip_utc)}
        while len(self._record_info) > 4 * LAST_TRIPS:
            self._record_info.pop(next(iter(self._record_info)))
        last_utc = int(window.utc_ns[-1])
        for t in self.last_trips:
            if t["element"] in p.elements and p.first_trip_utc <= t["utc_ns"] <= last_utc and "record" not in t:
                t["record"] = stem
                t["at_trip"] = values_at(t["utc_ns"])

    def record_files(self, limit: int = 100) -> list[dict[str, Any]]:
        """The fault records in ``records_dir``, newest first (worker thread: reads the directory): ``name``
        (the stem), ``files`` (existing ones of .cfg .dat .hdr .inf), ``bytes``, ``mtime_ns`` and, for records
        written since the gateway started, ``elements``, ``trigger_utc_ns``, ``at_trip`` values."""
        try:
            cfgs = [(f, f.stat()) for f in self.records_dir.glob("*.cfg") if f.is_file()]
        except OSError:
            return []
        cfgs.sort(key=lambda fs: fs[1].st_mtime_ns, reverse=True)
        out: list[dict[str, Any]] = []
        for cfg, st in cfgs[:limit]:
            files = [cfg.with_suffix(x) for x in RECORD_SUFFIXES if cfg.with_suffix(x).is_file()]
            out.append({"name": cfg.stem, "files": [f.name for f in files],
                        "bytes": sum(f.stat().st_size for f in files), "mtime_ns": st.st_mtime_ns,
                        **self._record_info.get(cfg.stem, {})})
        return out

    def record_zip(self, name: str) -> tuple[str, bytes] | None:
        """``(zip file name, zip bytes)`` of the record ``name`` (its stem, or with .zip/.cfg), or None when
        ``name`` is not one of :meth:`record_files` (no path ever reaches the file system; worker thread)."""
        for suffix in (".zip", ".cfg"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        listed = {r["name"]: r for r in self.record_files(limit=self.runtime.max_records + 100)}
        rec = listed.get(name)
        if rec is None:
            return None
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for fname in rec["files"]:
                z.write(self.records_dir / fname, arcname=fname)
        return f"{name}.zip", buf.getvalue()

    def status(self) -> dict[str, Any]:
        """Protection status for the panel and /api/status (loop thread)."""
        rt = self.runtime
        out: dict[str, Any] = {
            "state": self.state,
            "last_error": self.last_error,
            "starts": self.starts,
            "restarts": self.restarts,
            "period_ms": rt.period_ms,
            "events_stored": self.events_stored,
            "elements": [
                {"name": s.name, "type": s.type, "group": s.group, "picked_up": s.picked_up, "tripped": s.tripped,
                 "blocked": s.blocked}
                for s in self._elements.values()
            ],
            "last_trips": list(self.last_trips)[::-1],
            "trips": dict(self.trips),
            "outputs": [{"name": k, **v} for k, v in self.outputs.items()],
            "records": list(self.records)[::-1],
        }
        h = self.handle
        if h is not None and h.alive():
            st = h.stats()
            hist = st.lateness_hist
            out["cycle"] = {
                "pid": st.pid,
                "active_group": st.active_group,
                "cycles": st.cycles,
                "overruns": st.overruns,
                "skipped_slots": st.skipped_slots,
                "lateness_p50_us": _finite(st.lateness_percentile_us(0.5)) if hist.sum() else None,
                "lateness_p99_us": _finite(st.lateness_percentile_us(0.99)) if hist.sum() else None,
                "lateness_p999_us": _finite(st.lateness_percentile_us(0.999)) if hist.sum() else None,
                "max_lateness_us": st.max_lateness_ns / 1000,
                "max_exec_us": st.max_exec_ns / 1000,
                "mean_exec_us": _finite(st.mean_exec_ns / 1000),
                "sched_fifo": st.sched_fifo == 1,
                "cpu": st.cpu,
                "measurements_valid": st.valid,
                "events_overflow": h.events_overflow,
            }
        return out


def _apply(st: _ElementState, ev: int) -> None:
    names = set(describe_events(ev).split("|"))
    if "PICKUP" in names:
        st.picked_up = True
    if "TRIP" in names:
        st.tripped = True
    if "DROPOUT" in names or "GROUP_RESET" in names:
        st.picked_up = False
    if "TRIP_RESET" in names or "GROUP_RESET" in names:
        st.tripped = False
    if "BLOCKED" in names:
        st.blocked, st.picked_up, st.tripped = True, False, False
    if "UNBLOCKED" in names:
        st.blocked = False


def _finite(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 3)


def _source_spec(src: Any) -> SourceSpec:
    """The picklable spec the process builds its source from (a COMTRADE file is loaded here, in the gateway)."""
    if src is None:
        raise ValueError("no measurement source configured ([protection.source])")
    if isinstance(src, ComtradeFileSource):
        from protection.comtrade_source import load_comtrade_playback

        spec: SourceSpec = load_comtrade_playback(
            src.file, src.channels or None, loop=src.loop, nominal_hz=src.nominal_hz, rms=src.rms,
            stale_after_s=src.stale_after_s,
        )
        return spec
    return src


def write_settings_override(path: Path, settings: ProtectionSettings, *, user: str, ts_ns: int) -> None:
    """Write both groups as the panel's settings override, atomically (temporary file, fsync, rename, fsync of
    the directory): after a power cut the file holds the old or the new settings, never a mix (worker thread)."""
    doc = {
        "format": 1,
        "changed_by": user,
        "changed_at_ns": ts_ns,
        "version": settings_version(settings),
        "group1": [element_to_raw(e) for e in settings.group1],
        "group2": [element_to_raw(e) for e in settings.group2],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

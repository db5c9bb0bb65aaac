"""The gateway daemon: wires config → store → link runners → uploaders → operator panel, and stops them cleanly.

Start order is sinks first, sources last (store, protection supervisor, uploaders, panel, then runners); stop is
the reverse, so every reading a runner emitted and every protection event is in the store before it closes.

Threads: everything here runs on the asyncio loop thread except the store's writer thread (owned by the Store)
and short ``asyncio.to_thread`` calls for blocking store operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from gateway.analytics.config import build_analytics
from gateway.analytics.service import AnalyticsService, derived_points
from gateway.config import GatewayConfig, LinkConfig, SinkConfig
from gateway.controls import ControlService
from gateway.drivers import SESSION_DRIVERS, driver_factory
from gateway.emit_buffer import PendingBudget
from gateway.latest import LatestTable
from gateway.logs import LogFormat, configure_logging
from gateway.model import Event, PointInfo, Q, QuarantineRecord, ReadingBatch
from gateway.runner import LinkRunner
from gateway.sdnotify import Notifier
from gateway.session_runner import DriverFactory, SessionRunner
from storefwd.retention import RetentionPolicy
from storefwd.store import Store

if TYPE_CHECKING:  # imported when used: a gateway without sinks/panel never loads httpx/uvicorn/starlette
    import httpx

    from cloud_sync.uploader import Uploader
    from gateway.asgi_server import AsgiServer
    from gateway.panel.context import PanelContext
    from gateway.protection_service import ProtectionService
    from gateway.reload import ReloadReport

log = logging.getLogger("gateway")

# systemd watchdog (docs/deployment.md, "Watchdog contract")
STALL_MIN_S = 10.0  # a runner loop that has not advanced (nor scheduled a wait) for this long is hung...
STALL_TIMEOUTS = 3.0  # ...or for this many times its link's connect + request timeouts, whichever is longer
STORE_STALL_S = 60.0  # the store writer is stuck when rows wait and no commit happened for this long
STATUS_EVERY_S = 5.0  # how often the STATUS= line for `systemctl status` is refreshed


def tune_process_memory() -> None:
    """Process-wide memory settings of the daemon (docs/storage.md, "Memory"). Idempotent.

    pyarrow's default pool (mimalloc) keeps freed segments mapped: ≈9 MB more RSS in the gateway than glibc
    malloc for the same work, and the gateway's Arrow buffers are small and short-lived. An explicit
    ``ARROW_DEFAULT_MEMORY_POOL`` in the environment wins.
    """
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        pa.set_memory_pool(pa.system_memory_pool())


class Gateway:
    """One running gateway. Use ``async with Gateway(cfg):`` or ``start()`` / ``stop()`` (idempotent)."""

    def __init__(
        self,
        cfg: GatewayConfig,
        *,
        mono_ns: Callable[[], int] = time.monotonic_ns,
        wall_ns: Callable[[], int] = time.time_ns,
        sink_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.cfg = cfg
        self.mono_ns = mono_ns
        self.wall_ns = wall_ns
        self._sink_transport = sink_transport
        self.store: Store | None = None
        self.analytics: AnalyticsService | None = None  # the configured [analytics], fed from _emit
        self.runners: list[LinkRunner | SessionRunner] = []
        self.controls: ControlService | None = None
        self._event_tasks: set[asyncio.Task[Any]] = set()  # event writes, panel reads in flight (strong refs)
        self.uploaders: list[Uploader] = []
        self.panel: AsgiServer | None = None
        self.panel_context: PanelContext | None = None  # the panel's shared state (users, sessions, live config)
        self.protection: ProtectionService | None = None
        self.latest: LatestTable | None = None
        self.points: list[PointInfo] = []
        self.point_ids: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.started_wall_ns = 0
        self.emit_backpressure = 0  # emits refused by a full store queue (runners retry them)
        # readings all runners may hold while the store accepts none (as many as the store's own queue)
        self.pending = PendingBudget(max(1000, cfg.storage.queue_rows))
        self._comm_states: dict[str, str] = {}  # device -> last comm state recorded as an event
        self._store_progress = (-1, 0)  # (store commits, monotonic ns when that count was first seen): watchdog

    # -- lifecycle -----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.cfg
        self.started_wall_ns = self.wall_ns()
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        tune_process_memory()
        st = cfg.storage
        self.store = await asyncio.to_thread(
            Store,
            cfg.store_path,
            commit_interval_ms=st.commit_interval_ms,
            queue_rows=st.queue_rows,
            checkpoint_threshold_mb=st.checkpoint_threshold_mb,
            memory_limit_mb=st.memory_limit_mb,
            retention_policy=RetentionPolicy(
                budget_bytes=int(st.disk_budget_mb * 1024 * 1024),
                budget_percent=st.disk_budget_percent,
                high_water=st.high_water_percent / 100.0,
                low_water=st.low_water_percent / 100.0,
                downsample_min_age_s=st.downsample_after_s,
                reserve_free_bytes=int(st.reserve_free_mb * 1024 * 1024),
            ),
            # a damaged file is kept aside and the gateway goes on with a new one (docs/durability.md); a new
            # file numbers its readings from the current time in µs, so its seqs never repeat those of a file
            # it replaces (the receiver lands each (gateway, seq) once)
            on_damage="move_aside",
            seq_floor=self.wall_ns() // 1000,
        )
        self.store.set_sinks([s.name for s in cfg.sinks])
        if self.store.damaged is not None:
            log.error("store damaged at start: %s (an alarm event records it)", self.store.damaged["error"])
        self.points = [
            PointInfo(f"{dev.name}.{p.name}", dev.name, p.name, p.unit) for _, dev in cfg.devices() for p in dev.points
        ]
        analytics = build_analytics(cfg.analytics)  # their curated values are points like any other
        self.points += [p for p in derived_points(analytics) if p.name not in {q.name for q in self.points}]
        ids = await asyncio.to_thread(self.store.register_points, self.points)
        self.point_ids = {p.name: int(i) for p, i in zip(self.points, ids, strict=True)}
        self.latest = LatestTable(max(self.point_ids.values(), default=0))
        if analytics:
            self.analytics = AnalyticsService(
                analytics, self.point_ids, self._emit, self._record_event, wall_ns=self.wall_ns
            )
            self._tasks.append(asyncio.create_task(self.analytics.run(), name="analytics"))
        if cfg.protection_problems:
            alarms = [
                Event(ts=self.wall_ns(), kind="alarm", priority=0, message=f"protection element not armed: {p}")
                for p in cfg.protection_problems
            ]
            for ev in alarms:
                log.error(ev.message)
            await asyncio.to_thread(self.store.add_events, alarms)

        prot = cfg.protection
        if cfg.protection_runtime.source is not None and (prot.group1 or prot.group2):
            from gateway.protection_service import ProtectionService

            self.protection = ProtectionService(
                prot, cfg.protection_runtime, self.store, station=cfg.id, data_dir=cfg.data_dir
            )
            self._tasks.append(asyncio.create_task(self.protection.run(), name="protection"))
        elif prot.group1 or prot.group2:
            ev = Event(ts=self.wall_ns(), kind="alarm", priority=0, device="protection", point="process",
                       message="protection not started: no usable [protection.source]")
            log.error(ev.message)
            await asyncio.to_thread(self.store.add_events, [ev])

        for sink in cfg.sinks:
            up = self._make_uploader(sink)
            self.uploaders.append(up)
            self._tasks.append(asyncio.create_task(up.run(), name=f"sink-{sink.name}"))

        if cfg.panel.port:
            await self._start_panel()

        for link in cfg.links:
            self.runners.append(self._make_runner(link))
        store = self.store
        self.controls = ControlService(
            self._control_targets(),
            {f"{dev.name}.{p.name}": p for _, dev in cfg.devices() for p in dev.points},
            lambda ev: asyncio.to_thread(store.add_events, [ev]),
            select_timeout_s=cfg.panel.select_timeout_s,
            mono_ns=self.mono_ns,
            wall_ns=self.wall_ns,
        )
        for runner in self.runners:
            self._tasks.append(asyncio.create_task(runner.run(), name=f"link-{runner.link.name}"))
        log.info(
            "gateway %s started: %d links, %d devices, %d points, store %s",
            cfg.id,
            len(cfg.links),
            len(cfg.devices()),
            len(self.points),
            cfg.store_path,
        )

    def _make_runner(self, link: LinkConfig) -> LinkRunner | SessionRunner:
        """The poll loop of one link (not started)."""
        if link.protocol in SESSION_DRIVERS:
            return SessionRunner(
                link,
                point_ids=self.point_ids,
                emit=self._emit,
                driver_factory=self._session_factory(link),
                mono_ns=self.mono_ns,
                wall_ns=self.wall_ns,
                on_event=self._record_event,
                pending=self.pending,
            )
        return LinkRunner(
            link, point_ids=self.point_ids, emit=self._emit, mono_ns=self.mono_ns, wall_ns=self.wall_ns,
            pending=self.pending, on_event=self._record_event,
        )  # fmt: skip

    def _control_targets(self) -> dict[str, LinkRunner | SessionRunner]:
        return {d.name: r for r in self.runners for d in r.link.devices}

    def _make_uploader(self, sink: SinkConfig) -> Uploader:
        from cloud_sync.uploader import Uploader

        assert self.store is not None
        if sink.type == "mqtt":  # paho is imported only when an MQTT sink is configured
            from cloud_sync.mqtt_sink import MqttDelivery

            return Uploader(self.store, sink, self.cfg.id, delivery=MqttDelivery(sink, self.cfg.id))
        return Uploader(self.store, sink, self.cfg.id, transport=self._sink_transport)

    # -- reload (SIGHUP) -----------------------------------------------------------------------------------------
    async def reload(self, new: GatewayConfig) -> ReloadReport:
        """Apply a changed config without a restart where that is safe (docs/deployment.md#reload).

        Applied live: links (an unchanged link keeps its runner and its connection; a changed one is stopped and
        started again; added and removed ones start and stop), sinks (likewise, by name: a changed sink's
        watermark is kept), panel bays and session timeouts (log settings: :func:`reload_from_file`). Everything
        else (gateway id, data_dir, [storage], the panel's address and TLS, [protection], [analytics]) needs a
        restart: reported, and the running value kept. Loop thread only; the caller validated ``new``."""
        from gateway.reload import plan_reload

        old = self.cfg
        plan = plan_reload(old, new)
        store = self.store
        assert store is not None
        # stop what goes away or changes: runners first (their final old-data marks reach the store), then sinks
        stopping = [r for r in self.runners if r.link.name in plan.links_removed | plan.links_changed]
        for r in stopping:
            r.stop()
        names = {f"link-{r.link.name}" for r in stopping}
        tasks = [t for t in self._tasks if t.get_name() in names]
        await _wait_tasks(tasks, 5.0)
        self._tasks = [t for t in self._tasks if t not in tasks]
        self.runners = [r for r in self.runners if r not in stopping]
        gone_sinks = [u for u in self.uploaders if u.sink.name in plan.sinks_removed | plan.sinks_changed]
        for u in gone_sinks:
            u.stop()
        snames = {f"sink-{u.sink.name}" for u in gone_sinks}
        stasks = [t for t in self._tasks if t.get_name() in snames]
        await _wait_tasks(stasks, 5.0)
        self._tasks = [t for t in self._tasks if t not in stasks]
        self.uploaders = [u for u in self.uploaders if u not in gone_sinks]

        self.cfg = plan.effective
        cfg = self.cfg
        # new points get ids (removed ones keep theirs: their history stays readable)
        new_points = [
            PointInfo(f"{dev.name}.{p.name}", dev.name, p.name, p.unit)
            for link in cfg.links if link.name in plan.links_added | plan.links_changed
            for dev in link.devices for p in dev.points
            if f"{dev.name}.{p.name}" not in self.point_ids
        ]  # fmt: skip
        if new_points:
            ids = await asyncio.to_thread(store.register_points, new_points)
            self.points += new_points
            self.point_ids.update((p.name, int(i)) for p, i in zip(new_points, ids, strict=True))
            assert self.latest is not None
            self.latest.grow(max(self.point_ids.values()))
        started = []
        for link in cfg.links:
            if link.name in plan.links_added | plan.links_changed:
                runner = self._make_runner(link)
                self.runners.append(runner)
                started.append(runner)
        order = {link.name: i for i, link in enumerate(cfg.links)}
        self.runners.sort(key=lambda r: order[r.link.name])
        for runner in started:
            self._tasks.append(asyncio.create_task(runner.run(), name=f"link-{runner.link.name}"))
        store.set_sinks([s.name for s in cfg.sinks])
        for sink in cfg.sinks:
            if sink.name in plan.sinks_added | plan.sinks_changed:
                up = self._make_uploader(sink)
                self.uploaders.append(up)
                self._tasks.append(asyncio.create_task(up.run(), name=f"sink-{sink.name}"))
        if self.controls is not None:
            self.controls.update(
                self._control_targets(), {f"{dev.name}.{p.name}": p for _, dev in cfg.devices() for p in dev.points}
            )
        kept = {f"{dev.name}.{p.name}" for _, dev in cfg.devices() for p in dev.points}
        dropped = {f"{dev.name}.{p.name}" for _, dev in old.devices() for p in dev.points} - kept
        self.points = [p for p in self.points if p.name not in dropped]  # their ids and history stay in the store
        if self.controls is not None:
            self.controls.select_timeout_s = cfg.panel.select_timeout_s
        if self.panel_context is not None:
            ctx = self.panel_context
            ctx.cfg = cfg.panel
            ctx.sessions.idle_s = cfg.panel.session_idle_min * 60.0
            ctx.sessions.max_s = cfg.panel.session_max_h * 3600.0
        return plan.report

    async def _start_panel(self) -> None:
        """The operator panel (docs/panel.md): HTTPS with the configured or a generated self-signed certificate,
        plain HTTP only where the config allows it (loopback)."""
        from gateway.asgi_server import AsgiServer
        from gateway.panel.app import build_panel_app
        from gateway.panel.tls import ensure_panel_certificate

        pc = self.cfg.panel
        cert = key = None
        if pc.tls:
            cert, key = await asyncio.to_thread(ensure_panel_certificate, self.cfg)
        from gateway.panel.app import build_panel_context

        self.panel_context = build_panel_context(self)
        self.panel = AsgiServer(
            build_panel_app(self, self.panel_context), pc.host, pc.port, name="panel", ssl_certfile=cert,
            ssl_keyfile=key,
        )
        await self.panel.start()

    def _session_factory(self, link: LinkConfig) -> DriverFactory:
        """The driver factory of a session link; an mqtt link's driver also gets the quarantine sink, an iec61850
        link's driver the store's last committed readings (it calls them from a worker thread at its first session
        start, to skip the IED's replay after a restart)."""
        factory = driver_factory(link.protocol)
        if link.protocol == "mqtt":
            mqtt_driver: Callable[..., Any] = factory  # MqttSession takes two more keyword arguments
            return functools.partial(
                mqtt_driver, on_quarantine=self._record_quarantine, default_client_id=f"{self.cfg.id}-{link.name}"
            )
        if link.protocol == "iec61850":
            iec_driver: Callable[..., Any] = factory  # Iec61850Session takes one more keyword argument
            store = self.store
            # the IED's own last readings (not the gateway-time marks a stop writes): its replay is recognised
            committed = (functools.partial(store.last_readings, exclude_quality=int(Q.GATEWAY_TIME))
                         if store is not None else None)
            return functools.partial(iec_driver, committed=committed)
        return factory

    def _record_quarantine(self, records: list[QuarantineRecord]) -> None:
        """Store refused sensor records from the loop without blocking it (same pattern as events)."""
        store = self.store
        if store is None or not records:
            return
        task = asyncio.create_task(asyncio.to_thread(store.add_quarantine, records), name="quarantine")
        self._event_tasks.add(task)
        task.add_done_callback(self._event_tasks.discard)

    def track(self, task: asyncio.Task[Any]) -> None:
        """Keep a background store task (an event write, a panel read) referenced until it ends; :meth:`stop` waits
        for these before it closes the store."""
        self._event_tasks.add(task)
        task.add_done_callback(self._event_tasks.discard)

    def _record_event(self, event: Event) -> None:
        """Store one event from the loop without blocking it (device alarms of the session runners)."""
        store = self.store
        if store is None:
            return
        task = asyncio.create_task(asyncio.to_thread(store.add_events, [event]), name="event")
        self._event_tasks.add(task)
        task.add_done_callback(self._event_tasks.discard)

    def _emit(self, batch: ReadingBatch) -> bool:
        """Runner → store. Non-blocking; False means the store queue is full and the runner retries."""
        assert self.store is not None and self.latest is not None
        if not self.store.offer(batch):
            self.emit_backpressure += 1
            return False
        self.latest.update(batch, self.wall_ns())
        if self.analytics is not None:
            self.analytics.tap(batch)
        return True

    async def stop_sources(self) -> None:
        """Stop polling (every runner emits its final old-data marks); sinks keep running. Idempotent."""
        for r in self.runners:
            r.stop()
        runner_tasks = [t for t in self._tasks if t.get_name().startswith("link-")]
        await _wait_tasks(runner_tasks, 3.0)
        self._tasks = [t for t in self._tasks if t not in runner_tasks]

    async def stop(self) -> None:
        """Stop sources first (runners), then analytics (a last tick stores what they still had), then the panel
        and uploaders, then drain and close the store."""
        await self.stop_sources()
        if self.analytics is not None:
            self.analytics.stop()
            tasks = [t for t in self._tasks if t.get_name() == "analytics"]
            await _wait_tasks(tasks, 10.0)
            self._tasks = [t for t in self._tasks if t not in tasks]
        if self.protection is not None:
            self.protection.stop()
            prot_tasks = [t for t in self._tasks if t.get_name() == "protection"]
            await _wait_tasks(prot_tasks, 10.0)  # stops the process (bounded: SIGTERM, then SIGKILL)
            self._tasks = [t for t in self._tasks if t not in prot_tasks]
        if self.panel is not None:
            if self.panel_context is not None:
                from gateway.panel.live import close_streams

                close_streams(self.panel_context)  # live streams end at their next tick, not at uvicorn's timeout
            await self.panel.stop()
            self.panel = None
        for u in self.uploaders:
            u.stop()
        await _wait_tasks(self._tasks, 3.0)
        self._tasks.clear()
        if self._event_tasks:  # device alarms on their way into the store
            await asyncio.wait(set(self._event_tasks), timeout=3.0)
        if self.store is not None:
            store, self.store = self.store, None
            await asyncio.to_thread(store.close)
        log.info("gateway %s stopped", self.cfg.id)

    async def __aenter__(self) -> Gateway:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def failed_task(self) -> BaseException | None:
        """The exception of a component task that died unexpectedly (the daemon then exits non-zero)."""
        for t in self._tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                return t.exception()
        return None

    # -- events -------------------------------------------------------------------------------------------------
    def comm_events(self) -> list[Event]:
        """Events for devices whose comm state changed since the last call (the first "ok" is not news)."""
        events: list[Event] = []
        now = self.wall_ns()
        for r in self.runners:
            changed: dict[tuple[str, str], list[str]] = {}  # (before, state) -> devices, in order
            for d in r.status():
                name, state = str(d["device"]), str(d["state"])
                before = self._comm_states.get(name, "starting")
                if state == before or state == "starting":
                    continue
                self._comm_states[name] = state
                if before == "starting" and state == "ok":
                    continue
                changed.setdefault((before, state), []).append(name)
            for (before, state), names in changed.items():
                lost = state in ("backoff", "disconnected")
                what = f"communication {'lost' if lost else 'restored'} ({before} → {state})"
                if r.link.protocol == "mqtt" and len(names) > 1:
                    # the sensors of one broker session change together: one event for the link, not one each
                    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                    events.append(Event(ts=now, kind="comm", priority=1 if lost else 2, point=f"link {r.link.name}",
                                        message=f"link {r.link.name}: {what} for {len(names)} sensors ({shown})",
                                        data=json.dumps({"link": r.link.name, "devices": names})))  # fmt: skip
                    continue
                events.extend(
                    Event(ts=now, kind="comm", message=f"{name}: {what}", priority=1 if lost else 2, device=name)
                    for name in names
                )
        return events

    async def record_comm_events(self) -> int:
        """Store comm-state changes as events (priority 1 for a loss). Returns how many were stored."""
        events = self.comm_events()
        if events and self.store is not None:
            await asyncio.to_thread(self.store.add_events, events)
            for ev in events:
                log.warning(ev.message) if ev.priority <= 1 else log.info(ev.message)
        return len(events)

    # -- systemd: readiness and liveness (docs/deployment.md) ------------------------------------------------------
    def ready(self) -> bool:
        """Started: the store is open and every link made its first connect/poll attempt (success or not)."""
        return self.store is not None and all(r.first_attempt_done for r in self.runners)

    def not_alive(self, min_stall_s: float = STALL_MIN_S) -> str | None:
        """Which component is not alive (for the watchdog), or None when all are. Call on the loop, repeatedly:
        the store's commit progress is measured between calls.

        - a runner (poll loop): its task ended, or its loop has neither advanced nor been in a wait it scheduled
          itself for ``max(min_stall_s, STALL_TIMEOUTS × (connect + longest request timeout))``: an await that never
          returns. A link that is down or backed off is alive (it advances on every attempt);
        - the store writer thread: dead, or rows waiting and no commit for ``STORE_STALL_S``;
        - every other component task (uploaders = sync loops, analytics, protection supervisor): ended (except an
          uploader stopped on a permanent error).
        """
        now = self.mono_ns()
        for r in self.runners:
            link = r.link
            longest_request_s = max((d.timeout_s for d in link.devices), default=0.0)
            limit_s = max(min_stall_s, STALL_TIMEOUTS * (link.connect_timeout_s + longest_request_s))
            if now - r.awake_by_ns > limit_s * 1e9:
                return f"link {link.name} (poll loop stalled at iteration {r.loop_iterations})"
        # an uploader that stopped on a permanent error (token refused, batch rejected) ended on purpose: a restart
        # would not fix it and would interrupt polling; its state and alarm tell the operator
        given_up = {f"sink-{u.sink.name}" for u in self.uploaders if u.state in ("stopped-auth", "stopped-rejected")}
        for t in self._tasks:
            if t.done() and t.get_name() not in given_up:
                return f"task {t.get_name()} (ended)"
        store = self.store
        if store is not None:
            # the writer thread is the Store's own; is_alive() is the only look at it we need
            if not store.writer_alive():
                return "store writer thread (dead)"
            st = store.stats()
            commits = int(st["commits"])
            if commits != self._store_progress[0]:
                self._store_progress = (commits, now)
            elif st["queued_rows"] and now - self._store_progress[1] > STORE_STALL_S * 1e9:
                return f"store writer thread (no commit for {STORE_STALL_S:.0f} s with {st['queued_rows']} rows queued)"
        return None

    def status_line(self) -> str:
        """One line for ``systemctl status``: devices polled and ok, sync backlog, store size."""
        devices = [d for r in self.runners for d in r.status()]
        ok = sum(d["state"] == "ok" for d in devices)
        parts = [f"polling {len(devices)} devices ({ok} ok)"]
        if self.store is not None:
            if self.uploaders:
                backlog = sum(int(self.store.sink_stats(u.sink.name)["backlog_rows"]) for u in self.uploaders)
                parts.append(f"backlog {backlog} rows")
            parts.append(f"store {int(self.store.stats()['file_bytes']) / 2**20:.1f} MiB")
        return ", ".join(parts)

    # -- status -------------------------------------------------------------------------------------------------
    def _sink_status(self, up: Any) -> dict[str, Any]:
        """The uploader's status plus the store's backlog figures of that sink (bytes, oldest age)."""
        out: dict[str, Any] = dict(up.status())
        if self.store is not None:
            st = self.store.sink_stats(up.sink.name)
            out.update(backlog_bytes=st["backlog_bytes"], oldest_ts=st["oldest_ts"], oldest_age_s=st["oldest_age_s"])
        return out

    def status(self) -> dict[str, Any]:
        """Snapshot for the panel and ``/api/status`` (JSON-serialisable)."""
        store_stats: dict[str, Any] = dict(self.store.stats()) if self.store is not None else {}
        return {
            "gateway_id": self.cfg.id,
            "started_ns": self.started_wall_ns,
            "now_ns": self.wall_ns(),
            "devices": [d for r in self.runners for d in r.status()],
            "sinks": [self._sink_status(u) for u in self.uploaders],
            "store": store_stats,
            "emit_backpressure": self.emit_backpressure,
            "protection": self.protection.status() if self.protection is not None else None,
            "analytics": self.analytics.status() if self.analytics is not None else None,
        }


async def _wait_tasks(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=1.0)
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            log.error("task %s failed: %r", t.get_name(), t.exception())


def setup_logging(level: str, levels: Mapping[str, str] | None = None, fmt: LogFormat = "auto") -> None:
    """Journal / JSON lines / text by where stderr goes, levels per package (:mod:`gateway.logs`)."""
    configure_logging(level, levels, fmt)


async def _ping_forever(notify: Notifier) -> None:
    """Watchdog pings while :meth:`Gateway.start` runs (opening a large store may take longer than WatchdogSec):
    they only say the event loop turns; TimeoutStartSec= bounds the start itself."""
    while True:
        notify.watchdog()
        await asyncio.sleep(notify.watchdog_interval_s)


async def _save_running_config(cfg: GatewayConfig) -> None:
    """Keep the text of the config in force for `gateway config diff -c FILE` (gateway/running_config.py)."""
    from datetime import UTC, datetime

    from gateway.running_config import save_running

    try:
        await asyncio.to_thread(save_running, cfg, datetime.now(UTC).isoformat(timespec="seconds"))
    except OSError as e:  # a full disk must not stop the daemon: the diff then compares with an older copy
        log.warning("cannot keep a copy of the running config in %s: %s", cfg.data_dir, e)


async def reload_from_file(gw: Gateway, notify: Notifier) -> bool:
    """Re-read the config file the gateway was started from and apply it (:meth:`Gateway.reload`). A file with
    errors changes nothing: every problem is logged and the running config stays. The outcome is logged, shown
    in ``systemctl status`` and stored as an audit event. Returns whether it was applied."""
    from gateway.config_load import ConfigError, ConfigFileError, load_config

    path = gw.cfg.source
    if path is None:
        log.error("reload: this gateway's config was not read from a file; nothing to reload")
        return False
    notify.reloading()
    try:
        new, warnings = await asyncio.to_thread(load_config, path, strict_protection=False)
    except (ConfigFileError, ConfigError) as e:
        problems = e.problems if isinstance(e, ConfigError) else [str(e)]
        for prob in problems:
            log.error("reload: %s", prob)
        log.error("reload refused: %d problem(s) in %s; the running config is unchanged", len(problems), path)
        notify.ready(f"reload refused ({len(problems)} problems in {path.name}); {gw.status_line()}")
        return False
    for w in warnings:
        log.warning("reload: %s", w)
    report = await gw.reload(new)
    await _save_running_config(gw.cfg)
    text = f"config reloaded from {path}: {report.summary()}"
    (log.warning if report.restart_needed else log.info)(text)
    if any(k.startswith("log_") for k in report.applied):  # after the line above: it is logged at the old level
        cfg = gw.cfg
        configure_logging(cfg.log_level, cfg.log_levels, cfg.log_format)
    if gw.store is not None:
        ev = Event(ts=gw.wall_ns(), kind="audit", priority=0, device="gateway", point="config.reload", message=text,
                   data=json.dumps({"user": "", "action": "config.reload", "file": str(path),
                                    "restart_needed": list(report.restart_needed)}))
        await asyncio.to_thread(gw.store.add_events, [ev])
    notify.ready(gw.status_line())
    return True


async def run_gateway(
    cfg: GatewayConfig,
    stop: asyncio.Event,
    *,
    notifier: Notifier | None = None,
    min_stall_s: float = STALL_MIN_S,
    reload: asyncio.Event | None = None,
) -> int:
    """Run until ``stop`` is set or a component dies. Returns an exit code.

    Under systemd (``$NOTIFY_SOCKET``, docs/deployment.md) it sends READY=1 once :meth:`Gateway.ready`, a STATUS=
    line every ``STATUS_EVERY_S``, WATCHDOG=1 every half ``$WATCHDOG_USEC`` while :meth:`Gateway.not_alive` finds
    nothing (it stops for good, logged once, when a component is not alive: systemd then restarts the daemon),
    and STOPPING=1 on the way out. ``min_stall_s``: see :meth:`Gateway.not_alive`. When ``reload`` is set (SIGHUP),
    the config file is read again and applied (:func:`reload_from_file`), then ``reload`` is cleared.
    """
    from gateway.asgi_server import BindError  # uvicorn; cheap when the panel is on (the default) anyway
    from storefwd.errors import StoreError

    notify = notifier if notifier is not None else Notifier()
    gw = Gateway(cfg)
    pinger = asyncio.create_task(_ping_forever(notify), name="sd-watchdog") if notify.watchdog_interval_s else None
    try:
        await gw.start()
    except BindError as e:
        log.error("cannot start the panel: %s (change [panel] port in %s)", e, cfg.source or "the config")
        await gw.stop()
        return 4
    except (StoreError, OSError) as e:
        log.error("cannot start: %s", e)
        await gw.stop()
        return 4
    finally:
        if pinger is not None:
            pinger.cancel()
            await asyncio.wait([pinger])
    await _save_running_config(gw.cfg)
    if gw.panel is not None:
        log.info("operator panel: %s/", gw.panel.url)
    tick_s = min(0.5, notify.watchdog_interval_s or 0.5)
    ready = False
    dead: str | None = None  # the component found not alive (pings stopped for good)
    next_ping = next_status = 0
    try:
        while not stop.is_set():
            now = time.monotonic_ns()
            if dead is None:
                dead = gw.not_alive(min_stall_s)
                if dead is not None:
                    log.error("watchdog: %s is not alive; no more watchdog pings (systemd restarts the gateway)", dead)
                    notify.status(f"not alive: {dead}")
                elif notify.watchdog_interval_s and now >= next_ping:
                    notify.watchdog()
                    next_ping = now + round(notify.watchdog_interval_s * 1e9)
            if not ready and gw.ready():
                ready = True
                notify.ready(gw.status_line())
                next_status = now + round(STATUS_EVERY_S * 1e9)
            elif ready and dead is None and now >= next_status:
                notify.status(gw.status_line())
                next_status = now + round(STATUS_EVERY_S * 1e9)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=tick_s)
            if reload is not None and reload.is_set() and not stop.is_set():
                reload.clear()
                await reload_from_file(gw, notify)
            await gw.record_comm_events()
            err = gw.failed_task()
            if err is not None:
                log.error("a component failed, stopping: %r", err)
                return 4
        return 0
    finally:
        notify.stopping("stopping")
        await gw.stop()
        notify.close()


def install_stop_signals(stop: asyncio.Event, reload: asyncio.Event | None = None) -> None:
    """SIGINT/SIGTERM set ``stop``; SIGHUP sets ``reload`` (when given) instead of killing the process."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, reload.set)


def run_from_file(path: Path) -> int:
    from gateway.cli import cmd_check_config_errors
    from gateway.config_load import ConfigError, ConfigFileError, load_config

    try:
        cfg, warnings = load_config(path, strict_protection=False)
    except (ConfigFileError, ConfigError) as e:
        return cmd_check_config_errors(e, path)
    setup_logging(cfg.log_level, cfg.log_levels, cfg.log_format)
    for w in warnings:
        log.warning(w)

    async def main() -> int:
        stop, reload = asyncio.Event(), asyncio.Event()
        install_stop_signals(stop, reload)
        return await run_gateway(cfg, stop, reload=reload)

    return asyncio.run(main())

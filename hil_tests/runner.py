"""The HIL scenario runner: one scenario = a rig, a receiver, fault proxies, the real gateway as a subprocess, a
timeline of injections, then expectations checked against what was measured (docs/hil.md).

Per scenario (:class:`ScenarioRun`):

1. the rig starts (:mod:`hil_tests.rig`); the reference receiver starts as ``gateway receiver`` (DuckDB backend,
   a child process, as ``gateway demo`` runs it);
2. a :class:`hil_tests.faultproxy.FaultProxy` goes in front of every device endpoint (one per host/port) and one
   in front of the receiver, behind which a :class:`hil_tests.powercut_relay.Relay` knows when an upload is in
   flight (power cut mid-upload);
3. the gateway config is generated (links to the proxies, ``[protection]`` from the scenario with the rig's
   protection endpoint as source and breaker output, the panel on a free loopback port without TLS, one sink
   to the receiver through its proxy) and ``python -m gateway.cli run -c gateway.toml`` is spawned, so a power
   cut is a real SIGKILL; its state is read from the panel JSON with an API token (``/api/status`` every
   0.5 s: device states, sink backlog, store seqs);
4. the timeline runs on this loop with asyncio timers: each action at ``t`` × time scale after the gateway is
   up; actions the rig cannot do are skipped with the reason;
5. at the end the device proxies are cut (the devices' failure marks get committed), the gateway runs until
   the receiver acknowledged everything (for ``no_readings_lost``), stops with SIGTERM, the receiver stops, and
   the store and the receiver database are read (copies / read-only) to evaluate the expectations
   (:mod:`hil_tests.expectations`).

Threads: everything runs on the caller's event loop except the relay (its own thread) and blocking file/DB
reads (``asyncio.to_thread``). Times: ``time.monotonic_ns()`` (the rig's clock too), wall clock only to map the
gateway's event timestamps (UTC ns) onto it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any, Final

import httpx

from hil_tests.faultproxy import FaultProxy
from hil_tests.net import free_port
from hil_tests.rig import DeviceEndpoint, Rig
from hil_tests.scenario import ACTION_CAPABILITY, Action, Scenario

GATEWAY_ID: Final = "hil-gw"
TOKEN: Final = "hil-token"
SINK: Final = "cloud"
STORE_NAME: Final = "gateway.duckdb"
STATUS_PERIOD_S: Final = 0.5
START_TIMEOUT_S: Final = 60.0
DRAIN_TIMEOUT_S: Final = 30.0

#: what the runner does itself (it owns the proxies, the gateway process and its data directory); a rig may
#: narrow this with a ``runner_capabilities`` attribute (a real rig: no "disk")
RUNNER_CAPABILITIES: Final = frozenset({"network", "power_cut", "cloud_outage", "disk"})

RigFactory = Callable[[Scenario], Rig]


def log_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ============================================================================================ records
@dataclass
class ActionRecord:
    """What happened to one timeline action. Times are monotonic ns (0: did not happen)."""

    action: Action
    status: str = "pending"  # "done" | "skipped" | "failed" | "pending"
    reason: str = ""
    planned_s: float = 0.0  # scaled time after the gateway was up
    mono_ns: int = 0  # inception (the rig's timestamp for injections)
    end_mono_ns: int = 0  # the action's effect ended (restore after duration_s), 0 if it has no end
    detail: str = ""


@dataclass
class StatusSample:
    mono_ns: int
    ok: bool  # the panel answered
    backlog: int | None = None
    acked: int | None = None
    last_seq: int | None = None
    queued: int | None = None
    devices: dict[str, str] = field(default_factory=dict)
    sink_state: str = ""


@dataclass
class RunData:
    """Everything measured in one scenario run (input of the expectations and the report)."""

    scenario: Scenario
    rig_name: str
    capabilities: frozenset[str]
    time_scale: float
    workdir: Path
    workdir_removed: bool = False  # a temporary work dir of a passing run is removed
    t0_mono_ns: int = 0  # the gateway was up: timeline origin
    end_mono_ns: int = 0
    wall_offset_ns: int = 0  # wall ns − monotonic ns (to map event timestamps)
    actions: list[ActionRecord] = field(default_factory=list)
    status: list[StatusSample] = field(default_factory=list)
    breaker_log: list[dict[str, Any]] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # store events, ts in wall ns; "mono_ns" added
    reconciliation: dict[str, Any] | None = None  # store vs receiver (no_readings_lost)
    device_ts: dict[str, dict[str, int]] = field(default_factory=dict)  # device -> {"max_ts", "rows"} (wall ns)
    protection_status: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)  # the run itself had problems (not expectations)
    gateway_runs: int = 0
    gateway_exit_codes: list[int] = field(default_factory=list)

    def record(self, action_id: str) -> ActionRecord | None:
        return next((r for r in self.actions if r.action.id == action_id), None)

    def to_mono(self, wall_ns: int) -> int:
        return wall_ns - self.wall_offset_ns


# ============================================================================================ config
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            raise ValueError(f"cannot write {v} to TOML")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, Path):
        return json.dumps(str(v))
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def dump_toml(table: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer: scalars and inline values first, then sub-tables, then arrays of tables."""
    out: list[str] = []
    subs: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for k, v in table.items():
        if isinstance(v, dict) and not k.startswith("_inline"):
            subs.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            out.append(f"{_toml_key(k)} = {_toml_value(v)}")
    text = "\n".join(out) + ("\n" if out else "")
    for k, v in subs:
        name = f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k)
        text += f"\n[{name}]\n" + dump_toml(v, name)
    for k, items in arrays:
        name = f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k)
        for item in items:
            text += f"\n[[{name}]]\n" + dump_toml(item, name)
    return text


def demo_maps() -> dict[str, Any]:
    """Register/point maps of the demo devices (gateway/configs/demo.toml), per protocol."""
    with resources.as_file(resources.files("gateway") / "configs" / "demo.toml") as p:
        demo = tomllib.loads(p.read_text(encoding="utf-8"))
    maps: dict[str, Any] = {"feeder_relay": demo["templates"]["feeder_relay"]["points"]}
    for link in demo["links"]:
        if link["protocol"] in ("dnp3_tcp", "iec61850"):
            dev = link["devices"][0]
            maps[link["protocol"]] = {k: v for k, v in dev.items() if k not in ("name",)}
    return maps


def build_gateway_config(
    scenario: Scenario,
    data_dir: Path,
    panel_port: int,
    sink_port: int,
    devices: dict[str, DeviceEndpoint],
    proxied: dict[tuple[str, int], int],
    protection_ep: DeviceEndpoint | None,
    time_scale: float,
    extra_toml: str = "",
) -> str:
    """The gateway's config text for one scenario run (see the module docstring)."""
    g = scenario.gateway
    poll = float(g.get("poll_period_s", 1.0)) * time_scale
    poll = max(poll, 0.02)
    dev_timeout = float(g.get("device_timeout_s", 0.5))
    maps = demo_maps()
    storage = {"path": STORE_NAME, "commit_interval_ms": 100, **g.get("storage", {})}
    sink = {
        "name": SINK, "url": f"http://127.0.0.1:{sink_port}/v1/batches", "token": TOKEN,
        "batch_size": 5000, "max_interval_s": 0.5, "timeout_s": 3.0, "retry_max_s": 1.0,
        **g.get("sink", {}),
    }
    points = []
    for p in maps["feeder_relay"]:  # slow points (energy, temperature) keep their ratio to the fast ones
        q = dict(p)
        q["period_s"] = round(max(poll, float(p["period_s"]) * time_scale) if "period_s" in p else poll, 4)
        points.append(q)
    cfg: dict[str, Any] = {
        "version": 1,
        "gateway": {"id": GATEWAY_ID, "data_dir": str(data_dir), "log_level": "INFO"},
        "storage": storage,
        "panel": {"host": "127.0.0.1", "port": panel_port, "tls": False},
        "templates": {"feeder_relay": {"timeout_s": dev_timeout, "points": points}},
    }
    links: list[dict[str, Any]] = []
    by_addr: dict[tuple[str, int], list[DeviceEndpoint]] = {}
    for ep in devices.values():
        by_addr.setdefault((ep.host, ep.port), []).append(ep)
    for (host, port), eps in by_addr.items():
        proto = eps[0].protocol
        link: dict[str, Any] = {
            "name": "link-" + "-".join(e.name for e in eps), "protocol": proto, "host": "127.0.0.1",
            "port": proxied[(host, port)], "connect_timeout_s": 1.0, "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
        }
        devs: list[dict[str, Any]] = []
        for ep in eps:
            if proto == "modbus_tcp":
                devs.append({"name": ep.name, "unit_id": ep.unit_id, "template": "feeder_relay",
                             "backoff_min_s": 0.5, "backoff_max_s": 2.0})
            elif proto == "dnp3_tcp":
                m = json.loads(json.dumps(maps["dnp3_tcp"]))
                m["dnp3"]["outstation_address"] = ep.unit_id
                for k in ("class1_period_s", "class2_period_s"):
                    m["dnp3"][k] = round(max(0.1, poll), 3)
                m["timeout_s"] = max(dev_timeout, 1.0)
                devs.append({"name": ep.name, **m})
            elif proto == "iec61850":
                m = json.loads(json.dumps(maps["iec61850"]))
                m["timeout_s"] = max(dev_timeout, 1.0)
                devs.append({"name": ep.name, **m})
        link["devices"] = devs
        links.append(link)
    cfg["links"] = links
    cfg["sinks"] = [sink]
    if scenario.protection is not None and protection_ep is not None:
        prot = dict(scenario.protection)
        prot.setdefault("period_ms", 5)
        prot["source"] = {
            "type": "modbus", "host": protection_ep.host, "port": protection_ep.port,
            "unit_id": protection_ep.unit_id, "poll_period_s": 0.002, "stale_after_s": 0.1,
        }
        feeder = str(scenario.rig.get("protected_feeder", "feeder1"))
        prot["outputs"] = [{
            "type": "modbus_coil", "name": f"{feeder}-cb", "host": protection_ep.host, "port": protection_ep.port,
            "unit_id": protection_ep.unit_id + 1, "coil": 0,
        }]
        cfg["protection"] = prot
    text = dump_toml(cfg)
    if extra_toml.strip():
        text += "\n" + extra_toml.strip() + "\n"
    return text


# ============================================================================================ processes
def child_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    pp = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": root + (os.pathsep + pp if pp else "")}


async def wait_port(port: int, proc: asyncio.subprocess.Process | None, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.returncode is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} during start-up")
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
            return
        except (OSError, TimeoutError):
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


async def stop_process(proc: asyncio.subprocess.Process | None, timeout: float = 10.0) -> int | None:
    if proc is None:
        return None
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return proc.returncode


# ============================================================================================ one scenario
class ScenarioRun:
    """Runs one scenario against a rig (see the module docstring). ``run()`` once."""

    def __init__(self, scenario: Scenario, rig: Rig, *, fast: bool = False, workdir: Path | None = None,
                 progress: Callable[[str], None] = log_progress) -> None:
        self.sc = scenario
        self.rig = rig
        self.scale = scenario.fast_scale if fast else 1.0
        self.progress = progress
        self.work = workdir or Path(tempfile.mkdtemp(prefix=f"hil-{scenario.slug}-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.work / "data"
        self.data_dir.mkdir(exist_ok=True)
        caps = rig.capabilities() | frozenset(getattr(rig, "runner_capabilities", RUNNER_CAPABILITIES))
        self.data = RunData(scenario, rig.name, caps, self.scale, self.work)
        self.proxies: dict[tuple[str, int], FaultProxy] = {}
        self.cloud_proxy: FaultProxy | None = None
        self.relay: Any = None  # hil_tests.powercut_relay.Relay
        self.receiver: asyncio.subprocess.Process | None = None
        self.gateway: asyncio.subprocess.Process | None = None
        self.receiver_port = 0
        self.panel_port = 0
        self.config_path = self.work / "gateway.toml"
        self.token = ""
        self._logs: list[IO[bytes]] = []
        self._http: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._gateway_down = asyncio.Event()  # set while a power cut holds the gateway down
        self._restore_tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------------------------------------ main
    async def run(self) -> RunData:
        d = self.data
        d.wall_offset_ns = time.time_ns() - time.monotonic_ns()
        try:
            await self._setup()
            await self._timeline()
            await self._finish()
        except Exception as e:  # the run could not complete: reported as an error of the scenario
            d.errors.append(f"{type(e).__name__}: {e}")
            self.progress(f"  ! run error: {type(e).__name__}: {e}")
        finally:
            await self._teardown()
        return d

    async def _setup(self) -> None:
        sc, d = self.sc, self.data
        self.progress(f"  rig {self.rig.name}: starting")
        await self.rig.start()
        # receiver
        self.receiver_port = free_port()
        rlog = (self.work / "receiver.log").open("ab")
        self._logs.append(rlog)
        self.receiver = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "receiver", "--db", str(self.work / "receiver.duckdb"),
            "--port", str(self.receiver_port), "--token", f"{GATEWAY_ID}={TOKEN}", "--log-level", "warning",
            env=child_env(), stdin=asyncio.subprocess.DEVNULL, stdout=rlog, stderr=rlog,
        )
        await wait_port(self.receiver_port, self.receiver, "receiver")
        from hil_tests.powercut_relay import Relay

        self.relay = Relay(self.receiver_port)
        relay_port = self.relay.start()
        self.cloud_proxy = FaultProxy("127.0.0.1", 0, "127.0.0.1", relay_port)
        await self.cloud_proxy.start()
        devices = self.rig.devices()
        proxied: dict[tuple[str, int], int] = {}
        for ep in devices.values():
            key = (ep.host, ep.port)
            if key not in self.proxies:
                px = FaultProxy("127.0.0.1", 0, ep.host, ep.port)
                await px.start()
                self.proxies[key] = px
                proxied[key] = px.port
        self.panel_port = free_port()
        links_toml = getattr(self.rig, "links_toml", None)
        extra = links_toml() if callable(links_toml) else ""
        text = build_gateway_config(
            sc, self.data_dir, self.panel_port, self.cloud_proxy.port, devices, proxied,
            self.rig.protection_endpoint(), self.scale, extra,
        )
        self.config_path.write_text(text, encoding="utf-8")
        from hil_tests.panel_access import viewer_token

        self.token = await asyncio.to_thread(viewer_token, self.data_dir)
        self._http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.panel_port}",
                                       headers={"Authorization": f"Bearer {self.token}"}, timeout=2.0)
        await self._start_gateway()
        d.t0_mono_ns = time.monotonic_ns()
        self._tasks.append(asyncio.create_task(self._sample_status(), name="hil-status"))
        self.progress(f"  gateway up (panel :{self.panel_port}); devices {', '.join(devices) or '-'}; "
                      f"time scale {self.scale:g}")

    async def _start_gateway(self) -> None:
        glog = (self.work / "gateway.log").open("ab")
        self._logs.append(glog)
        self.data.gateway_runs += 1
        glog.write(f"===== run {self.data.gateway_runs} =====\n".encode())
        glog.flush()
        self.gateway = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "run", "-c", str(self.config_path),
            env=child_env(), stdin=asyncio.subprocess.DEVNULL, stdout=glog, stderr=glog,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.gateway.returncode is not None:
                raise RuntimeError(f"gateway exited with code {self.gateway.returncode} during start-up; "
                                   f"see {self.work / 'gateway.log'}")
            st = await self.get_status()
            if st is not None:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"gateway did not answer on its panel within {START_TIMEOUT_S:.0f} s")

    async def get_status(self) -> dict[str, Any] | None:
        return await self.get_json("/api/status")

    async def get_json(self, path: str) -> dict[str, Any] | None:
        if self._http is None:
            return None
        try:
            r = await self._http.get(path)
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        try:
            body: dict[str, Any] = r.json()
        except ValueError:
            return None
        return body

    async def _sample_status(self) -> None:
        while True:
            t = time.monotonic_ns()
            st = await self.get_status() if not self._gateway_down.is_set() else None
            self.data.status.append(self._parse_status(t, st))
            if st is not None and st.get("protection"):
                self.data.protection_status = st["protection"]
            await asyncio.sleep(STATUS_PERIOD_S)

    @staticmethod
    def _parse_status(t: int, st: dict[str, Any] | None) -> StatusSample:
        if st is None:
            return StatusSample(t, False)
        sinks = st.get("sinks") or []
        s0 = sinks[0] if sinks else {}
        store = st.get("store") or {}
        return StatusSample(
            t, True,
            backlog=int(s0["backlog"]) if s0.get("backlog") is not None else None,
            acked=int(s0["last_ack_seq"]) if s0.get("last_ack_seq") is not None else None,
            last_seq=int(store["last_seq"]) if store.get("last_seq") is not None else None,
            queued=int(store["queued_rows"]) if store.get("queued_rows") is not None else None,
            devices={str(x.get("device")): str(x.get("state")) for x in st.get("devices") or []},
            sink_state=str(s0.get("state", "")),
        )

    # ------------------------------------------------------------------------------------------------ timeline
    async def _timeline(self) -> None:
        sc, d = self.sc, self.data
        t0 = d.t0_mono_ns
        for a in sc.actions:
            rec = ActionRecord(a, planned_s=a.t * self.scale)
            d.actions.append(rec)
        for rec in d.actions:
            due = t0 + int(rec.planned_s * 1e9)
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            await self._do(rec)
            rel = (time.monotonic_ns() - t0) / 1e9
            state = rec.status if rec.status != "done" else "ok"
            why = f" — {rec.reason}" if rec.reason else ""
            self.progress(f"  t={rel:7.2f}s action {rec.action.id}: {rec.action.describe()} [{state}]{why}")
        end = t0 + int(sc.duration_s * self.scale * 1e9)
        # durations that outlast the timeline still end before the scenario does
        while True:
            remaining = (end - time.monotonic_ns()) / 1e9
            if remaining <= 0:
                break
            await asyncio.sleep(min(remaining, 0.5))
        if self._restore_tasks:
            await asyncio.gather(*self._restore_tasks, return_exceptions=True)

    def _later(self, delay_s: float, fn: Callable[[], Any], rec: ActionRecord) -> None:
        async def run() -> None:
            await asyncio.sleep(delay_s)
            try:
                res = fn()
                if asyncio.iscoroutine(res):
                    res = await res
                rec.end_mono_ns = int(res) if isinstance(res, int) and res > 0 else time.monotonic_ns()
                rel = (rec.end_mono_ns - self.data.t0_mono_ns) / 1e9
                self.progress(f"  t={rel:7.2f}s action {rec.action.id}: ended")
            except Exception as e:
                rec.detail += f" restore failed: {e!r}"

        self._restore_tasks.append(asyncio.create_task(run()))

    async def _do(self, rec: ActionRecord) -> None:
        a, rig = rec.action, self.rig
        p = a.params
        cap = ACTION_CAPABILITY[a.type]
        if cap is not None and cap not in self.data.capabilities:
            rec.status, rec.reason = "skipped", f"rig {rig.name!r} cannot do {cap!r}"
            if a.type == "clock_jump":
                rec.reason += ("; the gateway's own wall clock cannot be moved without privileges here and the "
                               "product has no clock-offset setting")
            return
        dev_name = str(p.get("name", "")) if a.type == "device" else ""
        if a.type == "network" and str(p.get("target", "")).startswith("device:"):
            dev_name = str(p["target"]).split(":", 1)[1]
        if dev_name and dev_name not in rig.devices():
            rec.status = "skipped"
            rec.reason = f"rig {rig.name!r} has no device {dev_name!r} (has: {', '.join(rig.devices()) or '-'})"
            return
        dur = a.duration_s
        dur_scaled = None if dur is None else dur * self.scale
        try:
            if a.type == "fault":
                rec.mono_ns = rig.inject_fault(
                    str(p["feeder"]), str(p["kind"]), phases=str(p.get("phases", "abc")),
                    current_a=float(p["current_a"]) if "current_a" in p else None,
                    multiple=float(p["multiple"]) if "multiple" in p else None)
                if dur_scaled is not None:
                    feeder = str(p["feeder"])
                    self._later(dur_scaled, lambda: rig.clear_fault(feeder), rec)
            elif a.type == "clear_fault":
                rec.mono_ns = rig.clear_fault(str(p["feeder"]))
            elif a.type == "frequency":
                rec.mono_ns = rig.set_frequency(float(p["hz"]), float(p.get("rocof", 0.0)))
                if dur_scaled is not None:
                    self._later(dur_scaled, lambda: rig.set_frequency(50.0, 0.0), rec)
            elif a.type == "voltage":
                feeder = str(p["feeder"])
                rec.mono_ns = rig.set_voltage(feeder, float(p["pu"]))
                if dur_scaled is not None:
                    self._later(dur_scaled, lambda: rig.set_voltage(feeder, 1.0), rec)
            elif a.type == "device":
                name = str(p["name"])
                rec.mono_ns = rig.device_fault(name, str(p["mode"]), float(p.get("delay_s", 0.0)))
                if dur_scaled is not None:
                    self._later(dur_scaled, lambda: rig.device_fault(name, "ok"), rec)
            elif a.type == "network":
                await self._network(rec, dur_scaled)
            elif a.type == "power_cut":
                await self._power_cut(rec)
            elif a.type == "close_breaker":
                rig.close_breaker(str(p["feeder"]))
                rec.mono_ns = time.monotonic_ns()
            elif a.type == "clock_jump":
                jump = getattr(rig, "jump_clock", None)
                if not callable(jump):
                    rec.status, rec.reason = "skipped", f"rig {rig.name!r} has no jump_clock()"
                    return
                rec.mono_ns = int(jump(str(p.get("device", "")), float(p["offset_s"])))
                rec.detail = ("device clock moved; the gateway's own clock is not (no privileges, no "
                              "clock-offset setting in the product)")
            elif a.type == "disk_fill":
                await self._disk_fill(rec)
            elif a.type == "wait_until":
                await self._wait_until(rec)
            else:  # pragma: no cover - the scenario parser refuses unknown types
                raise ValueError(a.type)
        except NotImplementedError as e:  # the rig has the capability but not this variant of it
            rec.status, rec.reason = "skipped", f"rig {rig.name!r}: {e}"
            return
        except Exception as e:
            rec.status, rec.reason = "failed", f"{type(e).__name__}: {e}"
            return
        if rec.status == "pending":
            rec.status = "done"
        if rec.mono_ns == 0:
            rec.mono_ns = time.monotonic_ns()

    async def _network(self, rec: ActionRecord, dur_scaled: float | None) -> None:
        p = rec.action.params
        target, mode = str(p["target"]), str(p["mode"])
        params: dict[str, Any] = {}
        if mode == "latency":
            params["latency_ms"] = float(p.get("latency_ms", 500.0))
        if target == "cloud":
            if "cloud_outage" not in self.data.capabilities and "network" not in self.data.capabilities:
                rec.status, rec.reason = "skipped", "rig cannot cut the cloud link"
                return
            proxies = [self.cloud_proxy] if self.cloud_proxy is not None else []
        else:
            name = target.split(":", 1)[1]
            ep = self.rig.devices().get(name)
            if ep is None:
                raise ValueError(f"no device {name!r} on this rig (has: {', '.join(self.rig.devices())})")
            proxies = [self.proxies[(ep.host, ep.port)]]
            shared = [n for n, e in self.rig.devices().items() if (e.host, e.port) == (ep.host, ep.port)]
            if len(shared) > 1:
                rec.detail = f"the link is shared by {', '.join(shared)}: all of them are cut"
        for px in proxies:
            if px is not None:
                await px.set_mode(mode, **params)
        rec.mono_ns = time.monotonic_ns()
        if dur_scaled is not None:
            async def restore() -> int:
                for px in proxies:
                    if px is not None:
                        await px.set_mode("pass")
                return time.monotonic_ns()

            self._later(dur_scaled, restore, rec)

    async def _power_cut(self, rec: ActionRecord) -> None:
        p = rec.action.params
        gw = self.gateway
        if gw is None or gw.returncode is not None:
            raise RuntimeError("the gateway is not running")
        when = str(p.get("when", "now"))
        if when == "mid_upload":
            fired = asyncio.Event()
            loop = asyncio.get_running_loop()

            def fire() -> None:  # the relay's thread: kill at once, tell the loop
                with contextlib.suppress(ProcessLookupError):
                    os.kill(gw.pid, signal.SIGKILL)
                loop.call_soon_threadsafe(fired.set)

            self.relay.arm("request", fire, 0.0)
            try:
                await asyncio.wait_for(fired.wait(), 10.0)
                rec.detail = "SIGKILL while an upload was in flight (request sent, no answer yet)"
            except TimeoutError:
                self.relay.disarm()
                rec.detail = "no upload came within 10 s: SIGKILL at once (fallback)"
                with contextlib.suppress(ProcessLookupError):
                    gw.kill()
        else:
            with contextlib.suppress(ProcessLookupError):
                gw.kill()
            rec.detail = "SIGKILL"
        rec.mono_ns = time.monotonic_ns()
        self._gateway_down.set()
        rc = await gw.wait()
        self.data.gateway_exit_codes.append(rc)
        await asyncio.to_thread(self.relay.drop_all)
        delay = float(p.get("delay_s", 1.0)) * self.scale

        async def restart() -> int:
            await self._start_gateway()
            self._gateway_down.clear()
            return time.monotonic_ns()

        self._later(delay, restart, rec)

    async def _disk_fill(self, rec: ActionRecord) -> None:
        """Filler in the data directory: the effective budget is min(disk_budget_mb, usage + free − reserve),
        so filler only bites on a nearly full file system; with a small [storage] disk_budget_mb (the scenario
        sets it) the reclaim runs either way. The filler is written and kept until the end."""
        mb = float(rec.action.params["mb"])
        path = self.data_dir / "filler.bin"

        def write() -> None:
            chunk = b"\0" * (1 << 20)
            with path.open("wb") as f:
                for _ in range(int(mb)):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())

        await asyncio.to_thread(write)
        rec.mono_ns = time.monotonic_ns()
        rec.detail = f"{mb:g} MiB filler written next to the store"

    async def _wait_until(self, rec: ActionRecord) -> None:
        p = rec.action.params
        cond = str(p["condition"])
        timeout = float(p.get("timeout_s", 30.0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self._condition(cond):
                rec.mono_ns = time.monotonic_ns()
                rec.detail = f"{cond} after {(rec.mono_ns - self.data.t0_mono_ns) / 1e9:.2f} s"
                return
            await asyncio.sleep(0.1)
        rec.status, rec.reason = "failed", f"{cond} not reached within {timeout:g} s"

    async def _condition(self, cond: str) -> bool:
        if cond == "gateway_up":
            return not self._gateway_down.is_set() and await self.get_status() is not None
        st = self._parse_status(time.monotonic_ns(), await self.get_status())
        if cond == "backlog_zero":
            return st.ok and st.backlog == 0
        if cond == "all_devices_ok":
            return st.ok and bool(st.devices) and all(s == "ok" for s in st.devices.values())
        if cond == "breaker_open":
            feeder = str(self.sc.rig.get("protected_feeder", "feeder1"))
            return not self.rig.breaker_closed(feeder)
        return False

    # ------------------------------------------------------------------------------------------------ the end
    def _needs_drain(self) -> bool:
        return any(e.type in ("no_readings_lost",) for e in self.sc.expectations)

    async def _finish(self) -> None:
        d = self.data
        d.end_mono_ns = time.monotonic_ns()
        d.breaker_log = list(self.rig.breaker_log())
        d.samples = {k: list(v) for k, v in self.rig.samples().items()}
        if self._gateway_down.is_set():  # a power cut's restart is still pending
            await asyncio.gather(*self._restore_tasks, return_exceptions=True)
        gw = self.gateway
        if gw is not None and gw.returncode is not None:
            d.errors.append(f"the gateway exited by itself during the run (exit code {gw.returncode}); "
                            f"see {self.work / 'gateway.log'}")
        if self._needs_drain() and self.gateway is not None and self.gateway.returncode is None:
            for px in self.proxies.values():
                await px.set_mode("refuse")
            if self.cloud_proxy is not None:
                await self.cloud_proxy.set_mode("pass")
            self.progress("  draining: devices cut off, waiting for the receiver to acknowledge every row")
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            stable = 0
            last = None
            while time.monotonic() < deadline:
                st = self._parse_status(time.monotonic_ns(), await self.get_status())
                if st.ok and st.queued == 0 and st.acked is not None and st.acked == st.last_seq:
                    stable = stable + 1 if last == st.last_seq else 0
                    last = st.last_seq
                    if stable >= 3:
                        break
                await asyncio.sleep(0.3)
            else:
                d.errors.append(f"drain: the receiver did not acknowledge every row within {DRAIN_TIMEOUT_S:.0f} s")
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        # the panel's own view at the end, kept beside the run for people (the checks read the store itself)
        for path, name in (("/api/alarms", "alarms.json"), ("/api/protection", "protection.json"),
                           ("/api/status", "status.json")):
            body = await self.get_json(path)
            if body is not None:
                (self.work / name).write_text(json.dumps(body, indent=1, default=str), encoding="utf-8")
        rc = await stop_process(self.gateway, 30.0)
        if rc is not None:
            d.gateway_exit_codes.append(rc)
            if rc != 0:
                d.errors.append(f"the gateway's clean stop (SIGTERM) exited with code {rc}")
        self.gateway = None
        await stop_process(self.receiver)
        self.receiver = None
        await asyncio.to_thread(self._read_databases)

    def _read_databases(self) -> None:
        import duckdb

        d = self.data
        store = self.data_dir / STORE_NAME
        if not store.exists():
            d.errors.append("the gateway left no store file")
            return
        copy_dir = self.work / "store-copy"
        shutil.rmtree(copy_dir, ignore_errors=True)
        copy_dir.mkdir()
        copy = copy_dir / STORE_NAME
        shutil.copy2(store, copy)
        wal = Path(f"{store}.wal")
        if wal.exists():
            shutil.copy2(wal, Path(f"{copy}.wal"))
        try:
            con = duckdb.connect(str(copy))
            try:
                rows = con.execute(
                    "SELECT seq, ts, priority, kind, device, point, message, data FROM events ORDER BY seq"
                ).fetchall()
                for dev, max_ts, n in con.execute(
                    "SELECT split_part(p.name, '.', 1), max(r.ts), count(*) FROM readings r "
                    "JOIN points p ON p.id = r.point_id GROUP BY 1"
                ).fetchall():
                    d.device_ts[str(dev)] = {"max_ts": int(max_ts), "rows": int(n)}
            finally:
                con.close()
        except duckdb.Error as e:
            d.errors.append(f"store could not be read: {e}")
            return
        for seq, ts, prio, kind, dev, point, msg, data in rows:
            try:
                payload = json.loads(data) if data else {}
            except ValueError:
                payload = {}
            ev: dict[str, Any] = {
                "seq": int(seq), "ts": int(ts), "priority": int(prio), "kind": str(kind), "device": str(dev),
                "point": str(point), "message": str(msg), "data": payload if isinstance(payload, dict) else {}}
            mono = payload.get("mono_ns") if isinstance(payload, dict) else None
            ev["mono_ns"] = int(mono) if isinstance(mono, int) and mono > 0 else d.to_mono(int(ts))
            d.events.append(ev)
        if self._needs_drain():
            d.reconciliation = reconcile(copy, self.work / "receiver.duckdb")

    async def _teardown(self) -> None:
        for t in self._tasks + self._restore_tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._restore_tasks, return_exceptions=True)
        if self.gateway is not None and self.gateway.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.gateway.kill()
            await self.gateway.wait()
        await stop_process(self.receiver)
        if self._http is not None:
            await self._http.aclose()
        for px in self.proxies.values():
            await px.stop()
        if self.cloud_proxy is not None:
            await self.cloud_proxy.stop()
        if self.relay is not None:
            await asyncio.to_thread(self.relay.close)
        try:
            await self.rig.stop()
        except Exception as e:
            self.data.errors.append(f"rig stop failed: {e!r}")
        for f in self._logs:
            f.close()


def reconcile(store_copy: Path, receiver_db: Path) -> dict[str, Any]:
    """Every committed reading landed exactly once and unchanged (the power-cut harness's row comparison)."""
    import duckdb

    from hil_tests.powercut_rows import compare, new_rows, read_landed, read_redelivered, read_store, same_reading_twice

    out: dict[str, Any] = {}
    try:
        sc = read_store(store_copy, SINK)
    except duckdb.Error as e:
        return {"error": f"store: {e}"}
    try:
        landed = read_landed(receiver_db, GATEWAY_ID)
        redelivered_rows, _ = read_redelivered(receiver_db, GATEWAY_ID)
    except duckdb.Error as e:
        return {"error": f"receiver: {e}"}
    not_landed, changed = compare(sc.rows, landed)
    out["committed"] = len(sc.rows)
    out["landed"] = len(landed)
    out["not_landed"] = not_landed
    out["changed"] = changed
    out["phantom"] = len(new_rows(sc.rows, landed))
    out["duplicate_seqs"] = landed.duplicate_seqs()  # the same seq landed twice (the receiver's unique key)
    # the same device reading (point, ts, value) committed under two seqs: a device re-delivered it (a DNP3
    # event not confirmed, an IEC 61850 buffered report resent after a restart) and the gateway stored it again
    twice = same_reading_twice(sc.rows)
    out["stored_twice"] = twice
    if twice:
        import numpy as np

        keys = np.stack([sc.rows.point_id.astype(np.int64), sc.rows.ts, sc.rows.value_bits()], axis=1)
        _, first = np.unique(keys, axis=0, return_index=True)
        dup = np.ones(len(sc.rows), bool)
        dup[first] = False
        per: dict[str, int] = {}
        for pid in sc.rows.point_id[dup]:
            dev = sc.points.get(int(pid), "?").split(".", 1)[0]
            per[dev] = per.get(dev, 0) + 1
        out["stored_twice_by_device"] = per
    out["duplicates"] = out["duplicate_seqs"] + twice
    out["store_gaps"] = sc.rows.gaps()
    out["redelivered_rows"] = redelivered_rows
    out["watermark"] = sc.watermark
    out["last_seq"] = int(sc.rows.seq.max(initial=0))
    return out

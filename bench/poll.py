"""Polling benchmark: many simulated Modbus TCP devices, our LinkRunners vs a naive per-register loop.

Run from the repo root: ``.venv/bin/python -m bench.poll [--devices 200 --registers 100 --period 1.0]``.

Three processes, so each side's CPU and memory are its own:
- **sim**: one child serving every device on its own TCP port on 127.0.0.1 (the real pymodbus server, through
  :mod:`hil_tests.modbus_sim`), values changing every second.
- **gateway**: one child running the real daemon object, :class:`gateway.app.Gateway` (its
  :class:`storefwd.Store` with the ``[storage]`` defaults in a temp dir, its latest-value table, one
  :class:`gateway.runner.LinkRunner` per device -- each device its own link, as with real IEDs), every
  register a uint16 point of the same period; it first imports every module a configured gateway loads
  (uploader, status page), so its RSS is the real daemon's. No sink or panel runs. ``--no-store``: runners
  only, ``emit`` just counts (the poller-only figure). After ``--warmup`` s it measures for ``--duration`` s:
  readings delivered per second, poll lateness p99 (start − deadline), its RSS (sampled once a second) and CPU.
- **this process**: starts both, then (gateway stopped) measures the baseline: the same registers read one per
  request with pymodbus' synchronous client in a loop, as naive gateways do, for ``--baseline-s`` seconds.

The last stdout line is one JSON object: ``points_per_s``, ``lateness_p99_ms``, ``gateway_rss_mb`` (median
of the 1 s samples of the measuring window: the steady state), ``gateway_rss_peak_mb`` (VmHWM, whole run),
``gateway_rss_anon_mb``/``gateway_rss_file_mb`` (the same median split into private anonymous memory and
file-backed pages, i.e. mostly shared-library code), ``rss_after_imports_mb`` (right after the imports, before
any device or store; ``rss_start_mb`` is the child before them, with numpy), ``gateway_cpu_pct`` (of one core),
``baseline_points_per_s``, ``devices``, ``registers_per_device``, and context.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------------------- sim child


async def _sim_main(devices: int, registers: int) -> None:
    from hil_tests.modbus_sim import SimServer, SimUnit

    rng = np.random.default_rng(1)
    units = [SimUnit(1, holding=registers, input=1, coils=1, discrete=1) for _ in range(devices)]
    servers = [SimServer([u], tcp=("127.0.0.1", 0)) for u in units]
    for s in servers:
        await s.start()

    def tick(_t: float) -> None:  # new values once a second (so a deadband would have work to do)
        for u in units:
            u.holding[:] = rng.integers(0, 1000, registers, dtype=np.uint16)

    servers[0].every(1.0, tick)
    print(json.dumps({"ports": [s.port for s in servers]}), flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until the parent says so
    finally:
        for s in servers:
            await s.stop()


# ----------------------------------------------------------------------------------- gateway child


def _gateway_imports(store: bool) -> None:
    """Import what the child runs. With the store: every module a configured gateway loads (daemon, store,
    uploader with httpx/tenacity/pyarrow.compute, operator panel with starlette/uvicorn), so
    ``rss_after_imports_mb`` is the real daemon's. Without: the runners only (the poller-only figure)."""
    import gateway.runner

    if store:
        import cloud_sync.uploader  # noqa: F401
        import gateway.app
        import gateway.asgi_server
        import gateway.panel.app  # noqa: F401


async def _gateway_main(ports: list[int], registers: int, period: float, warmup: float, duration: float,
                        store_path: str | None, rss_start: float) -> dict[str, Any]:
    from gateway.config import DeviceConfig, GatewayConfig, LinkConfig, PanelConfig, PointConfig, StorageConfig
    from gateway.model import ReadingBatch
    from gateway.runner import LinkRunner

    _gateway_imports(store_path is not None)
    rss_imports = _rss_mb()
    points = tuple(PointConfig(name=f"r{i}", kind="holding", address=i, period_s=period)
                   for i in range(registers))
    links = [
        LinkConfig(name=f"l{k}", protocol="modbus_tcp", host="127.0.0.1", port=port,
                   devices=(DeviceConfig(name=f"d{k}", unit_id=1, timeout_s=1.0, points=points),))
        for k, port in enumerate(ports)
    ]
    delivered = [0]
    gw: Any = None
    if store_path:
        # the real daemon object: Store (with the [storage] defaults) + runners + latest-value table, no
        # panel/sinks running (their modules are imported above)
        from gateway.app import Gateway

        class _CountingGateway(Gateway):
            def _emit(self, batch: ReadingBatch) -> bool:
                ok = super()._emit(batch)
                if ok:
                    delivered[0] += len(batch)
                return ok

        cfg = GatewayConfig(id="bench", data_dir=Path(store_path).parent, links=tuple(links),
                            storage=StorageConfig(path=Path(store_path)), panel=PanelConfig(port=0))
        gw = _CountingGateway(cfg)
        await gw.start()
        runners: list[LinkRunner] = gw.runners
    else:
        names = [f"d{k}.r{i}" for k in range(len(ports)) for i in range(registers)]
        point_ids = {n: i for i, n in enumerate(names)}

        def emit(batch: ReadingBatch) -> bool:
            delivered[0] += len(batch)
            return True

        runners = [LinkRunner(link, point_ids, emit) for link in links]
        tasks = [asyncio.create_task(r.run()) for r in runners]
    await asyncio.sleep(warmup)
    for r in runners:
        r.reset_window()
    n0, c0, t0 = delivered[0], _cpu_s(), time.monotonic()
    samples: list[tuple[float, float, float]] = []  # (VmRSS, RssAnon, RssFile) once a second
    end = t0 + duration
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(1.0, left))
        samples.append((_rss_mb(), _rss_mb("RssAnon"), _rss_mb("RssFile")))
    n1, c1, t1 = delivered[0], _cpu_s(), time.monotonic()
    lateness = np.concatenate([r.lateness_ns() for r in runners])
    status = [s for r in runners for s in r.status()]
    refused = 0
    if gw is not None:
        refused = gw.emit_backpressure
        store_stats = gw.store.stats()
        await gw.stop()
    else:
        store_stats = {}
        for r in runners:
            r.stop()
        await asyncio.gather(*tasks)
    med = np.median(np.array(samples), axis=0) if samples else np.full(3, np.nan)
    return {
        "points_per_s": (n1 - n0) / (t1 - t0),
        "lateness_p99_ms": float(np.percentile(lateness, 99)) / 1e6 if lateness.size else float("nan"),
        "lateness_max_ms": float(lateness.max()) / 1e6 if lateness.size else float("nan"),
        "gateway_rss_mb": float(med[0]),
        "gateway_rss_anon_mb": float(med[1]),
        "gateway_rss_file_mb": float(med[2]),
        "gateway_rss_window_max_mb": max((s[0] for s in samples), default=float("nan")),
        "gateway_rss_peak_mb": _rss_mb("VmHWM"),
        "rss_start_mb": rss_start,
        "rss_after_imports_mb": rss_imports,
        "gateway_cpu_pct": 100.0 * (c1 - c0) / (t1 - t0),
        "polls": len(lateness),
        "missed_slots": sum(s["missed_slots"] for s in status),
        "timeouts": sum(s["timeouts"] for s in status),
        "errors": sum(s["errors"] for s in status),
        "store_refused": refused,
        "store_commits": int(store_stats.get("commits", 0)),
    }


# ---------------------------------------------------------------------------------------- baseline


def _baseline(ports: list[int], registers: int, seconds: float) -> float:
    """Registers per second read one per request by pymodbus' sync client, devices in turn (naive gateway)."""
    from pymodbus.client import ModbusTcpClient

    clients = [ModbusTcpClient("127.0.0.1", port=p, timeout=1.0, retries=0) for p in ports]
    try:
        for c in clients:
            c.connect()
        n = 0
        t0 = time.monotonic()
        deadline = t0 + seconds
        while time.monotonic() < deadline:
            for c in clients:
                for addr in range(registers):
                    rr = c.read_holding_registers(addr, count=1, device_id=1)
                    if not rr.isError():
                        n += 1
                if time.monotonic() >= deadline:
                    break
        return n / (time.monotonic() - t0)
    finally:
        for c in clients:
            c.close()


# -------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--registers", type=int, default=100, help="holding registers (points) per device")
    ap.add_argument("--period", type=float, default=1.0, help="poll period, seconds")
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--duration", type=float, default=25.0)
    ap.add_argument("--baseline-s", type=float, default=8.0)
    ap.add_argument("--no-store", dest="store", action="store_false",
                    help="runners only (poller-only figures); by default the child is the real gateway: "
                         "gateway.app.Gateway with its storefwd.Store in a temp dir")
    ap.add_argument("--role", choices=["main", "sim", "gateway"], default="main", help=argparse.SUPPRESS)
    ap.add_argument("--ports", default="", help=argparse.SUPPRESS)
    ap.add_argument("--store-path", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.role == "sim":
        asyncio.run(_sim_main(a.devices, a.registers))
        return 0
    if a.role == "gateway":
        rss_start = _rss_mb()
        gw_ports = [int(p) for p in a.ports.split(",")]
        res = asyncio.run(_gateway_main(gw_ports, a.registers, a.period, a.warmup, a.duration,
                                        a.store_path or None, rss_start))
        print(json.dumps(res), flush=True)
        return 0

    py = sys.executable
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    common = ["--devices", str(a.devices), "--registers", str(a.registers)]
    sim = subprocess.Popen([py, "-m", "bench.poll", "--role", "sim", *common],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert sim.stdout is not None and sim.stdin is not None
        line = sim.stdout.readline()
        if not line:
            raise SystemExit("simulator failed to start")
        ports: list[int] = json.loads(line)["ports"]
        with tempfile.TemporaryDirectory() as tmp:
            gw_args = [py, "-m", "bench.poll", "--role", "gateway", *common, "--period", str(a.period),
                       "--warmup", str(a.warmup), "--duration", str(a.duration),
                       "--ports", ",".join(map(str, ports))]
            if a.store:
                gw_args += ["--store-path", str(Path(tmp) / "bench.duckdb")]
            gw = subprocess.run(gw_args, stdout=subprocess.PIPE, text=True, env=env, check=True,
                                timeout=a.warmup + a.duration + 60)
        result = json.loads(gw.stdout.strip().splitlines()[-1])
        baseline = _baseline(ports, a.registers, a.baseline_s)
        sim.stdin.write("stop\n")
        sim.stdin.flush()
        sim.wait(10)
    finally:
        if sim.poll() is None:
            sim.terminate()
            sim.wait(10)
    out = {
        "points_per_s": round(result["points_per_s"], 1),
        "lateness_p99_ms": round(result["lateness_p99_ms"], 3),
        "gateway_rss_mb": round(result["gateway_rss_mb"], 1),
        "gateway_cpu_pct": round(result["gateway_cpu_pct"], 1),
        "baseline_points_per_s": round(baseline, 1),
        "devices": a.devices,
        "registers_per_device": a.registers,
        "period_s": a.period,
        "expected_points_per_s": a.devices * a.registers / a.period,
        "lateness_max_ms": round(result["lateness_max_ms"], 3),
        "gateway_rss_peak_mb": round(result["gateway_rss_peak_mb"], 1),
        "gateway_rss_window_max_mb": round(result["gateway_rss_window_max_mb"], 1),
        "gateway_rss_anon_mb": round(result["gateway_rss_anon_mb"], 1),
        "gateway_rss_file_mb": round(result["gateway_rss_file_mb"], 1),
        "rss_after_imports_mb": round(result["rss_after_imports_mb"], 1),
        "rss_start_mb": round(result["rss_start_mb"], 1),
        "polls": result["polls"],
        "missed_slots": result["missed_slots"],
        "timeouts": result["timeouts"],
        "errors": result["errors"],
        "store": a.store,
        "store_refused": result["store_refused"],
        "store_commits": result["store_commits"],
        "duration_s": a.duration,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

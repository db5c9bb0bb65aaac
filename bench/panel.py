"""Operator panel benchmark: page times with 10,000 really polled points, and live-update delay.

Run from the repo root: ``.venv/bin/python -m bench.panel [--devices 100 --registers 100 --requests 40]``.

Three processes, so the simulator's CPU is not the gateway's:
- **sim**: ``bench.poll``'s simulator child: ``--devices`` Modbus TCP devices (the real pymodbus server, through
  :mod:`hil_tests.modbus_sim`), each ``--registers`` holding registers, new values every second.
- **gateway**: the real :class:`gateway.app.Gateway` (store in a temp dir, one link per device, every register a
  point polled every second: devices × registers points, 10,000 by default; no ``[[panel.bays]]``, so the
  overview shows one tile per device) and the panel app on 127.0.0.1 (plain HTTP), wrapped in a small ASGI
  timer that records each request's **server time** (call to last body byte sent). A viewer user is created.
- **this process**: logs in (``POST /login``; with an API token when the login form cannot be used), waits until
  every point has a value, then requests ``GET /`` (overview), ``GET /points?format=json`` (the full columnar
  table) and ``GET /points`` (the HTML shell) ``--requests`` times each, one at a time, over loopback with httpx;
  then reads ``/api/stream?values=1`` for ``--sse-s`` seconds: for every reading in every ``values`` event after
  the first (which is all points), ``arrival − ts``, where ``ts`` is the reading's timestamp, taken by the
  runner when the Modbus response arrived, the moment it goes into the latest-value table. The stream sends
  changes every 0.5 s, so the delay is about a quarter second on average by design.

The last stdout line is one JSON object: ``overview_ms``, ``points_ms``, ``sse_update_ms`` (medians; server time
for the two pages), ``overview_p95_ms``, ``points_p95_ms``, ``sse_update_p95_ms``, ``points_shell_ms`` (+p95),
the same pages' round-trip times seen by the client (``*_client_ms``), ``points_json_bytes``,
``values_event_bytes`` (median size of a values event), ``points`` (how many points the gateway polls), ``auth``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PASSWORD = "bench panel password"
USER = "bench"


# ----------------------------------------------------------------------------------------- gateway child
class _Timer:
    """ASGI wrapper: server time of each request (call → last body byte sent), by path (``?json`` appended for
    ``format=json``)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.samples: dict[str, list[float]] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = scope.get("path", "") + ("?json" if b"format=json" in scope.get("query_string", b"") else "")
        t0 = time.perf_counter()

        async def timed_send(message: dict[str, Any]) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.samples.setdefault(key, []).append((time.perf_counter() - t0) * 1e3)

        await self.app(scope, receive, timed_send)


async def _gateway_main(ports: list[int], registers: int, period: float, data_dir: str) -> None:
    from gateway.app import Gateway
    from gateway.asgi_server import AsgiServer
    from gateway.config import DeviceConfig, GatewayConfig, LinkConfig, PanelConfig, PointConfig, StorageConfig
    from gateway.panel.app import build_panel_app, build_panel_context
    from gateway.panel.live import close_streams
    from gateway.panel.roles import Role

    points = tuple(PointConfig(name=f"r{i}", kind="holding", address=i, period_s=period) for i in range(registers))
    links = tuple(
        LinkConfig(name=f"l{k}", protocol="modbus_tcp", host="127.0.0.1", port=port,
                   devices=(DeviceConfig(name=f"d{k:03d}", unit_id=1, timeout_s=1.0, points=points),))
        for k, port in enumerate(ports)
    )
    cfg = GatewayConfig(id="bench-panel", data_dir=Path(data_dir), links=links,
                        storage=StorageConfig(path=Path(data_dir) / "bench.duckdb"),
                        panel=PanelConfig(port=0, tls=False))
    async with Gateway(cfg) as gw:
        ctx = build_panel_context(gw, tls=False)
        ctx.users.add(USER, PASSWORD, Role.VIEWER)
        token = ctx.users.issue_api_token(USER)
        timer = _Timer(build_panel_app(gw, ctx))
        srv = AsgiServer(timer)
        await srv.start()
        print(json.dumps({"url": srv.url, "token": token, "points": len(gw.points)}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until the parent says so
        close_streams(ctx)
        await srv.stop()
    print(json.dumps({"server_ms": timer.samples}), flush=True)


# -------------------------------------------------------------------------------------------- client side
def _stats(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    a = np.asarray(xs)
    return round(float(np.median(a)), 2), round(float(np.percentile(a, 95)), 2)


def _login(c: Any, token: str) -> str:
    try:
        r = c.post("/login", data={"username": USER, "password": PASSWORD, "next": "/"})
        if r.status_code == 303:
            return "session"
    except Exception:  # the login form needs python-multipart; fall back to the API token
        pass
    c.cookies.clear()
    c.headers["Authorization"] = f"Bearer {token}"
    return "token"


def _wait_for_values(c: Any, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        d = c.get("/api/points").json()
        if d["count"] and all(t > 0 for t in d["ts_us"]):
            return int(d["count"])
        if time.monotonic() > deadline:
            missing = sum(t == 0 for t in d["ts_us"])
            raise SystemExit(f"{missing} of {d['count']} points still without a value after {timeout_s} s")
        time.sleep(0.5)


def _measure(c: Any, path: str, n: int) -> tuple[list[float], int]:
    times = []
    size = 0
    for _ in range(n):
        t0 = time.perf_counter()
        r = c.get(path, headers={"Accept": "text/html"} if "format=json" not in path else {})
        body = r.content
        times.append((time.perf_counter() - t0) * 1e3)
        if r.status_code != 200:
            raise SystemExit(f"GET {path}: {r.status_code} {r.text[:200]}")
        size = len(body)
    return times, size


def _sse_delays(c: Any, seconds: float) -> tuple[list[float], list[int], int]:
    """(arrival − ts) in ms for every reading in every values event after the first; event sizes; events."""
    delays: list[float] = []
    sizes: list[int] = []
    events = 0
    end = time.monotonic() + seconds
    with c.stream("GET", "/api/stream?values=1", timeout=seconds + 30) as r:
        if r.status_code != 200:
            raise SystemExit(f"stream: {r.status_code}")
        event = ""
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "values":
                arrival = time.time_ns()
                events += 1
                if events > 1:  # the first is every point, not a change
                    sizes.append(len(line))
                    d = json.loads(line[5:])
                    ts = np.asarray(d["ts"], dtype=np.int64)
                    delays.extend(((arrival - ts[ts > 0]) / 1e6).tolist())
            if time.monotonic() > end:
                break
    return delays, sizes, events


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--registers", type=int, default=100, help="holding registers (points) per device")
    ap.add_argument("--period", type=float, default=1.0, help="poll period, seconds")
    ap.add_argument("--requests", type=int, default=40, help="requests per page measured")
    ap.add_argument("--sse-s", type=float, default=10.0, help="seconds of live stream measured")
    ap.add_argument("--role", choices=["main", "gateway"], default="main", help=argparse.SUPPRESS)
    ap.add_argument("--ports", default="", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.role == "gateway":
        asyncio.run(_gateway_main([int(p) for p in a.ports.split(",")], a.registers, a.period, a.data_dir))
        return 0

    import httpx

    py = sys.executable
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]))
    sim = subprocess.Popen([py, "-m", "bench.poll", "--role", "sim", "--devices", str(a.devices), "--registers",
                            str(a.registers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    gw: subprocess.Popen[str] | None = None
    try:
        assert sim.stdout is not None and sim.stdin is not None
        line = sim.stdout.readline()
        if not line:
            raise SystemExit("simulator failed to start")
        ports: list[int] = json.loads(line)["ports"]
        with tempfile.TemporaryDirectory() as tmp:
            gw = subprocess.Popen([py, "-m", "bench.panel", "--role", "gateway", "--registers", str(a.registers),
                                   "--period", str(a.period), "--ports", ",".join(map(str, ports)),
                                   "--data-dir", tmp], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=env)
            assert gw.stdout is not None and gw.stdin is not None
            line = gw.stdout.readline()
            if not line:
                raise SystemExit("gateway failed to start")
            info = json.loads(line)
            with httpx.Client(base_url=info["url"], timeout=30.0) as c:
                auth = _login(c, info["token"])
                count = _wait_for_values(c, 60.0)
                for path in ("/", "/points?format=json", "/points"):  # warm up
                    _measure(c, path, 3)
                ov_client, _ = _measure(c, "/", a.requests)
                pts_client, pts_bytes = _measure(c, "/points?format=json", a.requests)
                shell_client, _ = _measure(c, "/points", a.requests)
                delays, sizes, n_events = _sse_delays(c, a.sse_s)
            gw.stdin.write("stop\n")
            gw.stdin.flush()
            out_lines = gw.stdout.read().strip().splitlines()
            gw.wait(30)
        server: dict[str, list[float]] = json.loads(out_lines[-1])["server_ms"]
        sim.stdin.write("stop\n")
        sim.stdin.flush()
        sim.wait(10)
    finally:
        for p in (gw, sim):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(10)
    k = a.requests  # the measured requests are the last ones of each page (after the warm-up)
    ov, ov95 = _stats(server.get("/", [])[-k:])
    pj, pj95 = _stats(server.get("/points?json", [])[-k:])
    ps, ps95 = _stats(server.get("/points", [])[-k:])
    sse, sse95 = _stats(delays)
    ovc, ovc95 = _stats(ov_client)
    pjc, pjc95 = _stats(pts_client)
    psc, _ = _stats(shell_client)
    out = {
        "overview_ms": ov,
        "points_ms": pj,
        "sse_update_ms": sse,
        "overview_p95_ms": ov95,
        "points_p95_ms": pj95,
        "sse_update_p95_ms": sse95,
        "points_shell_ms": ps,
        "points_shell_p95_ms": ps95,
        "overview_client_ms": ovc,
        "overview_client_p95_ms": ovc95,
        "points_client_ms": pjc,
        "points_client_p95_ms": pjc95,
        "points_shell_client_ms": psc,
        "points_json_bytes": pts_bytes,
        "values_event_bytes": int(np.median(sizes)) if sizes else 0,
        "values_events": n_events,
        "sse_samples": len(delays),
        "points": count,
        "devices": a.devices,
        "registers_per_device": a.registers,
        "period_s": a.period,
        "requests": a.requests,
        "auth": auth,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

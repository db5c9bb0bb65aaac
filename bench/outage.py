"""Outage benchmark: how fast a backlog drains after the receiver comes back, and what the drain does to polling.

``.venv/bin/python -m bench.outage [--devices 200 --points 100 --seconds 60] [--poll-devices 100]``; the last stdout
line is one JSON object. Data and receiver are those of :mod:`bench.sync` (``devices × points × seconds`` readings of
scaled registers; the reference receiver, DuckDB, in a separate process on loopback; a fresh receiver database for
every phase). The store is filled once and copied for each phase, so every phase starts from the same backlog.

(a) **Drain rate after an outage**, three phases with the same backlog, the same uploader settings and receiver:

- ``sync``: the backlog drained straight to the receiver (:func:`bench.sync.drain`: the sync benchmark's figure,
  measured in this run) → ``sync_drain_rows_per_s``.
- ``proxy``: the same through the fault proxy (:mod:`hil_tests.faultproxy`, in a thread of this process) in mode
  ``pass``: the proxy's own cost → ``proxy_drain_rows_per_s``.
- ``outage``: the uploader starts while the receiver is unreachable (``--outage-kind``, default ``blackhole``: connects
  hang) and retries for ``--outage-s``; then the link is restored. ``drain_rows_per_s`` = backlog / (caught up −
  restore), which includes the wait for the next retry (at most ``--retry-max-s``) and the reconnect;
  ``first_ack_after_restore_s``; ratios ``drain_ratio_vs_sync`` and ``drain_ratio_vs_proxy``.

(b) **Polling during the drain**: the real :class:`gateway.app.Gateway` (store, runners, uploader) polls
``--poll-devices`` simulated Modbus TCP devices (pymodbus, each on its own port, in a child process; 100 holding
registers each, the first devices of the data set, so their point ids are the backlog's) every ``--period`` s, its
store opened on a copy of the filled one (the backlog), its sink through the proxy. Windows:

- ``outage``: receiver black-holed, backlog waiting, the uploader retrying (``--window-s``);
- ``drain``: from restore until the uploader caught up with the backlog;
- ``caught_up``: no backlog, live sync only (``--window-s``).

For each: poll lateness (start − deadline) p50/p99/max in ms over every poll of the window, polls, missed slots,
timeouts; then ``drain_vs_caught_up_p99_ratio``/``_max_ratio``, the gateway's drain rate while polling, and the
store's ``rejected_offers``. (b) runs once per ``--receiver-nice`` level (default ``19,0``): at 19 the receiver
process yields the 2 cores to the gateway, as if it ran on another machine (the deployment); at 0 it competes with
the gateway for them (everything on one small box). The top-level lateness keys are those of the first level;
``polling`` holds each run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.sync import GATEWAY, TOKEN, drain, point_infos, receiver_process, seconds_of_data
from cloud_sync.uploader import Uploader
from gateway.config import SinkConfig
from hil_tests.faultproxy import FaultProxy, ThreadedFaultProxy
from hil_tests.net import free_port
from storefwd.store import Store

SINK = "bench"


class _Lines(logging.Handler):
    """Keeps the uploader's progress lines ("backlog … rows left … ETA …")."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.progress: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "rows left" in msg:
            self.progress.append(msg)


@contextlib.contextmanager
def _proxy(port: int, mode: str) -> Iterator[ThreadedFaultProxy]:
    with FaultProxy("127.0.0.1", 0, "127.0.0.1", port, mode=mode).in_thread() as proxy:
        yield proxy


def _sink(url: str, a: argparse.Namespace) -> SinkConfig:
    return SinkConfig(name=SINK, url=url, token=TOKEN, batch_size=a.batch_size, max_interval_s=1.0,
                      timeout_s=a.timeout_s, retry_max_s=a.retry_max_s, progress_log_s=1.0)  # fmt: skip


def _outage_params(kind: str) -> dict[str, Any]:
    return {"latency_ms": 60_000.0} if kind == "latency" else {}


async def _drain_after_outage(store: Store, proxy: ThreadedFaultProxy, a: argparse.Namespace, total: int,
                              lines: _Lines) -> dict[str, Any]:  # fmt: skip
    up = Uploader(store, _sink(proxy.url("http", "/v1/batches"), a), GATEWAY)
    task = asyncio.create_task(up.run())
    try:
        await asyncio.wait_for(up.wait_state("retrying"), a.outage_s + 60)
        await asyncio.sleep(a.outage_s)  # the outage lasts this long (a scenario duration, not a wait for an outcome)
        during = up.status()
        await asyncio.to_thread(proxy.set_mode, "pass")
        t0 = time.perf_counter()
        first_ack: list[tuple[float, int]] = []  # (when, watermark) of the first ack after restore

        async def watch_first_ack() -> None:
            while (wm := store.watermark(SINK)) == 0:
                await asyncio.sleep(0.005)
            first_ack.append((time.perf_counter(), wm))

        watcher = asyncio.create_task(watch_first_ack())
        await up.wait_acked(total)
        t1 = time.perf_counter()
        await watcher
    finally:
        up.stop()
        await task
    return {
        "drain_s": t1 - t0,
        "first_ack_after_restore_s": first_ack[0][0] - t0,
        "after_first_ack_rows_per_s": (
            (total - first_ack[0][1]) / (t1 - first_ack[0][0]) if total > first_ack[0][1] else None
        ),
        "retries": during["retries"],
        "state_during": during["state"],
        "last_error_during": during["last_error"],
        "eta_during": during["eta_s"],
        "progress_lines": len(lines.progress),
        "progress_example": lines.progress[len(lines.progress) // 2] if lines.progress else "",
    }


async def _drain_through(store: Store, url: str, a: argparse.Namespace, total: int) -> float:
    up = Uploader(store, _sink(url, a), GATEWAY)
    t0 = time.perf_counter()
    task = asyncio.create_task(up.run())
    try:
        await up.wait_acked(total)
        return time.perf_counter() - t0
    finally:
        up.stop()
        await task


# ------------------------------------------------------------------------------------------------ (b) polling
def _lateness(runners: list[Any]) -> dict[str, float]:
    lat = np.concatenate([r.lateness_ns() for r in runners]) / 1e6
    st = [s for r in runners for s in r.status()]
    out: dict[str, float] = {"polls": int(lat.size), "missed_slots": sum(int(s["missed_slots"]) for s in st),
           "timeouts": sum(int(s["timeouts"]) for s in st)}  # fmt: skip
    if lat.size:
        out |= {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                "max_ms": float(lat.max())}  # fmt: skip
    return out


def _window(runners: list[Any], base: dict[str, int]) -> dict[str, float]:
    res = _lateness(runners)
    res["missed_slots"] -= base["missed_slots"]
    res["timeouts"] -= base["timeouts"]
    return res


def _start_window(runners: list[Any]) -> dict[str, int]:
    for r in runners:
        r.reset_window()
    st = [s for r in runners for s in r.status()]
    return {"missed_slots": sum(int(s["missed_slots"]) for s in st), "timeouts": sum(int(s["timeouts"]) for s in st)}


async def _polling(ports: list[int], store_path: Path, proxy: ThreadedFaultProxy, a: argparse.Namespace,
                   total: int) -> dict[str, Any]:  # fmt: skip
    from bench.sync import POINT_NAMES, UNITS
    from gateway.app import Gateway
    from gateway.config import DeviceConfig, GatewayConfig, LinkConfig, PanelConfig, PointConfig, StorageConfig

    links = []
    for k, port in enumerate(ports):
        points = tuple(PointConfig(name=f"{POINT_NAMES[p % 10]}_{p // 10}", kind="holding", address=p,
                                   unit=UNITS[p % 10], period_s=a.period) for p in range(a.points))  # fmt: skip
        dev = DeviceConfig(name=f"feeder{k:03d}", unit_id=1, timeout_s=1.0, points=points)
        links.append(LinkConfig(name=f"l{k}", protocol="modbus_tcp", host="127.0.0.1", port=port, devices=(dev,)))
    cfg = GatewayConfig(id=GATEWAY, data_dir=store_path.parent, links=tuple(links),
                        storage=StorageConfig(path=store_path),
                        sinks=(_sink(proxy.url("http", "/v1/batches"), a),), panel=PanelConfig(port=0))  # fmt: skip
    gw = Gateway(cfg)
    await gw.start()
    try:
        assert gw.store is not None
        store, up, runners = gw.store, gw.uploaders[0], list(gw.runners)
        await asyncio.sleep(a.warmup)  # runners connect, first polls (bench warm-up)
        base = _start_window(runners)
        await asyncio.sleep(a.window_s)  # measuring window: outage, backlog waiting
        outage = _window(runners, base) | {"backlog_rows": store.backlog(SINK), "sink_state": up.status()["state"]}

        await asyncio.to_thread(proxy.set_mode, "pass")
        backlog_end = store.last_seq()
        base = _start_window(runners)
        t0 = time.perf_counter()
        await up.wait_acked(backlog_end)
        t1 = time.perf_counter()
        drain = _window(runners, base) | {"drain_s": t1 - t0, "drained_rows": backlog_end,
                                          "rows_per_s": backlog_end / (t1 - t0)}  # fmt: skip

        base = _start_window(runners)
        await asyncio.sleep(a.window_s)  # measuring window: caught up, live sync only
        caught_up = _window(runners, base) | {"backlog_rows": store.backlog(SINK)}
        rejected = int(store.stats()["rejected_offers"])
    finally:
        await gw.stop()
    return {"outage": outage, "drain": drain, "caught_up": caught_up, "rejected_offers": rejected,
            "emit_backpressure": gw.emit_backpressure, "backlog_at_start": total}  # fmt: skip


def _start_sim(devices: int, registers: int, env: dict[str, str]) -> tuple[subprocess.Popen[str], list[int]]:
    sim = subprocess.Popen([sys.executable, "-m", "bench.poll", "--role", "sim", "--devices", str(devices),
                            "--registers", str(registers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True, env=env)  # fmt: skip
    assert sim.stdout is not None
    line = sim.stdout.readline()
    if not line:
        sim.kill()
        raise SystemExit("simulator failed to start")
    return sim, list(json.loads(line)["ports"])


def _stop_sim(sim: subprocess.Popen[str]) -> None:
    try:
        if sim.stdin is not None:
            sim.stdin.write("stop\n")
            sim.stdin.flush()
        sim.wait(10)
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait(10)


def _phase_a(a: argparse.Namespace, total: int, copy: Callable[[str], Path], lines: _Lines) -> dict[str, Any]:
    """(a): the backlog drained straight (bench.sync), through the proxy, and after an outage through the proxy."""
    tmpd = copy("sync").parent.parent
    with (
        Store(tmpd / "sync" / "gw.duckdb") as store,
        receiver_process(str(tmpd / "sync" / "rx.duckdb"), free_port()) as url,
    ):
        elapsed, _, stats = asyncio.run(drain(store, url, a.batch_size, total))
        assert stats["rows"] == total, stats
    sync_rate = total / elapsed
    print(f"sync drain: {sync_rate:,.0f} rows/s", flush=True)
    with (
        Store(copy("proxy")) as store,
        receiver_process(str(tmpd / "proxy" / "rx.duckdb"), free_port()) as url,
        _proxy(int(url.rsplit(":", 1)[1]), "pass") as proxy,
    ):
        proxy_rate = total / asyncio.run(_drain_through(store, proxy.url("http", "/v1/batches"), a, total))
    print(f"drain through the proxy: {proxy_rate:,.0f} rows/s", flush=True)
    with (
        Store(copy("outage")) as store,
        receiver_process(str(tmpd / "outage" / "rx.duckdb"), free_port()) as url,
        _proxy(int(url.rsplit(":", 1)[1]), "pass") as proxy,
    ):
        proxy.set_mode(a.outage_kind, **_outage_params(a.outage_kind))
        res = asyncio.run(_drain_after_outage(store, proxy, a, total, lines))
    rate = total / res["drain_s"]
    print(f"drain after a {a.outage_s:.0f} s {a.outage_kind} outage: {rate:,.0f} rows/s", flush=True)
    return {
        "drain_rows_per_s": round(rate),
        "sync_drain_rows_per_s": round(sync_rate),
        "proxy_drain_rows_per_s": round(proxy_rate),
        "drain_ratio_vs_sync": round(rate / sync_rate, 3),
        "drain_ratio_vs_proxy": round(rate / proxy_rate, 3),
        "drain_rows_per_s_after_first_ack": (
            None if res["after_first_ack_rows_per_s"] is None else round(res["after_first_ack_rows_per_s"])
        ),
        "first_ack_after_restore_s": round(res["first_ack_after_restore_s"], 3),
        "backlog_rows": total,
        "outage_kind": a.outage_kind,
        "outage_s": a.outage_s,
        "retries_during_outage": res["retries"],
        "last_error_during_outage": res["last_error_during"],
        "progress_lines": res["progress_lines"],
        "progress_example": res["progress_example"],
    }


def _phase_b(a: argparse.Namespace, total: int, copy: Callable[[str], Path], ports: list[int],
             nice: int) -> dict[str, Any]:  # fmt: skip
    """(b): the real Gateway polls while its backlog waits (outage), drains, and after it caught up."""
    store_path = copy(f"gw-nice{nice}")
    with (
        receiver_process(str(store_path.parent / "rx.duckdb"), free_port(), nice=nice) as url,
        _proxy(int(url.rsplit(":", 1)[1]), "blackhole") as proxy,
    ):
        poll = asyncio.run(_polling(ports, store_path, proxy, a, total))
    d, c, o = poll["drain"], poll["caught_up"], poll["outage"]
    res = {
        "lateness_drain_ms": {k: round(d[k], 3) for k in ("p50_ms", "p99_ms", "max_ms")},
        "lateness_caught_up_ms": {k: round(c[k], 3) for k in ("p50_ms", "p99_ms", "max_ms")},
        "lateness_outage_ms": {k: round(o[k], 3) for k in ("p50_ms", "p99_ms", "max_ms")},
        "drain_vs_caught_up_p99_ratio": round(d["p99_ms"] / c["p99_ms"], 3),
        "drain_vs_caught_up_max_ratio": round(d["max_ms"] / c["max_ms"], 3),
        "polls": {"outage": o["polls"], "drain": d["polls"], "caught_up": c["polls"]},
        "missed_slots": {"outage": o["missed_slots"], "drain": d["missed_slots"], "caught_up": c["missed_slots"]},
        "timeouts": o["timeouts"] + d["timeouts"] + c["timeouts"],
        "gateway_drain_rows_per_s": round(d["rows_per_s"]),
        "gateway_drain_s": round(d["drain_s"], 2),
        "gateway_drained_rows": d["drained_rows"],
        "rejected_offers": poll["rejected_offers"],
        "emit_backpressure": poll["emit_backpressure"],
    }
    print(f"polling, receiver nice {nice}: lateness p99 {res['lateness_drain_ms']['p99_ms']} ms draining, "
          f"{res['lateness_caught_up_ms']['p99_ms']} ms caught up", flush=True)  # fmt: skip
    return res


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.outage", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--devices", type=int, default=200, help="devices in the backlog data (as bench.sync)")
    ap.add_argument("--points", type=int, default=100, help="points per device (as bench.sync)")
    ap.add_argument("--seconds", type=int, default=60, help="seconds of data in the backlog (as bench.sync)")
    ap.add_argument("--batch-size", type=int, default=SinkConfig(name="-", url="-").batch_size)
    ap.add_argument("--outage-kind", choices=["blackhole", "refuse", "reset", "latency"], default="blackhole")
    ap.add_argument("--outage-s", type=float, default=5.0, help="outage length in phase (a)")
    ap.add_argument("--timeout-s", type=float, default=2.0, help="sink timeout_s")
    ap.add_argument("--retry-max-s", type=float, default=1.0, help="sink retry_max_s (bounds the wait after restore)")
    ap.add_argument("--poll-devices", type=int, default=100, help="simulated devices polled in (b); 0 skips (b)")
    ap.add_argument("--period", type=float, default=1.0, help="poll period in (b), seconds")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before the first window in (b)")
    ap.add_argument("--window-s", type=float, default=10.0, help="length of the outage and caught-up windows")
    ap.add_argument(
        "--receiver-nice",
        type=lambda v: [int(x) for x in v.split(",")],
        default="19,0",
        help="(b) runs once per nice level of the receiver process (comma-separated; the first gives the top-level "
        "figures): 19 leaves the CPU to the gateway as if the receiver ran on another machine, 0 makes it compete "
        "for the 2 cores",
    )
    ap.add_argument("--skip-drain", action="store_true", help="skip (a), run (b) only")
    a = ap.parse_args(argv)
    if a.poll_devices > a.devices:
        ap.error("--poll-devices must be <= --devices (their points come from the data set)")

    lines = _Lines()
    logging.getLogger("cloud_sync.uploader").addHandler(lines)
    logging.getLogger("cloud_sync.uploader").setLevel(logging.INFO)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    t_start = time.perf_counter()
    infos = point_infos(a.devices, a.points)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-outage-") as tmp:
        tmpd = Path(tmp)
        template = tmpd / "template.duckdb"
        with Store(template, queue_rows=4_000_000) as store:
            ids = store.register_points(infos)
            assert ids[0] == 1 and ids[-1] == len(infos), "bench expects point ids 1..n"
            for b in seconds_of_data(a.devices, a.points, a.seconds):
                store.put(b)
            total = store.flush(timeout=300)
        print(f"backlog: {total} rows ({a.devices} devices x {a.points} points x {a.seconds} s)", flush=True)

        def copy(name: str) -> Path:
            path = tmpd / name / "gw.duckdb"
            path.parent.mkdir()
            shutil.copy(template, path)
            return path

        if not a.skip_drain:
            out |= _phase_a(a, total, copy, lines)

        # (b) polling while the backlog drains vs caught up, once per receiver nice level
        if a.poll_devices:
            sim, ports = _start_sim(a.poll_devices, a.points, env)
            try:
                runs = {f"receiver_nice_{n}": _phase_b(a, total, copy, ports, n) for n in a.receiver_nice}
            finally:
                _stop_sim(sim)
            first = next(iter(runs.values()))
            out |= {k: first[k] for k in ("lateness_drain_ms", "lateness_caught_up_ms", "drain_vs_caught_up_p99_ratio",
                                          "drain_vs_caught_up_max_ratio", "rejected_offers")}  # fmt: skip
            out["rejected_offers"] = sum(r["rejected_offers"] for r in runs.values())
            out["missed_slots"] = sum(sum(r["missed_slots"].values()) for r in runs.values())
            out |= {"poll_devices": a.poll_devices, "poll_points_per_s": a.poll_devices * a.points / a.period,
                    "polling": runs}  # fmt: skip
    out |= {"batch_size": a.batch_size, "cpus": os.cpu_count(), "bench_s": round(time.perf_counter() - t_start, 1)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

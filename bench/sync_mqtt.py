"""MQTT uplink benchmark: a backlog drained through the real Uploader + MqttDelivery to a private Mosquitto
(TLS with client certificates, QoS 1, persistence on) and landed by the MQTT bridge into DuckDB.

``.venv/bin/python -m bench.sync_mqtt [--devices 200] [--points 100] [--seconds 50] [--batch-size 50000]``;
the last stdout line is one JSON object whose ``mqtt_rows_per_s`` is the backlog's rows divided by the time
from the uploader's start until the bridge had landed (committed) every row. ``mqtt_acked_rows_per_s`` is the
gateway's side alone (until the last PUBACK advanced the watermark).

Data: :func:`bench.sync.seconds_of_data` (realistic scaled registers, 1 s polls), so figures compare with
``bench.sync``'s HTTP ``drain_rows_per_s``. The broker and the bridge run as separate processes; the bridge
reports its counters through ``--stats-file``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.sync import GATEWAY, point_infos, seconds_of_data
from cloud_sync.mqtt_sink import MqttDelivery
from cloud_sync.uploader import Uploader
from gateway.config import SinkConfig
from storefwd.store import Store
from tests.cloud_sync.mqtt_broker import BRIDGE_ID, Mosquitto, Pki, make_pki

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 600.0  # bound for the bridge to start / land everything


def _read_stats(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def bridge_process(broker: Mosquitto, pki: Pki, db: Path, stats: Path) -> Iterator[subprocess.Popen[bytes]]:
    ident = pki.clients[BRIDGE_ID]
    cmd = [sys.executable, "-m", "cloud_sync.receiver.mqtt_bridge", "--broker", broker.url, "--ca", str(pki.ca),
           "--cert", str(ident.cert), "--key", str(ident.key), "--client-id", BRIDGE_ID, "--db", str(db),
           "--stats-file", str(stats), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        deadline = time.monotonic() + WAIT_S
        while not stats.exists():  # written once the subscription is in place
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the MQTT bridge did not subscribe")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(60)


async def _drain(store: Store, sink: SinkConfig, total: int, stats: Path) -> tuple[float, float]:
    up = Uploader(store, sink, GATEWAY, delivery=MqttDelivery(sink, GATEWAY))
    t0 = time.perf_counter()
    task = asyncio.create_task(up.run())
    try:
        await up.wait_acked(total)
        acked = time.perf_counter() - t0
    finally:
        up.stop()
        await task
    deadline = time.monotonic() + WAIT_S
    while int(_read_stats(stats).get("rows", 0)) < total:
        if time.monotonic() > deadline:
            raise RuntimeError(f"bridge landed only {_read_stats(stats)} of {total} rows")
        await asyncio.sleep(0.01)
    return acked, time.perf_counter() - t0


def measure_mqtt_rows_per_s(devices: int = 200, points: int = 100, seconds: int = 50, batch_size: int = 50_000,
                            details: dict[str, Any] | None = None) -> float:  # fmt: skip
    """Rows per second of a ``devices*points*seconds`` backlog, from the uploader's start until the bridge
    landed every row (see the module docstring). ``details``, when given, receives the other figures."""
    infos = point_infos(devices, points)
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        tmpd = Path(tmp)
        pki = make_pki(tmpd / "pki", [GATEWAY])
        with Store(tmpd / "gw.duckdb", queue_rows=4_000_000) as store:
            store.register_points(infos)
            for b in seconds_of_data(devices, points, seconds):
                store.put(b)
            total = store.flush(timeout=300)
            ident = pki.clients[GATEWAY]
            stats = tmpd / "bridge-stats.json"
            with Mosquitto(tmpd / "broker", pki) as broker:
                sink = SinkConfig(name="bench-mqtt", url=broker.url, type="mqtt", ca_file=pki.ca, cert_file=ident.cert,
                                  key_file=ident.key, batch_size=batch_size, timeout_s=30.0)  # fmt: skip
                with bridge_process(broker, pki, tmpd / "receiver.duckdb", stats):
                    acked_s, landed_s = asyncio.run(_drain(store, sink, total, stats))
                    landed = _read_stats(stats)
        if int(landed.get("accepted", 0)) != total or landed.get("rejected", 0):
            raise RuntimeError(f"bridge counters {landed} do not match {total} rows")
    rate = total / landed_s
    if details is not None:
        details.update(
            {
                "mqtt_rows_per_s": round(rate),
                "mqtt_acked_rows_per_s": round(total / acked_s),
                "mqtt_rows": total,
                "mqtt_landed_s": round(landed_s, 2),
                "mqtt_acked_s": round(acked_s, 2),
                "mqtt_batches": int(landed.get("landed_batches", 0)),
                "batch_size": batch_size,
                "cpus": os.cpu_count(),
            }
        )
    return rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.sync_mqtt")
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=50_000)
    args = ap.parse_args(argv)
    print(f"data: {args.devices} devices x {args.points} points x {args.seconds} s", flush=True)
    details: dict[str, Any] = {}
    measure_mqtt_rows_per_s(args.devices, args.points, args.seconds, args.batch_size, details)
    print(json.dumps(details))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Sync benchmark: wire size per reading and backlog drain rate through the real uploader and receiver.

``.venv/bin/python -m bench.sync [--devices 200] [--points 100] [--seconds 60]``; the last stdout line is
one JSON object:

- ``wire_bytes_per_reading``: request body bytes / readings while draining (batches of ``batch_size``).
- ``wire_bytes_per_reading_live``: the same for live operation (one batch per second of data).
- ``json_bytes_per_reading``: one JSON object per reading ``{"ts","device","point","value","quality"}``
  (newline-delimited, uncompressed: the common practice); ``json_zstd_bytes_per_reading`` zstd-compressed.
- ``drain_rows_per_s``: a backlog of ``devices*points*seconds`` rows in a real Store drained by the real
  Uploader to the reference receiver (DuckDB backend, separate process) over loopback HTTP.
- ``drain_rows_per_s_postgres``: the same into the receiver with the PostgreSQL backend.
- ``mqtt_rows_per_s``: the same backlog through the MQTT uplink (TLS client certificates, QoS 1) to a private
  Mosquitto and landed by the MQTT bridge into DuckDB (``bench/sync_mqtt.py``; ``--no-mqtt`` skips it).
- ``drain_rows_per_s_postgres``: the same backlog drained (under another sink name) to a receiver process with
  the PostgreSQL backend (``--postgres-url``, default the local test database; tables in a fresh schema that
  is dropped afterwards; ``--postgres-workers`` receiver processes). Omitted with ``--postgres-url ''``.

Data: devices x points registers polled every second (each device's block shares one receive timestamp with
sub-millisecond jitter), values are scaled int16 registers (x0.1, x0.01, x1, x0.001, x0.5) doing a slow
random walk (20 % of registers move by ±1..3 counts each second).
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

import httpx
import numpy as np
import pyarrow as pa

from cloud_sync.codec import READINGS_SCHEMA, PointCatalog, encode_batch
from cloud_sync.uploader import Uploader
from gateway.config import SinkConfig
from gateway.model import PointInfo, Q, ReadingBatch
from hil_tests.net import free_port
from storefwd.store import Store

GATEWAY = "bench-gw"
TOKEN = "bench-token"
T0 = 1_750_000_000_000_000_000
POINT_NAMES = ["Ia", "Ib", "Ic", "Va", "Vb", "Vc", "P", "Q", "PF", "F"]
UNITS = ["A", "A", "A", "kV", "kV", "kV", "kW", "kvar", "", "Hz"]


def point_infos(devices: int, points: int) -> list[PointInfo]:
    out = []
    for d in range(devices):
        dev = f"feeder{d:03d}"
        for p in range(points):
            name = f"{POINT_NAMES[p % 10]}_{p // 10}"
            out.append(PointInfo(f"{dev}.{name}", dev, name, UNITS[p % 10]))
    return out


def seconds_of_data(devices: int, points: int, seconds: int, seed: int = 1) -> Iterator[ReadingBatch]:
    """One ReadingBatch per second: every device's block in poll order; point ids 1..devices*points."""
    rng = np.random.default_rng(seed)
    n = devices * points
    scales = rng.choice([0.1, 0.01, 1.0, 0.001, 0.5], size=n)
    raw = rng.integers(-2000, 20000, size=n)
    phase = np.sort(rng.integers(0, 900_000_000, size=devices))  # devices polled staggered within the second
    pid = np.arange(1, n + 1, dtype=np.int32)
    quality = np.full(n, int(Q.GATEWAY_TIME), dtype=np.uint16)
    for k in range(seconds):
        moved = rng.random(n) < 0.2
        raw = np.clip(raw + moved * rng.integers(-3, 4, size=n), -32768, 32767)
        ts_dev = T0 + k * 1_000_000_000 + phase + rng.integers(0, 1_000_000, size=devices)
        yield ReadingBatch(np.repeat(ts_dev, points).astype(np.int64), pid, raw * scales, quality)


def json_sizes(batches: list[ReadingBatch], infos: list[PointInfo]) -> tuple[float, float]:
    lines = []
    rows = 0
    for b in batches:
        for ts, pid, value, q in zip(b.ts.tolist(), b.point_id.tolist(), b.value.tolist(), b.quality.tolist(),
                                     strict=True):  # fmt: skip
            info = infos[pid - 1]
            lines.append(json.dumps({"ts": ts, "device": info.device, "point": info.point, "value": value,
                                     "quality": q}, separators=(",", ":")))  # fmt: skip
            rows += 1
    text = ("\n".join(lines) + "\n").encode()
    return len(text) / rows, len(pa.Codec("zstd", compression_level=3).compress(text)) / rows


def live_wire_size(batches: list[ReadingBatch], infos: list[PointInfo]) -> float:
    catalog = PointCatalog({i + 1: p for i, p in enumerate(infos)})
    total = rows = 0
    seq = 1
    for b in batches:
        n = len(b)
        t = pa.table([pa.array(np.arange(seq, seq + n, dtype=np.int64)), pa.array(b.ts), pa.array(b.point_id),
                      pa.array(b.value), pa.array(b.quality)], schema=READINGS_SCHEMA)  # fmt: skip
        total += len(encode_batch(t, GATEWAY, catalog))
        rows += n
        seq += n
    return total / rows


class CountingTransport(httpx.AsyncHTTPTransport):
    """Counts request body bytes of successful and failed uploads alike."""

    def __init__(self) -> None:
        super().__init__()
        self.body_bytes = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.body_bytes += len(request.content)
        return await super().handle_async_request(request)


@contextlib.contextmanager
def receiver_process(db: str, port: int, *extra: str, nice: int = 0) -> Iterator[str]:
    """The reference receiver as its own process on loopback (``nice``: lower its CPU priority by that much);
    yields its base URL once /healthz answers."""
    argv = [sys.executable, "-m", "cloud_sync.receiver", "--db", db, "--port", str(port),
            "--token", f"{GATEWAY}={TOKEN}", "--log-level", "warning", *extra]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[1],
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("receiver did not start")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


async def drain(
    store: Store, url: str, batch_size: int, total: int, sink_name: str = "bench"
) -> tuple[float, int, dict[str, Any]]:
    transport = CountingTransport()
    sink = SinkConfig(name=sink_name, url=f"{url}/v1/batches", token=TOKEN, batch_size=batch_size,
                      max_interval_s=1.0, timeout_s=30.0)  # fmt: skip
    up = Uploader(store, sink, GATEWAY, transport=transport)
    t0 = time.perf_counter()
    task = asyncio.create_task(up.run())
    try:
        await up.wait_acked(total)
        elapsed = time.perf_counter() - t0
    finally:
        up.stop()
        await task
    async with httpx.AsyncClient() as c:
        stats = (await c.get(f"{url}/v1/gateways/{GATEWAY}/stats",
                             headers={"Authorization": f"Bearer {TOKEN}"})).json()  # fmt: skip
    return elapsed, transport.body_bytes, stats


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.sync")
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=SinkConfig(name="-", url="-").batch_size)
    ap.add_argument("--postgres-url", "--receiver-db", default="postgresql://postgres@127.0.0.1:5432/test",
                    help="PostgreSQL for drain_rows_per_s_postgres (a fresh schema is created and dropped); "
                    "'' skips it")  # fmt: skip
    ap.add_argument("--postgres-workers", type=int, default=1, help="receiver processes for the PostgreSQL run")
    ap.add_argument("--no-mqtt", action="store_true", help="skip the MQTT uplink run (needs mosquitto)")
    args = ap.parse_args(argv)

    infos = point_infos(args.devices, args.points)
    batches = list(seconds_of_data(args.devices, args.points, args.seconds))
    total = sum(len(b) for b in batches)
    json_b, json_z = json_sizes(batches[:5], infos)
    live_b = live_wire_size(batches[:10], infos)
    print(
        f"data: {args.devices} devices x {args.points} points x {args.seconds} s = {total} readings",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        tmpd = Path(tmp)
        with Store(tmpd / "gw.duckdb", queue_rows=4_000_000) as store:
            ids = store.register_points(infos)
            assert ids[0] == 1 and ids[-1] == len(infos), "bench expects point ids 1..n"
            t = time.perf_counter()
            for b in batches:
                store.put(b)
            last = store.flush(timeout=120)
            print(f"store filled: {last} rows in {time.perf_counter() - t:.1f} s", flush=True)
            with receiver_process(str(tmpd / "receiver.duckdb"), free_port()) as url:
                elapsed, body_bytes, stats = asyncio.run(drain(store, url, args.batch_size, last))
            if stats.get("rows") != total:
                raise SystemExit(f"DuckDB receiver holds {stats.get('rows')} rows, expected {total}")
            print(f"drained to DuckDB: {total / elapsed:.0f} rows/s", flush=True)
            pg_elapsed = None
            if args.postgres_url:
                schema = f"bench_sync_{os.getpid()}"
                try:
                    with receiver_process(args.postgres_url, free_port(), "--db-schema", schema,
                                          "--workers", str(args.postgres_workers)) as url:  # fmt: skip
                        pg_elapsed, _, pg_stats = asyncio.run(
                            drain(store, url, args.batch_size, last, sink_name="bench-postgres")
                        )
                finally:
                    drop_schema(args.postgres_url, schema)
                if pg_stats.get("rows") != total:
                    raise SystemExit(f"PostgreSQL receiver holds {pg_stats.get('rows')} rows, expected {total}")
                print(f"drained to PostgreSQL: {total / pg_elapsed:.0f} rows/s", flush=True)

    result = {
        "wire_bytes_per_reading": round(body_bytes / total, 3),
        "wire_bytes_per_reading_live": round(live_b, 3),
        "json_bytes_per_reading": round(json_b, 2),
        "json_zstd_bytes_per_reading": round(json_z, 3),
        "drain_rows_per_s": round(total / elapsed),
        "drain_rows_per_s_postgres": round(total / pg_elapsed) if pg_elapsed else None,
        "drain_rows": total,
        "drain_s": round(elapsed, 2),
        "drain_s_postgres": round(pg_elapsed, 2) if pg_elapsed else None,
        "postgres_workers": args.postgres_workers,
        "batch_size": args.batch_size,
        "receiver_rows": stats["rows"],
        "cpus": os.cpu_count(),
    }
    if not args.no_mqtt:  # the same data through the MQTT uplink and its bridge (bench/sync_mqtt.py)
        from bench.sync_mqtt import measure_mqtt_rows_per_s

        mqtt: dict[str, Any] = {}
        measure_mqtt_rows_per_s(args.devices, args.points, args.seconds, args.batch_size, details=mqtt)
        print(f"drained over MQTT: {mqtt['mqtt_rows_per_s']} rows/s", flush=True)
        result.update({k: v for k, v in mqtt.items() if k.startswith("mqtt_")})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

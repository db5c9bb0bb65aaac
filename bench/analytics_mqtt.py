"""MQTT sensor ingest benchmark: N sensors publish JSON over a private Mosquitto into the real Gateway
(SessionRunner + MqttSession + Store), at stepped offered rates.

``.venv/bin/python -m bench.analytics_mqtt [--sensors 1000] [--step-s 5] [--rates 1000,2000,...]``; the last
stdout line is one JSON object:

- ``mqtt_msgs_per_s``: the highest offered rate (messages/s, spread round-robin over the sensors, 4 fields
  each) that was *sustained*: the publisher kept the rate (≥ 95 %) and every reading of the step was committed in
  the store within ``GRACE_S`` after the step ended, with a publish → committed p99 under ``SUSTAINED_P99_MS``
  (nothing queued up in the broker or the driver). Steps stop at the first failing rate.
- ``mqtt_to_store_p99_ms``: publish → committed latency, p99, at the 1 Hz-per-sensor rate (``--sensors`` msgs/s):
  each payload carries its publish time as ``ts`` (epoch ns, the reading's source time); a watcher thread
  samples the store's (last_seq, last_commit_ns) pair every millisecond, which gives every seq its commit time.
  ``mqtt_to_store_p99_ms_at_max``: the same at the highest sustained rate.

The broker and the publisher run as separate processes (``--publish`` is the publisher's mode); the gateway
runs in this process with its default store settings (commit interval 250 ms: the latency is mostly that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GRACE_S = 3.0  # after a step, every reading must be committed within this
SUSTAINED_P99_MS = 1000.0  # and publish → committed p99 must stay under this (4 commit intervals): no queue grows
DEFAULT_RATES = (1000, 2000, 5000, 10_000, 12_500, 15_000, 20_000, 30_000)
FIELDS = 4  # temperature, voltage, current, power


def _config(data: Path, port: int, sensors: int, commit_interval_ms: int = 250) -> Any:
    from gateway.config_load import parse_config

    text = f"""
version = 1
[gateway]
id = "bench-mqtt"
data_dir = "{data}"
[panel]
port = 0
[storage]
commit_interval_ms = {commit_interval_ms}
[[links]]
name = "solar"
protocol = "mqtt"
host = "127.0.0.1"
port = {port}
[links.mqtt]
client_id = "bench-mqtt-solar"
clean_session = true
[[links.mqtt.topics]]
filter = "sensors/+/readings"
profile = "solar"
timestamp_unit = "ns"
max_age_s = 3600
sensors = ["pv-{{0001..{sensors:04d}}}"]
"""
    return parse_config(tomllib.loads(text), "bench.toml", data)


# ------------------------------------------------------------------------------------------------ publisher
def publish(port: int, sensors: int, rate: float, duration_s: float) -> dict[str, Any]:
    """Publisher process: ``rate`` messages/s round-robin over the sensors for ``duration_s``, QoS 1."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    topics = [f"sensors/pv-{i:04d}/readings" for i in range(1, sensors + 1)]
    sent = 0
    t0 = time.monotonic()
    end = t0 + duration_s
    chunk = max(1, int(rate / 200))  # publish in 5 ms chunks
    info = None
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - t0) * rate)
        if sent >= due:
            time.sleep(min(0.005, end - now))
            continue
        for _ in range(min(chunk, due - sent)):
            i = sent % sensors
            body = (f'{{"ts":{time.time_ns()},"temperature":{20 + i % 30},"voltage":{30 + i % 20}.5,'
                    f'"current":{i % 10}.25,"power":{(30 + i % 20) * (i % 10)}}}')  # fmt: skip
            info = client.publish(topics[i], body, qos=1)
            sent += 1
    elapsed = time.monotonic() - t0
    if info is not None:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()
    return {"sent": sent, "elapsed_s": elapsed, "rate": sent / elapsed if elapsed else 0.0}


# ------------------------------------------------------------------------------------------------ gateway side
class CommitWatcher:
    """Samples the store's (last_seq, last_commit_ns) every millisecond in a thread: the commit time of a seq is
    the ``last_commit_ns`` of the first sample whose last_seq reaches it (both are set under one lock)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commit-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = -1
        while not self._stop.wait(0.001):
            st = self.store.stats()
            seq = int(st["last_seq"])
            if seq != last:
                self.samples.append((seq, int(st["last_commit_ns"])))
                last = seq

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def commit_ns(self, seqs: np.ndarray) -> np.ndarray:
        arr = np.array(self.samples, dtype=np.int64).reshape(-1, 2)
        idx = np.searchsorted(arr[:, 0], seqs, side="left")
        idx = np.minimum(idx, len(arr) - 1)
        return arr[idx, 1]


async def _step(gw: Any, watcher: CommitWatcher, port: int, sensors: int, rate: int, step_s: float) -> dict[str, Any]:
    store = gw.store
    before = int(store.stats()["last_seq"])
    cpu0, wall0 = time.process_time(), time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.analytics_mqtt", "--publish", "--port", str(port), "--sensors", str(sensors),
        "--rate", str(rate), "--step-s", str(step_s), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return {"offered_msgs_per_s": rate, "sustained": False, "publisher_error": tail[0]}
    pub = json.loads(lines[-1])
    cpu_pct = 100.0 * (time.process_time() - cpu0) / (time.monotonic() - wall0)
    want = before + pub["sent"] * FIELDS
    deadline = time.monotonic() + GRACE_S
    while int(store.stats()["last_seq"]) < want and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    got = int(store.stats()["last_seq"]) - before
    tbl = await asyncio.to_thread(store.read_after, "bench", before, pub["sent"] * FIELDS + 1000)
    seq = tbl["seq"].to_numpy()
    ts = tbl["ts"].to_numpy()
    lat_ms = (watcher.commit_ns(seq) - ts) / 1e6 if len(seq) else np.array([np.nan])
    p99 = float(np.percentile(lat_ms, 99))
    ok = got == pub["sent"] * FIELDS and pub["rate"] >= 0.95 * rate and p99 <= SUSTAINED_P99_MS
    return {
        "offered_msgs_per_s": rate,
        "published": pub["sent"],
        "publish_rate": round(pub["rate"], 1),
        "readings_expected": pub["sent"] * FIELDS,
        "readings_committed": got,
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 1),
        "p99_ms": round(p99, 1),
        "gateway_cpu_pct": round(cpu_pct, 1),  # this process (all threads, incl. the 1 ms commit watcher)
        "sustained": ok,
    }


async def _measure(sensors: int, rates: list[int], step_s: float, tmp: Path,
                   commit_interval_ms: int = 250) -> dict[str, Any]:  # fmt: skip
    from gateway.app import Gateway
    from hil_tests.demo_solar import PrivateMosquitto
    from hil_tests.net import free_port

    with PrivateMosquitto(tmp / "broker", free_port(), persistence=False) as broker:
        gw = Gateway(_config(tmp / "data", broker.port, sensors, commit_interval_ms))
        await gw.start()
        watcher = CommitWatcher(gw.store)
        steps: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + 30
            while not gw.runners[0].up:  # type: ignore[union-attr]
                if time.monotonic() > deadline:
                    raise RuntimeError("the MQTT session did not come up")
                await asyncio.sleep(0.01)
            for rate in rates:
                step = await _step(gw, watcher, broker.port, sensors, rate, step_s)
                steps.append(step)
                print(json.dumps(step), file=sys.stderr, flush=True)
                if not step["sustained"]:
                    break
            drv = gw.runners[0].driver  # type: ignore[union-attr]
            largest = getattr(drv, "largest_batch", 0)
        finally:
            watcher.stop()
            await gw.stop()
    good = [s for s in steps if s["sustained"]]
    at_1hz = next((s for s in steps if s["offered_msgs_per_s"] == sensors), steps[0] if steps else {})
    best = good[-1] if good else {}
    return {
        "mqtt_msgs_per_s": best.get("offered_msgs_per_s", 0),
        "mqtt_readings_per_s": best.get("offered_msgs_per_s", 0) * FIELDS,
        "mqtt_to_store_p99_ms": at_1hz.get("p99_ms"),
        "mqtt_to_store_p50_ms": at_1hz.get("p50_ms"),
        "mqtt_to_store_p99_ms_at_max": best.get("p99_ms"),
        "mqtt_gateway_cpu_pct_at_1hz": at_1hz.get("gateway_cpu_pct"),
        "mqtt_sensors": sensors,
        "mqtt_step_s": step_s,
        "mqtt_first_failed_rate": next((s["offered_msgs_per_s"] for s in steps if not s["sustained"]), None),
        "mqtt_largest_batch": largest,
        "cpus": os.cpu_count(),
        "steps": steps,
    }


def measure_mqtt(sensors: int = 1000, rates: list[int] | None = None, step_s: float = 5.0,
                 commit_interval_ms: int = 250) -> dict[str, Any]:  # fmt: skip
    """Run the stepped-rate benchmark (see the module docstring); returns its figures."""
    chosen = sorted(set(rates or DEFAULT_RATES) | {sensors})
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        return asyncio.run(_measure(sensors, chosen, step_s, Path(tmp), commit_interval_ms))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sensors", type=int, default=1000)
    ap.add_argument("--step-s", type=float, default=5.0)
    ap.add_argument("--commit-interval-ms", type=int, default=250, help="the store's group-commit interval")
    ap.add_argument("--rates", default=",".join(str(r) for r in DEFAULT_RATES), help="offered messages/s")
    ap.add_argument("--publish", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.publish:
        print(json.dumps(publish(args.port, args.sensors, args.rate, args.step_s)), flush=True)
        return 0
    result = measure_mqtt(args.sensors, [int(r) for r in args.rates.split(",") if r], args.step_s,
                          args.commit_interval_ms)  # fmt: skip
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

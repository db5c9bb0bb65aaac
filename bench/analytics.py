"""Edge analytics benchmark: ``.venv/bin/python -m bench.analytics``; the last stdout line is one JSON object.

- ``mqtt_msgs_per_s``: the highest offered rate of sensor messages (1000 sensors) the gateway sustained, each
  message stored (``bench/analytics_mqtt.py``; target ≥ 1000 with headroom);
- ``mqtt_to_store_p99_ms``: publish → committed in the store, p99, at 1000 messages/s with the default
  250 ms group commit; ``mqtt_to_store_p99_ms_commit_50ms`` the same with ``commit_interval_ms = 50``
  (target ≤ 100);
- ``onnx_score_p99_ms``: one device window scored by the shipped model through the real AnomalyDetector, p99
  (``bench/analytics_onnx.py``; target ≤ 2);
- ``window_alert_delay_ms``: end of an offending 1-s frequency window → its alarm, p99 with ``advance()`` every
  100 ms (``bench/analytics_window.py``).

Each part's full figures are under its own key (``mqtt``, ``onnx``, ``window``). ``--quick`` shortens every part.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.analytics_mqtt import measure_mqtt
from bench.analytics_onnx import measure_onnx
from bench.analytics_window import measure_window_alert_delay


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.analytics", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (a smoke test, not figures to report)")
    a = ap.parse_args(argv)
    window = measure_window_alert_delay(duration_s=5.0 if a.quick else 30.0)
    print(f"window alert delay p99: {window['window_alert_delay_ms']['p99']} ms", flush=True)
    onnx = measure_onnx(windows=50 if a.quick else 300, batches=10 if a.quick else 50)
    print(f"onnx score p99: {onnx['onnx_score_p99_ms']} ms", flush=True)
    mqtt = measure_mqtt(step_s=2.0 if a.quick else 5.0)
    print(f"mqtt: {mqtt.get('mqtt_msgs_per_s')} msgs/s sustained", flush=True)
    # the latency is mostly the store's group-commit interval (250 ms by default): the same at 1000 msg/s with 50
    fast = measure_mqtt(rates=[1000], step_s=2.0 if a.quick else 5.0, commit_interval_ms=50)
    result: dict[str, Any] = {
        "mqtt_msgs_per_s": mqtt.get("mqtt_msgs_per_s"),
        "mqtt_to_store_p99_ms": mqtt.get("mqtt_to_store_p99_ms"),
        "mqtt_to_store_p99_ms_commit_50ms": fast.get("mqtt_to_store_p99_ms"),
        "onnx_score_p99_ms": onnx["onnx_score_p99_ms"],
        "window_alert_delay_ms": window["window_alert_delay_ms"]["p99"],
        "mqtt": mqtt,
        "onnx": onnx,
        "window": window,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

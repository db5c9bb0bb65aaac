"""ONNX anomaly-scoring benchmark: latency of closing and scoring windows through the real AnomalyDetector.

Run from the repo root: ``.venv/bin/python -m bench.analytics_onnx [--windows 300 --devices 100]``.

- **one device**: a detector with one device; per window, its 60 s of 1 Hz rows are fed, then ``advance()`` is
  timed: grouping, features, one onnxruntime call, diagnosis, alarm state, health bookkeeping — the whole path
  the gateway's worker thread runs. ``onnx_score_p99_ms`` / ``onnx_score_p50_ms`` (target p99 ≤ 2 ms).
- **batch**: a detector with ``--devices`` devices (default 100); each window all of them are fed, and one
  ``advance()`` scores them all in one onnxruntime call: ``onnx_batch_p99_ms`` (per batch) and
  ``onnx_batch_per_device_us``.
- ``onnx_raw_p99_ms``: ``InferenceSession.run`` alone on one row, for context; ``session_load_ms``: creating the
  session (once per process, lazily, on the first scoring).

Windows come from :func:`gateway.analytics.train.generate_windows` (a realistic mix, ≈ 5 % of windows with
missing samples). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

from gateway.analytics import anomaly
from gateway.analytics.anomaly import AnomalyDetector, get_session
from gateway.analytics.anomaly_config import AnomalyConfig, AnomalyDevice
from gateway.analytics.features import MODEL_FEATURE_INDEX, SIGNALS
from gateway.analytics.train import Windows, generate_windows

W_NS = 60 * 10**9
T0 = 1_780_000_000 * 10**9 // W_NS * W_NS


def _cfg(n: int) -> AnomalyConfig:
    return AnomalyConfig(devices=tuple(AnomalyDevice(name=f"pv-{i:03d}", irradiance=f"pv-{i:03d}.irradiance")
                                       for i in range(n)))


def _rows(det: AnomalyDetector, w: Windows, k: int, device: int, window: int) -> tuple[np.ndarray, ...]:
    """Rows of generated window ``k`` fed as ``window`` of ``device`` (values rescaled to the device's rating)."""
    dev = det.cfg.devices[device]
    names = det.inputs()
    scale = {"voltage": dev.v_nominal / w.v_nominal[k], "power": dev.rated_w / w.rated_w[k],
             "current": (dev.rated_w / dev.v_nominal) / (w.rated_w[k] / w.v_nominal[k])}
    idx, ts, val = [], [], []
    for si, sig in enumerate(SIGNALS):
        v = w.x[k, si]
        v = v[~np.isnan(v)] * scale.get(sig, 1.0)
        idx.append(np.full(len(v), names.index(dev.point(sig)), dtype=np.int32))
        ts.append(T0 + window * W_NS + np.arange(len(v), dtype=np.int64) * 10**9)
        val.append(v)
    i = np.concatenate(idx)
    return i, np.concatenate(ts), np.concatenate(val), np.zeros(len(i), dtype=np.uint16)


def _pct(a: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(a), q)), 4)


def measure_onnx(windows: int = 300, devices: int = 100, batches: int = 50, seed: int = 0) -> dict[str, Any]:
    """Run the three measurements (see the module doc) and return the figures."""
    anomaly._sessions.clear()  # measure the lazy session creation of this process
    model = AnomalyDetector(_cfg(1)).model
    t = time.perf_counter()
    sess = get_session(model.path)
    session_load_ms = (time.perf_counter() - t) * 1e3

    gen = generate_windows(max(windows, devices), seed)
    feats = gen.features()[:, MODEL_FEATURE_INDEX]
    raw: list[float] = []
    for k in range(windows):
        row = np.ascontiguousarray(feats[k : k + 1])
        t = time.perf_counter()
        sess.run(["scores"], {model.input: row})
        raw.append((time.perf_counter() - t) * 1e3)

    det = AnomalyDetector(_cfg(1))
    one: list[float] = []
    for k in range(windows):
        det.feed(*_rows(det, gen, k, 0, k))
        t = time.perf_counter()
        out = det.advance(T0 + (k + 1) * W_NS + 6 * 10**9)
        one.append((time.perf_counter() - t) * 1e3)
        assert any(r.name == "pv-000.anomaly_score" for r in out.readings)

    det = AnomalyDetector(_cfg(devices))
    batch: list[float] = []
    for b in range(batches):
        for d in range(devices):
            det.feed(*_rows(det, gen, (b * 7 + d) % len(gen.x), d, b))
        t = time.perf_counter()
        out = det.advance(T0 + (b + 1) * W_NS + 6 * 10**9)
        batch.append((time.perf_counter() - t) * 1e3)
    scored = det.stats["scored_windows"]

    return {
        "onnx_score_p99_ms": _pct(one[5:], 99),
        "onnx_score_p50_ms": _pct(one[5:], 50),
        "onnx_score_target_p99_ms": 2.0,
        "onnx_batch_devices": devices,
        "onnx_batch_p99_ms": _pct(batch[2:], 99),
        "onnx_batch_p50_ms": _pct(batch[2:], 50),
        "onnx_batch_per_device_us": round(float(np.median(batch[2:])) * 1e3 / devices, 2),
        "onnx_raw_p99_ms": _pct(raw[5:], 99),
        "session_load_ms": round(session_load_ms, 2),
        "windows": windows,
        "batches": batches,
        "batch_windows_scored": scored,
        "model_bytes": model.path.stat().st_size,
        "model_version": model.version,
        "onnxruntime": __import__("onnxruntime").__version__,
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.analytics_onnx", description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=300, help="single-device windows timed")
    ap.add_argument("--devices", type=int, default=100, help="devices per batch")
    ap.add_argument("--batches", type=int, default=50, help="batches timed")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    res = measure_onnx(args.windows, args.devices, args.batches, args.seed)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""AnomalyDetector: the shipped ONNX model, detection of each anomaly kind, recommendations, alarm debounce,
windowing (late rows, missing data, shared irradiance), thread safety, and the [analytics.anomaly] config."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from gateway.analytics.anomaly import AnomalyDetector, ModelInfo
from gateway.analytics.anomaly_config import (
    SHIPPED_MODEL,
    AnomalyConfig,
    AnomalyDevice,
    build_anomaly,
    parse_anomaly,
)
from gateway.analytics.base import AnalyticsOutput
from gateway.analytics.features import FEATURE_NAMES, MODEL_FEATURES, RECOMMENDATIONS, SIGNALS
from gateway.analytics.train import ANOMALY_KINDS, Windows, generate_windows
from gateway.model import Q

W_NS = 60 * 10**9
T0 = 1_780_000_000 * 10**9 // W_NS * W_NS  # a window boundary


def make_cfg(n_devices: int = 1, shared_irradiance: bool = False, **kw: Any) -> AnomalyConfig:
    devs = tuple(
        AnomalyDevice(
            name=f"pv-{i:02d}",
            irradiance="site.irradiance" if shared_irradiance else f"pv-{i:02d}.irradiance",
            rated_w=400.0,
            v_nominal=37.0,
        )
        for i in range(n_devices)
    )
    return AnomalyConfig(devices=devs, **kw)


def rows_for(
    det: AnomalyDetector, device: int, w: Windows, first_window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Feed rows of generated windows ``w`` as consecutive windows of ``device`` (values rescaled to its rating:
    the features are scale-free, so they are the generated windows' own)."""
    dev = det.cfg.devices[device]
    names = det.inputs()
    scale = {
        "voltage": dev.v_nominal / w.v_nominal,
        "current": (dev.rated_w / dev.v_nominal) / (w.rated_w / w.v_nominal),
        "power": dev.rated_w / w.rated_w,
    }
    idx, ts, val = [], [], []
    for k in range(len(w.x)):
        start = T0 + (first_window + k) * W_NS
        for si, sig in enumerate(SIGNALS):
            p = dev.point(sig)
            if not p:
                continue
            v = w.x[k, si]
            v = v[~np.isnan(v)]
            if sig in scale:
                v = v * scale[sig][k]
            idx.append(np.full(len(v), names.index(p)))
            ts.append(start + np.arange(len(v), dtype=np.int64) * 10**9 + si * 1000)
            val.append(v)
    i, t, v = np.concatenate(idx), np.concatenate(ts), np.concatenate(val)
    return i.astype(np.int32), t.astype(np.int64), v, np.zeros(len(i), dtype=np.uint16)


def run_windows(det: AnomalyDetector, feeds: list[tuple[int, Windows, int]], n_windows: int) -> AnalyticsOutput:
    """Feed everything, then advance window by window (as the gateway would each second)."""
    for device, w, first in feeds:
        det.feed(*rows_for(det, device, w, first))
    out = AnalyticsOutput()
    for k in range(n_windows + 1):
        out.extend(det.advance(T0 + (k + 1) * W_NS + 6 * 10**9))
    return out


def alarm_data(out: AnalyticsOutput) -> list[dict[str, Any]]:
    return [json.loads(e.data) | {"_device": e.device} for e in out.events if e.kind == "alarm"]


# ------------------------------------------------------------------------------------------- shipped model


def test_shipped_model_loads_is_small_and_matches_its_sidecar() -> None:
    blob = SHIPPED_MODEL.read_bytes()
    assert len(blob) < 1_000_000
    meta = json.loads(SHIPPED_MODEL.with_suffix(".json").read_text())
    assert meta["model_sha256"] == hashlib.sha256(blob).hexdigest()
    assert meta["model_bytes"] == len(blob)
    assert tuple(meta["feature_names"]) == MODEL_FEATURES and tuple(meta["all_features"]) == FEATURE_NAMES
    assert len(meta["feature_mean"]) == len(meta["feature_std"]) == len(FEATURE_NAMES)
    assert meta["metrics"]["recall"] >= 0.9 and meta["metrics"]["precision"] >= 0.9
    assert meta["metrics"]["onnx_vs_sklearn_max_abs_diff"] < 1e-4
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == meta["input"] and inp.shape[1] == len(MODEL_FEATURES)
    assert [o.name for o in sess.get_outputs()] == ["label", "scores"]
    info = ModelInfo.load(SHIPPED_MODEL)
    f = generate_windows(50, 7).features()
    s = info.scores(f[:, [FEATURE_NAMES.index(n) for n in MODEL_FEATURES]])
    assert s.shape == (50,) and np.all(np.isfinite(s))


# ------------------------------------------------------------------------------------------- detection


def test_normal_data_raises_at_most_one_false_alarm_in_200_windows() -> None:
    det = AnomalyDetector(make_cfg())
    out = run_windows(det, [(0, generate_windows(200, 100), 0)], 200)
    scores = [r for r in out.readings if r.name == "pv-00.anomaly_score"]
    assert len(scores) == 200
    assert det.stats["scored_windows"] == 200 and det.stats["skipped_windows"] == 0
    raised = [d for d in alarm_data(out) if d["state"] == "raised"]
    assert len(raised) <= 1
    assert det.stats["anomalous_windows"] <= 2


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_each_anomaly_kind_is_flagged_with_its_recommendation(kind: str) -> None:
    det = AnomalyDetector(make_cfg(clear_after_windows=3))
    normal = generate_windows(10, 5)
    bad = generate_windows(20, 6, kind, irradiance_frac=1.0)
    out = run_windows(det, [(0, normal, 0), (0, bad, 10)], 30)
    assert det.stats["anomalous_windows"] >= 16  # ≥ 80 % of the injected windows (test-set recall ≥ 95 %)
    raised = [d for d in alarm_data(out) if d["state"] == "raised"]
    assert len(raised) >= 1
    first = raised[0]
    assert first["window_start_ns"] >= T0 + 10 * W_NS  # not during the normal lead-in
    assert first["kind"] == kind
    assert first["recommendation"] == RECOMMENDATIONS[kind]
    assert first["threshold"] == pytest.approx(det.threshold, abs=1e-4)
    assert len(first["top_features"]) == 3 and first["top_features"][0]["feature"] in FEATURE_NAMES
    ev = next(e for e in out.events if e.kind == "alarm")
    assert ev.priority == 2 and ev.device == "pv-00" and RECOMMENDATIONS[kind] in ev.message


def test_alarm_raise_and_clear_with_debounce() -> None:
    det = AnomalyDetector(make_cfg(raise_after_windows=2, clear_after_windows=3))
    hot = generate_windows(6, 11, "overheating", irradiance_frac=1.0)
    norm = generate_windows(10, 12)
    # 1 hot window (below raise_after), 2 normal, 3 hot (raises), 2 normal (no clear), 1 hot, 3 normal (clears)
    plan = [hot.x[0:1], norm.x[0:2], hot.x[1:4], norm.x[2:4], hot.x[4:5], norm.x[4:7]]
    x = np.concatenate(plan)
    # each window keeps the rating of the generated device it came from (rows_for rescales per window)
    rated = np.concatenate([hot.rated_w[0:1], norm.rated_w[0:2], hot.rated_w[1:4], norm.rated_w[2:4],
                            hot.rated_w[4:5], norm.rated_w[4:7]])
    vnom = np.concatenate([hot.v_nominal[0:1], norm.v_nominal[0:2], hot.v_nominal[1:4], norm.v_nominal[2:4],
                           hot.v_nominal[4:5], norm.v_nominal[4:7]])
    w = Windows(x, rated, vnom, np.array(["mixed"] * len(x)))
    det.feed(*rows_for(det, 0, w, 0))
    states: list[tuple[int, str]] = []
    for k in range(len(x) + 1):
        out = det.advance(T0 + (k + 1) * W_NS + 6 * 10**9)
        states += [(k, json.loads(e.data)["state"]) for e in out.events]
    # windows: 0 h | 1-2 n | 3-4-5 h -> raised at window 4 (2nd consecutive) | 6-7 n | 8 h | 9-10-11 n -> clear
    assert states == [(4, "raised"), (11, "cleared")]
    assert det.alarms() == {"pv-00": False}


def test_windowing_late_rows_missing_data_and_invalid_quality() -> None:
    det = AnomalyDetector(make_cfg(min_samples=10))
    w = generate_windows(3, 21)
    i, t, v, q = rows_for(det, 0, w, 0)
    first = t < T0 + W_NS
    det.feed(i[first], t[first], v[first], q[first])
    out = det.advance(T0 + W_NS + 1 * 10**9)  # within grace: nothing closes yet
    assert not out.readings
    out = det.advance(T0 + W_NS + 6 * 10**9)
    assert [r.name for r in out.readings] == ["pv-00.anomaly_score"] and out.readings[0].ts == T0
    det.feed(i[first][:5], t[first][:5], v[first][:5], q[first][:5])  # late: window 0 is closed
    # window 1: all samples invalid -> skipped (too few valid samples); window 2: fine
    second = (t >= T0 + W_NS) & (t < T0 + 2 * W_NS)
    det.feed(i[second], t[second], v[second], np.full(int(second.sum()), Q.INVALID, dtype=np.uint16))
    third = t >= T0 + 2 * W_NS
    keep = third & (np.arange(len(t)) % 2 == 0)  # half the samples missing: questionable
    det.feed(i[keep], t[keep], v[keep], q[keep])
    out = det.advance(T0 + 3 * W_NS + 6 * 10**9)
    assert det.stats["late_rows"] == 5
    assert det.stats["skipped_windows"] == 0  # invalid rows never reach a window: window 1 had no row at all
    (r,) = out.readings
    assert r.ts == T0 + 2 * W_NS and r.quality == Q.QUESTIONABLE


def test_shared_irradiance_feeds_every_device_and_batches_scoring() -> None:
    det = AnomalyDetector(make_cfg(n_devices=3, shared_irradiance=True))
    assert det.inputs().count("site.irradiance") == 1
    assert len(det.inputs()) == 3 * 4 + 1
    soiled = generate_windows(5, 31, "soiling", irradiance_frac=1.0)
    w = generate_windows(5, 32)
    # one irradiance series for every device (the site's pyranometer): the soiled panel's
    w.x[:, 4] = soiled.x[:, 4]  # (only device 0's copy of the shared point is fed)
    feeds = [(0, w, 0), (1, w, 0), (2, soiled, 0)]
    for device, ws, first in feeds:
        i, t, v, q = rows_for(det, device, ws, first)
        if device > 0:  # the shared point is fed once
            drop = i == det.inputs().index("site.irradiance")
            i, t, v, q = i[~drop], t[~drop], v[~drop], q[~drop]
        det.feed(i, t, v, q)
    out = det.advance(T0 + 5 * W_NS + 6 * 10**9)
    names = {r.name for r in out.readings}
    assert names == {"pv-00.anomaly_score", "pv-01.anomaly_score", "pv-02.anomaly_score"}
    assert det.stats["scored_windows"] == 15
    raised = {d["_device"]: d["kind"] for d in alarm_data(out) if d["state"] == "raised"}
    assert raised.get("pv-02") == "soiling"


def test_advance_in_a_worker_thread_while_feeding() -> None:
    det = AnomalyDetector(make_cfg(n_devices=2))
    ws = [generate_windows(20, 40 + d) for d in range(2)]
    rows = [rows_for(det, d, ws[d], 0) for d in range(2)]
    results: list[AnalyticsOutput] = []
    done = threading.Event()

    def worker() -> None:
        k = 0
        while not done.is_set() or k <= 21:
            results.append(det.advance(T0 + (k + 1) * W_NS + 6 * 10**9))
            k += 1

    th = threading.Thread(target=worker, name="analytics-worker")
    # feed everything first per window, in chunks, racing with the worker's advance
    for i, t, v, q in rows:
        for chunk in np.array_split(np.arange(len(i)), 50):
            det.feed(i[chunk], t[chunk], v[chunk], q[chunk])
    th.start()
    done.set()
    th.join(10)
    assert not th.is_alive()
    scored = det.stats["scored_windows"] + det.stats["skipped_windows"]
    assert scored == 40
    assert sum(len(r.readings) for r in results) >= 40


# ------------------------------------------------------------------------------------------- config


def test_parse_anomaly_defaults_and_pattern() -> None:
    raw = {
        "window_s": 60,
        "clear_after_windows": 4,
        "devices": [
            {"name": "pv-01", "irradiance": "site.poa", "rated_w": 400},
            {"name": "string-a", "temperature": "string-a.t_mod", "rated_w": 8000, "v_nominal": 740},
        ],
    }
    cfg, problems = parse_anomaly(raw, "gw.toml")
    assert problems == [] and cfg is not None
    assert cfg.model_path() == SHIPPED_MODEL and cfg.clear_after_windows == 4
    d0, d1 = cfg.devices
    assert d0.point("temperature") == "pv-01.temperature" and d0.point("irradiance") == "site.poa"
    assert d1.point("temperature") == "string-a.t_mod" and d1.point("irradiance") == ""
    (det,) = build_anomaly(cfg)
    assert isinstance(det, AnomalyDetector)
    assert "pv-01.power" in det.inputs() and "site.poa" in det.inputs()
    names = {p.name for p in det.derived_points()}
    assert {"pv-01.anomaly_score", "pv-01.health_score", "string-a.risk_level"} <= names
    assert parse_anomaly(None, "gw.toml") == (None, [])


def test_parse_anomaly_reports_every_problem_with_file_and_key(tmp_path: Path) -> None:
    raw = {
        "window_sec": 60,
        "clear_after_windows": 0,
        "model": str(tmp_path / "nope.onnx"),
        "devices": [{"name": "pv-01", "rated_w": -1}, {"name": "pv-01"}, {"nme": "x"}, "pv-03"],
    }
    cfg, problems = parse_anomaly(raw, "gw.toml")
    assert cfg is None
    text = "\n".join(str(p) for p in problems)
    assert all(p.file == "gw.toml" for p in problems)
    assert "analytics.anomaly.window_sec: unknown key; did you mean 'window_s'?" in text
    assert "analytics.anomaly.clear_after_windows: must be 1..1000, got 0" in text
    assert "analytics.anomaly.model: model file not found" in text
    assert "analytics.anomaly.devices[pv-01].rated_w: must be > 0" in text
    assert "duplicate device 'pv-01'" in text
    assert "analytics.anomaly.devices[2].nme: unknown key; did you mean 'name'?" in text
    assert "analytics.anomaly.devices[2].name: missing required key" in text
    assert "analytics.anomaly.devices[3]: expected a table" in text
    _, problems = parse_anomaly({"devices": []}, "gw.toml")
    assert [p.key for p in problems] == ["analytics.anomaly.devices"]


def test_relative_model_path_resolves_against_the_config_dir(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(SHIPPED_MODEL.read_bytes())
    (tmp_path / "m.json").write_text(SHIPPED_MODEL.with_suffix(".json").read_text())
    cfg, problems = parse_anomaly({"model": "m.onnx", "devices": [{"name": "pv-01"}]}, "gw.toml", tmp_path)
    assert problems == [] and cfg is not None and cfg.model_path() == tmp_path / "m.onnx"
    assert AnomalyDetector(cfg).threshold == ModelInfo.load(SHIPPED_MODEL).threshold


def test_bench_measure_onnx_small_run_reports_finite_figures() -> None:
    from bench.analytics_onnx import measure_onnx

    res = measure_onnx(windows=20, devices=5, batches=4)
    for k in ("onnx_score_p99_ms", "onnx_score_p50_ms", "onnx_batch_p99_ms", "onnx_raw_p99_ms", "session_load_ms"):
        assert isinstance(res[k], float) and np.isfinite(res[k]) and res[k] >= 0, k
    assert res["onnx_score_p50_ms"] <= res["onnx_score_p99_ms"]
    assert res["batch_windows_scored"] == 5 * 4 and res["onnx_batch_devices"] == 5
    assert res["model_bytes"] < 1_000_000

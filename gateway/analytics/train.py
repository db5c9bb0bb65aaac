"""Train the panel anomaly model: ``python -m gateway.analytics.train [--out PATH] [--seed 0] [--n 20000]``.

Training needs the ``dev`` (or ``test``) extra: scikit-learn and skl2onnx; the gateway itself only needs
onnxruntime to *score* with the model this writes. Steps (all seeded, so a run is reproducible):

1. Generate windows of 1 Hz samples (:func:`generate_windows`) of panels and strings of several sizes: a day curve
   of irradiance with clouds, module temperature following ambient and irradiance, power with a temperature
   coefficient, voltage and current consistent with it, measurement noise, quantisation and missing samples;
   some devices without a pyranometer. Normal windows for training, validation and test; labelled anomalies
   (:data:`ANOMALY_KINDS`) for validation and test only.
2. Features with :func:`gateway.analytics.features.window_features` (the very function the detector uses).
3. Fit an :class:`sklearn.ensemble.IsolationForest` on normal training windows only.
4. Convert with skl2onnx. Its IsolationForest converter outputs ``label`` (int64, 1 normal / −1 anomaly at
   sklearn's own offset) and ``scores`` (float32, sklearn's ``decision_function``: higher is more normal). The
   detector uses ``anomaly_score = −scores`` and its own threshold; the ONNX scores are checked against
   sklearn's on the test set (max abs difference must be < 1e-4).
5. Threshold: the (1 − 0.5 %) quantile of ``anomaly_score`` on the *normal validation* windows, i.e. a target
   false-alarm rate of 0.5 % of windows before debouncing.
6. Write the model (``.onnx``) and its sidecar (same stem, ``.json``): feature names, threshold, model version,
   seed, training feature mean/std (for the z-scores of alarms), reference efficiency, library versions and the
   test metrics (precision, recall, per-kind recall, false-positive rate, diagnosis accuracy).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gateway.analytics.features import (
    FEATURE_INDEX,
    FEATURE_NAMES,
    MODEL_FEATURE_INDEX,
    MODEL_FEATURES,
    S_G,
    S_I,
    S_P,
    S_T,
    S_V,
    kinds_of,
    rule_flags,
    window_features,
)

MODEL_VERSION: Final = "panel-iforest-1"
DEFAULT_OUT: Final = Path(__file__).resolve().parent / "models" / "panel_iforest.onnx"
ANOMALY_KINDS: Final = ("soiling", "overheating", "string_fault", "sensor_stuck")
WINDOW_SAMPLES: Final = 60  # 60 s windows of 1 Hz samples
TARGET_FPR: Final = 0.005  # threshold: this quantile of normal validation windows is above it
N_ESTIMATORS: Final = 30
MAX_SAMPLES: Final = 1024  # per tree: a large sample covers the normal range (fewer normal windows fall outside
# it and score like anomalies); 30 trees of it keep the ONNX model under 1 MB
ONNX_INPUT: Final = "features"
OPSET: Final = {"": 17, "ai.onnx.ml": 3}


@dataclass(frozen=True, slots=True)
class Windows:
    """Generated windows: ``x`` ``(n, 5, L)`` NaN-padded as :func:`window_features` wants; ``kind`` per window
    ("normal" or one of :data:`ANOMALY_KINDS`)."""

    x: npt.NDArray[np.float64]
    rated_w: npt.NDArray[np.float64]
    v_nominal: npt.NDArray[np.float64]
    kind: npt.NDArray[np.str_]

    def features(self) -> npt.NDArray[np.float32]:
        return window_features(self.x, self.rated_w, self.v_nominal, float(WINDOW_SAMPLES))


def _quantise(a: npt.NDArray[np.float64], step: float) -> npt.NDArray[np.float64]:
    return np.round(a / step) * step


def generate_windows(
    n: int, seed: int, kind: str = "normal", *, samples: int = WINDOW_SAMPLES, irradiance_frac: float = 0.8
) -> Windows:
    """``n`` windows of ``samples`` 1 Hz samples each, all normal or all of one anomaly ``kind``.

    Normal physics (per window, vectorised): a device is a panel (300..450 W, Vmp 30..40 V) or a string of 10 or
    20 of them, with its own performance ratio 0.78..0.92. Irradiance: a clear-sky day curve (sunrise 5..7.5 h,
    sunset 17..20.5 h, season scales the peak), a third of the windows cloudy (0.2..0.9 of clear sky, varying
    within the window). Ambient 2..35 °C with season and time of day; module temperature = ambient + 0.03 °C per
    W/m² ± 20 % (mounting) + slow drift + 0.1 °C noise. Power = rated · G/1000 · PR · (1 − 0.4 %/°C above 25 °C);
    voltage falls 0.35 %/°C and rises a little with irradiance (0 at night: inverter off); current = P / V.
    Noise 0.2..0.3 %, quantised (0.1 °C, 0.01 V, 1 mA, 0.1 W, 1 W/m²), 0..30 % missing samples in some windows;
    ``1 − irradiance_frac`` of the devices have no irradiance signal.

    Anomalies (daytime windows): *soiling* scales power and current by 0.55..0.75 at ≥ 400 W/m²; *overheating*
    adds 25..45 °C; *string_fault* drops the current to 5..35 % and lifts the voltage 5..20 % (towards open
    circuit); *sensor_stuck* freezes one signal (temperature, voltage, current or power) at its first value.
    """
    if kind != "normal" and kind not in ANOMALY_KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    rng = np.random.default_rng([seed, ANOMALY_KINDS.index(kind) + 1 if kind != "normal" else 0])
    L = samples
    t = np.arange(L, dtype=np.float64)
    mult = rng.choice(np.array([1.0, 1.0, 1.0, 10.0, 20.0]), n)
    rated = rng.choice(np.array([300.0, 350.0, 400.0, 450.0]), n) * mult
    vnom = rng.uniform(30.0, 40.0, n) * mult
    pr_dev = rng.uniform(0.78, 0.92, n)
    season = np.cos(2 * np.pi * (rng.uniform(0, 365, n) - 172) / 365)  # +1 midsummer .. −1 midwinter
    sunrise = 6.25 - 1.25 * season
    sunset = 18.75 + 1.75 * season
    # anomalies are drawn in the bright middle of the day, where each kind shows
    hour = rng.uniform(0.0, 24.0, n) if kind == "normal" else rng.uniform(10.0, 15.0, n)
    elev = np.clip(np.sin(np.pi * (hour - sunrise) / (sunset - sunrise)), 0.0, None)
    elev = np.where((hour > sunrise) & (hour < sunset), elev, 0.0)
    clear = 1050.0 * elev**1.15 * (0.85 + 0.15 * season)
    cloudy = rng.random(n) < (0.33 if kind == "normal" else 0.1)
    base = np.where(cloudy, rng.uniform(0.2, 0.9, n), rng.uniform(0.97, 1.0, n))
    walk = np.cumsum(rng.normal(0.0, 1.0, (n, L)), axis=1) * np.where(cloudy, 0.01, 0.001)[:, None]
    cf = np.clip(base[:, None] + walk, 0.05, 1.1)
    g = np.clip(clear[:, None] * cf + rng.normal(0.0, 2.0, (n, L)), 0.0, None)
    if kind in ("soiling", "string_fault"):  # bright enough for the fault to show in the efficiency
        floor = rng.uniform(400.0, 900.0, n)
        gm = np.maximum(g.mean(axis=1), 1.0)
        g = np.where((gm < floor)[:, None], g * (floor / gm)[:, None], g)
    g_mean = g.mean(axis=1)

    ambient = 18.0 + 10.0 * season + 5.0 * np.sin(2 * np.pi * (hour - 9.0) / 24.0) + rng.uniform(-4.0, 4.0, n)
    mount = rng.uniform(0.8, 1.2, n)
    drift = rng.normal(0.0, 0.01, n)[:, None] * t[None, :]
    temp = ambient[:, None] + 0.03 * mount[:, None] * g_mean[:, None] + drift + rng.normal(0.0, 0.1, (n, L))
    if kind == "overheating":
        temp = temp + rng.uniform(25.0, 45.0, n)[:, None]
    pr = pr_dev[:, None] * (1.0 - 0.004 * (temp - 25.0))
    p_true = rated[:, None] * g / 1000.0 * pr
    v_true = vnom[:, None] * (1.0 - 0.0035 * (temp - 25.0)) * (0.92 + 0.08 * np.minimum(g, 1000.0) / 1000.0)
    v_true = np.where(g_mean[:, None] >= 10.0, v_true, 0.0)
    i_true = np.where(v_true > 0, p_true / np.where(v_true > 0, v_true, 1.0), 0.0)
    if kind == "soiling":
        f = rng.uniform(0.55, 0.75, n)[:, None]
        p_true, i_true = p_true * f, i_true * f
    elif kind == "string_fault":
        f = rng.uniform(0.05, 0.35, n)[:, None]
        v_true = v_true * rng.uniform(1.05, 1.2, n)[:, None]
        i_true = i_true * f
        p_true = v_true * i_true
    volt = _quantise(v_true * (1 + rng.normal(0.0, 0.002, (n, L))), 0.01)
    cur = _quantise(i_true * (1 + rng.normal(0.0, 0.003, (n, L))), 0.001)
    power = _quantise(p_true * (1 + rng.normal(0.0, 0.003, (n, L))), 0.1)
    temp = _quantise(temp, 0.1)
    g = _quantise(g, 1.0)
    x = np.stack([temp, volt, cur, power, g], axis=1)  # (n, 5, L)
    if kind == "sensor_stuck":
        which = rng.choice(np.array([S_T, S_V, S_I, S_P]), n)
        rows = np.arange(n)
        x[rows, which, :] = x[rows, which, :1]
    else:  # missing samples (a stuck sensor still reports: its samples are all there)
        p_miss = np.select(
            [rng.random(n) < 0.8, rng.random(n) < 0.75], [np.zeros(n), rng.uniform(0, 0.05, n)],
            default=rng.uniform(0.05, 0.3, n),
        )
        drop = rng.random((n, 5, L)) < p_miss[:, None, None]
        x = np.where(drop, np.nan, x)
    no_irr = rng.random(n) >= irradiance_frac
    x[no_irr, S_G, :] = np.nan
    order = np.argsort(np.isnan(x), axis=2, kind="stable")  # valid samples first, in time order
    x = np.take_along_axis(x, order, axis=2)
    return Windows(x, rated, vnom, np.full(n, kind))


def _concat(ws: list[Windows]) -> Windows:
    return Windows(
        np.concatenate([w.x for w in ws]),
        np.concatenate([w.rated_w for w in ws]),
        np.concatenate([w.v_nominal for w in ws]),
        np.concatenate([w.kind for w in ws]),
    )


def onnx_anomaly_scores(model: bytes, f: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """``anomaly_score`` (= −ONNX ``scores``; higher is more anomalous) of features ``f`` with a fresh session."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    out = sess.run(["scores"], {ONNX_INPUT: np.ascontiguousarray(f, dtype=np.float32)})
    return -np.asarray(out[0], dtype=np.float64).reshape(-1)


def train(out: Path, seed: int = 0, n: int = 20000, anomalies: int = 500, log: Any = None) -> dict[str, Any]:
    """Generate, fit, convert, verify and write ``out`` (+ ``out.with_suffix('.json')``); return the sidecar."""
    import onnx
    import onnxruntime
    import skl2onnx
    import sklearn
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import IsolationForest

    def say(msg: str) -> None:
        if log is not None:
            print(msg, file=log, flush=True)

    t0 = time.perf_counter()
    n_val = max(n // 4, 200)

    def labelled(s: int) -> Windows:  # anomalies with a pyranometer: soiling cannot show without one
        parts = [generate_windows(anomalies, s, k, irradiance_frac=1.0) for k in ANOMALY_KINDS]
        return _concat([generate_windows(n_val, s), *parts])

    train_w, val_w, test_w = generate_windows(n, seed * 10 + 1), labelled(seed * 10 + 2), labelled(seed * 10 + 3)
    f_train, f_val, f_test = train_w.features(), val_w.features(), test_w.features()
    x_train, x_val, x_test = (f[:, MODEL_FEATURE_INDEX] for f in (f_train, f_val, f_test))
    say(f"generated {len(x_train)} training, {len(x_val)} validation, {len(x_test)} test windows")

    model = IsolationForest(
        n_estimators=N_ESTIMATORS, max_samples=min(MAX_SAMPLES, len(x_train)), random_state=seed
    ).fit(x_train)
    n_in = len(MODEL_FEATURES)
    onx = to_onnx(model, initial_types=[(ONNX_INPUT, FloatTensorType([None, n_in]))], target_opset=OPSET)
    onx.producer_name = "gateway.analytics.train"
    onx.doc_string = f"{MODEL_VERSION}: IsolationForest on {n_in} window features; seed {seed}"
    imports = sorted((o.domain, o.version) for o in onx.opset_import)  # skl2onnx's order varies run to run
    del onx.opset_import[:]
    onx.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in imports)
    blob = onx.SerializeToString()

    sk_test = -model.decision_function(x_test)
    ox_test = onnx_anomaly_scores(blob, x_test)
    max_diff = float(np.max(np.abs(sk_test - ox_test)))
    if max_diff >= 1e-4:
        raise RuntimeError(f"ONNX scores differ from sklearn's by {max_diff:g}")

    s_val = onnx_anomaly_scores(blob, x_val)
    threshold = float(np.quantile(s_val[val_w.kind == "normal"], 1.0 - TARGET_FPR))

    normal = test_w.kind == "normal"
    by_model = ox_test > threshold
    by_rule = rule_flags(f_test)
    kind_list, flagged = kinds_of(f_test, by_model)
    kinds = np.asarray(kind_list)

    def rates(flags: npt.NDArray[np.bool_]) -> dict[str, Any]:
        tp, fp = int(np.sum(flags & ~normal)), int(np.sum(flags & normal))
        fn = int(np.sum(~flags & ~normal))
        per = {k: round(float(np.mean(flags[test_w.kind == k])), 4) for k in ANOMALY_KINDS}
        return {
            "precision": round(tp / max(tp + fp, 1), 4),
            "recall": round(tp / max(tp + fn, 1), 4),
            "false_positive_rate": round(fp / max(int(np.sum(normal)), 1), 4),
            "recall_per_kind": per,
        }

    diag = {}
    for k in ANOMALY_KINDS:
        sel = (test_w.kind == k) & flagged
        diag[k] = round(float(np.mean(kinds[sel] == k)) if np.any(sel) else 0.0, 4)
    metrics = {
        **rates(flagged),
        "model_only": rates(by_model),
        "rules_only": rates(by_rule),
        "diagnosis_accuracy_per_kind": diag,
        "test_windows": {"normal": int(np.sum(normal)), "anomalous": int(np.sum(~normal))},
        "onnx_vs_sklearn_max_abs_diff": max_diff,
    }
    bright = f_train[:, FEATURE_INDEX["irradiance_rel"]] >= 0.3
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    sidecar: dict[str, Any] = {
        "model_version": MODEL_VERSION,
        "model_file": out.name,
        "model_sha256": hashlib.sha256(blob).hexdigest(),
        "model_bytes": len(blob),
        "input": ONNX_INPUT,
        "output": "scores",
        "score": "anomaly_score = -scores (sklearn decision_function); a window is anomalous when > threshold",
        "feature_names": list(MODEL_FEATURES),
        "all_features": list(FEATURE_NAMES),
        "threshold": threshold,
        "target_false_positive_rate": TARGET_FPR,
        "window_samples": WINDOW_SAMPLES,
        "feature_mean": [float(v) for v in f_train.mean(axis=0)],  # of all_features, for alarm z-scores
        "feature_std": [float(v) for v in f_train.std(axis=0)],
        "reference_efficiency": float(np.median(f_train[bright, FEATURE_INDEX["efficiency"]])),
        "seed": seed,
        "training_windows": len(x_train),
        "n_estimators": N_ESTIMATORS,
        "max_samples": int(model.max_samples_),
        "opset": OPSET,
        "versions": {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "metrics": metrics,
    }
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    say(f"wrote {out} ({len(blob)} bytes) in {time.perf_counter() - t0:.1f} s; threshold {threshold:.4f}")
    say(json.dumps(metrics))
    return sidecar


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gateway.analytics.train", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model path (the sidecar gets .json)")
    ap.add_argument("--seed", type=int, default=0, help="seed of data generation and of the forest")
    ap.add_argument("--n", type=int, default=20000, help="normal training windows (validation/test: n/4 each)")
    ap.add_argument("--anomalies", type=int, default=500, help="anomalous windows per kind in validation/test")
    args = ap.parse_args(argv)
    sidecar = train(args.out, seed=args.seed, n=args.n, anomalies=args.anomalies, log=sys.stderr)
    print(json.dumps({"model": str(args.out), "bytes": sidecar["model_bytes"], "threshold": sidecar["threshold"],
                      **sidecar["metrics"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m gateway.analytics.train`` with a small ``--n``: writes a model and sidecar, is deterministic, and
its ONNX scores match sklearn's decision_function (refitted here independently)."""

from __future__ import annotations

import hashlib
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import onnxruntime as ort
from sklearn.ensemble import IsolationForest

from gateway.analytics import train
from gateway.analytics.features import FEATURE_NAMES, MODEL_FEATURE_INDEX, MODEL_FEATURES
from gateway.analytics.train import generate_windows


def run_main(out: Path, seed: int) -> dict[str, object]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert train.main(["--out", str(out), "--seed", str(seed), "--n", "2000", "--anomalies", "100"]) == 0
    result: dict[str, object] = json.loads(buf.getvalue().strip().splitlines()[-1])
    return result


def test_small_training_run_writes_a_matching_model(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    summary = run_main(out, seed=3)
    blob = out.read_bytes()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert summary["bytes"] == len(blob) == meta["model_bytes"] < 1_000_000
    assert meta["model_sha256"] == hashlib.sha256(blob).hexdigest()
    assert meta["seed"] == 3 and meta["training_windows"] == 2000
    assert tuple(meta["feature_names"]) == MODEL_FEATURES and tuple(meta["all_features"]) == FEATURE_NAMES
    m = meta["metrics"]
    assert m["test_windows"] == {"normal": 500, "anomalous": 400}
    assert 0.0 <= m["false_positive_rate"] <= 0.05 and m["recall"] >= 0.8
    assert set(m["recall_per_kind"]) == set(train.ANOMALY_KINDS)

    # independently refit the forest on the same generated data: the written ONNX scores match sklearn's
    x = generate_windows(2000, 3 * 10 + 1).features()[:, MODEL_FEATURE_INDEX]
    sk = IsolationForest(n_estimators=meta["n_estimators"], max_samples=meta["max_samples"], random_state=3).fit(x)
    probe = generate_windows(300, 99).features()[:, MODEL_FEATURE_INDEX]
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    (scores,) = sess.run(["scores"], {meta["input"]: probe})
    assert np.max(np.abs(scores.reshape(-1) - sk.decision_function(probe))) < 1e-4


def test_training_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    run_main(a, seed=1)
    run_main(b, seed=1)
    assert a.read_bytes() == b.read_bytes()
    ma, mb = (json.loads(p.with_suffix(".json").read_text()) for p in (a, b))
    assert ma["threshold"] == mb["threshold"] and ma["metrics"] == mb["metrics"]

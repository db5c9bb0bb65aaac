"""Anomaly detection of solar panels and strings with the shipped ONNX IsolationForest (onnxruntime only).

:class:`AnomalyDetector` implements :class:`gateway.analytics.base.Analytic`:

- ``inputs()``: each configured device's temperature, voltage, current, power and (optional, maybe shared)
  irradiance points;
- ``feed()`` buffers rows (cheap: appends the arrays under a lock); invalid-quality rows count as missing;
- ``advance(now_ns)`` closes every tumbling window (``window_s``, aligned to UTC multiples, by reading ``ts``)
  that ended at least ``grace_s`` before ``now_ns``, builds the features of all due (device, window) pairs at
  once (:func:`gateway.analytics.features.window_features`), scores them in one onnxruntime call, and returns:
  a ``<device>.anomaly_score`` reading per scored window (ts = window start; questionable when over 20 % of the
  samples are missing), alarm events, and every ``health_period_s`` the health readings
  (:mod:`gateway.analytics.health`). Rows of a window already closed are dropped (counted in ``stats``).

Score and decision: ``anomaly_score = −scores`` of the ONNX model (sklearn's ``decision_function`` negated:
higher is more anomalous). A window is anomalous when ``anomaly_score > threshold`` (sidecar, or config) **or** a
diagnosis rule matches a known failure signature (:func:`gateway.analytics.features.rule_flags`; an
IsolationForest cannot extrapolate, so a far-out value alone scores no higher than the most extreme normal one).
A window is scored only if each of temperature, voltage, current and power has ``min_samples`` valid samples.

Alarms (kind "alarm", priority 2, ``point`` "anomaly"): raised after ``raise_after_windows`` consecutive
anomalous windows, cleared (one event) after ``clear_after_windows`` consecutive normal ones. ``data`` is JSON:
``state`` (raised/cleared), ``score``, ``threshold``, ``window_start_ns``, ``kind``, ``recommendation`` and
``top_features`` (the three largest |z| of the window's features against the training distribution).

Threads: the gateway calls ``advance`` in a worker thread (ONNX scoring is CPU work) while ``feed`` runs on the
event loop; both are safe for that (``feed`` only appends under a lock that ``advance`` holds just long enough to
take the buffer). ``advance`` must not be called concurrently with itself (a second lock serialises it).
Nothing here touches an event loop, sleeps, reads a clock or does I/O other than loading the model once.
One :class:`onnxruntime.InferenceSession` per model file per process, created lazily on first scoring, with
``intra_op_num_threads = inter_op_num_threads = 1``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gateway.analytics.anomaly_config import AnomalyConfig
from gateway.analytics.base import AnalyticsOutput, DerivedReading
from gateway.analytics.features import (
    FEATURE_INDEX,
    FEATURE_NAMES,
    MODEL_FEATURE_INDEX,
    MODEL_FEATURES,
    RECOMMENDATIONS,
    REQUIRED_SIGNALS,
    SIGNALS,
    kinds_of,
    window_features,
)
from gateway.analytics.health import HealthAssessor, WindowResult
from gateway.model import VALIDITY_MASK, Event, PointInfo, Q

QUESTIONABLE_MISSING: Final = 0.2  # missing_frac above this marks the window's anomaly_score questionable
MAX_SAMPLES_PER_WINDOW: Final = 4096  # per signal; more (a misconfigured fast point) are ignored
TOP_FEATURES: Final = 3

_sessions: dict[Path, Any] = {}
_sessions_lock = threading.Lock()


def get_session(path: Path) -> Any:
    """The process's :class:`onnxruntime.InferenceSession` of ``path`` (created on first use; thread-safe)."""
    key = Path(path).resolve()
    with _sessions_lock:
        sess = _sessions.get(key)
        if sess is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3  # errors only
            sess = ort.InferenceSession(str(key), opts, providers=["CPUExecutionProvider"])
            _sessions[key] = sess
        return sess


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """The model's sidecar, checked against the features this code computes."""

    path: Path
    version: str
    input: str
    threshold: float
    feature_mean: npt.NDArray[np.float64]  # of FEATURE_NAMES
    feature_std: npt.NDArray[np.float64]
    reference_efficiency: float
    meta: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> ModelInfo:
        meta = json.loads(Path(path).with_suffix(".json").read_text())
        if tuple(meta["feature_names"]) != MODEL_FEATURES or tuple(meta["all_features"]) != FEATURE_NAMES:
            raise ValueError(f"{path}: the model's features differ from this gateway's (retrain it)")
        return cls(
            Path(path),
            str(meta["model_version"]),
            str(meta["input"]),
            float(meta["threshold"]),
            np.asarray(meta["feature_mean"], dtype=np.float64),
            np.asarray(meta["feature_std"], dtype=np.float64),
            float(meta["reference_efficiency"]),
            meta,
        )

    def scores(self, model_features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """``anomaly_score`` of rows of model features (``(n, len(MODEL_FEATURES))``)."""
        if len(model_features) == 0:
            return np.empty(0)
        out = get_session(self.path).run(["scores"], {self.input: np.ascontiguousarray(model_features)})
        return -np.asarray(out[0], dtype=np.float64).reshape(-1)


@dataclass(slots=True)
class _DeviceState:
    anomalous_run: int = 0
    normal_run: int = 0
    active: bool = False


class AnomalyDetector:
    """Per-device window scoring, alarms with recommendations, and health (see the module doc)."""

    def __init__(self, cfg: AnomalyConfig) -> None:
        if not cfg.devices:
            raise ValueError("AnomalyDetector needs at least one device")
        self.cfg = cfg
        self.model = ModelInfo.load(cfg.model_path())
        self.threshold = cfg.threshold if cfg.threshold is not None else self.model.threshold
        self._devices = [d.name for d in cfg.devices]
        self._rated = np.array([d.rated_w for d in cfg.devices], dtype=np.float64)
        self._vnom = np.array([d.v_nominal for d in cfg.devices], dtype=np.float64)
        # inputs are unique point names; one input may feed several (device, signal) pairs (shared irradiance)
        names: list[str] = []
        where: dict[str, int] = {}
        fan: list[list[tuple[int, int]]] = []
        for di, d in enumerate(cfg.devices):
            for si, sig in enumerate(SIGNALS):
                p = d.point(sig)
                if not p:
                    continue
                if p not in where:
                    where[p] = len(names)
                    names.append(p)
                    fan.append([])
                fan[where[p]].append((di, si))
        self._inputs = names
        self._fan_n = np.array([len(f) for f in fan], dtype=np.int64)
        self._fan_start = np.concatenate([[0], np.cumsum(self._fan_n)[:-1]]).astype(np.int64)
        self._fan_dev = np.array([di for f in fan for di, _ in f], dtype=np.int64)
        self._fan_sig = np.array([si for f in fan for _, si in f], dtype=np.int64)
        self._simple = bool(np.all(self._fan_n == 1))
        self._window_ns = int(cfg.window_s * 1e9)
        self._grace_ns = int(cfg.grace_s * 1e9)
        self._expected = cfg.window_s / cfg.sample_period_s
        self._pending: list[tuple[npt.NDArray[Any], ...]] = []
        self._carry: tuple[npt.NDArray[Any], ...] | None = None
        self._next_window: int | None = None  # index of the first window not closed yet
        self._feed_lock = threading.Lock()
        self._advance_lock = threading.Lock()
        self._state = [_DeviceState() for _ in self._devices]
        self.health_assessor = HealthAssessor(
            self._devices,
            window_s=cfg.window_s,
            period_s=cfg.health_period_s,
            horizon_s=cfg.health_horizon_s,
            stress_temp_c=cfg.stress_temp_c,
            reference_efficiency=self.model.reference_efficiency,
        )
        self.stats = {"scored_windows": 0, "skipped_windows": 0, "late_rows": 0, "anomalous_windows": 0}

    # -- Analytic ---------------------------------------------------------------------------------------------
    def inputs(self) -> list[str]:
        return list(self._inputs)

    def derived_points(self) -> list[PointInfo]:
        pts = [PointInfo(f"{d}.anomaly_score", d, "anomaly_score", "") for d in self._devices]
        return pts + self.health_assessor.derived_points()

    def feed(
        self,
        idx: npt.NDArray[np.int32],
        ts: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
        quality: npt.NDArray[np.uint16],
    ) -> None:
        """Buffer rows (any thread; cheap). Invalid-quality and non-finite rows are dropped: they count as missing."""
        ok = ((np.asarray(quality) & VALIDITY_MASK) != Q.INVALID) & np.isfinite(value)
        idx = np.asarray(idx, dtype=np.int64)[ok]
        rows = (idx, np.asarray(ts, dtype=np.int64)[ok], np.asarray(value, dtype=np.float64)[ok])
        if len(idx):
            with self._feed_lock:
                self._pending.append(rows)

    def advance(self, now_ns: int) -> AnalyticsOutput:
        """Close due windows, score them, run alarms and health (see the module doc). Worker-thread safe."""
        with self._advance_lock:
            with self._feed_lock:
                pending, self._pending = self._pending, []
            out = AnalyticsOutput()
            last_due = (now_ns - self._grace_ns) // self._window_ns - 1  # windows up to this index are due
            dev, sig, ts, val = self._take(pending)
            if len(ts):
                win = ts // self._window_ns
                late = win < self._next_window if self._next_window is not None else np.zeros(len(ts), bool)
                self.stats["late_rows"] += int(late.sum())
                due = (win <= last_due) & ~late
                keep = ~due & ~late
                self._carry = (dev[keep], sig[keep], ts[keep], val[keep]) if keep.any() else None
                if due.any():
                    self._close(dev[due], sig[due], ts[due], val[due], win[due], out)
            if self._next_window is None or last_due + 1 > self._next_window:
                self._next_window = last_due + 1
            out.readings.extend(self.health_assessor.assess(now_ns))
            return out

    # -- helpers ----------------------------------------------------------------------------------------------
    def health(self) -> dict[str, dict[str, Any]]:
        """Latest health assessment per device (for the panel / JSON status). Any thread."""
        return self.health_assessor.health()

    def alarms(self) -> dict[str, bool]:
        """Whether each device's anomaly alarm is raised (read from the thread that calls ``advance``)."""
        return {d: s.active for d, s in zip(self._devices, self._state, strict=True)}

    def _take(self, pending: list[tuple[npt.NDArray[Any], ...]]) -> tuple[npt.NDArray[Any], ...]:
        """Expand fed rows into (device, signal, ts, value) columns, plus the rows carried from before."""
        parts: list[tuple[npt.NDArray[Any], ...]] = [] if self._carry is None else [self._carry]
        if pending:
            idx = np.concatenate([p[0] for p in pending])
            ts = np.concatenate([p[1] for p in pending])
            val = np.concatenate([p[2] for p in pending])
            if self._simple:
                pos = self._fan_start[idx]
            else:
                n = self._fan_n[idx]
                rep = np.repeat(np.arange(len(idx)), n)
                offs = np.arange(len(rep)) - np.repeat(np.cumsum(n) - n, n)
                pos = self._fan_start[idx][rep] + offs
                ts, val = ts[rep], val[rep]
            parts.append((self._fan_dev[pos], self._fan_sig[pos], ts, val))
        if not parts:
            e = np.empty(0, dtype=np.int64)
            return e, e, e, np.empty(0)
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))

    def _close(
        self,
        dev: npt.NDArray[np.int64],
        sig: npt.NDArray[np.int64],
        ts: npt.NDArray[np.int64],
        val: npt.NDArray[np.float64],
        win: npt.NDArray[np.int64],
        out: AnalyticsOutput,
    ) -> None:
        n_dev = len(self._devices)
        keys, g = np.unique(win * n_dev + dev, return_inverse=True)  # sorted by (window, device)
        n_groups = len(keys)
        order = np.lexsort((ts, sig, g))
        seg = (g * len(SIGNALS) + sig)[order]
        counts = np.bincount(seg, minlength=n_groups * len(SIGNALS))
        starts = np.cumsum(counts) - counts
        pos = np.arange(len(seg)) - starts[seg]
        width = int(min(max(int(counts.max()), 2), MAX_SAMPLES_PER_WINDOW))
        fit = pos < width
        flat = np.full((n_groups * len(SIGNALS), width), np.nan)
        flat[seg[fit], pos[fit]] = val[order][fit]
        x = flat.reshape(n_groups, len(SIGNALS), width)
        g_dev = (keys % n_dev).astype(np.int64)
        g_win = keys // n_dev
        feats = window_features(x, self._rated[g_dev], self._vnom[g_dev], self._expected)
        enough = (counts.reshape(n_groups, len(SIGNALS))[:, :REQUIRED_SIGNALS] >= self.cfg.min_samples).all(axis=1)
        self.stats["skipped_windows"] += int(n_groups - enough.sum())
        if not enough.any():
            return
        feats, g_dev, g_win = feats[enough], g_dev[enough], g_win[enough]
        scores = self.model.scores(feats[:, MODEL_FEATURE_INDEX])
        kinds, flagged = kinds_of(feats, scores > self.threshold)
        self.stats["scored_windows"] += len(scores)
        self.stats["anomalous_windows"] += int(flagged.sum())
        fi = FEATURE_INDEX
        for j in range(len(scores)):
            d = int(g_dev[j])
            name = self._devices[d]
            start = int(g_win[j]) * self._window_ns
            f = feats[j]
            q = int(Q.QUESTIONABLE) if f[fi["missing_frac"]] > QUESTIONABLE_MISSING else 0
            out.readings.append(DerivedReading(f"{name}.anomaly_score", start, float(scores[j]), q))
            self.health_assessor.observe(
                name,
                WindowResult(
                    start,
                    float(scores[j]),
                    bool(flagged[j]),
                    kinds[j],
                    float(f[fi["temp_mean_c"]]),
                    float(f[fi["efficiency"]]),
                    float(f[fi["irradiance_rel"]]),
                    float(f[fi["missing_frac"]]),
                ),
            )
            ev = self._step(d, bool(flagged[j]), float(scores[j]), kinds[j], f, start)
            if ev is not None:
                out.events.append(ev)

    def _step(
        self, d: int, flagged: bool, score: float, kind: str, f: npt.NDArray[np.float32], start: int
    ) -> Event | None:
        st = self._state[d]
        name = self._devices[d]
        end = start + self._window_ns
        if flagged:
            st.anomalous_run += 1
            st.normal_run = 0
            if not st.active and st.anomalous_run >= self.cfg.raise_after_windows:
                st.active = True
                rec = RECOMMENDATIONS[kind]
                data = {
                    "state": "raised",
                    "score": round(score, 4),
                    "threshold": round(self.threshold, 4),
                    "window_start_ns": start,
                    "kind": kind,
                    "recommendation": rec,
                    "top_features": self._top_features(f),
                    "model_version": self.model.version,
                }
                msg = f"{name}: anomaly ({kind}, score {score:.3f} > {self.threshold:.3f}): {rec}"
                return Event(end, "alarm", msg, 2, name, "anomaly", json.dumps(data))
        else:
            st.normal_run += 1
            st.anomalous_run = 0
            if st.active and st.normal_run >= self.cfg.clear_after_windows:
                st.active = False
                data = {
                    "state": "cleared",
                    "score": round(score, 4),
                    "threshold": round(self.threshold, 4),
                    "window_start_ns": start,
                    "normal_windows": st.normal_run,
                }
                msg = f"{name}: anomaly cleared after {st.normal_run} normal windows"
                return Event(end, "alarm", msg, 2, name, "anomaly", json.dumps(data))
        return None

    def _top_features(self, f: npt.NDArray[np.float32]) -> list[dict[str, float | str]]:
        z = (f.astype(np.float64) - self.model.feature_mean) / np.maximum(self.model.feature_std, 1e-9)
        top = np.argsort(-np.abs(z), kind="stable")[:TOP_FEATURES]
        return [{"feature": FEATURE_NAMES[i], "value": round(float(f[i]), 4), "z": round(float(z[i]), 2)} for i in top]

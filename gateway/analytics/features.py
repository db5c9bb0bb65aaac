"""Window features of a solar panel or string, shared by the trainer and the run-time anomaly detector.

One *window* is a tumbling interval (default 60 s, by reading ``ts``) of one device's signals. The same function,
:func:`window_features`, turns windows into the model's input both when :mod:`gateway.analytics.train` builds its
training set and when :class:`gateway.analytics.anomaly.AnomalyDetector` scores live data, so they can never
drift apart. It is vectorised over windows: input is one NaN-padded array ``(n_windows, 5, max_samples)``.

Signals (axis 1, :data:`SIGNALS`), in the units of their points:
- ``temperature``: module (back-of-panel) temperature, °C;
- ``voltage``: DC voltage, V; ``current``: DC current, A; ``power``: DC power, W;
- ``irradiance``: plane-of-array irradiance, W/m² (optional: all NaN when the device has no pyranometer).

Scale: each device has ``rated_w`` (W at STC) and ``v_nominal`` (V at maximum power: one panel ≈ 37 V, a string
of N panels N × that). Voltages, currents and powers enter the features relative to these, so one model serves
panels and strings of any size.

The features (:data:`FEATURE_NAMES`, in this order; float32):

==================  ===================================================================================
temp_mean_c         mean module temperature, °C
temp_std_c          its standard deviation within the window, °C
temp_excess_c       temperature rise above the expected cell temperature: ``temp_mean − (25 + 0.03·G)``, °C
                    (NOCT-style rule: ≈ +30 °C over a 25 °C reference at 1000 W/m²; ``G`` as below)
v_rel               mean voltage / ``v_nominal``
v_rel_std           voltage standard deviation / ``v_nominal``
i_rel               mean current / (``rated_w`` / ``v_nominal``), i.e. relative to the rated current
i_rel_std           current standard deviation, same scale
p_rel               mean power / ``rated_w``
p_rel_std           power standard deviation / ``rated_w``
irradiance_rel      ``G`` / 1000 W/m²; ``G`` is the mean irradiance, or without an irradiance signal the
                    estimate ``1000 · p_rel / EFF_NOMINAL``
efficiency          performance ratio ``p_rel / (G/1000)`` (clipped to 0..2); :data:`EFF_NOMINAL` when
                    ``G`` < 50 W/m² (night: undefined) or without an irradiance signal (then soiling cannot
                    be told from a cloudy sky: install a pyranometer for that)
vi_mismatch         ``|mean V · mean I − mean P| / max(mean P, 0.02 · rated_w)``: do the three sensors agree?
missing_frac        1 − (valid samples of temperature, voltage, current, power) / (4 · expected samples)
flat_frac           the largest, over the five signals, fraction of consecutive samples that are exactly
                    equal (a stuck sensor reads 1.0); a signal whose mean is under 1 % of its scale (power
                    or current at night) does not count
==================  ===================================================================================

Padding contract: within ``x[w, s]`` the valid samples come first, in time order, then NaN.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

SIGNALS: Final = ("temperature", "voltage", "current", "power", "irradiance")
S_T, S_V, S_I, S_P, S_G = range(5)  # indices of SIGNALS
REQUIRED_SIGNALS: Final = 4  # temperature, voltage, current and power; irradiance is optional

FEATURE_NAMES: Final = (
    "temp_mean_c",
    "temp_std_c",
    "temp_excess_c",
    "v_rel",
    "v_rel_std",
    "i_rel",
    "i_rel_std",
    "p_rel",
    "p_rel_std",
    "irradiance_rel",
    "efficiency",
    "vi_mismatch",
    "missing_frac",
    "flat_frac",
)
N_FEATURES: Final = len(FEATURE_NAMES)
FEATURE_INDEX: Final = {name: i for i, name in enumerate(FEATURE_NAMES)}

# The features the model scores (its ONNX input, in this order). An IsolationForest dilutes an anomaly that shows
# in one feature among many noisy ones (cloud-driven standard deviations, missing data), so it gets the few
# physics features each failure shows in; all features still serve the diagnosis rules and the alarm's z-scores.
MODEL_FEATURES: Final = ("temp_excess_c", "temp_mean_c", "v_rel", "i_rel", "efficiency", "flat_frac")
MODEL_FEATURE_INDEX: Final = [FEATURE_NAMES.index(name) for name in MODEL_FEATURES]

EFF_NOMINAL: Final = 0.85  # typical performance ratio (DC power / (rated · G/1000)) of a clean panel
MIN_IRRADIANCE: Final = 50.0  # W/m²: below this the efficiency is undefined (set to EFF_NOMINAL)
REFERENCE_TEMP_C: Final = 25.0  # °C: reference of temp_excess_c
TEMP_PER_IRRADIANCE: Final = 0.03  # °C per W/m²: expected module temperature rise with irradiance


def window_features(
    x: npt.NDArray[np.float64],
    rated_w: npt.NDArray[np.float64],
    v_nominal: npt.NDArray[np.float64],
    expected_samples: float,
) -> npt.NDArray[np.float32]:
    """Features of ``n`` windows: ``x`` is ``(n, 5, L)`` NaN-padded (see the module doc); ``rated_w`` and
    ``v_nominal`` are ``(n,)``; ``expected_samples`` is the samples per signal a complete window holds.

    Returns ``(n, N_FEATURES)`` float32. A window whose required signal has no sample gives NaN in the features
    of that signal: the caller must not score it (the detector skips windows under ``min_samples``).
    """
    n = x.shape[0]
    valid = ~np.isnan(x)
    cnt = valid.sum(axis=2).astype(np.float64)  # (n, 5)
    safe_cnt = np.maximum(cnt, 1.0)
    xz = np.where(valid, x, 0.0)
    mean = xz.sum(axis=2) / safe_cnt
    dev = np.where(valid, x - mean[:, :, None], 0.0)
    std = np.sqrt((dev * dev).sum(axis=2) / safe_cnt)
    absent = cnt == 0
    mean = np.where(absent, np.nan, mean)
    std = np.where(absent, np.nan, std)

    rated = np.asarray(rated_w, dtype=np.float64)
    vnom = np.asarray(v_nominal, dtype=np.float64)
    inom = rated / vnom
    p_rel = mean[:, S_P] / rated
    has_g = ~absent[:, S_G]
    g_eff = np.where(has_g, np.nan_to_num(mean[:, S_G]), 1000.0 * np.maximum(p_rel, 0.0) / EFF_NOMINAL)
    g_eff = np.nan_to_num(g_eff)
    sunny = has_g & (g_eff >= MIN_IRRADIANCE)
    eff = np.where(sunny, p_rel / np.maximum(g_eff, MIN_IRRADIANCE) * 1000.0, EFF_NOMINAL)
    eff = np.clip(eff, 0.0, 2.0)

    vi = mean[:, S_V] * mean[:, S_I]
    mismatch = np.abs(vi - mean[:, S_P]) / np.maximum(np.abs(mean[:, S_P]), 0.02 * rated)

    required = cnt[:, :REQUIRED_SIGNALS].sum(axis=1)
    missing = 1.0 - np.minimum(1.0, required / (REQUIRED_SIGNALS * max(expected_samples, 1.0)))

    pairs = valid[:, :, 1:] & valid[:, :, :-1]
    same = pairs & (x[:, :, 1:] == x[:, :, :-1])
    n_pairs = pairs.sum(axis=2)
    flat = same.sum(axis=2) / np.maximum(n_pairs, 1)
    scale = np.stack([np.ones(n), vnom, inom, rated, np.full(n, 1000.0)], axis=1)
    counts = (np.abs(np.nan_to_num(mean)) > 0.01 * scale) & (n_pairs >= 2)
    flat_frac = np.where(counts, flat, 0.0).max(axis=1)

    out = np.empty((n, N_FEATURES), dtype=np.float32)
    out[:, 0] = mean[:, S_T]
    out[:, 1] = std[:, S_T]
    out[:, 2] = mean[:, S_T] - (REFERENCE_TEMP_C + TEMP_PER_IRRADIANCE * g_eff)
    out[:, 3] = mean[:, S_V] / vnom
    out[:, 4] = std[:, S_V] / vnom
    out[:, 5] = mean[:, S_I] / inom
    out[:, 6] = std[:, S_I] / inom
    out[:, 7] = p_rel
    out[:, 8] = std[:, S_P] / rated
    out[:, 9] = g_eff / 1000.0
    out[:, 10] = eff
    out[:, 11] = mismatch
    out[:, 12] = missing
    out[:, 13] = flat_frac
    return out


# --------------------------------------------------------------------------------------------- diagnosis
# Rules on the features that pick the recommendation of an anomalous window (the model says *that* a window is
# unusual; these say *what it looks like*). Checked in this order; the first that matches wins.
RECOMMENDATIONS: Final = {
    "sensor_stuck": "sensor stuck: check the sensor",
    "overheating": "check ventilation / cooling",
    "string_fault": "check string wiring, connectors and fuses",
    "soiling": "inspect/clean the panel (soiling or shading)",
    "unknown": "inspect the device: its readings are unusual",
}
STUCK_FLAT_FRAC: Final = 0.9  # flat_frac at or above: a sensor repeats its value (sensor_stuck)
HOT_EXCESS_C: Final = 20.0  # temp_excess_c at or above: overheating ...
HOT_TEMP_C: Final = 75.0  # ... or temp_mean_c at or above
BRIGHT_IRRADIANCE_REL: Final = 0.3  # irradiance_rel at or above: bright enough to judge efficiency
FAULT_EFFICIENCY: Final = 0.4  # efficiency under this with v_rel >= FAULT_MIN_V_REL: string_fault (current lost)
FAULT_MIN_V_REL: Final = 0.85
SOILED_EFFICIENCY: Final = 0.62  # efficiency under this (bright): soiling or shading


def kinds_of(f: npt.NDArray[np.float32], by_model: npt.NDArray[np.bool_]) -> tuple[list[str], npt.NDArray[np.bool_]]:
    """``(kind per window, anomalous per window)``: anomalous = flagged by the model or by a strict rule; the kind
    is the strict rules' diagnosis, or for a model-only flag the loose rules' ("unknown" if none matches)."""
    strict = diagnose(f)
    flagged = by_model | (np.asarray(strict) != "unknown")
    if np.any(by_model):
        loose = diagnose(f, loose=True)
        strict = [s if s != "unknown" or not m else lo for s, lo, m in zip(strict, loose, by_model, strict=True)]
    return strict, flagged


def rule_flags(f: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Windows a diagnosis rule (other than "unknown") matches: known failure signatures, flagged even when the
    model's score is under its threshold (an IsolationForest cannot extrapolate: an efficiency far below any
    seen in training scores like the lowest normal one)."""
    return np.asarray(diagnose(f)) != "unknown"


# Looser thresholds for a window the *model* flagged that no strict rule matches: it is already known to be
# unusual, so the rules only have to say which way it leans.
LOOSE: Final = {"flat": 0.6, "hot_excess": 10.0, "hot_temp": 65.0, "fault_eff": 0.45, "soiled_eff": 0.72}


def diagnose(f: npt.NDArray[np.float32], loose: bool = False) -> list[str]:
    """Kind (a key of :data:`RECOMMENDATIONS`) of each row of features ``f`` ``(n, N_FEATURES)``.

    ``loose``: use the :data:`LOOSE` thresholds (for windows the model already flagged)."""
    fi = FEATURE_INDEX
    lim = LOOSE if loose else {
        "flat": STUCK_FLAT_FRAC, "hot_excess": HOT_EXCESS_C, "hot_temp": HOT_TEMP_C,
        "fault_eff": FAULT_EFFICIENCY, "soiled_eff": SOILED_EFFICIENCY,
    }
    flat = f[:, fi["flat_frac"]] >= lim["flat"]
    hot = (f[:, fi["temp_excess_c"]] >= lim["hot_excess"]) | (f[:, fi["temp_mean_c"]] >= lim["hot_temp"])
    bright = f[:, fi["irradiance_rel"]] >= BRIGHT_IRRADIANCE_REL
    eff = f[:, fi["efficiency"]]
    fault = bright & (eff < lim["fault_eff"]) & (f[:, fi["v_rel"]] >= FAULT_MIN_V_REL)
    soiled = bright & (eff < lim["soiled_eff"])
    kinds = np.select(
        [flat, hot, fault, soiled], ["sensor_stuck", "overheating", "string_fault", "soiling"], default="unknown"
    )
    return [str(k) for k in kinds]

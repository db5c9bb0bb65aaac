"""``[analytics.anomaly]``: per-device anomaly detection and health assessment of solar panels and strings.

Example (docs/analytics.md, "Anomaly detection and health")::

    [analytics.anomaly]
    window_s = 60
    clear_after_windows = 3
    devices = [
      { name = "pv-01", irradiance = "site.poa_irradiance", rated_w = 400 },
      { name = "pv-02", temperature = "pv-02.t_module", irradiance = "site.poa_irradiance", rated_w = 400 },
      { name = "string-a", rated_w = 8000, v_nominal = 740 },
    ]

A device's signal points default to ``<name>.temperature``, ``<name>.voltage``, ``<name>.current`` and
``<name>.power`` (the naming pattern: many devices named alike need one ``{ name = ... }`` each); any of them can
be named explicitly. ``irradiance`` is optional and may be shared by many devices (one pyranometer per site).

:func:`parse_anomaly` reads the table (errors name the file and key, never raise); :func:`build_anomaly` makes the
analytics. The lead hooks both into the top-level ``[analytics]`` section.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from gateway.config_load import ConfigProblem, fill_kwargs

if TYPE_CHECKING:
    from gateway.analytics.base import Analytic

SHIPPED_MODEL: Final = Path(__file__).resolve().parent / "models" / "panel_iforest.onnx"


@dataclass(frozen=True, slots=True)
class AnomalyDevice:
    """One panel or string to watch. Point names are full ``device.point`` names of configured points."""

    name: str  # device name: prefix of its derived points (<name>.anomaly_score, <name>.health_score, ...)
    temperature: str = ""  # module temperature point, °C ("" = "<name>.temperature")
    voltage: str = ""  # DC voltage point, V ("" = "<name>.voltage")
    current: str = ""  # DC current point, A ("" = "<name>.current")
    power: str = ""  # DC power point, W ("" = "<name>.power")
    irradiance: str = ""  # plane-of-array irradiance point, W/m² ("" = none: soiling cannot be detected)
    rated_w: float = 400.0  # rated power at STC, W (a string: panels × panel rating)
    v_nominal: float = 37.0  # voltage at maximum power, V (a string: panels × panel Vmp)

    def point(self, signal: str) -> str:
        """Full point name of ``signal`` (temperature/voltage/current/power/irradiance), "" if none."""
        given: str = getattr(self, signal)
        if given or signal == "irradiance":
            return given
        return f"{self.name}.{signal}"


@dataclass(frozen=True, slots=True)
class AnomalyConfig:
    """The ``[analytics.anomaly]`` table."""

    model: Path | None = None  # ONNX model file; its sidecar is the same path with .json (None = the shipped one)
    window_s: float = 60.0  # tumbling window length, s (by reading ts); the shipped model was trained on 60 s
    grace_s: float = 5.0  # a window closes this long after its end, for late readings; later ones are dropped
    sample_period_s: float = 1.0  # expected period of each signal, s (for the missing-data fraction)
    min_samples: int = 3  # a window is scored only with this many valid samples of each required signal
    threshold: float | None = None  # anomaly_score above which a window is anomalous (None = the sidecar's)
    raise_after_windows: int = 1  # consecutive anomalous windows that raise a device's alarm
    clear_after_windows: int = 3  # consecutive normal windows that clear it
    health_period_s: float = 300.0  # how often the health assessment is emitted, s
    health_horizon_s: float = 3600.0  # rolling horizon of the health assessment, s
    stress_temp_c: float = 70.0  # module temperature counted as thermal stress, °C
    devices: tuple[AnomalyDevice, ...] = ()  # the panels/strings (array of inline tables)

    def model_path(self) -> Path:
        return self.model if self.model is not None else SHIPPED_MODEL


_RANGES: Final = {
    "window_s": (10.0, 3600.0),
    "grace_s": (0.0, 600.0),
    "sample_period_s": (0.01, 3600.0),
    "min_samples": (1, 100_000),
    "raise_after_windows": (1, 1000),
    "clear_after_windows": (1, 1000),
    "health_period_s": (10.0, 86_400.0),
    "health_horizon_s": (60.0, 30 * 86_400.0),
    "stress_temp_c": (20.0, 200.0),
}


def parse_anomaly(
    raw: Any, file: str = "<config>", base_dir: Path | None = None
) -> tuple[AnomalyConfig | None, list[ConfigProblem]]:
    """Parse the ``[analytics.anomaly]`` table (the value of that key, already read by ``tomllib``).

    Returns ``(None, [])`` when the table is absent, ``(config, [])`` when it is valid, ``(None, problems)``
    otherwise. ``base_dir`` resolves a relative ``model`` path (the config file's directory). Never raises.
    """
    problems: list[ConfigProblem] = []
    key = "analytics.anomaly"

    def err(k: str, message: str) -> None:
        problems.append(ConfigProblem(file, k, message))

    if raw is None:
        return None, problems
    if not isinstance(raw, Mapping):
        err(key, f"expected a table, got {type(raw).__name__}")
        return None, problems
    kw, _ = fill_kwargs(AnomalyConfig, raw, key, err, skip=("devices",))
    for k, (lo, hi) in _RANGES.items():
        if k in kw and not lo <= kw[k] <= hi:
            err(f"{key}.{k}", f"must be {lo:g}..{hi:g}, got {kw[k]!r}")
    if isinstance(kw.get("model"), Path) and not kw["model"].is_absolute() and base_dir is not None:
        kw["model"] = base_dir / kw["model"]
    model = kw.get("model") or SHIPPED_MODEL
    if "model" not in raw or "model" in kw:
        if not Path(model).is_file():
            err(f"{key}.model", f"model file not found: {model}")
        elif not Path(model).with_suffix(".json").is_file():
            err(f"{key}.model", f"model sidecar not found: {Path(model).with_suffix('.json')}")
        else:
            try:
                json.loads(Path(model).with_suffix(".json").read_text())
            except (OSError, ValueError) as e:
                err(f"{key}.model", f"unreadable model sidecar: {e}")
    devices: list[AnomalyDevice] = []
    raw_devices = raw.get("devices", [])
    if not isinstance(raw_devices, list):
        err(f"{key}.devices", "expected an array of tables, e.g. devices = [{ name = \"pv-01\" }]")
        raw_devices = []
    seen: set[str] = set()
    for i, d in enumerate(raw_devices):
        dkey = f"{key}.devices[{i}]"
        if not isinstance(d, Mapping):
            err(dkey, f"expected a table, got {type(d).__name__}")
            continue
        if isinstance(d.get("name"), str):
            dkey = f"{key}.devices[{d['name']}]"
        dkw, ok = fill_kwargs(AnomalyDevice, d, dkey, err)
        if not ok:
            continue
        dev = AnomalyDevice(**dkw)
        if not dev.name.strip():
            err(f"{dkey}.name", "must not be empty")
            continue
        if dev.name in seen:
            err(f"{dkey}.name", f"duplicate device {dev.name!r}")
            continue
        seen.add(dev.name)
        for f in ("rated_w", "v_nominal"):
            if not getattr(dev, f) > 0:
                err(f"{dkey}.{f}", f"must be > 0, got {getattr(dev, f)!r}")
                ok = False
        if ok:
            devices.append(dev)
    if not raw_devices:
        err(f"{key}.devices", "no device: give at least one, e.g. devices = [{ name = \"pv-01\" }]")
    if problems:
        return None, problems
    return dataclasses.replace(AnomalyConfig(**kw), devices=tuple(devices)), problems


def build_anomaly(cfg: AnomalyConfig) -> list[Analytic]:
    """The analytics of a parsed config: one :class:`AnomalyDetector` (it also runs the health assessment)."""
    from gateway.analytics.anomaly import AnomalyDetector

    return [AnomalyDetector(cfg)]

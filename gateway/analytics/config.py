"""``[analytics]``: frequency monitoring and energy/demand settings, their parser and :func:`build_analytics`.

The dataclasses are the shape (frozen, one-line comment per setting, documented in ``docs/config.md``);
:func:`parse_analytics` fills them from the TOML table with :func:`gateway.config_load.fill_kwargs` so every
error names the file and key path (with a "did you mean"). Point names in ``buses`` and ``meters`` must be
configured points (``device.point``). ``gateway.config`` imports this module, so ``gateway.config_load`` is
imported lazily here (it imports ``gateway.config``).
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from gateway.analytics.anomaly_config import AnomalyConfig
    from gateway.analytics.base import Analytic
    from gateway.config_load import ConfigProblem

PowerUnit = Literal["W", "kW"]


@dataclass(frozen=True, slots=True)
class BusConfig:
    """One entry of ``[analytics.frequency].buses``."""

    name: str  # bus name: device of its alarms and of its derived point "<name>.f_avg_1s"
    point: str  # full name of the bus's frequency point, "device.point" (Hz)


@dataclass(frozen=True, slots=True)
class FrequencyConfig:
    """``[analytics.frequency]``: 1-s window averages per bus, under/over-frequency alarms."""

    nominal_hz: float = 50.0  # nominal system frequency (50 or 60 Hz)
    band_hz: float = 0.2  # alarm when a 1-s average is outside nominal ± band (strictly)
    hysteresis_hz: float = 0.05  # clear only when back inside nominal ± (band − hysteresis)
    clear_windows: int = 3  # ... for this many consecutive 1-s windows
    grace_ms: int = 200  # a window closes this long after its end (late readings), or at a later window's reading
    buses: tuple[BusConfig, ...] = ()  # the monitored buses (none = frequency monitoring off)


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """One entry of ``[analytics.energy].meters``."""

    name: str  # meter name: device of its derived points "<name>.energy_today_kwh", ...
    power_point: str  # full name of its active power point, "device.point"
    unit: PowerUnit = "W"  # unit of the power point's values: "W" or "kW"
    rated_w: float = 0.0  # rated power (W) for <name>.efficiency = power / rated (0 = no efficiency)
    daily_target_kwh: float = 0.0  # daily energy target for <name>.energy_vs_target (0 = no target)
    high_demand_w: float = 0.0  # high demand while power > this (W) (0 = no demand flag)


@dataclass(frozen=True, slots=True)
class EnergyConfig:
    """``[analytics.energy]``: energy per day and daypart, demand flag and efficiency per meter."""

    utc_offset_h: float = 0.0  # the site's local time = UTC + this (days and dayparts are local), -12..14
    max_gap_s: float = 10.0  # readings further apart than this are a gap: no energy is counted across it
    emit_every_s: float = 60.0  # cadence of energy_today_kwh, energy_vs_target, daypart, efficiency, ...
    demand_hysteresis_pct: float = 5.0  # high demand ends when power < high_demand_w x (1 − this/100)
    meters: tuple[MeterConfig, ...] = ()  # the meters (none = energy analytics off)


@dataclass(frozen=True, slots=True)
class AnalyticsConfig:
    """``[analytics]``: edge analytics (docs/analytics.md)."""

    frequency: FrequencyConfig = field(default_factory=FrequencyConfig)  # [analytics.frequency]
    energy: EnergyConfig = field(default_factory=EnergyConfig)  # [analytics.energy]
    anomaly: AnomalyConfig | None = None  # [analytics.anomaly] (gateway/analytics/anomaly_config.py; None = off)


def build_analytics(cfg: AnalyticsConfig) -> list[Analytic]:
    """The analytics a config asks for: a frequency monitor if buses are configured, energy if meters are,
    the anomaly detector if ``[analytics.anomaly]`` is given."""
    from gateway.analytics.energy import EnergyAnalytics
    from gateway.analytics.frequency import FrequencyMonitor

    out: list[Analytic] = []
    if cfg.frequency.buses:
        out.append(FrequencyMonitor(cfg.frequency))
    if cfg.energy.meters:
        out.append(EnergyAnalytics(cfg.energy))
    if cfg.anomaly is not None:
        from gateway.analytics.anomaly_config import build_anomaly

        out.extend(build_anomaly(cfg.anomaly))
    return out


# ------------------------------------------------------------------------------------------------ parsing

_SECTIONS = ("frequency", "energy", "anomaly")


def parse_analytics(
    raw: Any,
    file: str = "<config>",
    known_points: typing.Collection[str] | None = None,
    base_dir: Path | None = None,
) -> tuple[AnalyticsConfig, list[ConfigProblem]]:
    """Parse the ``[analytics]`` table (already read by ``tomllib``). Never raises on bad input.

    ``known_points``: full names of the configured points; a bus or meter naming another point is an error
    (``None`` skips that check, e.g. when the links themselves had errors). ``base_dir`` resolves relative paths
    of ``[analytics.anomaly]`` (parsed by :func:`gateway.analytics.anomaly_config.parse_anomaly`).
    """
    from gateway.config_load import ConfigProblem, fill_kwargs, suggest

    problems: list[ConfigProblem] = []

    def err(key: str, message: str) -> None:
        problems.append(ConfigProblem(file, key, message))

    if raw is None:
        return AnalyticsConfig(), problems
    if not isinstance(raw, Mapping):
        err("analytics", f"expected a table, got {type(raw).__name__}")
        return AnalyticsConfig(), problems
    for k in raw:
        if k not in _SECTIONS:
            err(f"analytics.{k}", f"unknown key{suggest(k, _SECTIONS)}")
    freq = _frequency(raw.get("frequency"), err, fill_kwargs, known_points)
    energy = _energy(raw.get("energy"), err, fill_kwargs, known_points)
    anomaly = None
    if raw.get("anomaly") is not None:
        from gateway.analytics.anomaly_config import parse_anomaly

        anomaly, anomaly_problems = parse_anomaly(raw["anomaly"], file, base_dir)
        problems.extend(anomaly_problems)
    if known_points is not None:
        from gateway.analytics.energy import derived_names as energy_names
        from gateway.analytics.frequency import derived_names as freq_names

        clash = sorted({*freq_names(freq), *energy_names(energy)} & set(known_points))
        for name in clash:
            err("analytics", f"derived point {name!r} is also a configured point; rename the bus or meter")
    return AnalyticsConfig(frequency=freq, energy=energy, anomaly=anomaly), problems


_Err = typing.Callable[[str, str], None]


def _check_name(name: Any, key: str, err: _Err, names_used: dict[str, str]) -> None:
    if not isinstance(name, str):
        return
    if not name.strip() or "." in name:
        err(f"{key}.name", "must be non-empty and contain no '.'")
    elif name in names_used:
        err(f"{key}.name", f"name {name!r} used twice (also {names_used[name]})")
    else:
        names_used[name] = key


def _check_point(point: Any, key: str, err: _Err, known: typing.Collection[str] | None) -> None:
    from gateway.config_load import suggest

    if known is None or not isinstance(point, str) or point in known:
        return
    err(key, f"unknown point {point!r} (expected 'device.point' of a configured device){suggest(point, known)}")


def _frequency(
    raw: Any,
    err: _Err,
    fill_kwargs: Any,
    known: typing.Collection[str] | None,
) -> FrequencyConfig:
    key = "analytics.frequency"
    if raw is None:
        return FrequencyConfig()
    if not isinstance(raw, Mapping):
        err(key, f"expected a table, got {type(raw).__name__}")
        return FrequencyConfig()
    kw, _ = fill_kwargs(FrequencyConfig, raw, key, err, skip=("buses",))
    nominal = kw.get("nominal_hz", 50.0)
    band = kw.get("band_hz", 0.2)
    hyst = kw.get("hysteresis_hz", 0.05)
    if not 1.0 <= nominal <= 1000.0:
        err(f"{key}.nominal_hz", f"must be 1..1000 Hz (50 or 60 in a grid), got {nominal}")
    if not 0.0 < band < nominal:
        err(f"{key}.band_hz", f"must be > 0 and below nominal_hz, got {band}")
    if not 0.0 <= hyst < band:
        err(f"{key}.hysteresis_hz", f"must be >= 0 and below band_hz ({band}), got {hyst}")
    if kw.get("clear_windows", 3) < 1:
        err(f"{key}.clear_windows", f"must be >= 1, got {kw['clear_windows']}")
    if not 0 <= kw.get("grace_ms", 200) <= 10_000:
        err(f"{key}.grace_ms", f"must be 0..10000 ms, got {kw['grace_ms']}")
    buses: list[BusConfig] = []
    buses_raw = raw.get("buses", [])
    if not isinstance(buses_raw, list):
        err(f"{key}.buses", 'expected an array of tables, e.g. buses = [{ name = "bus1", point = "incomer.f" }]')
        buses_raw = []
    points_seen: set[str] = set()
    names_used: dict[str, str] = {}
    for i, b in enumerate(buses_raw):
        label = b.get("name", i) if isinstance(b, Mapping) else i
        bkey = f"{key}.buses[{label}]"
        if not isinstance(b, Mapping):
            err(bkey, f"expected a table, got {type(b).__name__}")
            continue
        bkw, ok = fill_kwargs(BusConfig, b, bkey, err)
        _check_name(bkw.get("name"), bkey, err, names_used)
        point = bkw.get("point")
        _check_point(point, f"{bkey}.point", err, known)
        if isinstance(point, str):
            if point in points_seen:
                err(f"{bkey}.point", f"point {point!r} is monitored by another bus already")
            points_seen.add(point)
        if ok:
            buses.append(BusConfig(**bkw))
    return FrequencyConfig(**kw, buses=tuple(buses))


def _energy(
    raw: Any,
    err: _Err,
    fill_kwargs: Any,
    known: typing.Collection[str] | None,
) -> EnergyConfig:
    key = "analytics.energy"
    if raw is None:
        return EnergyConfig()
    if not isinstance(raw, Mapping):
        err(key, f"expected a table, got {type(raw).__name__}")
        return EnergyConfig()
    kw, _ = fill_kwargs(EnergyConfig, raw, key, err, skip=("meters",))
    off = kw.get("utc_offset_h", 0.0)
    if not -12.0 <= off <= 14.0 or not math.isclose(off * 4, round(off * 4)):
        err(f"{key}.utc_offset_h", f"must be -12..14 hours in steps of 0.25 (e.g. 1, 5.5, -3.5), got {off}")
    if not 0.0 < kw.get("max_gap_s", 10.0) <= 86_400.0:
        err(f"{key}.max_gap_s", f"must be > 0 and <= 86400 s, got {kw['max_gap_s']}")
    if not 1.0 <= kw.get("emit_every_s", 60.0) <= 86_400.0:
        err(f"{key}.emit_every_s", f"must be 1..86400 s, got {kw['emit_every_s']}")
    if not 0.0 <= kw.get("demand_hysteresis_pct", 5.0) < 100.0:
        err(f"{key}.demand_hysteresis_pct", f"must be 0..<100 %, got {kw['demand_hysteresis_pct']}")
    meters: list[MeterConfig] = []
    meters_raw = raw.get("meters", [])
    if not isinstance(meters_raw, list):
        err(f"{key}.meters", 'expected an array of tables, e.g. meters = [{ name = "pv1", power_point = "pv1.P" }]')
        meters_raw = []
    points_seen: set[str] = set()
    names_used: dict[str, str] = {}
    for i, m in enumerate(meters_raw):
        label = m.get("name", i) if isinstance(m, Mapping) else i
        mkey = f"{key}.meters[{label}]"
        if not isinstance(m, Mapping):
            err(mkey, f"expected a table, got {type(m).__name__}")
            continue
        mkw, ok = fill_kwargs(MeterConfig, m, mkey, err)
        _check_name(mkw.get("name"), mkey, err, names_used)
        point = mkw.get("power_point")
        _check_point(point, f"{mkey}.power_point", err, known)
        if isinstance(point, str):
            if point in points_seen:
                err(f"{mkey}.power_point", f"point {point!r} is the power point of another meter already")
            points_seen.add(point)
        for f in ("rated_w", "daily_target_kwh", "high_demand_w"):
            if mkw.get(f, 0.0) < 0:
                err(f"{mkey}.{f}", f"must be >= 0 (0 = off), got {mkw[f]}")
                ok = False
        if ok:
            meters.append(MeterConfig(**mkw))
    return EnergyConfig(**kw, meters=tuple(meters))

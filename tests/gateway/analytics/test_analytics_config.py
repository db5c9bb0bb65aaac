"""``[analytics]`` config: parsing, defaults, errors naming file and key, build_analytics, documentation."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gateway.analytics import config as AC
from gateway.analytics.energy import EnergyAnalytics
from gateway.analytics.frequency import FrequencyMonitor
from gateway.config_load import ConfigError, load_config

REPO = Path(__file__).resolve().parents[3]

BASE = """
version = 1
[gateway]
id = "gw-test"

[[links]]
name = "line1"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = 1502

[[links.devices]]
name = "incomer"
unit_id = 1
points = [
  { name = "f", kind = "input", address = 0, type = "float32", unit = "Hz" },
  { name = "P", kind = "input", address = 2, type = "float32", unit = "kW" },
]

[[links.devices]]
name = "pv1"
unit_id = 2
points = [{ name = "P", kind = "input", address = 0, type = "float32", unit = "W" }]
"""

ANALYTICS = """
[analytics.frequency]
nominal_hz = 60
band_hz = 0.3
hysteresis_hz = 0.1
clear_windows = 5
grace_ms = 150
buses = [{ name = "bus1", point = "incomer.f" }]

[analytics.energy]
utc_offset_h = 5.5
max_gap_s = 30
emit_every_s = 300
demand_hysteresis_pct = 10
meters = [
  { name = "pv1", power_point = "pv1.P", unit = "W", rated_w = 400, daily_target_kwh = 2.5, high_demand_w = 350 },
  { name = "site", power_point = "incomer.P", unit = "kW" },
]
"""


def load(tmp_path: Path, text: str) -> AC.AnalyticsConfig:
    p = tmp_path / "site.toml"
    p.write_text(text)
    cfg, _ = load_config(p)
    return cfg.analytics


def problems(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / "site.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    return [str(x) for x in ei.value.problems]


def test_no_analytics_section_gives_defaults_and_no_analytics(tmp_path: Path) -> None:
    a = load(tmp_path, BASE)
    assert a == AC.AnalyticsConfig()
    assert (a.frequency.nominal_hz, a.frequency.band_hz) == (50.0, 0.2)
    assert AC.build_analytics(a) == []


def test_full_section_is_parsed(tmp_path: Path) -> None:
    a = load(tmp_path, BASE + ANALYTICS)
    f = a.frequency
    assert (f.nominal_hz, f.band_hz, f.hysteresis_hz, f.clear_windows, f.grace_ms) == (60.0, 0.3, 0.1, 5, 150)
    assert f.buses == (AC.BusConfig("bus1", "incomer.f"),)
    e = a.energy
    assert (e.utc_offset_h, e.max_gap_s, e.emit_every_s, e.demand_hysteresis_pct) == (5.5, 30.0, 300.0, 10.0)
    assert e.meters == (
        AC.MeterConfig("pv1", "pv1.P", "W", 400.0, 2.5, 350.0),
        AC.MeterConfig("site", "incomer.P", "kW"),
    )
    built = AC.build_analytics(a)
    assert [type(x) for x in built] == [FrequencyMonitor, EnergyAnalytics]
    assert built[0].inputs() == ["incomer.f"]
    assert built[1].inputs() == ["pv1.P", "incomer.P"]
    assert isinstance(built[0], FrequencyMonitor) and built[0].low_hz == pytest.approx(59.7)


def test_array_of_tables_form_is_accepted(tmp_path: Path) -> None:
    text = BASE + """
[[analytics.frequency.buses]]
name = "bus1"
point = "incomer.f"
"""
    assert load(tmp_path, text).frequency.buses == (AC.BusConfig("bus1", "incomer.f"),)


def test_unknown_keys_name_file_and_key_with_did_you_mean(tmp_path: Path) -> None:
    text = BASE + """
[analytics]
frequncy = {}
[analytics.energy]
max_gap = 5
meters = [{ name = "pv1", power_point = "pv1.P", rated = 400 }]
"""
    ps = problems(tmp_path, text)
    assert any("site.toml: analytics.frequncy: unknown key; did you mean 'frequency'?" in p for p in ps), ps
    assert any("analytics.energy.max_gap: unknown key; did you mean 'max_gap_s'?" in p for p in ps), ps
    assert any("analytics.energy.meters[pv1].rated: unknown key; did you mean 'rated_w'?" in p for p in ps), ps


def test_unknown_top_level_key_suggests_analytics(tmp_path: Path) -> None:
    ps = problems(tmp_path, BASE + "[analytic]\n")
    assert any("analytic: unknown top-level key; did you mean 'analytics'?" in p for p in ps), ps


def test_unknown_points_are_errors_naming_the_key(tmp_path: Path) -> None:
    text = BASE + """
[analytics.frequency]
buses = [{ name = "bus1", point = "incomer.frq" }]
[analytics.energy]
meters = [{ name = "pv1", power_point = "pv2.P" }]
"""
    ps = problems(tmp_path, text)
    assert any(
        "site.toml: analytics.frequency.buses[bus1].point: unknown point 'incomer.frq'" in p
        and "did you mean 'incomer.f'?" in p
        for p in ps
    ), ps
    assert any("analytics.energy.meters[pv1].power_point: unknown point 'pv2.P'" in p for p in ps), ps


def test_missing_required_and_bad_values(tmp_path: Path) -> None:
    text = BASE + """
[analytics.frequency]
band_hz = 0
hysteresis_hz = 0.5
clear_windows = 0
grace_ms = -1
nominal_hz = "50"
buses = [{ name = "bus.1", point = "incomer.f" }, { point = "incomer.f" }]
[analytics.energy]
utc_offset_h = 5.3
max_gap_s = 0
emit_every_s = 0.5
meters = [{ name = "pv1", power_point = "pv1.P", unit = "MW", rated_w = -1 }]
"""
    ps = "\n".join(problems(tmp_path, text))
    for key, words in [
        ("analytics.frequency.band_hz", "must be > 0"),
        ("analytics.frequency.hysteresis_hz", "below band_hz"),
        ("analytics.frequency.clear_windows", "must be >= 1"),
        ("analytics.frequency.grace_ms", "0..10000"),
        ("analytics.frequency.nominal_hz", "expected a number"),
        ("analytics.frequency.buses[bus.1].name", "no '.'"),
        ("analytics.frequency.buses[1].name", "missing required key"),
        ("analytics.frequency.buses[1].point", "monitored by another bus"),
        ("analytics.energy.utc_offset_h", "steps of 0.25"),
        ("analytics.energy.max_gap_s", "must be > 0"),
        ("analytics.energy.emit_every_s", "1..86400"),
        ("analytics.energy.meters[pv1].unit", "expected one of 'W', 'kW'"),
        ("analytics.energy.meters[pv1].rated_w", "must be >= 0"),
    ]:
        assert f"site.toml: {key}: " in ps and words in ps.split(f"site.toml: {key}: ")[1].split("\n")[0], (key, ps)


def test_duplicate_names_and_derived_point_clashes(tmp_path: Path) -> None:
    clash = '{ name = "f_avg_1s", kind = "input", address = 2'
    text = BASE.replace('{ name = "P", kind = "input", address = 2', clash) + """
[analytics.frequency]
buses = [{ name = "incomer", point = "incomer.f" }]
[analytics.energy]
meters = [{ name = "pv1", power_point = "pv1.P" }, { name = "pv1", power_point = "incomer.f" }]
"""
    ps = "\n".join(problems(tmp_path, text))
    assert "analytics.energy.meters[pv1].name: name 'pv1' used twice" in ps
    assert "derived point 'incomer.f_avg_1s' is also a configured point" in ps


def test_bad_links_do_not_cascade_into_unknown_point_errors(tmp_path: Path) -> None:
    text = BASE.replace('type = "float32", unit = "Hz"', 'type = "float", unit = "Hz"') + """
[analytics.frequency]
buses = [{ name = "bus1", point = "incomer.f" }]
"""
    ps = problems(tmp_path, text)
    assert any("type" in p for p in ps)
    assert not any("unknown point" in p for p in ps), ps


def test_every_analytics_setting_is_documented() -> None:
    doc = (REPO / "docs" / "config.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", doc, flags=re.M))
    section = doc.split("## `[analytics]`", 1)[1]
    in_section = set(re.findall(r"^\| `([a-z_0-9]+)` \|", section, flags=re.M))
    names = {
        f.name
        for cls in (AC.FrequencyConfig, AC.BusConfig, AC.EnergyConfig, AC.MeterConfig)
        for f in dataclasses.fields(cls)
    }
    assert names <= documented
    assert names - {"buses", "meters"} <= in_section, sorted(names - in_section)


def test_anomaly_section_is_parsed_by_its_own_parser_and_built(tmp_path: Path) -> None:
    from gateway.analytics.anomaly import AnomalyDetector

    a = load(tmp_path, BASE + '\n[analytics.anomaly]\ndevices = [{ name = "pv1" }]\n')
    assert a.anomaly is not None and [d.name for d in a.anomaly.devices] == ["pv1"]
    assert [type(x) for x in AC.build_analytics(a)] == [AnomalyDetector]
    ps = problems(tmp_path, BASE + "\n[analytics.anomaly]\nwindow = 60\n")
    assert any("analytics.anomaly.window: unknown key; did you mean 'window_s'?" in p for p in ps), ps

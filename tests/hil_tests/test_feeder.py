"""The demo feeder model: plausible, deterministic values and a breaker that obeys trip/close."""

from __future__ import annotations

import struct

import pytest

from hil_tests.feeder import INPUT_REGISTERS, NOMINAL_KV, FeederModel, encode_input_registers


def test_values_are_plausible_and_deterministic() -> None:
    a, b = FeederModel(seed=2), FeederModel(seed=2)
    for t in (0.0, 3600.0 * 8.5, 3600.0 * 19):
        va, vb = a.step(t), b.step(t)
        assert va == vb
        assert 0 < va["Ia"] < 400 and 0 < va["In"] < 0.2 * va["Ia"]
        assert va["Va"] == pytest.approx(NOMINAL_KV, rel=0.05)
        assert 49.9 < va["f"] < 50.1
        assert va["P"] > 0 and 0.85 < va["PF"] < 1.0


def test_evening_peak_above_night_load() -> None:
    m = FeederModel(seed=1)
    assert m.step(19 * 3600.0)["Ia"] > 1.5 * m.step(3 * 3600.0)["Ia"]


def test_trip_drops_current_and_power_close_restores() -> None:
    m = FeederModel(seed=1)
    m.step(0.0)
    m.trip(1.0)
    v = m.step(1.1)
    assert (v["Ia"], v["Ib"], v["Ic"], v["P"], v["breaker_closed"]) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert m.trip_time_s == 1.0
    m.close()
    assert m.step(1.2)["Ia"] > 0


def test_energy_integrates_power() -> None:
    m = FeederModel(seed=1)
    p0 = m.step(0.0)["P"]
    e = m.step(3600.0)["E_import"]
    assert e > 0 and e == pytest.approx(p0, rel=0.5)  # about one hour of roughly constant power


def test_register_encoding_matches_demo_map() -> None:
    v = FeederModel(seed=3).step(100.0)
    words = encode_input_registers(v)
    assert len(words) == INPUT_REGISTERS
    ia = struct.unpack(">f", struct.pack(">HH", words[0], words[1]))[0]
    assert ia == pytest.approx(v["Ia"], rel=1e-6)
    pf = struct.unpack(">h", struct.pack(">H", words[20]))[0] * 0.001
    assert pf == pytest.approx(v["PF"], abs=0.001)
    energy = ((words[21] << 16) | words[22]) * 0.1
    assert energy == pytest.approx(v["E_import"], abs=0.1)

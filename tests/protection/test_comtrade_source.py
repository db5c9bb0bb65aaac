"""COMTRADE playback: our own records and hand-written waveform files, RMS, looping, the end of the file, errors."""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from protection.bank import ElementBank
from protection.comtrade import ComtradeError, write_comtrade
from protection.comtrade_source import (
    ComtradePlaybackSource,
    ComtradePlaybackSpec,
    load_comtrade_playback,
    sliding_rms,
)
from protection.cycle import Cycle
from protection.measurements import V_ALL, V_F, V_IA, V_IB, V_VA, Measurements
from protection.output import EV_TRIP
from protection.shm import EventRing
from tests.protection.test_comtrade import EPOCH, SETTINGS, Fault, record_fault

MS = 1_000_000
START = 5_000 * MS  # monotonic ns the playback starts at
SQRT2 = math.sqrt(2.0)

# (name, phase, unit, a, primary, secondary, PS)
Chan = tuple[str, str, str, float, float, float, str]


def write_ascii_comtrade(
    path: Path,
    chans: Sequence[Chan],
    raw: np.ndarray,
    rate_hz: float,
    station: str = "Test station",
    encoding: str = "ascii",
) -> Path:
    """A small ASCII COMTRADE (C37.111-2013) written by hand, independent of our writer. ``raw``: (N, A) ints."""
    n, na = raw.shape
    lines = [f"{station},synth,2013", f"{na + 1},{na}A,1D"]
    for i, (name, ph, unit, a, prim, sec, ps) in enumerate(chans):
        lines.append(f"{i + 1},{name},{ph},,{unit},{a},0,0,-32767,32767,{prim},{sec},{ps}")
    lines += ["1,TRIP,,,0", "50", "1", f"{rate_hz:g},{n}", "01/01/2025,00:00:00.000000", "01/01/2025,00:00:00.100000"]
    lines += ["ASCII", "1", "0,0", "0,0"]
    cfg = path.with_suffix(".cfg")
    cfg.write_bytes(("\r\n".join(lines) + "\r\n").encode(encoding))
    rows = []
    for k in range(n):
        ts = round(k * 1e6 / rate_hz)
        rows.append(",".join([str(k + 1), str(ts), *(str(int(v)) for v in raw[k]), "0"]))
    path.with_suffix(".dat").write_text("\r\n".join(rows) + "\r\n")
    return cfg


def sine_file(tmp_path: Path, rate_hz: float = 1000.0, seconds: float = 0.2, name: str = "wave") -> Path:
    """50 Hz waveforms: IA 100 A RMS (primary), I_B 0.5 A RMS secondary of a 400/1 CT (200 A), Va 6350 V RMS."""
    t = np.arange(round(seconds * rate_hz)) / rate_hz
    w = 2 * np.pi * 50.0 * t
    ia = 100.0 * SQRT2 * np.sin(w + 0.3) / 0.01
    ib = 0.5 * SQRT2 * np.sin(w - 2.0944 + 0.3) / 0.0001
    va = 6350.0 * SQRT2 * np.sin(w + 0.1) / 1.0
    raw = np.rint(np.stack([ia, ib, va], axis=1)).astype(np.int64)
    chans: list[Chan] = [
        ("IA", "A", "A", 0.01, 400.0, 1.0, "P"),
        ("I_B", "B", "A", 0.0001, 400.0, 1.0, "S"),
        ("Va", "A", "V", 1.0, 11000.0, 110.0, "P"),
    ]
    return write_ascii_comtrade(tmp_path / name, chans, raw, rate_hz)


def read(src: ComtradePlaybackSource, t_ns: int) -> Measurements:
    m = Measurements(valid=0)
    src.read_into(m, START + t_ns)
    return m


# --- waveforms -----------------------------------------------------------------------------------------------


def test_waveform_file_plays_as_one_cycle_rms(tmp_path: Path) -> None:
    spec = load_comtrade_playback(sine_file(tmp_path))
    assert spec.rms_computed
    assert spec.channels == (("ia", "IA"), ("ib", "I_B"), ("va", "Va"))
    assert len(spec.times_s) == 200 and spec.times_s[0] == 0.0 and spec.duration_s == pytest.approx(0.2)
    v = spec.values
    assert np.all(np.isnan(v[:19, :3]))  # the first cycle (20 samples) has no full window yet
    assert np.allclose(v[19:, 0], 100.0, rtol=1e-4)
    assert np.allclose(v[19:, 1], 200.0, rtol=1e-3)  # secondary 0.5 A x 400/1
    assert np.allclose(v[19:, 4], 6.35, rtol=1e-4)  # V -> kV
    assert np.all(np.isnan(v[:, [2, 3, 5, 6, 7]]))  # ic, in, vb, vc, f absent

    src = ComtradePlaybackSource(spec, START)
    early = read(src, 5 * MS)
    assert early.valid == 0  # nothing has a full cycle yet; absent quantities never valid
    m = read(src, 50 * MS + 300_000)  # sample and hold: sample 50 is in force until 51 ms
    assert m.valid == V_IA | V_IB | V_VA
    assert (m.ia, m.ib, m.va) == (v[50, 0], v[50, 1], v[50, 4])
    assert math.isnan(m.f) and math.isnan(m.ic)


def test_sliding_rms_is_exact_for_a_sine_and_handles_variable_rates() -> None:
    t = np.arange(400) / 2000.0  # 40 samples per cycle
    x = 10.0 * np.sin(2 * np.pi * 50 * t + 1.0)
    r = sliding_rms(t, x, 0.02)
    assert np.all(np.isnan(r[:39])) and np.allclose(r[39:], 10.0 / SQRT2, rtol=1e-12)
    # a step from 5 A RMS-equivalent DC to 0: the window empties linearly
    t2 = np.concatenate([np.arange(0, 0.05, 0.001), 0.05 + np.arange(0, 0.05, 0.0005)])  # the rate doubles
    x2 = np.where(t2 < 0.06, 5.0, 0.0)
    r2 = sliding_rms(t2, x2, 0.02)
    k = int(np.searchsorted(t2, 0.07))  # window (0.0505, 0.0705]: 0.0095 s of 5 A
    assert r2[k] == pytest.approx(math.sqrt(25.0 * (0.06 - (t2[k] + 0.0005 - 0.02)) / 0.02))
    assert r2[-1] == 0.0
    x3 = x.copy()
    x3[100] = np.nan  # a missing sample poisons one window's worth, no more
    r3 = sliding_rms(t, x3, 0.02)
    assert np.all(np.isnan(r3[100:140])) and np.allclose(r3[140:], 10.0 / SQRT2)
    assert np.allclose(r3[39:100], 10.0 / SQRT2)


def test_loop_is_seamless_and_never_stale(tmp_path: Path) -> None:
    spec = load_comtrade_playback(sine_file(tmp_path), loop=True)
    assert not np.any(np.isnan(spec.values[:, [0, 1, 4]]))  # the RMS window wraps around the end
    assert np.allclose(spec.values[:, 0], 100.0, rtol=1e-4)
    src = ComtradePlaybackSource(spec, START)
    first = read(src, 7 * MS)
    again = read(src, 200 * MS + 7 * MS)  # one period later
    late = read(src, 10 * 200 * MS + 7 * MS + 400_000)
    for m in (first, again, late):
        assert m.valid == V_IA | V_IB | V_VA
        assert m.ia == spec.values[7, 0]


def test_past_the_end_holds_then_goes_stale(tmp_path: Path) -> None:
    spec = load_comtrade_playback(sine_file(tmp_path), stale_after_s=0.02)
    src = ComtradePlaybackSource(spec, START)
    end = 200 * MS  # last sample at 199 ms + its 1 ms interval
    held = read(src, end + 20 * MS)  # exactly stale_after after the end: still held and valid
    assert held.valid == V_IA | V_IB | V_VA and held.ia == spec.values[-1, 0]
    stale = read(src, end + 20 * MS + 1)
    assert stale.valid == 0 and stale.ia == spec.values[-1, 0]  # values held, nothing valid: elements block
    assert read(src, end + 3600 * 1_000_000_000).valid == 0
    assert read(src, -1).valid == 0  # before the start


def test_rms_modes(tmp_path: Path) -> None:
    raw_spec = load_comtrade_playback(sine_file(tmp_path), rms="no")
    assert not raw_spec.rms_computed
    assert raw_spec.values[:, 0].min() < -140.0  # instantaneous values as recorded
    with pytest.raises(ComtradeError, match="samples per 50 Hz cycle"):
        load_comtrade_playback(sine_file(tmp_path, rate_hz=200.0, name="coarse"))  # 4 per cycle
    with pytest.raises(ValueError):
        load_comtrade_playback(sine_file(tmp_path), rms="maybe")  # type: ignore[arg-type]


# --- channels and units --------------------------------------------------------------------------------------


def rms_file(tmp_path: Path, names: Sequence[str], units: Sequence[str] | None = None, name: str = "rms") -> Path:
    """Eight positive RMS-like channels at 100 Hz: channel i holds (i + 1) * 10 raw, a = 0.1."""
    units = units or ["A", "A", "A", "A", "kV", "kV", "kV", "Hz"]
    chans: list[Chan] = [(nm, "", u, 0.1, 1.0, 1.0, "P") for nm, u in zip(names, units, strict=True)]
    raw = np.tile(np.arange(1, len(names) + 1) * 10, (50, 1))
    return write_ascii_comtrade(tmp_path / name, chans, raw, 100.0)


def test_default_channel_names(tmp_path: Path) -> None:
    cfg = rms_file(tmp_path, ["IL1", "I b", "i_c", "3I0", "UL1", "U-B", "vcn", "Freq"])
    spec = load_comtrade_playback(cfg)
    assert not spec.rms_computed
    assert [q for q, _ in spec.channels] == ["ia", "ib", "ic", "in", "va", "vb", "vc", "f"]
    assert np.allclose(spec.values[0], [1, 2, 3, 4, 5, 6, 7, 8])
    m = read(ComtradePlaybackSource(spec, START), 0)
    assert m.valid == V_ALL and m.f == pytest.approx(8.0)


def test_explicit_mapping_is_the_whole_mapping(tmp_path: Path) -> None:
    cfg = rms_file(tmp_path, ["Feeder 1 phase A", "IB", "x", "y", "z", "w", "v", "u"])
    spec = load_comtrade_playback(cfg, {"ia": "Feeder 1 phase A", "i_n": "x", "f": "U"}, rms="no")
    assert spec.channels == (("ia", "Feeder 1 phase A"), ("in", "x"), ("f", "u"))  # "U" matched loosely to "u"
    m = read(ComtradePlaybackSource(spec, START), 0)
    assert m.valid == V_IA | 1 << 3 | V_F  # ib not mapped although a channel is called IB
    with pytest.raises(ComtradeError, match="no channel 'nope'"):
        load_comtrade_playback(cfg, {"ia": "nope"})
    with pytest.raises(ValueError, match="unknown quantity"):
        load_comtrade_playback(cfg, {"ix": "IB"})
    with pytest.raises(ComtradeError, match="no channel matches"):
        load_comtrade_playback(rms_file(tmp_path, ["p", "q"], ["A", "A"], name="anon"))


def test_units(tmp_path: Path) -> None:
    units = ["kA", "mA", "A", "A", "V", "MV", "kV", "Hz"]
    cfg = rms_file(tmp_path, ["IA", "IB", "IC", "IN", "VA", "VB", "VC", "F"], units)
    v = load_comtrade_playback(cfg).values[0]
    assert np.allclose(v, [1000.0, 0.002, 3.0, 4.0, 0.005, 6000.0, 7.0, 8.0])
    bad = rms_file(tmp_path, ["IA", "VA"], ["A", "psi"], name="bad")
    with pytest.raises(ComtradeError, match="unit 'psi'"):
        load_comtrade_playback(bad)


def test_latin1_cfg_is_read(tmp_path: Path) -> None:
    chans: list[Chan] = [("IA", "A", "A", 0.1, 1.0, 1.0, "P")]
    cfg = write_ascii_comtrade(tmp_path / "l1", chans, np.full((10, 1), 5), 100.0, station="Åbo", encoding="latin-1")
    assert load_comtrade_playback(cfg).values[0, 0] == pytest.approx(0.5)


# --- our own records -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "ascii"])
def test_our_record_plays_back_and_trips_again(tmp_path: Path, binary: bool) -> None:
    fault: Fault = record_fault()
    w = fault.window
    cfg, _ = write_comtrade(
        tmp_path,
        "rec",
        w,
        trigger_utc_ns=EPOCH + fault.trip_ns,
        station="S",
        device="D",
        element_names=("50N", "50P"),
        binary=binary,
        local_offset_min=0,
    )
    spec = load_comtrade_playback(cfg)
    assert not spec.rms_computed  # RMS values at the cycle rate: played as they are
    assert len(spec.times_s) == len(w)
    rel = (w.mono_ns - w.mono_ns[0]) / 1e9
    assert np.allclose(spec.times_s, np.arange(len(w)) / 1000.0)  # the declared rate (jitter < 0.1 ms)
    assert np.max(np.abs(spec.times_s - rel)) < 1e-4
    invalid = np.isnan(spec.values)
    for q in range(8):  # our VALID channels come back as validity (NaN = invalid)
        assert np.array_equal(invalid[:, q], (w.valid.astype(np.int64) >> q) & 1 == 0)
    assert invalid[:, 4].sum() == 10 and invalid[:, 7].sum() == 3
    ok = ~invalid
    assert np.allclose(spec.values[ok], w.values[ok], rtol=1e-4, atol=0.05)

    bank = ElementBank(SETTINGS)
    ring = EventRing.local()
    cyc = Cycle(bank, ComtradePlaybackSource(spec, START), MS, ring=ring)
    for k in range(len(w) + 40):
        cyc.run_once(START + k * MS, EPOCH + START + k * MS)
    recs = ring.read_new()
    trips = recs[(recs["element"] == 1) & (recs["events"] & EV_TRIP != 0)]
    assert len(trips) == 1
    assert (int(trips["mono_ns"][0]) - START) / 1e9 == pytest.approx((fault.trip_ns - w.mono_ns[0]) / 1e9, abs=0.002)
    assert cyc.m.valid == 0  # 40 ms past the end of the record: stale


# --- errors --------------------------------------------------------------------------------------------------


def test_bad_files_raise_comtrade_error_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.cfg"
    with pytest.raises(ComtradeError, match="no such file") as e:
        load_comtrade_playback(missing)
    assert e.value.path == str(missing)

    cfg = sine_file(tmp_path)
    cfg.with_suffix(".dat").unlink()
    with pytest.raises(ComtradeError, match="missing file") as e:
        load_comtrade_playback(cfg)
    assert str(e.value).startswith(str(cfg))

    garbage = tmp_path / "garbage.cfg"
    garbage.write_text("hello\nworld\n")
    (tmp_path / "garbage.dat").write_text("1,2,3\n")
    with pytest.raises(ComtradeError, match="not a readable COMTRADE record") as e:
        load_comtrade_playback(garbage)
    assert e.value.__cause__ is not None  # the library's exception is chained, not shown bare

    other = tmp_path / "x.txt"
    other.write_text("")
    with pytest.raises(ComtradeError, match=r"expected a \.cfg"):
        load_comtrade_playback(other)


def test_truncated_binary_dat_is_refused(tmp_path: Path) -> None:
    fault = record_fault()
    cfg, dat = write_comtrade(
        tmp_path,
        "trunc",
        fault.window,
        trigger_utc_ns=EPOCH + fault.trip_ns,
        station="S",
        device="D",
        element_names=("50N", "50P"),
        local_offset_min=0,
    )
    data = dat.read_bytes()
    dat.write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(ComtradeError, match="do not increase"):
        load_comtrade_playback(cfg)


def test_spec_and_error_cross_process_boundaries(tmp_path: Path) -> None:
    spec = load_comtrade_playback(sine_file(tmp_path), loop=True)
    back = pickle.loads(pickle.dumps(spec))
    assert isinstance(back, ComtradePlaybackSpec)
    assert np.array_equal(back.values, spec.values, equal_nan=True) and back.loop and back.source == spec.source
    err = pickle.loads(pickle.dumps(ComtradeError("/x/y.cfg", "bad")))
    assert (err.path, err.reason, str(err)) == ("/x/y.cfg", "bad", "/x/y.cfg: bad")
    with pytest.raises(ValueError):
        ComtradePlaybackSpec(times_s=np.array([0.0]), values=np.zeros((1, 8)))
    with pytest.raises(ValueError):
        ComtradePlaybackSpec(times_s=np.array([0.0, 0.0]), values=np.zeros((2, 8)))

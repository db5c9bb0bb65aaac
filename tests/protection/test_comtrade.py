"""COMTRADE fault records: a simulated fault recorded by the cycle, written, and read back by the `comtrade` package."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import comtrade
import numpy as np
import pytest

from protection.bank import ElementBank
from protection.comtrade import (
    ANALOG_CHANNELS,
    POST_FAULT_S,
    PRE_FAULT_S,
    VALID_CHANNELS,
    fault_record_name,
    record_bounds,
    safe_stem,
    write_comtrade,
)
from protection.cycle import Cycle
from protection.measurements import V_ALL, V_F, V_VA
from protection.output import EV_PICKUP, EV_TRIP
from protection.recorder import RecordedWindow, SampleRecorder
from protection.settings import OvercurrentSettings, ProtectionSettings
from protection.shm import EventRing
from protection.sources import SampleSlot

MS = 1_000_000
US = 1_000
EPOCH = 1_750_000_000 * 1_000_000_000  # UTC ns at mono 0 of the simulated clock
T0 = 1_000 * MS
SETTINGS = ProtectionSettings(
    group1=(
        OvercurrentSettings(name="50N", type="50N", pickup_a=5000.0),
        OvercurrentSettings(name="50P", type="50", pickup_a=1000.0, delay_s=0.1),
    )
)
ELEMENTS = ("50N", "50P")
FAULT_AT = 300  # cycle index of the fault inception
VA_STALE = range(220, 230)  # cycles where Va is invalid (its link stale)
F_MISSING = range(250, 253)  # cycles where f is NaN and invalid


@dataclass
class Fault:
    rec: SampleRecorder
    window: RecordedWindow
    pickup_ns: int
    trip_ns: int
    from_ns: int
    to_ns: int


def record_fault(jitter: bool = True, skip: range = range(0)) -> Fault:
    """Run the real cycle (1 ms, simulated time) through a phase-A fault; the 50P trips 100 ms after pickup and the
    breaker clears the fault 60 ms later. The cycle writes every sample into a SampleRecorder."""
    bank = ElementBank(SETTINGS)
    slot = SampleSlot(0.02)
    rec = SampleRecorder.local(3000)
    ring = EventRing.local()
    cyc = Cycle(bank, slot, MS, ring=ring, recorder=rec)
    cleared_at = -1
    for k in range(1000):
        if k in skip:
            continue  # an overrun: slots skipped
        now = T0 + k * MS + ((k * 37) % 7) * 13 * US if jitter else T0 + k * MS  # woke up to 78 µs late
        if cleared_at >= 0 and k >= cleared_at:
            ia, i_n = 0.0, 0.0  # breaker open
        elif k >= FAULT_AT:
            ia, i_n = 3000.0 + k, 2800.0
        else:
            ia, i_n = 200.0 + 0.5 * k, 0.0
        valid = V_ALL
        f = 50.0 + 0.0001 * k
        if k in VA_STALE:
            valid &= ~V_VA
        if k in F_MISSING:
            valid &= ~V_F
            f = float("nan")
        slot.publish(now, ia, 200.0, 200.0, i_n, 6.35, 6.34, 6.36, f, valid)
        cyc.run_once(now, EPOCH + now)
        if cleared_at < 0 and cyc.status & 0b1000:  # 50P (element 1) tripped
            cleared_at = k + 60
    recs = ring.read_new()
    el = recs[recs["element"] == 1]
    pickup_ns = int(el["mono_ns"][el["events"] & EV_PICKUP != 0][0])
    trip_ns = int(el["mono_ns"][el["events"] & EV_TRIP != 0][0])
    from_ns, to_ns = record_bounds(pickup_ns, trip_ns, period_ns=MS)
    assert rec.latest_ns() >= to_ns  # what the gateway waits for before taking the window
    w = rec.window(from_ns, to_ns)
    assert w is not None
    return Fault(rec, w, pickup_ns, trip_ns, from_ns, to_ns)


def load(cfg: Path) -> comtrade.Comtrade:
    return comtrade.load(str(cfg), use_numpy_arrays=True, use_double_precision=True)


def dat_timestamps(dat: Path, binary: bool, n_digital: int) -> list[int]:
    """The per-sample time stamps (µs) as stored in the .dat, read without the library."""
    if binary:
        words = -(-n_digital // 16)
        dtype = np.dtype([("n", "<u4"), ("ts", "<u4"), ("a", "<i2", (8,)), ("d", "<u2", (words,))])
        rows = np.frombuffer(dat.read_bytes(), dtype=dtype)
        return [int(x) for x in rows["ts"]]
    return [int(line.split(",")[1]) for line in dat.read_text().splitlines() if line]


def utc(ns: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=ns // 1000)


def write(tmp_path: Path, fault: Fault, binary: bool, **kw: object) -> tuple[Path, Path]:
    args: dict[str, object] = {
        "trigger_utc_ns": EPOCH + fault.trip_ns,
        "station": "Riverside 33/11kV",
        "device": "gw-1",
        "element_names": ELEMENTS,
        "binary": binary,
        "local_offset_min": 60,
        "tmq_code": 0x7,
    }
    args.update(kw)
    return write_comtrade(tmp_path, "fault", fault.window, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "ascii"])
def test_fault_record_reads_back_with_the_comtrade_package(tmp_path: Path, binary: bool) -> None:
    fault = record_fault()
    w = fault.window
    cfg, dat = write(tmp_path, fault, binary)
    assert (cfg.name, dat.name) == ("fault.cfg", "fault.dat")
    r = load(cfg)

    assert (r.station_name, r.rec_dev_id, r.rev_year) == ("Riverside 33/11kV", "gw-1", "2013")
    assert r.ft == ("BINARY" if binary else "ASCII")
    assert r.frequency == 50.0
    assert r.analog_channel_ids == ["IA", "IB", "IC", "IN", "VA", "VB", "VC", "F"]
    assert [c.uu for c in r.cfg.analog_channels] == ["A", "A", "A", "A", "kV", "kV", "kV", "Hz"]
    assert [c.ph for c in r.cfg.analog_channels] == [ph for _, ph, _ in ANALOG_CHANNELS]
    assert all(c.pors == "P" for c in r.cfg.analog_channels)
    assert r.status_channel_ids == ["50N PU", "50N TRIP", "50P PU", "50P TRIP", *VALID_CHANNELS]
    assert r.total_samples == len(w)

    # Values within the int16 quantisation of each channel (a / 2); NaN stays missing.
    for c, ch in enumerate(r.cfg.analog_channels):
        got = np.asarray(r.analog[c])
        want = w.values[:, c]
        assert np.array_equal(np.isnan(got), np.isnan(want)), ch.name
        ok = ~np.isnan(want)
        assert np.max(np.abs(got[ok] - want[ok])) <= ch.a / 2 + 1e-9 * max(1.0, abs(ch.b)), ch.name
        assert -32767 <= ch.cmin <= ch.cmax <= 32767
    assert np.isnan(r.analog[7]).sum() == len(F_MISSING)

    # Time: one rate (the cycle's) declared; the .dat holds the real (jittered) time stamps.
    assert r.cfg.nrates == 1 and r.cfg.sample_rates == [[1000.0, len(w)]]
    assert np.allclose(r.time, np.arange(len(w)) / 1000.0)
    real_us = [int(x) for x in (w.mono_ns - w.mono_ns[0] + 500) // 1000]
    assert dat_timestamps(dat, binary, r.status_count) == real_us
    assert r.start_timestamp == utc(int(w.utc_ns[0]))
    assert r.trigger_timestamp == utc(EPOCH + fault.trip_ns)
    assert r.trigger_time == pytest.approx((fault.trip_ns - int(w.mono_ns[0])) / 1e9, abs=1e-6)
    cfg_lines = cfg.read_text().splitlines()
    assert cfg_lines[-4:] == [r.ft, "1", "0,+1", "7,0"]  # ft, timemult, time_code/local_code, tmq_code/leapsec

    # Digitals: element bits straight from the status word; validity per quantity.
    st = w.status.astype(np.int64)
    for k in range(4):
        assert np.array_equal(np.asarray(r.status[k]), (st >> k) & 1), r.status_channel_ids[k]
    for q in range(8):
        assert np.array_equal(np.asarray(r.status[4 + q]), (w.valid.astype(np.int64) >> q) & 1)
    assert not np.any(np.asarray(r.status[0]))  # 50N never picked up

    # Pre-fault and post-fault lengths.
    t = np.asarray(r.time)
    first_pu = t[np.argmax(np.asarray(r.status[2]) == 1)]
    first_trip = t[np.argmax(np.asarray(r.status[3]) == 1)]
    assert first_pu >= PRE_FAULT_S and t[-1] - first_trip >= POST_FAULT_S  # in the reader's time
    assert int(w.mono_ns[0]) <= fault.pickup_ns - PRE_FAULT_S * 1e9  # in real time
    assert int(w.mono_ns[-1]) >= fault.trip_ns + POST_FAULT_S * 1e9
    assert first_trip - first_pu == pytest.approx(0.1, abs=0.002)
    assert float(np.max(r.analog[0])) > 3000.0 and float(r.analog[0][0]) < 400.0
    assert float(r.analog[0][-1]) == pytest.approx(0.0, abs=r.cfg.analog_channels[0].a)  # breaker open
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "ascii"])
def test_skipped_cycles_make_the_timestamps_the_time_base(tmp_path: Path, binary: bool) -> None:
    fault = record_fault(skip=range(350, 354))  # an overrun skipped 4 slots inside the record
    w = fault.window
    cfg, _dat = write(tmp_path, fault, binary)
    r = load(cfg)
    assert r.cfg.nrates == 1 and r.cfg.sample_rates == [[0.0, len(w)]]  # nrates 0 on file: timestamps critical
    assert cfg.read_text().splitlines()[r.analog_count + r.status_count + 3 : r.analog_count + r.status_count + 5] == [
        "0",
        f"0,{len(w)}",
    ]
    real = (w.mono_ns - w.mono_ns[0]) / 1e9
    assert np.allclose(r.time, real, atol=0.6e-6)
    assert np.max(np.diff(r.time)) > 0.004  # the gap is there


def test_ratios_and_no_jitter_and_explicit_period(tmp_path: Path) -> None:
    fault = record_fault(jitter=False)
    cfg, _ = write(tmp_path, fault, True, ct_ratio=(400.0, 1.0), vt_ratio=(11000.0, 110.0), period_ns=MS)
    r = load(cfg)
    ch = r.cfg.analog_channels
    assert [(c.primary, c.secondary) for c in ch[:4]] == [(400.0, 1.0)] * 4
    assert [(c.primary, c.secondary) for c in ch[4:7]] == [(11000.0, 110.0)] * 3
    assert (ch[7].primary, ch[7].secondary) == (1.0, 1.0)
    assert np.allclose(r.time, (fault.window.mono_ns - fault.window.mono_ns[0]) / 1e9, atol=1e-9)


def test_more_than_32_elements_get_no_status_channels_beyond_32(tmp_path: Path) -> None:
    fault = record_fault()
    names = [f"E{i}" for i in range(40)]
    cfg, _ = write(tmp_path, fault, True, element_names=names)
    r = load(cfg)
    assert r.status_count == 64 + 8
    assert r.status_channel_ids[62:66] == ["E31 PU", "E31 TRIP", "IA VALID", "IB VALID"]


def test_atomic_write_leaves_no_partial_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fault = record_fault()
    real_replace = os.replace

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if str(dst).endswith(".cfg"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        write(tmp_path, fault, True)
    assert list(tmp_path.iterdir()) == []  # neither the record nor temporary files
    monkeypatch.undo()
    cfg, _dat = write(tmp_path, fault, True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fault.cfg", "fault.dat"]
    with pytest.raises(FileExistsError):
        write(tmp_path, fault, False)
    assert load(cfg).total_samples == len(fault.window)


def test_file_names_are_safe(tmp_path: Path) -> None:
    fault = record_fault()
    cfg, dat = write_comtrade(
        tmp_path / "records",
        "../../etc/pass wd,é",
        fault.window,
        trigger_utc_ns=EPOCH + fault.trip_ns,
        station="S",
        device="D",
        element_names=ELEMENTS,
        local_offset_min=0,
    )
    assert cfg.parent == tmp_path / "records" and dat.parent == tmp_path / "records"
    assert cfg.name == "etc_pass_wd_e.cfg"
    assert safe_stem("..hidden") == "hidden"
    assert safe_stem("a..b") == "a_b"
    with pytest.raises(ValueError):
        safe_stem("///")
    assert cfg.read_text().splitlines()[-2] == "0,0"


def test_fault_record_name() -> None:
    ns = EPOCH + 123_456_789
    assert fault_record_name(ns, "Riverside 33/11kV", "gw-1") == "20250615_150640_123456_Riverside_33_11kV_gw-1"


def test_bad_arguments(tmp_path: Path) -> None:
    fault = record_fault()
    empty = RecordedWindow(
        mono_ns=np.empty(0, np.int64),
        utc_ns=np.empty(0, np.int64),
        values=np.empty((0, 8)),
        valid=np.empty(0, np.uint32),
        status=np.empty(0, np.uint64),
    )
    with pytest.raises(ValueError, match="empty"):
        write_comtrade(tmp_path, "x", empty, trigger_utc_ns=EPOCH, station="S", device="D", element_names=())
    with pytest.raises(ValueError, match="tmq_code"):
        write(tmp_path, fault, True, tmq_code=16)
    with pytest.raises(ValueError, match="leap_second"):
        write(tmp_path, fault, True, leap_second=4)
    assert list(tmp_path.iterdir()) == []

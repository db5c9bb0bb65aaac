"""COMTRADE playback: a measurement source that plays a recorded (or synthesized) disturbance into the cycle.

Two halves, like the other sources (:mod:`protection.sources`):

- :func:`load_comtrade_playback` runs in the **gateway** process (it reads files and may take a while): it reads
  the .cfg/.dat with the ``comtrade`` package from PyPI, maps channels onto our eight quantities, converts to
  primary units (A; **kV**: a channel in V becomes kV; Hz), turns waveforms into one-cycle RMS, and returns a
  frozen, picklable :class:`ComtradePlaybackSpec` that crosses into the spawned protection process.
- :class:`ComtradePlaybackSource` runs on the **cycle thread**: ``read_into(m, now_ns)`` never blocks and
  allocates nothing but ints; it plays the samples by time since ``start_ns``.

**Channels.** ``channels`` maps our quantity names (``ia ib ic in va vb vc f``; ``i_n`` is accepted for ``in``)
to channel names in the file; when given it is the whole mapping (unmapped quantities are absent). Default: the
first channel whose name, upper-cased with everything but letters and digits removed, is a usual name of the
quantity (``IA``/``Ia``/``I_A``/``IL1``, ``IN``/``IG``/``IE``/``3I0``/``IRES``, ``VA``/``UA``/``VAN``/``UL1``,
``F``/``FREQ``/``FREQUENCY``/``HZ``, ...). Voltages are phase-to-neutral. A quantity without a channel is
**absent**: NaN in the spec, its validity bit always cleared, so the elements that need it stay blocked.

**Units.** ``a * raw + b`` in the channel's unit; with the PS flag ``S`` (secondary values) multiplied by
``primary / secondary``. Currents ``A``/``kA``/``mA`` → A; voltages ``V``/``kV``/``mV``/``MV`` → kV; frequency
``Hz``. Any other unit is an error (we do not guess).

**RMS.** The elements work on RMS values. ``rms="auto"`` treats the file as **waveforms** (instantaneous
samples) when one of the mapped current/voltage channels spends more than 20 % of its samples below −5 % of its
peak (an RMS channel is never negative; a sine is below that about 48 % of the time); ``"yes"``/``"no"`` force it.
Waveforms need at least 8 samples per nominal cycle. The RMS is a sliding **one-cycle** (``1 / nominal_hz``)
window ending at each sample, computed exactly for sample-and-hold data (a time integral, so it is also right
for variable sample rates): ``rms(t_k) = sqrt( ∫ x² dt over (t_k + Δ_k − T, t_k + Δ_k] / T )``, ``Δ_k`` the
sample's hold interval; for uniform sampling that is the RMS of the last ``N`` samples, exact for a sine. The
first cycle of the file has no full window: NaN (invalid), unless ``loop=True``, where the window wraps around
the end of the file (seamless looping). A frequency channel is used as is; a waveform file without one has
no frequency (absent).

**Playback** (:class:`ComtradePlaybackSource`): the sample in force at ``now`` is the last one whose time
(``times_s``, from the first sample) has come (sample and hold). Past the end of the file the stream has stopped,
exactly like a link that stalls: the last sample is held for ``stale_after_s`` after the end of its interval and
then every quantity goes **stale** (validity 0: elements block, nothing trips on old values, the cycle keeps its
deadlines). With ``loop=True`` the file restarts at its end (period: last time + last interval) and never goes
stale. Inside the file samples never count as stale, whatever its sample rate (a slow RMS trend file plays too).

**Errors.** A missing or unreadable file, a bad channel mapping, unknown units, too few samples or times that do
not increase raise :class:`~protection.comtrade.ComtradeError` naming the file and the reason (the library's
own exceptions are chained, never shown bare). The ``comtrade`` package is created with ``ignore_warnings=True``:
its warnings are only about absolute dates (missing dates, nanosecond time stamps truncated to µs) and unknown
revision strings, none of which playback uses (it plays relative times); no global warning filter is touched.
Status (digital) channels are not played, except the ``"<channel> VALID"`` ones our own records
(:mod:`protection.comtrade`) carry: where such a flag is 0 the quantity is invalid (NaN) in the playback, so a
record of ours plays back with the validity the cycle saw.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import comtrade as _ct
import numpy as np
import numpy.typing as npt

from protection.comtrade import ComtradeError
from protection.measurements import Measurements
from protection.recorder import NQ, QUANTITIES

_NS = 1_000_000_000
MIN_SAMPLES_PER_CYCLE = 8  # below this a waveform is too coarse for a one-cycle RMS
_WAVE_NEG_FRACTION = 0.2  # waveform when more than this fraction of samples ...
_WAVE_NEG_LEVEL = 0.05  # ... is below -level * peak

_KIND = ("current",) * 4 + ("voltage",) * 3 + ("frequency",)
_DEFAULT_NAMES: dict[str, tuple[str, ...]] = {
    "ia": ("IA", "IL1", "IPHA", "IPHASEA"),
    "ib": ("IB", "IL2", "IPHB", "IPHASEB"),
    "ic": ("IC", "IL3", "IPHC", "IPHASEC"),
    "in": ("IN", "IG", "IE", "3I0", "IRES", "IRESIDUAL", "INEUTRAL", "IL4"),
    "va": ("VA", "UA", "VL1", "UL1", "VAN", "UAN", "VAG", "VPHA"),
    "vb": ("VB", "UB", "VL2", "UL2", "VBN", "UBN", "VBG", "VPHB"),
    "vc": ("VC", "UC", "VL3", "UL3", "VCN", "UCN", "VCG", "VPHC"),
    "f": ("F", "FREQ", "FREQUENCY", "HZ", "FR"),
}
_NON_ALNUM = re.compile(r"[^A-Z0-9]")


@dataclass(frozen=True, eq=False)
class ComtradePlaybackSpec:
    """A disturbance to play (built by :func:`load_comtrade_playback`; picklable, crosses into the process)."""

    times_s: npt.NDArray[np.float64]  # sample times from the first sample, s, strictly increasing (N >= 2)
    values: npt.NDArray[np.float64]  # (N, 8): ia ib ic in (A) va vb vc (kV) f (Hz), RMS; NaN = absent/missing
    loop: bool = False  # restart at the end of the file; False: go stale after the end
    stale_after_s: float = 0.02  # past the end, the held last sample goes stale after this long
    source: str = ""  # the file it came from (for logs)
    channels: tuple[tuple[str, str], ...] = ()  # (quantity, file channel) pairs used
    rms_computed: bool = False  # True when the file held waveforms and `values` are their one-cycle RMS

    def __post_init__(self) -> None:
        t = np.asarray(self.times_s, dtype=np.float64)
        v = np.asarray(self.values, dtype=np.float64)
        if t.ndim != 1 or len(t) < 2:
            raise ValueError("a playback needs at least 2 sample times")
        if v.shape != (len(t), NQ):
            raise ValueError(f"playback values have shape {v.shape}, expected ({len(t)}, {NQ})")
        if not (np.all(np.isfinite(t)) and np.all(np.diff(t) > 0)):
            raise ValueError("playback sample times must be finite and strictly increasing")
        if self.stale_after_s < 0:
            raise ValueError("stale_after_s must be >= 0")
        object.__setattr__(self, "times_s", t)
        object.__setattr__(self, "values", v)

    @property
    def duration_s(self) -> float:
        """Length of the file: last time + last interval (the loop period)."""
        t = self.times_s
        return float(2 * t[-1] - t[-2] - t[0])


class ComtradePlaybackSource:
    """Plays a :class:`ComtradePlaybackSpec` from monotonic ``start_ns``. ``read_into``: cycle thread, never blocks."""

    __slots__ = ("_end", "_last", "_loop", "_rows", "_stale", "_start", "_t", "_valid", "spec")

    def __init__(self, spec: ComtradePlaybackSpec, start_ns: int) -> None:
        self.spec = spec
        t = np.rint((spec.times_s - spec.times_s[0]) * _NS).astype(np.int64)
        self._t: list[int] = t.tolist()  # sample times, ns from start_ns (plain ints: no numpy on the hot path)
        self._end = int(2 * t[-1] - t[-2])  # end of the last sample's interval = the loop period
        self._last = len(self._t) - 1
        ok = np.isfinite(spec.values)
        self._valid: list[int] = (ok.astype(np.int64) << np.arange(NQ, dtype=np.int64)).sum(axis=1).tolist()
        self._rows: list[list[float]] = spec.values.tolist()
        self._loop = spec.loop
        self._stale = round(spec.stale_after_s * _NS)
        self._start = start_ns

    def read_into(self, m: Measurements, now_ns: int) -> None:
        t = now_ns - self._start
        if t < 0:  # not started
            m.valid = 0
            return
        stale = False
        if t >= self._end:
            if self._loop:
                t %= self._end
                k = bisect.bisect_right(self._t, t) - 1
            else:
                k = self._last
                stale = t - self._end > self._stale
        else:
            k = bisect.bisect_right(self._t, t) - 1
        r = self._rows[k]
        m.set_values(r)
        m.valid = 0 if stale else self._valid[k]


def load_comtrade_playback(
    cfg_path: Path,
    channels: Mapping[str, str] | None = None,
    *,
    loop: bool = False,
    nominal_hz: float = 50.0,
    rms: Literal["auto", "yes", "no"] = "auto",
    stale_after_s: float = 0.02,
) -> ComtradePlaybackSpec:
    """Read a COMTRADE .cfg (+ its .dat) into a playback spec (module doc). Raises :class:`ComtradeError`.

    ``channels``: quantity → channel name in the file (the whole mapping); None: match usual names.
    ``loop``: restart at the end. ``nominal_hz``: the RMS window is one nominal cycle. ``rms``: ``"auto"``
    detects waveforms, ``"yes"``/``"no"`` force. ``stale_after_s``: past the end, when the held sample goes stale.
    """
    if rms not in ("auto", "yes", "no"):
        raise ValueError(f"rms must be 'auto', 'yes' or 'no' (got {rms!r})")
    if not nominal_hz > 0:
        raise ValueError(f"nominal_hz must be positive (got {nominal_hz})")
    path = Path(cfg_path)
    rec = _read(path)
    try:
        times = np.asarray(rec.time, dtype=np.float64)
        names = [str(n) for n in rec.analog_channel_ids]
        infos = list(rec.cfg.analog_channels)
        analog = [np.asarray(a, dtype=np.float64) for a in rec.analog]
        status_names = [str(n) for n in rec.status_channel_ids]
        status = [np.asarray(s) for s in rec.status]
    except Exception as e:  # the library's objects not shaped as documented
        raise ComtradeError(path, f"unreadable contents ({type(e).__name__}: {e})") from e
    n = len(times)
    if n < 2:
        raise ComtradeError(path, f"{n} sample(s): playback needs at least 2")
    if not (np.all(np.isfinite(times)) and np.all(np.diff(times) > 0)):
        raise ComtradeError(path, "sample times do not increase (a truncated .dat, or bad time stamps)")
    times = times - times[0]

    mapping = _map_channels(path, names, channels)
    values = np.full((n, NQ), np.nan)
    for q, idx in mapping:
        c = QUANTITIES.index(q)
        x = analog[idx]
        if len(x) != n:
            raise ComtradeError(path, f"channel {names[idx]!r} has {len(x)} samples, the file {n}")
        values[:, c] = x * _scale(path, infos[idx], names[idx], q, _KIND[c])
        flag = f"{names[idx]} VALID"  # our own records carry the validity of each quantity as a status channel
        if flag in status_names:
            values[status[status_names.index(flag)] == 0, c] = np.nan

    iv = [QUANTITIES.index(q) for q, _ in mapping if _KIND[QUANTITIES.index(q)] != "frequency"]
    wave = rms == "yes" or (rms == "auto" and _looks_like_waveform(values[:, iv]))
    if wave and iv:
        period = 1.0 / nominal_hz
        spc = period / float(np.median(np.diff(times)))
        if spc < MIN_SAMPLES_PER_CYCLE:
            raise ComtradeError(
                path,
                f"waveforms at {spc:.1f} samples per {nominal_hz:g} Hz cycle: too few for a one-cycle RMS "
                f"(need >= {MIN_SAMPLES_PER_CYCLE}); pass rms='no' if the values are RMS already",
            )
        for c in iv:
            values[:, c] = sliding_rms(times, values[:, c], period, periodic=loop)
    return ComtradePlaybackSpec(
        times_s=times,
        values=values,
        loop=loop,
        stale_after_s=stale_after_s,
        source=str(path),
        channels=tuple((q, names[idx]) for q, idx in mapping),
        rms_computed=bool(wave and iv),
    )


def sliding_rms(
    t: npt.NDArray[np.float64], x: npt.NDArray[np.float64], window_s: float, *, periodic: bool = False
) -> npt.NDArray[np.float64]:
    """One-window RMS ending at each sample's hold interval (module doc); NaN where the window is not full or holds
    a NaN sample. ``periodic``: the signal repeats with period ``t[-1] + last interval - t[0]`` (the window wraps).
    """
    n = len(t)
    dt = np.diff(t)
    dt = np.append(dt, dt[-1])
    npre = 0
    if periodic:
        end = t[-1] + dt[-1]
        # prepend samples k..n-1 shifted one period back: enough to fill the first window
        k = int(np.searchsorted(t, end - window_s - float(dt.max()), side="left"))
        npre = n - k
        span = end - t[0]
        t = np.concatenate([t[k:] - span, t])
        x = np.concatenate([x[k:], x])
        dt = np.concatenate([dt[k:], dt])
    bad = ~np.isfinite(x)
    energy = np.where(bad, 0.0, x) ** 2 * dt
    cum = np.concatenate([[0.0], np.cumsum(energy)])
    cum_bad = np.concatenate([[0.0], np.cumsum(np.where(bad, dt, 0.0))])
    knots = np.concatenate([t, [t[-1] + dt[-1]]])
    ends = knots[1:]
    starts = ends - window_s
    c0 = np.interp(starts, knots, cum)
    b0 = np.interp(starts, knots, cum_bad)
    out = np.sqrt(np.maximum(cum[1:] - c0, 0.0) / window_s)
    out[(cum_bad[1:] - b0) > 1e-9 * window_s] = np.nan
    out[starts < knots[0] - 1e-6 * window_s] = np.nan
    return out[npre:]


# --- helpers -------------------------------------------------------------------------------------------------


def _read(path: Path) -> Any:
    """The ``comtrade`` package's record of ``path``; every failure as a ComtradeError naming the file."""
    if path.suffix.lower() not in (".cfg", ".cff"):
        raise ComtradeError(path, "expected a .cfg (or .cff) file")
    if not path.is_file():
        raise ComtradeError(path, "no such file")
    last: Exception | None = None
    for encoding in ("utf-8", "latin-1"):  # .cfg text is ASCII by the standard; some recorders write Latin-1
        rec = _ct.Comtrade(ignore_warnings=True, use_numpy_arrays=True, use_double_precision=True)
        try:
            rec.load(str(path), encoding=encoding)
            return rec
        except UnicodeDecodeError as e:
            last = e
        except FileNotFoundError as e:
            raise ComtradeError(path, f"missing file {e.filename or ''} (a .cfg needs its .dat)".strip()) from e
        except _ct.ComtradeError as e:
            raise ComtradeError(path, str(e)) from e
        except Exception as e:  # the library parses by hand: bad fields surface as ValueError/IndexError/...
            raise ComtradeError(path, f"not a readable COMTRADE record ({type(e).__name__}: {e})") from e
    raise ComtradeError(path, f"text encoding not readable ({last})")


def _norm(name: str) -> str:
    return _NON_ALNUM.sub("", name.upper())


def _map_channels(path: Path, names: list[str], channels: Mapping[str, str] | None) -> list[tuple[str, int]]:
    """(quantity, analog channel index) pairs, in QUANTITIES order."""
    found: dict[str, int] = {}
    if channels is None:
        norm = [_norm(nm) for nm in names]
        for q in QUANTITIES:
            for i, nn in enumerate(norm):
                if nn in _DEFAULT_NAMES[q] and i not in found.values():
                    found[q] = i
                    break
        if not found:
            raise ComtradeError(path, f"no channel matches a known quantity name; channels: {names}; pass `channels`")
    else:
        for key, chan in channels.items():
            q = "in" if key == "i_n" else key
            if q not in QUANTITIES:
                raise ValueError(f"unknown quantity {key!r} in channels; expected one of {', '.join(QUANTITIES)}")
            if q in found:
                raise ValueError(f"quantity {q!r} mapped twice in channels")
            if chan in names:
                found[q] = names.index(chan)
                continue
            loose = [i for i, nm in enumerate(names) if _norm(nm) == _norm(chan)]
            if len(loose) != 1:
                raise ComtradeError(path, f"no channel {chan!r} (for {q}) in the file; channels: {names}")
            found[q] = loose[0]
    return [(q, found[q]) for q in QUANTITIES if q in found]


_CURRENT_UNITS = {"A": 1.0, "KA": 1e3}
_VOLTAGE_UNITS = {"V": 1e-3, "KV": 1.0}


def _scale(path: Path, info: Any, name: str, q: str, kind: str) -> float:
    """Factor from the channel's values to our primary unit (A, kV, Hz)."""
    unit = str(getattr(info, "uu", "")).strip()
    if kind == "current":
        f = 1e-3 if unit == "mA" else _CURRENT_UNITS.get(unit.upper())
        expected = "A, kA or mA"
    elif kind == "voltage":
        f = {"mV": 1e-6, "MV": 1e3}.get(unit, _VOLTAGE_UNITS.get(unit.upper()))
        expected = "V, kV, mV or MV"
    else:
        f = 1.0 if unit.upper() == "HZ" else None
        expected = "Hz"
    if f is None:
        raise ComtradeError(path, f"channel {name!r} ({q}) has unit {unit!r}; expected {expected}")
    if kind != "frequency" and str(getattr(info, "pors", "P")).strip().upper() == "S":
        prim, sec = float(info.primary), float(info.secondary)
        if not (prim > 0 and sec > 0):
            raise ComtradeError(path, f"channel {name!r} is secondary with ratio {prim}/{sec}: cannot convert")
        f *= prim / sec
    return f


def _looks_like_waveform(cols: npt.NDArray[np.float64]) -> bool:
    """True when a column is often well below zero (instantaneous samples), see the module doc."""
    for c in range(cols.shape[1]):
        x = cols[:, c]
        x = x[np.isfinite(x)]
        if len(x) == 0:
            continue
        peak = float(np.max(np.abs(x)))
        if peak > 0 and float(np.mean(x < -_WAVE_NEG_LEVEL * peak)) > _WAVE_NEG_FRACTION:
            return True
    return False


__all__ = [
    "MIN_SAMPLES_PER_CYCLE",
    "ComtradePlaybackSource",
    "ComtradePlaybackSpec",
    "load_comtrade_playback",
    "sliding_rms",
]

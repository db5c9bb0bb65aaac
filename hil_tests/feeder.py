"""A small, deterministic feeder model for the demo and the simulators.

Values move plausibly rather than randomly: a daily load curve, slow per-phase imbalance, voltage drop that
follows load, frequency wandering around nominal, energy integrated from power, a breaker that opens on a trip
command (currents and power fall to zero) and closes on a close command. ``step(t)`` is pure in ``t`` apart from
the energy integrator and the breaker state, so tests can drive it with any clock.

Register map (matches ``gateway/configs/demo.toml``, template ``feeder_relay``), all big-endian words:
input registers 0..13 Ia Ib Ic In Va Vb Vc (float32, A and kV), 14 f (float32 Hz), 16 P (float32 kW),
18 Q (float32 kvar), 20 PF (int16 ×0.001), 21 E_import (uint32 ×0.1 kWh), 23 temp (int16 ×0.1 °C);
discrete input 0 breaker_closed; coils 0 trip_cmd, 1 close_cmd (self-resetting); holding 0 pickup_A.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

INPUT_REGISTERS = 24
NOMINAL_KV = 11.0 / math.sqrt(3)  # phase-to-neutral kV of an 11 kV system


@dataclass
class FeederModel:
    """One feeder bay. ``seed`` gives each feeder its own load level and phase so feeders differ."""

    seed: int = 1
    nominal_hz: float = 50.0
    peak_load_a: float = 320.0
    breaker_closed: bool = True
    pickup_a: int = 600
    energy_kwh: float = field(default=0.0)
    trip_time_s: float | None = None  # when the last trip command arrived (model time)
    _last_t: float | None = None

    def trip(self, t: float) -> None:
        self.breaker_closed = False
        self.trip_time_s = t

    def close(self) -> None:
        self.breaker_closed = True

    def load_factor(self, t: float) -> float:
        """0..1 daily load curve: low at night, morning and evening peaks (t in seconds since midnight UTC)."""
        h = (t / 3600.0) % 24.0
        morning = math.exp(-(((h - 8.5) / 2.0) ** 2))
        evening = 1.2 * math.exp(-(((h - 19.0) / 2.5) ** 2))
        return 0.35 + 0.5 * max(morning, evening) + 0.03 * math.sin(t / 47.0 + self.seed)

    def step(self, t: float) -> dict[str, float]:
        """Values at model time ``t`` (seconds, monotonic or epoch; only differences and time of day matter)."""
        k = self.load_factor(t) * (0.8 + 0.1 * (self.seed % 3))
        closed = 1.0 if self.breaker_closed else 0.0
        i_base = self.peak_load_a * k * closed
        imb = [1.0 + 0.04 * math.sin(t / 300.0 + self.seed + ph * 2.1) for ph in range(3)]
        ia, ib, ic = (i_base * m for m in imb)
        # residual current from imbalance (phasor sum of 120°-spaced magnitudes)
        re = ia - 0.5 * ib - 0.5 * ic
        im = (math.sqrt(3) / 2) * (ib - ic)
        i_n = math.hypot(re, im)
        drop = 0.03 * k * closed
        va, vb, vc = (
            NOMINAL_KV * (1.0 - drop + 0.004 * math.sin(t / 90.0 + ph + self.seed)) for ph in range(3)
        )
        f = self.nominal_hz + 0.03 * math.sin(t / 120.0) + 0.01 * math.sin(t / 7.0 + self.seed)
        pf = 0.92 + 0.04 * math.sin(t / 900.0 + self.seed)
        s_kva = va * ia + vb * ib + vc * ic  # kV * A = kVA per phase, summed
        p = s_kva * pf
        q = s_kva * math.sqrt(max(0.0, 1.0 - pf * pf))
        if self._last_t is not None and t > self._last_t:
            self.energy_kwh += p * (t - self._last_t) / 3600.0
        self._last_t = t
        temp = 35.0 + 25.0 * k * closed + 2.0 * math.sin(t / 3600.0)
        return {
            "Ia": ia,
            "Ib": ib,
            "Ic": ic,
            "In": i_n,
            "Va": va,
            "Vb": vb,
            "Vc": vc,
            "f": f,
            "P": p,
            "Q": q,
            "PF": pf if closed else 0.0,
            "E_import": self.energy_kwh,
            "temp": temp,
            "breaker_closed": closed,
            "pickup_A": float(self.pickup_a),
        }


def encode_input_registers(v: dict[str, float]) -> list[int]:
    """The 24 input registers of the feeder relay for one set of values (see the module docstring)."""
    words: list[int] = []
    for name in ("Ia", "Ib", "Ic", "In", "Va", "Vb", "Vc", "f", "P", "Q"):
        words.extend(struct.unpack(">HH", struct.pack(">f", v[name])))
    words.extend(struct.unpack(">H", struct.pack(">h", round(v["PF"] * 1000))))
    energy = min(round(v["E_import"] * 10), 0xFFFFFFFF)
    words.extend(struct.unpack(">HH", struct.pack(">I", energy)))
    words.extend(struct.unpack(">H", struct.pack(">h", round(v["temp"] * 10))))
    assert len(words) == INPUT_REGISTERS
    return words


@dataclass(frozen=True)
class FrequencyProfile:
    """A system-frequency override shared by every simulated device: a step to ``target_hz`` (``rocof_hz_per_s``
    0) or a linear ramp from ``start_hz`` at ``start_ns`` (``time.monotonic_ns()``, system-wide on Linux, so two
    processes holding the same profile show the same frequency at the same instant) towards ``target_hz`` at
    ``rocof_hz_per_s`` (magnitude; the sign follows the direction), holding ``target_hz`` once reached."""

    start_hz: float
    start_ns: int
    target_hz: float
    rocof_hz_per_s: float = 0.0

    def at(self, now_ns: int) -> float:
        """The frequency at monotonic ``now_ns``, Hz."""
        rate = abs(self.rocof_hz_per_s)
        if rate == 0.0:
            return self.target_hz
        moved = rate * max(0, now_ns - self.start_ns) / 1e9
        if self.target_hz >= self.start_hz:
            return min(self.target_hz, self.start_hz + moved)
        return max(self.target_hz, self.start_hz - moved)

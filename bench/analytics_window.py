"""Window alert delay of the frequency monitor: end of an offending 1-s window → its alarm event produced.

Run from the repo root: ``.venv/bin/python -m bench.analytics_window [--duration 30 --buses 8 --rate 25]``.

The real :class:`gateway.analytics.frequency.FrequencyMonitor` is driven in real time, as the gateway drives it:

- a realistic 50 Hz trace per bus: 50 Hz plus slow drift and measurement noise (σ 5 mHz), at ``--rate``
  readings/s per bus (each bus with its own sampling phase), time-stamped with the wall clock when they are
  produced (as the gateway stamps polled values); every other 1-s window of each bus is an under-frequency
  excursion (49.6 Hz ± noise), the others back at 50 Hz, and ``clear_windows = 1``, so each excursion raises
  one alarm (and the next window clears it);
- a tick loop every ``--tick-ms`` (the gateway's analytics tick) feeds the readings produced since the previous
  tick and calls ``advance(time.time_ns())``. The tick period is ``tick_ms + tick_ms / ticks`` so its phase
  sweeps once across the 1-s grid during the run (a real gateway's tick has an arbitrary phase to the grid).

Per raised alarm, the delay is ``time.time_ns()`` right after ``advance`` returned it minus the end of the
window it is about (``window_start_ns`` + 1 s). It is bounded by the closing rule: a window closes at the first
tick after a reading of the next window arrived (or ``grace_ms`` after its end), so about one tick plus one
reading interval. ``advance_ms`` is the CPU time of the ``advance`` calls.

The last stdout line is one JSON object: ``window_alert_delay_ms`` (``{"p50", "p99", "max", "n"}``),
``missed_alarms`` (excursions that ended before the run but got no alarm: must be 0), ``advance_ms_p99``,
``advance_ms_max``, ``readings``, and the settings.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from gateway.analytics.config import BusConfig, FrequencyConfig
from gateway.analytics.frequency import SEC_NS, FrequencyMonitor


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def measure_window_alert_delay(
    duration_s: float = 30.0,
    buses: int = 8,
    rate_hz: float = 25.0,
    tick_ms: float = 100.0,
    grace_ms: int = 200,
    seed: int = 1,
) -> dict[str, Any]:
    """Drive a real monitor in real time for ``duration_s`` and return the delays (see the module docstring)."""
    if not 10.0 <= rate_hz <= 1000.0 or buses < 1 or duration_s <= 2 or tick_ms <= 0:
        raise ValueError("need rate_hz in 10..1000, buses >= 1, duration_s > 2, tick_ms > 0")
    rng = np.random.default_rng(seed)
    cfg = FrequencyConfig(
        buses=tuple(BusConfig(f"bus{i}", f"dev{i}.f") for i in range(buses)),
        clear_windows=1,
        grace_ms=grace_ms,
    )
    mon = FrequencyMonitor(cfg)
    step_ns = int(SEC_NS / rate_hz)
    phase = rng.integers(0, step_ns, buses)  # each bus samples at its own phase
    drift = rng.uniform(-0.02, 0.02, buses)
    n_ticks = max(1, int(duration_s * 1000.0 / tick_ms))
    period_ns = int((tick_ms + tick_ms / n_ticks) * 1e6)

    start = time.time_ns()
    last = start  # readings with ts in (last, now] are produced at the current tick
    delays: list[float] = []
    advance_ms: list[float] = []
    raised: set[tuple[str, int]] = set()
    readings = 0
    deadline = time.monotonic_ns()
    for _ in range(n_ticks):
        deadline += period_ns
        pause = (deadline - time.monotonic_ns()) / 1e9
        if pause > 0:
            time.sleep(pause)
        now = time.time_ns()
        idx_parts, ts_parts, f_parts = [], [], []
        for b in range(buses):
            first = ((last - phase[b]) // step_ns + 1) * step_ns + phase[b]
            ts = np.arange(first, now + 1, step_ns, dtype=np.int64)
            excursion = (ts // SEC_NS + b) % 2 == 0
            f = 50.0 + drift[b] + rng.normal(0.0, 0.005, len(ts)) - np.where(excursion, 0.4, 0.0)
            idx_parts.append(np.full(len(ts), b, dtype=np.int32))
            ts_parts.append(ts)
            f_parts.append(f)
        last = now
        idx = np.concatenate(idx_parts)
        readings += len(idx)
        mon.feed(idx, np.concatenate(ts_parts), np.concatenate(f_parts), np.zeros(len(idx), dtype=np.uint16))
        c0 = time.thread_time_ns()
        out = mon.advance(time.time_ns())
        c1 = time.thread_time_ns()
        produced = time.time_ns()
        advance_ms.append((c1 - c0) / 1e6)
        for ev in out.events:
            d = json.loads(ev.data)
            if d["state"] == "raised":
                delays.append((produced - (d["window_start_ns"] + SEC_NS)) / 1e6)
                raised.add((ev.device, d["window_start_ns"]))
    end = time.time_ns()
    # excursion windows wholly inside the run whose close was due before the last tick
    missed = 0
    for b in range(buses):
        for sec in range(start // SEC_NS + 1, (end - grace_ms * 1_000_000) // SEC_NS - 1):
            if (sec + b) % 2 == 0 and (f"bus{b}", sec * SEC_NS) not in raised:
                missed += 1
    return {
        "window_alert_delay_ms": {
            "p50": round(_percentile(delays, 50), 3),
            "p99": round(_percentile(delays, 99), 3),
            "max": round(max(delays), 3) if delays else float("nan"),
            "n": len(delays),
        },
        "missed_alarms": missed,
        "advance_ms_p99": round(_percentile(advance_ms, 99), 4),
        "advance_ms_max": round(max(advance_ms), 4) if advance_ms else float("nan"),
        "readings": readings,
        "buses": buses,
        "rate_hz": rate_hz,
        "tick_ms": tick_ms,
        "grace_ms": grace_ms,
        "duration_s": round((end - start) / 1e9, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of real time (default 30)")
    ap.add_argument("--buses", type=int, default=8, help="monitored buses (default 8)")
    ap.add_argument("--rate", type=float, default=25.0, help="readings per second per bus, 10..1000 (default 25)")
    ap.add_argument("--tick-ms", type=float, default=100.0, help="advance() period in ms (default 100)")
    ap.add_argument("--grace-ms", type=int, default=200, help="the monitor's grace_ms (default 200)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    res = measure_window_alert_delay(a.duration, a.buses, a.rate, a.tick_ms, a.grace_ms, a.seed)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Smoke test of ``python -m bench.protection``: a tiny run end to end, JSON keys present and sane (no timing)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.protection import PICKUP_SLACK_NS

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = (
    "cycle_ms",
    "cycles",
    "overruns",
    "lateness_p50_ms",
    "lateness_p99_ms",
    "lateness_p999_ms",
    "baseline_thread_p999_ms",
    "trip_error_max_pct",
    "trip_error_max_ms",
    "decision_to_wire_p99_ms",
)


def _no_nan(token: str) -> Any:
    raise ValueError(f"non-finite number {token} in the JSON")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tiny_run_prints_sane_json_last() -> None:
    cmd = [
        sys.executable, "-m", "bench.protection", "--json-only",
        "--cycles", "2000", "--fast-cycles", "1000", "--baseline-cycles", "500", "--grid", "quick",
        "--load-devices", "2", "--load-points", "10", "--load-json-readings", "200", "--load-heap", "30000",
        "--load-warmup-s", "0.5",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # --json-only: the JSON object is the only (so the last) line
    out = json.loads(lines[-1], parse_constant=_no_nan)

    for k in REQUIRED:
        assert k in out, k
        assert isinstance(out[k], int | float) and math.isfinite(out[k]), (k, out[k])
    assert out["cycle_ms"] == 5.0
    assert out["cycles"] >= 2000 and out["fast_cycles"] >= 1000 and out["baseline_thread_cycles"] >= 500
    assert out["overruns"] >= 0 and out["baseline_thread_overruns"] >= 0
    assert 0 <= out["lateness_p50_ms"] <= out["lateness_p99_ms"] <= out["lateness_p999_ms"]
    assert out["lateness_max_ms"] >= 0 and out["baseline_thread_max_ms"] >= 0
    assert isinstance(out["sched_fifo"], bool) and isinstance(out["cpu_pinned"], int)
    for k in ("cpu_model", "cores", "python", "kernel"):
        assert out[k], k

    # the quick grid: 2 multiples x 8 curves, one fault each; every curve trips, causality holds
    assert out["trips_expected"] == 16 and out["trips"] == 16
    assert out["trip_error_max_ms"] >= 0 and out["trip_error_max_pct"] >= 0
    rows = out["trip_grid"]
    assert len(rows) == 16 and {r["curve"] for r in rows} == {
        "IEC_SI", "IEC_VI", "IEC_EI", "IEC_LTI", "IEC_STI", "IEEE_MI", "IEEE_VI", "IEEE_EI"
    }
    for r in rows:
        assert r["tripped"] and r["trip_ms"] > 0 and r["expected_s"] > 0
        assert r["decision_to_wire_ms"] >= 0  # one system-wide monotonic clock
        # a pickup is stamped with its poll's send time, which may precede the injection by one round trip
        assert r["detect_ms"] > -PICKUP_SLACK_NS / 1e6
    assert out["load"] is True and out["load_points_per_s"] > 0 and out["load_json_mb_per_s"] > 0

"""DNP3 benchmark: our :class:`protocols.dnp3.Dnp3Session` against the real opendnp3 outstation (yadnp3).

Run from the repo root: ``.venv/bin/python -m bench.dnp3 [--points 1000 --bursts 10 --burst-events 5000]``.

Two processes, so the outstation's CPU (and its GIL) is not the driver's:
- **outstation** child: :class:`hil_tests.dnp3_outstation.OutstationSim` with ``ceil(points / 6)`` points of
  each type, an event buffer that holds a whole burst; on ``burst N`` (stdin) it applies N binary-input
  changes (toggling indices in turn, each with its own time stamp) at once and answers ``ok``.
- **this process**: one driver (``timed_events=True``: events read as g2v2 with their time), every binary
  input, double-bit, analog, counter, binary output and analog output index configured (``points`` in all;
  the outstation's frozen counters are ignored, its g50v4 points truncate each integrity poll as in the tests).

Measures, printed as the last stdout line (one JSON object):
- ``events_per_s``: events delivered through ``deliver`` per second of polling, over ``--bursts`` bursts of
  ``--burst-events`` events, each drained by back-to-back class 1 polls (multi-fragment responses, each
  fragment confirmed);
- ``integrity_poll_ms``: p50 of ``--integrity`` integrity polls (``integrity_p99_ms`` too);
- ``control_roundtrip_ms``: p99 of ``--controls`` SBO controls (select + operate of a CROB, both answered),
  ``control_p50_ms`` too.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np


def _log(msg: str) -> None:
    print(f"[bench.dnp3] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ outstation child


def _outstation_main(per_type: int, event_buffer: int) -> None:
    from hil_tests.dnp3_outstation import OutstationSim, binary

    state = [False] * per_type
    with OutstationSim(points=per_type, event_buffer=event_buffer, max_tx_fragment=2048) as sim:
        print(f"ready {sim.port}", flush=True)
        t_ms = 1_700_000_000_000
        for line in sys.stdin:
            cmd = line.split()
            if not cmd or cmd[0] == "quit":
                break
            if cmd[0] == "burst":
                updates = []
                for i in range(int(cmd[1])):
                    idx = i % per_type
                    state[idx] = not state[idx]
                    t_ms += 1
                    updates.append(binary(idx, state[idx], time_ms=t_ms))
                sim.apply_all(updates)
            print("ok", flush=True)


# ------------------------------------------------------------------------------------------ driver side


async def _driver_main(proc: subprocess.Popen[str], port: int, per_type: int, args: argparse.Namespace
                       ) -> dict[str, Any]:
    from gateway.config import DeviceConfig, Dnp3Settings, LinkConfig, PointConfig
    from gateway.model import ReadingBatch
    from protocols.dnp3 import Dnp3Session
    from protocols.session import ControlAction, ControlMode, ControlRequest

    kinds = ("binary_input", "double_bit_input", "analog_input", "counter", "binary_output", "analog_output")
    points = tuple(PointConfig(name=f"{k}{i}", kind=k, address=i, writable=k == "binary_output")  # type: ignore[arg-type]
                   for k in kinds for i in range(per_type))
    device = DeviceConfig(name="rtu", timeout_s=5.0, points=points,
                          dnp3=Dnp3Settings(master_address=1, outstation_address=10))
    link = LinkConfig(name="dnp", protocol="dnp3_tcp", host="127.0.0.1", port=port, devices=(device,))
    ids = {f"rtu.{p.name}": i for i, p in enumerate(points)}
    delivered = [0]

    def deliver(batch: ReadingBatch) -> None:
        delivered[0] += len(batch)

    def ask(cmd: str) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(cmd + "\n")
        proc.stdin.flush()
        if proc.stdout.readline().strip() != "ok":
            raise RuntimeError(f"outstation did not acknowledge {cmd!r}")

    d = Dnp3Session(link, ids, deliver, timed_events=True)
    await d.connect()
    try:
        await d.start_session()
        integrity_values = delivered[0]
        _log(f"connected; integrity poll delivered {integrity_values} readings of {len(points)} points")

        lat: list[float] = []
        for _ in range(args.integrity):
            t0 = time.perf_counter()
            await d.run_job("integrity")
            lat.append(time.perf_counter() - t0)
        integ = np.array(lat) * 1e3
        _log(f"integrity poll p50 {np.percentile(integ, 50):.2f} ms")

        total = 0
        spent = 0.0
        for b in range(args.bursts):
            ask(f"burst {args.burst_events}")
            before = delivered[0]
            t0 = time.perf_counter()
            while delivered[0] - before < args.burst_events:
                got = delivered[0]
                await d.run_job("class1")
                if delivered[0] == got and time.perf_counter() - t0 > 30:
                    raise RuntimeError("events stopped arriving")
            spent += time.perf_counter() - t0
            total += delivered[0] - before
            _log(f"burst {b + 1}/{args.bursts}: {delivered[0] - before} events")
        events_per_s = total / spent

        req = ControlRequest(device="rtu", point="binary_output0", action=ControlAction.PULSE_ON,
                             mode=ControlMode.SBO, on_time_ms=100)
        ctl: list[float] = []
        for _ in range(args.controls):
            t0 = time.perf_counter()
            r1 = await d.select(req)
            r2 = await d.operate(req)
            ctl.append(time.perf_counter() - t0)
            if not (r1.ok and r2.ok):
                raise RuntimeError(f"control failed: {r1} {r2}")
        ctl_ms = np.array(ctl) * 1e3
        _log(f"SBO control p99 {np.percentile(ctl_ms, 99):.2f} ms")
        status = d.status()
    finally:
        d.close()
    return {
        "events_per_s": round(events_per_s, 1),
        "integrity_poll_ms": round(float(np.percentile(integ, 50)), 3),
        "control_roundtrip_ms": round(float(np.percentile(ctl_ms, 99)), 3),
        "integrity_p99_ms": round(float(np.percentile(integ, 99)), 3),
        "control_p50_ms": round(float(np.percentile(ctl_ms, 50)), 3),
        "integrity_points": len(points),
        "integrity_readings": integrity_values,
        "events_total": total,
        "burst_events": args.burst_events,
        "bursts": args.bursts,
        "controls": args.controls,
        "truncated_responses": status["truncated"],
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=1000, help="configured points, spread over the 6 DNP3 kinds")
    ap.add_argument("--integrity", type=int, default=50, help="integrity polls timed")
    ap.add_argument("--bursts", type=int, default=10, help="event bursts")
    ap.add_argument("--burst-events", type=int, default=5000, help="events per burst")
    ap.add_argument("--controls", type=int, default=500, help="SBO controls timed")
    ap.add_argument("--role", choices=["main", "outstation"], default="main", help=argparse.SUPPRESS)
    ap.add_argument("--per-type", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--event-buffer", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.role == "outstation":
        _outstation_main(args.per_type, args.event_buffer)
        return 0

    # The outstation's g50v4 points truncate every integrity poll (counted in the result): keep stderr readable.
    logging.getLogger("dnp3").setLevel(logging.ERROR)
    logging.getLogger("protocols.dnp3").setLevel(logging.ERROR)
    per_type = math.ceil(args.points / 6)
    cmd = [sys.executable, "-m", "bench.dnp3", "--role", "outstation", "--per-type", str(per_type),
           "--event-buffer", str(args.burst_events + 100)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready = proc.stdout.readline().split()
        if len(ready) != 2 or ready[0] != "ready":
            raise RuntimeError(f"outstation child did not start: {ready}")
        _log(f"outstation child on port {ready[1]} with {per_type} points per type")
        out = asyncio.run(_driver_main(proc, int(ready[1]), per_type, args))
    finally:
        if proc.stdin is not None:
            try:
                proc.stdin.write("quit\n")
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

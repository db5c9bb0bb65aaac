"""IEC 61850 benchmark: our MMS driver (open61850) against the libiec61850 test IED, over loopback.

Run from the repo root: ``.venv/bin/python -m bench.iec61850 [--burst 20000 --rate 200 --paced-s 3 --sbo 200]``.

Two processes, so the IED's CPU is its own:
- **ied** (a child, ``--child``): :class:`hil_tests.iec61850_server.Iec61850Server` built from the shipped ICD.
  It reads commands on stdin: ``burst N`` (N changes of MMXU1.A.phsA as fast as it can, t = the change time),
  ``paced R S`` (R changes per second for S seconds), ``quit``; it answers one JSON line per command.
- **this process**: one :class:`protocols.iec61850.Iec61850Session` with the buffered RCB enabled, driven like
  the runner does (``idle()`` slices of 50 ms); ``deliver`` stamps every batch with the wall clock.

Figures (the last stdout line is one JSON object; progress goes to stderr):
- ``reports_per_s``: reports decoded and delivered per second while the IED sends a burst as fast as it can
  (first to last delivery); the median of ``--bursts`` runs (``reports_per_s_runs``). The IED's report buffer
  (64 KiB) overflows when the client is slower than the IED: ``burst_delivered`` < ``burst_changes`` then, and
  ``buffer_overflows`` counts the reports flagged.
- ``report_to_store_p99_ms`` (and p50): from the change on the IED (its ``t``, same host clock) to the batch
  handed to ``deliver``, for changes at ``--rate`` per second.
- ``sbo_roundtrip_ms`` (p99; p50 too): select (SBOw) + operate + CommandTermination on CSWI2.Pos
  (sbo-with-enhanced-security), alternately closing and opening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np


def _log(msg: str) -> None:
    print(f"[bench.iec61850] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- IED child


def _child() -> int:
    from hil_tests.iec61850_server import Iec61850Server

    ref = "IED1LD0/MMXU1.A.phsA"
    with Iec61850Server() as srv:
        print(json.dumps({"port": srv.port}), flush=True)
        value = 0.0
        for line in sys.stdin:
            cmd = line.split()
            if not cmd or cmd[0] == "quit":
                break
            t0 = time.monotonic()
            n = 0
            if cmd[0] == "burst":
                for _ in range(int(cmd[1])):
                    value += 1.0
                    srv.update(ref, "cVal.mag.f", value)
                    n += 1
            elif cmd[0] == "paced":
                rate, seconds = float(cmd[1]), float(cmd[2])
                total = int(rate * seconds)
                for k in range(total):
                    due = t0 + k / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    value += 1.0
                    srv.update(ref, "cVal.mag.f", value, t=datetime.now(UTC))
                    n += 1
            print(json.dumps({"changes": n, "last": value, "s": time.monotonic() - t0}), flush=True)
    return 0


# --------------------------------------------------------------------------------------- measuring side


class _Sink:
    """``deliver``: per reading of the measured point, (wall ns at delivery, source ts, value)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.at: list[np.ndarray[Any, Any]] = []
        self.ts: list[np.ndarray[Any, Any]] = []
        self.val: list[np.ndarray[Any, Any]] = []

    def __call__(self, batch: Any) -> None:
        now = time.time_ns()
        m = batch.point_id == self.pid
        if m.any():
            self.ts.append(batch.ts[m])
            self.val.append(batch.value[m])
            self.at.append(np.full(int(m.sum()), now, dtype=np.int64))

    def reset(self) -> None:
        self.at.clear()
        self.ts.clear()
        self.val.clear()

    def arrays(self) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        if not self.at:
            e = np.zeros(0)
            return e.astype(np.int64), e.astype(np.int64), e
        return np.concatenate(self.at), np.concatenate(self.ts), np.concatenate(self.val)


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.config import DeviceConfig, Iec61850Settings, LinkConfig, PointConfig
    from protocols.iec61850 import Iec61850Session
    from protocols.session import ControlMode, ControlRequest

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.iec61850", "--child",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def command(text: str) -> dict[str, Any]:
        stdin.write((text + "\n").encode())
        await stdin.drain()
        return dict(json.loads(await stdout.readline()))

    port = json.loads(await stdout.readline())["port"]
    points = (
        PointConfig(name="Ia", kind="attribute", ref="IED1LD0/MMXU1.A.phsA", da="cVal.mag.f", fc="MX"),
        PointConfig(name="Hz", kind="attribute", ref="IED1LD0/MMXU1.Hz", da="mag.f", fc="MX"),
        PointConfig(name="Pos2", kind="attribute", ref="IED1LD0/CSWI2.Pos", da="stVal", fc="ST", writable=True),
    )
    dev = DeviceConfig(name="ied1", timeout_s=5.0, points=points,
                       iec61850=Iec61850Settings(reports=("IED1LD0/LLN0.BR.brcbMeas01",)))
    lk = LinkConfig(name="bay1", protocol="iec61850", host="127.0.0.1", port=port, devices=(dev,))
    ids = {f"ied1.{p.name}": i for i, p in enumerate(points)}
    sink = _Sink(ids["ied1.Ia"])
    drv = Iec61850Session(lk, ids, sink)
    await drv.connect()
    await drv.start_session()
    stop = asyncio.Event()

    async def runner() -> None:  # what SessionRunner does between jobs
        while not stop.is_set():
            await drv.idle(0.05)

    pump = asyncio.create_task(runner())
    out: dict[str, Any] = {}
    try:
        # --- bursts: throughput (the median of --bursts runs: one burst drains the IED's buffer in < 1 s)
        rates: list[float] = []
        changes = delivered = 0
        ied_rates: list[float] = []
        overflows0 = int(drv.status().get("buffer_overflows", 0))  # type: ignore[call-overload]
        for b in range(args.bursts):
            await asyncio.sleep(0.5)
            sink.reset()
            reports0 = int(drv.status().get("reports", 0))  # type: ignore[call-overload]
            _log(f"burst {b + 1}/{args.bursts} of {args.burst} changes")
            res = await command(f"burst {args.burst}")
            last = res["last"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                _, _, val = sink.arrays()
                if len(val) and val[-1] >= last:
                    break
                await asyncio.sleep(0.1)
            at, _, val = sink.arrays()
            span_s = (at[-1] - at[0]) / 1e9 if len(at) > 1 else float("nan")
            reports = int(drv.status().get("reports", 0)) - reports0  # type: ignore[call-overload]
            rates.append(reports / span_s if span_s > 0 else float("nan"))
            changes += res["changes"]
            delivered += len(val)
            ied_rates.append(res["changes"] / res["s"])
        out.update(
            reports_per_s=round(float(np.median(rates)), 1),
            reports_per_s_runs=[round(r, 1) for r in rates],
            burst_changes=changes,
            burst_delivered=delivered,
            burst_ied_changes_per_s=round(float(np.median(ied_rates)), 1),
            buffer_overflows=int(drv.status().get("buffer_overflows", 0)) - overflows0,  # type: ignore[call-overload]
        )
        _log(f"bursts: {out}")

        # --- paced: latency from the change on the IED to deliver()
        await asyncio.sleep(0.5)
        sink.reset()
        _log(f"paced: {args.rate}/s for {args.paced_s} s")
        res = await command(f"paced {args.rate} {args.paced_s}")
        last = res["last"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            _, _, val = sink.arrays()
            if len(val) and val[-1] >= last:
                break
            await asyncio.sleep(0.05)
        at, ts, val = sink.arrays()
        lat_ms = (at - ts) / 1e6
        out.update(
            report_to_store_p99_ms=round(float(np.percentile(lat_ms, 99)), 3),
            report_to_store_p50_ms=round(float(np.percentile(lat_ms, 50)), 3),
            paced_changes=res["changes"],
            paced_delivered=len(val),
        )
        _log(f"paced: p50 {out['report_to_store_p50_ms']} ms, p99 {out['report_to_store_p99_ms']} ms")

        # --- SBO with enhanced security
        stop.set()
        await pump
        times: list[float] = []
        refused = 0
        for k in range(args.sbo):
            r = ControlRequest(device="ied1", point="Pos2", value=2.0 if k % 2 == 0 else 1.0,
                               mode=ControlMode.SBO, origin="bench")
            t0 = time.perf_counter()
            ok = (await drv.select(r)).ok and (await drv.operate(r)).ok
            times.append((time.perf_counter() - t0) * 1000)
            refused += not ok
            await drv.idle(0)  # let the position reports through
        arr = np.asarray(times)
        out.update(
            sbo_roundtrip_ms=round(float(np.percentile(arr, 99)), 3),
            sbo_roundtrip_p50_ms=round(float(np.percentile(arr, 50)), 3),
            sbo_controls=args.sbo,
            sbo_refused=refused,
        )
        _log(f"sbo: p50 {out['sbo_roundtrip_p50_ms']} ms, p99 {out['sbo_roundtrip_ms']} ms")
    finally:
        stop.set()
        if not pump.done():
            await pump
        drv.close()
        stdin.write(b"quit\n")
        await stdin.drain()
        await proc.wait()
    out.update(cpus=os.cpu_count(), python=sys.version.split()[0])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.iec61850", description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--burst", type=int, default=20000, help="changes sent as fast as possible (throughput)")
    ap.add_argument("--bursts", type=int, default=3, help="bursts; reports_per_s is their median")
    ap.add_argument("--rate", type=float, default=200.0, help="changes per second for the latency phase")
    ap.add_argument("--paced-s", type=float, default=3.0, help="length of the latency phase in seconds")
    ap.add_argument("--sbo", type=int, default=200, help="select+operate cycles")
    args = ap.parse_args(argv)
    if args.child:
        return _child()
    out = asyncio.run(_measure(args))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

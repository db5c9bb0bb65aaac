"""Traceable simulated devices for the power-cut harness (:mod:`hil_tests.powercut`).

Each device is one Modbus TCP server (its own port, unit id 1) with ``points`` uint32 input registers (two
registers each, big-endian words). Every read of a unit bumps that unit's **read counter** ``c`` (1, 2, 3, ...)
and, before the registers are answered, writes ``point_value(c, i) = c * VALUE_BASE + i`` into point ``i``; so
every value a gateway stores names the read that served it, and a value the simulator never served (an
"invented" reading) or one served once and stored twice (a re-commit) is visible afterwards.

The counters live in a small shared file (``--counters``, int64 numpy memmap of shape ``(devices, 2)``: reads
served and point readings served, per device) that the harness reads at any moment, e.g. right after a kill.

Run as ``python -m hil_tests.powercut_sim --devices 4 --points 50 --counters FILE``: it prints one JSON line
``{"ports": [...]}`` on stdout once every server listens, serves until SIGTERM/SIGINT, then flushes the
counters and exits 0. Test code only: never imported by the product packages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from hil_tests.modbus_sim import SimServer, SimUnit, Table

VALUE_BASE: Final = 1000  # point i at the c-th read of its device: c * VALUE_BASE + i (so at most 1000 points)
REGS_PER_POINT: Final = 2  # uint32
UNIT_ID: Final = 1
READS: Final = 0  # counters[device, READS]: reads served
READINGS: Final = 1  # counters[device, READINGS]: point readings served (points covered by those reads)


def point_value(count: int, index: int) -> int:
    """The value of point ``index`` in the ``count``-th read of its device."""
    return count * VALUE_BASE + index


def open_counters(path: Path, devices: int, create: bool) -> np.memmap:
    """The shared counters file: int64 ``(devices, 2)``; ``create`` zeroes it (the simulator's side)."""
    shape = (devices, 2)
    if create:
        return np.memmap(path, dtype=np.int64, mode="w+", shape=shape)
    return np.memmap(path, dtype=np.int64, mode="r", shape=shape)


class CountingDevice:
    """One traceable device: a :class:`SimUnit` whose input registers change on every read."""

    def __init__(self, index: int, points: int, counters: npt.NDArray[np.int64]) -> None:
        if not 1 <= points <= VALUE_BASE:
            raise ValueError(f"points must be 1..{VALUE_BASE}")
        self.index = index
        self.points = points
        self.counters = counters
        self.unit = SimUnit(UNIT_ID, holding=1, input=points * REGS_PER_POINT, coils=1, discrete=1)
        self._offsets = np.arange(points, dtype=np.uint64)
        self.unit.on_read = self._on_read

    def _on_read(self, kind: Table, address: int, count: int) -> None:
        if kind != "input":
            return
        c = int(self.counters[self.index, READS]) + 1
        values = np.uint64(c * VALUE_BASE) + self._offsets
        words = self.unit.input
        words[0::2] = (values >> np.uint64(16)).astype(np.uint16)
        words[1::2] = (values & np.uint64(0xFFFF)).astype(np.uint16)
        # points whose both registers are inside [address, address + count)
        first = (address + REGS_PER_POINT - 1) // REGS_PER_POINT
        end = (address + count) // REGS_PER_POINT
        self.counters[self.index, READINGS] += max(0, min(end, self.points) - first)
        self.counters[self.index, READS] = c


async def serve(devices: int, points: int, counters_path: Path, stop: asyncio.Event) -> None:
    counters = open_counters(counters_path, devices, create=True)
    devs = [CountingDevice(i, points, counters) for i in range(devices)]
    servers = [SimServer([d.unit], tcp=("127.0.0.1", 0)) for d in devs]
    try:
        for s in servers:
            await s.start()
        print(json.dumps({"ports": [s.port for s in servers]}), flush=True)
        await stop.wait()
    finally:
        for s in servers:
            await s.stop()
        counters.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil_tests.powercut_sim", description=__doc__)
    ap.add_argument("--devices", type=int, default=4, help="number of devices (one TCP port each)")
    ap.add_argument("--points", type=int, default=50, help="uint32 input points per device")
    ap.add_argument("--counters", type=Path, required=True, help="shared counters file (created)")
    args = ap.parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.devices, args.points, args.counters, stop)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())

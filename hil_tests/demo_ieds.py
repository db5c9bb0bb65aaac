"""The demo's simulated IEDs: feeder relays (units 1-3 on one port) and an incomer meter (own port), driven by
:class:`hil_tests.feeder.FeederModel` and served by the real pymodbus server stack (:mod:`hil_tests.modbus_sim`),
feeder 4 behind a DNP3 RTU (:mod:`hil_tests.demo_rtu`) and feeder 5 behind an IEC 61850 IED
(:mod:`hil_tests.demo_ied61850`, where its server library is installed).

Run as ``python -m hil_tests.demo_ieds --port 15020 --incomer-port 15021 --dnp3-port 15022 --iec61850-port
15023``; stops quietly on SIGINT/SIGTERM.
Writing 1 to coil 0 (trip_cmd) opens a feeder's breaker (its currents fall to zero), coil 1 (close_cmd) closes it;
both coils reset themselves. Holding register 0 (pickup_A) is kept as written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

import numpy as np

from hil_tests import demo_ied61850
from hil_tests.demo_ied61850 import DemoIed61850
from hil_tests.demo_rtu import DemoRtu
from hil_tests.feeder import INPUT_REGISTERS, FeederModel, encode_input_registers
from hil_tests.modbus_sim import SimServer, SimUnit

TICK_S = 0.1


class FeederIed:
    """One feeder relay: a model and the Modbus unit that shows it."""

    def __init__(self, unit_id: int, seed: int, peak_load_a: float = 320.0) -> None:
        self.model = FeederModel(seed=seed, peak_load_a=peak_load_a)
        self.unit = SimUnit(unit_id, holding=8, input=INPUT_REGISTERS, coils=8, discrete=8)
        self.unit.holding[0] = self.model.pickup_a

    def tick(self, wall_s: float) -> None:
        u, m = self.unit, self.model
        if u.coils[0]:
            m.trip(wall_s)
            u.coils[0] = False
        if u.coils[1]:
            m.close()
            u.coils[1] = False
        m.pickup_a = int(u.holding[0])
        values = m.step(wall_s)
        u.input[:] = np.asarray(encode_input_registers(values), dtype=np.uint16)
        u.discrete[0] = m.breaker_closed


def build_servers(
    port: int, incomer_port: int, host: str = "127.0.0.1"
) -> tuple[list[SimServer], list[FeederIed]]:
    feeders = [FeederIed(unit_id=i, seed=i) for i in (1, 2, 3)]
    incomer = FeederIed(unit_id=1, seed=7, peak_load_a=900.0)
    servers = [
        SimServer([f.unit for f in feeders], tcp=(host, port)),
        SimServer([incomer.unit], tcp=(host, incomer_port)),
    ]
    return servers, [*feeders, incomer]


async def serve(
    port: int, incomer_port: int, stop: asyncio.Event, dnp3_port: int = 0, iec61850_port: int = 0
) -> None:
    """Serve until ``stop``; a port of 0 leaves that IED out (as does a missing IEC 61850 server library)."""
    servers, ieds = build_servers(port, incomer_port)
    rtu = DemoRtu(dnp3_port) if dnp3_port else None
    ied61850 = DemoIed61850(iec61850_port) if iec61850_port and demo_ied61850.available() else None

    def tick(_: float) -> None:
        now = time.time()
        for ied in ieds:
            ied.tick(now)
        if rtu is not None:
            rtu.tick(now)
        if ied61850 is not None:
            ied61850.tick(now)

    if ied61850 is not None:
        ied61850.start()
    tick(0.0)
    for s in servers:
        await s.start()
    if rtu is not None:
        await rtu.start()
    servers[0].every(TICK_S, tick)
    try:
        await stop.wait()
    finally:
        if rtu is not None:
            await rtu.stop()
        if ied61850 is not None:
            ied61850.stop()
        for s in servers:
            await s.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil_tests.demo_ieds", description=__doc__)
    ap.add_argument("--port", type=int, default=15020, help="TCP port of the three feeder relays (units 1-3)")
    ap.add_argument("--incomer-port", type=int, default=15021, help="TCP port of the incomer meter (unit 1)")
    ap.add_argument("--dnp3-port", type=int, default=15022, help="TCP port of the DNP3 RTU (0: none)")
    ap.add_argument("--iec61850-port", type=int, default=15023, help="TCP port of the IEC 61850 IED (0: none)")
    args = ap.parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.port, args.incomer_port, stop, args.dnp3_port, args.iec61850_port)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

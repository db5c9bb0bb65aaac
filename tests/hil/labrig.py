"""A small rig for the runner's tests, built from simulators that exist on their own: the protection bay
(:class:`hil_tests.protection_rig.ProtectionRig`: feeder 1's measurement IED + breaker, fault injection, trip
command arrivals) and a demo feeder relay (feeder 2, :class:`hil_tests.demo_ieds.FeederIed` on a pymodbus
server). It implements :class:`hil_tests.rig.Rig` for what these simulators can do (no frequency, voltage or
clock injections: those need the substation model).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from hil_tests.demo_ieds import FeederIed
from hil_tests.modbus_sim import SimServer
from hil_tests.protection_rig import ProtectionRig
from hil_tests.rig import DeviceEndpoint


class LabRig:
    name = "lab"

    def __init__(self, pickup_a: float = 600.0) -> None:
        self.prot = ProtectionRig(pickup_a=pickup_a, update_period_s=0.001)
        self.feeder2 = FeederIed(unit_id=1, seed=2)
        self.server: SimServer | None = None
        self._samples: dict[str, list[float]] = {k: [] for k in
                                                 ("t_mono_ns", "feeder1.Ia", "feeder1.Ib", "feeder1.Ic",
                                                  "feeder1.breaker")}
        self._task: asyncio.Task[None] | None = None
        self._log: list[dict[str, Any]] = []

    def capabilities(self) -> frozenset[str]:
        return frozenset({"fault", "device_fault", "breaker", "network", "power_cut", "cloud_outage", "disk"})

    async def start(self) -> None:
        await asyncio.to_thread(self.prot.start)
        self.server = SimServer([self.feeder2.unit], tcp=("127.0.0.1", 0))
        await self.server.start()
        self.server.every(0.1, lambda _t: self.feeder2.tick(time.time()))
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.server is not None:
            await self.server.stop()
            self.server = None
        await asyncio.to_thread(self.prot.stop)

    async def _sample(self) -> None:
        s = self._samples
        while True:
            st = self.prot.state()
            v = st["values"]
            s["t_mono_ns"].append(float(time.monotonic_ns()))
            for ph in ("Ia", "Ib", "Ic"):
                s[f"feeder1.{ph}"].append(float(v[ph]))
            s["feeder1.breaker"].append(1.0 if st["breaker_closed"] else 0.0)
            arr = st["trip_arrival_ns"]
            if arr is not None and not any(e["mono_ns"] == arr for e in self._log):
                self._log.append({"feeder": "feeder1", "event": "trip_cmd", "mono_ns": int(arr)})
            await asyncio.sleep(0.01)

    def devices(self) -> dict[str, DeviceEndpoint]:
        assert self.server is not None
        return {
            "feeder1": DeviceEndpoint("feeder1", "modbus_tcp", "127.0.0.1", self.prot.port, 1),
            "feeder2": DeviceEndpoint("feeder2", "modbus_tcp", "127.0.0.1", self.server.port, 1),
        }

    def protection_endpoint(self) -> DeviceEndpoint | None:
        return DeviceEndpoint("feeder1-bay", "modbus_tcp", "127.0.0.1", self.prot.port, 1)

    def links_toml(self) -> str:
        return ""

    def inject_fault(self, feeder: str, kind: str, *, phases: str = "abc", current_a: float | None = None,
                     multiple: float | None = None) -> int:
        if feeder != "feeder1":
            raise ValueError(f"the lab rig can fault feeder1 only, not {feeder!r}")
        ph = "abc" if kind == "3ph" else phases
        if current_a is not None:
            return self.prot.inject_fault(multiple_of=current_a / self.prot.pickup_a, phases=ph)
        return self.prot.inject_fault(multiple_of=multiple, phases=ph)

    def clear_fault(self, feeder: str) -> int:
        return self.prot.clear_fault()

    def set_frequency(self, hz: float, ramp_hz_per_s: float = 0.0) -> int:
        raise NotImplementedError("the lab rig has no frequency injection")

    def set_voltage(self, feeder: str, pu: float) -> int:
        raise NotImplementedError("the lab rig has no voltage injection")

    def device_fault(self, device: str, mode: str, delay_s: float = 0.0) -> int:
        unit = self.feeder2.unit if device == "feeder2" else self.prot.ied
        unit.silent = mode == "silent"
        unit.delay_s = delay_s if mode == "slow" else 0.0
        unit.garbage = mode == "garbage"
        return time.monotonic_ns()

    def breaker_closed(self, feeder: str) -> bool:
        return bool(self.prot.breaker_closed) if feeder == "feeder1" else self.feeder2.model.breaker_closed

    def breaker_log(self) -> list[dict[str, Any]]:
        return list(self._log)

    def samples(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self._samples.items()}

    def close_breaker(self, feeder: str) -> None:
        self.prot.close_breaker()

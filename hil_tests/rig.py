"""The rig interface the HIL runner (hil_tests.runner) drives.

A rig is a substation: simulated (``hil_tests.substation.SimulatedRig``: protocol simulators fed by one
substation model) or real (``hil_tests.real_rig.RealRig``: device addresses from a rig TOML file). The runner owns
the gateway process, the fault proxies between the gateway and each device / the cloud receiver, the receiver,
power cuts, disk and clock of the gateway; the rig owns the devices and the physics.

Units and threads:

* times are ``time.monotonic_ns()`` integers (ns) of this process unless said otherwise; every injection returns
  the monotonic ns right after it took effect (the *inception*), so the runner measures "trip within N ms" from
  it to the breaker's trip-command arrival (``breaker_log``), both on the same clock;
* currents in A (primary), voltages in per unit of nominal (1.0 = nominal), frequency in Hz, ROCOF in Hz/s,
  delays in s;
* ``start``/``stop`` are coroutines run on the runner's event loop; every other method is synchronous, cheap
  (no blocking I/O longer than a few ms) and may be called from the loop's thread at any time between ``start``
  and ``stop``; a rig that runs simulators in threads or processes makes these methods thread-safe itself.

Optional extension (not part of the Protocol; the runner looks for it with ``getattr`` and needs the
"clock_jump" capability): ``jump_clock(device: str, offset_s: float) -> int`` moves a device's own clock (the
timestamps it reports, e.g. a DNP3 outstation's event times) by offset_s and returns the monotonic ns.
``links_toml()`` may be absent too (treated as "").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: Every capability a rig may report; the runner skips an action (and the expectations that depend on it) whose
#: capability the rig lacks, and says so in the report.
ALL_CAPABILITIES: frozenset[str] = frozenset(
    {"fault", "frequency", "voltage", "device_fault", "network", "power_cut", "clock_jump", "disk",
     "cloud_outage", "breaker"}
)

PROTOCOLS: frozenset[str] = frozenset({"modbus_tcp", "dnp3_tcp", "iec61850"})


@dataclass(frozen=True)
class DeviceEndpoint:
    """Where a device listens.

    name: the device's name in the gateway config ([[devices]] name); protocol: "modbus_tcp" | "dnp3_tcp" |
    "iec61850"; host/port: TCP address (the runner puts a fault proxy in front of it); unit_id: Modbus unit id,
    DNP3 outstation address (the master address is the gateway config's default), unused (0) for IEC 61850.
    """

    name: str
    protocol: str
    host: str
    port: int
    unit_id: int = 1


@runtime_checkable
class Rig(Protocol):
    """A substation the runner drives: simulated (hil_tests.substation.SimulatedRig) or real (RealRig, rig file)."""

    name: str

    def capabilities(self) -> frozenset[str]:
        """Subset of ALL_CAPABILITIES this rig can perform from the runner's side."""
        ...

    async def start(self) -> None:
        """Bring the simulators up; when it returns every endpoint's port is bound and answering."""
        ...

    async def stop(self) -> None:
        """Stop everything start() started (idempotent)."""
        ...

    def devices(self) -> dict[str, DeviceEndpoint]:
        """Devices the gateway polls: name -> endpoint (the protection IED is not among them)."""
        ...

    def protection_endpoint(self) -> DeviceEndpoint | None:
        """The CT/PT measurement IED + breaker (Modbus TCP) the protection process reads and trips, or None.

        unit_id is the measurement IED (input registers 0..15: Ia Ib Ic In Va Vb Vc f, float32, as
        hil_tests.protection_rig); the breaker IED is unit ``unit_id + 1`` on the same host/port, trip coil 0,
        close coil 1 (ProtectionRig's defaults: units 1 and 2). The protection link does not go through a proxy.
        """
        ...

    def links_toml(self) -> str:
        """Extra TOML appended verbatim to the generated gateway config (e.g. ``[templates.X]`` tables); may be "".

        The runner writes the ``[[links]]`` itself, one link per (host, port) with its devices, hosts/ports
        pointing at its fault proxies, and the demo register maps per protocol (gateway/configs/demo.toml):
        template ``feeder_relay`` for modbus_tcp, the demo RTU's points for dnp3_tcp, the demo IED's (ied1.icd)
        points for iec61850."""
        ...

    # --- injections: each returns time.monotonic_ns() right after the injection took effect ---

    def inject_fault(self, feeder: str, kind: str, *, phases: str = "abc", current_a: float | None = None,
                     multiple: float | None = None) -> int:
        """Fault on ``feeder``: kind "3ph" | "ph-g" (phases e.g. "a"); current_a (A primary) or multiple
        (x the feeder's pickup); persists until clear_fault or the breaker opens."""
        ...

    def clear_fault(self, feeder: str) -> int:
        """Remove the fault on ``feeder`` (currents back to load)."""
        ...

    def set_frequency(self, hz: float, ramp_hz_per_s: float = 0.0) -> int:
        """Step the system frequency to ``hz``, or with ramp != 0 ramp from the present value at that ROCOF
        (Hz/s) towards ``hz``."""
        ...

    def set_voltage(self, feeder: str, pu: float) -> int:
        """Sag (< 1) or swell (> 1) on ``feeder`` ("*" for the bus); 1.0 restores."""
        ...

    def device_fault(self, device: str, mode: str, delay_s: float = 0.0) -> int:
        """Device misbehaviour: "silent" (stops answering), "garbage" (answers malformed frames), "slow"
        (answers after delay_s), "restart" (drops connections and comes back), "ok" (back to normal)."""
        ...

    def breaker_closed(self, feeder: str) -> bool:
        """Whether the feeder's breaker is closed now."""
        ...

    def breaker_log(self) -> list[dict]:
        """Command arrivals at the breaker IED: {"feeder", "event": "trip_cmd" | "close_cmd", "mono_ns"}."""
        ...

    def samples(self) -> dict[str, list[float]]:
        """Recorded at ~10 ms for the protected feeders: "t_mono_ns" + "<feeder>.Ia|Ib|Ic" (A) +
        "<feeder>.breaker" (1 closed / 0 open); all lists the same length."""
        ...

    def close_breaker(self, feeder: str) -> None:
        """Close the feeder's breaker (as an operator would)."""
        ...

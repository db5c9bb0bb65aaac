"""A real rig: device addresses from a rig TOML file, for running the same scenarios against real IEDs
(``python -m hil_tests run --rig rig.toml SCENARIO…``).

From our side of the wire the runner can still do what it owns: put its fault proxies between the gateway and
every device and between the gateway and the receiver (capability ``network``, and ``cloud_outage``), and
SIGKILL its own gateway (``power_cut``). Everything that needs the physics or the devices' insides — faults,
frequency and voltage excursions, device misbehaviour, clock jumps, breaker operation, the trip command's
arrival time — needs a test set (e.g. a secondary injection set driven by its own API) that this class does not
drive: those actions are skipped, with the reason in the report, and the expectations depending on them are
skipped, not passed. "disk" is not offered either (the runner's gateway runs here, but "disk nearly full" is a
property of the target's file system, not of this machine's).

Rig file::

    name = "bay-3 test bench"

    [[devices]]
    name = "feeder2"            # must match the names the scenarios use
    protocol = "modbus_tcp"     # modbus_tcp | dnp3_tcp | iec61850
    host = "192.168.10.21"
    port = 502
    unit_id = 1                 # Modbus unit / DNP3 outstation address; ignored for IEC 61850

    [protection]                # optional: the CT/PT measurement IED + breaker IED the protection process uses
    host = "192.168.10.30"
    port = 502
    unit_id = 1                 # measurement IED; the breaker IED is unit_id + 1 (hil_tests.rig)

Threads: as the Rig protocol (the event loop's thread).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Final

from hil_tests.rig import PROTOCOLS, DeviceEndpoint

CAPABILITIES: Final = frozenset({"network", "power_cut", "cloud_outage"})


class RigFileError(ValueError):
    """The rig file could not be used (the message names the file and the key)."""


class RealRig:
    """Real devices at fixed addresses; only the runner's own injections (see the module docstring)."""

    runner_capabilities: frozenset[str] = frozenset()  # the runner adds nothing: CAPABILITIES say it all

    def __init__(self, name: str, devices: dict[str, DeviceEndpoint], protection: DeviceEndpoint | None = None
                 ) -> None:
        self.name = name
        self._devices = dict(devices)
        self._protection = protection

    @classmethod
    def from_file(cls, path: str | Path) -> RealRig:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise RigFileError(f"{path}: cannot read: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise RigFileError(f"{path}: not valid TOML: {e}") from None
        problems: list[str] = []
        for k in raw:
            if k not in ("name", "devices", "protection"):
                problems.append(f"{path}: {k}: unknown key (valid: name, devices, protection)")
        devices: dict[str, DeviceEndpoint] = {}
        for i, d in enumerate(raw.get("devices", [])):
            ep = _endpoint(d, f"devices[{i}]", path, problems)
            if ep is not None:
                if ep.name in devices:
                    problems.append(f"{path}: devices[{i}].name: duplicate device {ep.name!r}")
                devices[ep.name] = ep
        prot = None
        if "protection" in raw:
            p = dict(raw["protection"]) if isinstance(raw["protection"], dict) else {}
            p.setdefault("name", "protection")
            p.setdefault("protocol", "modbus_tcp")
            prot = _endpoint(p, "protection", path, problems)
            if prot is not None and prot.protocol != "modbus_tcp":
                problems.append(f"{path}: protection.protocol: the protection link is Modbus TCP")
        if problems:
            raise RigFileError("\n".join(problems))
        return cls(str(raw.get("name", path.stem)), devices, prot)

    def capabilities(self) -> frozenset[str]:
        return CAPABILITIES

    async def start(self) -> None:
        """Nothing to start: the devices are real."""

    async def stop(self) -> None:
        """Nothing to stop."""

    def devices(self) -> dict[str, DeviceEndpoint]:
        return dict(self._devices)

    def protection_endpoint(self) -> DeviceEndpoint | None:
        return self._protection

    def links_toml(self) -> str:
        return ""

    def _cannot(self, what: str) -> int:
        raise NotImplementedError(f"a real rig cannot {what} from the runner's side (needs a test set)")

    def inject_fault(self, feeder: str, kind: str, *, phases: str = "abc", current_a: float | None = None,
                     multiple: float | None = None) -> int:
        return self._cannot("inject a fault")

    def clear_fault(self, feeder: str) -> int:
        return self._cannot("clear a fault")

    def set_frequency(self, hz: float, ramp_hz_per_s: float = 0.0) -> int:
        return self._cannot("change the frequency")

    def set_voltage(self, feeder: str, pu: float) -> int:
        return self._cannot("change a voltage")

    def device_fault(self, device: str, mode: str, delay_s: float = 0.0) -> int:
        return self._cannot("make a device misbehave")

    def breaker_closed(self, feeder: str) -> bool:
        return True

    def breaker_log(self) -> list[dict[str, Any]]:
        return []  # the arrival of a trip command at a real breaker is not observable from here

    def samples(self) -> dict[str, list[float]]:
        return {}

    def close_breaker(self, feeder: str) -> None:
        self._cannot("close a breaker")


def _endpoint(d: Any, key: str, path: Path, problems: list[str]) -> DeviceEndpoint | None:
    if not isinstance(d, dict):
        problems.append(f"{path}: {key}: expected a table")
        return None
    valid = ("name", "protocol", "host", "port", "unit_id")
    for k in d:
        if k not in valid:
            problems.append(f"{path}: {key}.{k}: unknown key (valid: {', '.join(valid)})")
    name, proto, host, port = d.get("name"), d.get("protocol"), d.get("host"), d.get("port")
    ok = True
    if not isinstance(name, str) or not name:
        problems.append(f"{path}: {key}.name: required")
        ok = False
    if proto not in PROTOCOLS:
        problems.append(f"{path}: {key}.protocol: expected one of {', '.join(sorted(PROTOCOLS))}, got {proto!r}")
        ok = False
    if not isinstance(host, str) or not host:
        problems.append(f"{path}: {key}.host: required")
        ok = False
    if not isinstance(port, int) or not 0 < port < 65536:
        problems.append(f"{path}: {key}.port: expected 1..65535, got {port!r}")
        ok = False
    unit = d.get("unit_id", 1)
    if not isinstance(unit, int):
        problems.append(f"{path}: {key}.unit_id: expected an integer")
        ok = False
    if not ok:
        return None
    assert isinstance(port, int) and isinstance(unit, int)
    return DeviceEndpoint(str(name), str(proto), str(host), port, unit)

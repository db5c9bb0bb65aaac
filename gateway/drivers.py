"""Registry of session-protocol drivers: link protocol → the class that speaks it (imported on first use).

Modbus links run under :class:`gateway.runner.LinkRunner`; the protocols listed here run under
:class:`gateway.session_runner.SessionRunner` with the driver built by :func:`driver_factory`. Importing this
module imports no protocol stack (a gateway without DNP3 links never loads dnp3py).
"""

from __future__ import annotations

import importlib
from typing import Final, cast

from gateway.session_runner import DriverFactory

__all__ = ["SESSION_DRIVERS", "driver_factory"]

# protocol → "module:Class"; the class is called as Class(link, point_ids, deliver).
SESSION_DRIVERS: Final[dict[str, str]] = {
    "dnp3_tcp": "protocols.dnp3:Dnp3Session",
    "iec61850": "protocols.iec61850:Iec61850Session",
    "mqtt": "protocols.mqtt:MqttSession",  # sensors over MQTT (one device per sensor; docs/analytics.md)
}


def driver_factory(protocol: str) -> DriverFactory:
    """The driver class for ``protocol`` (``KeyError`` for a protocol that is not a session protocol)."""
    module, _, name = SESSION_DRIVERS[protocol].partition(":")
    return cast(DriverFactory, getattr(importlib.import_module(module), name))

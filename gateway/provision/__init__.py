"""First-boot provisioning from a file on the boot partition (``gateway provision``; docs/deployment.md,
"First boot"): validate it, install the config, create the panel's admin, make the device key and enrol with the
receiver for a client certificate, then remove the file (no secret stays on the boot partition).

:func:`first_boot` (:mod:`gateway.provision.firstboot`) does it all; :func:`provision_status`
(:mod:`gateway.provision.status`) reads what the last run left for the panel. Both are imported lazily, so that
``import gateway.provision.status`` (the panel) or ``.cli`` (the ``gateway`` parser) stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ProvisionResult", "first_boot", "provision_status"]


def __getattr__(name: str) -> Any:
    if name in ("ProvisionResult", "first_boot"):
        from gateway.provision import firstboot

        return getattr(firstboot, name)
    if name == "provision_status":
        from gateway.provision.status import provision_status

        return provision_status
    raise AttributeError(name)

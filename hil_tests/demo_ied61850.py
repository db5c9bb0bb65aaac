"""The demo's IEC 61850 IED: feeder 5 of :class:`hil_tests.feeder.FeederModel` behind a libiec61850 server built
from ``tests/data/ied1.icd`` (IED ``IED1``, logical device ``IED1LD0``).

- ``MMXU1.A.phsA/B/C`` (A), ``MMXU1.TotW`` (kW: the ICD gives SIUnit W with multiplier k), ``MMXU1.Hz``: the
  model's currents, active power and frequency;
  the buffered report ``LLN0.BR.brcbMeas`` carries them (and the positions) to the gateway on change.
- ``XCBR1.Pos``: the breaker position (Dbpos: 1 off, 2 on).
- ``CSWI1.Pos``: breaker control, direct-with-normal-security; ``CSWI2.Pos``: SBO-with-enhanced-security.
  ctlVal false opens the breaker, true closes it (``CSWI*.Pos`` and ``XCBR1.Pos`` follow).

The server is pyiec61850 (libiec61850, GPLv3) and runs only inside the demo IEDs' process (:mod:`hil_tests`), never
in the gateway. Its wheels exist for x86_64 only: elsewhere :func:`available` is False and the demo goes on
without this IED. :meth:`DemoIed61850.tick` runs on the demo IEDs' asyncio loop; the server's control callbacks
run on libiec61850's thread and only record operations, which the next tick applies to the model.
"""

from __future__ import annotations

import importlib.util

from hil_tests.feeder import FeederModel

__all__ = ["LD", "DemoIed61850", "available"]

LD = "IED1LD0"
_CONTROLS = (f"{LD}/CSWI1.Pos", f"{LD}/CSWI2.Pos")


def available() -> bool:
    """True where the libiec61850 server (pyiec61850) is installed."""
    return importlib.util.find_spec("pyiec61850") is not None


class DemoIed61850:
    """A feeder model behind an MMS server on ``host:port``."""

    def __init__(self, port: int, host: str = "127.0.0.1", seed: int = 5) -> None:
        from hil_tests.iec61850_server import DEFAULT_ICD, Iec61850Server  # pyiec61850 only where available

        self.model = FeederModel(seed=seed, peak_load_a=240.0)
        self.server = Iec61850Server(DEFAULT_ICD, port=port, host=host)
        self._applied = 0  # operations already applied to the model

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def halt(self) -> None:
        """Stop serving but keep the server and its model (a device restart): every association drops and the
        port closes; :meth:`resume` listens again. Uses the server's own stop/start (as its drop_connections)."""
        import pyiec61850.iec61850 as lib

        s = self.server
        with s._lock:
            lib.IedServer_stop(s._server)

    def resume(self) -> None:
        """Listen again after :meth:`halt`."""
        import pyiec61850.iec61850 as lib

        s = self.server
        with s._lock:
            lib.IedServer_start(s._server, s.port)
            if not lib.IedServer_isRunning(s._server):
                raise OSError(f"IEC 61850 IED could not listen again on port {s.port}")

    def tick(self, wall_s: float) -> None:
        """Apply the controls that arrived, publish the model's values (a report goes out when they change)."""
        s, m = self.server, self.model
        ops = s.operations[self._applied:]
        self._applied += len(ops)
        for op in ops:
            if op.object_ref in _CONTROLS and isinstance(op.ctl_val, bool):
                if op.ctl_val:
                    m.close()
                else:
                    m.trip(wall_s)
        v = m.step(wall_s)
        for phase, name in (("phsA", "Ia"), ("phsB", "Ib"), ("phsC", "Ic")):
            s.update(f"{LD}/MMXU1.A.{phase}", "cVal.mag.f", round(v[name], 1))
        s.update(f"{LD}/MMXU1.TotW", "mag.f", round(v["P"], 1))
        s.update(f"{LD}/MMXU1.Hz", "mag.f", round(v["f"], 3))
        pos = 2 if m.breaker_closed else 1
        for ref in (f"{LD}/XCBR1.Pos", *_CONTROLS):
            if s.get(f"{ref}.stVal") != pos:
                s.update(ref, "stVal", pos)

"""A simulated DNP3 outstation: the real opendnp3 stack (``yadnp3``, imports as ``opendnp3``) on 127.0.0.1.

Test, demo and benchmark code only; never imported by the product packages. ``yadnp3`` ships x86_64 wheels
only, so importing this module fails elsewhere (the tests that need it are x86_64-only too).

Small API::

    with OutstationSim(points=10, unsolicited=False) as sim:      # starts listening on sim.port
        sim.apply(binary(0, True, time_ms=1_700_000_000_123), analog(1, 42.0, flags=0x05))
        sim.operate_status = "LOCAL"                              # what the command handler answers
        sim.need_time = True                                      # IIN1.4 until the master writes the time
        sim.set_restart()                                         # IIN1.7 (as after a device restart)
        sim.stop(); sim.start()                                   # link loss and recovery, same port

Every data type has ``points`` points (opendnp3's ``DatabaseConfig(points)``; the bindings cannot change one
point's variation or class, so static data is g1v2/g3v2/g30v1/g20v1/g10v2/g40v1 plus g50v4 time-and-interval
points, events are g2v1/g4v1/g32v1/g22v1/g11v1/g42v1, all class 1). The command handler records every
select/operate in :attr:`OutstationSim.commands` and answers :attr:`select_status` / :attr:`operate_status`
(opendnp3 ``CommandStatus`` names).

Threads: opendnp3 runs its own native threads (joined by :meth:`stop`); its callbacks into this module only
read attributes and append under a lock (they must not log or call ``threading.current_thread()``, which would
leave a dummy Python thread behind).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import opendnp3 as o

from hil_tests.net import free_port

__all__ = [
    "CommandRecord",
    "OutstationSim",
    "Update",
    "analog",
    "analog_output",
    "binary",
    "binary_output",
    "counter",
    "double_bit",
]

Update = tuple[Any, int]  # (opendnp3 measurement, point index)


def _time(time_ms: int | None) -> Any:
    return o.DNPTime(int(time.time() * 1000) if time_ms is None else time_ms)


def binary(index: int, value: bool, *, flags: int = 0x01, time_ms: int | None = None) -> Update:
    """Binary input (flags without the state bit; ``time_ms`` UTC ms, default now)."""
    return o.Binary(value, o.Flags(flags), _time(time_ms)), index


def double_bit(index: int, state: int) -> Update:
    """Double-bit input: 0 intermediate, 1 determined off, 2 determined on, 3 indeterminate (flags ONLINE)."""
    names = ("INTERMEDIATE", "DETERMINED_OFF", "DETERMINED_ON", "INDETERMINATE")
    return o.DoubleBitBinary(getattr(o.DoubleBit, names[state])), index


def analog(index: int, value: float, *, flags: int = 0x01, time_ms: int | None = None) -> Update:
    return o.Analog(value, o.Flags(flags), _time(time_ms)), index


def counter(index: int, value: int, *, flags: int = 0x01, time_ms: int | None = None) -> Update:
    return o.Counter(value, o.Flags(flags), _time(time_ms)), index


def binary_output(index: int, value: bool) -> Update:
    return o.BinaryOutputStatus(value), index


def analog_output(index: int, value: float) -> Update:
    return o.AnalogOutputStatus(value), index


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """One command the outstation's handler saw."""

    stage: str  # "select" or "operate"
    index: int
    kind: str  # "crob" or the analog output type name, e.g. "AnalogOutputInt32"
    op_type: str = ""  # CROB operation type name, e.g. "PULSE_ON"
    tcc: str = ""  # CROB trip-close code name: "NUL", "TRIP", "CLOSE"
    count: int = 0
    on_ms: int = 0
    off_ms: int = 0
    value: float = 0.0  # analog output value
    operate_type: str = ""  # "SelectBeforeOperate", "DirectOperate", ... (operate only)


class _CommandHandler(o.ICommandHandler):
    def __init__(self, sim: OutstationSim) -> None:
        super().__init__()
        self._sim = sim

    def Begin(self) -> None:
        pass

    def End(self) -> None:
        pass

    def _record(self, stage: str, command: Any, index: int, op: Any = None) -> None:
        if isinstance(command, o.ControlRelayOutputBlock):
            rec = CommandRecord(stage, index, "crob", command.opType.name, command.tcc.name, int(command.count),
                                int(command.onTimeMS), int(command.offTimeMS),
                                operate_type="" if op is None else op.name)
        else:
            rec = CommandRecord(stage, index, type(command).__name__, value=float(command.value),
                                operate_type="" if op is None else op.name)
        with self._sim._lock:
            self._sim.commands.append(rec)

    def Select(self, command: Any, index: int) -> Any:
        self._record("select", command, index)
        return getattr(o.CommandStatus, self._sim.select_status)

    def Operate(self, command: Any, index: int, handler: Any, op_type: Any) -> Any:
        self._record("operate", command, index, op_type)
        return getattr(o.CommandStatus, self._sim.operate_status)


class _Application(o.IOutstationApplication):
    def __init__(self, sim: OutstationSim) -> None:
        super().__init__()
        self._sim = sim

    def SupportsWriteAbsoluteTime(self) -> bool:
        return True

    def WriteAbsoluteTime(self, timestamp: Any) -> bool:
        with self._sim._lock:
            self._sim.time_writes.append(int(timestamp.msSinceEpoch))
        self._sim.need_time = False
        return True

    def SupportsAssignClass(self) -> bool:
        return False

    def GetApplicationIIN(self) -> Any:
        iin = o.ApplicationIIN()
        iin.needTime = self._sim.need_time
        iin.eventBufferOverflow = self._sim.overflow
        iin.localControl = False
        iin.deviceTrouble = False
        iin.configCorrupt = False
        return iin

    def ColdRestartSupport(self) -> Any:
        return o.RestartMode.UNSUPPORTED

    def WarmRestartSupport(self) -> Any:
        return o.RestartMode.UNSUPPORTED

    def ColdRestart(self) -> int:
        return 0

    def WarmRestart(self) -> int:
        return 0

    def Now(self) -> Any:
        return o.DNPTime(int(time.time() * 1000))


class OutstationSim:
    """One opendnp3 outstation listening on ``127.0.0.1:port`` (``port=0``: a free one, kept across
    :meth:`stop`/:meth:`start`). Start/stop from one thread (the test's); knobs may be set at any time."""

    def __init__(
        self,
        *,
        points: int = 10,
        port: int = 0,
        address: int = 10,
        master_address: int = 1,
        unsolicited: bool = False,
        event_buffer: int = 1000,
        max_tx_fragment: int = 2048,
    ) -> None:
        self.points = points
        self.port = port or free_port()
        self.address = address
        self.master_address = master_address
        self.unsolicited = unsolicited
        self.event_buffer = event_buffer
        self.max_tx_fragment = max_tx_fragment
        self.select_status = "SUCCESS"  # opendnp3 CommandStatus name the handler answers to SELECT
        self.operate_status = "SUCCESS"  # ... to OPERATE / DIRECT_OPERATE
        self.need_time = False  # IIN1.4 NEED_TIME until the master writes the time
        self.overflow = False  # IIN2.3 EVENT_BUFFER_OVERFLOW (application-level)
        self.commands: list[CommandRecord] = []
        self.time_writes: list[int] = []  # UTC ms the master wrote
        self._lock = threading.Lock()
        self._manager: Any = None
        self._channel: Any = None
        self._outstation: Any = None
        self._handler = _CommandHandler(self)
        self._app = _Application(self)

    @property
    def running(self) -> bool:
        return self._manager is not None

    def start(self) -> None:
        if self._manager is not None:
            return
        manager = o.DNP3Manager(1)
        try:
            channel = manager.AddTCPServer("sim", o.levels.NOTHING, o.ServerAcceptMode.CloseExisting,
                                           o.IPEndpoint("127.0.0.1", self.port), None)
            config = o.OutstationStackConfig(o.DatabaseConfig(self.points))
            config.outstation.params.allowUnsolicited = self.unsolicited
            config.outstation.params.maxTxFragSize = self.max_tx_fragment
            config.outstation.eventBufferConfig = o.EventBufferConfig.AllTypes(self.event_buffer)
            config.link.LocalAddr = self.address
            config.link.RemoteAddr = self.master_address
            outstation = channel.AddOutstation("sim", self._handler, self._app, config)
            outstation.Enable()
        except BaseException:
            manager.Shutdown()
            raise
        self._manager, self._channel, self._outstation = manager, channel, outstation

    def stop(self) -> None:
        """Close the listener and every connection and join opendnp3's threads. Idempotent."""
        manager, self._manager, self._channel, self._outstation = self._manager, None, None, None
        if manager is not None:
            manager.Shutdown()

    def __enter__(self) -> OutstationSim:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def apply(self, *updates: Update, mode: str = "Detect") -> None:
        """Apply measurement updates at once (events per the point's class; ``mode`` Detect/Force/Suppress)."""
        self.apply_all(updates, mode=mode)

    def apply_all(self, updates: Iterable[Update], *, mode: str = "Detect") -> None:
        if self._outstation is None:
            raise RuntimeError("outstation is not running")
        builder = o.UpdateBuilder()
        event_mode = getattr(o.EventMode, mode)
        for meas, index in updates:
            builder.Update(meas, index, event_mode)
        self._outstation.Apply(builder.Build())

    def set_restart(self) -> None:
        """Set IIN1.7 DEVICE_RESTART (as a restarted device does) until the master clears it."""
        if self._outstation is None:
            raise RuntimeError("outstation is not running")
        self._outstation.SetRestartIIN()

    def recorded(self) -> list[CommandRecord]:
        with self._lock:
            return list(self.commands)

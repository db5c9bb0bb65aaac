"""The demo's DNP3 RTU: one feeder of :class:`hil_tests.feeder.FeederModel` served by a DNP3 outstation.

The outstation is dnp3py's (pure Python, so the demo runs on a Raspberry Pi too); the gateway's master is tested
against an independent stack (opendnp3, :mod:`hil_tests.dnp3_outstation`). Point map (outstation address 10,
master 1):

- analog inputs 0..9: Ia, Ib, Ic, In (0.1 A), Va, Vb, Vc (V), f (mHz), P (kW), Q (kvar) as scaled integers
  (dnp3py's outstation serves 32-bit integer analogs, g30v1/g32v1, like many RTUs; the gateway's point
  ``scale`` turns them back into A, kV, Hz) — class 2 events with deadbands (1 A, 0.05 kV, 0.01 Hz,
  10 kW/kvar), so only real changes become events;
- binary input 0: breaker closed — class 1 events, time-stamped by the RTU;
- counter 0: imported energy (kWh) — class 3;
- binary output 0: trip (CROB TRIP/PULSE_ON or LATCH_ON opens the breaker), 1: close (CLOSE/PULSE_ON or
  LATCH_ON closes it). Select-before-operate and direct operate both work.

Runs inside the demo IEDs' process (:mod:`hil_tests.demo_ieds`) on its asyncio loop; :meth:`DemoRtu.tick` is
called by that loop's timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from dnp3.core.enums import ControlCode, OperationType, TripCloseCode
from dnp3.core.flags import AnalogQuality, BinaryQuality, CounterQuality
from dnp3.core.timestamp import DNP3Timestamp
from dnp3.database.database import Database
from dnp3.database.point import AnalogInputConfig, BinaryInputConfig, CounterConfig, EventClass
from dnp3.outstation.config import OutstationConfig
from dnp3.outstation.handler import CommandResult, DefaultCommandHandler
from dnp3.outstation.outstation import Outstation
from dnp3.outstation.tcp_runner import OutstationTcpRunner

from hil_tests.feeder import FeederModel

__all__ = ["ANALOGS", "DemoRtu"]

log = logging.getLogger(__name__)

# (feeder value, raw counts per engineering unit, event deadband in engineering units) of analog inputs 0..9
ANALOGS: tuple[tuple[str, float, float], ...] = (
    ("Ia", 10.0, 1.0), ("Ib", 10.0, 1.0), ("Ic", 10.0, 1.0), ("In", 10.0, 1.0),
    ("Va", 1000.0, 0.05), ("Vb", 1000.0, 0.05), ("Vc", 1000.0, 0.05), ("f", 1000.0, 0.01),
    ("P", 1.0, 10.0), ("Q", 1.0, 10.0),
)
OUTSTATION_ADDRESS = 10
MASTER_ADDRESS = 1


class _BreakerCommands(DefaultCommandHandler):
    """CROBs on binary outputs 0 (trip) and 1 (close); anything else is NOT_SUPPORTED."""

    def __init__(self, rtu: DemoRtu) -> None:
        self.rtu = rtu

    def _check(self, index: int, code: ControlCode) -> CommandResult | None:
        tcc, op = code.tcc, code.op_type
        if index not in (0, 1):
            return CommandResult.not_supported(f"binary output {index} does not exist")
        wanted = TripCloseCode.TRIP if index == 0 else TripCloseCode.CLOSE
        if op not in (OperationType.PULSE_ON, OperationType.LATCH_ON) or tcc not in (TripCloseCode.NUL, wanted):
            return CommandResult.not_supported("use PULSE_ON (trip/close) or LATCH_ON")
        return None

    def select_binary_output(
        self, index: int, code: ControlCode, count: int, on_time: int, off_time: int
    ) -> CommandResult:
        return self._check(index, code) or CommandResult.success()

    def operate_binary_output(
        self, index: int, code: ControlCode, count: int, on_time: int, off_time: int, select_sequence: int
    ) -> CommandResult:
        return self._do(index, code)

    def direct_operate_binary_output(
        self, index: int, code: ControlCode, count: int, on_time: int, off_time: int
    ) -> CommandResult:
        return self._do(index, code)

    def _do(self, index: int, code: ControlCode) -> CommandResult:
        refused = self._check(index, code)
        if refused is not None:
            return refused
        self.rtu.pending.append(index)  # applied by the next tick, on the loop
        if self.rtu.on_command is not None:
            self.rtu.on_command(index)
        return CommandResult.success()


class DemoRtu:
    """A feeder model behind a dnp3py outstation on ``host:port``."""

    def __init__(self, port: int, host: str = "127.0.0.1", seed: int = 4) -> None:
        self.model = FeederModel(seed=seed, peak_load_a=280.0)
        self.pending: list[int] = []  # CROB indexes to apply at the next tick
        # Called on the loop when an operate (or direct operate) of binary output 0/1 was accepted, right after
        # it was queued (e.g. a rig noting when the trip command arrived).
        self.on_command: Callable[[int], None] | None = None
        self.clock_offset_s = 0.0  # added to the RTU's own clock (its event timestamps): a device clock jump
        db = Database()
        for i, (_, raw_per_unit, deadband) in enumerate(ANALOGS):
            db.add_analog_input(
                i, AnalogInputConfig(event_class=EventClass.CLASS_2, deadband=deadband * raw_per_unit)
            )
        db.add_binary_input(0, BinaryInputConfig(event_class=EventClass.CLASS_1))
        db.add_counter(0, CounterConfig(event_class=EventClass.CLASS_3))
        db.add_binary_output(0)
        db.add_binary_output(1)
        config = OutstationConfig(
            address=OUTSTATION_ADDRESS, master_address=MASTER_ADDRESS, time_sync_required=False
        )
        self.outstation = Outstation(config=config, database=db, handler=_BreakerCommands(self))
        self.runner = OutstationTcpRunner(self.outstation, host=host, port=port)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.runner.run(), name="demo-rtu")

    async def stop(self) -> None:
        await self.runner.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def tick(self, wall_s: float) -> None:
        """Apply pending controls and publish the model's values (events where they moved past a deadband)."""
        m = self.model
        for index in self.pending:
            if index == 0:
                m.trip(wall_s)
            else:
                m.close()
        self.pending.clear()
        v = m.step(wall_s)
        db = self.outstation.database
        now = DNP3Timestamp.now()
        if self.clock_offset_s:
            now = DNP3Timestamp.from_datetime(datetime.now(UTC) + timedelta(seconds=self.clock_offset_s))
        for i, (name, raw_per_unit, _) in enumerate(ANALOGS):
            db.update_analog_input(i, round(v[name] * raw_per_unit), AnalogQuality.ONLINE, now)
        db.update_binary_input(0, bool(v["breaker_closed"]), BinaryQuality.ONLINE, now)
        db.update_counter(0, int(v["E_import"]), CounterQuality.ONLINE, now)
        for index in (0, 1):  # the command relays are released between commands (pulse outputs)
            db.update_binary_output(index, False, BinaryQuality.ONLINE, now)

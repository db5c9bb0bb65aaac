"""How the protection process runs: period, real-time settings, measurement source, trip outputs, fault records.

:class:`ProtectionRuntime` is the parsed form of the scalar keys of ``[protection]`` plus its ``source`` table
and ``outputs`` array (``protection.config.parse_protection``; layout in ``docs/protection.md``). The element
settings themselves stay in :class:`protection.settings.ProtectionSettings`.

The source and outputs are the picklable specs the spawned process builds its I/O from
(:class:`protection.modbus_source.ModbusMeasurementSpec`, :class:`protection.sources.SimulatedFeederSpec`,
:class:`protection.outputs.ModbusCoilOutputSpec`), except a COMTRADE playback, which the config names by file
(:class:`ComtradeFileSource`): the gateway loads the file when it starts the process
(:func:`protection.comtrade_source.load_comtrade_playback`), so a bad file is an alarm at run time, not a config
error that stops every other function.

No import-time side effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from protection.outputs import OutputSpec
    from protection.sources import SourceSpec


@dataclass(frozen=True, slots=True)
class ComtradeFileSource:
    """Play a COMTRADE file back as the measurement source (``[protection.source] type = "comtrade"``)."""

    file: Path  # the .cfg file (relative paths: to the config file's directory)
    loop: bool = False  # start again at the end (otherwise the measurements go stale after the last sample)
    rms: Literal["auto", "yes", "no"] = "auto"  # waveforms -> one-cycle RMS ("auto": detect by sample rate)
    nominal_hz: float = 50.0  # system frequency (RMS window; the frequency when the file has none)
    stale_after_s: float = 0.02  # samples older than this are marked invalid
    channels: dict[str, str] = field(default_factory=dict)  # ia/ib/ic/in/va/vb/vc/f -> channel name in the file


@dataclass(frozen=True, slots=True)
class ProtectionRuntime:
    """Scalar ``[protection]`` keys plus the source and outputs. Defaults: 5 ms, SCHED_FIFO 80, pinned."""

    period_ms: float = 5.0  # cycle period (0.1..100 ms; 1 ms works on a quiet core)
    fifo_priority: int = 80  # SCHED_FIFO priority asked for (1..99); 0 = run with the default scheduler
    cpu: int = -1  # CPU to pin the cycle thread to; -1 = the highest CPU the process may use
    pin_cpu: bool = True  # false = do not pin the cycle thread
    record_pre_ms: float = 200.0  # fault record: cycle samples kept before the trip (COMTRADE)
    record_post_ms: float = 500.0  # fault record: cycle samples after the trip
    records_dir: Path = Path("fault-records")  # where COMTRADE records go (relative: to the gateway's data_dir)
    max_records: int = 200  # oldest fault records beyond this count are deleted
    heartbeat_timeout_ms: float = 1000.0  # no cycle for this long = unresponsive (alarm, restart)
    restart_max_s: float = 30.0  # longest delay between restarts of a dead process (doubling from 1 s)
    source: SourceSpec | ComtradeFileSource | None = None  # measurement source; None = the process is not started
    outputs: tuple[OutputSpec, ...] = ()  # trip outputs

    @property
    def period_s(self) -> float:
        return self.period_ms / 1000.0

"""Typed, frozen configuration. Every field has a default (where one makes sense) and a one-line comment;
``docs/config.md`` documents every setting (a test checks it).

Loading, validation and error reporting live in :mod:`gateway.config_load`; this module only defines the shape.
Paths are resolved against the config file's directory by the loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from protection.runtime import ProtectionRuntime
from protection.settings import ProtectionSettings

CONFIG_VERSION = 1

RegisterKind = Literal["coil", "discrete", "input", "holding"]
DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32", "float64"]
Order = Literal["big", "little"]
Protocol = Literal["modbus_tcp", "modbus_rtu"]
Parity = Literal["N", "E", "O"]

# Registers (16-bit words) each data type occupies; bool is one bit (coil/discrete) or one register (!=0).
DTYPE_WORDS: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "float64": 4,
}


@dataclass(frozen=True, slots=True)
class PointConfig:
    name: str  # point name, unique within its device; stored as "device.point"
    kind: RegisterKind  # Modbus table: coil (FC1), discrete (FC2), input (FC4), holding (FC3)
    address: int  # 0-based protocol address of the first register/bit
    type: DataType = "uint16"  # data type; bits (coil/discrete) are always bool
    word_order: Order = "big"  # order of 16-bit words in multi-word types ("little" = low word first)
    byte_order: Order = "big"  # order of the two bytes inside each word
    scale: float = 1.0  # engineering value = raw * scale + offset
    offset: float = 0.0  # added after scaling
    unit: str = ""  # engineering unit shown to people, e.g. "A", "kV", "Hz"
    period_s: float = 1.0  # poll period in seconds; points sharing a period are read together
    deadband: float = 0.0  # absolute; a new value is stored only if it moved more than this (0 = every poll)
    writable: bool = False  # allow writes (controls) to this point (coil or holding only)


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    name: str  # device name, unique in the gateway, e.g. "feeder1"
    unit_id: int = 1  # Modbus unit/slave id (0-247)
    timeout_s: float = 1.0  # response timeout for one request
    max_registers_per_request: int = 125  # FC3/FC4 block limit (protocol maximum 125)
    max_bits_per_request: int = 2000  # FC1/FC2 block limit (protocol maximum 2000)
    max_gap: int = 0  # unused registers a block may span to save a request (0 = only contiguous)
    backoff_min_s: float = 1.0  # first back-off after a device stops answering
    backoff_max_s: float = 60.0  # longest back-off between retries of a silent device
    stale_after_periods: float = 3.0  # a point not updated for this many periods is marked old-data
    points: tuple[PointConfig, ...] = ()  # the device's points (or from its template)


@dataclass(frozen=True, slots=True)
class LinkConfig:
    name: str  # link name, unique in the gateway
    protocol: Protocol  # "modbus_tcp" or "modbus_rtu"
    host: str = ""  # modbus_tcp: IP address or host name of the device/gateway
    port: int = 502  # modbus_tcp: TCP port
    serial_port: str = ""  # modbus_rtu: serial device, e.g. /dev/ttyUSB0
    baudrate: int = 9600  # modbus_rtu: bits per second
    parity: Parity = "N"  # modbus_rtu: N, E or O
    stopbits: int = 1  # modbus_rtu: 1 or 2
    bytesize: int = 8  # modbus_rtu: data bits
    connect_timeout_s: float = 3.0  # time allowed to open the TCP connection / serial port
    reconnect_min_s: float = 0.5  # first reconnect delay after the link dropped
    reconnect_max_s: float = 30.0  # longest reconnect delay (exponential back-off with jitter)
    devices: tuple[DeviceConfig, ...] = ()  # devices reached over this link


@dataclass(frozen=True, slots=True)
class StorageConfig:
    path: Path = Path("gateway.duckdb")  # DuckDB file; relative paths are under gateway.data_dir
    disk_budget_mb: float = 1024.0  # most disk space the store may use, in MiB
    commit_interval_ms: int = (
        250  # group-commit interval of the writer thread (at most one commit this often)
    )
    queue_rows: int = 1_000_000  # bound of the writer queue in rows (back-pressure beyond it)
    checkpoint_threshold_mb: float = 4.0  # WAL size (MiB) that triggers a checkpoint; bounds WAL rows held in RAM
    memory_limit_mb: int = 256  # ceiling of DuckDB's buffer pool in MiB (0 = DuckDB default, 80 % of RAM)


@dataclass(frozen=True, slots=True)
class SinkConfig:
    name: str  # sink name; its watermark is stored under this name
    url: str  # ingestion endpoint, e.g. http://127.0.0.1:8081/v1/batches
    token: str = ""  # bearer token sent to the endpoint
    batch_size: int = 50_000  # most readings per upload
    max_interval_s: float = 1.0  # upload at least this often when rows are waiting
    timeout_s: float = 10.0  # HTTP timeout for one upload
    retry_max_s: float = 60.0  # longest delay between retries
    enabled: bool = True  # false keeps the sink's watermark but uploads nothing


@dataclass(frozen=True, slots=True)
class PanelConfig:
    host: str = "127.0.0.1"  # address the status page listens on
    port: int = 8080  # TCP port of the status page (0 disables it)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    id: str  # gateway id, sent with every batch; unique per site, e.g. "sub-north-01"
    data_dir: Path = Path("data")  # directory for the store and runtime files (relative to the config file)
    log_level: str = "INFO"  # DEBUG, INFO, WARNING or ERROR
    links: tuple[LinkConfig, ...] = ()  # physical links and their devices
    storage: StorageConfig = field(default_factory=StorageConfig)  # local store
    sinks: tuple[SinkConfig, ...] = ()  # cloud ingestion endpoints
    panel: PanelConfig = field(default_factory=PanelConfig)  # local status page
    protection: ProtectionSettings = field(default_factory=ProtectionSettings)  # elements, see docs/protection.md
    protection_runtime: ProtectionRuntime = field(default_factory=ProtectionRuntime)  # process, source, outputs
    source: Path | None = None  # file the config was read from (set by the loader, not a setting)
    # Protection settings problems tolerated by `gateway run` (those elements do not arm; set by the loader).
    protection_problems: tuple[str, ...] = ()

    @property
    def store_path(self) -> Path:
        return self.storage.path if self.storage.path.is_absolute() else self.data_dir / self.storage.path

    def devices(self) -> list[tuple[LinkConfig, DeviceConfig]]:
        return [(link, dev) for link in self.links for dev in link.devices]

"""Typed, frozen configuration. Every field has a default (where one makes sense) and a one-line comment;
``docs/config.md`` documents every setting (a test checks it).

Loading, validation and error reporting live in :mod:`gateway.config_load`; this module only defines the shape.
Paths are resolved against the config file's directory by the loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.analytics.config import AnalyticsConfig
from protection.runtime import ProtectionRuntime
from protection.settings import ProtectionSettings

CONFIG_VERSION = 1

RegisterKind = Literal["coil", "discrete", "input", "holding"]  # Modbus tables
# DNP3 point types: binary_output is binary output status (g10) + CROB (g12); analog_output is g40 + g41.
Dnp3Kind = Literal[
    "binary_input", "double_bit_input", "analog_input", "counter", "binary_output", "analog_output"
]
PointKind = Literal[
    "coil", "discrete", "input", "holding",
    "binary_input", "double_bit_input", "analog_input", "counter", "binary_output", "analog_output",
    "attribute",  # IEC 61850 data attribute (ref + da + fc)
    "field",  # MQTT sensors: a JSON field of the payload (generated from [[links.mqtt.topics]])
]
MODBUS_KINDS: frozenset[str] = frozenset({"coil", "discrete", "input", "holding"})
DNP3_KINDS: frozenset[str] = frozenset(
    {"binary_input", "double_bit_input", "analog_input", "counter", "binary_output", "analog_output"}
)
IEC61850_KINDS: frozenset[str] = frozenset({"attribute"})
# IEC 61850-7-2 functional constraints a point may be read with.
IEC61850_FCS: frozenset[str] = frozenset(
    {"ST", "MX", "SP", "SV", "CF", "DC", "SG", "SE", "SR", "OR", "BL", "EX", "CO"}
)
DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32", "float64"]
Order = Literal["big", "little"]
Protocol = Literal["modbus_tcp", "modbus_rtu", "dnp3_tcp", "iec61850", "mqtt"]
# TCP port a link gets when its table has no ``port`` key.
DEFAULT_PORTS: dict[str, int] = {"modbus_tcp": 502, "dnp3_tcp": 20000, "iec61850": 102, "mqtt": 1883}
MQTT_TLS_PORT = 8883  # port an mqtt link gets when it has no ``port`` and uses TLS (``ca_file`` set)
Parity = Literal["N", "E", "O"]
SinkType = Literal["http", "mqtt"]  # how a sink delivers batches

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
    # Modbus table (coil FC1, discrete FC2, input FC4, holding FC3), DNP3 point type, or "attribute" (IEC 61850)
    kind: PointKind
    address: int = 0  # Modbus: 0-based address of the first register/bit; DNP3: point index
    type: DataType = "uint16"  # data type; bits (coil/discrete) are always bool
    word_order: Order = "big"  # order of 16-bit words in multi-word types ("little" = low word first)
    byte_order: Order = "big"  # order of the two bytes inside each word
    scale: float = 1.0  # engineering value = raw * scale + offset
    offset: float = 0.0  # added after scaling
    unit: str = ""  # engineering unit shown to people, e.g. "A", "kV", "Hz"
    period_s: float = 1.0  # poll period in seconds; points sharing a period are read together
    deadband: float = 0.0  # absolute; a new value is stored only if it moved more than this (0 = every poll)
    writable: bool = False  # allow controls on this point (Modbus coil/holding, DNP3 outputs, 61850 controllable)
    ref: str = ""  # IEC 61850: data object reference, e.g. "IED1LD0/MMXU1.A.phsA" (its q and t are read with it)
    da: str = ""  # IEC 61850: value attribute under the data object, e.g. "cVal.mag.f", "stVal"
    fc: str = ""  # IEC 61850: functional constraint of the value attribute, e.g. "MX", "ST"


@dataclass(frozen=True, slots=True)
class Dnp3Settings:
    """``[links.devices.dnp3]``: how the master talks to one outstation (protocol dnp3_tcp)."""

    master_address: int = 1  # our link-layer address (0..65519)
    outstation_address: int = 10  # the outstation's link-layer address (0..65519)
    integrity_period_s: float = 3600.0  # class 0123 poll; also at start, reconnect, restart, overflow (0 = only those)
    class1_period_s: float = 5.0  # class 1 event poll period (0 = not polled; e.g. with unsolicited)
    class2_period_s: float = 5.0  # class 2 event poll period (0 = not polled)
    class3_period_s: float = 5.0  # class 3 event poll period (0 = not polled)
    unsolicited: bool = False  # enable unsolicited responses for classes 1-3 after the integrity poll
    time_sync_period_s: float = 0.0  # write the time this often (0 = only when the outstation sets need-time)
    timed_events: bool = False  # also ask for events in their time-stamped variations (outstations without them)


@dataclass(frozen=True, slots=True)
class Iec61850Settings:
    """``[links.devices.iec61850]``: reports to enable on one IED (protocol iec61850)."""

    # Report control blocks to enable, e.g. "IED1LD0/LLN0.BR.brcbMeas01" (buffered) or "…LLN0.RP.urcbSt01".
    # Points in their data sets arrive by report; other points are polled every period_s.
    reports: tuple[str, ...] = ()
    integrity_period_s: float = 0.0  # integrity report period of every enabled RCB (0 = no integrity reports)
    buffer_time_ms: int = 0  # RCB buffer time: changes within it go into one report


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
    dnp3: Dnp3Settings = field(default_factory=Dnp3Settings)  # protocol dnp3_tcp only
    iec61850: Iec61850Settings = field(default_factory=Iec61850Settings)  # protocol iec61850 only
    # where the device is (e.g. site, zone, lat, lon; free keys, text values): shown on the panel and in
    # /api/status; MQTT sensors get it from their topic's location / locations tables
    location: dict[str, str] = field(default_factory=dict)


MqttTimestampUnit = Literal["auto", "iso", "s", "ms", "us", "ns"]
MqttProfile = Literal["", "solar"]


@dataclass(frozen=True, slots=True)
class MqttFieldConfig:
    """``[[links.mqtt.topics.fields]]``: one JSON field of a sensor message → one point of the sensor."""

    field: str  # JSON field name in the payload object, e.g. "temperature"
    point: str = ""  # point name ("" = the field name); stored as "<sensor id>.<point>"
    unit: str = ""  # engineering unit, e.g. "°C"
    min: float = float("-inf")  # lowest valid engineering value (after scale/offset); below it: out-of-range
    max: float = float("inf")  # highest valid engineering value; above it: out-of-range
    scale: float = 1.0  # engineering value = JSON value * scale + offset
    offset: float = 0.0  # added after scaling


@dataclass(frozen=True, slots=True)
class MqttTopicConfig:
    """``[[links.mqtt.topics]]``: one subscription (topic filter), its sensors and how their messages map."""

    filter: str  # MQTT topic filter subscribed with QoS 1, e.g. "sensors/+/readings"
    device_level: int = -1  # 0-based topic level that names the sensor (-1 = the filter's first '+' level)
    sensors: tuple[str, ...] = ()  # known sensor ids (device names); a message from any other is quarantined
    profile: MqttProfile = ""  # "solar": fields temperature/voltage/current/power with their valid ranges
    fields: tuple[MqttFieldConfig, ...] = ()  # field → point mapping (added to / overriding the profile's)
    timestamp_field: str = "ts"  # JSON field with the source time ("" = always the gateway's receive time)
    timestamp_unit: MqttTimestampUnit = "auto"  # "iso" (ISO-8601 with zone), "s", "ms", "us", "ns" or "auto"
    max_future_s: float = 300.0  # a source time further ahead of the gateway clock is quarantined
    max_age_s: float = 604800.0  # a source time older than this (s) is quarantined (default 7 days)
    location: dict[str, str] = field(default_factory=dict)  # location of every sensor of this topic
    locations: dict[str, dict[str, str]] = field(default_factory=dict)  # sensor id → its own location keys


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """``[links.mqtt]``: the broker session of a ``protocol = "mqtt"`` link (host/port are the link's)."""

    client_id: str = ""  # MQTT client id ("" = "<gateway id>-<link name>"); with clean_session false the
    # broker keeps the subscriptions and queues QoS 1 messages for this id while the gateway is away
    clean_session: bool = False  # true: the broker forgets the session at every disconnect
    keepalive_s: int = 30  # MQTT keep-alive in seconds (a dead broker is noticed within 1.5x)
    username: str = ""  # broker user name ("" = none)
    password: str = ""  # broker password (with username)
    ca_file: Path | None = None  # PEM CA that verifies the broker: enables TLS (port 8883 when left out)
    cert_file: Path | None = None  # PEM client certificate (with key_file), TLS only
    key_file: Path | None = None  # PEM private key of cert_file
    topics: tuple[MqttTopicConfig, ...] = ()  # subscriptions and their sensors
@dataclass(frozen=True, slots=True)
class LinkConfig:
    name: str  # link name, unique in the gateway
    protocol: Protocol  # "modbus_tcp", "modbus_rtu", "dnp3_tcp" or "iec61850"
    host: str = ""  # TCP protocols: IP address or host name of the device/gateway
    port: int = 502  # TCP port; when left out: 502 (Modbus), 20000 (DNP3), 102 (IEC 61850 MMS)
    serial_port: str = ""  # modbus_rtu: serial device, e.g. /dev/ttyUSB0
    baudrate: int = 9600  # modbus_rtu: bits per second
    parity: Parity = "N"  # modbus_rtu: N, E or O
    stopbits: int = 1  # modbus_rtu: 1 or 2
    bytesize: int = 8  # modbus_rtu: data bits
    connect_timeout_s: float = 3.0  # time allowed to open the TCP connection / serial port
    reconnect_min_s: float = 0.5  # first reconnect delay after the link dropped
    reconnect_max_s: float = 30.0  # longest reconnect delay (exponential back-off with jitter)
    devices: tuple[DeviceConfig, ...] = ()  # devices reached over this link
    mqtt: MqttSettings = field(default_factory=MqttSettings)  # protocol mqtt only: broker session and topics


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
    disk_budget_percent: float = 0.0  # also at most this % of the store's filesystem (0 = no such bound)
    high_water_percent: float = 90.0  # reclaim space once usage passes this % of the budget
    low_water_percent: float = 80.0  # ... until usage is under this % of the budget
    downsample_after_s: float = 600.0  # only readings older than this are downsampled when reclaiming
    reserve_free_mb: float = 64.0  # never let the store fill its filesystem beyond this much free space


@dataclass(frozen=True, slots=True)
class SinkConfig:
    name: str  # sink name; its watermark is stored under this name
    url: str  # http(s):// ingestion endpoint, or mqtts://host:port for type = "mqtt"
    token: str = ""  # bearer token sent to the endpoint
    batch_size: int = 50_000  # most readings per upload
    max_interval_s: float = 1.0  # upload at least this often when rows are waiting
    timeout_s: float = 10.0  # HTTP timeout for one upload
    retry_max_s: float = 60.0  # longest delay between retries
    enabled: bool = True  # false keeps the sink's watermark but uploads nothing
    ca_file: Path | None = None  # PEM CA bundle that verifies an https:// receiver (None: the system CAs)
    cert_file: Path | None = None  # PEM client certificate (X.509 device identity), with key_file
    key_file: Path | None = None  # PEM private key of cert_file
    progress_log_s: float = 30.0  # while a backlog drains, log rows left and ETA this often (0 = never)
    type: SinkType = "http"  # transport: "http" (POST, docs/ingestion.md) or "mqtt" (MQTT v5, docs/mqtt-uplink.md)
    topic_prefix: str = "gw"  # mqtt: batches are published to <topic_prefix>/<gateway id>/batches
    qos: int = 1  # mqtt: QoS of the publishes; only 1 (the PUBACK advances the watermark)
    keepalive_s: int = 30  # mqtt: keep-alive interval in seconds (a dead connection is noticed within 1.5x)
    client_id: str = ""  # mqtt: MQTT client id ("" = the gateway id)
    max_payload_bytes: int = 8_388_608  # mqtt: largest batch payload; keep it below the broker's message limit


@dataclass(frozen=True, slots=True)
class BayConfig:
    """One feeder/bay tile on the panel's overview (``[[panel.bays]]``). Points are ``"device.point"`` names."""

    name: str  # shown on the overview, e.g. "Feeder 1"
    breaker: str = ""  # status point of the breaker ("" = no breaker shown)
    closed_value: float = 1.0  # the breaker point's value while closed (IEC 61850 Dbpos: 2 = on; 1 = off)
    open: str = ""  # writable point operated to open (trip) the breaker ("" = no open control)
    close: str = ""  # writable point operated to close the breaker ("" = no close control)
    open_value: float = 1.0  # value written to ``open`` (61850 Pos: 0 = open)
    close_value: float = 1.0  # value written to ``close`` (61850 Pos: 1 = close)
    measurements: tuple[str, ...] = ()  # points shown on the tile (e.g. currents, voltage, power)
    protection: bool = False  # show the protection process's state (armed / picked up / tripped) on this tile


@dataclass(frozen=True, slots=True)
class PanelConfig:
    host: str = "127.0.0.1"  # address the panel listens on
    port: int = 8080  # TCP port of the panel (0 disables it)
    tls: bool = True  # HTTPS (a self-signed certificate is generated when cert_file is absent); false: plain
    # HTTP, allowed only when host is a loopback address
    cert_file: Path | None = None  # PEM certificate (default <data_dir>/panel/tls/cert.pem, generated)
    key_file: Path | None = None  # PEM private key (default <data_dir>/panel/tls/key.pem, generated)
    session_idle_min: float = 15.0  # a session ends after this many minutes without a request
    session_max_h: float = 12.0  # and at the latest this many hours after login
    select_timeout_s: float = 30.0  # a breaker selected for operate must be operated within this time
    bays: tuple[BayConfig, ...] = ()  # overview tiles; none: one tile per device


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    id: str  # gateway id, sent with every batch; unique per site, e.g. "sub-north-01"
    data_dir: Path = Path("data")  # directory for the store and runtime files (relative to the config file)
    log_level: str = "INFO"  # DEBUG, INFO, WARNING or ERROR
    log_levels: dict[str, str] = field(default_factory=dict)  # level per package, e.g. {"protocols.dnp3": "DEBUG"}
    log_format: Literal["auto", "text", "json", "journal"] = "auto"  # see gateway/logs.py
    links: tuple[LinkConfig, ...] = ()  # physical links and their devices
    storage: StorageConfig = field(default_factory=StorageConfig)  # local store
    sinks: tuple[SinkConfig, ...] = ()  # cloud ingestion endpoints
    panel: PanelConfig = field(default_factory=PanelConfig)  # local operator panel, see docs/panel.md
    protection: ProtectionSettings = field(default_factory=ProtectionSettings)  # elements, see docs/protection.md
    protection_runtime: ProtectionRuntime = field(default_factory=ProtectionRuntime)  # process, source, outputs
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)  # [analytics], see docs/analytics.md
    source: Path | None = None  # file the config was read from (set by the loader, not a setting)
    # Protection settings problems tolerated by `gateway run` (those elements do not arm; set by the loader).
    protection_problems: tuple[str, ...] = ()

    @property
    def store_path(self) -> Path:
        return self.storage.path if self.storage.path.is_absolute() else self.data_dir / self.storage.path

    def devices(self) -> list[tuple[LinkConfig, DeviceConfig]]:
        return [(link, dev) for link in self.links for dev in link.devices]


# Field sets a topic can start from (``profile = "solar"``); valid ranges per docs/analytics.md, "MQTT sensors".
MQTT_PROFILES: dict[str, tuple[MqttFieldConfig, ...]] = {
    "solar": (
        MqttFieldConfig("temperature", unit="°C", min=-20.0, max=80.0),  # panel/module temperature
        MqttFieldConfig("voltage", unit="V", min=0.0, max=60.0),  # string voltage
        MqttFieldConfig("current", unit="A", min=0.0, max=15.0),  # string current
        MqttFieldConfig("power", unit="W", min=0.0, max=1000.0),  # panel power
    ),
}

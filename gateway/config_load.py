"""Read a TOML config into :class:`gateway.config.GatewayConfig`, collecting *every* error.

Each error names the file, the key path (``links[feeders].devices[feeder1].points[Ia].type``) and, where there
is one, the device; a misspelt key or value gets a "did you mean". :func:`load_config` raises
:class:`ConfigError` carrying the whole list, so a technician fixes a file in one pass.

The layout of the file is documented in ``docs/config.md``; templates (``[templates.NAME]``) let many identical
IEDs share one point list: a device with ``template = "NAME"`` takes the template's settings and points, and its
own keys override them.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from gateway.analytics.config import AnalyticsConfig, parse_analytics
from gateway.config import (
    CONFIG_VERSION,
    DEFAULT_PORTS,
    DNP3_KINDS,
    DTYPE_WORDS,
    IEC61850_FCS,
    IEC61850_KINDS,
    MODBUS_KINDS,
    MQTT_PROFILES,
    MQTT_TLS_PORT,
    BayConfig,
    DeviceConfig,
    Dnp3Settings,
    GatewayConfig,
    Iec61850Settings,
    LinkConfig,
    MqttFieldConfig,
    MqttSettings,
    MqttTopicConfig,
    PanelConfig,
    PointConfig,
    SinkConfig,
    StorageConfig,
)


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    file: str
    key: str  # dotted key path, with [name] for list entries
    message: str
    device: str = ""

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        dev = f" (device {self.device})" if self.device else ""
        return f"{where}{dev}: {self.message}"


class ConfigError(Exception):
    """The config file could not be used. ``problems`` lists every error found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ConfigFileError(ConfigError):
    """The file is missing, unreadable or not valid TOML (exit code 3 in the CLI)."""


# Top-level tables and the dataclass each one fills. "gateway" holds GatewayConfig's scalar settings.
_GATEWAY_SCALARS = ("id", "data_dir", "log_level", "log_levels", "log_format")
_TOP_KEYS = ("version", "gateway", "storage", "panel", "sinks", "links", "templates", "protection", "analytics")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Point kinds each protocol accepts, and point keys that mean nothing for it (an error if given).
_KINDS: dict[str, frozenset[str]] = {
    "modbus_tcp": MODBUS_KINDS,
    "modbus_rtu": MODBUS_KINDS,
    "dnp3_tcp": DNP3_KINDS,
    "iec61850": IEC61850_KINDS,
    "mqtt": frozenset({"field"}),
}
_MODBUS_ONLY_POINT_KEYS = ("type", "word_order", "byte_order")
_IEC61850_POINT_KEYS = ("ref", "da", "fc")
_NOT_FOR: dict[str, tuple[str, ...]] = {
    "modbus_tcp": _IEC61850_POINT_KEYS,
    "modbus_rtu": _IEC61850_POINT_KEYS,
    "dnp3_tcp": (*_MODBUS_ONLY_POINT_KEYS, *_IEC61850_POINT_KEYS),
    "iec61850": (*_MODBUS_ONLY_POINT_KEYS, "address"),
}
MODBUS_KINDS_PROTOCOLS = ("modbus_tcp", "modbus_rtu")
_MODBUS_DEVICE_KEYS = ("unit_id", "max_registers_per_request", "max_bits_per_request", "max_gap")
_DNP3_ADDRESS_MAX = 65519  # 0xFFF0..0xFFFF are reserved (broadcast, self-address)


def suggest(word: str, options: typing.Iterable[str]) -> str:
    """ "; did you mean 'x'?" for the closest option(s); equally close options are all named, sorted."""
    opts = list(options)
    match = difflib.get_close_matches(word, opts, n=3, cutoff=0.6)
    if not match:
        return ""

    def ratio(o: str) -> float:
        return difflib.SequenceMatcher(None, word, o).ratio()

    best = ratio(match[0])
    tied = sorted(m for m in match if ratio(m) == best)
    return "; did you mean " + " or ".join(f"'{m}'" for m in tied) + "?"


class _Bad:
    pass


BAD = _Bad()  # marks a value that did not convert


def convert_toml_value(hint: Any, v: Any) -> tuple[Any, str]:
    """``(value, "")`` or ``(BAD, message)`` for one TOML value against a dataclass field's type hint.

    Shared by this loader and ``protection.config`` so every section reports type errors the same way.
    """
    origin = get_origin(hint)
    if origin is Literal:
        options = get_args(hint)
        if v in options:
            return v, ""
        shown = ", ".join(repr(o) for o in options)
        return BAD, f"invalid value {v!r}: expected one of {shown}{suggest(str(v), [str(o) for o in options])}"
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return convert_toml_value(args[0], v)
    if hint is bool:
        return (v, "") if isinstance(v, bool) else (BAD, f"expected true or false, got {v!r}")
    if hint is int:
        if isinstance(v, bool) or not isinstance(v, int):
            return BAD, f"expected an integer, got {v!r}"
        return v, ""
    if hint is float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return BAD, f"expected a number, got {v!r}"
        return float(v), ""
    if hint is str:
        return (v, "") if isinstance(v, str) else (BAD, f"expected a string, got {v!r}")
    if hint is Path:
        if not isinstance(v, str) or not v:
            return BAD, f"expected a path string, got {v!r}"
        return Path(v), ""
    if origin is tuple and get_args(hint)[1:] == (Ellipsis,):  # tuple[X, ...] from a TOML array
        if not isinstance(v, list):
            return BAD, f"expected an array, got {v!r}"
        items = []
        for i, item in enumerate(v):
            conv, msg = convert_toml_value(get_args(hint)[0], item)
            if conv is BAD:
                return BAD, f"item {i}: {msg}"
            items.append(conv)
        return tuple(items), ""
    if origin is dict and get_args(hint) == (str, str):  # a small table of strings
        if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
            return BAD, f"expected a table of strings, got {v!r}"
        return dict(v), ""
    raise TypeError(f"unsupported config type {hint!r}")  # programming error, not user input


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fill_kwargs(
    cls: type[Any],
    raw: Mapping[str, Any],
    key: str,
    err: typing.Callable[[str, str], None],
    *,
    skip: typing.Iterable[str] = (),
    allowed: typing.Iterable[str] = (),
    hidden: typing.Iterable[str] = (),
    unknown: str = "unknown key",
) -> tuple[dict[str, Any], bool]:
    """Convert the keys of table ``raw`` to the types of dataclass ``cls``'s fields.

    Reports through ``err(key path, message)`` every unknown key (``unknown`` plus a "did you mean"), every value
    that does not convert, and every required field that is missing. Returns the converted keyword arguments
    (bad values left out) and whether there was no problem. ``skip``: fields filled elsewhere (nested tables),
    neither converted nor required; ``allowed``: extra keys accepted and ignored (e.g. ``type``, ``template``);
    ``hidden``: fields that are not settings (set by the loader), unknown keys if a file gives them.
    """
    skipped = set(skip)
    not_settings = set(hidden)
    extra = set(allowed)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skipped | not_settings}
    out: dict[str, Any] = {}
    ok = True
    for k, v in raw.items():
        if k in extra or k in skipped:
            continue
        if k not in fields:
            err(f"{key}.{k}", f"{unknown}{suggest(k, [*fields, *extra])}")
            ok = False
            continue
        conv, message = convert_toml_value(hints[k], v)
        if conv is BAD:
            err(f"{key}.{k}", message)
            ok = False
        else:
            out[k] = conv
    for name, f in fields.items():
        if name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            err(f"{key}.{name}", "missing required key")
            ok = False
    return out, ok


_MQTT_ONLY_SINK_KEYS: typing.Final = ("topic_prefix", "qos", "keepalive_s", "client_id", "max_payload_bytes")


_RANGE = re.compile(r"^(.*)\{(\d+)\.\.(\d+)\}(.*)$")


def expand_sensor_ids(ids: typing.Iterable[str]) -> tuple[str, ...]:
    """Expand one numeric range per id: ``"pv-{0001..1000}"`` → pv-0001 … pv-1000 (zero-padded like the first
    bound). Ids without a range are kept as they are."""
    out: list[str] = []
    for s in ids:
        m = _RANGE.match(s)
        if m is None:
            out.append(s)
            continue
        head, lo, hi, tail = m.groups()
        width = len(lo) if lo.startswith("0") else 0
        out.extend(f"{head}{n:0{width}d}{tail}" for n in range(int(lo), int(hi) + 1))
    return tuple(out)


class _Loader:
    def __init__(self, file: str, strict_protection: bool = True) -> None:
        self.file = file
        self.strict_protection = strict_protection
        self.problems: list[ConfigProblem] = []
        self.warnings: list[str] = []
        self.protection_problems: list[ConfigProblem] = []
        self.base_dir = Path.cwd()  # the config file's directory (relative paths), set by load()

    def err(self, key: str, message: str, device: str = "") -> None:
        self.problems.append(ConfigProblem(self.file, key, message, device))

    # -- generic dataclass filling ---------------------------------------------------------------------------
    def fill(
        self,
        cls: type[Any],
        raw: Any,
        key: str,
        *,
        device: str = "",
        skip: tuple[str, ...] = (),
        extra_allowed: tuple[str, ...] = (),
    ) -> dict[str, Any] | None:
        """Check ``raw`` against ``cls``'s scalar fields; return converted kwargs (nested fields excluded)."""
        if not isinstance(raw, dict):
            self.err(key, f"expected a table, got {type(raw).__name__}", device)
            return None
        out, _ = fill_kwargs(
            cls, raw, key, lambda k, m: self.err(k, m, device), skip=skip, allowed=extra_allowed, hidden=("source",)
        )
        return out

    def convert(self, hint: Any, v: Any, key: str, device: str) -> Any:
        value, message = convert_toml_value(hint, v)
        if value is BAD:
            self.err(key, message, device)
        return value

    # -- sections ---------------------------------------------------------------------------------------------
    def load(self, data: dict[str, Any], base_dir: Path) -> GatewayConfig | None:
        self.base_dir = base_dir
        for k in data:
            if k not in _TOP_KEYS:
                self.err(k, f"unknown top-level key{suggest(k, _TOP_KEYS)}")
        version = data.get("version")
        if version is None:
            self.warnings.append(f"{self.file}: no 'version' key; assuming version {CONFIG_VERSION}")
        elif not isinstance(version, int) or isinstance(version, bool):
            self.err("version", f"expected an integer, got {version!r}")
        elif version > CONFIG_VERSION or version < 1:
            self.err(
                "version", f"unsupported config version {version} (this gateway reads 1..{CONFIG_VERSION})"
            )

        gw_raw = data.get("gateway")
        gw: dict[str, Any] = {}
        if gw_raw is None:
            self.err("gateway", 'missing required table [gateway] (with at least id = "...")')
        elif not isinstance(gw_raw, dict):
            self.err("gateway", "expected a table")
        else:
            for k, v in gw_raw.items():
                if k not in _GATEWAY_SCALARS:
                    self.err(f"gateway.{k}", f"unknown key{suggest(k, _GATEWAY_SCALARS)}")
                    continue
                if k == "log_levels":
                    gw[k] = self.log_levels(v)
                    continue
                hint = typing.get_type_hints(GatewayConfig)[k]
                conv = self.convert(hint, v, f"gateway.{k}", "")
                if conv is not BAD:
                    gw[k] = conv
            if "id" not in gw_raw:
                self.err("gateway.id", "missing required key")
            elif isinstance(gw.get("id"), str) and not gw["id"].strip():
                self.err("gateway.id", "must not be empty")
            lvl = gw.get("log_level")
            if lvl is not None and str(lvl).upper() not in _LOG_LEVELS:
                self.err(
                    "gateway.log_level", f"invalid value {lvl!r}: expected one of {', '.join(_LOG_LEVELS)}"
                )
            elif lvl is not None:
                gw["log_level"] = str(lvl).upper()

        storage = self.storage(data.get("storage", {}))
        sinks = self.sinks(data.get("sinks", []), base_dir)
        templates = self.templates(data.get("templates", {}))
        links_problems = len(self.problems)
        links = self.links(data.get("links", []), templates)
        analytics = self.analytics(data.get("analytics"), links, links_ok=len(self.problems) == links_problems)
        panel = self.panel(data.get("panel", {}), base_dir, links, links_ok=len(self.problems) == links_problems)
        from protection.config import parse_protection, parse_protection_runtime  # protection.config imports us

        protection, prot_problems = parse_protection(data.get("protection"), self.file)
        runtime, runtime_problems = parse_protection_runtime(data.get("protection"), protection, self.file, base_dir)
        prot_problems.extend(runtime_problems)
        if self.strict_protection:
            self.problems.extend(prot_problems)
        else:
            self.protection_problems.extend(prot_problems)

        if self.problems:
            return None
        data_dir = gw.get("data_dir", Path("data"))
        if not data_dir.is_absolute():
            data_dir = base_dir / data_dir
        return GatewayConfig(
            id=gw["id"],
            data_dir=data_dir,
            log_level=gw.get("log_level", "INFO"),
            log_levels=gw.get("log_levels", {}),
            log_format=gw.get("log_format", "auto"),
            links=tuple(links),
            storage=storage or StorageConfig(),
            sinks=tuple(sinks),
            panel=panel,
            protection=protection,
            protection_runtime=runtime,
            protection_problems=tuple(str(p) for p in self.protection_problems),
            analytics=analytics,
        )

    def analytics(self, raw: Any, links: list[LinkConfig], links_ok: bool) -> AnalyticsConfig:
        """``[analytics]`` (docs/analytics.md); its points must be configured ones (checked when the links were)."""
        known = {f"{d.name}.{p.name}" for lk in links for d in lk.devices for p in d.points} if links_ok else None
        cfg, problems = parse_analytics(raw, self.file, known, self.base_dir)
        self.problems.extend(problems)
        return cfg

    def storage(self, raw: Any) -> StorageConfig | None:
        kw = self.fill(StorageConfig, raw, "storage")
        if kw is None:
            return None
        if kw.get("disk_budget_mb", 1.0) <= 0:
            self.err("storage.disk_budget_mb", "must be > 0")
        if not 1 <= kw.get("commit_interval_ms", 250) <= 60_000:
            self.err("storage.commit_interval_ms", "must be 1..60000")
        if kw.get("queue_rows", 1_000_000) < 1000:
            self.err("storage.queue_rows", "must be at least 1000")
        if not 0 < kw.get("checkpoint_threshold_mb", 4.0) <= 1024:
            self.err("storage.checkpoint_threshold_mb", "must be > 0 and <= 1024")
        mem = kw.get("memory_limit_mb", 256)
        if mem != 0 and not 32 <= mem <= 1_048_576:
            self.err("storage.memory_limit_mb", "must be 0 (DuckDB default) or 32..1048576")
        if not 0 <= kw.get("disk_budget_percent", 0.0) <= 100:
            self.err("storage.disk_budget_percent", "must be 0..100 (0 = no bound from the filesystem size)")
        low, high = kw.get("low_water_percent", 80.0), kw.get("high_water_percent", 90.0)
        if not 0 < low < high <= 100:
            self.err(
                "storage.low_water_percent",
                f"need 0 < low_water_percent ({low}) < high_water_percent ({high}) <= 100",
            )
        for f in ("downsample_after_s", "reserve_free_mb"):
            if kw.get(f, 0.0) < 0:
                self.err(f"storage.{f}", "must be >= 0")
        return StorageConfig(**kw)

    def log_levels(self, raw: Any) -> dict[str, str]:
        """``[gateway] log_levels``: logger (package) name → level."""
        if not isinstance(raw, dict):
            self.err("gateway.log_levels", 'expected a table, e.g. { "protocols.dnp3" = "DEBUG" }')
            return {}
        out: dict[str, str] = {}
        for name, lvl in raw.items():
            if not isinstance(lvl, str) or lvl.upper() not in _LOG_LEVELS:
                self.err(f"gateway.log_levels.{name}",
                         f"invalid level {lvl!r}: expected one of {', '.join(_LOG_LEVELS)}")
                continue
            out[str(name)] = lvl.upper()
        return out

    def panel(self, raw: Any, base_dir: Path, links: list[LinkConfig], *, links_ok: bool) -> PanelConfig:
        """``[panel]`` and its ``[[panel.bays]]``; bay points must name configured points (when links parsed)."""
        kw = self.fill(PanelConfig, raw, "panel", skip=("bays",))
        if kw is None:
            return PanelConfig()
        if not 0 <= kw.get("port", 8080) <= 65535:
            self.err("panel.port", "must be 0..65535 (0 disables the panel)")
        host = str(kw.get("host", "127.0.0.1"))
        if kw.get("tls") is False and not _is_loopback(host):
            self.err("panel.tls", f"plain HTTP is allowed only on a loopback address, not {host!r}: operators' "
                     "passwords would cross the network in clear text (remove tls = false, or set host = "
                     '"127.0.0.1")')
        for f in ("cert_file", "key_file"):
            if kw.get(f) is not None:
                path = kw[f] if kw[f].is_absolute() else base_dir / kw[f]
                kw[f] = path
                if not path.is_file():
                    self.err(f"panel.{f}", f"file not found: {path}")
        if (kw.get("cert_file") is None) != (kw.get("key_file") is None):
            self.err("panel.cert_file", "cert_file and key_file go together (certificate and its key)")
        for f in ("session_idle_min", "session_max_h", "select_timeout_s"):
            if kw.get(f, 1.0) <= 0:
                self.err(f"panel.{f}", "must be > 0")
        points: dict[str, PointConfig] = {f"{d.name}.{p.name}": p for link in links for d in link.devices
                                          for p in d.points}
        bays: list[BayConfig] = []
        raw_bays = raw.get("bays", [])
        if not isinstance(raw_bays, list):
            self.err("panel.bays", "expected an array of tables: [[panel.bays]]")
            raw_bays = []
        for i, b in enumerate(raw_bays):
            key = f"panel.bays[{b.get('name', i) if isinstance(b, dict) else i}]"
            bkw = self.fill(BayConfig, b, key)
            if bkw is None or "name" not in bkw:
                continue
            if links_ok:
                named = [(f, bkw.get(f, "")) for f in ("breaker", "open", "close")]
                named += [("measurements", m) for m in bkw.get("measurements", ())]
                for f, name in named:
                    if name and name not in points:
                        self.err(f"{key}.{f}", f"unknown point {name!r} (expected \"device.point\")"
                                 f"{suggest(str(name), list(points))}")
                    elif name and f in ("open", "close") and not points[name].writable:
                        self.err(f"{key}.{f}", f"point {name!r} is not writable (set writable = true on it)")
            bays.append(BayConfig(**bkw))
        return PanelConfig(**kw, bays=tuple(bays))

    def sinks(self, raw: Any, base_dir: Path) -> list[SinkConfig]:
        if not isinstance(raw, list):
            self.err("sinks", "expected an array of tables: [[sinks]]")
            return []
        out: list[SinkConfig] = []
        seen: set[str] = set()
        for i, s in enumerate(raw):
            label = s.get("name", i) if isinstance(s, dict) else i
            key = f"sinks[{label}]"
            kw = self.fill(SinkConfig, s, key)
            if kw is None or "name" not in kw or "url" not in kw:
                continue
            if kw["name"] in seen:
                self.err(f"{key}.name", f"duplicate sink name {kw['name']!r}")
            seen.add(kw["name"])
            if kw.get("type", "http") == "mqtt":
                self.mqtt_sink(kw, key)
            else:
                if not str(kw["url"]).startswith(("http://", "https://")):
                    self.err(f"{key}.url", f"expected an http:// or https:// URL, got {kw['url']!r}")
                for f in _MQTT_ONLY_SINK_KEYS:
                    if f in kw:
                        self.err(f"{key}.{f}", 'only used by type = "mqtt" sinks')
            if kw.get("batch_size", 1) < 1:
                self.err(f"{key}.batch_size", "must be >= 1")
            for f in ("max_interval_s", "timeout_s", "retry_max_s"):
                if kw.get(f, 1.0) <= 0:
                    self.err(f"{key}.{f}", "must be > 0")
            if kw.get("progress_log_s", 30.0) < 0:
                self.err(f"{key}.progress_log_s", "must be >= 0 (0 = no progress log)")
            for f in ("ca_file", "cert_file", "key_file"):
                if kw.get(f) is not None:
                    path = kw[f] if kw[f].is_absolute() else base_dir / kw[f]
                    kw[f] = path
                    if not path.is_file():
                        self.err(f"{key}.{f}", f"file not found: {path}")
            if (kw.get("cert_file") is None) != (kw.get("key_file") is None):
                self.err(f"{key}.cert_file", "cert_file and key_file go together (client certificate and its key)")
            out.append(SinkConfig(**kw))
        return out

    def mqtt_sink(self, kw: dict[str, Any], key: str) -> None:
        """Checks of a ``type = "mqtt"`` sink (docs/mqtt-uplink.md): URL, QoS, TLS identity, payload bound."""
        from cloud_sync.mqtt_sink import WORST_CASE_ROW_BYTES, parse_mqtt_url

        try:
            endpoint = parse_mqtt_url(str(kw["url"]))
        except ValueError as e:
            self.err(f"{key}.url", str(e))
            endpoint = None
        if kw.get("qos", 1) != 1:
            self.err(f"{key}.qos", f"must be 1 (the PUBACK of a QoS 1 publish advances the watermark), got {kw['qos']}")
        if kw.get("token"):
            self.err(f"{key}.token", 'not used by type = "mqtt": the gateway\'s identity is its client certificate')
        ka = kw.get("keepalive_s", 30)
        if not 5 <= ka <= 65535:
            self.err(f"{key}.keepalive_s", f"must be 5..65535 seconds, got {ka}")
        prefix = kw.get("topic_prefix", "gw")
        if not prefix or any(c in prefix for c in "+#\0") or prefix.startswith("/") or prefix.endswith("/"):
            self.err(f"{key}.topic_prefix", f"must be a non-empty topic without wildcards or outer '/', got {prefix!r}")
        cid = kw.get("client_id", "")
        if len(cid.encode()) > 65535:
            self.err(f"{key}.client_id", "longer than MQTT allows (65535 bytes)")
        limit = kw.get("max_payload_bytes", 8_388_608)
        if not 65536 <= limit <= 268_435_455:
            self.err(f"{key}.max_payload_bytes", f"must be 65536..268435455 (MQTT's limit), got {limit}")
        elif kw.get("batch_size", 50_000) * WORST_CASE_ROW_BYTES > limit:
            self.err(
                f"{key}.batch_size",
                f"batch_size x {WORST_CASE_ROW_BYTES} bytes (worst case per reading) exceeds max_payload_bytes "
                f"({limit}): lower batch_size or raise max_payload_bytes (below the broker's message limit)",
            )
        if endpoint is not None and endpoint.tls and kw.get("cert_file") is None:
            self.err(
                f"{key}.cert_file",
                "required for mqtts:// (the gateway's X.509 identity; its CN is the gateway id), with key_file",
            )
        if endpoint is not None and not endpoint.tls:
            for f in ("ca_file", "cert_file", "key_file"):
                if kw.get(f) is not None:
                    self.err(f"{key}.{f}", "only used with mqtts:// (TLS)")

    # -- mqtt links (docs/analytics.md, "MQTT sensors") ---------------------------------------------------------
    def mqtt_settings(self, raw: Any, key: str) -> tuple[MqttSettings, list[DeviceConfig]]:
        """``[links.mqtt]`` of an mqtt link: the session settings and one device per known sensor."""
        mkey = f"{key}.mqtt"
        if raw is None:
            self.err(mkey, "missing [links.mqtt] with at least one [[links.mqtt.topics]] (filter, sensors, fields)")
            return MqttSettings(), []
        kw = self.fill(MqttSettings, raw, mkey, skip=("topics",))
        if kw is None:
            return MqttSettings(), []
        for f in ("ca_file", "cert_file", "key_file"):
            if kw.get(f) is not None:
                path = kw[f] if kw[f].is_absolute() else self.base_dir / kw[f]
                kw[f] = path
                if not path.is_file():
                    self.err(f"{mkey}.{f}", f"file not found: {path}")
        if (kw.get("cert_file") is None) != (kw.get("key_file") is None):
            self.err(f"{mkey}.cert_file", "cert_file and key_file go together (client certificate and its key)")
        if kw.get("cert_file") is not None and kw.get("ca_file") is None:
            self.err(f"{mkey}.ca_file", "required with cert_file (TLS is on when ca_file is given)")
        if kw.get("password") and not kw.get("username"):
            self.err(f"{mkey}.password", "needs username")
        ka = kw.get("keepalive_s", 30)
        if not 5 <= ka <= 65535:
            self.err(f"{mkey}.keepalive_s", f"must be 5..65535 seconds, got {ka}")
        if len(kw.get("client_id", "").encode()) > 65535:
            self.err(f"{mkey}.client_id", "longer than MQTT allows (65535 bytes)")
        topics_raw = raw.get("topics", [])
        if not isinstance(topics_raw, list) or not topics_raw:
            self.err(f"{mkey}.topics", "expected at least one [[links.mqtt.topics]] (filter, sensors, fields)")
            topics_raw = []
        topics: list[MqttTopicConfig] = []
        devices: list[DeviceConfig] = []
        filters: set[str] = set()
        for i, tr in enumerate(topics_raw):
            label = tr.get("filter", i) if isinstance(tr, dict) else i
            tkey = f"{mkey}.topics[{label}]"
            topic = self.mqtt_topic(tr, tkey)
            if topic is None:
                continue
            if topic.filter in filters:
                self.err(f"{tkey}.filter", "the same topic filter is given twice")
            filters.add(topic.filter)
            topics.append(topic)
            fields = topic.fields
            for sensor in topic.sensors:
                devices.append(
                    DeviceConfig(
                        name=sensor,
                        points=tuple(
                            PointConfig(name=f.point, kind="field", unit=f.unit, scale=f.scale, offset=f.offset)
                            for f in fields
                        ),
                        location={**topic.location, **topic.locations.get(sensor, {})},
                    )
                )
        return MqttSettings(**kw, topics=tuple(topics)), devices

    def location_table(self, raw: Any, key: str, device: str = "") -> dict[str, str] | None:
        """A location table: keys to text or numbers (kept as text), e.g. {site = "north", lat = 47.1}."""
        if not isinstance(raw, dict):
            self.err(key, f"expected a table like {{ site = \"north\", lat = 47.1 }}, got {raw!r}", device)
            return None
        out: dict[str, str] = {}
        for k, v in raw.items():
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                self.err(f"{key}.{k}", f"expected text or a number, got {v!r}", device)
                continue
            out[str(k)] = str(v)
        return out

    def mqtt_topic(self, raw: Any, tkey: str) -> MqttTopicConfig | None:
        kw = self.fill(MqttTopicConfig, raw, tkey, skip=("fields", "location", "locations"))
        if kw is None or "filter" not in kw:
            return None
        filt = kw["filter"]
        levels = filt.split("/")
        bad_level = any(("+" in lv and lv != "+") or ("#" in lv and lv != "#") for lv in levels)
        if not filt or "\0" in filt or bad_level or "#" in levels[:-1]:
            self.err(f"{tkey}.filter", f"{filt!r} is not a valid MQTT topic filter ('+' a whole level, '#' last)")
            return None
        level = kw.get("device_level", -1)
        if level == -1:
            if "+" not in levels:
                self.err(f"{tkey}.filter", f"{filt!r} has no '+' level to name the sensor (e.g. 'sensors/+/readings')")
                return None
            kw["device_level"] = levels.index("+")
        elif not 0 <= level < len(levels) or levels[level] != "+":
            self.err(f"{tkey}.device_level", f"level {level} of {filt!r} is not a '+' wildcard level")
            return None
        sensors = expand_sensor_ids(kw.get("sensors", ()))
        kw["sensors"] = sensors
        if not sensors:
            self.err(f"{tkey}.sensors", "list the known sensor ids (devices), e.g. sensors = [\"pv-0001\"]")
        seen: set[str] = set()
        for s in sensors:
            if not s.strip() or any(c in s for c in "./+#"):
                self.err(f"{tkey}.sensors", f"sensor id {s!r} must be non-empty without '.', '/', '+', '#'", s)
            if s in seen:
                self.err(f"{tkey}.sensors", f"sensor id {s!r} is listed twice", s)
            seen.add(s)
        for f in ("max_future_s", "max_age_s"):
            if kw.get(f, 1.0) <= 0:
                self.err(f"{tkey}.{f}", "must be > 0")
        if kw.get("timestamp_unit", "auto") != "auto" and not kw.get("timestamp_field", "ts"):
            self.err(f"{tkey}.timestamp_unit", "needs timestamp_field")
        fields: dict[str, MqttFieldConfig] = {f.field: f for f in MQTT_PROFILES.get(kw.get("profile", ""), ())}
        fraw = raw.get("fields", [])
        if not isinstance(fraw, list):
            self.err(f"{tkey}.fields", "expected an array of tables: [[links.mqtt.topics.fields]]")
            fraw = []
        for j, fr in enumerate(fraw):
            flabel = fr.get("field", j) if isinstance(fr, dict) else j
            fkey = f"{tkey}.fields[{flabel}]"
            fkw = self.fill(MqttFieldConfig, fr, fkey)
            if fkw is None or "field" not in fkw:
                continue
            base = fields.get(fkw["field"])
            fields[fkw["field"]] = dataclasses.replace(base, **fkw) if base is not None else MqttFieldConfig(**fkw)
        if not fields:
            self.err(f"{tkey}.fields", 'no fields: give [[links.mqtt.topics.fields]] or profile = "solar"')
        points: set[str] = set()
        out_fields: list[MqttFieldConfig] = []
        for name, fc in fields.items():
            fc = dataclasses.replace(fc, point=fc.point or name)
            fkey = f"{tkey}.fields[{name}]"
            if not fc.field.strip():
                self.err(f"{fkey}.field", "must not be empty")
            if "." in fc.point or not fc.point.strip():
                self.err(f"{fkey}.point", "point names must be non-empty and contain no '.'")
            if fc.point in points:
                self.err(f"{fkey}.point", f"point {fc.point!r} is used by two fields")
            points.add(fc.point)
            if not fc.min < fc.max:
                self.err(f"{fkey}.min", f"min ({fc.min}) must be below max ({fc.max})")
            if fc.scale == 0:
                self.err(f"{fkey}.scale", "must not be 0")
            if fc.field == kw.get("timestamp_field", "ts"):
                self.err(f"{fkey}.field", "is the timestamp_field")
            out_fields.append(fc)
        location: dict[str, str] = {}
        if "location" in raw:
            location = self.location_table(raw["location"], f"{tkey}.location") or {}
        locations: dict[str, dict[str, str]] = {}
        lraw = raw.get("locations", {})
        if not isinstance(lraw, dict):
            self.err(f"{tkey}.locations", "expected a table: sensor id = { site = ..., lat = ... }")
            lraw = {}
        for sid, loc in lraw.items():
            if sid not in seen:
                self.err(f"{tkey}.locations.{sid}", f"not a sensor of this topic{suggest(sid, seen)}", sid)
                continue
            table = self.location_table(loc, f"{tkey}.locations.{sid}", sid)
            if table is not None:
                locations[sid] = table
        return MqttTopicConfig(**kw, fields=tuple(out_fields), location=location, locations=locations)

    def templates(self, raw: Any) -> dict[str, dict[str, Any]]:
        if not isinstance(raw, dict):
            self.err("templates", "expected a table of templates: [templates.NAME]")
            return {}
        out: dict[str, dict[str, Any]] = {}
        for name, t in raw.items():
            if not isinstance(t, dict):
                self.err(f"templates.{name}", "expected a table")
                continue
            if "name" in t or "template" in t:
                bad = "name" if "name" in t else "template"
                self.err(f"templates.{name}.{bad}", "not allowed in a template")
                continue
            out[name] = t
        return out

    def links(self, raw: Any, templates: dict[str, dict[str, Any]]) -> list[LinkConfig]:
        if not isinstance(raw, list):
            self.err("links", "expected an array of tables: [[links]]")
            return []
        out: list[LinkConfig] = []
        link_names: set[str] = set()
        device_names: dict[str, str] = {}
        tcp_endpoints: dict[tuple[str, int], str] = {}
        for i, lr in enumerate(raw):
            label = lr.get("name", i) if isinstance(lr, dict) else i
            key = f"links[{label}]"
            kw = self.fill(LinkConfig, lr, key, skip=("devices", "mqtt"))
            if kw is None:
                continue
            if kw.get("protocol") == "mqtt" and "port" not in kw:
                mraw = lr.get("mqtt")
                if isinstance(mraw, dict) and mraw.get("ca_file"):
                    kw["port"] = MQTT_TLS_PORT
            name = kw.get("name")
            if name in link_names:
                self.err(f"{key}.name", f"duplicate link name {name!r}")
            link_names.add(str(name))
            proto = kw.get("protocol")
            if proto in DEFAULT_PORTS:  # TCP protocols
                kw.setdefault("port", DEFAULT_PORTS[proto])
                if not kw.get("host"):
                    self.err(f"{key}.host", f"required for protocol {proto}")
                if not 1 <= kw["port"] <= 65535:
                    self.err(f"{key}.port", "must be 1..65535")
                ep = (kw.get("host", ""), kw["port"])
                if ep in tcp_endpoints:
                    self.err(
                        f"{key}.port",
                        f"same host:port as link {tcp_endpoints[ep]!r}; put both devices on one link",
                    )
                tcp_endpoints[ep] = str(name)
            elif proto == "modbus_rtu":
                if not kw.get("serial_port"):
                    self.err(f"{key}.serial_port", "required for protocol modbus_rtu")
                if kw.get("stopbits", 1) not in (1, 2):
                    self.err(f"{key}.stopbits", "must be 1 or 2")
                if kw.get("bytesize", 8) not in (7, 8):
                    self.err(f"{key}.bytesize", "must be 7 or 8")
                if kw.get("baudrate", 9600) <= 0:
                    self.err(f"{key}.baudrate", "must be > 0")
            for f in ("connect_timeout_s", "reconnect_min_s", "reconnect_max_s"):
                if kw.get(f, 1.0) <= 0:
                    self.err(f"{key}.{f}", "must be > 0")
            if kw.get("reconnect_min_s", 0.5) > kw.get("reconnect_max_s", 30.0):
                self.err(f"{key}.reconnect_min_s", "must not exceed reconnect_max_s")
            devs_raw = lr.get("devices", []) if isinstance(lr, dict) else []
            devices: list[DeviceConfig] = []
            if not isinstance(devs_raw, list):
                self.err(f"{key}.devices", "expected an array of tables: [[links.devices]]")
                devs_raw = []
            units: set[int] = set()
            if proto in ("dnp3_tcp", "iec61850") and len(devs_raw) > 1:
                self.err(
                    f"{key}.devices",
                    f"a {proto} link reaches one device ({len(devs_raw)} given); give each device its own link",
                )
            generated: list[DeviceConfig] = []
            if proto == "mqtt":
                if devs_raw:
                    self.err(
                        f"{key}.devices",
                        "an mqtt link has no [[links.devices]]: its devices are the sensors listed in "
                        "[[links.mqtt.topics]] (sensors = [...])",
                    )
                    devs_raw = []
                settings, generated = self.mqtt_settings(lr.get("mqtt"), key)
                kw["mqtt"] = settings
            elif "mqtt" in lr:
                self.err(f"{key}.mqtt", f"only for protocol mqtt (this link is {proto})")
            entries: list[DeviceConfig | None] = [
                self.device(dr, f"{key}.devices", j, templates, str(proto)) for j, dr in enumerate(devs_raw)
            ]
            for dev in [*entries, *generated]:
                if dev is None:
                    continue
                dkey = f"{key}.devices[{dev.name}]"
                if dev.name in device_names:
                    self.err(
                        f"{dkey}.name",
                        f"duplicate device name (also on link {device_names[dev.name]!r})",
                        dev.name,
                    )
                device_names[dev.name] = str(name)
                if proto in MODBUS_KINDS_PROTOCOLS and dev.unit_id in units:
                    self.err(f"{dkey}.unit_id", f"unit id {dev.unit_id} used twice on this link", dev.name)
                units.add(dev.unit_id)
                devices.append(dev)
            if self.problems:
                continue
            out.append(LinkConfig(**kw, devices=tuple(devices)))
        return out

    def device(
        self, raw: Any, parent: str, index: int, templates: dict[str, dict[str, Any]], proto: str = "modbus_tcp"
    ) -> DeviceConfig | None:
        if not isinstance(raw, dict):
            self.err(f"{parent}[{index}]", "expected a table")
            return None
        name = raw.get("name", "")
        key = f"{parent}[{name or index}]"
        merged = dict(raw)
        tname = raw.get("template")
        if tname is not None:
            if tname not in templates:
                self.err(
                    f"{key}.template", f"no template {tname!r}{suggest(str(tname), templates)}", str(name)
                )
                return None
            merged = {**templates[tname], **{k: v for k, v in raw.items() if k != "template"}}
            if "points" in raw and "points" in templates[tname]:
                merged["points"] = [*templates[tname]["points"], *raw["points"]]
        kw = self.fill(
            DeviceConfig,
            merged,
            key,
            device=str(name),
            skip=("points", "dnp3", "iec61850"),
            extra_allowed=("template",),
        )
        if kw is None or "name" not in kw:
            return None
        dn = kw["name"]
        if "." in dn or not dn.strip():
            self.err(f"{key}.name", "device names must be non-empty and contain no '.'", dn)
        if proto not in MODBUS_KINDS_PROTOCOLS:
            for mk in _MODBUS_DEVICE_KEYS:
                if mk in merged:
                    self.err(f"{key}.{mk}", f"a Modbus setting; not used by protocol {proto}", dn)
        for section, cls, owner in (("dnp3", Dnp3Settings, "dnp3_tcp"), ("iec61850", Iec61850Settings, "iec61850")):
            if section not in merged:
                continue
            if proto != owner:
                self.err(f"{key}.{section}", f"only for protocol {owner} (this link is {proto})", dn)
                continue
            sub = self.fill(cls, merged[section], f"{key}.{section}", device=dn)
            if sub is not None:
                kw[section] = cls(**sub)
        if proto == "dnp3_tcp":
            self.check_dnp3(kw.get("dnp3", Dnp3Settings()), f"{key}.dnp3", dn)
        elif proto == "iec61850":
            self.check_iec61850(kw.get("iec61850", Iec61850Settings()), f"{key}.iec61850", dn)
        if not 0 <= kw.get("unit_id", 1) <= 247:
            self.err(f"{key}.unit_id", f"must be 0..247, got {kw.get('unit_id')}", dn)
        if not 1 <= kw.get("max_registers_per_request", 125) <= 125:
            self.err(f"{key}.max_registers_per_request", "must be 1..125 (Modbus limit)", dn)
        if not 1 <= kw.get("max_bits_per_request", 2000) <= 2000:
            self.err(f"{key}.max_bits_per_request", "must be 1..2000 (Modbus limit)", dn)
        if kw.get("max_gap", 0) < 0:
            self.err(f"{key}.max_gap", "must be >= 0", dn)
        for f in ("timeout_s", "backoff_min_s", "backoff_max_s", "stale_after_periods"):
            if kw.get(f, 1.0) <= 0:
                self.err(f"{key}.{f}", "must be > 0", dn)
        points_raw = merged.get("points", [])
        if not isinstance(points_raw, list):
            self.err(f"{key}.points", "expected an array of tables: [[links.devices.points]]", dn)
            points_raw = []
        if not points_raw:
            self.err(f"{key}.points", "device has no points", dn)
        points: list[PointConfig] = []
        seen: set[str] = set()
        for k, pr in enumerate(points_raw):
            p = self.point(pr, f"{key}.points", k, dn, kw.get("max_registers_per_request", 125), proto)
            if p is None:
                continue
            if p.name in seen:
                self.err(f"{key}.points[{p.name}].name", "duplicate point name in this device", dn)
            seen.add(p.name)
            points.append(p)
        return DeviceConfig(**kw, points=tuple(points))

    def check_dnp3(self, d: Dnp3Settings, key: str, dn: str) -> None:
        for f in ("master_address", "outstation_address"):
            if not 0 <= getattr(d, f) <= _DNP3_ADDRESS_MAX:
                self.err(f"{key}.{f}", f"must be 0..{_DNP3_ADDRESS_MAX}, got {getattr(d, f)}", dn)
        if d.master_address == d.outstation_address:
            self.err(f"{key}.master_address", "must differ from outstation_address", dn)
        for f in ("integrity_period_s", "class1_period_s", "class2_period_s", "class3_period_s", "time_sync_period_s"):
            if getattr(d, f) < 0:
                self.err(f"{key}.{f}", "must be >= 0 (0 = off)", dn)

    def check_iec61850(self, s: Iec61850Settings, key: str, dn: str) -> None:
        for i, r in enumerate(s.reports):
            parts = r.replace("$", ".").split(".")
            if "/" not in r or len(parts) < 3 or parts[-2] not in ("BR", "RP"):
                self.err(
                    f"{key}.reports[{i}]",
                    f"{r!r} is not a report control block reference like 'IED1LD0/LLN0.BR.brcbMeas01'",
                    dn,
                )
        if len(set(s.reports)) != len(s.reports):
            self.err(f"{key}.reports", "a report control block is listed twice", dn)
        if s.integrity_period_s < 0:
            self.err(f"{key}.integrity_period_s", "must be >= 0 (0 = no integrity reports)", dn)
        if s.buffer_time_ms < 0:
            self.err(f"{key}.buffer_time_ms", "must be >= 0", dn)

    def point(
        self, raw: Any, parent: str, index: int, device: str, max_regs: int, proto: str = "modbus_tcp"
    ) -> PointConfig | None:
        label = raw.get("name", index) if isinstance(raw, dict) else index
        key = f"{parent}[{label}]"
        kw = self.fill(PointConfig, raw, key, device=device)
        if kw is None or "name" not in kw or "kind" not in kw:
            return None
        kinds = _KINDS.get(proto, MODBUS_KINDS)
        if kw["kind"] not in kinds:
            self.err(
                f"{key}.kind",
                f"{kw['kind']!r} is not a {proto} point kind; expected one of {', '.join(sorted(kinds))}",
                device,
            )
            return None
        for k in _NOT_FOR.get(proto, ()):
            if k in raw:
                self.err(f"{key}.{k}", f"not used by protocol {proto}", device)
        if "." in kw["name"] or not kw["name"].strip():
            self.err(f"{key}.name", "point names must be non-empty and contain no '.'", device)
        if kw.get("period_s", 1.0) <= 0:
            self.err(f"{key}.period_s", "must be > 0", device)
        if kw.get("deadband", 0.0) < 0:
            self.err(f"{key}.deadband", "must be >= 0", device)
        if kw.get("scale", 1.0) == 0:
            self.err(f"{key}.scale", "must not be 0", device)
        if proto == "dnp3_tcp":
            return self.dnp3_point(kw, raw, key, device)
        if proto == "iec61850":
            return self.iec61850_point(kw, key, device)
        if "address" not in raw:
            self.err(f"{key}.address", "missing required key", device)
            return None
        return self.modbus_point(kw, key, device, max_regs)

    def dnp3_point(self, kw: dict[str, Any], raw: Any, key: str, device: str) -> PointConfig:
        if "address" not in raw:
            self.err(f"{key}.address", "missing required key (the DNP3 point index)", device)
        elif not 0 <= kw.get("address", 0) <= 65535:
            self.err(f"{key}.address", f"a DNP3 point index is 0..65535, got {kw['address']}", device)
        if kw.get("writable") and kw["kind"] not in ("binary_output", "analog_output"):
            self.err(
                f"{key}.writable", f"only binary_output and analog_output can be controlled, not {kw['kind']}", device
            )
        return PointConfig(**kw)

    def iec61850_point(self, kw: dict[str, Any], key: str, device: str) -> PointConfig:
        for k, example in (("ref", "IED1LD0/MMXU1.A.phsA"), ("da", "cVal.mag.f"), ("fc", "MX")):
            if not kw.get(k):
                self.err(f"{key}.{k}", f"missing required key for protocol iec61850, e.g. {k} = {example!r}", device)
        ref = kw.get("ref", "")
        if ref and ("/" not in ref or "." not in ref.split("/", 1)[1]):
            self.err(f"{key}.ref", f"{ref!r} is not a data object reference like 'IED1LD0/MMXU1.A.phsA'", device)
        fc = kw.get("fc", "")
        if fc and fc not in IEC61850_FCS:
            self.err(
                f"{key}.fc",
                f"unknown functional constraint {fc!r}{suggest(fc, IEC61850_FCS)}"
                f"; one of {', '.join(sorted(IEC61850_FCS))}",
                device,
            )
        return PointConfig(**kw)

    def modbus_point(self, kw: dict[str, Any], key: str, device: str, max_regs: int) -> PointConfig:
        kind, typ = kw["kind"], kw.get("type")
        if kind in ("coil", "discrete"):
            if typ not in (None, "bool"):
                self.err(f"{key}.type", f"a {kind} is one bit: type must be 'bool' (or left out)", device)
            kw["type"] = "bool"
        words = DTYPE_WORDS.get(kw.get("type", "uint16"), 1)
        addr = kw["address"]
        if not 0 <= addr <= 65535 or addr + words - 1 > 65535:
            self.err(f"{key}.address", f"must be 0..65535 (and the value must fit), got {addr}", device)
        if words > max_regs and kind in ("input", "holding"):
            self.err(f"{key}.type", f"{words} registers exceed max_registers_per_request={max_regs}", device)
        if kw.get("writable") and kind not in ("coil", "holding"):
            self.err(f"{key}.writable", f"only coil and holding points can be written, not {kind}", device)
        return PointConfig(**kw)


def parse_config(
    data: Mapping[str, Any], file: str = "<config>", base_dir: Path | None = None, *, strict_protection: bool = True
) -> GatewayConfig:
    """Validate an already-parsed TOML document. Raises :class:`ConfigError` with every problem.
    ``strict_protection``: as for :func:`load_config`."""
    loader = _Loader(file, strict_protection)
    cfg = loader.load(dict(data), base_dir or Path.cwd())
    if cfg is None:
        raise ConfigError(loader.problems)
    return cfg


def load_config(path: str | Path, *, strict_protection: bool = True) -> tuple[GatewayConfig, list[str]]:
    """Read and validate ``path``. Returns the config and warnings (e.g. a missing version that was assumed).

    ``strict_protection=False`` (what ``gateway run`` uses) does not refuse the whole file for a problem in the
    ``[protection]`` section: the affected elements do not arm, the problems are kept in
    ``cfg.protection_problems`` and the daemon raises an alarm for each — substation polling must not stop
    because one protection setting is wrong. ``gateway check-config`` is strict and reports them as errors.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError([ConfigProblem(str(p), "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigFileError([ConfigProblem(str(p), "", f"cannot read file: {e}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError([ConfigProblem(str(p), "", f"not valid TOML: {e}")]) from None
    loader = _Loader(str(p), strict_protection)
    cfg = loader.load(data, p.resolve().parent)
    if cfg is None:
        raise ConfigError(loader.problems)
    return dataclasses.replace(cfg, source=p), loader.warnings

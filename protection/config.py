"""Read the ``[protection]`` section of a TOML config into :class:`ProtectionSettings`, collecting every problem.

Layout (documented in ``docs/protection.md``)::

    [protection]
    active_group = 1
    [[protection.group1.elements]]
    type = "51"
    name = "51P"
    pickup_a = 400
    curve = "IEC_SI"
    tms = 0.1

The same section also says how the process runs (:func:`parse_protection_runtime` → :class:`ProtectionRuntime`):
``period_ms``, real-time keys, fault-record keys, a ``[protection.source]`` table (``type = "modbus"``,
``"comtrade"`` or ``"simulated"``) and ``[[protection.outputs]]`` (``type = "modbus_coil"``).

Problems are :class:`gateway.config_load.ConfigProblem` (file, key path such as
``protection.group1.elements[51P].tms``, message), like the gateway's loader, with a "did you mean" for
misspelt keys and values. An element with a structural problem (unknown key, wrong type, missing key, unknown
type) is left out; an element whose only problems are ranges is kept in the settings, so that arming refuses
exactly that element with an :class:`~protection.settings.ElementSettingsError`. Everything else still loads.

No import-time side effects.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config_load import BAD, ConfigProblem, convert_toml_value, fill_kwargs, suggest
from protection.runtime import ComtradeFileSource, ProtectionRuntime
from protection.settings import SETTINGS_BY_TYPE, ElementSettings, ProtectionSettings, check_settings

_RUNTIME_KEYS = tuple(f.name for f in dataclasses.fields(ProtectionRuntime) if f.name not in ("source", "outputs"))
_TOP_KEYS = ("active_group", "group1", "group2", "source", "outputs", *_RUNTIME_KEYS)
_GROUP_KEYS = ("elements",)


def parse_protection(raw: Any, file: str = "<config>") -> tuple[ProtectionSettings, list[ConfigProblem]]:
    """Parse the ``[protection]`` table (already read by ``tomllib``). Never raises on bad input."""
    problems: list[ConfigProblem] = []

    def err(key: str, message: str) -> None:
        problems.append(ConfigProblem(file, key, message))

    if raw is None:
        return ProtectionSettings(), problems
    if not isinstance(raw, Mapping):
        err("protection", f"expected a table, got {type(raw).__name__}")
        return ProtectionSettings(), problems
    for k in raw:
        if k not in _TOP_KEYS:
            err(f"protection.{k}", f"unknown key{suggest(k, _TOP_KEYS)}")
    active = raw.get("active_group", 1)
    if isinstance(active, bool) or active not in (1, 2):
        err("protection.active_group", f"expected 1 or 2, got {active!r}")
        active = 1
    groups: list[tuple[ElementSettings, ...]] = []
    for g in (1, 2):
        groups.append(_group(raw.get(f"group{g}"), f"protection.group{g}", g, err))
    return ProtectionSettings(group1=groups[0], group2=groups[1], active_group=active), problems


def _group(raw: Any, key: str, group: int, err: typing.Callable[[str, str], None]) -> tuple[ElementSettings, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        err(key, "expected a table with an 'elements' array")
        return ()
    for k in raw:
        if k not in _GROUP_KEYS:
            err(f"{key}.{k}", f"unknown key{suggest(k, _GROUP_KEYS)}")
    elems = raw.get("elements", [])
    if not isinstance(elems, list):
        err(f"{key}.elements", f"expected an array of tables: [[{key}.elements]]")
        return ()
    out: list[ElementSettings] = []
    seen: set[str] = set()
    for i, e in enumerate(elems):
        label = e.get("name", i) if isinstance(e, Mapping) else i
        ekey = f"{key}.elements[{label}]"
        s = _element(e, ekey, group, err)
        if s is None:
            continue
        if s.name in seen:
            err(f"{ekey}.name", f"duplicate element name {s.name!r} in group {group}")
            continue
        seen.add(s.name)
        out.append(s)
    return tuple(out)


def _element(raw: Any, key: str, group: int, err: typing.Callable[[str, str], None]) -> ElementSettings | None:
    if not isinstance(raw, Mapping):
        err(key, f"expected a table, got {type(raw).__name__}")
        return None
    etype = raw.get("type")
    if etype is None:
        err(f"{key}.type", f"missing required key (one of {', '.join(SETTINGS_BY_TYPE)})")
        return None
    if etype not in SETTINGS_BY_TYPE:
        err(f"{key}.type", f"unknown element type {etype!r}{suggest(str(etype), SETTINGS_BY_TYPE)}")
        return None
    cls = SETTINGS_BY_TYPE[etype]
    kw, ok = fill_kwargs(cls, raw, key, err, unknown=f"unknown key for a {etype} element")
    if not ok:
        return None
    s: ElementSettings = cls(**kw)
    for e in check_settings(s, group):
        err(f"{key}.{e.setting}", e.message)
    return s


def _source_types() -> dict[str, type[Any]]:
    from protection.modbus_source import ModbusMeasurementSpec
    from protection.sources import SimulatedFeederSpec

    return {"modbus": ModbusMeasurementSpec, "comtrade": ComtradeFileSource, "simulated": SimulatedFeederSpec}


def _output_types() -> dict[str, type[Any]]:
    from protection.outputs import ModbusCoilOutputSpec

    return {"modbus_coil": ModbusCoilOutputSpec}


def _typed_table(
    raw: Any, key: str, types: Mapping[str, type[Any]], err: typing.Callable[[str, str], None]
) -> Any | None:
    """A ``type = "..."`` table filled into the dataclass its type names (None after reporting problems)."""
    if not isinstance(raw, Mapping):
        err(key, f"expected a table, got {type(raw).__name__}")
        return None
    t = raw.get("type")
    if not isinstance(t, str) or t not in types:
        shown = ", ".join(repr(k) for k in types)
        msg = "missing required key" if t is None else f"unknown type {t!r}{suggest(str(t), types)}"
        err(f"{key}.type", f"{msg} (one of {shown})")
        return None
    cls = types[t]
    kw, ok = fill_kwargs(cls, raw, key, err, allowed=("type",), unknown=f"unknown key for type {t!r}")
    if not ok:
        return None
    for k in ("port",):
        if k in kw and not 1 <= kw[k] <= 65535:
            err(f"{key}.{k}", "must be 1..65535")
            ok = False
    for k in ("unit_id",):
        if k in kw and not 0 <= kw[k] <= 255:
            err(f"{key}.{k}", "must be 0..255")
            ok = False
    for k, v in kw.items():
        if k.endswith("_s") and isinstance(v, float) and v < 0:
            err(f"{key}.{k}", "must be >= 0")
            ok = False
    return cls(**kw) if ok else None


def parse_protection_runtime(
    raw: Any, settings: ProtectionSettings, file: str = "<config>", base_dir: Path | None = None
) -> tuple[ProtectionRuntime, list[ConfigProblem]]:
    """Parse how the process runs from the ``[protection]`` table. Never raises on bad input.

    ``settings`` (from :func:`parse_protection`) lets an output naming an element that exists in neither group
    be reported here. ``base_dir`` resolves a relative COMTRADE source file (the config file's directory).
    """
    problems: list[ConfigProblem] = []

    def err(key: str, message: str) -> None:
        problems.append(ConfigProblem(file, key, message))

    if not isinstance(raw, Mapping):
        return ProtectionRuntime(), problems
    # source/outputs are filled below from their own tables; their spec unions need not resolve here
    hints = typing.get_type_hints(ProtectionRuntime, localns={"SourceSpec": Any, "OutputSpec": Any})
    kw: dict[str, Any] = {}
    for k in _RUNTIME_KEYS:
        if k in raw:
            conv, msg = convert_toml_value(hints[k], raw[k])
            if conv is BAD:
                err(f"protection.{k}", msg)
            else:
                kw[k] = conv
    ranges = {
        "period_ms": (0.1, 100.0),
        "fifo_priority": (0, 99),
        "cpu": (-1, 4095),
        "record_pre_ms": (100.0, 60_000.0),
        "record_post_ms": (200.0, 60_000.0),
        "max_records": (1, 100_000),
        "heartbeat_timeout_ms": (10.0, 600_000.0),
        "restart_max_s": (1.0, 3600.0),
    }
    for k, (lo, hi) in ranges.items():
        if k in kw and not lo <= kw[k] <= hi:
            err(f"protection.{k}", f"must be {lo:g}..{hi:g}, got {kw[k]!r}")
            del kw[k]
    source = None
    if "source" in raw:
        source = _typed_table(raw["source"], "protection.source", _source_types(), err)
        if isinstance(source, ComtradeFileSource):
            f = source.file if source.file.is_absolute() or base_dir is None else base_dir / source.file
            source = dataclasses.replace(source, file=f)
            bad = sorted(set(source.channels) - {"ia", "ib", "ic", "in", "va", "vb", "vc", "f"})
            if bad:
                err(f"protection.source.channels.{bad[0]}", "unknown quantity (ia, ib, ic, in, va, vb, vc, f)")
    elif settings.group1 or settings.group2:
        err("protection.source", "missing: elements are configured but nothing measures for them "
            "(add [protection.source] with type = \"modbus\", \"comtrade\" or \"simulated\")")
    outputs: list[Any] = []
    raw_outputs = raw.get("outputs", [])
    if not isinstance(raw_outputs, list):
        err("protection.outputs", "expected an array of tables: [[protection.outputs]]")
        raw_outputs = []
    known = {e.name for e in settings.group1} | {e.name for e in settings.group2}
    names: set[str] = set()
    for i, o in enumerate(raw_outputs):
        label = o.get("name", i) if isinstance(o, Mapping) else i
        okey = f"protection.outputs[{label}]"
        spec = _typed_table(o, okey, _output_types(), err)
        if spec is None:
            continue
        if spec.name in names:
            err(f"{okey}.name", f"duplicate output name {spec.name!r}")
            continue
        names.add(spec.name)
        for el in spec.elements:
            if el not in known:
                err(f"{okey}.elements", f"no element named {el!r} in either group{suggest(el, known)}")
        outputs.append(spec)
    return ProtectionRuntime(**kw, source=source, outputs=tuple(outputs)), problems


def parse_group_elements(
    raw: Any, group: int, file: str = "<panel>"
) -> tuple[tuple[ElementSettings, ...], list[ConfigProblem]]:
    """One settings group's elements from the list of their tables (the ``[[protection.groupN.elements]]``
    array, e.g. sent by the panel as JSON), checked exactly as :func:`parse_protection` checks the config file,
    ranges included. Problems name the key (``protection.group1.elements[51P].tms``). Never raises."""
    problems: list[ConfigProblem] = []

    def err(key: str, message: str) -> None:
        problems.append(ConfigProblem(file, key, message))

    if group not in (1, 2):
        err("group", f"expected 1 or 2, got {group!r}")
        return (), problems
    return _group({"elements": raw}, f"protection.group{group}", group, err), problems

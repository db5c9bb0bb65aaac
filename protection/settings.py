"""Element settings (frozen dataclasses), their ranges, and the two settings groups.

A settings object can be *built* with any values (the TOML parser builds them from a file); the ranges are
enforced when an element is *armed*: :func:`check_settings` lists every problem and arming an element with a
problem raises :class:`ElementSettingsError` naming the element and the setting, and only that element stays
unarmed (see :mod:`protection.bank`). Ranges are inclusive; every setting is documented in
``docs/protection.md`` (a test checks it). Units: A (primary), kV phase-to-neutral (primary), Hz, s.

No import-time side effects.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args, get_origin

from protection.curves import CURVES, CurveName

ResetMode = Literal["instantaneous", "definite", "disk"]


class ElementSettingsError(ValueError):
    """A setting of one element is out of range or inconsistent: that element refuses to arm.

    ``element`` is the element's name, ``setting`` the setting's key, ``group`` the settings group (0 = none).
    """

    def __init__(self, element: str, setting: str, message: str, group: int = 0) -> None:
        self.element = element
        self.setting = setting
        self.message = message
        self.group = group
        where = f"element {element!r}" + (f" (group {group})" if group else "")
        super().__init__(f"{where}: setting {setting!r}: {message}")


@dataclass(frozen=True, slots=True)
class OvercurrentSettings:
    """50 (phase) / 50N (residual) overcurrent, instantaneous (delay 0) or definite time."""

    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "pickup_a": (0.01, 100_000.0),
        "delay_s": (0.0, 60.0),
        "dropout_ratio": (0.5, 1.0),
    }
    name: str  # element name, unique within its group, e.g. "50P"
    type: Literal["50", "50N"]  # 50: max of Ia, Ib, Ic; 50N: residual In
    pickup_a: float  # operate threshold, A primary
    delay_s: float = 0.0  # definite time delay; 0 = instantaneous
    dropout_ratio: float = 0.95  # drops out below dropout_ratio * pickup_a
    enabled: bool = True  # false: not armed, never steps


@dataclass(frozen=True, slots=True)
class InverseTimeSettings:
    """51 (phase) / 51N (residual) inverse-time overcurrent (IEC 60255-151 / IEEE C37.112 curves)."""

    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "pickup_a": (0.01, 100_000.0),
        "tms": (0.01, 3.2),
        "td": (0.05, 15.0),
        "pickup_factor": (1.0, 1.3),
        "dropout_ratio": (0.5, 1.0),
        "reset_delay_s": (0.0, 60.0),
    }
    name: str  # element name, unique within its group, e.g. "51P"
    type: Literal["51", "51N"]  # 51: max of Ia, Ib, Ic; 51N: residual In
    pickup_a: float  # current setting Is, A primary; the curve's M = I / pickup_a
    curve: CurveName  # IEC_SI, IEC_VI, IEC_EI, IEC_LTI, IEC_STI, IEEE_MI, IEEE_VI, IEEE_EI
    tms: float | None = None  # time multiplier, IEC curves only (required for them)
    td: float | None = None  # time dial, IEEE curves only (required for them)
    pickup_factor: float = 1.0  # picks up at pickup_factor * pickup_a (relays typically 1.05-1.1)
    dropout_ratio: float = 0.95  # drops out below dropout_ratio * pickup_factor * pickup_a
    reset: ResetMode = "instantaneous"  # integral after dropout: instantaneous, definite (hold), disk emulation
    reset_delay_s: float = 0.0  # hold time of reset = "definite"; must be 0 for the other modes
    enabled: bool = True  # false: not armed, never steps


@dataclass(frozen=True, slots=True)
class UndervoltageSettings:
    """27 phase undervoltage, definite time; ``logic`` any/all phases."""

    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "pickup_kv": (0.001, 1000.0),
        "delay_s": (0.0, 100.0),
        "dropout_ratio": (1.0, 1.5),
    }
    name: str  # element name, unique within its group, e.g. "27"
    type: Literal["27"]
    pickup_kv: float  # a phase is "under" at or below this, kV phase-to-neutral
    delay_s: float = 0.0  # definite time delay
    logic: Literal["any", "all"] = "any"  # picks up when any / all three phases are under
    dropout_ratio: float = 1.05  # a phase recovers above dropout_ratio * pickup_kv
    enabled: bool = True  # false: not armed, never steps


@dataclass(frozen=True, slots=True)
class OvervoltageSettings:
    """59 phase overvoltage, definite time; ``logic`` any/all phases."""

    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "pickup_kv": (0.001, 1000.0),
        "delay_s": (0.0, 100.0),
        "dropout_ratio": (0.5, 1.0),
    }
    name: str  # element name, unique within its group, e.g. "59"
    type: Literal["59"]
    pickup_kv: float  # a phase is "over" at or above this, kV phase-to-neutral
    delay_s: float = 0.0  # definite time delay
    logic: Literal["any", "all"] = "any"  # picks up when any / all three phases are over
    dropout_ratio: float = 0.95  # a phase recovers below dropout_ratio * pickup_kv
    enabled: bool = True  # false: not armed, never steps


@dataclass(frozen=True, slots=True)
class FrequencySettings:
    """81U under- / 81O over-frequency, definite time, with undervoltage block."""

    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "pickup_hz": (40.0, 70.0),
        "delay_s": (0.0, 100.0),
        "uv_block_kv": (0.0, 1000.0),
        "dropout_hz": (0.0, 1.0),
    }
    name: str  # element name, unique within its group, e.g. "81U1"
    type: Literal["81U", "81O"]
    pickup_hz: float  # 81U: picks up at f <= pickup_hz; 81O: at f >= pickup_hz
    uv_block_kv: float  # blocked while any phase voltage < this (kV); 0 disables the block
    delay_s: float = 0.0  # definite time delay
    dropout_hz: float = 0.02  # hysteresis: drops out when f is dropout_hz back past pickup_hz
    enabled: bool = True  # false: not armed, never steps


@dataclass(frozen=True, slots=True)
class RocofSettings:
    """81R rate of change of frequency over a sliding window, definite time, with undervoltage block."""

    RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "pickup_hz_s": (0.01, 20.0),
        "window_s": (0.02, 2.0),
        "uv_block_kv": (0.0, 1000.0),
        "delay_s": (0.0, 100.0),
        "dropout_ratio": (0.5, 1.0),
    }
    name: str  # element name, unique within its group, e.g. "81R"
    type: Literal["81R"]
    pickup_hz_s: float  # picks up when |df/dt| (per direction) >= this, Hz/s
    window_s: float  # df/dt = (f(now) - f(now - window)) / window
    uv_block_kv: float  # blocked while any phase voltage < this (kV); 0 disables the block
    delay_s: float = 0.0  # definite time delay after pickup
    direction: Literal["both", "rise", "fall"] = "both"  # which sign of df/dt operates
    dropout_ratio: float = 0.95  # drops out below dropout_ratio * pickup_hz_s
    enabled: bool = True  # false: not armed, never steps


ElementSettings = (
    OvercurrentSettings
    | InverseTimeSettings
    | UndervoltageSettings
    | OvervoltageSettings
    | FrequencySettings
    | RocofSettings
)

# Element type (the TOML `type` key) -> its settings class.
SETTINGS_BY_TYPE: dict[str, type[Any]] = {
    "50": OvercurrentSettings,
    "50N": OvercurrentSettings,
    "51": InverseTimeSettings,
    "51N": InverseTimeSettings,
    "27": UndervoltageSettings,
    "59": OvervoltageSettings,
    "81U": FrequencySettings,
    "81O": FrequencySettings,
    "81R": RocofSettings,
}


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    h = _HINTS.get(cls)
    if h is None:
        h = _HINTS[cls] = typing.get_type_hints(cls)
    return h


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_settings(s: ElementSettings, group: int = 0) -> list[ElementSettingsError]:
    """Every problem of one element's settings (empty list: it may be armed)."""
    name = s.name if isinstance(s.name, str) else repr(s.name)
    errs: list[ElementSettingsError] = []

    def bad(setting: str, message: str) -> None:
        errs.append(ElementSettingsError(name, setting, message, group))

    if not isinstance(s.name, str) or not s.name.strip():
        bad("name", "must be a non-empty string")
    ranges = type(s).RANGES
    for f in dataclasses.fields(s):
        v = getattr(s, f.name)
        hint = _hints(type(s))[f.name]
        origin = get_origin(hint)
        if origin is Literal:
            opts = get_args(hint)
            if v not in opts:
                bad(f.name, f"invalid value {v!r}: expected one of {', '.join(repr(o) for o in opts)}")
        elif hint is bool:
            if not isinstance(v, bool):
                bad(f.name, f"expected true or false, got {v!r}")
        elif f.name in ranges:
            if v is None:
                continue  # optional (tms/td): presence is checked below
            lo, hi = ranges[f.name]
            if not _is_number(v) or not math.isfinite(v):
                bad(f.name, f"expected a number, got {v!r}")
            elif not lo <= v <= hi:
                bad(f.name, f"{v} is out of range {lo:g}..{hi:g}")
    if isinstance(s, InverseTimeSettings) and s.curve in CURVES:
        curve = CURVES[s.curve]
        if curve.family == "IEC":
            if s.tms is None:
                bad("tms", f"required for the IEC curve {s.curve}")
            if s.td is not None:
                bad("td", f"the time dial applies to IEEE curves; {s.curve} takes 'tms'")
        else:
            if s.td is None:
                bad("td", f"required for the IEEE curve {s.curve}")
            if s.tms is not None:
                bad("tms", f"the time multiplier applies to IEC curves; {s.curve} takes 'td'")
        if s.reset == "disk" and curve.tr <= 0.0:
            bad("reset", f"disk emulation needs a reset constant tr; {s.curve} has none (use an IEEE curve)")
        if s.reset != "definite" and _is_number(s.reset_delay_s) and s.reset_delay_s != 0.0:
            bad("reset_delay_s", f"applies only to reset = 'definite' (reset is {s.reset!r})")
    return errs


@dataclass(frozen=True, slots=True)
class ProtectionSettings:
    """The two settings groups and which one is active. Switching groups: see :meth:`ElementBank.switch_group`."""

    group1: tuple[ElementSettings, ...] = ()  # settings group 1
    group2: tuple[ElementSettings, ...] = ()  # settings group 2
    active_group: Literal[1, 2] = 1  # group in service at start

    def group(self, n: int) -> tuple[ElementSettings, ...]:
        if n == 1:
            return self.group1
        if n == 2:
            return self.group2
        raise ValueError(f"settings group must be 1 or 2, got {n!r}")


# -- describing and serialising settings (the panel's forms, its JSON and the settings override file) ----------

# Unit of a setting, by key suffix (keys name their unit: pickup_a, delay_s, pickup_kv, pickup_hz, pickup_hz_s).
_UNIT_SUFFIXES: tuple[tuple[str, str], ...] = (("_hz_s", "Hz/s"), ("_kv", "kV"), ("_hz", "Hz"), ("_a", "A"),
                                               ("_s", "s"))


def setting_unit(key: str) -> str:
    """The unit of setting ``key`` ("A", "s", "kV", "Hz", "Hz/s"), "" for a ratio, factor, multiplier or choice."""
    for suffix, unit in _UNIT_SUFFIXES:
        if key.endswith(suffix):
            return unit
    return ""


def setting_fields(etype: str) -> list[dict[str, Any]]:
    """How to edit an element of type ``etype`` (KeyError for an unknown type): one dict per TOML key except
    ``type``, in declaration order: ``key``, ``kind`` ("text", "number", "choice", "bool"), ``unit``, ``min`` /
    ``max`` (numbers with a range), ``options`` (choices), ``default`` (None: required or optional without one),
    ``required`` and ``optional`` (may be left out, e.g. ``tms``/``td`` depending on the curve)."""
    cls = SETTINGS_BY_TYPE[etype]
    hints = _hints(cls)
    out: list[dict[str, Any]] = []
    for f in dataclasses.fields(cls):
        if f.name == "type":
            continue
        hint = hints[f.name]
        args = [a for a in get_args(hint) if a is not type(None)]
        optional = get_origin(hint) in (typing.Union, types.UnionType) and type(None) in get_args(hint)
        base = args[0] if optional else hint
        d: dict[str, Any] = {"key": f.name, "unit": setting_unit(f.name)}
        if get_origin(base) is Literal:
            d["kind"], d["options"] = "choice", list(get_args(base))
        elif base is bool:
            d["kind"] = "bool"
        elif base is float or base is int:
            d["kind"] = "number"
            if f.name in cls.RANGES:
                d["min"], d["max"] = cls.RANGES[f.name]
        else:
            d["kind"] = "text"
        required = f.default is dataclasses.MISSING
        d["required"] = required
        d["optional"] = optional
        d["default"] = None if required else f.default
        out.append(d)
    return out


def element_to_raw(s: ElementSettings) -> dict[str, Any]:
    """One element's settings as its ``[[protection.groupN.elements]]`` table (``type`` first, then every field;
    a None value — ``tms`` of an IEEE curve, ``td`` of an IEC one — is left out, as TOML has no null)."""
    out: dict[str, Any] = {"type": s.type}
    for f in dataclasses.fields(s):
        v = getattr(s, f.name)
        if f.name != "type" and v is not None:
            out[f.name] = float(v) if type(v) is int else v  # numbers are floats (as the TOML parser makes them)
    return out


def settings_version(settings: ProtectionSettings) -> str:
    """A short hash of both groups' element settings (not of the active group): the version a settings change
    is based on. Equal settings give equal versions in any process (canonical JSON, SHA-256, 16 hex digits)."""
    import hashlib
    import json

    doc = {f"group{g}": [element_to_raw(e) for e in settings.group(g)] for g in (1, 2)}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def diff_elements(
    old: tuple[ElementSettings, ...], new: tuple[ElementSettings, ...]
) -> list[dict[str, Any]]:
    """What changed between two versions of one group, per element (by name), in the new order then the removed:
    ``{"element", "change": "added"|"removed"|"changed", "settings": {key: [old, new]}}`` (added: old None;
    removed: new None; unchanged elements are left out)."""
    before = {e.name: element_to_raw(e) for e in old}
    after = {e.name: element_to_raw(e) for e in new}
    out: list[dict[str, Any]] = []
    for name, raw in after.items():
        prev = before.get(name)
        if prev is None:
            out.append({"element": name, "change": "added", "settings": {k: [None, v] for k, v in raw.items()}})
            continue
        changed = {k: [prev.get(k), raw.get(k)] for k in dict.fromkeys([*prev, *raw]) if prev.get(k) != raw.get(k)}
        if changed:
            out.append({"element": name, "change": "changed", "settings": changed})
    for name, raw in before.items():
        if name not in after:
            out.append({"element": name, "change": "removed", "settings": {k: [v, None] for k, v in raw.items()}})
    return out

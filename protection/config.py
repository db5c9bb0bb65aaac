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
from typing import Any

from gateway.config_load import BAD, ConfigProblem, convert_toml_value, suggest
from protection.settings import SETTINGS_BY_TYPE, ElementSettings, ProtectionSettings, check_settings

_TOP_KEYS = ("active_group", "group1", "group2")
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
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kw: dict[str, Any] = {}
    ok = True
    for k, v in raw.items():
        if k not in fields:
            err(f"{key}.{k}", f"unknown key for a {etype} element{suggest(k, fields)}")
            ok = False
            continue
        conv, msg = convert_toml_value(hints[k], v)
        if conv is BAD:
            err(f"{key}.{k}", msg)
            ok = False
        else:
            kw[k] = conv
    for name, f in fields.items():
        if name not in raw and f.default is dataclasses.MISSING:
            err(f"{key}.{name}", "missing required key")
            ok = False
    if not ok:
        return None
    s: ElementSettings = cls(**kw)
    for e in check_settings(s, group):
        err(f"{key}.{e.setting}", e.message)
    return s

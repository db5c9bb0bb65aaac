"""``gateway import-scl``: turn one IED of an SCL file (ICD/CID/SCD) into a ``[[links]]`` TOML table.

:func:`import_scl` is what the CLI calls (it picks the IED, reads the file and turns every problem into one
:class:`SclImportError` whose message names the file); :func:`scl_to_config` does the conversion from an already
parsed :class:`protocols.scl.SclModel`.

What is generated for the IED:

- one link ``protocol = "iec61850"`` with ``host`` (given, else the IED's IP from the SCL Communication section)
  and ``port``, and one device named after the IED;
- ``[links.devices.iec61850] reports``: one report control block per data set of every LN0/LN, the first
  instance (``brcbMeas01``), a buffered block preferred over an unbuffered one for the same data set (two blocks
  on one data set would deliver every value twice);
- one point per measured or status value: for each data object (and sub data object, e.g. ``A.phsA`` of a WYE)
  the first of ``stVal`` [ST], ``mag.f`` / ``mag.i`` [MX], ``cVal.mag.f`` [MX], ``instMag.f`` [MX],
  ``actVal`` [ST] that it has and that is a number (strings are skipped). Names are ``<LN>_<DO>[_<SDO>]``
  (``MMXU1_A_phsA``), prefixed by the LD inst when the IED has several LDs, made unique with ``_2``, ``_3``…;
  ``unit`` comes from ``units.SIUnit`` (with ``units.multiplier`` as an SI prefix, e.g. ``kW``) where the SCL
  gives one; ``writable = true`` for controllable objects (an ``Oper`` [CO] and a ctlModel other than
  status-only).

Pure functions; no I/O except reading the file in :func:`import_scl`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from protocols.scl import DataAttribute, DataObject, EnumType, SclError, SclIed, SclModel, parse_scl

__all__ = ["SclImportError", "import_scl", "scl_to_config"]

# (attribute path, FC) candidates for the value of a data object, in order of preference.
_VALUE_PATHS: tuple[tuple[str, str], ...] = (
    ("stVal", "ST"),
    ("mag.f", "MX"),
    ("mag.i", "MX"),
    ("cVal.mag.f", "MX"),
    ("instMag.f", "MX"),
    ("actVal", "ST"),
)
_NUMERIC_BTYPES = frozenset({
    "BOOLEAN", "INT8", "INT16", "INT24", "INT32", "INT64", "INT8U", "INT16U", "INT24U", "INT32U",
    "FLOAT32", "FLOAT64", "Enum", "Dbpos", "Tcmd",
})
_MULTIPLIERS = {-24: "y", -21: "z", -18: "a", -15: "f", -12: "p", -9: "n", -6: "µ", -3: "m", -2: "c", -1: "d",
                 0: "", 1: "da", 2: "h", 3: "k", 6: "M", 9: "G", 12: "T", 15: "P", 18: "E", 21: "Z", 24: "Y"}


class SclImportError(Exception):
    """The SCL file cannot be imported (unreadable, malformed, unsupported, no such IED). The message names the
    file and is meant for the operator as it is."""


@dataclass(frozen=True, slots=True)
class _PointOut:
    name: str
    ref: str
    da: str
    fc: str
    unit: str
    writable: bool


def _q(s: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(s, ensure_ascii=False)


def _enum_name(attr: DataAttribute | None, enums: dict[str, EnumType]) -> str:
    if attr is None or attr.value is None:
        return ""
    text = attr.value.strip()
    et = enums.get(attr.type_id)
    if et is not None and text.lstrip("-").isdigit():
        return et.values.get(int(text), "")
    return text


def _unit(do: DataObject, enums: dict[str, EnumType]) -> str:
    si = _enum_name(do.attribute("units.SIUnit"), enums)
    if not si:
        return ""
    mult_attr = do.attribute("units.multiplier")
    mult = _enum_name(mult_attr, enums)
    if mult_attr is not None and mult_attr.value is not None and mult_attr.value.strip().lstrip("-").isdigit():
        mult = _MULTIPLIERS.get(int(mult_attr.value), mult)
    return f"{mult}{si}"


def _value_attr(do: DataObject) -> tuple[str, str] | None:
    for path, fc in _VALUE_PATHS:
        a = do.attribute(path)
        if a is not None and a.fc == fc and not a.children and a.btype in _NUMERIC_BTYPES:
            return path, fc
    return None


def _writable(do: DataObject, enums: dict[str, EnumType]) -> bool:
    oper = do.attribute("Oper")
    if oper is None or oper.fc != "CO":
        return False
    model = _enum_name(do.attribute("ctlModel"), enums)
    return model not in ("", "status-only", "0")


def _points(ied: SclIed, enums: dict[str, EnumType]) -> list[_PointOut]:
    out: list[_PointOut] = []
    used: set[str] = set()
    several_lds = len(ied.logical_devices) > 1

    def walk(do: DataObject, ref: str, base: str) -> None:
        va = _value_attr(do)
        if va is not None:
            name = base
            k = 2
            while name in used:
                name = f"{base}_{k}"
                k += 1
            used.add(name)
            out.append(_PointOut(name, ref, va[0], va[1], _unit(do, enums), _writable(do, enums)))
        for sub in do.sub_objects:
            walk(sub, f"{ref}.{sub.name}", f"{base}_{sub.name}")

    for ld in ied.logical_devices:
        for ln in ld.logical_nodes:
            prefix = f"{ld.inst}_{ln.name}" if several_lds else ln.name
            for do in ln.data_objects:
                walk(do, f"{ld.domain}/{ln.name}.{do.name}", f"{prefix}_{do.name}")
    return out


def _reports(ied: SclIed) -> list[str]:
    refs: list[str] = []
    for ld in ied.logical_devices:
        for ln in ld.logical_nodes:
            chosen: dict[str, tuple[bool, str]] = {}  # data set -> (buffered, reference)
            for rc in ln.report_controls:
                if not rc.dat_set:
                    continue
                ref = f"{ld.domain}/{ln.name}.{'BR' if rc.buffered else 'RP'}.{rc.instance_names()[0]}"
                have = chosen.get(rc.dat_set)
                if have is None or (rc.buffered and not have[0]):
                    chosen[rc.dat_set] = (rc.buffered, ref)
            refs.extend(ref for _, ref in chosen.values())
    return refs


def scl_to_config(model: SclModel, ied_name: str, host: str, port: int = 102, *,
                  link_name: str | None = None, device_name: str | None = None) -> str:
    """TOML text of one ``[[links]]`` table (protocol iec61850, one device) for IED ``ied_name`` of ``model``.

    ``host`` empty: the IED's IP address from the SCL Communication section. Raises :class:`SclError` (names the
    file) when the IED is missing, has no address and none is given, or has no readable values.
    """
    ied = model.ied(ied_name)
    if not host:
        host = next(iter(ied.addresses.values()), "")
        if not host:
            raise SclError(f"{model.source}: IED {ied_name} has no IP address in the SCL; give the host")
    points = _points(ied, model.enum_types)
    if not points:
        raise SclError(f"{model.source}: IED {ied_name} has no measured or status values to import")
    reports = _reports(ied)
    lines = [
        f"# Generated by `gateway import-scl` from {Path(model.source).name}, IED {ied.name}"
        + (f" ({ied.manufacturer} {ied.type})" if ied.manufacturer or ied.type else ""),
        "[[links]]",
        f"name = {_q(link_name or ied.name)}",
        'protocol = "iec61850"',
        f"host = {_q(host)}",
        f"port = {int(port)}",
        "",
        "[[links.devices]]",
        f"name = {_q(device_name or ied.name)}",
        "",
        "[links.devices.iec61850]",
        "reports = [" + ", ".join(_q(r) for r in reports) + "]",
    ]
    for p in points:
        lines += [
            "",
            "[[links.devices.points]]",
            f"name = {_q(p.name)}",
            'kind = "attribute"',
            f"ref = {_q(p.ref)}",
            f"da = {_q(p.da)}",
            f"fc = {_q(p.fc)}",
        ]
        if p.unit:
            lines.append(f"unit = {_q(p.unit)}")
        if p.writable:
            lines.append("writable = true")
    return "\n".join(lines) + "\n"


def import_scl(path: Path, ied: str | None, host: str, port: int = 102) -> str:
    """Read ``path`` and return the TOML of one link for IED ``ied`` (may be None when the file has one IED).

    Raises :class:`SclImportError` with a message naming the file for every problem (unreadable, not XML, not
    SCL, unsafe XML, undefined types, unknown or ambiguous IED, nothing to import).
    """
    try:
        model = parse_scl(path)
        if ied is None:
            if len(model.ieds) != 1:
                names = ", ".join(i.name for i in model.ieds)
                raise SclImportError(f"{path}: the file describes {len(model.ieds)} IEDs ({names}); choose one")
            ied = model.ieds[0].name
        return scl_to_config(model, ied, host, port)
    except SclError as exc:
        raise SclImportError(str(exc)) from None

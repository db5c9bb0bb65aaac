"""``gateway import-csv``: turn a vendor's Modbus register map (CSV with a header row) into a ``[[links]]`` table.

Columns are found by their header, case-insensitively (spaces, ``_`` and ``-`` ignored); the first header that
matches wins, unknown columns are ignored:

===========  ============================================================================================
what         accepted headers
===========  ============================================================================================
name         name, tag, point, signal, parameter, description (a description column also becomes a comment)
address      address, register, offset, reg, modbus address, start address, start register
type         type, data type, datatype, format, dtype, data format
scale        scale, multiplier, gain, factor, scale factor
unit         unit, units, uom, engineering unit, eng unit
access       access, rw, r/w, read/write, mode, permission
table        table, kind, register type, object type, function, function code, fc (holding/input/coil/discrete,
             or FC 3/4/1/2) — optional: 4xxxx/3xxxx/1xxxx/0xxxx addresses say it too
word order   word order, order, byte order, endian, endianness, swap (ABCD/CDAB/BADC/DCBA, big/little, swapped)
===========  ============================================================================================

Addresses: ``40001``-``49999`` (and six-digit ``400001``-``465536``) are holding register numbers, ``3xxxx``
input registers, ``1xxxx`` discrete inputs, ``0xxxx`` (written with the leading 0) coils — all 1-based, so
40001 becomes holding address 0. Other numbers (decimal or ``0x`` hex) are protocol addresses of the row's
table (``--table``, default holding): 0-based by default, 1-based register numbers with ``one_based``.
``prefixed=False`` takes every number literally (for maps whose offsets really go beyond 9999).

Types: int16, uint16, int32, uint32, float32, float64, bool and their usual vendor spellings (short, word, long,
dint, udint, dword, float, real, single, double, lreal, bit, boolean…); a word order written into the type
(``float32 CDAB``, ``FLOAT_SWAPPED``) is taken from there.

Every row that cannot be converted is an error naming the file, the line number and the column; all of them are
reported at once (:class:`CsvImportError`). Pure functions; no I/O except reading the file in :func:`import_csv`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Final

from gateway.config import DTYPE_WORDS

__all__ = ["CsvImportError", "CsvPoint", "csv_to_config", "import_csv", "parse_register_map"]

_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "name": ("name", "pointname", "tag", "tagname", "point", "signal", "parameter", "variable"),
    "description": ("description", "desc", "comment", "label"),
    "address": ("address", "register", "offset", "reg", "registeraddress", "modbusaddress", "startaddress",
                "startregister", "addr", "registeroffset"),
    "type": ("type", "datatype", "format", "dtype", "dataformat", "valuetype"),
    "scale": ("scale", "multiplier", "gain", "factor", "scalefactor", "scaling"),
    "unit": ("unit", "units", "uom", "engineeringunit", "engunit", "engunits"),
    "access": ("access", "rw", "r/w", "readwrite", "read/write", "mode", "permission", "accesstype"),
    "table": ("table", "kind", "registertype", "objecttype", "function", "functioncode", "fc"),
    "order": ("wordorder", "order", "byteorder", "endian", "endianness", "swap", "wordswap"),
}
_TYPES: Final[dict[str, str]] = {
    **dict.fromkeys(("int16", "short", "sint16", "s16", "i16", "int", "signed", "signed16", "integer", "sint"),
                    "int16"),
    **dict.fromkeys(("uint16", "word", "ushort", "u16", "unsigned", "unsigned16", "uint", "usint"), "uint16"),
    **dict.fromkeys(("int32", "long", "dint", "s32", "i32", "sint32", "signed32", "integer32"), "int32"),
    **dict.fromkeys(("uint32", "udint", "u32", "ulong", "dword", "unsigned32"), "uint32"),
    **dict.fromkeys(("float32", "float", "real", "f32", "single", "ieee754", "ieeefloat", "fp32", "float32ieee"),
                    "float32"),
    **dict.fromkeys(("float64", "double", "lreal", "f64", "fp64"), "float64"),
    **dict.fromkeys(("bool", "boolean", "bit", "coil", "binary", "digital"), "bool"),
}
_TABLES: Final[dict[str, str]] = {
    **dict.fromkeys(("holding", "holdingregister", "holdingregisters", "hr", "3", "fc3", "03", "4x", "4xxxx",
                     "analogoutput", "outputregister"), "holding"),
    **dict.fromkeys(("input", "inputregister", "inputregisters", "ir", "4", "fc4", "04", "3x", "3xxxx"), "input"),
    **dict.fromkeys(("coil", "coils", "co", "1", "fc1", "01", "0x", "0xxxx", "digitaloutput"), "coil"),
    **dict.fromkeys(("discrete", "discreteinput", "discreteinputs", "di", "2", "fc2", "02", "1x", "1xxxx",
                     "digitalinput", "inputstatus"), "discrete"),
}
# word order name -> (word_order, byte_order)
_ORDERS: Final[dict[str, tuple[str, str]]] = {
    "abcd": ("big", "big"), "big": ("big", "big"), "bigendian": ("big", "big"), "be": ("big", "big"),
    "msw": ("big", "big"), "highfirst": ("big", "big"), "normal": ("big", "big"), "no": ("big", "big"),
    "cdab": ("little", "big"), "little": ("little", "big"), "littleendian": ("little", "big"),
    "le": ("little", "big"), "lsw": ("little", "big"), "lowfirst": ("little", "big"), "swapped": ("little", "big"),
    "wordswap": ("little", "big"), "swap": ("little", "big"), "yes": ("little", "big"),
    "badc": ("big", "little"), "byteswap": ("big", "little"),
    "dcba": ("little", "little"),
}
_READ_ONLY: Final = frozenset({"r", "ro", "read", "readonly", "rd", "get"})
_WRITABLE: Final = frozenset({"rw", "r/w", "w", "wo", "write", "readwrite", "read/write", "writeonly", "wr", "set"})
_PREFIXED: Final = ((400001, 465536, "holding"), (300001, 365536, "input"), (100001, 165536, "discrete"),
                    (40001, 49999, "holding"), (30001, 39999, "input"), (10001, 19999, "discrete"))


class CsvImportError(Exception):
    """The CSV cannot be imported. ``problems`` lists every error (``FILE:LINE: column 'X': ...``)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True, slots=True)
class CsvPoint:
    name: str
    kind: str  # holding, input, coil, discrete
    address: int  # 0-based protocol address
    type: str
    word_order: str = "big"
    byte_order: str = "big"
    scale: float = 1.0
    unit: str = ""
    writable: bool = False
    line: int = 0  # line in the CSV
    description: str = ""


def _key(header: str) -> str:
    return re.sub(r"[\s_\-.()]+", "", header.strip().lower())


def _find_columns(headers: Sequence[str]) -> dict[str, int]:
    keys = [_key(h) for h in headers]
    found: dict[str, int] = {}
    for what, names in _COLUMNS.items():
        for name in names:  # the first accepted header name (in our order of preference) that is present
            if name in keys:
                found[what] = keys.index(name)
                break
    return found


def _order_in(text: str) -> tuple[str, str] | None:
    t = _key(text)
    for name in ("abcd", "cdab", "badc", "dcba"):
        if name in t:
            return _ORDERS[name]
    if "byteswap" in t:
        return _ORDERS["badc"]
    if "swap" in t:
        return _ORDERS["swapped"]
    return None


def _parse_type(text: str) -> tuple[str, tuple[str, str] | None] | None:
    t = _key(text)
    if t in _TYPES:
        return _TYPES[t], None
    order = _order_in(text)
    stripped = re.sub(r"abcd|cdab|badc|dcba|wordswapped|byteswapped|swapped|swap|[^a-z0-9]", "", t)
    if stripped in _TYPES:
        return _TYPES[stripped], order
    return None


def _parse_scale(text: str) -> float | None:
    t = text.strip().lower().lstrip("x*")
    try:
        if "/" in t:
            return float(Fraction(t))
        if "^" in t:
            base, _, exp = t.partition("^")
            return float(base) ** float(exp)
        return float(t)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _point_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", text.strip()).strip("_")


def _address(text: str, table: str | None, one_based: bool, prefixed: bool) -> tuple[int, str | None] | str:
    """``(0-based address, table implied by a 4xxxx-style number or None)`` or an error message."""
    t = text.strip().replace(" ", "").replace("_", "")
    try:
        n = int(t, 16) if t.lower().startswith("0x") else int(t, 10)
    except ValueError:
        return f"{text!r} is not a register address (a number, e.g. 40001, 100 or 0x64)"
    if n < 0:
        return f"{text!r}: addresses are not negative"
    digits = t.lstrip("+")
    if prefixed and not t.lower().startswith("0x"):
        if len(digits) in (5, 6) and digits.startswith("0"):  # 0xxxx / 0xxxxx coil numbers (1-based)
            if n < 1:
                return f"{text!r}: coil numbers start at 00001"
            return n - 1, "coil"
        for lo, hi, kind in _PREFIXED:
            if lo <= n <= hi and len(digits) == len(str(lo)):
                return n - lo, kind
    if one_based:
        if n < 1:
            return f"{text!r}: with 1-based register numbers the first register is 1"
        n -= 1
    if n > 65535:
        return f"{text!r} is beyond the Modbus address space (0..65535 after conversion)"
    return n, None


def parse_register_map(
    text: str,
    file: str = "<csv>",
    *,
    table: str = "holding",
    one_based: bool = False,
    prefixed: bool = True,
    word_order: str = "ABCD",
) -> list[CsvPoint]:
    """The points of a register map given as CSV text. Raises :class:`CsvImportError` with every problem."""
    sample = text[:4096]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    problems: list[str] = []
    headers: list[str] | None = None
    cols: dict[str, int] = {}
    default_order = _ORDERS[word_order.lower()]
    points: list[CsvPoint] = []
    used: set[str] = set()
    for row in reader:
        line = reader.line_num
        if not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        if headers is None:
            headers = [c.strip() for c in row]
            cols = _find_columns(headers)
            missing = [w for w in ("address",) if w not in cols]
            if "name" not in cols and "description" not in cols:
                missing.insert(0, "name")
            if missing:
                wanted = {"name": "name/tag/description", "address": "address/register/offset"}
                raise CsvImportError([f"{file}:{line}: header row has no {' and no '.join(wanted[m] for m in missing)}"
                                      f" column (found: {', '.join(h for h in headers if h) or 'nothing'})"])
            continue

        hdr: list[str] = headers

        def cell(what: str, row: list[str] = row, cols: dict[str, int] = cols) -> str:
            i = cols.get(what)
            return row[i].strip() if i is not None and i < len(row) else ""

        def err(what: str, message: str, line: int = line, hdr: list[str] = hdr, cols: dict[str, int] = cols) -> None:
            problems.append(f"{file}:{line}: column {hdr[cols[what]]!r}: {message}")

        before = len(problems)
        desc = cell("description")
        raw_name = cell("name") or desc
        name = _point_name(raw_name)
        if not name:
            err("name" if "name" in cols else "description", "empty point name" if not raw_name else
                f"{raw_name!r} gives no usable point name (letters, digits, _ or -)")
        kind: str | None = None
        if cell("table"):
            kind = _TABLES.get(_key(cell("table")))
            if kind is None:
                err("table", f"unknown register table {cell('table')!r}; expected holding, input, coil or discrete "
                    "(or function code 3, 4, 1, 2)")
        addr_text = cell("address")
        address = 0
        if not addr_text:
            err("address", "empty address")
        else:
            got = _address(addr_text, kind, one_based, prefixed)
            if isinstance(got, str):
                err("address", got)
            else:
                address, implied = got
                if implied is not None and kind is not None and implied != kind:
                    err("address", f"{addr_text} is a {implied} number but the table column says {kind}")
                kind = kind or implied
        kind = kind or table
        bits = kind in ("coil", "discrete")
        order = default_order
        dtype = "bool" if bits else "uint16"
        if cell("type"):
            parsed = _parse_type(cell("type"))
            if parsed is None:
                err("type", f"unknown data type {cell('type')!r}; expected one of int16, uint16, int32, uint32, "
                    "float32, float64, bool (or float, real, word, dword, long...)")
            else:
                dtype, type_order = parsed
                order = type_order or order
                if bits and dtype != "bool":
                    err("type", f"a {kind} is one bit: type must be bool, not {cell('type')!r}")
        if cell("order"):
            o = _ORDERS.get(_key(cell("order")))
            if o is None:
                err("order", f"unknown word order {cell('order')!r}; expected ABCD, CDAB, BADC, DCBA, big, little")
            else:
                order = o
        scale = 1.0
        if cell("scale"):
            s = _parse_scale(cell("scale"))
            if s is None or s == 0:
                err("scale", f"{cell('scale')!r} is not a non-zero number (e.g. 0.1, 1/10, 10^-2)")
            else:
                scale = s
        writable = False
        if cell("access"):
            a = _key(cell("access")).replace("\\", "/")
            if a in _WRITABLE or cell("access").strip().lower() in _WRITABLE:
                writable = True
                if kind in ("input", "discrete"):
                    err("access", f"{cell('access')!r}: {kind} registers cannot be written (only holding and coil)")
            elif a not in _READ_ONLY:
                err("access", f"unknown access {cell('access')!r}; expected R, RO, RW, R/W or W")
        words = 1 if bits else DTYPE_WORDS.get(dtype, 1)
        if address + words - 1 > 65535 and len(problems) == before:
            err("address", f"{addr_text}: a {dtype} there would run past register 65535")
        if len(problems) > before:
            continue
        unique, k = name, 2
        while unique in used:
            unique = f"{name}_{k}"
            k += 1
        used.add(unique)
        wo, bo = order if words > 1 else ("big", order[1])
        points.append(CsvPoint(unique, kind, address, dtype, wo, bo, scale, cell("unit"), writable, line,
                               desc if desc and desc != raw_name else ""))
    if headers is None:
        raise CsvImportError([f"{file}: no header row (the file is empty)"])
    if problems:
        raise CsvImportError(problems)
    if not points:
        raise CsvImportError([f"{file}: no register rows after the header"])
    return points


def _q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _num(x: float) -> str:
    return repr(int(x)) if x == int(x) and abs(x) < 1e15 else repr(x)


def csv_to_config(
    points: Sequence[CsvPoint],
    *,
    device: str,
    unit_id: int = 1,
    host: str = "",
    port: int = 502,
    serial: str = "",
    baudrate: int = 9600,
    link: str = "",
    source: str = "",
) -> str:
    """TOML of one ``[[links]]`` (modbus_tcp with ``host``, or modbus_rtu with ``serial``) with one device."""
    lines = [f"# Generated by `gateway import-csv` from {source or 'a register map'}: {len(points)} points"]
    lines += ["[[links]]", f"name = {_q(link or device)}"]
    if serial:
        lines += ['protocol = "modbus_rtu"', f"serial_port = {_q(serial)}", f"baudrate = {int(baudrate)}"]
    else:
        if not host:
            lines.append("# CHANGE-ME: the device's IP address (give --host to fill it in)")
        lines += ['protocol = "modbus_tcp"', f"host = {_q(host or 'CHANGE-ME')}", f"port = {int(port)}"]
    lines += ["", "[[links.devices]]", f"name = {_q(device)}", f"unit_id = {int(unit_id)}"]
    for p in points:
        lines += ["", "[[links.devices.points]]"]
        if p.description:
            lines.append(f"# {p.description}")
        lines += [f"name = {_q(p.name)}", f'kind = "{p.kind}"', f"address = {p.address}"]
        if p.kind in ("holding", "input"):
            lines.append(f'type = "{p.type}"')
            if p.word_order != "big":
                lines.append(f'word_order = "{p.word_order}"')
            if p.byte_order != "big":
                lines.append(f'byte_order = "{p.byte_order}"')
        if p.scale != 1.0:
            lines.append(f"scale = {_num(p.scale)}")
        if p.unit:
            lines.append(f"unit = {_q(p.unit)}")
        if p.writable:
            lines.append("writable = true")
    return "\n".join(lines) + "\n"


def import_csv(
    path: Path,
    *,
    device: str,
    unit_id: int = 1,
    host: str = "",
    port: int = 502,
    serial: str = "",
    baudrate: int = 9600,
    table: str = "holding",
    one_based: bool = False,
    prefixed: bool = True,
    word_order: str = "ABCD",
) -> str:
    """Read ``path`` and return the TOML text. Raises :class:`CsvImportError` (OSError for an unreadable file)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")  # spreadsheet exports on Windows
    problems: list[str] = []
    if not device or "." in device or not device.strip():
        problems.append(f"--device: {device!r} must be a non-empty name without '.'")
    if not 0 <= unit_id <= 247:
        problems.append(f"--unit-id: must be 0..247, got {unit_id}")
    if problems:
        raise CsvImportError(problems)
    points = parse_register_map(text, str(path), table=table, one_based=one_based, prefixed=prefixed,
                                word_order=word_order)
    return csv_to_config(points, device=device, unit_id=unit_id, host=host, port=port, serial=serial,
                         baudrate=baudrate, source=path.name)

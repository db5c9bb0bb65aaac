"""``gateway probe modbus``: find the unit ids that answer on a link, and read a register range decoded every way.

Everything goes through the gateway's own driver (:class:`protocols.modbus.ModbusClient`) and decoder
(:func:`protocols.modbus.decode_block`), so the column a technician picks decodes exactly as a point configured
with that ``type`` / ``word_order`` / ``byte_order`` will.

Word orders, named by the bytes of a 32-bit value ``0xAABBCCDD`` as they appear on the wire:

=====  ==========================================  ==============================
name   meaning                                     point config
=====  ==========================================  ==============================
ABCD   high word first, high byte first (Modbus)   word_order "big", byte_order "big"
CDAB   low word first ("word swapped")             word_order "little", byte_order "big"
BADC   high word first, bytes swapped in words     word_order "big", byte_order "little"
DCBA   low word first, bytes swapped               word_order "little", byte_order "little"
=====  ==========================================  ==============================

Threads: the coroutines run on the caller's loop, one request at a time (one :class:`ModbusClient` owner).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from gateway.config import DTYPE_WORDS, DeviceConfig, LinkConfig, PointConfig, RegisterKind
from protocols.modbus import (
    MAX_BITS,
    MAX_REGISTERS,
    DeviceTimeout,
    LinkDown,
    MalformedResponse,
    ModbusClient,
    ModbusExceptionResponse,
    ReadBlock,
    decode_block,
)

__all__ = [
    "ORDERS",
    "ProbeError",
    "UnitAnswer",
    "decode_as",
    "format_bits",
    "format_interpretations",
    "interpret",
    "make_link",
    "parse_read",
    "parse_units",
    "read_range",
    "scan_units",
    "suggest_points",
]

# order name -> (word_order, byte_order) as in PointConfig
ORDERS: Final[dict[str, tuple[Literal["big", "little"], Literal["big", "little"]]]] = {
    "ABCD": ("big", "big"),
    "CDAB": ("little", "big"),
    "BADC": ("big", "little"),
    "DCBA": ("little", "little"),
}
_ORDERS_16: Final[dict[str, str]] = {"ABCD": "AB", "CDAB": "AB", "BADC": "BA", "DCBA": "BA"}
_TYPES_32: Final = ("int32", "uint32", "float32")


class ProbeError(Exception):
    """A probe could not run; the message is for the operator. ``exit_code`` follows :mod:`gateway.cli`: 2 a bad
    argument, 1 the device refused the request (exception response: wrong address or table), 4 no answer / no
    link."""

    def __init__(self, message: str, exit_code: int = 4) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class UnitAnswer:
    unit_id: int
    answered: bool
    detail: str = ""  # "" = normal answer; else the exception / malformed answer seen


def parse_units(spec: str) -> list[int]:
    """``"1-247"``, ``"1,2,10-12"`` -> sorted unit ids (each 0..247). Raises :class:`ProbeError`."""
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ProbeError(f"--units: {part!r} is not a unit id or a range like 1-247", 2) from None
        if not 0 <= lo <= hi <= 247:
            raise ProbeError(f"--units: {part!r} must be within 0..247 (low-high)", 2)
        out.update(range(lo, hi + 1))
    if not out:
        raise ProbeError("--units: no unit ids given", 2)
    return sorted(out)


def parse_read(spec: str) -> tuple[int, int]:
    """``"ADDR:COUNT"`` (0-based protocol address) -> ``(address, count)``. Raises :class:`ProbeError`."""
    addr_s, sep, count_s = spec.partition(":")
    try:
        addr = int(addr_s, 0)
        count = int(count_s, 0) if sep else 1
    except ValueError:
        raise ProbeError(f"--read: {spec!r} is not ADDR:COUNT, e.g. 100:10", 2) from None
    if not 0 <= addr <= 65535 or count < 1 or addr + count > 65536:
        raise ProbeError(f"--read: {spec!r}: address 0..65535 and count >= 1 within the address space", 2)
    return addr, count


def make_link(
    *,
    host: str = "",
    port: int = 502,
    serial: str = "",
    baudrate: int = 9600,
    parity: Literal["N", "E", "O"] = "N",
    stopbits: int = 1,
    timeout_s: float = 0.5,
    connect_timeout_s: float = 3.0,
) -> LinkConfig:
    """A link for the probe: Modbus TCP to ``host:port`` or RTU on ``serial``."""
    dev = DeviceConfig(name="probe", timeout_s=timeout_s)
    if serial:
        return LinkConfig(name="probe", protocol="modbus_rtu", serial_port=serial, baudrate=baudrate, parity=parity,
                          stopbits=stopbits, connect_timeout_s=connect_timeout_s, devices=(dev,))
    return LinkConfig(name="probe", protocol="modbus_tcp", host=host, port=port, connect_timeout_s=connect_timeout_s,
                      devices=(dev,))


def _where(link: LinkConfig) -> str:
    return link.serial_port if link.protocol == "modbus_rtu" else f"{link.host}:{link.port}"


async def connect(link: LinkConfig) -> ModbusClient:
    """An open client for ``link``. Raises :class:`ProbeError` when the link cannot be opened."""
    client = ModbusClient(link)
    try:
        await client.connect()
    except LinkDown:
        client.close()
        raise ProbeError(f"cannot open {_where(link)}: connection refused, no route or no such port") from None
    return client


def _one_block(table: RegisterKind, address: int, count: int) -> ReadBlock:
    points = [PointConfig(name=f"r{address + i}", kind=table, address=address + i,
                          type="bool" if table in ("coil", "discrete") else "uint16") for i in range(count)]
    return ReadBlock.build(table, address, count, points)


async def scan_units(
    client: ModbusClient,
    units: Sequence[int],
    *,
    table: RegisterKind = "holding",
    address: int = 0,
    timeout_s: float = 0.3,
    on_unit: Callable[[int, bool], None] | None = None,
) -> list[UnitAnswer]:
    """Ask each unit id for one register/bit at ``address`` of ``table``; return those that answered.

    An exception response (e.g. illegal data address) counts as an answer: the unit is there. A lost connection is
    reopened once per unit; a second failure raises :class:`ProbeError`.
    """
    block = _one_block(table, address, 1)
    found: list[UnitAnswer] = []
    for uid in units:
        dev = DeviceConfig(name=f"unit{uid}", unit_id=uid, timeout_s=timeout_s)
        answer: UnitAnswer | None = None
        for attempt in (1, 2):
            try:
                await client.read(dev, block)
                answer = UnitAnswer(uid, True)
            except ModbusExceptionResponse as exc:
                answer = UnitAnswer(uid, True, f"exception {exc.code:#04x}")
            except MalformedResponse as exc:
                answer = UnitAnswer(uid, True, f"malformed answer ({exc})")
            except DeviceTimeout as exc:
                answer = UnitAnswer(uid, False, str(exc))
            except LinkDown:
                if attempt == 2:
                    raise ProbeError(f"{_where(client.link)}: connection lost at unit {uid} and could not be "
                                     "reopened") from None
                try:
                    await client.connect()
                except LinkDown:
                    raise ProbeError(f"{_where(client.link)}: connection lost at unit {uid}") from None
                continue
            break
        assert answer is not None
        if answer.answered:
            found.append(answer)
        if on_unit is not None:
            on_unit(uid, answer.answered)
    return found


async def read_range(
    client: ModbusClient, unit_id: int, table: RegisterKind, address: int, count: int, *, timeout_s: float = 1.0
) -> list[int]:
    """Raw words (or 0/1 bits) of ``count`` registers/bits from ``address``, in requests of the protocol maximum.

    Raises :class:`ProbeError` naming the unit for no answer, an exception response or a lost link.
    """
    limit = MAX_BITS if table in ("coil", "discrete") else MAX_REGISTERS
    dev = DeviceConfig(name=f"unit{unit_id}", unit_id=unit_id, timeout_s=timeout_s)
    out: list[int] = []
    pos = address
    while pos < address + count:
        n = min(limit, address + count - pos)
        try:
            values = await client.read(dev, _one_block(table, pos, n))
        except ModbusExceptionResponse as exc:
            hint = " (illegal data address: the range is outside the device's map)" if exc.code == 2 else ""
            raise ProbeError(f"unit {unit_id} answered {table} {pos}..{pos + n - 1} with exception "
                             f"{exc.code:#04x}{hint}", 1) from None
        except DeviceTimeout:
            raise ProbeError(f"unit {unit_id} did not answer within {timeout_s:g} s (wrong unit id, wiring or "
                             "baud rate?)") from None
        except (LinkDown, MalformedResponse) as exc:
            raise ProbeError(f"unit {unit_id}: {exc}") from None
        out.extend(int(v) for v in values)
        pos += n
    return out


def decode_as(words: Sequence[int], dtype: str, order: str) -> float | None:
    """``words`` (from the first) decoded as one ``dtype`` value in ``order`` (ABCD/CDAB/BADC/DCBA), exactly as the
    gateway decodes such a point; None when there are too few words."""
    n = DTYPE_WORDS[dtype]
    if len(words) < n:
        return None
    wo, bo = ORDERS[order]
    p = PointConfig(name="v", kind="holding", address=0, type=dtype, word_order=wo, byte_order=bo)  # type: ignore[arg-type]
    return float(decode_block(ReadBlock.build("holding", 0, n, [p]), list(words[:n]))[0])


def _fmt(v: float | None, dtype: str) -> str:
    if v is None:
        return ""
    if dtype != "float32":
        return str(int(v))
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.7g}"


def interpret(words: Sequence[int], orders: Sequence[str] = ("ABCD", "CDAB")) -> tuple[list[str], list[list[str]]]:
    """Headers and rows (one per register) of every interpretation: hex, uint16/int16 (and byte-swapped when a
    byte-swapping order is asked for), then int32/uint32/float32 starting at that register in each order."""
    headers = ["offset", "hex", "uint16", "int16"]
    swapped16 = any(_ORDERS_16[o] == "BA" for o in orders)
    if swapped16:
        headers += ["uint16 BA", "int16 BA"]
    for t in _TYPES_32:
        headers += [f"{t} {o}" for o in orders]
    rows: list[list[str]] = []
    for i, w in enumerate(words):
        row = [str(i), f"{w:04X}", _fmt(decode_as([w], "uint16", "ABCD"), "uint16"),
               _fmt(decode_as([w], "int16", "ABCD"), "int16")]
        if swapped16:
            row += [_fmt(decode_as([w], "uint16", "BADC"), "uint16"), _fmt(decode_as([w], "int16", "BADC"), "int16")]
        rest = words[i:]
        for t in _TYPES_32:
            row += [_fmt(decode_as(rest, t, o), t) for o in orders]
        rows.append(row)
    return headers, rows


def format_interpretations(
    words: Sequence[int], address: int, orders: Sequence[str] = ("ABCD", "CDAB"), *, one_based: bool = False
) -> str:
    """The table ``probe modbus --read`` prints: one line per register, labelled with its protocol address."""
    from gateway.commission.table import format_table

    headers, rows = interpret(words, orders)
    headers[0] = "address"
    for i, row in enumerate(rows):
        row[0] = str(address + i + (1 if one_based else 0))
    return format_table(headers, rows)


def format_bits(bits: Sequence[int], address: int, table: str) -> str:
    from gateway.commission.table import format_table

    return format_table(["address", table], [[str(address + i), str(int(b))] for i, b in enumerate(bits)])


def suggest_points(
    table: RegisterKind, address: int, count: int, dtype: str, order: str = "ABCD", *, prefix: str = "reg"
) -> str:
    """TOML ``[[links.devices.points]]`` for the range read as consecutive ``dtype`` values in ``order``."""
    if dtype not in DTYPE_WORDS:
        raise ProbeError(f"--suggest: unknown type {dtype!r}; one of {', '.join(DTYPE_WORDS)}", 2)
    if order not in ORDERS:
        raise ProbeError(f"--order: unknown word order {order!r}; one of {', '.join(ORDERS)}", 2)
    bits = table in ("coil", "discrete")
    step = 1 if bits else DTYPE_WORDS[dtype]
    wo, bo = ORDERS[order]
    lines: list[str] = []
    for a in range(address, address + count - step + 1, step):
        lines += ["[[links.devices.points]]", f"name = {json.dumps(f'{prefix}_{a}')}", f'kind = "{table}"',
                  f"address = {a}"]
        if not bits:
            lines.append(f'type = "{dtype}"')
            if step > 1 and wo != "big":
                lines.append(f'word_order = "{wo}"')
            if bo != "big":
                lines.append(f'byte_order = "{bo}"')
        lines.append("")
    return "\n".join(lines)

"""``gateway probe dnp3``: is the outstation there (link reset, IIN), and what does an integrity poll return?

It reuses the gateway's DNP3 session (:class:`protocols.dnp3.Dnp3Session`: connect = TCP + data-link reset, the
integrity poll, IIN decoding) with a device that has no points, and records *every* value the outstation sends
instead of mapping them to configured points. The group/variation of each value is read from the response
fragments' object headers (dnp3py does not pass them to the handler).

Read-only by design: no unsolicited enable/disable, no restart-IIN clear, no time write — a technician sees the
outstation's IIN exactly as the outstation sets it.

Threads: the coroutine runs on the caller's loop and owns the session.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from dnp3.application.parser import ParseError, parse_response
from dnp3.core.flags import IIN
from dnp3.master.handler import ResponseInfo
from dnp3.objects.layout import layout_for

from gateway.config import DeviceConfig, Dnp3Settings, LinkConfig
from protocols.dnp3 import Dnp3Session
from protocols.session import SessionLost

__all__ = ["Dnp3Probe", "Dnp3ProbeResult", "Dnp3Value", "flag_names", "format_dnp3", "probe_dnp3"]

# Flag octet bits (IEEE 1815 "flags"); bits 5 and 6 depend on the object kind.
_COMMON_FLAGS: Final = ((0x01, "ONLINE"), (0x02, "RESTART"), (0x04, "COMM_LOST"), (0x08, "REMOTE_FORCED"),
                        (0x10, "LOCAL_FORCED"))
_KIND_FLAGS: Final[dict[str, tuple[tuple[int, str], ...]]] = {
    "binary_input": ((0x20, "CHATTER_FILTER"), (0x80, "STATE")),
    "double_bit_input": ((0x20, "CHATTER_FILTER"),),
    "binary_output": ((0x80, "STATE"),),
    "analog_input": ((0x20, "OVER_RANGE"), (0x40, "REFERENCE_ERR")),
    "analog_output": ((0x20, "OVER_RANGE"), (0x40, "REFERENCE_ERR")),
    "counter": ((0x20, "ROLLOVER"), (0x40, "DISCONTINUITY")),
    "frozen_counter": ((0x20, "ROLLOVER"), (0x40, "DISCONTINUITY")),
}
_DOUBLE_STATES: Final = ("INTERMEDIATE", "OFF", "ON", "INDETERMINATE")
_VALUE_GROUPS: Final = frozenset({1, 2, 3, 4, 10, 11, 20, 21, 22, 23, 30, 32, 40, 42})


def flag_names(kind: str, flags: int) -> str:
    """``ONLINE|RESTART`` for a flag octet of a value of ``kind``; ``-`` when no bit is set."""
    names = [n for bit, n in (*_COMMON_FLAGS, *_KIND_FLAGS.get(kind, ())) if flags & bit]
    return "|".join(names) or "-"


@dataclass(frozen=True, slots=True)
class Dnp3Value:
    group: int  # 0 when the fragment could not be matched (shown as "?")
    variation: int
    kind: str  # binary_input, double_bit_input, analog_input, counter, frozen_counter, binary_output, analog_output
    index: int
    value: float | bool | int | str
    flags: int
    timestamp: datetime | None


@dataclass
class Dnp3ProbeResult:
    host: str
    port: int
    outstation: int
    master: int
    connected: bool = False  # the TCP connection opened (dnp3py sends the link reset without waiting for it)
    answered: bool = False  # the outstation answered the integrity poll
    iin: int = 0
    iin_flags: list[str] = field(default_factory=list)
    values: list[Dnp3Value] = field(default_factory=list)
    error: str = ""  # why the probe stopped ("" = it completed)
    warnings: list[str] = field(default_factory=list)  # e.g. a response cut short at an undecodable object


class Dnp3Probe(Dnp3Session):
    """A :class:`Dnp3Session` that keeps every value of every response (with its fragment) for the dump."""

    def __init__(self, link: LinkConfig) -> None:
        super().__init__(link, {}, lambda _batch: None)
        self.fragments: list[tuple[bytes, list[tuple[str, Any]]]] = []  # raw fragment, its (kind, value) in order
        self.truncations: list[str] = []

    def _on_raw(self, data: bytes) -> None:
        super()._on_raw(data)
        self.fragments.append((bytes(data), []))

    def _on_info(self, info: ResponseInfo) -> None:
        super()._on_info(info)
        t = info.truncation
        if t is not None:
            self.truncations.append(f"response cut short at g{t.group}v{t.variation} ({t.reason.value}): values "
                                    "after it are not shown")

    def _ingest(self, kind: str, values: Sequence[Any], info: ResponseInfo) -> None:
        if not self.fragments:
            self.fragments.append((b"", []))
        self.fragments[-1][1].extend((kind, v) for v in values)

    async def integrity_poll(self) -> None:
        """One class 1/2/3/0 poll (raises :class:`SessionLost` when the outstation does not answer)."""
        with self._owned():
            self._require()
            await self._integrity_poll(raise_on_error=False)

    @property
    def iin(self) -> IIN:
        return self._iin

    def values(self) -> list[Dnp3Value]:
        out: list[Dnp3Value] = []
        for raw, vals in self.fragments:
            labels = _labels(raw, len(vals))
            for (kind, v), (g, var) in zip(vals, labels, strict=True):
                if kind == "double_bit_input":
                    value: float | bool | int | str = _DOUBLE_STATES[int(v.state) & 3]
                else:
                    value = v.value
                out.append(Dnp3Value(g, var, kind, int(v.index), value, int(v.quality), v.timestamp))
        return out


def _object_count(qualifier: int, data: bytes) -> int:
    code = qualifier & 0x0F
    if code in (0, 1, 2):
        width = (1, 2, 4)[code]
        if len(data) < 2 * width:
            return 0
        start = int.from_bytes(data[:width], "little")
        stop = int.from_bytes(data[width:2 * width], "little")
        return max(0, stop - start + 1)
    if code in (7, 8, 9):
        width = {7: 1, 8: 2, 9: 4}[code]
        return int.from_bytes(data[:width], "little") if len(data) >= width else 0
    return 0


def _labels(raw: bytes, n: int) -> list[tuple[int, int]]:
    """(group, variation) of each of the ``n`` values dnp3py delivered from fragment ``raw``, in order; (0, 0) for
    all of them when the fragment's headers do not account for exactly ``n`` values."""
    unknown = [(0, 0)] * n
    if not raw:
        return unknown
    try:
        frag = parse_response(raw)
    except (ParseError, ValueError, IndexError):
        return unknown
    labels: list[tuple[int, int]] = []
    for block in frag.objects:
        h = block.header
        if h.group not in _VALUE_GROUPS or layout_for(h.group, h.variation) is None:
            continue
        labels.extend([(h.group, h.variation)] * _object_count(h.qualifier, block.data))
    return labels[:n] if len(labels) >= n else unknown


def probe_link(host: str, port: int, outstation: int, master: int, timeout_s: float) -> LinkConfig:
    dev = DeviceConfig(name="probe", timeout_s=timeout_s,
                       dnp3=Dnp3Settings(master_address=master, outstation_address=outstation))
    return LinkConfig(name="probe", protocol="dnp3_tcp", host=host, port=port, connect_timeout_s=timeout_s,
                      devices=(dev,))


async def probe_dnp3(
    host: str, port: int = 20000, outstation: int = 10, master: int = 1, *, timeout_s: float = 3.0
) -> Dnp3ProbeResult:
    """Connect (TCP + link reset), run one integrity poll and return what was seen. Never raises for an unreachable
    or silent outstation: ``error`` says what failed."""
    result = Dnp3ProbeResult(host, port, outstation, master)
    probe = Dnp3Probe(probe_link(host, port, outstation, master, timeout_s))
    try:
        try:
            await probe.connect()
        except SessionLost as exc:
            result.error = f"no DNP3 link to {host}:{port}: {_os_reason(exc) or _cause(exc)}"
            return result
        result.connected = True
        try:
            await probe.integrity_poll()
            result.answered = True
        except SessionLost as exc:
            cause = _cause(exc)
            why = f"within {timeout_s:g} s" if "no complete answer" in cause else f"({cause})"
            result.error = (f"outstation {outstation} did not answer the integrity poll {why}; check the outstation "
                            "and master addresses")
        result.iin = int(probe.iin)
        result.iin_flags = [b.name for b in IIN if b.name and probe.iin & b]
        result.values = probe.values()
        result.warnings = list(probe.truncations)
        return result
    finally:
        probe.close()
        await asyncio.sleep(0)  # let the aborted transport run its close callbacks


def _os_reason(exc: BaseException) -> str | None:
    """The operating system's words (e.g. "Connection refused") from the first OSError in the cause chain."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, TimeoutError):
            return "no answer (timed out)"
        if isinstance(seen, OSError) and (seen.errno or seen.strerror):
            return os.strerror(seen.errno) if isinstance(seen.errno, int) and seen.errno > 0 else seen.strerror
        seen = seen.__cause__ or seen.__context__
    return None


def _cause(exc: BaseException) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("link probe: ") else text


_IIN_HINTS: Final[dict[str, str]] = {
    "DEVICE_RESTART": "outstation restarted; the gateway clears it after connecting",
    "NEED_TIME": "outstation asks for time sync; the gateway writes the time",
    "EVENT_BUFFER_OVERFLOW": "events were lost; the gateway does an integrity poll",
    "DEVICE_TROUBLE": "the outstation reports a fault: check it locally",
    "CONFIG_CORRUPT": "the outstation's configuration is corrupt",
    "LOCAL_CONTROL": "outputs are in local control: remote controls will be refused",
    "NO_FUNC_CODE_SUPPORT": "the outstation does not support a function we sent",
    "OBJECT_UNKNOWN": "the outstation does not know an object we asked for",
    "PARAMETER_ERROR": "the outstation refused a request parameter",
}


def _ts(t: datetime | None) -> str:
    return "" if t is None else t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_dnp3(result: Dnp3ProbeResult) -> str:
    """The text ``probe dnp3`` prints: link status, IIN with hints, then the integrity poll as a table."""
    from gateway.commission.table import format_table

    lines = [f"tcp       {'OK' if result.connected else 'FAIL'}  {result.host}:{result.port}"]
    if not result.connected:
        lines.append(f"          {result.error}")
        return "\n".join(lines)
    who = f"outstation {result.outstation} (master {result.master})"
    if not result.answered:
        lines.append(f"answers   FAIL  {who}: {result.error}")
        return "\n".join(lines)
    lines.append(f"answers   OK  {who}")
    iin = ", ".join(result.iin_flags) or "none"
    lines.append(f"IIN       0x{result.iin:04X}  {iin}")
    for name in result.iin_flags:
        if name in _IIN_HINTS:
            lines.append(f"          {name}: {_IIN_HINTS[name]}")
    lines.append(f"poll      integrity poll (class 1, 2, 3, 0): {len(result.values)} values")
    lines += [f"warning   {w}" for w in result.warnings]
    if result.values:
        rows = []
        for v in result.values:
            gv = f"g{v.group}v{v.variation}" if v.group else "?"
            value = ("1" if v.value else "0") if isinstance(v.value, bool) else (
                f"{v.value:g}" if isinstance(v.value, float) else str(v.value))
            rows.append([gv, v.kind, str(v.index), value, f"0x{v.flags:02X}", flag_names(v.kind, v.flags),
                         _ts(v.timestamp)])
        lines += ["", format_table(["obj", "type", "index", "value", "flags", "flag names", "timestamp"], rows)]
    return "\n".join(lines)

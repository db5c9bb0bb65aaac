"""IEC 61850 MMS client driver (one association with one IED) over ``open61850`` (pinned, alpha: kept behind this
module; nothing else in the project imports it).

Implements :class:`protocols.session.SessionDriver`; see that module for the threading and error contract.

Points
------
A point is ``kind = "attribute"`` with ``ref`` (data object, e.g. ``IED1LD0/MMXU1.A.phsA``), ``da`` (value
attribute below it, e.g. ``cVal.mag.f``) and ``fc`` (e.g. ``MX``). Its quality and time are the data object's
``q`` and ``t`` in the same FC (as in every standard CDC). MMS names: domain ``IED1LD0``, value item
``MMXU1$MX$A$phsA$cVal$mag$f``.

Session start (:meth:`Iec61850Session.start_session`)
-----------------------------------------------------
1. For each RCB in ``[links.devices.iec61850] reports``: read its DatSet and RptID, the data set's members and the
   MMS type of each member, and work out which points the data set carries (value leaf, and q/t where present).
2. Enable it. Buffered RCB seen before by this driver object: *resume* — write only ResvTms, EntryID = the last
   entry id delivered, RptEna (no TrgOps/OptFlds/IntgPd writes: libiec61850 refuses the EntryID otherwise), then
   GI. The server sends every buffered entry after that id, then the GI. If the server refuses the EntryID (it
   restarted, its buffer overflowed), the block is configured from scratch (counted in ``resume_failures``).
   Otherwise: ResvTms (BRCB) / Resv (URCB), IntgPd = ``integrity_period_s``, BufTm = ``buffer_time_ms``,
   TrgOps = data-change, quality-change, GI, integrity (when ``integrity_period_s`` > 0), OptFlds = sequence
   number, report time stamp, reason, data set name, buffer overflow, entry id, conf revision; RptEna; GI.
   A block that cannot be enabled (bad reference, taken by another client) is logged, counted in
   ``rcb_errors`` and its points are polled instead — the session goes on.
3. Read every point no enabled report carries (their first poll).

Readings that arrive by report are delivered from :meth:`~Iec61850Session.idle`. Points outside every enabled data
set are polled by the jobs ``poll_<period_s>`` (one per distinct ``period_s``).

Exactly once across reconnects: the entry id of a buffered report is recorded when its readings are delivered;
reports that reached the client but were not yet delivered when the session was lost are dropped at
:meth:`~Iec61850Session.close` (the server sends them again after the resume). The GI that follows a resume would
repeat, for every point that changed during the outage, its last buffered value: a GI member whose value, q and t
equal what this session already delivered for that point is skipped. Points that did not change get the GI value,
which clears the runner's "session lost" mark. An unbuffered report is lost with the association (by design of
URCBs); the GI after the reconnect brings the current values.

Exactly once across gateway restarts: the last entry ids live in this object only, so after a restart the first
enable starts from the server's oldest buffered entry and the IED re-sends its buffer, then the GI repeats every
point's current value with its unchanged ``t``. The driver is therefore given ``committed`` (the store's
:meth:`storefwd.store.Store.last_readings` with ``exclude_quality=GATEWAY_TIME``: the gateway's own loss and
shutdown marks are skipped, so a point is seeded with the IED's last reading even after a graceful stop): at the
first session start of the object (no entry id known yet) it asks, from a worker thread, for each point's committed
reading with the greatest ts and *seeds* the point with it. A point whose returned reading still has GATEWAY_TIME
(when ``committed`` does not exclude them) is not seeded: that ts is no IED time. While a point is seeded, a report
or GI value of it is a replay and skipped (counted in ``replayed_skipped``) when its ``t``, value and q equal the
seed's, or when its ``t`` is older than the seed's and the replay has not yet reached the seed's reading; a value
stamped with gateway time is never skipped. The seed ends with the point's first delivered reading (then the
in-session logic above applies) or ``REPLAY_WINDOW_S`` after the seeding. So readings the store had committed before
a SIGKILL are not stored twice, and those still in the gateway's memory at the kill (never committed) are re-sent by
the IED and stored: no gap. Limits, chosen to lose nothing the IED did not already give us: an IED whose clock went
backwards across the restart, *and* whose buffer no longer holds the store's last reading (IED restarted, buffer
overflowed), has its values older than the store's dropped as replays while seeded -- at most ``REPLAY_WINDOW_S`` of
the first session after the restart, or until the point gets a newer value; they are counted in
``replayed_skipped``. Without ``committed`` (no store) the re-sent buffer is stored again (at-least-once).

Quality and time
----------------
- 61850 Quality (13-bit string) -> :class:`gateway.model.Q`: detail bits 2-12 keep their positions; validity
  good -> GOOD, invalid -> INVALID, questionable -> QUESTIONABLE, reserved (``10``) -> INVALID.
- ``ts`` = the data object's ``t`` (UtcTime, ns). TimeQuality: clock-not-synchronised -> CLOCK_NOT_SYNCHRONISED;
  clock-failure -> the time is worthless: ``ts`` = gateway receive time with GATEWAY_TIME|CLOCK_NOT_SYNCHRONISED;
  leap-seconds-known and the accuracy bits are ignored. A ``t`` of 0 (never set) or no ``t`` at all -> gateway
  receive time with GATEWAY_TIME.
- Values -> float64: FLOAT32/64, INTs, enums as their ordinal, BOOLEAN 0/1; a Dbpos (2-bit string) ->
  0 intermediate-state, 1 off, 2 on, 3 bad-state (the raw code, IEC 61850-7-3); other bit strings -> their
  unsigned value (first bit most significant). Strings and structures cannot be readings: NaN with
  INVALID|INCONSISTENT.
- A value that cannot be read: object-non-existent / -undefined / invalid-address / access-denied /
  -unsupported -> NaN with INVALID|BAD_REFERENCE (delivered, then :class:`DriverError` from the job);
  temporarily-unavailable -> QUESTIONABLE|OLD_DATA; any other access error -> INVALID|FAILURE.

Controls
--------
``select`` / ``operate`` / ``cancel`` on a ``writable`` point; the object's ``ctlModel`` [CF] decides the sequence
(``request.mode`` only documents the caller's intent):
direct-with-normal-security = Oper; sbo-with-normal-security = read SBO, Oper; direct-with-enhanced-security =
Oper + CommandTermination; sbo-with-enhanced-security = SBOw (select with value), Oper, CommandTermination.
``ctlVal`` follows the Oper's type: BOOLEAN from LATCH_ON/CLOSE/PULSE_ON (True) and LATCH_OFF/TRIP/PULSE_OFF
(False), or with VALUE: 0/1, and for a Dbpos point (DPC) 1 = off, 2 = on; integers and floats from ``value``.
``origin`` -> orIdent (UTF-8, ≤ 64 bytes), orCat station-control. Refusals give the LastApplError's AddCause in
``code`` and its name in ``detail``; see :func:`control_status` for the AddCause -> :class:`ControlStatus` table.

Threads: every public method runs on the runner's event loop. Blocking MMS requests run in the loop's default
executor (``asyncio.to_thread``); report callbacks arrive on open61850's receive thread ``mms-client-rx`` and only
append to a deque and wake the loop (``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
from open61850.data import (
    BitStringData,
    BoolData,
    FloatData,
    IECData,
    IntData,
    OctetStringData,
    StructureData,
    TimestampData,
    UIntData,
    VisibleStringData,
)
from open61850.mms import (
    DataAccessError,
    InformationReport,
    LastApplError,
    MmsClient,
    MmsConnectionError,
    MmsError,
    MmsTimeout,
    ObjectName,
    OptFlds,
    TrgOps,
    decode_report,
    is_report,
)
from open61850.mms import control as ctl
from open61850.mms import rcb as rcbs
from open61850.mms.types import MmsType, PrimitiveType, StructureType

from gateway.config import LinkConfig, PointConfig
from gateway.model import Q, ReadingBatch
from protocols.session import (
    ControlAction,
    ControlRequest,
    ControlResult,
    ControlStatus,
    Deliver,
    DriverError,
    Job,
    SessionLost,
)

__all__ = [
    "ADD_CAUSE_STATUS",
    "FastReport",
    "Iec61850Session",
    "access_error_quality",
    "control_status",
    "convert_value",
    "decode_report_fast",
    "quality_from_bits",
    "time_quality",
]

log = logging.getLogger(__name__)

READ_CHUNK: Final = 60  # names per Read request (3 per point); keeps PDUs far below libiec61850's 65000 bytes
ERROR_GRACE_S: Final = 0.5  # how long a refused control waits for the LastApplError that explains it
TERMINATION_MIN_S: Final = 10.0  # shortest wait for a CommandTermination (switchgear takes seconds)
REPLAY_WINDOW_S: Final = 60.0  # after a restart, how long reports may be the IED's replay of committed readings
ORIGIN_CATEGORY: Final = ctl.OR_CAT_STATION_CONTROL
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

Q_BAD_REF: Final = int(Q.INVALID | Q.BAD_REFERENCE)
Q_NOT_NUMERIC: Final = int(Q.INVALID | Q.INCONSISTENT)
_ACCESS_QUALITY: Final[dict[int, int]] = {
    10: Q_BAD_REF,  # object-non-existent
    4: Q_BAD_REF,  # object-undefined
    5: Q_BAD_REF,  # invalid-address
    3: Q_BAD_REF,  # object-access-denied
    9: Q_BAD_REF,  # object-access-unsupported
    2: int(Q.QUESTIONABLE | Q.OLD_DATA),  # temporarily-unavailable
}

# AddCause (IEC 61850-7-2 Ed2) -> status. 18 (object-not-selected) is NO_SELECT or SELECT_TIMEOUT depending on
# whether this driver had selected the object and its sboTimeout has run out (see _refusal).
ADD_CAUSE_STATUS: Final[dict[int, ControlStatus]] = {
    1: ControlStatus.NOT_SUPPORTED,  # not-supported
    2: ControlStatus.LOCAL,  # blocked-by-switching-hierarchy
    3: ControlStatus.SELECT_FAILED,  # select-failed
    8: ControlStatus.BLOCKED,  # blocked-by-mode
    9: ControlStatus.BLOCKED,  # blocked-by-process
    10: ControlStatus.BLOCKED,  # blocked-by-interlocking
    11: ControlStatus.BLOCKED,  # blocked-by-synchrocheck
    12: ControlStatus.ALREADY_ACTIVE,  # command-already-in-execution
    13: ControlStatus.BLOCKED,  # blocked-by-health
    18: ControlStatus.NO_SELECT,  # object-not-selected
    19: ControlStatus.SELECT_FAILED,  # object-already-selected (by another client)
    24: ControlStatus.BLOCKED,  # blocked-by-command
    26: ControlStatus.FORMAT_ERROR,  # inconsistent-parameters
    27: ControlStatus.SELECT_FAILED,  # locked-by-other-client
}
_CAUSE_NOT_SELECTED: Final = 18


# ----------------------------------------------------------------------------------------------------
# Pure conversions
# ----------------------------------------------------------------------------------------------------


def _bit(raw: bytes, i: int) -> int:
    return (raw[i >> 3] >> (7 - (i & 7))) & 1 if (i >> 3) < len(raw) else 0


_QUALITY_CACHE: dict[bytes, int] = {}


def quality_from_bits(raw: bytes) -> int:
    """61850 Quality bit string (first bit = validity's first bit) -> our Q word (see the module docstring)."""
    q = _QUALITY_CACHE.get(raw)
    if q is not None:
        return q
    validity = (_bit(raw, 0) << 1) | _bit(raw, 1)  # 0 good, 1 invalid, 2 reserved, 3 questionable
    q = {0: 0, 1: int(Q.INVALID), 2: int(Q.INVALID), 3: int(Q.QUESTIONABLE)}[validity]
    for i in range(2, 13):
        if _bit(raw, i):
            q |= 1 << i
    if len(_QUALITY_CACHE) < 4096:
        _QUALITY_CACHE[bytes(raw)] = q
    return q


def time_quality(octet: int) -> tuple[bool, int]:
    """TimeQuality octet -> (use the source time?, extra Q bits)."""
    if octet & 0x40:  # clock failure: the time is worthless
        return False, int(Q.CLOCK_NOT_SYNCHRONISED | Q.GATEWAY_TIME)
    if octet & 0x20:  # clock not synchronised
        return True, int(Q.CLOCK_NOT_SYNCHRONISED)
    return True, 0


def _ns(dt: datetime) -> int:
    d = dt - _EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000


def convert_value(data: IECData) -> float | None:
    """An MMS value -> float, or None when it is no number (string, structure, array, access error)."""
    if isinstance(data, FloatData | IntData | UIntData):
        return float(data.value)
    if isinstance(data, BoolData):
        return 1.0 if data.value else 0.0
    if isinstance(data, BitStringData):
        nbits = len(data.value) * 8 - data.unused_bits
        return float(int.from_bytes(data.value, "big") >> (len(data.value) * 8 - nbits)) if nbits > 0 else 0.0
    if isinstance(data, TimestampData):
        return _ns(data.value) / 1e9
    return None


def access_error_quality(code: int) -> int:
    """Quality word for a DataAccessError code (see the module docstring)."""
    return _ACCESS_QUALITY.get(code, int(Q.INVALID | Q.FAILURE))


def control_status(add_cause: int, *, select_stage: bool = False) -> ControlStatus:
    """AddCause -> status; a cause the table does not name is SELECT_FAILED at select, REJECTED otherwise."""
    default = ControlStatus.SELECT_FAILED if select_stage else ControlStatus.REJECTED
    return ADD_CAUSE_STATUS.get(add_cause, default)


# ----------------------------------------------------------------------------------------------------
# Internal state
# ----------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Point:
    index: int  # position in the driver's point list (and in its numpy columns)
    cfg: PointConfig
    pid: int  # store id
    domain: str  # "IED1LD0"
    do_item: str  # "MMXU1$MX$A$phsA"
    value_item: str  # "MMXU1$MX$A$phsA$cVal$mag$f"

    @property
    def q_item(self) -> str:
        return f"{self.do_item}$q"

    @property
    def t_item(self) -> str:
        return f"{self.do_item}$t"

    @property
    def control_item(self) -> str:
        """``MMXU1$CO$Pos`` (the control object in FC CO)."""
        ln, _, rest = self.do_item.partition("$")
        _, _, do = rest.partition("$")
        return f"{ln}$CO${do}"

    @property
    def cf_item(self) -> str:
        ln, _, rest = self.do_item.partition("$")
        _, _, do = rest.partition("$")
        return f"{ln}$CF${do}"


Path_ = tuple[int, ...]  # component indexes from a data set member's value down to a leaf


@dataclass(frozen=True, slots=True)
class _Extract:
    """How to get one point out of a report: value in member ``member`` at ``path``; q/t where the data set has
    them (member index and path), else None."""

    point: int
    member: int
    path: Path_
    q: tuple[int, Path_] | None
    t: tuple[int, Path_] | None


@dataclass(eq=False)
class _Rcb:
    ref: str  # as configured, e.g. "IED1LD0/LLN0.BR.brcbMeas01"
    name: ObjectName  # LLN0$BR$brcbMeas01 in IED1LD0
    buffered: bool
    rpt_id: str = ""
    enabled: bool = False
    by_member: dict[int, list[_Extract]] = field(default_factory=dict)
    covered: frozenset[int] = frozenset()  # point indexes whose value this data set carries


@dataclass(frozen=True, slots=True)
class _Selection:
    ctl_val: Any
    ctl_num: int
    at: float  # time.monotonic() of the select
    sbo_timeout_s: float | None


class _Watch:
    """LastApplError and CommandTermination reports about one control object (fed on the receive thread)."""

    def __init__(self, domain: str, item: str) -> None:
        self.prefix = f"{domain}/{item}"
        self.oper = ObjectName(f"{item}$Oper", domain)
        self.cond = threading.Condition()
        self.errors: list[LastApplError] = []
        self.terminations: list[LastApplError | None] = []  # None = positive

    def __call__(self, report: InformationReport) -> None:
        if report.list_name is not None:
            return
        error = None
        for name, result in zip(report.variables, report.results, strict=False):
            if name == ctl.LAST_APPL_ERROR and not isinstance(result, DataAccessError):
                try:
                    error = LastApplError.from_data(result)
                except ValueError:
                    continue
        if error is not None and not (error.control_object == self.prefix
                                      or error.control_object.startswith(self.prefix + "$")):
            return
        with self.cond:
            if self.oper in report.variables:
                self.terminations.append(error)
            elif error is not None:
                self.errors.append(error)
            else:
                return
            self.cond.notify_all()

    def last_error(self, grace: float) -> LastApplError | None:
        with self.cond:
            self.cond.wait_for(lambda: bool(self.errors), timeout=grace)
            return self.errors[-1] if self.errors else None

    def termination(self, timeout: float) -> list[LastApplError | None] | None:
        with self.cond:
            if not self.cond.wait_for(lambda: bool(self.terminations), timeout=timeout):
                return None
            return list(self.terminations)


def _split_ref(ref: str, fc: str) -> tuple[str, str]:
    """``IED1LD0/MMXU1.A.phsA`` + ``MX`` -> (``IED1LD0``, ``MMXU1$MX$A$phsA``)."""
    domain, _, rest = ref.partition("/")
    ln, *path = rest.split(".")
    return domain, "$".join([ln, fc, *path])


def _rcb_name(ref: str) -> ObjectName:
    """``IED1LD0/LLN0.BR.brcbMeas01`` (or ``…/LLN0$BR$brcbMeas01``) -> ObjectName."""
    domain, _, rest = ref.partition("/")
    return ObjectName(rest.replace(".", "$"), domain)


def _leaves(t: MmsType, path: Path_ = (), name: str = "") -> list[tuple[str, Path_]]:
    """Every named component below a type: ``("$cVal", (0,)), ("$cVal$mag", (0, 0)), …`` (plus the root)."""
    out = [(name, path)]
    if isinstance(t, StructureType):
        for i, (cname, ctype) in enumerate(t.components):
            out.extend(_leaves(ctype, (*path, i), f"{name}${cname}"))
    return out


def _walk(data: Any, path: Path_) -> Any:
    for i in path:
        if not isinstance(data, StructureData) or i >= len(data.members):
            return None
        data = data.members[i]
    return data


@dataclass(slots=True)
class FastReport:
    """What the driver needs of one report: ``values`` = data set member index -> value (or DataAccessError),
    ``gi`` = member indexes included because of a general interrogation."""

    rpt_id: str
    entry_id: bytes | None
    buf_ovfl: bool
    values: dict[int, Any]
    gi: set[int]


# OptFlds bit string (bit 0 reserved) -> bits 1-9: sequence-number, report-time-stamp, reason-for-inclusion,
# data-set-name, data-reference, buffer-overflow, entryID, conf-revision, segmentation (IEC 61850-8-1).
# Cached per raw value (a handful per server).
_OPT_CACHE: dict[bytes, tuple[bool, ...]] = {}


def _opt_flags(raw: bytes) -> tuple[bool, ...]:
    flags = _OPT_CACHE.get(raw)
    if flags is None:
        flags = tuple(bool(_bit(raw, i)) for i in range(1, 10))
        if len(_OPT_CACHE) < 256:
            _OPT_CACHE[bytes(raw)] = flags
        return flags
    return flags


def decode_report_fast(message: InformationReport) -> FastReport:
    """Decode an IEC 61850 report (same layout as :func:`open61850.mms.decode_report`, see its module) into what
    the driver needs, without building a ReasonCode/OptFlds object per member: about 4x cheaper on the hot path.
    Anything unexpected is handed to open61850's decoder, which raises its ReportDecodeError (an MmsError)."""
    res = message.results
    n = len(res)
    try:
        rid, opt = res[0], res[1]
        if not isinstance(rid, VisibleStringData) or not isinstance(opt, BitStringData):
            raise IndexError
        seq, tstamp, reason, dset, dref, ovfl, eid, conf, seg = _opt_flags(opt.value)
        pos = 2 + seq + tstamp + dset
        buf_ovfl = False
        if ovfl:
            b = res[pos]
            if not isinstance(b, BoolData):
                raise IndexError
            buf_ovfl = b.value
            pos += 1
        entry_id = None
        if eid:
            e = res[pos]
            if not isinstance(e, OctetStringData):
                raise IndexError
            entry_id = e.value
            pos += 1
        pos += conf + 2 * seg
        inc = res[pos]
        if not isinstance(inc, BitStringData):
            raise IndexError
        pos += 1
        raw = inc.value
        nbits = len(raw) * 8 - inc.unused_bits
        members = [i for i in range(nbits) if raw[i >> 3] & (0x80 >> (i & 7))]
        k = len(members)
        if dref:
            pos += k
        if pos + k + (k if reason else 0) != n:
            raise IndexError
        values = dict(zip(members, res[pos:pos + k], strict=True))
        gi: set[int] = set()
        if reason:
            for i, rc in zip(members, res[pos + k:], strict=True):
                if not isinstance(rc, BitStringData):
                    raise IndexError
                if rc.value and rc.value[0] & 0x04:  # bit 5: general-interrogation
                    gi.add(i)
        return FastReport(rid.value, entry_id, buf_ovfl, values, gi)
    except (IndexError, ValueError):
        rep = decode_report(message)  # raises the precise error, or decodes a layout we do not expect
        return FastReport(rep.rpt_id, rep.entry_id, bool(rep.buf_ovfl), {e.index: e.value for e in rep.entries},
                          {e.index for e in rep.entries if e.reason is not None and e.reason.general_interrogation})


# ----------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------


class Iec61850Session:
    """:class:`protocols.session.SessionDriver` for one IED over MMS. See the module docstring.

    ``client_factory(host, port, timeout, on_report)`` opens the association (tests may inject one); it runs in a
    worker thread. ``committed(point_ids)`` -> ``{point id: (ts, value, quality)}`` of the store's last committed
    reading per point (:meth:`storefwd.store.Store.last_readings`); called once, from a worker thread, at the first
    session start, to recognise the IED's replay after a gateway restart (module docstring). None: no such check.
    """

    def __init__(
        self,
        link: LinkConfig,
        point_ids: Mapping[str, int],
        deliver: Deliver,
        *,
        wall_ns: Callable[[], int] = time.time_ns,
        client_factory: Callable[[str, int, float, Callable[[InformationReport], None]], MmsClient] | None = None,
        committed: Callable[[list[int]], dict[int, tuple[int, float, int]]] | None = None,
    ) -> None:
        if link.protocol != "iec61850":
            raise ValueError(f"link {link.name}: protocol {link.protocol!r} is not iec61850")
        if len(link.devices) != 1:
            raise ValueError(f"link {link.name}: an iec61850 link reaches exactly one IED ({len(link.devices)} given)")
        self.link = link
        self.device = link.devices[0]
        self._deliver = deliver
        self._wall = wall_ns
        self._factory = client_factory or _connect
        self._committed = committed
        self._points: list[_Point] = []
        by_name: dict[str, _Point] = {}
        for p in self.device.points:
            if p.kind != "attribute" or not p.ref or not p.da or not p.fc:
                raise ValueError(f"{self.device.name}.{p.name}: an iec61850 point needs kind='attribute', ref, da, fc")
            key = f"{self.device.name}.{p.name}"
            if key not in point_ids:
                raise ValueError(f"{key}: no store id in point_ids")
            domain, do_item = _split_ref(p.ref, p.fc)
            pt = _Point(len(self._points), p, int(point_ids[key]), domain, do_item,
                        do_item + "$" + p.da.replace(".", "$"))
            self._points.append(pt)
            by_name[p.name] = pt
        self._by_name = by_name
        self._ids = np.fromiter((p.pid for p in self._points), dtype=np.int32, count=len(self._points))
        periods = sorted({p.cfg.period_s for p in self._points})
        self._jobs = tuple(Job(f"poll_{period:g}", period) for period in periods)
        self._job_points: dict[str, list[_Point]] = {
            f"poll_{period:g}": [p for p in self._points if p.cfg.period_s == period] for period in periods
        }
        self._rcbs = [_Rcb(r, _rcb_name(r), _rcb_name(r).item.split("$")[1] == "BR")
                      for r in self.device.iec61850.reports]
        self._entry_ids: dict[str, bytes] = {}  # rcb ref -> last entry id delivered (kept across reconnects)
        self._by_rpt_id: dict[str, _Rcb] = {}
        self._covered: set[int] = set()
        # last (value, q, ts) delivered per point, and the points delivered since the session started (GI dedupe)
        self._last: list[tuple[float, int, int] | None] = [None] * len(self._points)
        self._fresh: set[int] = set()
        # point index -> (ts, value, q) of its last committed reading and whether the replay reached it, until the
        # point's first delivery or REPLAY_WINDOW_S after the seeding
        self._seed: dict[int, tuple[int, float, int, bool]] = {}
        self._seed_asked = False  # committed() was called (once per driver object)
        self._seed_until_ns = 0  # wall ns: reports received later are no replay
        # per-session caches
        self._ctl_models: dict[str, int] = {}
        self._types: dict[tuple[str, str], MmsType] = {}
        self._selected: dict[str, _Selection] = {}
        # connection
        self._client: MmsClient | None = None
        self._inbox: collections.deque[tuple[int, InformationReport]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._armed = False
        self._counters: dict[str, int] = collections.Counter()
        self._last_error = ""

    # --- SessionDriver: lifecycle ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def connect(self) -> None:
        self.close()
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        inbox: collections.deque[tuple[int, InformationReport]] = collections.deque()
        self._inbox = inbox

        def on_report(message: InformationReport) -> None:  # receive thread: hand over, nothing else
            if not is_report(message):
                return
            inbox.append((self._wall(), message))
            if self._armed and inbox is self._inbox:
                self._armed = False
                loop, ev = self._loop, self._wakeup
                if loop is not None and ev is not None:
                    with contextlib.suppress(RuntimeError):  # the loop is closing: close() follows
                        loop.call_soon_threadsafe(ev.set)

        opening = asyncio.ensure_future(asyncio.to_thread(
            self._factory, self.link.host, self.link.port, self.link.connect_timeout_s, on_report
        ))
        try:
            client = await asyncio.shield(opening)
        except asyncio.CancelledError:  # the runner stops: close the association the worker may still open
            opening.add_done_callback(_close_opened)
            raise
        except (MmsError, OSError) as exc:
            raise SessionLost(f"{self.link.host}:{self.link.port}: {exc}") from exc
        client.request_timeout = self.device.timeout_s
        self._client = client
        self._counters["connects"] += 1

    def close(self) -> None:
        """Close the association (idempotent). Reports received but not delivered are dropped: a buffered RCB sends
        them again after the resume (their entry ids were not recorded). May block briefly while open61850 joins
        its receive thread."""
        client, self._client = self._client, None
        self._inbox = collections.deque()
        self._armed = False
        self._selected.clear()
        if client is not None:
            client.close()

    async def start_session(self) -> None:
        client = self._require()
        if self._committed is not None and not self._seed_asked and not self._entry_ids:
            await self._load_seed(self._committed)
        self._ctl_models.clear()
        self._types.clear()
        self._fresh.clear()
        self._by_rpt_id.clear()
        self._covered = set()
        for r in self._rcbs:
            r.enabled = False
            try:
                await self._call(self._prepare_rcb, client, r)
                other = self._by_rpt_id.get(r.rpt_id)
                if other is not None:  # reports are told apart by their RptID only
                    raise DriverError(f"same RptID {r.rpt_id!r} as {other.ref}")
                await self._call(self._enable_rcb, client, r)
            except SessionLost:
                raise
            except (DriverError, MmsError, ValueError) as exc:
                self._counters["rcb_errors"] += 1
                self._last_error = f"{r.ref}: {exc}"
                log.warning("%s: report control block %s not enabled (its points are polled): %s",
                            self.link.name, r.ref, exc)
                continue
            r.enabled = True
            self._by_rpt_id[r.rpt_id] = r
            self._covered |= r.covered
        # first read of the points no report carries; bad references are marked, not fatal here
        with_bad = await self._poll([p for p in self._points if p.index not in self._covered])
        if with_bad:
            self._last_error = f"bad references: {', '.join(with_bad)}"
            log.warning("%s: %s", self.link.name, self._last_error)

    def jobs(self) -> Sequence[Job]:
        return self._jobs

    async def run_job(self, name: str) -> None:
        pts = self._job_points.get(name)
        if pts is None:
            raise DriverError(f"unknown job {name!r}")
        self._require()
        bad = await self._poll([p for p in pts if p.index not in self._covered])
        if bad:
            raise DriverError(f"bad reference: {', '.join(bad)}")

    async def idle(self, timeout_s: float) -> None:
        if self._drain():
            return
        if not self.connected:
            raise SessionLost("association closed")
        ev = self._wakeup
        if ev is None or timeout_s <= 0:
            return
        ev.clear()
        self._armed = True
        if self._inbox:  # arrived between the drain and arming
            self._armed = False
        else:
            try:
                await asyncio.wait_for(ev.wait(), timeout_s)
            except TimeoutError:
                pass
            finally:
                self._armed = False
        self._drain()
        if not self.connected:
            raise SessionLost("association closed")

    def status(self) -> dict[str, object]:
        out: dict[str, object] = dict(self._counters)
        out["reports_enabled"] = [r.ref for r in self._rcbs if r.enabled]
        out["polled_points"] = len(self._points) - len(self._covered)
        out["entry_ids"] = {k: v.hex() for k, v in self._entry_ids.items()}
        if self._last_error:
            out["last_error"] = self._last_error
        return out

    # --- helpers --------------------------------------------------------------------------------------

    async def _load_seed(self, committed: Callable[[list[int]], dict[int, tuple[int, float, int]]]) -> None:
        """Seed every point with its last committed reading (first session start after a gateway restart)."""
        self._seed_asked = True
        try:
            rows = await asyncio.to_thread(committed, [p.pid for p in self._points])
        except Exception as exc:  # a store problem must not stop the link: the restart is then at-least-once
            self._counters["seed_errors"] += 1
            self._last_error = f"last committed readings unavailable: {exc}"
            log.warning("%s: %s; readings the IED re-sends may be stored twice", self.link.name, self._last_error)
            return
        seed: dict[int, tuple[int, float, int, bool]] = {}
        for p in self._points:
            row = rows.get(p.pid)
            if row is not None and not int(row[2]) & int(Q.GATEWAY_TIME):
                seed[p.index] = (int(row[0]), float(row[1]), int(row[2]), False)
        self._seed = seed
        self._seed_until_ns = self._wall() + round(REPLAY_WINDOW_S * 1e9)
        self._counters["seeded_points"] = len(seed)

    def _replayed(self, i: int, v: float, q: int, t: int) -> bool:
        """Is this report value of seeded point ``i`` a replay of what the store already has? Once the replay
        reached the store's last reading (same t, value and q), only that reading is skipped again (the GI repeats
        it); older ones are then new data from an IED whose clock went backwards."""
        sts, sv, sq, matched = self._seed[i]
        if q & int(Q.GATEWAY_TIME):
            return False
        if t == sts and q == sq and (v == sv or (math.isnan(v) and math.isnan(sv))):
            if not matched:
                self._seed[i] = (sts, sv, sq, True)
            return True
        return t < sts and not matched

    def _require(self) -> MmsClient:
        c = self._client
        if c is None or not c.is_connected:
            raise SessionLost("not connected")
        return c

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking request in a worker thread; connection problems become SessionLost."""
        try:
            return await asyncio.to_thread(fn, *args)
        except (MmsConnectionError, MmsTimeout) as exc:
            raise SessionLost(str(exc)) from exc

    def _type(self, client: MmsClient, name: ObjectName) -> MmsType:
        key = (name.domain or "", name.item)
        t = self._types.get(key)
        if t is None:
            t = client.get_type(name)
            self._types[key] = t
        return t

    # --- reports --------------------------------------------------------------------------------------

    def _prepare_rcb(self, client: MmsClient, r: _Rcb) -> None:
        """Worker thread: RptID, data set, member types -> which points the reports carry and where."""
        st = rcbs.read_status(client, r.name)
        if st.rpt_ena is None:
            raise DriverError(f"{r.ref}: no such report control block")
        r.rpt_id = st.rpt_id or str(r.name)
        if not st.dat_set:
            raise DriverError(f"{r.ref}: no data set")
        members = client.get_data_set_members(st.dat_set)
        leaf: dict[tuple[str, str], tuple[int, Path_]] = {}
        for mi, m in enumerate(members):
            t = self._type(client, m)
            for suffix, path in _leaves(t):
                leaf[(m.domain or "", m.item + suffix)] = (mi, path)
        by_member: dict[int, list[_Extract]] = collections.defaultdict(list)
        covered = set()
        for p in self._points:
            v = leaf.get((p.domain, p.value_item))
            if v is None:
                continue
            ex = _Extract(p.index, v[0], v[1], leaf.get((p.domain, p.q_item)), leaf.get((p.domain, p.t_item)))
            by_member[v[0]].append(ex)
            covered.add(p.index)
        r.by_member = dict(by_member)
        r.covered = frozenset(covered)

    def _enable_rcb(self, client: MmsClient, r: _Rcb) -> None:
        """Worker thread: resume (buffered, known entry id) or configure + enable; then GI."""
        last = self._entry_ids.get(r.ref) if r.buffered else None
        if last is not None:
            try:
                rcbs.enable(client, r.name, rcbs.RcbSettings(
                    trg_ops=None, opt_flds=None, intg_pd_ms=None, entry_id=last, general_interrogation=True))
                self._counters["resumes"] += 1
                return
            except rcbs.RcbError as exc:
                self._counters["resume_failures"] += 1
                log.warning("%s: %s: resume from entry %s refused (%s); events buffered meanwhile may be lost",
                            self.link.name, r.ref, last.hex(), exc)
                with contextlib.suppress(MmsError):
                    rcbs.disable(client, r.name)
        s = self.device.iec61850
        intg_ms = round(s.integrity_period_s * 1000)
        rcbs.enable(client, r.name, rcbs.RcbSettings(
            trg_ops=TrgOps(data_change=True, quality_change=True, integrity=intg_ms > 0, general_interrogation=True),
            opt_flds=OptFlds(sequence_number=True, report_time_stamp=True, reason_for_inclusion=True,
                             data_set_name=True, buffer_overflow=r.buffered, entry_id=r.buffered, conf_revision=True),
            intg_pd_ms=intg_ms, buf_tm_ms=s.buffer_time_ms, general_interrogation=True,
        ))

    def _drain(self) -> int:
        """Decode and deliver every report in the inbox (on the loop). Returns the number of reports."""
        inbox = self._inbox
        if not inbox:
            return 0
        ts: list[int] = []
        idx: list[int] = []
        val: list[float] = []
        qual: list[int] = []
        n = 0
        entry_ids: dict[str, bytes] = {}
        while inbox:
            recv_ns, message = inbox.popleft()
            n += 1
            if self._seed and recv_ns > self._seed_until_ns:
                self._seed.clear()  # the replay after the restart is long over
            try:
                rep = decode_report_fast(message)
            except MmsError as exc:
                self._counters["report_errors"] += 1
                self._last_error = f"undecodable report: {exc}"
                continue
            r = self._by_rpt_id.get(rep.rpt_id)
            if r is None:
                self._counters["reports_unknown"] += 1
                continue
            self._counters["reports"] += 1
            if rep.buf_ovfl:
                self._counters["buffer_overflows"] += 1
            self._extract(r, rep, recv_ns, ts, idx, val, qual)
            if r.buffered and rep.entry_id is not None:
                entry_ids[r.ref] = rep.entry_id
        if idx:
            self._emit(ts, idx, val, qual)
        self._entry_ids.update(entry_ids)  # recorded once the readings are handed over
        return n

    def _extract(self, r: _Rcb, rep: FastReport, recv_ns: int, ts: list[int], idx: list[int], val: list[float],
                 qual: list[int]) -> None:
        values, gi = rep.values, rep.gi
        self._counters["report_entries"] += len(values)
        seed = self._seed
        for mi, data in values.items():
            for ex in r.by_member.get(mi, ()):
                v, q, t = self._reading(data, ex, values, recv_ns)
                if seed and ex.point in seed and self._replayed(ex.point, v, q, t):
                    self._counters["replayed_skipped"] += 1
                    continue  # the IED re-sends what the store committed before the gateway restarted
                if mi in gi and ex.point in self._fresh and self._last[ex.point] == (v, q, t):
                    continue  # the GI repeats what this session already delivered
                self._add(ex.point, v, q, t, ts, idx, val, qual)

    def _reading(self, data: Any, ex: _Extract, values: dict[int, Any], recv_ns: int) -> tuple[float, int, int]:
        if isinstance(data, DataAccessError):
            return math.nan, access_error_quality(data.code) | int(Q.GATEWAY_TIME), recv_ns
        raw = _walk(data, ex.path)
        v = convert_value(raw) if raw is not None else None
        q = 0
        if ex.q is not None and ex.q[0] in values:
            qd = _walk(values[ex.q[0]], ex.q[1])
            if isinstance(qd, BitStringData):
                q = quality_from_bits(qd.value)
        elif self._last[ex.point] is not None:
            q = self._last[ex.point][1] & ~int(Q.GATEWAY_TIME | Q.CLOCK_NOT_SYNCHRONISED)  # type: ignore[index]
        t = recv_ns
        td = _walk(values[ex.t[0]], ex.t[1]) if ex.t is not None and ex.t[0] in values else None
        t, q = _stamp(td, q, recv_ns)
        if v is None:
            return math.nan, Q_NOT_NUMERIC | (q & int(Q.GATEWAY_TIME)), t
        return v, q, t

    def _add(self, i: int, v: float, q: int, t: int, ts: list[int], idx: list[int], val: list[float],
             qual: list[int]) -> None:
        """Queue one reading for the next :meth:`_emit` and remember it as the point's last (GI dedupe)."""
        if self._seed:
            self._seed.pop(i, None)  # delivered: the in-session logic takes over
        self._last[i] = (v, q, t)
        self._fresh.add(i)
        ts.append(t)
        idx.append(i)
        val.append(v)
        qual.append(q)

    def _emit(self, ts: list[int], idx: list[int], val: list[float], qual: list[int]) -> None:
        ii = np.asarray(idx, dtype=np.intp)
        self._deliver(ReadingBatch.of(ts, self._ids[ii], val, qual))

    # --- polling --------------------------------------------------------------------------------------

    async def _poll(self, pts: list[_Point]) -> list[str]:
        """Read value, q and t of ``pts`` and deliver them. Returns the names with a bad reference."""
        if not pts:
            return []
        client = self._require()
        bad: list[str] = []
        ts: list[int] = []
        idx: list[int] = []
        val: list[float] = []
        qual: list[int] = []
        per = READ_CHUNK // 3
        for k in range(0, len(pts), per):
            chunk = pts[k:k + per]
            names = [ObjectName(it, p.domain) for p in chunk for it in (p.value_item, p.q_item, p.t_item)]
            try:
                results = await self._call(client.read_many, names)
            except MmsError as exc:
                raise DriverError(f"read failed: {exc}") from exc
            now = self._wall()
            for j, p in enumerate(chunk):
                rv, rq, rt = results[3 * j:3 * j + 3]
                if isinstance(rv, DataAccessError):
                    q = access_error_quality(rv.code)
                    if q == Q_BAD_REF:
                        bad.append(f"{p.cfg.name} ({p.domain}/{p.value_item}: {rv})")
                    v, qw, t = math.nan, q | int(Q.GATEWAY_TIME), now
                else:
                    num = convert_value(rv)
                    qw = quality_from_bits(rq.value) if isinstance(rq, BitStringData) else 0
                    t, qw = _stamp(rt if isinstance(rt, TimestampData) else None, qw, now)
                    if num is None:
                        v, qw = math.nan, Q_NOT_NUMERIC | (qw & int(Q.GATEWAY_TIME))
                    else:
                        v = num
                self._add(p.index, v, qw, t, ts, idx, val, qual)
        self._counters["polls"] += 1
        if bad:
            self._counters["bad_references"] += len(bad)
        self._emit(ts, idx, val, qual)
        return bad

    # --- controls -------------------------------------------------------------------------------------

    def _control_point(self, req: ControlRequest) -> _Point | ControlResult:
        if req.device != self.device.name:
            return ControlResult(ControlStatus.REJECTED, f"device {req.device!r} is not on link {self.link.name}")
        p = self._by_name.get(req.point)
        if p is None:
            return ControlResult(ControlStatus.NOT_SUPPORTED, f"{req.device}.{req.point}: no such point")
        if not p.cfg.writable:
            return ControlResult(ControlStatus.NOT_SUPPORTED, f"{req.device}.{req.point} is not writable")
        if not self.connected:
            return ControlResult(ControlStatus.LINK_DOWN, f"link {self.link.name} is not connected")
        return p

    async def select(self, request: ControlRequest) -> ControlResult:
        p = self._control_point(request)
        if isinstance(p, ControlResult):
            return p
        return await self._run_control(self._select_blocking, p, request)

    async def operate(self, request: ControlRequest) -> ControlResult:
        p = self._control_point(request)
        if isinstance(p, ControlResult):
            return p
        return await self._run_control(self._operate_blocking, p, request)

    async def cancel(self, request: ControlRequest) -> ControlResult:
        p = self._control_point(request)
        if isinstance(p, ControlResult):
            return p
        return await self._run_control(self._cancel_blocking, p, request)

    async def _run_control(self, fn: Callable[[MmsClient, _Point, ControlRequest], ControlResult], p: _Point,
                           req: ControlRequest) -> ControlResult:
        client = self._client
        if client is None:
            return ControlResult(ControlStatus.LINK_DOWN, f"link {self.link.name} is not connected")
        self._counters["controls"] += 1
        try:
            result = await asyncio.to_thread(fn, client, p, req)
        except (MmsConnectionError, MmsTimeout) as exc:
            result = ControlResult(ControlStatus.NO_RESPONSE, f"{p.cfg.name}: {exc}")
        except (MmsError, ValueError) as exc:
            result = ControlResult(ControlStatus.REJECTED, f"{p.cfg.name}: {exc}")
        if not result.ok:
            self._counters["controls_refused"] += 1
        return result

    def _ctl_model(self, client: MmsClient, p: _Point) -> int:
        m = self._ctl_models.get(p.cfg.name)
        if m is None:
            m = int(getattr(client.read(ObjectName(f"{p.cf_item}$ctlModel", p.domain)), "value", -1))
            self._ctl_models[p.cfg.name] = m
        return m

    def _ctl_value(self, client: MmsClient, p: _Point, req: ControlRequest) -> IECData:
        """The ctlVal for ``req``, typed like the object's Oper.ctlVal. Raises ValueError for a value that does not
        fit."""
        t = self._type(client, ObjectName(f"{p.control_item}$Oper$ctlVal", p.domain))
        on = {ControlAction.LATCH_ON: True, ControlAction.CLOSE: True, ControlAction.PULSE_ON: True,
              ControlAction.LATCH_OFF: False, ControlAction.TRIP: False, ControlAction.PULSE_OFF: False}
        if isinstance(t, PrimitiveType) and t.kind == "boolean":
            if req.action in on:
                return BoolData(on[req.action])
            vt = self._type(client, ObjectName(p.value_item, p.domain))
            dbpos = isinstance(vt, PrimitiveType) and vt.kind == "bit-string" and abs(vt.size or 0) == 2
            allowed = {1.0: False, 2.0: True} if dbpos else {0.0: False, 1.0: True}
            if req.value not in allowed:
                what = "1 (off) or 2 (on)" if dbpos else "0 or 1"
                raise ValueError(f"{p.cfg.name}: value {req.value:g} is not {what}")
            return BoolData(allowed[req.value])
        if req.action is not ControlAction.VALUE:
            raise ValueError(f"{p.cfg.name}: action {req.action.value} needs a boolean control (ctlVal is {t})")
        if isinstance(t, PrimitiveType):
            if t.kind == "integer":
                return IntData(_integral(req.value, p))
            if t.kind == "unsigned":
                return UIntData(_integral(req.value, p))
            if t.kind == "float":
                return FloatData(float(req.value), double=(t.size or 0) > 32)
            if t.kind == "bit-string":  # Tcmd: 0 stop, 1 lower, 2 higher
                n = _integral(req.value, p)
                size = abs(t.size or 2)
                if not 0 <= n < (1 << size):
                    raise ValueError(f"{p.cfg.name}: {n} does not fit {size} bits")
                return BitStringData(bytes([(n << (8 - size)) & 0xFF]), 8 - size)
        if isinstance(t, StructureType) and t.components:  # AnalogueValue {i?, f?}
            names = [c for c, _ in t.components]
            return StructureData([FloatData(float(req.value)) if c == "f" else IntData(_integral(req.value, p))
                                  for c in names])
        raise ValueError(f"{p.cfg.name}: unsupported ctlVal type {t}")

    def _refusal(self, watch: _Watch, exc: Exception, stage: str, sel: _Selection | None) -> ControlResult:
        err = watch.last_error(ERROR_GRACE_S)
        if err is None:
            status = ControlStatus.SELECT_FAILED if stage == "select" else ControlStatus.REJECTED
            return ControlResult(status, f"{stage} refused: {exc}")
        cause = err.add_cause
        status = control_status(cause, select_stage=stage == "select")
        if cause == _CAUSE_NOT_SELECTED and sel is not None and (
                sel.sbo_timeout_s is None or time.monotonic() - sel.at >= sel.sbo_timeout_s):
            status = ControlStatus.SELECT_TIMEOUT
        detail = f"{stage} refused: AddCause {cause} ({err.add_cause_name})"
        return ControlResult(status, detail, cause)

    def _origin(self, req: ControlRequest) -> ctl.Origin:
        return ctl.Origin(ORIGIN_CATEGORY, req.origin.encode("utf-8")[:64])

    def _with_watch(self, client: MmsClient, p: _Point) -> _Watch:
        w = _Watch(p.domain, p.control_item)
        client.add_report_listener(w)
        return w

    def _select_blocking(self, client: MmsClient, p: _Point, req: ControlRequest) -> ControlResult:
        model = self._ctl_model(client, p)
        if model not in (ctl.CTL_MODEL_SBO_NORMAL, ctl.CTL_MODEL_SBO_ENHANCED):
            return ControlResult(ControlStatus.NOT_SUPPORTED,
                                 f"{p.cfg.name} is {ctl.CTL_MODELS.get(model, model)}: nothing to select")
        try:
            ctl_val = self._ctl_value(client, p, req)
        except ValueError as exc:
            return ControlResult(ControlStatus.FORMAT_ERROR, str(exc))
        timeout = client.read_many([ObjectName(f"{p.cf_item}$sboTimeout", p.domain)])[0]
        sbo_s = timeout.value / 1000 if isinstance(timeout, UIntData | IntData) and timeout.value > 0 else None
        num = ctl.next_ctl_num()
        watch = self._with_watch(client, p)
        try:
            if model == ctl.CTL_MODEL_SBO_NORMAL:
                try:
                    selected = client.read(ObjectName(f"{p.control_item}$SBO", p.domain))
                except DataAccessError as exc:
                    return self._refusal(watch, exc, "select", None)
                if not (isinstance(selected, VisibleStringData) and selected.value):
                    return ControlResult(ControlStatus.SELECT_FAILED, "the IED did not select the object")
            else:
                value = ctl.oper_value(ctl_val, origin=self._origin(req), ctl_num=num)
                try:
                    client.write(ObjectName(f"{p.control_item}$SBOw", p.domain), value)
                except DataAccessError as exc:
                    return self._refusal(watch, exc, "select", None)
        finally:
            client.remove_report_listener(watch)
        self._selected[p.cfg.name] = _Selection(ctl_val, num, time.monotonic(), sbo_s)
        return ControlResult(ControlStatus.SUCCESS, f"selected, ctlNum {num}")

    def _operate_blocking(self, client: MmsClient, p: _Point, req: ControlRequest) -> ControlResult:
        model = self._ctl_model(client, p)
        if model not in ctl.CTL_MODELS or model == ctl.CTL_MODEL_STATUS_ONLY:
            return ControlResult(ControlStatus.NOT_SUPPORTED, f"{p.cfg.name} is status-only (ctlModel {model})")
        try:
            ctl_val = self._ctl_value(client, p, req)
        except ValueError as exc:
            return ControlResult(ControlStatus.FORMAT_ERROR, str(exc))
        sbo = model in (ctl.CTL_MODEL_SBO_NORMAL, ctl.CTL_MODEL_SBO_ENHANCED)
        sel = self._selected.pop(p.cfg.name, None) if sbo else None
        num = sel.ctl_num if sel is not None else ctl.next_ctl_num()
        origin = self._origin(req)
        watch = self._with_watch(client, p)
        try:
            try:
                client.write(ObjectName(f"{p.control_item}$Oper", p.domain),
                             ctl.oper_value(ctl_val, origin=origin, ctl_num=num))
            except DataAccessError as exc:
                result = self._refusal(watch, exc, "operate", sel)
                if sbo and result.status not in (ControlStatus.NO_SELECT, ControlStatus.SELECT_TIMEOUT):
                    with contextlib.suppress(MmsError):  # release the selection now rather than at sboTimeout
                        client.write(ObjectName(f"{p.control_item}$Cancel", p.domain),
                                     ctl.cancel_value(ctl_val, origin=origin, ctl_num=num))
                return result
            if model in (ctl.CTL_MODEL_DIRECT_ENHANCED, ctl.CTL_MODEL_SBO_ENHANCED):
                wait = max(TERMINATION_MIN_S, 10 * self.device.timeout_s)
                terms = watch.termination(wait)
                if terms is None:
                    return ControlResult(ControlStatus.NO_RESPONSE, f"no CommandTermination within {wait:g} s")
                if terms[0] is not None:
                    e = terms[0]
                    return ControlResult(ControlStatus.TERMINATION_FAILED,
                                         f"negative CommandTermination: AddCause {e.add_cause} ({e.add_cause_name})",
                                         e.add_cause)
                return ControlResult(ControlStatus.SUCCESS, f"ctlNum {num}, CommandTermination received")
            return ControlResult(ControlStatus.SUCCESS, f"ctlNum {num}")
        finally:
            client.remove_report_listener(watch)

    def _cancel_blocking(self, client: MmsClient, p: _Point, req: ControlRequest) -> ControlResult:
        model = self._ctl_model(client, p)
        if model not in (ctl.CTL_MODEL_SBO_NORMAL, ctl.CTL_MODEL_SBO_ENHANCED, ctl.CTL_MODEL_DIRECT_ENHANCED):
            return ControlResult(ControlStatus.NOT_SUPPORTED, f"{p.cfg.name}: ctlModel {model} has no Cancel")
        sel = self._selected.pop(p.cfg.name, None)
        try:
            ctl_val = sel.ctl_val if sel is not None else self._ctl_value(client, p, req)
        except ValueError as exc:
            return ControlResult(ControlStatus.FORMAT_ERROR, str(exc))
        num = sel.ctl_num if sel is not None else ctl.next_ctl_num()
        watch = self._with_watch(client, p)
        try:
            client.write(ObjectName(f"{p.control_item}$Cancel", p.domain),
                         ctl.cancel_value(ctl_val, origin=self._origin(req), ctl_num=num))
        except DataAccessError as exc:
            return self._refusal(watch, exc, "cancel", None)
        finally:
            client.remove_report_listener(watch)
        return ControlResult(ControlStatus.SUCCESS, "selection cancelled")


def _integral(value: float, p: _Point) -> int:
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{p.cfg.name}: {value} is not an integer")
    return int(value)


def _stamp(td: Any, q: int, recv_ns: int) -> tuple[int, int]:
    """(ts, q) from a t value: source time unless missing, zero or from a failed clock."""
    if not isinstance(td, TimestampData):
        return recv_ns, q | int(Q.GATEWAY_TIME)
    t = _ns(td.value)
    if t == 0:
        return recv_ns, q | int(Q.GATEWAY_TIME)
    use, extra = time_quality(td.quality)
    return (t if use else recv_ns), q | extra


def _close_opened(fut: asyncio.Future[MmsClient]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()


def _connect(host: str, port: int, timeout: float, on_report: Callable[[InformationReport], None]) -> MmsClient:
    return MmsClient.connect(host, port, timeout=timeout, on_information_report=on_report)


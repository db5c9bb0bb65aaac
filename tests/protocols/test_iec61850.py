"""The IEC 61850 MMS driver against a real libiec61850 server (hil_tests.iec61850_server, built from the shipped
ICD) over loopback: reads, buffered and unbuffered reports, BRCB resume, controls and their refusals.

The helpers at the top (ICD, Collector, link builders, pump_until) are shared with test_scl.py."""

from __future__ import annotations

import asyncio
import contextlib
import math
import platform
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

if platform.machine() != "x86_64":
    pytest.skip("pyiec61850 (the libiec61850 test server) ships x86_64 wheels only", allow_module_level=True)

from open61850.data import BitStringData, BoolData, FloatData, IntData, VisibleStringData
from open61850.mms import InformationReport, MmsClient, ObjectName, OptFlds, decode_report, is_report, rcb

from gateway.config import DeviceConfig, Iec61850Settings, LinkConfig, PointConfig
from gateway.model import Q, ReadingBatch
from hil_tests import iec61850_server as sim
from hil_tests.iec61850_server import Iec61850Server
from hil_tests.net import free_port
from protocols import iec61850 as iec61850_driver
from protocols.iec61850 import (
    Iec61850Session,
    access_error_quality,
    control_status,
    convert_value,
    decode_report_fast,
    quality_from_bits,
    time_quality,
)
from protocols.session import ControlAction, ControlMode, ControlRequest, ControlStatus, DriverError, SessionLost
from tests.waiting import wait_for, wait_for_async, wait_until

ICD = Path(__file__).resolve().parent.parent / "data" / "ied1.icd"
BRCB = "IED1LD0/LLN0.BR.brcbMeas01"
URCB = "IED1LD0/LLN0.RP.urcbStatus01"
DEV = "ied1"


def pt(name: str, ref: str, da: str, fc: str, *, unit: str = "", writable: bool = False,
       period_s: float = 1.0) -> PointConfig:
    return PointConfig(name=name, kind="attribute", ref=ref, da=da, fc=fc, unit=unit, writable=writable,
                       period_s=period_s)


POINTS: tuple[PointConfig, ...] = (
    pt("Ia", "IED1LD0/MMXU1.A.phsA", "cVal.mag.f", "MX", unit="A"),
    pt("Ib", "IED1LD0/MMXU1.A.phsB", "cVal.mag.f", "MX", unit="A"),
    pt("Hz", "IED1LD0/MMXU1.Hz", "mag.f", "MX", unit="Hz"),
    pt("TotW", "IED1LD0/MMXU1.TotW", "mag.f", "MX", unit="kW"),
    pt("CB", "IED1LD0/XCBR1.Pos", "stVal", "ST"),
    pt("Pos1", "IED1LD0/CSWI1.Pos", "stVal", "ST", writable=True),
    pt("Pos2", "IED1LD0/CSWI2.Pos", "stVal", "ST", writable=True),
    pt("Ind1", "IED1LD0/GGIO1.Ind1", "stVal", "ST"),
    pt("Beh", "IED1LD0/MMXU1.Beh", "stVal", "ST", period_s=0.5),
)


def link(port: int, points: Sequence[PointConfig] = POINTS, reports: Sequence[str] = (BRCB, URCB),
         integrity_period_s: float = 0.0) -> LinkConfig:
    dev = DeviceConfig(name=DEV, timeout_s=2.0, points=tuple(points),
                       iec61850=Iec61850Settings(reports=tuple(reports), integrity_period_s=integrity_period_s))
    return LinkConfig(name="bay1", protocol="iec61850", host="127.0.0.1", port=port, connect_timeout_s=2.0,
                      devices=(dev,))


def ids_for(lk: LinkConfig) -> dict[str, int]:
    return {f"{d.name}.{p.name}": 100 + i for d in lk.devices for i, p in enumerate(d.points)}


class Collector:
    """``deliver`` for a driver: keeps every batch (called on the loop)."""

    def __init__(self, ids: Mapping[str, int]) -> None:
        self.ids = dict(ids)
        self.batches: list[ReadingBatch] = []

    def __call__(self, batch: ReadingBatch) -> None:
        assert len(batch) > 0
        self.batches.append(batch)

    def of(self, name: str, since: int = 0) -> list[tuple[int, float, int]]:
        """(ts, value, quality) of point ``ied1.<name>`` in delivery order, from batch ``since`` on."""
        pid = self.ids[f"{DEV}.{name}"] if "." not in name else self.ids[name]
        out = []
        for b in self.batches[since:]:
            for k in np.flatnonzero(b.point_id == pid):
                out.append((int(b.ts[k]), float(b.value[k]), int(b.quality[k])))
        return out

    def values(self, name: str, since: int = 0) -> list[float]:
        return [v for _, v, _ in self.of(name, since)]

    def last(self, name: str) -> tuple[int, float, int]:
        r = self.of(name)
        assert r, f"no reading of {name} yet"
        return r[-1]


async def pump_until(driver: Iec61850Session, cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Give the driver idle time (as the runner does) until ``cond()`` holds."""

    async def step() -> bool:
        await driver.idle(0.02)
        return cond()

    await wait_for_async(step, timeout=timeout, what=what)


LD = "IED1LD0"
SBO_OBJ = f"{LD}/CSWI2.Pos"
DIRECT_OBJ = f"{LD}/CSWI1.Pos"


@pytest.fixture
def server() -> Iterator[Iec61850Server]:
    with Iec61850Server(ICD) as srv:
        yield srv
    assert not sim.DIRECTOR_ERRORS, sim.DIRECTOR_ERRORS


@contextlib.asynccontextmanager
async def started(lk: LinkConfig) -> AsyncIterator[tuple[Iec61850Session, Collector]]:
    """A driver for ``lk``, connected and started (reports enabled, GI done); closed on exit."""
    ids = ids_for(lk)
    col = Collector(ids)
    drv = Iec61850Session(lk, ids, col)
    await drv.connect()
    try:
        await drv.start_session()
        yield drv, col
    finally:
        drv.close()


@pytest.fixture
async def session(server: Iec61850Server) -> AsyncIterator[tuple[Iec61850Session, Collector]]:
    async with started(link(server.port)) as started_session:
        yield started_session


def at(seconds: float) -> datetime:
    return datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC) + timedelta(seconds=seconds)


def ns(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def req(point: str, value: float = 0.0, **kw: object) -> ControlRequest:
    return ControlRequest(device=DEV, point=point, value=value, origin="alice", **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------
# Pure mappings
# ----------------------------------------------------------------------------------------------------


def test_quality_bits_map_onto_q() -> None:
    assert quality_from_bits(b"\x00\x00") == Q.GOOD
    assert quality_from_bits(b"\x40\x00") == Q.INVALID  # validity 01
    assert quality_from_bits(b"\xc0\x00") == Q.QUESTIONABLE  # validity 11
    assert quality_from_bits(b"\x80\x00") == Q.INVALID  # reserved 10 -> invalid
    # questionable + failure (bit 6) + old-data (bit 7) + test (bit 11) + operator-blocked (bit 12)
    raw = bytes([0b11000011, 0b00011000])
    assert quality_from_bits(raw) == Q.QUESTIONABLE | Q.FAILURE | Q.OLD_DATA | Q.TEST | Q.OPERATOR_BLOCKED
    assert quality_from_bits(bytes([0b00100000, 0])) == Q.OVERFLOW
    assert quality_from_bits(bytes([0, 0b00100000])) == Q.SUBSTITUTED


def test_time_quality_and_values() -> None:
    assert time_quality(0x00) == (True, 0)
    assert time_quality(0x0A) == (True, 0)  # accuracy bits only
    assert time_quality(0x80) == (True, 0)  # leap seconds known
    assert time_quality(0x20) == (True, Q.CLOCK_NOT_SYNCHRONISED)
    assert time_quality(0x40) == (False, Q.CLOCK_NOT_SYNCHRONISED | Q.GATEWAY_TIME)  # clock failure
    # Dbpos: 2-bit string, first bit most significant -> 0 intermediate, 1 off, 2 on, 3 bad
    assert [convert_value(BitStringData(bytes([b << 6]), 6)) for b in range(4)] == [0.0, 1.0, 2.0, 3.0]
    assert convert_value(FloatData(1.5)) == 1.5
    assert convert_value(BoolData(True)) == 1.0
    assert convert_value(IntData(-3)) == -3.0
    assert convert_value(VisibleStringData("x")) is None
    assert access_error_quality(10) == Q.INVALID | Q.BAD_REFERENCE
    assert access_error_quality(2) == Q.QUESTIONABLE | Q.OLD_DATA
    assert access_error_quality(1) == Q.INVALID | Q.FAILURE


def test_add_cause_table() -> None:
    assert control_status(18) is ControlStatus.NO_SELECT
    assert control_status(10) is ControlStatus.BLOCKED
    assert control_status(2) is ControlStatus.LOCAL
    assert control_status(12) is ControlStatus.ALREADY_ACTIVE
    assert control_status(1) is ControlStatus.NOT_SUPPORTED
    assert control_status(22) is ControlStatus.REJECTED
    assert control_status(22, select_stage=True) is ControlStatus.SELECT_FAILED


def test_one_device_per_link() -> None:
    lk = link(102)
    two = lk.__class__(name="x", protocol="iec61850", devices=(lk.devices[0], lk.devices[0]))
    with pytest.raises(ValueError, match="exactly one IED"):
        Iec61850Session(two, ids_for(lk), lambda b: None)


# ----------------------------------------------------------------------------------------------------
# Reads and reports
# ----------------------------------------------------------------------------------------------------


async def test_start_reads_every_point_and_polls_the_rest(
    server: Iec61850Server, session: tuple[Iec61850Session, Collector]
) -> None:
    drv, col = session
    st = drv.status()
    assert st["reports_enabled"] == [BRCB, URCB]
    assert st["polled_points"] == 1  # only MMXU1.Beh is in no data set
    assert {j.name for j in drv.jobs()} == {"poll_0.5", "poll_1"}
    await pump_until(drv, lambda: all(col.of(p.name) for p in POINTS), "a first reading of every point")
    assert col.last("Beh")[1] == 1.0  # Beh "on" from the ICD's Val
    # a poll reads value, q and t of the data object
    server.update(f"{LD}/MMXU1.Beh", "stVal", 3, quality=int(Q.QUESTIONABLE | Q.OLD_DATA), t=at(1))
    await drv.run_job("poll_0.5")
    ts, v, q = col.last("Beh")
    assert (v, q) == (3.0, Q.QUESTIONABLE | Q.OLD_DATA)
    assert abs(ts - ns(at(1))) < 2_000
    await drv.run_job("poll_1")  # its points all arrive by report: nothing to read, no error


async def test_buffered_report_carries_value_quality_and_time(
    server: Iec61850Server, session: tuple[Iec61850Session, Collector]
) -> None:
    drv, col = session
    await pump_until(drv, lambda: bool(col.of("Ia")), "the GI")
    server.update(f"{LD}/MMXU1.A.phsA", "cVal.mag.f", 412.5, t=at(2))
    await pump_until(drv, lambda: col.values("Ia")[-1] == 412.5, "Ia by report")
    ts, _, q = col.last("Ia")
    assert q == Q.GOOD
    assert abs(ts - ns(at(2))) < 2_000
    # quality change + unsynchronised clock
    bad = int(Q.QUESTIONABLE | Q.FAILURE | Q.INACCURATE)
    server.update(f"{LD}/MMXU1.A.phsA", "cVal.mag.f", 413.0, quality=bad, t=at(3),
                  time_quality=sim.TQ_CLOCK_NOT_SYNCHRONISED)
    await pump_until(drv, lambda: col.values("Ia")[-1] == 413.0, "Ia with bad quality")
    ts, _, q = col.last("Ia")
    assert q == bad | Q.CLOCK_NOT_SYNCHRONISED
    assert abs(ts - ns(at(3))) < 2_000
    # a double-point position
    server.update(f"{LD}/XCBR1.Pos", "stVal", 2, t=at(4))
    await pump_until(drv, lambda: col.values("CB")[-1] == 2.0, "XCBR1.Pos on")
    server.update(f"{LD}/XCBR1.Pos", "stVal", 3, t=at(5))
    await pump_until(drv, lambda: col.values("CB")[-1] == 3.0, "XCBR1.Pos bad-state")
    assert drv.status()["reports"] >= 3  # type: ignore[operator]


async def test_unbuffered_report_and_clock_failure(
    server: Iec61850Server, session: tuple[Iec61850Session, Collector]
) -> None:
    drv, col = session
    await pump_until(drv, lambda: bool(col.of("Ind1")), "the URCB GI")
    before = drv.status().get("reports", 0)
    server.update(f"{LD}/GGIO1.Ind1", "stVal", True, t=at(10), time_quality=sim.TQ_CLOCK_FAILURE)
    await pump_until(drv, lambda: col.values("Ind1")[-1] == 1.0, "Ind1 by report")
    ts, _, q = col.last("Ind1")
    assert q == Q.GATEWAY_TIME | Q.CLOCK_NOT_SYNCHRONISED  # the IED's time is worthless: receive time instead
    assert abs(ts - ns(at(10))) > 10**9
    assert drv.status()["reports"] > before  # type: ignore[operator]


async def test_integrity_reports(server: Iec61850Server) -> None:
    lk = link(server.port, reports=(BRCB,), integrity_period_s=0.2)
    async with started(lk) as (drv, col):
        # nothing changes, yet Hz keeps arriving: GI, then integrity reports
        await pump_until(drv, lambda: len(col.of("Hz")) >= 3, "integrity reports")


async def test_brcb_resume_after_server_drop_delivers_every_change_once(
    server: Iec61850Server, session: tuple[Iec61850Session, Collector]
) -> None:
    drv, col = session
    await pump_until(drv, lambda: bool(col.of("Ia")) and bool(col.of("Hz")), "the GI")
    for k in range(3):
        server.update(f"{LD}/MMXU1.A.phsA", "cVal.mag.f", float(k), t=at(20 + k))
    await pump_until(drv, lambda: col.values("Ia")[-1] == 2.0, "changes before the drop")

    server.drop_connections()
    with pytest.raises(SessionLost):
        await pump_until(drv, lambda: False, "the lost association", timeout=10)
    drv.close()
    assert not drv.connected
    mark = len(col.batches)
    # changes while nobody is connected: the BRCB buffers them
    changes = [100.0 + k for k in range(10)]
    for k, v in enumerate(changes):
        server.update(f"{LD}/MMXU1.A.phsA", "cVal.mag.f", v, t=at(40 + k))
    server.update(f"{LD}/XCBR1.Pos", "stVal", 1, t=at(60))

    await drv.connect()
    await drv.start_session()
    await pump_until(drv, lambda: col.values("Ia", mark)[-1:] == [changes[-1]] and bool(col.of("Hz", mark)),
                     "the buffered changes and the GI")
    # a few more idle rounds so that anything late would show up
    for _ in range(5):
        await drv.idle(0.02)
    ia = col.of("Ia", mark)
    assert [v for _, v, _ in ia] == changes  # no loss, no duplicate (the GI's copy of the last one is dropped)
    assert [t for t, _, _ in ia] == sorted(t for t, _, _ in ia)
    assert abs(ia[0][0] - ns(at(40))) < 2_000
    assert col.values("CB", mark) == [1.0]
    assert len(col.of("Hz", mark)) == 1  # unchanged: exactly one GI reading, clearing the runner's lost mark
    st = drv.status()
    assert st["resumes"] == 1
    assert "resume_failures" not in st


async def test_resume_refused_falls_back_to_fresh_enable(server: Iec61850Server) -> None:
    lk = link(server.port, reports=(BRCB,))
    async with started(lk) as (drv, col):
        await pump_until(drv, lambda: bool(col.of("Ia")), "the GI")
        drv.close()
        drv._entry_ids[BRCB] = b"\xde\xad\xbe\xef\x00\x00\x00\x01"  # an entry the IED never had
        await drv.connect()
        await drv.start_session()
        assert drv.status()["resume_failures"] == 1
        mark = len(col.batches)
        server.update(f"{LD}/MMXU1.A.phsA", "cVal.mag.f", 7.0)
        await pump_until(drv, lambda: 7.0 in col.values("Ia", mark), "reports after the fresh enable")


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


async def test_bad_reference_is_marked_not_fatal(server: Iec61850Server) -> None:
    pts = (*POINTS, pt("Ghost", f"{LD}/MMXU1.Nope", "stVal", "ST", period_s=0.5))
    lk = link(server.port, points=pts, reports=())
    async with started(lk) as (drv, col):  # does not raise: the runner would reconnect forever
        _, v, q = col.last("Ghost")
        assert math.isnan(v)
        assert q == Q.INVALID | Q.BAD_REFERENCE | Q.GATEWAY_TIME
        assert "Ghost" in str(drv.status()["last_error"])
        server.update(f"{LD}/MMXU1.Beh", "stVal", 5)
        with pytest.raises(DriverError, match="Ghost") as info:
            await drv.run_job("poll_0.5")
        assert not isinstance(info.value, SessionLost)
        assert col.values("Beh")[-1] == 5.0  # the good point of the same poll was delivered
        assert drv.connected


async def test_unknown_report_block_falls_back_to_polling(server: Iec61850Server) -> None:
    lk = link(server.port, reports=(f"{LD}/LLN0.BR.brcbNope01", URCB))
    async with started(lk) as (drv, col):
        st = drv.status()
        assert st["rcb_errors"] == 1
        assert st["reports_enabled"] == [URCB]
        server.update(f"{LD}/MMXU1.A.phsA", "cVal.mag.f", 55.0)
        await drv.run_job("poll_1")
        assert col.values("Ia")[-1] == 55.0


async def test_connect_failure_and_lost_association(server: Iec61850Server) -> None:
    lk = link(free_port())
    drv = Iec61850Session(lk, ids_for(lk), lambda b: None)
    with pytest.raises(SessionLost):
        await drv.connect()
    assert not drv.connected
    drv.close()

    lk = link(server.port)
    ids = ids_for(lk)
    drv = Iec61850Session(lk, ids, Collector(ids))
    await drv.connect()
    try:
        await drv.start_session()
        server.drop_connections()
        await wait_for(lambda: not drv.connected, what="the client to see the drop")
        with pytest.raises(SessionLost):  # idle first delivers what arrived before the drop, then raises
            await pump_until(drv, lambda: False, "the lost association", timeout=10)
        with pytest.raises(SessionLost):
            await drv.run_job("poll_1")
        r = await drv.operate(req("Pos1", 2))
        assert r.status is ControlStatus.LINK_DOWN
    finally:
        drv.close()
    drv.close()  # idempotent


# ----------------------------------------------------------------------------------------------------
# Controls
# ----------------------------------------------------------------------------------------------------


async def test_direct_control(server: Iec61850Server, session: tuple[Iec61850Session, Collector]) -> None:
    drv, col = session
    r = await drv.operate(req("Pos1", 2))  # Dbpos point: 2 = on -> ctlVal true
    assert r.status is ControlStatus.SUCCESS, r
    # normal security: libiec61850 answers the Oper, then executes on its next tick
    wait_until(lambda: len(server.operations_snapshot()) == 1, what="the execution on the IED")
    ops = server.operations_snapshot()
    assert [(o.object_ref, o.ctl_val, o.or_cat) for o in ops] == [(DIRECT_OBJ, True, 2)]
    assert server.origin(DIRECT_OBJ) == (2, b"alice")
    await pump_until(drv, lambda: col.values("Pos1")[-1] == 2.0, "the new position by report")
    r = await drv.operate(req("Pos1", action=ControlAction.TRIP))
    assert r.ok
    await pump_until(drv, lambda: col.values("Pos1")[-1] == 1.0, "the open position")
    # select makes no sense on a direct object; a value outside the Dbpos codes is refused before sending
    assert (await drv.select(req("Pos1", 2, mode=ControlMode.SBO))).status is ControlStatus.NOT_SUPPORTED
    assert (await drv.operate(req("Pos1", 7))).status is ControlStatus.FORMAT_ERROR
    assert (await drv.operate(req("CB", 2))).status is ControlStatus.NOT_SUPPORTED  # not writable
    assert len(server.operations_snapshot()) == 2


async def test_direct_control_refused(server: Iec61850Server, session: tuple[Iec61850Session, Collector]) -> None:
    drv, _ = session
    server.control_behaviour(DIRECT_OBJ).refuse_add_cause = 2
    r = await drv.operate(req("Pos1", 2))
    # normal security: libiec61850 sends no LastApplError, only the refused write
    assert r.status is ControlStatus.REJECTED
    assert "object-access-denied" in r.detail
    assert server.operations_snapshot() == []


async def test_sbo_enhanced_success(server: Iec61850Server, session: tuple[Iec61850Session, Collector]) -> None:
    drv, col = session
    r = await drv.select(req("Pos2", 2, mode=ControlMode.SBO))
    assert r.status is ControlStatus.SUCCESS, r
    wait_until(lambda: server.is_selected(SBO_OBJ), what="stSeld (libiec61850 updates it on its next tick)")
    r = await drv.operate(req("Pos2", 2, mode=ControlMode.SBO))
    assert r.status is ControlStatus.SUCCESS, r
    assert "CommandTermination" in r.detail
    assert server.origin(SBO_OBJ) == (2, b"alice")
    await pump_until(drv, lambda: col.values("Pos2")[-1] == 2.0, "the position by report")
    wait_until(lambda: not server.is_selected(SBO_OBJ), what="the selection to end with the command")


async def test_sbo_slow_execution_waits_for_termination(
    server: Iec61850Server, session: tuple[Iec61850Session, Collector]
) -> None:
    drv, _ = session
    server.control_behaviour(SBO_OBJ).slow_s = 0.3
    assert (await drv.select(req("Pos2", 1, mode=ControlMode.SBO))).ok
    r = await drv.operate(req("Pos2", 1, mode=ControlMode.SBO))
    assert r.status is ControlStatus.SUCCESS, r
    assert server.get(f"{SBO_OBJ}.stVal") == 1.0  # returned only after the execution ended


async def test_sbo_operate_without_select(server: Iec61850Server, session: tuple[Iec61850Session, Collector]) -> None:
    drv, _ = session
    r = await drv.operate(req("Pos2", 2, mode=ControlMode.SBO))
    assert (r.status, r.code) == (ControlStatus.NO_SELECT, 18)
    assert "object-not-selected" in r.detail
    # wrong order: select, cancel, operate
    assert (await drv.select(req("Pos2", 2, mode=ControlMode.SBO))).ok
    wait_until(lambda: server.is_selected(SBO_OBJ), what="the selection")
    assert (await drv.cancel(req("Pos2", 2, mode=ControlMode.SBO))).ok
    wait_until(lambda: not server.is_selected(SBO_OBJ), what="the Cancel to release the selection")
    r = await drv.operate(req("Pos2", 2, mode=ControlMode.SBO))
    assert (r.status, r.code) == (ControlStatus.NO_SELECT, 18)
    assert server.operations_snapshot() == []


async def test_sbo_select_timeout(server: Iec61850Server, session: tuple[Iec61850Session, Collector]) -> None:
    drv, _ = session
    server.set_sbo_timeout(SBO_OBJ, 50)
    assert (await drv.select(req("Pos2", 2, mode=ControlMode.SBO))).ok
    wait_until(lambda: server.is_selected(SBO_OBJ), what="the selection (stSeld follows on the IED's next tick)")
    wait_until(lambda: not server.is_selected(SBO_OBJ), what="the selection to expire on the IED")
    r = await drv.operate(req("Pos2", 2, mode=ControlMode.SBO))
    assert (r.status, r.code) == (ControlStatus.SELECT_TIMEOUT, 18)
    assert server.operations_snapshot() == []


async def test_sbo_blocked_by_interlocking_and_hierarchy(
    server: Iec61850Server, session: tuple[Iec61850Session, Collector]
) -> None:
    drv, _ = session
    beh = server.control_behaviour(SBO_OBJ)
    beh.refuse_add_cause = 10
    r = await drv.select(req("Pos2", 2, mode=ControlMode.SBO))
    assert (r.status, r.code) == (ControlStatus.BLOCKED, 10)
    assert "blocked-by-interlocking" in r.detail
    beh.refuse_add_cause = 2
    r = await drv.select(req("Pos2", 2, mode=ControlMode.SBO))
    assert (r.status, r.code) == (ControlStatus.LOCAL, 2)
    # interlock raised between select and operate: the operate is refused, the selection released
    beh.refuse_add_cause = 0
    assert (await drv.select(req("Pos2", 2, mode=ControlMode.SBO))).ok
    wait_until(lambda: server.is_selected(SBO_OBJ), what="the selection")
    beh.refuse_add_cause = 10
    r = await drv.operate(req("Pos2", 2, mode=ControlMode.SBO))
    assert (r.status, r.code) == (ControlStatus.BLOCKED, 10)
    wait_until(lambda: not server.is_selected(SBO_OBJ), what="the Cancel to release the selection")
    assert server.operations_snapshot() == []


async def test_sbo_negative_termination(server: Iec61850Server, session: tuple[Iec61850Session, Collector]) -> None:
    drv, _ = session
    server.control_behaviour(SBO_OBJ).fail_add_cause = 9
    assert (await drv.select(req("Pos2", 2, mode=ControlMode.SBO))).ok
    r = await drv.operate(req("Pos2", 2, mode=ControlMode.SBO))
    assert (r.status, r.code) == (ControlStatus.TERMINATION_FAILED, 9)
    assert "blocked-by-process" in r.detail
    assert len(server.operations_snapshot()) == 1  # it did reach execution


def test_fast_report_decoder_agrees_with_open61850(server: Iec61850Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """decode_report_fast against open61850's decode_report on real reports: GI, data change, quality change,
    integrity, buffered (entry id, overflow flag) and unbuffered, and with data references (a layout we do not
    ask for)."""
    messages: list[InformationReport] = []
    client = MmsClient.connect("127.0.0.1", server.port, timeout=5.0,
                               on_information_report=lambda m: messages.append(m) if is_report(m) else None)
    try:
        br = ObjectName("LLN0$BR$brcbMeas01", LD)
        rcb.enable(client, br, rcb.RcbSettings(intg_pd_ms=100))
        rp = ObjectName("LLN0$RP$urcbStatus01", LD)
        rcb.enable(client, rp, rcb.RcbSettings(intg_pd_ms=0, opt_flds=OptFlds(
            sequence_number=True, data_reference=True, reason_for_inclusion=True)))
        server.update(f"{LD}/MMXU1.A.phsA", "cVal.mag.f", 1.0, quality=int(Q.INVALID))
        server.update(f"{LD}/GGIO1.Ind2", "stVal", True)
        wait_until(lambda: len(messages) >= 6, what="GI, change and integrity reports")
    finally:
        client.close()
    def no_fallback(message: InformationReport) -> None:
        raise AssertionError(f"decode_report_fast fell back to open61850 for {message}")

    monkeypatch.setattr(iec61850_driver, "decode_report", no_fallback)  # every layout here is a fast-path one
    seen_gi = seen_change = seen_ref = False
    for m in list(messages):
        slow = decode_report(m)
        fast = decode_report_fast(m)
        assert (fast.rpt_id, fast.entry_id, fast.buf_ovfl) == (slow.rpt_id, slow.entry_id, bool(slow.buf_ovfl))
        assert fast.values == {e.index: e.value for e in slow.entries}
        assert fast.gi == {e.index for e in slow.entries if e.reason and e.reason.general_interrogation}
        seen_gi |= bool(fast.gi)
        seen_change |= any(e.reason and e.reason.data_change for e in slow.entries)
        seen_ref |= slow.opt_flds.data_reference and not slow.opt_flds.data_set_name
    assert seen_gi and seen_change and seen_ref


async def test_second_block_with_the_same_rpt_id_is_not_enabled(server: Iec61850Server) -> None:
    second = f"{LD}/LLN0.BR.brcbMeas02"  # an instance of the same RCB: same RptID in the ICD
    lk = link(server.port, reports=(BRCB, second))
    async with started(lk) as (drv, col):
        st = drv.status()
        assert st["reports_enabled"] == [BRCB]
        assert st["rcb_errors"] == 1
        assert "same RptID" in str(st["last_error"])
        server.update(f"{LD}/MMXU1.A.phsA", "cVal.mag.f", 9.5)
        await pump_until(drv, lambda: 9.5 in col.values("Ia"), "the report of the first block")
        await pump_until(drv, lambda: True, "one more idle round")
        assert col.values("Ia").count(9.5) == 1


async def test_under_the_session_runner_a_drop_loses_and_repeats_nothing(server: Iec61850Server) -> None:
    """The real runner (gateway.session_runner) drives the driver; the IED drops the association in the middle
    of a stream of changes: the runner marks the points lost, reconnects, the BRCB resumes, and every change
    arrives exactly once, in order."""
    import dataclasses

    from gateway.session_runner import SessionRunner

    lk = dataclasses.replace(link(server.port, reports=(BRCB,)), reconnect_min_s=0.05, reconnect_max_s=0.2)
    ids = ids_for(lk)
    col = Collector(ids)

    def emit(batch: ReadingBatch) -> bool:
        col(batch)
        return True

    runner = SessionRunner(lk, ids, emit, driver_factory=Iec61850Session)
    task = asyncio.create_task(runner.run())
    try:
        await wait_for(lambda: runner.up and bool(col.of("Ia")), what="the session")
        changes = [1000.0 + k for k in range(40)]
        for k, v in enumerate(changes):
            server.update(f"{LD}/MMXU1.A.phsA", "cVal.mag.f", v, t=at(100 + k))
            if k == 15:
                server.drop_connections()
            await asyncio.sleep(0)  # let the runner work between changes (not a timed wait)
        await wait_for(lambda: runner.reconnects >= 1, what="the reconnect")
        await wait_for(lambda: col.values("Ia")[-1:] == [changes[-1]], what="the last change")
        good = [v for _, v, q in col.of("Ia") if not q & Q.OLD_DATA and v >= 1000.0]
        assert good == changes
        lost = [q for _, _, q in col.of("Hz") if q & Q.OLD_DATA]
        assert lost and lost[0] & Q.FAILURE  # the runner's mark for an unchanged point ...
        assert not col.of("Hz")[-1][2] & Q.OLD_DATA  # ... cleared by the GI after the resume
        r = await runner.operate(req("Pos1", 2))
        assert r.ok, r
    finally:
        runner.stop()
        await task


async def test_reads_while_reports_stream(server: Iec61850Server, session: tuple[Iec61850Session, Collector]) -> None:
    """The pyiec61850 client deadlocks when a report arrives during a read; ours must not."""
    import threading

    drv, col = session
    done = threading.Event()

    def flood() -> None:
        for k in range(3000):
            server.update(f"{LD}/MMXU1.A.phsA", "cVal.mag.f", float(k))
        done.set()

    t = threading.Thread(target=flood, name="ied-flood")
    t.start()
    polls = 0
    try:
        while not done.is_set() or polls < 20:
            await drv.run_job("poll_0.5")
            await drv.idle(0)
            polls += 1
    finally:
        t.join()
    await pump_until(drv, lambda: col.values("Ia")[-1] == 2999.0, "the last report of the flood")
    assert drv.status()["reports"] > 20  # type: ignore[operator]
    assert len(col.of("Beh")) >= polls

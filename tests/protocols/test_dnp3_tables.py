"""The DNP3 driver's pure parts (flag→quality and command-status tables, construction rules): no outstation
needed, so these run on every platform (the loopback tests in ``test_dnp3.py`` need yadnp3, x86_64 only)."""

from __future__ import annotations

import pytest

from gateway.config import LinkConfig, PointConfig
from gateway.model import Q
from protocols.dnp3 import Dnp3Session, command_status, flags_quality
from protocols.session import ControlStatus, Job, SessionDriver
from tests.protocols.dnp3_helpers import Sink, dnp3_link, point_ids

POINTS = (
    PointConfig(name="bi0", kind="binary_input", address=0),
    PointConfig(name="ai0", kind="analog_input", address=0, scale=0.5),
    PointConfig(name="bo0", kind="binary_output", address=0, writable=True),
)


def test_one_device_per_link_and_jobs() -> None:
    link = dnp3_link(20000, POINTS)
    two = LinkConfig(name="dnp", protocol="dnp3_tcp", devices=(link.devices[0], link.devices[0]))
    with pytest.raises(ValueError, match="exactly one device"):
        Dnp3Session(two, point_ids(POINTS), Sink(POINTS))
    dup = (*POINTS, PointConfig(name="again", kind="binary_input", address=0))
    with pytest.raises(ValueError, match="already point bi0"):
        Dnp3Session(dnp3_link(1, dup), point_ids(dup), Sink(dup))
    d: SessionDriver = Dnp3Session(  # mypy checks that the driver implements the interface
        dnp3_link(1, POINTS, class2_period_s=0.0, time_sync_period_s=600.0, integrity_period_s=0),
        point_ids(POINTS), Sink(POINTS))
    assert list(d.jobs()) == [Job("class1", 5.0), Job("class3", 5.0), Job("time_sync", 600.0)]
    assert not d.connected


def test_flag_quality_table() -> None:
    assert flags_quality("analog_input", 0x01) == Q.GOOD
    assert flags_quality("analog_input", 0x00) == Q.INVALID | Q.FAILURE
    assert flags_quality("analog_input", 0x03) == Q.INVALID | Q.OLD_DATA
    assert flags_quality("analog_input", 0x05) == Q.QUESTIONABLE | Q.OLD_DATA | Q.FAILURE
    assert flags_quality("analog_input", 0x04) == Q.QUESTIONABLE | Q.OLD_DATA | Q.FAILURE  # offline + comm lost
    assert flags_quality("analog_input", 0x09) == Q.SUBSTITUTED
    assert flags_quality("binary_input", 0x11) == Q.SUBSTITUTED
    assert flags_quality("analog_input", 0x21) == Q.QUESTIONABLE | Q.OVERFLOW | Q.OUT_OF_RANGE
    assert flags_quality("analog_output", 0x41) == Q.QUESTIONABLE | Q.INACCURATE
    assert flags_quality("binary_input", 0x21) == Q.QUESTIONABLE | Q.OSCILLATORY
    assert flags_quality("double_bit_input", 0x21) == Q.QUESTIONABLE | Q.OSCILLATORY
    assert flags_quality("counter", 0x21) == Q.QUESTIONABLE | Q.OVERFLOW
    assert flags_quality("counter", 0x41) == Q.QUESTIONABLE | Q.INCONSISTENT
    assert flags_quality("binary_output", 0x61) == Q.GOOD  # reserved bits of g10 ignored


def test_command_status_table() -> None:
    assert command_status(0).status is ControlStatus.SUCCESS
    assert command_status(1).status is ControlStatus.SELECT_TIMEOUT
    assert command_status(13).status is ControlStatus.LOCAL
    assert command_status(17).status is ControlStatus.BLOCKED
    r = command_status(8)
    assert (r.status, r.code) == (ControlStatus.REJECTED, 8) and "TOO_MANY_OBJS" in r.detail
    assert command_status(8, select=True).status is ControlStatus.SELECT_FAILED
    assert command_status(99).status is ControlStatus.REJECTED and "UNKNOWN_99" in command_status(99).detail

"""``probe dnp3`` against the opendnp3 outstation (yadnp3) that tests/protocols use: link status, IIN flags and
the integrity poll dump with group/variation, index, value, flags and time."""

from __future__ import annotations

import asyncio
import platform

import pytest

from gateway.commission.dnp3_probe import _labels, flag_names, format_dnp3, probe_dnp3
from hil_tests.net import free_port
from tests.commission.helpers import cli

if platform.machine() != "x86_64":
    pytest.skip("yadnp3 (the opendnp3 test outstation) ships x86_64 wheels only", allow_module_level=True)

from hil_tests.dnp3_outstation import OutstationSim, analog, binary, counter, double_bit

T_MS = 1_700_000_000_123


def test_flag_names() -> None:
    assert flag_names("analog_input", 0x01) == "ONLINE"
    assert flag_names("analog_input", 0x21) == "ONLINE|OVER_RANGE"
    assert flag_names("counter", 0x22) == "RESTART|ROLLOVER"
    assert flag_names("binary_input", 0x00) == "-"


def test_labels_fall_back_when_the_fragment_does_not_match() -> None:
    assert _labels(b"", 2) == [(0, 0), (0, 0)]
    assert _labels(b"\x00\x01", 1) == [(0, 0)]  # garbage: not a response


def test_integrity_poll_dump() -> None:
    with OutstationSim(points=4) as sim:
        sim.apply(analog(1, 42.0, time_ms=T_MS), binary(2, True, time_ms=T_MS), double_bit(3, 2),
                  counter(0, 77, time_ms=T_MS))
        sim.need_time = True
        result = asyncio.run(probe_dnp3("127.0.0.1", sim.port, 10, 1, timeout_s=2.0))
    assert result.connected and result.error == ""
    assert "NEED_TIME" in result.iin_flags and "DEVICE_RESTART" in result.iin_flags
    static = {(v.group, v.variation, v.index): v for v in result.values if v.timestamp is None}
    assert static[(30, 1, 1)].value == 42 and static[(30, 1, 1)].flags & 0x01
    assert static[(1, 2, 2)].value is True
    assert static[(3, 2, 3)].value == "ON"
    assert static[(20, 1, 0)].value == 77
    assert static[(30, 1, 0)].flags & 0x02  # never updated since the restart: RESTART flag
    events = [v for v in result.values if v.group in (2, 4, 22, 32)]
    assert {(v.group, v.index) for v in events} >= {(32, 1), (2, 2), (22, 0)}
    assert any("g50v4" in w for w in result.warnings)  # the sim's time-and-interval points cut the response
    text = format_dnp3(result)
    assert "answers   OK  outstation 10 (master 1)" in text and "NEED_TIME: outstation asks for time sync" in text
    row = next(line for line in text.splitlines() if line.startswith("g30v1") and line.split()[2] == "1")
    assert row.split()[:6] == ["g30v1", "analog_input", "1", "42", "0x01", "ONLINE"]


def test_cli_prints_the_dump_and_fails_cleanly_when_nobody_answers(capsys: pytest.CaptureFixture[str]) -> None:
    with OutstationSim(points=2) as sim:
        assert cli(["probe", "dnp3", "--host", "127.0.0.1", "--port", str(sim.port)]) == 0
        out = capsys.readouterr().out
        assert "obj" in out and "g20v1" in out and "IIN" in out
        # wrong outstation address: nothing answers the poll
        code = cli(["probe", "dnp3", "--host", "127.0.0.1", "--port", str(sim.port), "--outstation", "11",
                    "--timeout", "0.5"])
        cap = capsys.readouterr()
        assert code == 4 and "tcp       OK" in cap.out and "answers   FAIL  outstation 11" in cap.out
        assert "Traceback" not in cap.err + cap.out
    port = free_port()
    assert cli(["probe", "dnp3", "--host", "127.0.0.1", "--port", str(port), "--timeout", "1"]) == 4
    cap = capsys.readouterr()
    assert cap.err.startswith("error: no DNP3 link to 127.0.0.1:") and "Traceback" not in cap.err
    assert cli(["probe", "dnp3", "--host", "h", "--outstation", "1", "--master", "1"]) == 2

"""``probe modbus`` against the pymodbus simulator (hil_tests.modbus_sim): the scan finds exactly the units
served, and float32 values stored in ABCD and CDAB order decode right in the matching column."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.commission.modbus_probe import (
    ProbeError,
    connect,
    decode_as,
    interpret,
    make_link,
    parse_read,
    parse_units,
    read_range,
    scan_units,
    suggest_points,
)
from gateway.config_load import parse_config
from hil_tests.modbus_sim import SimServer, SimUnit, encode_words
from hil_tests.net import free_port
from tests.commission.helpers import ThreadedModbusSim, cli
from tests.protocols.modbus_helpers import pty_pair


def meter(unit_id: int = 1) -> SimUnit:
    u = SimUnit(unit_id, holding=40, input=40)
    u.set("holding", 10, 230.5, "float32")  # ABCD
    u.set("holding", 12, 49.75, "float32", word_order="little")  # CDAB
    u.set("holding", 14, -12345678, "int32", word_order="little")  # CDAB
    u.set("holding", 16, 1234.5, "float32", byte_order="little")  # BADC
    u.set("holding", 0, -2, "int16")
    return u


def column(headers: list[str], rows: list[list[str]], offset: int, name: str) -> str:
    return rows[offset][headers.index(name)]


def test_parse_units_and_read() -> None:
    assert parse_units("1-3,7, 10-11") == [1, 2, 3, 7, 10, 11]
    assert parse_read("100:10") == (100, 10)
    assert parse_read("0x10:2") == (16, 2)
    for bad in ("x", "5-2", "1-300", ""):
        with pytest.raises(ProbeError) as e:
            parse_units(bad)
        assert e.value.exit_code == 2
    for bad in ("a:1", "65535:2", "1:0"):
        with pytest.raises(ProbeError):
            parse_read(bad)


def test_decoding_matches_the_gateway_for_every_order() -> None:
    for order, (wo, bo) in {"ABCD": ("big", "big"), "CDAB": ("little", "big"), "BADC": ("big", "little"),
                            "DCBA": ("little", "little")}.items():
        assert decode_as(encode_words(1.5, "float32", wo, bo), "float32", order) == 1.5
        assert decode_as(encode_words(-70000, "int32", wo, bo), "int32", order) == -70000
    assert decode_as([1], "float32", "ABCD") is None  # too few words


async def test_scan_finds_exactly_the_units_served() -> None:
    async with SimServer([meter(1), meter(3), meter(7)], tcp=("127.0.0.1", 0)) as srv:
        client = await connect(make_link(host="127.0.0.1", port=srv.port))
        try:
            seen: list[tuple[int, bool]] = []
            found = await scan_units(client, range(1, 10), timeout_s=0.2, on_unit=lambda u, ok: seen.append((u, ok)))
        finally:
            client.close()
    assert [a.unit_id for a in found] == [1, 3, 7]
    assert [u for u, _ in seen] == list(range(1, 10))


async def test_exception_answers_count_as_present() -> None:
    u = meter(5)
    u.exception = {"holding": 2}
    async with SimServer([u], tcp=("127.0.0.1", 0)) as srv:
        client = await connect(make_link(host="127.0.0.1", port=srv.port))
        try:
            found = await scan_units(client, [4, 5], timeout_s=0.2)
            with pytest.raises(ProbeError) as e:
                await read_range(client, 5, "holding", 0, 2)
        finally:
            client.close()
    assert [(a.unit_id, a.detail) for a in found] == [(5, "exception 0x02")]
    assert e.value.exit_code == 1 and "illegal data address" in str(e.value)


async def test_float32_in_abcd_and_cdab_decode_in_their_columns() -> None:
    async with SimServer([meter(1)], tcp=("127.0.0.1", 0)) as srv:
        client = await connect(make_link(host="127.0.0.1", port=srv.port))
        try:
            words = await read_range(client, 1, "holding", 10, 8)
        finally:
            client.close()
    headers, rows = interpret(words, ("ABCD", "CDAB", "BADC", "DCBA"))
    assert column(headers, rows, 0, "float32 ABCD") == "230.5"
    assert column(headers, rows, 0, "float32 CDAB") != "230.5"
    assert column(headers, rows, 2, "float32 CDAB") == "49.75"
    assert column(headers, rows, 2, "float32 ABCD") != "49.75"
    assert column(headers, rows, 4, "int32 CDAB") == "-12345678"
    assert column(headers, rows, 6, "float32 BADC") == "1234.5"
    assert column(headers, rows, 7, "float32 ABCD") == ""  # needs a word past the range
    assert column(headers, rows, 0, "hex") == f"{words[0]:04X}"


async def test_rtu_scan_and_read_on_a_serial_line(tmp_path: Path) -> None:
    with pty_pair(tmp_path) as (server_tty, client_tty):
        async with SimServer([meter(2), meter(5)], serial=server_tty, baudrate=115200):
            client = await connect(make_link(serial=client_tty, baudrate=115200))
            try:
                found = await scan_units(client, range(1, 7), timeout_s=0.2)
                words = await read_range(client, 5, "holding", 12, 2)
            finally:
                client.close()
    assert [a.unit_id for a in found] == [2, 5]
    assert decode_as(words, "float32", "CDAB") == 49.75


def test_suggested_points_load_and_keep_the_word_order() -> None:
    text = suggest_points("holding", 12, 4, "float32", "CDAB")
    doc = tomllib.loads('version = 1\n[gateway]\nid = "t"\n[[links]]\nname = "l"\nprotocol = "modbus_tcp"\n'
                        'host = "127.0.0.1"\n[[links.devices]]\nname = "m"\n' + text)
    (dev,) = parse_config(doc).links[0].devices
    assert [(p.address, p.type, p.word_order, p.byte_order) for p in dev.points] == [
        (12, "float32", "little", "big"), (14, "float32", "little", "big")]


def test_cli_scan_and_read(capsys: pytest.CaptureFixture[str]) -> None:
    with ThreadedModbusSim([meter(1), meter(3)]) as sim:
        code = cli(["probe", "modbus", "--host", "127.0.0.1", "--port", str(sim.port), "--units", "1-4",
                    "--timeout", "0.2"])
        scan = capsys.readouterr()
        assert code == 0, scan.err
        assert "unit   1  answers" in scan.out and "unit   3  answers" in scan.out
        assert "unit   2" not in scan.out and "2 of 4 unit id(s) answered" in scan.out
        assert scan.err == ""  # not a terminal: no progress bar

        code = cli(["probe", "modbus", "--host", "127.0.0.1", "--port", str(sim.port), "--unit", "3",
                    "--read", "10:4", "--suggest", "float32", "--order", "CDAB"])
        out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    header = lines[1].split()
    assert header[:4] == ["address", "hex", "uint16", "int16"]
    row10 = next(line for line in lines if line.startswith("10 ") or line.strip().startswith("10 "))
    row12 = next(line for line in lines if line.strip().startswith("12 "))
    assert "230.5" in row10 and "49.75" in row12
    assert 'word_order = "little"' in out and "address = 12" in out


def test_cli_errors_have_exit_codes_and_no_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert cli(["probe", "modbus", "--host", "127.0.0.1", "--port", str(port), "--units", "1"]) == 4
    err = capsys.readouterr().err
    assert err.startswith("error: cannot open 127.0.0.1:") and "Traceback" not in err
    assert cli(["probe", "modbus", "--host", "127.0.0.1", "--units", "0-300"]) == 2
    assert "--units" in capsys.readouterr().err
    assert cli(["probe", "modbus", "--host", "127.0.0.1", "--suggest", "float32"]) == 2
    assert cli(["probe", "modbus"]) == 2  # neither --host nor --serial
    with ThreadedModbusSim([meter(1)]) as sim:
        code = cli(["probe", "modbus", "--host", "127.0.0.1", "--port", str(sim.port), "--unit", "9",
                    "--read", "0:2", "--timeout", "0.2"])
        err = capsys.readouterr().err
        assert code == 4 and "unit 9 did not answer" in err
        code = cli(["probe", "modbus", "--host", "127.0.0.1", "--port", str(sim.port), "--read", "39:5"])
        err = capsys.readouterr().err
        assert code == 1 and "exception 0x02" in err and "Traceback" not in err

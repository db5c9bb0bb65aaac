"""``import-csv``: a vendor register map (4xxxx addresses, mixed types and word orders) becomes a link the
config loader accepts; every row that cannot be converted is an error naming the file, line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.commission.csv_import import CsvImportError, import_csv, parse_register_map
from gateway.config_load import load_config
from tests.commission.helpers import cli

DATA = Path(__file__).resolve().parents[1] / "data"
METER = DATA / "vendor_meter_map.csv"
HEAD = 'version = 1\n[gateway]\nid = "t"\n\n'


def load(tmp_path: Path, text: str) -> dict[str, object]:
    cfg_file = tmp_path / "gw.toml"
    cfg_file.write_text(HEAD + text, encoding="utf-8")
    cfg, warnings = load_config(cfg_file)
    assert warnings == []
    (link,) = cfg.links
    (dev,) = link.devices
    return {"link": link, "device": dev, "points": {p.name: p for p in dev.points}}


def test_vendor_map_loads_with_the_config_loader(tmp_path: Path) -> None:
    text = import_csv(METER, device="meter1", unit_id=3, host="10.0.0.5", port=502)
    got = load(tmp_path, text)
    link, dev, points = got["link"], got["device"], got["points"]
    assert (link.protocol, link.host, link.port, dev.name, dev.unit_id) == (  # type: ignore[attr-defined]
        "modbus_tcp", "10.0.0.5", 502, "meter1", 3)
    assert isinstance(points, dict) and len(points) == 17
    v1 = points["Voltage_L1-N"]
    assert (v1.kind, v1.address, v1.type, v1.word_order, v1.byte_order, v1.unit) == (
        "holding", 0, "float32", "little", "big", "V")
    assert points["Current_L1"].address == 12
    hz = points["Frequency"]
    assert (hz.address, hz.type, hz.scale, hz.unit) == (24, "uint16", 0.01, "Hz")
    assert points["Active_Power_Total"].type == "int32" and points["Active_Power_Total"].word_order == "little"
    assert points["Active_Energy_Import"].word_order == "big"
    assert points["CT_Ratio"].writable and points["Demand_Period"].writable
    assert not points["Frequency"].writable
    temp = points["Meter_Temperature"]
    assert (temp.kind, temp.address, temp.scale, temp.unit) == ("input", 0, 0.1, "°C")
    assert (points["Alarm_Active"].kind, points["Alarm_Active"].address) == ("discrete", 0)
    reset = points["Reset_Demand"]
    assert (reset.kind, reset.address, reset.type, reset.writable) == ("coil", 0, "bool", True)
    assert "# Voltage L1-N" not in text  # the description is the name: no duplicate comment


def test_column_spellings_offsets_and_rtu(tmp_path: Path) -> None:
    csv_text = (
        "Tag;Offset;Type;Multiplier;Unit;R/W;Table;Description\n"
        "Ia;0x10;float32 CDAB;1/10;A;RO;input;phase A current\n"
        "Ia;18;real;;A;RO;FC4;\n"
        "Setpoint;1;word;;;rw;holding;\n"
        "Flag;5;bit;;;;coil;\n"
    )
    points = parse_register_map(csv_text, "x.csv", one_based=True)
    by = [(p.name, p.kind, p.address, p.type, p.word_order, p.scale, p.writable) for p in points]
    assert by == [
        ("Ia", "input", 15, "float32", "little", 0.1, False),
        ("Ia_2", "input", 17, "float32", "big", 1.0, False),
        ("Setpoint", "holding", 0, "uint16", "big", 1.0, True),
        ("Flag", "coil", 4, "bool", "big", 1.0, False),
    ]
    f = tmp_path / "map.csv"
    f.write_text(csv_text)
    text = import_csv(f, device="rtu1", unit_id=7, serial="/dev/ttyUSB0", baudrate=19200, one_based=True)
    got = load(tmp_path, text)
    assert got["link"].protocol == "modbus_rtu" and got["link"].serial_port == "/dev/ttyUSB0"  # type: ignore[attr-defined]
    assert "# phase A current" in text


def test_bad_rows_are_errors_naming_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "Name,Address,Type,Scale,Access\n"
        "ok,40001,int16,1,R\n"
        ",40002,int16,1,R\n"  # line 3: no name
        "volts,4000x,int16,1,R\n"  # line 4: address
        "amps,40010,decimal128,1,R\n"  # line 5: type
        "hz,40011,uint16,zero,R\n"  # line 6: scale
        "t,30001,int16,1,RW\n"  # line 7: writing an input register
        "c,40012,uint16,0,maybe\n"  # line 8: scale 0 and access
    )
    with pytest.raises(CsvImportError) as e:
        import_csv(bad, device="m")
    problems = e.value.problems
    assert f"{bad}:3: column 'Name': empty point name" in problems
    assert any(p.startswith(f"{bad}:4: column 'Address': '4000x' is not a register address") for p in problems)
    assert any(p.startswith(f"{bad}:5: column 'Type': unknown data type 'decimal128'") for p in problems)
    assert any(p.startswith(f"{bad}:6: column 'Scale':") for p in problems)
    assert any(p.startswith(f"{bad}:7: column 'Access':") and "input" in p for p in problems)
    assert any(p.startswith(f"{bad}:8: column 'Scale':") for p in problems)
    assert any(p.startswith(f"{bad}:8: column 'Access': unknown access 'maybe'") for p in problems)
    assert len(problems) == 7


def test_missing_columns_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(CsvImportError) as e:
        parse_register_map("Foo,Bar\n1,2\n", "m.csv")
    assert e.value.problems == ["m.csv:1: header row has no name/tag/description and no address/register/offset "
                                "column (found: Foo, Bar)"]
    with pytest.raises(CsvImportError) as e:
        parse_register_map("# map\n\nName,Bar\n1,2\n", "m.csv")
    assert e.value.problems == ["m.csv:3: header row has no address/register/offset column (found: Name, Bar)"]
    with pytest.raises(CsvImportError) as e:
        parse_register_map("", "m.csv")
    assert "no header row" in str(e.value)
    with pytest.raises(CsvImportError) as e:
        parse_register_map("name,address\n", "m.csv")
    assert "no register rows" in str(e.value)
    with pytest.raises(CsvImportError) as e:
        parse_register_map("name,address,table\nx,40001,input\n", "m.csv")
    assert "is a holding number but the table column says input" in str(e.value)
    with pytest.raises(CsvImportError) as e:
        parse_register_map("name,address,type\nx,65535,float32\n", "m.csv")
    assert "run past register 65535" in str(e.value)


def test_literal_addresses(tmp_path: Path) -> None:
    (p,) = parse_register_map("name,address\nx,40001\n", "m.csv", prefixed=False)
    assert (p.kind, p.address) == ("holding", 40001)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["import-csv", str(METER), "--device", "meter1", "--host", "10.0.0.5"]) == 0
    assert "[[links]]" in capsys.readouterr().out
    out = tmp_path / "meter.toml"
    assert cli(["import-csv", str(METER), "--device", "meter1", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "CHANGE-ME" in err and f"wrote {out}" in err
    load(tmp_path, out.read_text())  # the placeholder host still loads: doctor then reports it unreachable
    assert cli(["import-csv", str(METER), "--device", "meter1", "-o", str(out)]) == 3
    assert f"{out} exists" in capsys.readouterr().err
    assert cli(["import-csv", str(tmp_path / "nope.csv"), "--device", "m"]) == 3
    assert "file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("name,address\nx,abc\n")
    assert cli(["import-csv", str(bad), "--device", "m"]) == 1
    err = capsys.readouterr().err
    assert f"error: {bad}:2: column 'address'" in err and "1 error(s)" in err and "Traceback" not in err
    assert cli(["import-csv", str(METER), "--device", "a.b"]) == 1

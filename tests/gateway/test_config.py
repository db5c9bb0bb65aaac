"""Config loading: every kind of mistake gives a message naming the file, the key path and the device."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gateway import config as C
from gateway.cli import main
from gateway.config_load import ConfigError, ConfigFileError, load_config
from protection.runtime import ProtectionRuntime

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "gateway" / "configs" / "demo.toml"

GOOD = """
version = 1
[gateway]
id = "gw-test"

[[sinks]]
name = "cloud"
url = "http://127.0.0.1:9/v1/batches"

[[links]]
name = "line1"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = 1502

[[links.devices]]
name = "feeder1"
unit_id = 1

[[links.devices.points]]
name = "Ia"
kind = "input"
address = 0
type = "float32"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "site.toml"
    p.write_text(text)
    return p


def problems(tmp_path: Path, text: str) -> list[str]:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    return [str(x) for x in ei.value.problems]


def test_good_config_loads(tmp_path: Path) -> None:
    cfg, warnings = load_config(write(tmp_path, GOOD))
    assert warnings == []
    assert cfg.id == "gw-test"
    assert cfg.data_dir == tmp_path / "data"
    (link,) = cfg.links
    (dev,) = link.devices
    assert dev.points[0] == C.PointConfig(name="Ia", kind="input", address=0, type="float32")
    assert cfg.sinks[0].batch_size == 50_000


def test_demo_config_is_valid() -> None:
    cfg, warnings = load_config(DEMO)
    assert warnings == []
    panels = [f"pv-{i:02d}" for i in range(1, 21)]  # solar sensors over MQTT
    assert [d.name for _, d in cfg.devices()] == ["feeder1", "feeder2", "feeder3", "incomer", "feeder4", "feeder5",
                                                  *panels]  # fmt: skip
    assert len(cfg.devices()[0][1].points) == 17


def test_misspelt_key_names_file_key_device_and_suggestion(tmp_path: Path) -> None:
    (msg,) = problems(tmp_path, GOOD.replace("unit_id = 1", "unti_id = 1"))
    assert str(tmp_path / "site.toml") in msg
    assert "links[line1].devices[feeder1].unti_id" in msg
    assert "(device feeder1)" in msg
    assert "did you mean 'unit_id'?" in msg


def test_bad_enum_value_suggests(tmp_path: Path) -> None:
    (msg,) = problems(tmp_path, GOOD.replace('type = "float32"', 'type = "float"'))
    assert "links[line1].devices[feeder1].points[Ia].type" in msg
    assert "device feeder1" in msg
    assert "did you mean 'float32' or 'float64'?" in msg


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        GOOD.replace("unit_id = 1", "unit_id = 300")
        .replace("address = 0", "address = -1")
        .replace('protocol = "modbus_tcp"', 'protocol = "modbus_tcp"\nbaud = 9600')
    )
    msgs = problems(tmp_path, text)
    joined = "\n".join(msgs)
    assert len(msgs) == 3, joined
    assert "unit_id (device feeder1): must be 0..247, got 300" in joined
    assert "points[Ia].address (device feeder1)" in joined
    assert "links[line1].baud: unknown key; did you mean 'baudrate'?" in joined


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('id = "gw-test"', ""), "gateway.id: missing required key"),
        (('host = "127.0.0.1"', ""), "links[line1].host: required for protocol modbus_tcp"),
        (("port = 1502", 'port = "1502"'), "links[line1].port: expected an integer, got '1502'"),
        (('kind = "input"', 'kind = "coil"'), "points[Ia].type (device feeder1): a coil is one bit"),
        (('url = "http', 'url = "ftp'), "sinks[cloud].url: expected an http:// or https:// URL"),
        (("version = 1", "version = 9"), "version: unsupported config version 9"),
        (("[gateway]", "[gatway]"), "gatway: unknown top-level key; did you mean 'gateway'?"),
        (
            ('type = "float32"', 'type = "float32"\nwritable = true'),
            "only coil and holding points can be written",
        ),
        (("[gateway]", "[storage]\ncheckpoint_threshold_mb = 0\n[gateway]"), "storage.checkpoint_threshold_mb"),
        (("[gateway]", "[storage]\nmemory_limit_mb = 8\n[gateway]"), "storage.memory_limit_mb: must be 0"),
        (("[gateway]", "[storage]\ncommit_interval_ms = 0\n[gateway]"), "storage.commit_interval_ms: must be 1..60000"),
        (("[gateway]", "[panel]\nport = 70000\n[gateway]"), "panel.port: must be 0..65535"),
        (("[gateway]", '[panel]\nhost = "0.0.0.0"\ntls = false\n[gateway]'),
         "panel.tls: plain HTTP is allowed only on a loopback address"),
        (("[gateway]", '[[panel.bays]]\nname = "F1"\nbreaker = "feeder1.Ib"\n[gateway]'),
         "panel.bays[F1].breaker: unknown point 'feeder1.Ib'"),
        (("[gateway]", '[[panel.bays]]\nname = "F1"\nopen = "feeder1.Ia"\n[gateway]'),
         "panel.bays[F1].open: point 'feeder1.Ia' is not writable"),
        (("[gateway]", '[panel]\ncert_file = "nope.pem"\nkey_file = "nope.key"\n[gateway]'),
         "panel.cert_file: file not found"),
    ],
)
def test_each_mistake_has_its_message(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    msgs = problems(tmp_path, GOOD.replace(*change))
    assert any(expected in m for m in msgs), msgs
    assert all(str(tmp_path / "site.toml") in m for m in msgs)


def test_duplicate_device_and_point_names(tmp_path: Path) -> None:
    text = GOOD + GOOD[GOOD.index("[[links.devices]]") :].replace("unit_id = 1", "unit_id = 2")
    msgs = problems(tmp_path, text)
    assert any("duplicate device name" in m and "device feeder1" in m for m in msgs), msgs


def test_template_unknown_name_suggests(tmp_path: Path) -> None:
    text = GOOD.replace(
        "[[links]]", '[templates.relay]\npoints = [{ name = "Ia", kind = "input", address = 0 }]\n[[links]]'
    ).replace("unit_id = 1", 'unit_id = 1\ntemplate = "rely"')
    msgs = problems(tmp_path, text)
    assert any("template" in m and "did you mean 'relay'?" in m for m in msgs), msgs


def test_template_points_are_merged(tmp_path: Path) -> None:
    text = GOOD.replace(
        "[[links]]",
        '[templates.relay]\ntimeout_s = 0.2\npoints = [{ name = "Va", kind = "input", address = 8 }]\n[[links]]',
    ).replace("unit_id = 1", 'unit_id = 1\ntemplate = "relay"')
    cfg, _ = load_config(write(tmp_path, text))
    dev = cfg.devices()[0][1]
    assert dev.timeout_s == 0.2
    assert [p.name for p in dev.points] == ["Va", "Ia"]


def test_missing_version_warns(tmp_path: Path) -> None:
    _, warnings = load_config(write(tmp_path, GOOD.replace("version = 1", "")))
    assert warnings and "no 'version' key" in warnings[0]


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigFileError, match="not valid TOML"):
        load_config(write(tmp_path, "[gateway\nid="))


def test_check_config_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, GOOD)
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "1 link" in out and "1 device" in out and "1 point" in out and "requests/s" in out

    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("unit_id = 1", "unti_id = 1"))
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "did you mean 'unit_id'?" in err and "1 error(s)" in err

    assert main(["check-config", str(tmp_path / "missing.toml")]) == 3
    assert "file not found" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2


def _all_setting_names() -> set[str]:
    names: set[str] = set()
    for cls in (
        C.GatewayConfig,
        C.StorageConfig,
        C.PanelConfig,
        C.BayConfig,
        C.SinkConfig,
        C.LinkConfig,
        C.DeviceConfig,
        C.PointConfig,
        C.Dnp3Settings,
        C.Iec61850Settings,
        ProtectionRuntime,
    ):
        for f in dataclasses.fields(cls):
            if f.name in (
                "source",
                "links",
                "storage",
                "sinks",
                "panel",
                "bays",
                "devices",
                "points",
                "protection",
                "protection_runtime",
                "protection_problems",
                "outputs",
                "dnp3",
                "iec61850",
            ):
                continue
            names.add(f.name)
    return names


def test_every_setting_is_documented() -> None:
    doc = (REPO / "docs" / "config.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", doc, flags=re.M))
    missing = _all_setting_names() - documented
    assert not missing, f"settings missing from docs/config.md: {sorted(missing)}"
    assert "version" in documented and "template" in documented


def test_protection_section_is_parsed_and_its_errors_reported(tmp_path: Path) -> None:
    section = """
[protection]
active_group = 1
[[protection.group1.elements]]
type = "51"
name = "51P"
pickup_a = 400
curve = "IEC_SI"
tms = 0.1
[protection.source]
type = "simulated"
"""
    cfg, _ = load_config(write(tmp_path, GOOD + section))
    (element,) = cfg.protection.group1
    assert element.name == "51P"
    msgs = problems(tmp_path, GOOD + section.replace("tms = 0.1", "tmss = 0.1"))
    assert any("protection.group1.elements[51P].tmss" in m and "did you mean 'tms'?" in m for m in msgs), msgs


SESSION_LINKS = """
[[links]]
name = "rtu"
protocol = "dnp3_tcp"
host = "127.0.0.1"

[[links.devices]]
name = "rtu1"
[links.devices.dnp3]
outstation_address = 4
unsolicited = true
class1_period_s = 0

[[links.devices.points]]
name = "cb"
kind = "double_bit_input"
address = 3

[[links.devices.points]]
name = "trip"
kind = "binary_output"
address = 0
writable = true

[[links]]
name = "ied"
protocol = "iec61850"
host = "127.0.0.1"

[[links.devices]]
name = "ied1"
[links.devices.iec61850]
reports = ["IED1LD0/LLN0.BR.brcbMeas01", "IED1LD0/LLN0$RP$urcbSt01"]

[[links.devices.points]]
name = "Ia"
kind = "attribute"
ref = "IED1LD0/MMXU1.A.phsA"
da = "cVal.mag.f"
fc = "MX"
"""


def test_dnp3_and_iec61850_links_load_with_protocol_defaults(tmp_path: Path) -> None:
    cfg, _ = load_config(write(tmp_path, GOOD + SESSION_LINKS))
    rtu, ied = cfg.links[1], cfg.links[2]
    assert (rtu.protocol, rtu.port, ied.protocol, ied.port) == ("dnp3_tcp", 20000, "iec61850", 102)
    d = rtu.devices[0].dnp3
    assert (d.outstation_address, d.master_address, d.unsolicited, d.class1_period_s) == (4, 1, True, 0.0)
    assert rtu.devices[0].points[0].kind == "double_bit_input" and rtu.devices[0].points[0].address == 3
    i = ied.devices[0]
    assert i.iec61850.reports == ("IED1LD0/LLN0.BR.brcbMeas01", "IED1LD0/LLN0$RP$urcbSt01")
    assert (i.points[0].ref, i.points[0].da, i.points[0].fc) == ("IED1LD0/MMXU1.A.phsA", "cVal.mag.f", "MX")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('kind = "double_bit_input"', 'kind = "holding"',
         "links[rtu].devices[rtu1].points[cb].kind (device rtu1): 'holding' is not a dnp3_tcp point kind"),
        ('address = 3', 'address = 3\ntype = "float32"', "points[cb].type (device rtu1): not used by protocol dnp3"),
        ('outstation_address = 4', 'outstation_address = 1', "dnp3.master_address (device rtu1): must differ"),
        ('outstation_address = 4', 'outstation_address = 70000', "dnp3.outstation_address (device rtu1): must be "
         "0..65519"),
        ('name = "rtu1"', 'name = "rtu1"\nunit_id = 3', "devices[rtu1].unit_id (device rtu1): a Modbus setting"),
        ('unsolicited = true', 'unsolicitd = true', "dnp3.unsolicitd (device rtu1): unknown key; did you mean "
         "'unsolicited'?"),
        ('fc = "MX"', 'fc = "MZ"', "points[Ia].fc (device ied1): unknown functional constraint 'MZ'"),
        ('da = "cVal.mag.f"\n', "", "points[Ia].da (device ied1): missing required key for protocol iec61850"),
        ('ref = "IED1LD0/MMXU1.A.phsA"', 'ref = "MMXU1.A.phsA"', "points[Ia].ref (device ied1): 'MMXU1.A.phsA' is "
         "not a data object reference"),
        ('"IED1LD0/LLN0.BR.brcbMeas01"', '"IED1LD0/LLN0.XX.brcbMeas01"', "iec61850.reports[0] (device ied1):"),
        ('kind = "attribute"', 'kind = "attribute"\naddress = 4', "points[Ia].address (device ied1): not used by "
         "protocol iec61850"),
        ('name = "trip"\nkind = "binary_output"', 'name = "trip"\nkind = "counter"', "points[trip].writable (device "
         "rtu1): only binary_output and analog_output can be controlled"),
    ],
)
def test_session_protocol_mistakes_are_named(tmp_path: Path, old: str, new: str, expected: str) -> None:
    text = GOOD + SESSION_LINKS
    assert old in text
    found = problems(tmp_path, text.replace(old, new, 1))
    assert any(expected in p for p in found), found


def test_a_session_link_reaches_one_device_and_sections_belong_to_their_protocol(tmp_path: Path) -> None:
    second = '[[links.devices]]\nname = "rtu2"\n[[links.devices.points]]\nname = "x"\nkind = "counter"\naddress = 0\n'
    two = SESSION_LINKS.replace('[[links]]\nname = "ied"', second + '\n[[links]]\nname = "ied"')
    found = problems(tmp_path, GOOD + two)
    assert any("links[rtu].devices: a dnp3_tcp link reaches one device (2 given)" in p for p in found), found
    wrong = GOOD.replace('unit_id = 1', 'unit_id = 1\n[links.devices.dnp3]\nunsolicited = true')
    found = problems(tmp_path, wrong)
    assert any("devices[feeder1].dnp3 (device feeder1): only for protocol dnp3_tcp" in p for p in found), found

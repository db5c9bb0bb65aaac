"""Config of MQTT sensor links (``protocol = "mqtt"``): the shape it loads into and every mistake's message."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gateway import config as C
from gateway.cli import main
from gateway.config_load import ConfigError, expand_sensor_ids, load_config

REPO = Path(__file__).resolve().parents[2]

HEAD = """
version = 1
[gateway]
id = "gw-test"
"""

LINK = """
[[links]]
name = "solar"
protocol = "mqtt"
host = "127.0.0.1"
"""

MQTT = """
[links.mqtt]
client_id = "gw-solar"

[[links.mqtt.topics]]
filter = "sensors/+/readings"
profile = "solar"
sensors = ["pv-{001..003}", "pv-extra"]
location = { site = "north", zone = "A" }
locations = { pv-002 = { lat = 47.25, lon = 8.5, zone = "B" } }

[[links.mqtt.topics.fields]]
field = "temperature"
max = 90

[[links.mqtt.topics.fields]]
field = "irr"
point = "irradiance"
unit = "W/m2"
min = 0
max = 1500
scale = 0.1
"""

GOOD = HEAD + LINK + MQTT
T = "topics[sensors/+/readings]"  # the key path of the topic in messages


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "site.toml"
    p.write_text(text)
    return p


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, text))
    return [str(x) for x in ei.value.problems]


def test_mqtt_link_loads_with_one_device_per_sensor(tmp_path: Path) -> None:
    cfg, _ = load_config(write(tmp_path, GOOD))
    (link,) = cfg.links
    assert link.protocol == "mqtt" and link.port == 1883 and link.mqtt.client_id == "gw-solar"
    (topic,) = link.mqtt.topics
    assert topic.device_level == 1 and topic.sensors == ("pv-001", "pv-002", "pv-003", "pv-extra")
    fields = {f.field: f for f in topic.fields}
    assert list(fields) == ["temperature", "voltage", "current", "power", "irr"]
    assert (fields["temperature"].min, fields["temperature"].max, fields["temperature"].unit) == (-20.0, 90.0, "°C")
    assert (fields["voltage"].min, fields["voltage"].max) == (0.0, 60.0)
    assert (fields["current"].max, fields["power"].max) == (15.0, 1000.0)
    assert fields["irr"].point == "irradiance" and fields["irr"].scale == 0.1
    assert [d.name for d in link.devices] == ["pv-001", "pv-002", "pv-003", "pv-extra"]
    dev = link.devices[1]
    assert [p.name for p in dev.points] == ["temperature", "voltage", "current", "power", "irradiance"]
    assert all(p.kind == "field" for p in dev.points) and dev.points[4].unit == "W/m2"
    assert dev.location == {"site": "north", "zone": "B", "lat": "47.25", "lon": "8.5"}
    assert link.devices[0].location == {"site": "north", "zone": "A"}
    assert (topic.timestamp_field, topic.timestamp_unit, topic.max_future_s, topic.max_age_s) == (
        "ts", "auto", 300.0, 7 * 86400.0
    )
    assert main(["check-config", str(tmp_path / "site.toml")]) == 0


def test_tls_files_default_the_port_to_8883(tmp_path: Path) -> None:
    for name in ("ca.pem", "gw.crt", "gw.key"):
        (tmp_path / name).write_text("x")
    text = GOOD.replace('client_id = "gw-solar"', 'ca_file = "ca.pem"\ncert_file = "gw.crt"\nkey_file = "gw.key"')
    cfg, _ = load_config(write(tmp_path, text))
    assert cfg.links[0].port == 8883 and cfg.links[0].mqtt.ca_file == tmp_path / "ca.pem"
    cfg, _ = load_config(write(tmp_path, text.replace('host = "127.0.0.1"', 'host = "127.0.0.1"\nport = 18883')))
    assert cfg.links[0].port == 18883


def test_expand_sensor_ids() -> None:
    assert expand_sensor_ids(["pv-{08..10}", "a", "s{1..3}x"]) == ("pv-08", "pv-09", "pv-10", "a", "s1x", "s2x", "s3x")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('client_id = "gw-solar"', 'client_idd = "x"', "mqtt.client_idd: unknown key; did you mean 'client_id'?"),
        ('client_id = "gw-solar"', "keepalive_s = 2", "links[solar].mqtt.keepalive_s: must be 5..65535 seconds"),
        ('client_id = "gw-solar"', 'ca_file = "nope.pem"', "links[solar].mqtt.ca_file: file not found"),
        ('client_id = "gw-solar"', 'password = "x"', "links[solar].mqtt.password: needs username"),
        ('filter = "sensors/+/readings"', 'filter = "sensors/#/readings"',
         "mqtt.topics[sensors/#/readings].filter: 'sensors/#/readings' is not a valid MQTT topic filter"),
        ('filter = "sensors/+/readings"', 'filter = "sensors/pv/readings"',
         "topics[sensors/pv/readings].filter: 'sensors/pv/readings' has no '+' level to name the sensor"),
        ('filter = "sensors/+/readings"', 'filter = "sensors/+/readings"\ndevice_level = 2',
         f"{T}.device_level: level 2 of 'sensors/+/readings' is not a '+' wildcard level"),
        ('profile = "solar"', 'profile = "solr"', f"{T}.profile: invalid value 'solr'"),
        ('profile = "solar"', 'profile = "solar"\ntimestamp_unit = "sec"',
         f"{T}.timestamp_unit: invalid value 'sec'"),
        ('profile = "solar"', 'profile = "solar"\nmax_future_s = 0', f"{T}.max_future_s: must be > 0"),
        ('sensors = ["pv-{001..003}", "pv-extra"]', 'sensors = ["pv-1", "pv-1"]',
         f"{T}.sensors (device pv-1): sensor id 'pv-1' is listed twice"),
        ('sensors = ["pv-{001..003}", "pv-extra"]', 'sensors = ["pv.1"]', "sensor id 'pv.1' must be non-empty"),
        ('sensors = ["pv-{001..003}", "pv-extra"]', "sensors = []", f"{T}.sensors: list the known"),
        ("pv-002 = {", "pv-022 = {",
         f"{T}.locations.pv-022 (device pv-022): not a sensor of this topic; did you mean 'pv-002'?"),
        ('site = "north"', "site = true", f"{T}.location.site: expected text or a number"),
        ("max = 90", "max = -30", f"{T}.fields[temperature].min: min (-20.0) must be below max (-30.0)"),
        ("scale = 0.1", "scale = 0", "fields[irr].scale: must not be 0"),
        ('point = "irradiance"', 'point = "power"', "fields[irr].point: point 'power' is used by two fields"),
        ('unit = "W/m2"', 'units = "W/m2"', "fields[irr].units: unknown key; did you mean 'unit'?"),
    ],
)
def test_mqtt_mistakes_name_file_key_and_topic(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    msgs = problems(tmp_path, GOOD.replace(old, new, 1))
    assert any(m.startswith(str(tmp_path / "site.toml")) and expected in m for m in msgs), msgs


def test_mqtt_link_structure_mistakes(tmp_path: Path) -> None:
    msgs = problems(tmp_path, HEAD + LINK)
    assert any("links[solar].mqtt: missing [links.mqtt]" in m for m in msgs), msgs
    msgs = problems(tmp_path, HEAD + LINK.replace('host = "127.0.0.1"\n', "") + MQTT)
    assert any("links[solar].host: required for protocol mqtt" in m for m in msgs), msgs
    devices = '\n[[links.devices]]\nname = "x"\n[[links.devices.points]]\nname = "a"\nkind = "field"\n'
    msgs = problems(tmp_path, GOOD + devices)
    assert any("links[solar].devices: an mqtt link has no [[links.devices]]" in m for m in msgs), msgs
    modbus = '\n[[links]]\nname = "m"\nprotocol = "modbus_tcp"\nhost = "127.0.0.2"\n[links.mqtt]\nclient_id = "x"\n'
    msgs = problems(tmp_path, GOOD + modbus)
    assert any("links[m].mqtt: only for protocol mqtt (this link is modbus_tcp)" in m for m in msgs), msgs
    second = '\n[[links.mqtt.topics]]\nfilter = "other/+"\nprofile = "solar"\nsensors = ["pv-extra"]\n'
    msgs = problems(tmp_path, GOOD + second)
    assert any("devices[pv-extra].name (device pv-extra): duplicate device name" in m for m in msgs), msgs
    certs = GOOD.replace('client_id = "gw-solar"', 'cert_file = "gw.crt"')
    (tmp_path / "gw.crt").write_text("x")
    msgs = problems(tmp_path, certs)
    assert any("mqtt.cert_file: cert_file and key_file go together" in m for m in msgs), msgs
    assert any("mqtt.ca_file: required with cert_file" in m for m in msgs), msgs


def test_every_mqtt_setting_is_documented() -> None:
    doc = (REPO / "docs" / "config.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", doc, flags=re.M))
    names = {f.name for cls in (C.MqttSettings, C.MqttTopicConfig, C.MqttFieldConfig) for f in dataclasses.fields(cls)}
    names |= {"mqtt", "location"}
    assert not names - documented, f"settings missing from docs/config.md: {sorted(names - documented)}"
    assert "## `[links.mqtt]`" in doc or "### `[links.mqtt]`" in doc

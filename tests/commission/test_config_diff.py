"""``config diff`` / :func:`diff_configs`: a semantic diff of two loaded configs (names matched, not positions;
comments and templates do not count; secrets never printed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.commission.config_diff import Change, diff_configs, format_changes
from gateway.config_load import load_config
from tests.commission.helpers import cli

OLD = """
version = 1
[gateway]
id = "sub-1"
[storage]
disk_budget_mb = 1024.0
[[sinks]]
name = "cloud"
url = "https://ingest.example/v1"
token = "old-secret"
[[sinks]]
name = "backup"
url = "https://backup.example/v1"
[templates.meter]
points = [
  { name = "Ia", kind = "holding", address = 0, type = "float32", unit = "A" },
  { name = "Ua", kind = "holding", address = 2, type = "float32", unit = "V" },
]
[[links]]
name = "feeders"
protocol = "modbus_tcp"
host = "10.0.0.5"
[[links.devices]]
name = "feeder1"
template = "meter"
[[links.devices]]
name = "feeder2"
unit_id = 2
template = "meter"
"""


def cfg_file(tmp_path: Path, name: str, text: str) -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


def load(tmp_path: Path, name: str, text: str):  # type: ignore[no-untyped-def]
    return load_config(cfg_file(tmp_path, name, text))[0]


def test_same_config_spelled_differently_has_no_changes(tmp_path: Path) -> None:
    spelled_out = OLD.replace('template = "meter"', 'points = [\n'
                              '  { name = "Ua", kind = "holding", address = 2, type = "float32", unit = "V" },\n'
                              '  { name = "Ia", kind = "holding", address = 0, type = "float32", unit = "A" },\n]')
    spelled_out = spelled_out.replace("disk_budget_mb = 1024.0", "# same as the default\ndisk_budget_mb = 1024")
    assert diff_configs(load(tmp_path, "a.toml", OLD), load(tmp_path, "b.toml", spelled_out)) == []


def test_changes_by_key_path(tmp_path: Path) -> None:
    new = (OLD.replace('name = "feeder2"', 'name = "feeder3"')
              .replace('{ name = "Ia", kind = "holding", address = 0, type = "float32", unit = "A" }',
                       '{ name = "Ia", kind = "holding", address = 0, type = "float32", unit = "A", scale = 0.1 }')
              .replace('token = "old-secret"', 'token = "new-secret"')
              .replace('[[sinks]]\nname = "backup"\nurl = "https://backup.example/v1"\n', "")
              .replace('id = "sub-1"', 'id = "sub-2"\nlog_level = "DEBUG"'))
    changes = diff_configs(load(tmp_path, "a.toml", OLD), load(tmp_path, "b.toml", new))
    text = [str(c) for c in changes]
    assert text == [
        "~ gateway.id: 'sub-1' -> 'sub-2'",
        "~ gateway.log_level: 'INFO' -> 'DEBUG'",
        "~ links[feeders].devices[feeder1].points[Ia].scale: 1.0 -> 0.1",
        "- links[feeders].devices[feeder2] (2 points)",
        "+ links[feeders].devices[feeder3] (2 points)",
        "~ sinks[cloud].token: (set) -> (set)",
        "- sinks[backup] (url=https://backup.example/v1)",
    ]
    assert {c.section for c in changes} == {"gateway", "links", "sinks"}
    removed = next(c for c in changes if c.kind == "removed" and c.section == "links")
    assert removed.old.name == "feeder2"
    assert all("secret" not in t for t in text)


def test_links_added_and_settings_changed(tmp_path: Path) -> None:
    new = OLD.replace("disk_budget_mb = 1024.0", "disk_budget_mb = 2048.0") + """
[[links]]
name = "rtu"
protocol = "dnp3_tcp"
host = "10.0.0.9"
[[links.devices]]
name = "rtu1"
points = [{ name = "bi0", kind = "binary_input", address = 0 }]
"""
    changes = diff_configs(load(tmp_path, "a.toml", OLD), load(tmp_path, "b.toml", new))
    assert str(changes[0]) == "+ links[rtu] (protocol=dnp3_tcp, host=10.0.0.9, port=20000, 1 devices)"
    assert changes[1] == Change("changed", "storage.disk_budget_mb", 1024.0, 2048.0)
    out = format_changes(changes, "a.toml", "b.toml")
    assert out.splitlines()[0] == "--- a.toml" and out.endswith("2 change(s): 1 added, 0 removed, 1 changed")
    assert format_changes([], "a", "b") == "no differences between a and b"


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = cfg_file(tmp_path, "a.toml", OLD)
    b = cfg_file(tmp_path, "b.toml", OLD.replace('host = "10.0.0.5"', 'host = "10.0.0.6"'))
    assert cli(["config", "diff", str(a), str(b)]) == 0
    assert "~ links[feeders].host: '10.0.0.5' -> '10.0.0.6'" in capsys.readouterr().out
    assert cli(["config", "diff", str(a), str(a)]) == 0
    assert "no differences" in capsys.readouterr().out
    assert cli(["config", "diff", str(a), str(tmp_path / "none.toml")]) == 3
    assert "file not found" in capsys.readouterr().err
    bad = cfg_file(tmp_path, "bad.toml", OLD.replace('protocol = "modbus_tcp"', 'protocol = "modbus"'))
    assert cli(["config", "diff", str(a), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert cli(["config"]) == 2

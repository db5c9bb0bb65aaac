"""``[protection]`` runtime keys, ``[protection.source]`` and ``[[protection.outputs]]``: parsed into the specs the
process builds its I/O from; every problem named with file and key; the gateway loader's strict/tolerant modes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.config_load import ConfigError, load_config
from protection.config import parse_protection, parse_protection_runtime
from protection.modbus_source import ModbusMeasurementSpec
from protection.outputs import ModbusCoilOutputSpec
from protection.runtime import ComtradeFileSource, ProtectionRuntime
from protection.sources import SimulatedFeederSpec

TOML = """
[protection]
period_ms = 1
fifo_priority = 70
record_pre_ms = 150
records_dir = "/var/lib/gateway/records"

[[protection.group1.elements]]
type = "50"
name = "50P"
pickup_a = 600

[[protection.group2.elements]]
type = "51"
name = "51P"
pickup_a = 400
curve = "IEC_SI"
tms = 0.1

[protection.source]
type = "modbus"
host = "127.0.0.1"
port = 15030
unit_id = 3
poll_period_s = 0.001

[[protection.outputs]]
type = "modbus_coil"
name = "feeder1-cb"
host = "127.0.0.1"
port = 15031
unit_id = 2
coil = 0
elements = ["50P", "51P"]
"""


def parse(text: str, base: Path | None = None) -> tuple[ProtectionRuntime, list[str]]:
    raw = tomllib.loads(text)["protection"]
    settings, problems = parse_protection(raw, "site.toml")
    rt, more = parse_protection_runtime(raw, settings, "site.toml", base)
    return rt, [str(p) for p in problems + more]


def test_runtime_source_and_outputs_become_specs() -> None:
    rt, problems = parse(TOML)
    assert problems == []
    assert rt.period_ms == 1.0 and rt.period_s == 0.001 and rt.fifo_priority == 70 and rt.record_pre_ms == 150.0
    assert rt.records_dir == Path("/var/lib/gateway/records")
    assert rt.source == ModbusMeasurementSpec(host="127.0.0.1", port=15030, unit_id=3, poll_period_s=0.001)
    assert rt.outputs == (
        ModbusCoilOutputSpec(name="feeder1-cb", host="127.0.0.1", port=15031, unit_id=2, coil=0,
                             elements=("50P", "51P")),
    )


def test_comtrade_and_simulated_sources(tmp_path: Path) -> None:
    base = "[protection]\n[[protection.group1.elements]]\ntype='50'\nname='50P'\npickup_a=600\n"
    rt, problems = parse(base + "[protection.source]\ntype='comtrade'\nfile='rec/fault.cfg'\nloop=true\n"
                         "channels={ia='IA1', f='FREQ'}\n", tmp_path)
    assert problems == []
    assert rt.source == ComtradeFileSource(file=tmp_path / "rec/fault.cfg", loop=True,
                                           channels={"ia": "IA1", "f": "FREQ"})
    rt, problems = parse(base + "[protection.source]\ntype='simulated'\nfault_at_s=2.0\n")
    assert problems == [] and rt.source == SimulatedFeederSpec(fault_at_s=2.0)


def test_every_problem_is_named() -> None:
    text = """
[protection]
period_ms = 0.01
fifo_priorty = 3
[[protection.group1.elements]]
type = "50"
name = "50P"
pickup_a = 600
[protection.source]
type = "modbuss"
[[protection.outputs]]
type = "modbus_coil"
name = "cb"
host = "127.0.0.1"
port = 70000
elements = ["50X"]
[[protection.outputs]]
type = "modbus_coil"
name = "cb2"
hots = "127.0.0.1"
"""
    rt, problems = parse(text)
    assert "site.toml: protection.period_ms: must be 0.1..100, got 0.01" in problems
    assert "site.toml: protection.fifo_priorty: unknown key; did you mean 'fifo_priority'?" in problems
    assert any(p.startswith("site.toml: protection.source.type: unknown type 'modbuss'; did you mean 'modbus'?")
               for p in problems)
    assert "site.toml: protection.outputs[cb].port: must be 1..65535" in problems
    hots = "site.toml: protection.outputs[cb2].hots: unknown key for type 'modbus_coil'; did you mean 'host'?"
    assert hots in problems
    assert "site.toml: protection.outputs[cb2].host: missing required key" in problems
    assert rt.source is None and rt.outputs == () and rt.period_ms == 5.0


def test_output_naming_an_unknown_element_and_missing_source() -> None:
    text = """
[protection]
[[protection.group1.elements]]
type = "50"
name = "50P"
pickup_a = 600
[[protection.outputs]]
type = "modbus_coil"
name = "cb"
host = "127.0.0.1"
elements = ["50Q"]
"""
    _, problems = parse(text)
    unknown = "site.toml: protection.outputs[cb].elements: no element named '50Q' in either group; did you mean '50P'?"
    assert unknown in problems
    assert any(p.startswith("site.toml: protection.source: missing: elements are configured") for p in problems)


def test_gateway_loader_strict_and_tolerant(tmp_path: Path) -> None:
    cfg_file = tmp_path / "gw.toml"
    cfg_file.write_text('[gateway]\nid = "sub-1"\n' + TOML.replace("port = 15031", "port = 0"))
    with pytest.raises(ConfigError) as e:
        load_config(cfg_file)
    assert "protection.outputs[feeder1-cb].port: must be 1..65535" in str(e.value)
    cfg, _ = load_config(cfg_file, strict_protection=False)
    assert any("protection.outputs[feeder1-cb].port" in p for p in cfg.protection_problems)
    assert cfg.protection_runtime.outputs == () and isinstance(cfg.protection_runtime.source, ModbusMeasurementSpec)

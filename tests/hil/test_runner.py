"""The HIL runner (``python -m hil_tests``): scenario errors, a fast subset end to end, a failing expectation.

The end-to-end tests run the real CLI in a subprocess with the real gateway, receiver and fault proxies: the fast
subset against the simulated substation (:class:`hil_tests.substation.SimulatedRig`), the failing expectation
against :class:`tests.hil.labrig.LabRig` (the protection bay rig and one demo feeder relay: quicker to start).
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil_tests.scenario import ScenarioError, load_scenario

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "hil_tests" / "scenarios"
RIG = "tests.hil.labrig:LabRig"

pytestmark = pytest.mark.hil


def run_cli(*args: str, timeout: float = 170.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hil_tests", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_library_parses() -> None:
    files = sorted(LIB.glob("*.toml"))
    assert len(files) >= 12
    for f in files:
        sc = load_scenario(f)
        assert sc.expectations, f


BAD = """\
name = "bad"
duration_s = 5

[[actions]]
id = "fault"
t = 1
type = "fault"
feeder = "feeder1"
kind = "3phase"
current_a = 100

[[expect]]
type = "trip"
element = "50P"
after = "falt"
withn_ms = [0, 10]
"""


def test_scenario_errors_name_file_key_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(BAD, encoding="utf-8")
    with pytest.raises(ScenarioError) as ei:
        load_scenario(p)
    text = str(ei.value)
    assert f"{p}:9: actions[0].kind: '3phase' is not one of 3ph, ph-g" in text
    assert f"{p}:15: expect[0].after: no action with id 'falt'; did you mean 'fault'?" in text
    assert f"{p}:16: expect[0].withn_ms: unknown key for a trip expectation; did you mean 'within_ms'?" in text
    assert "a trip expectation needs a [protection] section" in text
    # the CLI prints every problem and exits 2
    r = run_cli("run", str(p))
    assert r.returncode == 2
    assert "actions[0].kind" in r.stderr and "expect[0].withn_ms" in r.stderr


def test_not_toml_and_bad_protection_settings(tmp_path: Path) -> None:
    p = tmp_path / "broken.toml"
    p.write_text('name = "x"\nduration_s = = 3\n', encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"broken.toml:2: not valid TOML"):
        load_scenario(p)
    q = tmp_path / "prot.toml"
    q.write_text(
        'name = "x"\nduration_s = 3\n[protection]\n[[protection.group1.elements]]\ntype = "51"\nname = "51P"\n'
        'pickup_a = 400\ncurve = "IEC_SI"\ntmss = 0.1\n[[expect]]\ntype = "no_trip"\nelement = "51P"\n',
        encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"prot.toml:6: protection.group1.elements\[51P\].tmss: unknown key"):
        load_scenario(q)


def test_fast_subset_green_with_junit_and_html(tmp_path: Path) -> None:
    scenarios = [LIB / "p50_instantaneous.toml", LIB / "comm_loss_modbus.toml", LIB / "cloud_outage_short.toml"]
    junit, report = tmp_path / "junit.xml", tmp_path / "report"
    # the default rig: hil_tests.substation.SimulatedRig (every protocol, the protection bay in its own process)
    r = run_cli("run", "--fast", "--junit", str(junit), "--report", str(report), "--workdir", str(tmp_path / "w"),
                *map(str, scenarios))
    assert r.returncode == 0, r.stderr[-4000:]
    assert "3 of 3 scenarios passed" in r.stderr
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "0" and root.get("errors") == "0"
    assert int(root.get("tests", "0")) >= 9
    trip = next(tc for tc in root.iter("testcase") if "trip 50P" in tc.get("name", ""))
    props = {p.get("name"): p.get("value") for p in trip.iter("property")}
    assert float(props["trip_ms"] or "nan") < 60
    index = (report / "index.html").read_text(encoding="utf-8")
    assert "3 passed, 0 failed" in index
    page = (report / "p50_instantaneous.html").read_text(encoding="utf-8")
    assert "<svg" in page and "trip cmd" in page and "expected 50P window" in page
    assert "Sink backlog" in (report / "cloud_outage_short.html").read_text(encoding="utf-8")


WRONG = (LIB / "p50_instantaneous.toml").read_text(encoding="utf-8").replace(
    "within_ms = [0, 60]", "within_ms = [500, 600]   # deliberately wrong: 50P is instantaneous")


def test_wrong_expectation_fails_and_is_reported(tmp_path: Path) -> None:
    sc = tmp_path / "wrong_window.toml"
    sc.write_text(WRONG, encoding="utf-8")
    junit, report = tmp_path / "junit.xml", tmp_path / "report"
    r = run_cli("run", "--rig-class", RIG, "--junit", str(junit), "--report", str(report), "--workdir",
                str(tmp_path / "w"), str(sc))
    assert r.returncode == 1, r.stderr[-4000:]
    assert "FAIL 01 trip 50P fault: trip after" in r.stderr
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "1"
    failure = next(root.iter("failure"))
    msg = failure.get("message", "")
    assert msg.startswith("trip after ") and "window [500.0, 600.0] ms" in msg
    page = (report / "wrong_window.html").read_text(encoding="utf-8")
    assert "FAIL" in page and "window [500.0, 600.0] ms" in page


def test_real_rig_file_and_what_it_cannot_do(tmp_path: Path) -> None:
    from hil_tests.real_rig import RealRig, RigFileError
    from hil_tests.runner import RUNNER_CAPABILITIES

    good = tmp_path / "rig.toml"
    good.write_text('name = "bench"\n[[devices]]\nname = "feeder2"\nprotocol = "modbus_tcp"\nhost = "10.0.0.2"\n'
                    'port = 502\n[protection]\nhost = "10.0.0.3"\nport = 502\n', encoding="utf-8")
    rig = RealRig.from_file(good)
    assert rig.devices()["feeder2"].port == 502
    assert rig.protection_endpoint() is not None
    assert rig.capabilities() == {"network", "power_cut", "cloud_outage"}
    assert "disk" in RUNNER_CAPABILITIES and rig.runner_capabilities == frozenset()
    with pytest.raises(NotImplementedError, match="test set"):
        rig.inject_fault("feeder1", "3ph", current_a=1000)
    bad = tmp_path / "bad_rig.toml"
    bad.write_text('[[devices]]\nname = "x"\nprotocol = "modbus"\nhost = "h"\nport = 0\n', encoding="utf-8")
    with pytest.raises(RigFileError) as ei:
        RealRig.from_file(bad)
    assert "devices[0].protocol" in str(ei.value) and "devices[0].port" in str(ei.value)
    r = run_cli("run", "--rig", str(bad), str(LIB / "p50_instantaneous.toml"))
    assert r.returncode == 2 and "devices[0].protocol" in r.stderr

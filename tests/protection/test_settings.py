"""Settings ranges, arming refusals, the TOML parser, settings-group switching, docs coverage, hot path."""

from __future__ import annotations

import dataclasses
import tomllib
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from protection.bank import ElementBank
from protection.config import parse_protection
from protection.elements import InverseTimeOvercurrent, build_element
from protection.measurements import Measurements
from protection.output import EV_DROPOUT, EV_GROUP_RESET, EV_PICKUP, EV_TRIP_RESET
from protection.settings import (
    SETTINGS_BY_TYPE,
    ElementSettings,
    ElementSettingsError,
    FrequencySettings,
    InverseTimeSettings,
    OvercurrentSettings,
    OvervoltageSettings,
    ProtectionSettings,
    RocofSettings,
    UndervoltageSettings,
    check_settings,
)

ROOT = Path(__file__).resolve().parents[2]

# One valid example of each settings class (the base for range tests).
VALID: dict[type[Any], ElementSettings] = {
    OvercurrentSettings: OvercurrentSettings(name="50P", type="50", pickup_a=1000.0),
    InverseTimeSettings: InverseTimeSettings(name="51P", type="51", pickup_a=400.0, curve="IEC_SI", tms=0.1),
    UndervoltageSettings: UndervoltageSettings(name="27", type="27", pickup_kv=5.0),
    OvervoltageSettings: OvervoltageSettings(name="59", type="59", pickup_kv=7.0),
    FrequencySettings: FrequencySettings(name="81U", type="81U", pickup_hz=49.5, uv_block_kv=3.0),
    RocofSettings: RocofSettings(name="81R", type="81R", pickup_hz_s=0.5, window_s=0.1, uv_block_kv=3.0),
}
RANGE_CASES = [(cls, k, lo, hi) for cls in VALID for k, (lo, hi) in cls.RANGES.items()]


def _ids(case: tuple[type[Any], str, float, float]) -> str:
    return f"{case[0].__name__}.{case[1]}"


def _with(cls: type[Any], key: str, value: float) -> ElementSettings:
    base = VALID[cls]
    if cls is InverseTimeSettings and key == "td":
        return dataclasses.replace(base, curve="IEEE_VI", tms=None, td=value)  # type: ignore[arg-type]
    if cls is InverseTimeSettings and key == "reset_delay_s":
        return dataclasses.replace(base, reset="definite", reset_delay_s=value)  # type: ignore[arg-type]
    return dataclasses.replace(base, **{key: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("case", RANGE_CASES, ids=[_ids(c) for c in RANGE_CASES])
def test_boundary_settings_accepted(case: tuple[type[Any], str, float, float]) -> None:
    cls, key, lo, hi = case
    for v in (lo, hi):
        build_element(_with(cls, key, v))  # does not raise


@pytest.mark.parametrize("case", RANGE_CASES, ids=[_ids(c) for c in RANGE_CASES])
def test_out_of_range_refused_naming_element_and_setting(case: tuple[type[Any], str, float, float]) -> None:
    cls, key, lo, hi = case
    for v in (lo - max(abs(lo) * 0.01, 1e-3), hi * 1.01 + 1e-3, float("nan")):
        s = _with(cls, key, v)
        with pytest.raises(ElementSettingsError) as ei:
            build_element(s, group=2)
        assert ei.value.element == s.name and ei.value.setting == key and ei.value.group == 2
        assert f"element {s.name!r} (group 2): setting {key!r}" in str(ei.value)


@pytest.mark.parametrize(
    ("settings", "setting", "text"),
    [
        (InverseTimeSettings(name="51P", type="51", pickup_a=400.0, curve="IEC_SI"), "tms", "required"),
        (InverseTimeSettings(name="51P", type="51", pickup_a=400.0, curve="IEEE_MI", tms=0.1), "td", "required"),
        (
            InverseTimeSettings(name="51P", type="51", pickup_a=400.0, curve="IEEE_MI", td=1.0, tms=0.1),
            "tms",
            "IEC curves",
        ),
        (
            InverseTimeSettings(name="51P", type="51", pickup_a=400.0, curve="IEC_SI", tms=0.1, reset="disk"),
            "reset",
            "disk emulation",
        ),
        (
            InverseTimeSettings(name="51P", type="51", pickup_a=400.0, curve="IEC_SI", tms=0.1, reset_delay_s=1.0),
            "reset_delay_s",
            "definite",
        ),
        (InverseTimeSettings(name="51P", type="51", pickup_a=400.0, curve="IEC_XX", tms=0.1), "curve", "IEC_SI"),  # type: ignore[arg-type]
        (OvercurrentSettings(name="", type="50", pickup_a=1.0), "name", "non-empty"),
        (OvercurrentSettings(name="x", type="50", pickup_a="1"), "pickup_a", "expected a number"),  # type: ignore[arg-type]
        (OvercurrentSettings(name="x", type="50", pickup_a=1.0, enabled=1), "enabled", "true or false"),  # type: ignore[arg-type]
    ],
)
def test_inconsistent_settings_refused(settings: ElementSettings, setting: str, text: str) -> None:
    errs = check_settings(settings)
    assert errs and errs[0].setting == setting and text in errs[0].message


def test_invalid_element_refuses_only_itself() -> None:
    good51 = VALID[InverseTimeSettings]
    bad50 = OvercurrentSettings(name="50P", type="50", pickup_a=-5.0)
    good27 = VALID[UndervoltageSettings]
    disabled = OvervoltageSettings(name="59", type="59", pickup_kv=7.0, enabled=False)
    bank = ElementBank(ProtectionSettings(group1=(good51, bad50, good27, disabled)))
    assert [e.name for e in bank.elements()] == ["51P", "27"]
    assert len(bank.errors) == 1
    err = bank.errors[0]
    assert (err.element, err.setting, err.group) == ("50P", "pickup_a", 1)
    assert str(err) == "element '50P' (group 1): setting 'pickup_a': -5.0 is out of range 0.01..100000"


def test_duplicate_names_refused_in_bank() -> None:
    a = VALID[OvercurrentSettings]
    bank = ElementBank(ProtectionSettings(group1=(a, a)))
    assert len(bank.elements()) == 1
    assert bank.errors[0].setting == "name" and "duplicate" in bank.errors[0].message


# -- the [protection] TOML section ----------------------------------------------------------------------------

TOML = """
[protection]
active_group = 2

[[protection.group1.elements]]
type = "51"
name = "51P"
pickup_a = 400
curve = "IEC_SI"
tms = 0.1

[[protection.group1.elements]]
type = "50N"
name = "50N"
pickup_a = 200
delay_s = 0.1

[[protection.group2.elements]]
type = "51"
name = "51P"
pickup_a = 300
curve = "IEEE_VI"
td = 2
reset = "disk"

[[protection.group2.elements]]
type = "81R"
name = "81R"
pickup_hz_s = 1
window_s = 0.2
uv_block_kv = 3
direction = "fall"
"""


def test_parse_valid_section() -> None:
    s, problems = parse_protection(tomllib.loads(TOML)["protection"], "site.toml")
    assert problems == []
    assert s.active_group == 2
    assert s.group1[0] == InverseTimeSettings(name="51P", type="51", pickup_a=400.0, curve="IEC_SI", tms=0.1)
    assert isinstance(s.group1[1], OvercurrentSettings) and s.group1[1].delay_s == 0.1
    assert s.group2[0] == InverseTimeSettings(
        name="51P", type="51", pickup_a=300.0, curve="IEEE_VI", td=2.0, reset="disk"
    )
    assert isinstance(s.group2[1], RocofSettings) and s.group2[1].direction == "fall"
    bank = ElementBank(s)
    assert bank.errors == () and bank.active_group == 2
    assert [e.name for e in bank.elements()] == ["51P", "81R"]


def test_parse_reports_every_problem_with_file_key_and_element() -> None:
    raw = {
        "active_group": 3,
        "groupp2": {},
        "group1": {
            "elements": [
                {"type": "51", "name": "51P", "pickup_a": 400, "curve": "IEC_SJ", "tms": 0.1},
                {"type": "51", "name": "51Q", "pickup_a": 400, "curve": "IEC_SI", "tmss": 0.1},
                {"type": "50", "name": "50P", "pickup_a": "lots"},
                {"type": "59", "name": "59"},
                {"type": "5O", "name": "typo"},
                {"name": "notype"},
                {"type": "50", "name": "50R", "pickup_a": 0.0},  # range only: kept, refused at arming
                {"type": "27", "name": "27", "pickup_kv": 5.0},
            ]
        },
    }
    s, problems = parse_protection(raw, "site.toml")
    text = [str(p) for p in problems]
    assert "site.toml: protection.active_group: expected 1 or 2, got 3" in text
    assert "site.toml: protection.groupp2: unknown key; did you mean 'group2'?" in text
    assert any(
        t.startswith("site.toml: protection.group1.elements[51P].curve: invalid value 'IEC_SJ'")
        and "did you mean 'IEC_SI'?" in t
        for t in text
    )
    assert "site.toml: protection.group1.elements[51Q].tmss: unknown key for a 51 element; did you mean 'tms'?" in text
    assert "site.toml: protection.group1.elements[50P].pickup_a: expected a number, got 'lots'" in text
    assert "site.toml: protection.group1.elements[59].pickup_kv: missing required key" in text
    assert any(
        t.startswith("site.toml: protection.group1.elements[typo].type: unknown element type '5O'") for t in text
    )
    assert any(t.startswith("site.toml: protection.group1.elements[notype].type: missing required key") for t in text)
    assert "site.toml: protection.group1.elements[50R].pickup_a: 0.0 is out of range 0.01..100000" in text
    assert "site.toml: protection.group1.elements[51Q].tms: required for the IEC curve IEC_SI" not in text
    # structurally bad elements are left out; the range-only one is kept and refused at arming, 27 arms
    assert [e.name for e in s.group1] == ["50R", "27"]
    bank = ElementBank(s)
    assert [e.name for e in bank.elements(1)] == ["27"]
    assert [(e.element, e.setting) for e in bank.errors] == [("50R", "pickup_a")]


def test_parse_tms_for_ieee_curve_names_the_key() -> None:
    raw = {"group1": {"elements": [{"type": "51N", "name": "51N", "pickup_a": 50, "curve": "IEEE_EI", "tms": 0.2}]}}
    _, problems = parse_protection(raw, "f.toml")
    assert [str(p) for p in problems] == [
        "f.toml: protection.group1.elements[51N].td: required for the IEEE curve IEEE_EI",
        "f.toml: protection.group1.elements[51N].tms: the time multiplier applies to IEC curves; IEEE_EI takes 'td'",
    ]


def test_parse_duplicates_and_shapes() -> None:
    e = {"type": "50", "name": "50P", "pickup_a": 10}
    _, problems = parse_protection({"group1": {"elements": [e, e]}, "group2": []}, "f.toml")
    text = [str(p) for p in problems]
    assert "f.toml: protection.group1.elements[50P].name: duplicate element name '50P' in group 1" in text
    assert "f.toml: protection.group2: expected a table with an 'elements' array" in text
    s, problems = parse_protection(None)
    assert s == ProtectionSettings() and problems == []
    _, problems = parse_protection([1])
    assert [p.key for p in problems] == ["protection"]


# -- settings groups ------------------------------------------------------------------------------------------


def test_group_switching_resets_timers_in_the_documented_way() -> None:
    g1 = (InverseTimeSettings(name="51P", type="51", pickup_a=400.0, curve="IEC_SI", tms=0.5),)
    g2 = (
        InverseTimeSettings(name="51P", type="51", pickup_a=400.0, curve="IEC_SI", tms=0.1),
        OvercurrentSettings(name="50P", type="50", pickup_a=5000.0),
    )
    bank = ElementBank(ProtectionSettings(group1=g1, group2=g2))
    m = Measurements()
    m.set_currents(2000.0, 0.0, 0.0)
    now = 0
    for _ in range(1000):  # 1 s at 5x with TMS 0.5 (t = 2.14 s): picked up, not tripped
        now += 1_000_000
        outs = bank.step(m, now)
    el1 = bank.element("51P", 1)
    assert isinstance(el1, InverseTimeOvercurrent)
    assert outs[0].picked_up and 0.4 < el1.integral < 0.5
    assert bank.switch_group(1, now) == ()  # already active: nothing happens
    released = bank.switch_group(2, now)
    assert bank.active_group == 2
    assert [o.name for o in released] == ["51P"]
    assert released[0].events == EV_DROPOUT | EV_GROUP_RESET and released[0].event_ns == now
    assert el1.integral == 0.0 and not el1.output.picked_up
    # group 2 starts from rest and times its own curve from the first step after the switch
    t_start = now + 1_000_000
    tripped_at = None
    for _ in range(2000):
        now += 1_000_000
        outs = bank.step(m, now)
        if outs[0].tripped and tripped_at is None:
            tripped_at = now
    assert outs[0].events == 0
    assert tripped_at is not None
    expected = 0.1 * 0.14 / (5.0**0.02 - 1)
    assert (tripped_at - t_start) * 1e-9 == pytest.approx(expected, abs=1e-3 + 1e-9)
    assert bank.tripped()
    released = bank.switch_group(1, now)
    assert released[0].events == EV_DROPOUT | EV_TRIP_RESET | EV_GROUP_RESET
    outs = bank.step(m, now + 1_000_000)
    assert outs[0].events == EV_PICKUP and el1.integral == 0.0
    with pytest.raises(ValueError):
        bank.switch_group(3, now)


# -- documentation and hot path -------------------------------------------------------------------------------


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs" / "protection.md").read_text()
    for t, cls in SETTINGS_BY_TYPE.items():
        assert f"`{t}`" in doc, t
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in doc, f"{cls.__name__}.{f.name}"
    for f in dataclasses.fields(ProtectionSettings):
        assert f"`{f.name}`" in doc


def test_step_does_not_accumulate_memory() -> None:
    settings = ProtectionSettings(group1=tuple(VALID.values()))
    bank = ElementBank(settings)
    m = Measurements(ia=500.0, ib=100.0, ic=100.0, i_n=10.0, va=6.3, vb=6.3, vc=6.3, f=50.0)
    now = 0
    for _ in range(2000):
        now += 1_000_000
        m.f -= 1e-4
        bank.step(m, now)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(5000):
            now += 1_000_000
            m.f -= 1e-4
            bank.step(m, now)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    pkg = str(ROOT / "protection")
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if str(s.traceback).startswith(pkg))
    assert grown < 1024, grown  # nothing allocated by the package is kept across steps

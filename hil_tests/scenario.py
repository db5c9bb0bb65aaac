"""HIL scenario files: TOML → frozen dataclasses, validated with errors that name the file, the key and the line.

A scenario (``hil_tests/scenarios/*.toml``, docs/hil.md) is a timeline of actions against a rig and the
gateway, plus the expectations checked afterwards::

    name = "50 instantaneous overcurrent"
    description = "A 3-phase fault at 5 x pickup trips 50P within one cycle plus the link."
    duration_s = 6                 # scenario time after the gateway is up (seconds)
    fast_scale = 0.1               # --fast multiplies action times and durations by this (default 1: none)

    [rig]                          # options for the rig; protected_feeder names the feeder the plots show
    protected_feeder = "feeder1"

    [gateway]                      # generated gateway config knobs
    poll_period_s = 1.0            # poll period of every device point (× the time scale in fast mode)
    storage = { commit_interval_ms = 100 }        # extra [storage] keys
    sink = { batch_size = 2000, max_interval_s = 0.5 }   # extra [[sinks]] keys

    [protection]                   # the gateway's [protection] table, source and outputs filled in by the runner
    period_ms = 5
    [[protection.group1.elements]]
    type = "50"
    name = "50P"
    pickup_a = 1500

    [[actions]]
    id = "f1"
    t = 2.0
    type = "fault"
    feeder = "feeder1"
    kind = "3ph"
    current_a = 3000
    duration_s = 1.0

    [[expect]]
    type = "trip"
    element = "50P"
    after = "f1"
    within_ms = [0, 60]            # or "curve": from the element's inverse-time curve, ± max(5 %, 20 ms)

Errors are :class:`ScenarioError` with a list of :class:`Problem` (file, key, line where known, message); every
problem of a file is reported, not only the first.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

ACTION_TYPES: Final[dict[str, dict[str, type | tuple[type, ...]]]] = {
    # type -> allowed keys (besides id, t, type) and their Python types
    "fault": {"feeder": str, "kind": str, "phases": str, "multiple": (int, float), "current_a": (int, float),
              "duration_s": (int, float)},
    "clear_fault": {"feeder": str},
    "frequency": {"hz": (int, float), "rocof": (int, float), "duration_s": (int, float)},
    "voltage": {"feeder": str, "pu": (int, float), "duration_s": (int, float)},
    "device": {"name": str, "mode": str, "delay_s": (int, float), "duration_s": (int, float)},
    "network": {"target": str, "mode": str, "duration_s": (int, float), "latency_ms": (int, float)},
    "power_cut": {"delay_s": (int, float), "when": str},
    "close_breaker": {"feeder": str},
    "clock_jump": {"device": str, "offset_s": (int, float)},
    "disk_fill": {"mb": (int, float)},
    "wait_until": {"condition": str, "timeout_s": (int, float)},
}
REQUIRED_ACTION_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "fault": ("feeder", "kind"),
    "clear_fault": ("feeder",),
    "frequency": ("hz",),
    "voltage": ("feeder", "pu"),
    "device": ("name", "mode"),
    "network": ("target", "mode"),
    "power_cut": (),
    "close_breaker": ("feeder",),
    "clock_jump": ("offset_s",),
    "disk_fill": ("mb",),
    "wait_until": ("condition",),
}
ENUMS: Final[dict[tuple[str, str], tuple[str, ...]]] = {
    ("fault", "kind"): ("3ph", "ph-g"),
    ("device", "mode"): ("silent", "garbage", "slow", "restart", "ok"),
    ("network", "mode"): ("refuse", "blackhole", "latency", "reset", "pass"),
    ("power_cut", "when"): ("now", "mid_upload"),
}
#: the rig capability an action needs (None: the runner does it itself)
ACTION_CAPABILITY: Final[dict[str, str | None]] = {
    "fault": "fault", "clear_fault": "fault", "frequency": "frequency", "voltage": "voltage",
    "device": "device_fault", "network": "network", "power_cut": "power_cut", "close_breaker": "breaker",
    "clock_jump": "clock_jump", "disk_fill": "disk", "wait_until": None,
}
WAIT_CONDITIONS: Final = ("gateway_up", "backlog_zero", "breaker_open", "all_devices_ok")

EXPECT_TYPES: Final[dict[str, dict[str, type | tuple[type, ...]]]] = {
    "trip": {"element": str, "after": str, "within_ms": (list, str)},
    "no_trip": {"element": str, "during": (list, str)},
    "breaker_opens": {"feeder": str, "after": str, "within_s": (int, float)},
    "no_readings_lost": {},
    "alarm": {"match": str, "kind": str, "device": str, "after": str, "at": str, "within_s": (int, float)},
    "soe_order": {"first": str, "then": str, "after": str},
    "backlog_drained": {"after": str, "within_s": (int, float)},
    "device_state": {"device": str, "state": str, "after": str, "at": str, "within_s": (int, float)},
    "priority_events_kept": {},
    "source_time_offset": {"device": str, "after": str, "offset_s": (int, float), "tolerance_s": (int, float)},
}
REQUIRED_EXPECT_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "trip": ("element", "after", "within_ms"),
    "no_trip": ("element",),
    "breaker_opens": ("feeder", "after", "within_s"),
    "no_readings_lost": (),
    "alarm": ("after", "within_s"),
    "soe_order": ("first", "then"),
    "backlog_drained": ("after", "within_s"),
    "device_state": ("device", "state", "after", "within_s"),
    "priority_events_kept": (),
    "source_time_offset": ("device", "after", "offset_s"),
}
TOP_KEYS: Final = ("name", "description", "duration_s", "fast_scale", "rig", "gateway", "protection", "actions",
                   "expect")
GATEWAY_KEYS: Final = ("poll_period_s", "storage", "sink", "device_timeout_s")


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ScenarioError(Exception):
    """A scenario file could not be used; ``problems`` lists every error found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Action:
    """One timeline entry: at ``t`` s after the gateway is up (scaled in fast mode), do ``type`` with ``params``."""

    id: str
    type: str
    t: float
    params: dict[str, Any] = field(default_factory=dict)
    line: int | None = None

    @property
    def duration_s(self) -> float | None:
        d = self.params.get("duration_s")
        return None if d is None else float(d)

    def describe(self) -> str:
        ps = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.type}({ps})"


@dataclass(frozen=True)
class Expectation:
    """One check evaluated after the run; ``type`` one of EXPECT_TYPES."""

    type: str
    params: dict[str, Any] = field(default_factory=dict)
    index: int = 0
    line: int | None = None

    @property
    def name(self) -> str:
        p = self.params
        bits = [self.type] + [str(p[k]) for k in ("element", "feeder", "device", "match", "after", "state") if k in p]
        return f"{self.index + 1:02d} " + " ".join(bits)


@dataclass(frozen=True)
class Scenario:
    name: str
    file: Path
    description: str
    duration_s: float
    fast_scale: float
    rig: dict[str, Any]
    gateway: dict[str, Any]
    protection: dict[str, Any] | None
    actions: tuple[Action, ...]
    expectations: tuple[Expectation, ...]

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_-]+", "-", self.file.stem).strip("-") or "scenario"

    def action(self, action_id: str) -> Action | None:
        return next((a for a in self.actions if a.id == action_id), None)

    def element(self, name: str) -> dict[str, Any] | None:
        """The protection element settings table named ``name`` in the active group."""
        if not self.protection:
            return None
        group = int(self.protection.get("active_group", 1))
        for el in (self.protection.get(f"group{group}") or {}).get("elements", []):
            if isinstance(el, dict) and el.get("name") == name:
                return el
        return None


def _suggest(key: str, valid: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f"; did you mean '{close[0]}'?" if close else f" (valid: {', '.join(valid)})"


class _Lines:
    """Best-effort line numbers: tomllib keeps none, so keys are found in the text of their table."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def table(self, header: str, index: int = 0) -> int | None:
        """1-based line of the ``index``-th ``[[header]]`` (or ``[header]``) line."""
        pat = re.compile(rf"^\s*\[\[?\s*{re.escape(header)}\s*\]\]?\s*(#.*)?$")
        n = 0
        for i, line in enumerate(self.lines):
            if pat.match(line):
                if n == index:
                    return i + 1
                n += 1
        return None

    def key(self, key: str, start: int | None = None) -> int | None:
        """Line of ``key = ...`` after line ``start`` (before the next table header), or anywhere at top level."""
        pat = re.compile(rf"^\s*{re.escape(key)}\s*=")
        begin = (start or 0)
        for i in range(begin, len(self.lines)):
            line = self.lines[i]
            if i > begin and start is not None and line.lstrip().startswith("["):
                break
            if start is None and line.lstrip().startswith("["):
                break
            if pat.match(line):
                return i + 1
        return start


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate one scenario file. Raises ScenarioError (every problem listed)."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioError([Problem(file, "", f"cannot read: {e.strerror or e}")]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ScenarioError([Problem(file, "", f"not valid TOML: {e}", int(m.group(1)) if m else None)]) from None
    return parse_scenario(raw, file, text)


def parse_scenario(raw: dict[str, Any], file: str = "<scenario>", text: str = "") -> Scenario:
    lines = _Lines(text)
    problems: list[Problem] = []

    def err(key: str, message: str, line: int | None = None) -> None:
        problems.append(Problem(file, key, message, line))

    for k in raw:
        if k not in TOP_KEYS:
            err(k, f"unknown key{_suggest(k, TOP_KEYS)}", lines.key(k))
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        err("name", "required: a non-empty string", lines.key("name"))
        name = Path(file).stem
    description = raw.get("description", "")
    if not isinstance(description, str):
        err("description", "expected a string", lines.key("description"))
        description = ""
    duration: Any = raw.get("duration_s")
    if not _is_num(duration) or duration <= 0:
        err("duration_s", f"required: a number of seconds > 0, got {duration!r}", lines.key("duration_s"))
        duration = 1.0
    fast_scale = raw.get("fast_scale", 1.0)
    if not _is_num(fast_scale) or not 0 < fast_scale <= 1:
        err("fast_scale", f"expected a number in (0, 1], got {fast_scale!r}", lines.key("fast_scale"))
        fast_scale = 1.0
    rig = raw.get("rig", {})
    if not isinstance(rig, dict):
        err("rig", "expected a table", lines.table("rig"))
        rig = {}
    gateway = raw.get("gateway", {})
    if not isinstance(gateway, dict):
        err("gateway", "expected a table", lines.table("gateway"))
        gateway = {}
    gline = lines.table("gateway")
    for k, v in gateway.items():
        if k not in GATEWAY_KEYS:
            err(f"gateway.{k}", f"unknown key{_suggest(k, GATEWAY_KEYS)}", lines.key(k, gline))
        elif k in ("storage", "sink") and not isinstance(v, dict):
            err(f"gateway.{k}", "expected a table", lines.key(k, gline))
        elif k in ("poll_period_s", "device_timeout_s") and (not _is_num(v) or v <= 0):
            err(f"gateway.{k}", f"expected a number > 0, got {v!r}", lines.key(k, gline))

    protection = raw.get("protection")
    if protection is not None:
        if not isinstance(protection, dict):
            err("protection", "expected a table", lines.table("protection"))
            protection = None
        else:
            from protection.config import parse_protection

            settings_only = {k: v for k, v in protection.items()
                             if k in ("active_group", "group1", "group2")}
            _, probs = parse_protection(settings_only, file)
            for p in probs:
                m = re.search(r"elements\[([^\]]+)\]", p.key)
                ln = None
                if m:
                    for i, line in enumerate(lines.lines):
                        if re.match(rf'^\s*name\s*=\s*"{re.escape(m.group(1))}"', line):
                            ln = i + 1
                            break
                err(p.key, p.message, ln)
            for k in ("source", "outputs"):
                if k in protection:
                    err(f"protection.{k}", "set by the runner from the rig's protection endpoint; leave it out",
                        lines.table(f"protection.{k}"))

    actions: list[Action] = []
    raw_actions = raw.get("actions", [])
    if not isinstance(raw_actions, list):
        err("actions", "expected an array of tables ([[actions]])", lines.key("actions"))
        raw_actions = []
    seen_ids: set[str] = set()
    for i, a in enumerate(raw_actions):
        ln = lines.table("actions", i)
        key = f"actions[{i}]"
        if not isinstance(a, dict):
            err(key, "expected a table", ln)
            continue
        atype = a.get("type")
        if atype not in ACTION_TYPES:
            err(f"{key}.type", f"unknown action type {atype!r}{_suggest(str(atype), list(ACTION_TYPES))}",
                lines.key("type", ln))
            continue
        aid = a.get("id", f"{atype}{i + 1}")
        if not isinstance(aid, str) or not aid:
            err(f"{key}.id", "expected a non-empty string", lines.key("id", ln))
            aid = f"{atype}{i + 1}"
        if aid in seen_ids:
            err(f"{key}.id", f"duplicate action id {aid!r}", lines.key("id", ln))
        seen_ids.add(aid)
        t: Any = a.get("t")
        if not _is_num(t) or t < 0:
            err(f"{key}.t", f"required: seconds after start (>= 0), got {t!r}", lines.key("t", ln) or ln)
            t = 0.0
        allowed = ACTION_TYPES[atype]
        params: dict[str, Any] = {}
        for k, v in a.items():
            if k in ("id", "t", "type"):
                continue
            if k not in allowed:
                err(f"{key}.{k}", f"unknown key for a {atype} action{_suggest(k, list(allowed))}", lines.key(k, ln))
                continue
            want = allowed[k]
            ok = isinstance(v, want) and not isinstance(v, bool)
            if not ok:
                err(f"{key}.{k}", f"expected {_type_name(want)}, got {v!r}", lines.key(k, ln))
                continue
            enum = ENUMS.get((atype, k))
            if enum and v not in enum:
                err(f"{key}.{k}", f"{v!r} is not one of {', '.join(enum)}", lines.key(k, ln))
                continue
            params[k] = v
        for k in REQUIRED_ACTION_KEYS[atype]:
            if k not in a:
                err(f"{key}.{k}", f"required for a {atype} action", ln)
        if atype == "fault" and "multiple" in params and "current_a" in params:
            err(f"{key}", "give multiple or current_a, not both", ln)
        if atype == "fault" and "multiple" not in params and "current_a" not in params:
            err(f"{key}.current_a", "a fault needs current_a (A) or multiple (x pickup)", ln)
        if atype == "network":
            tgt = str(params.get("target", ""))
            if tgt != "cloud" and not tgt.startswith("device:"):
                err(f"{key}.target", f'expected "cloud" or "device:<name>", got {tgt!r}', lines.key("target", ln))
        if atype == "wait_until" and params.get("condition") not in WAIT_CONDITIONS:
            err(f"{key}.condition", f"expected one of {', '.join(WAIT_CONDITIONS)}", lines.key("condition", ln))
        for k in ("duration_s", "delay_s", "mb", "timeout_s"):
            if k in params and params[k] < 0:
                err(f"{key}.{k}", "must be >= 0", lines.key(k, ln))
        actions.append(Action(aid, atype, float(t), params, ln))

    expectations: list[Expectation] = []
    raw_exp = raw.get("expect", [])
    if not isinstance(raw_exp, list):
        err("expect", "expected an array of tables ([[expect]])", lines.key("expect"))
        raw_exp = []
    ids = {a.id for a in actions}
    for i, e in enumerate(raw_exp):
        ln = lines.table("expect", i)
        key = f"expect[{i}]"
        if not isinstance(e, dict):
            err(key, "expected a table", ln)
            continue
        etype = e.get("type")
        if etype not in EXPECT_TYPES:
            err(f"{key}.type", f"unknown expectation {etype!r}{_suggest(str(etype), list(EXPECT_TYPES))}",
                lines.key("type", ln))
            continue
        allowed = EXPECT_TYPES[etype]
        params = {}
        for k, v in e.items():
            if k == "type":
                continue
            if k not in allowed:
                err(f"{key}.{k}", f"unknown key for a {etype} expectation{_suggest(k, list(allowed))}",
                    lines.key(k, ln))
                continue
            want = allowed[k]
            if not isinstance(v, want) or isinstance(v, bool):
                err(f"{key}.{k}", f"expected {_type_name(want)}, got {v!r}", lines.key(k, ln))
                continue
            params[k] = v
        for k in REQUIRED_EXPECT_KEYS[etype]:
            if k not in e:
                err(f"{key}.{k}", f"required for a {etype} expectation", ln)
        if "after" in params and params["after"] not in ids:
            err(f"{key}.after", f"no action with id {params['after']!r}{_suggest(params['after'], sorted(ids))}",
                lines.key("after", ln))
        if etype == "trip" and "within_ms" in params:
            w = params["within_ms"]
            if isinstance(w, str):
                if w != "curve":
                    err(f"{key}.within_ms", f'expected [min, max] (ms) or "curve", got {w!r}',
                        lines.key("within_ms", ln))
            elif len(w) != 2 or not all(_is_num(x) for x in w) or w[0] > w[1]:
                err(f"{key}.within_ms", f"expected [min, max] in ms with min <= max, got {w!r}",
                    lines.key("within_ms", ln))
        if etype in ("trip", "no_trip") and protection is not None and "element" in params:
            names = _element_names(protection)
            if params["element"] not in names:
                err(f"{key}.element", f"no protection element {params['element']!r} in the scenario's settings"
                    f"{_suggest(params['element'], names)}", lines.key("element", ln))
        if etype in ("trip", "no_trip") and protection is None:
            err(f"{key}", f"a {etype} expectation needs a [protection] section", ln)
        if etype == "no_trip" and "during" in params:
            d = params["during"]
            if isinstance(d, str) and d != "all" and d not in ids:
                err(f"{key}.during", f'expected "all", an action id or [from_id, to_id], got {d!r}',
                    lines.key("during", ln))
            if isinstance(d, list) and (len(d) != 2 or any(x not in ids for x in d)):
                err(f"{key}.during", f"expected [from_action_id, to_action_id], got {d!r}", lines.key("during", ln))
        if params.get("at", "start") not in ("start", "end"):
            err(f"{key}.at", f'expected "start" or "end" (of the action named by after), got {params["at"]!r}',
                lines.key("at", ln))
        for k in ("within_s",):
            if k in params and params[k] <= 0:
                err(f"{key}.{k}", "must be > 0", lines.key(k, ln))
        expectations.append(Expectation(str(etype), params, i, ln))
    if not expectations and not problems:
        err("expect", "a scenario needs at least one [[expect]]")
    if problems:
        raise ScenarioError(problems)
    return Scenario(
        name=str(name), file=Path(file), description=description, duration_s=float(duration),
        fast_scale=float(fast_scale), rig=dict(rig), gateway=dict(gateway), protection=protection,
        actions=tuple(sorted(actions, key=lambda a: a.t)), expectations=tuple(expectations),
    )


def _element_names(protection: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for g in ("group1", "group2"):
        for el in (protection.get(g) or {}).get("elements", []) or []:
            if isinstance(el, dict) and isinstance(el.get("name"), str):
                out.append(el["name"])
    return out


def _type_name(t: type | tuple[type, ...]) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    names = {int: "a number", float: "a number", str: "a string", list: "an array", dict: "a table"}
    return " or ".join(dict.fromkeys(names.get(x, x.__name__) for x in ts))


def load_all(paths: list[Path]) -> tuple[list[Scenario], list[ScenarioError]]:
    """Load every file; return the good scenarios and the errors of the others."""
    good: list[Scenario] = []
    bad: list[ScenarioError] = []
    for p in paths:
        try:
            good.append(load_scenario(p))
        except ScenarioError as e:
            bad.append(e)
    return good, bad

"""Expectations of a HIL scenario, evaluated after the run from what the runner measured (:class:`RunData`).

Each yields an :class:`Outcome`: ``pass`` / ``fail`` / ``skip`` with a one-line message carrying the measured
value ("trip after 312.4 ms, window [280, 340] ms") and the raw figures in ``measured``. An expectation whose
action was skipped (the rig cannot do it) is skipped too, never passed.

Times: the rig's inception timestamps and breaker command arrivals are ``time.monotonic_ns()`` of this machine;
the protection process's SOE events carry ``mono_ns`` on the same clock (CLOCK_MONOTONIC is system-wide);
other events carry only their UTC ``ts``, mapped onto the monotonic clock with the offset taken at start.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Final

from hil_tests.runner import ActionRecord, RunData
from hil_tests.scenario import Expectation

ALARM_KINDS: Final = ("alarm", "comm", "gap", "fault_record", "protection")
EARLY_SLACK_NS: Final = 50_000_000  # an event stamped up to 50 ms before its cause still counts (clock mapping)


@dataclass
class Outcome:
    expectation: Expectation
    status: str  # "pass" | "fail" | "skip"
    message: str
    measured: dict[str, Any] = field(default_factory=dict)
    window: tuple[float, float] | None = None  # trip: the expected window in ms after inception


def _ms(ns: int) -> float:
    return ns / 1e6


def _action(d: RunData, exp: Expectation, key: str = "after") -> tuple[ActionRecord | None, Outcome | None]:
    aid = exp.params.get(key)
    if aid is None:
        return None, None
    rec = d.record(str(aid))
    if rec is None:
        return None, Outcome(exp, "fail", f"no action {aid!r} in the timeline")
    if rec.status == "skipped":
        return rec, Outcome(exp, "skip", f"action {aid!r} was skipped: {rec.reason}")
    if rec.status != "done" or not rec.mono_ns:
        return rec, Outcome(exp, "fail", f"action {aid!r} did not happen ({rec.status}: {rec.reason})")
    return rec, None


def _ref_ns(exp: Expectation, rec: ActionRecord) -> tuple[int, str] | None:
    """The reference time of an expectation: the action's start, or with ``at = "end"`` its end (None: the
    action has no end yet)."""
    if exp.params.get("at", "start") == "end":
        if not rec.end_mono_ns:
            return None
        return rec.end_mono_ns, f"{rec.action.id} ended"
    return rec.mono_ns, rec.action.id


def curve_window(d: RunData, exp: Expectation, rec: ActionRecord) -> tuple[float, float, str] | None:
    """The expected trip window (ms) from the element's inverse-time curve at the fault's current: the operate
    time ± max(5 %, 20 ms)."""
    from protection.curves import CURVES, operate_time

    el = d.scenario.element(str(exp.params["element"]))
    if el is None or "curve" not in el:
        return None
    cur = rec.action.params.get("current_a")
    if cur is None:
        return None
    m = float(cur) / float(el["pickup_a"])
    mult = float(el.get("tms", el.get("td", 1.0)))
    t = operate_time(CURVES[str(el["curve"])], m, mult)
    if not math.isfinite(t):
        return None
    tol = max(0.05 * t, 0.020)
    return 1000 * (t - tol), 1000 * (t + tol), f"{el['curve']} {'TMS' if 'tms' in el else 'TD'} {mult:g} at " \
                                                   f"M = {m:.2f}: t = {1000 * t:.1f} ms ± {1000 * tol:.1f} ms"


def _soe_trips(d: RunData, element: str) -> list[dict[str, Any]]:
    """The element's SOE trip events ("51P TRIP phases A (group 1)", "50P PICKUP|TRIP ..."): by the event's data
    (element, events) and, for events without data, by the message."""
    pat = re.compile(rf"^{re.escape(element)} (?:[A-Z_]+\|)*TRIP(?:\||\s|$)")
    out = []
    for e in d.events:
        if e["kind"] != "soe":
            continue
        data = e["data"]
        if data.get("element") is not None:
            if data.get("element") == element and "TRIP" in (data.get("events") or []):
                out.append(e)
        elif pat.match(e["message"]):
            out.append(e)
    return out


def check_trip(d: RunData, exp: Expectation) -> Outcome:
    rec, bad = _action(d, exp)
    if bad is not None:
        return bad
    assert rec is not None
    w = exp.params["within_ms"]
    basis = ""
    if isinstance(w, str):
        cw = curve_window(d, exp, rec)
        if cw is None:
            return Outcome(exp, "fail", f'within_ms = "curve" needs a 51-type element with a curve and a fault '
                                        f"with current_a; {exp.params['element']!r} / {rec.action.id!r} have none")
        lo, hi, basis = cw
    else:
        lo, hi = float(w[0]), float(w[1])
    t0 = rec.mono_ns
    arrivals = [b for b in d.breaker_log if b.get("event") == "trip_cmd" and int(b["mono_ns"]) >= t0]
    soe = [e for e in _soe_trips(d, str(exp.params["element"])) if e["mono_ns"] >= t0 - EARLY_SLACK_NS]
    measured: dict[str, Any] = {"window_ms": [round(lo, 1), round(hi, 1)]}
    if basis:
        measured["expected"] = basis
    soe_ms = _ms(soe[0]["mono_ns"] - t0) if soe else None
    cmd_ms = _ms(int(arrivals[0]["mono_ns"]) - t0) if arrivals else None
    measured["soe_trip_ms"] = None if soe_ms is None else round(soe_ms, 2)
    measured["breaker_cmd_ms"] = None if cmd_ms is None else round(cmd_ms, 2)
    if soe_ms is None and cmd_ms is None:
        return Outcome(exp, "fail", f"{exp.params['element']} did not trip (no SOE trip event, no breaker command); "
                                    f"window [{lo:.0f}, {hi:.0f}] ms", measured, (lo, hi))
    if soe_ms is None and d.events:
        return Outcome(exp, "fail", f"the breaker got a trip command after {cmd_ms:.1f} ms but no "
                                    f"'{exp.params['element']} TRIP' SOE event was stored", measured, (lo, hi))
    # the breaker command arrival is exact (the rig's clock); the SOE time is the protection cycle's decision
    t_ms = cmd_ms if cmd_ms is not None else soe_ms
    assert t_ms is not None
    via = "breaker command arrival" if cmd_ms is not None else "SOE event"
    extra = f"; SOE trip at {soe_ms:.1f} ms" if soe_ms is not None and cmd_ms is not None else ""
    measured["trip_ms"] = round(t_ms, 2)
    ok = lo <= t_ms <= hi
    msg = f"trip after {t_ms:.1f} ms ({via}{extra}), window [{lo:.1f}, {hi:.1f}] ms"
    if basis:
        msg += f" ({basis})"
    return Outcome(exp, "pass" if ok else "fail", msg, measured, (lo, hi))


def _period(d: RunData, exp: Expectation) -> tuple[int, int, str] | Outcome:
    during = exp.params.get("during", "all")
    if during == "all":
        return d.t0_mono_ns, d.end_mono_ns or 2**62, "the whole run"
    ids = [during] if isinstance(during, str) else list(during)
    recs = []
    for aid in ids:
        rec = d.record(str(aid))
        if rec is None or rec.status == "skipped" or not rec.mono_ns:
            why = "skipped" if rec is not None and rec.status == "skipped" else "did not happen"
            return Outcome(exp, "skip" if why == "skipped" else "fail", f"action {aid!r} {why}")
        recs.append(rec)
    start = recs[0].mono_ns
    last = recs[-1]
    end = last.end_mono_ns or (d.end_mono_ns if len(recs) == 1 else last.mono_ns)
    return start, end, f"{ids[0]}..{ids[-1]}" if len(ids) > 1 else f"action {ids[0]}"


def check_no_trip(d: RunData, exp: Expectation) -> Outcome:
    per = _period(d, exp)
    if isinstance(per, Outcome):
        return per
    start, end, what = per
    trips = [e for e in _soe_trips(d, str(exp.params["element"])) if start <= e["mono_ns"] <= end]
    if not d.events:
        return Outcome(exp, "fail", "no events could be read from the store")
    if trips:
        t = _ms(trips[0]["mono_ns"] - start)
        return Outcome(exp, "fail", f"{exp.params['element']} tripped {t:.1f} ms into {what}", {"trips": len(trips)})
    return Outcome(exp, "pass", f"{exp.params['element']} did not trip during {what} "
                                f"({(end - start) / 1e9:.2f} s)", {"trips": 0})


def check_breaker_opens(d: RunData, exp: Expectation) -> Outcome:
    rec, bad = _action(d, exp)
    if bad is not None:
        return bad
    assert rec is not None
    feeder = str(exp.params["feeder"])
    within = float(exp.params["within_s"])
    t0 = rec.mono_ns
    opened: int | None = None
    key = f"{feeder}.breaker"
    ts = d.samples.get("t_mono_ns", [])
    br = d.samples.get(key, [])
    for t, b in zip(ts, br, strict=False):
        if t >= t0 and b < 0.5:
            opened = int(t)
            break
    cmds = [int(b["mono_ns"]) for b in d.breaker_log
            if b.get("event") == "trip_cmd" and b.get("feeder") == feeder and int(b["mono_ns"]) >= t0]
    if opened is None and cmds:
        opened = cmds[0]
    if opened is None:
        return Outcome(exp, "fail", f"breaker {feeder} did not open (no open sample, no trip command)")
    dt = (opened - t0) / 1e9
    ok = dt <= within
    return Outcome(exp, "pass" if ok else "fail", f"breaker {feeder} open {dt * 1000:.1f} ms after {rec.action.id} "
                                                  f"(limit {within:g} s)", {"open_after_s": round(dt, 4)})


def check_no_readings_lost(d: RunData, exp: Expectation) -> Outcome:
    r = d.reconciliation
    if r is None:
        return Outcome(exp, "fail", "no reconciliation (the store or the receiver could not be read)")
    if "error" in r:
        return Outcome(exp, "fail", f"reconciliation failed: {r['error']}", dict(r))
    bad = {k: r[k] for k in ("not_landed", "changed", "phantom", "duplicates", "store_gaps") if r.get(k)}
    dups = f"duplicates {r['duplicates']}"
    if r.get("duplicates"):
        by = ", ".join(f"{k} {v}" for k, v in (r.get("stored_twice_by_device") or {}).items())
        dups += (f" ({r.get('duplicate_seqs', 0)} seqs landed twice; {r.get('stored_twice', 0)} device readings "
                 f"— same point, time and value — stored twice under two seqs{': ' + by if by else ''})")
    msg = (f"{r['committed']} committed, {r['landed']} landed; not landed {r['not_landed']}, changed "
           f"{r['changed']}, phantom {r['phantom']}, {dups}, store gaps {r['store_gaps']}; "
           f"{r['redelivered_rows']} rows re-sent and deduplicated")
    if r["committed"] == 0:
        return Outcome(exp, "fail", "nothing was committed: " + msg, dict(r))
    return Outcome(exp, "fail" if bad else "pass", msg, dict(r))


def _match_event(e: dict[str, Any], pattern: str) -> bool:
    """``pattern``: "kind:regex" or a case-insensitive regex on the message (also tried on "device.point")."""
    kind, _, rest = pattern.partition(":")
    if rest and kind in ("alarm", "comm", "gap", "soe", "fault_record", "protection", "control", "audit"):
        if e["kind"] != kind:
            return False
        pattern = rest
    rx = re.compile(pattern, re.IGNORECASE)
    return bool(rx.search(e["message"]) or rx.search(f"{e['device']}.{e['point']}"))


def check_alarm(d: RunData, exp: Expectation) -> Outcome:
    rec, bad = _action(d, exp)
    if bad is not None:
        return bad
    assert rec is not None
    within = float(exp.params["within_s"])
    kind = exp.params.get("kind")
    device = exp.params.get("device")
    match = exp.params.get("match")
    ref = _ref_ns(exp, rec)
    if ref is None:
        return Outcome(exp, "fail", f"action {rec.action.id} never ended")
    t0, ref_name = ref
    cands = []
    for e in d.events:
        if kind is not None and e["kind"] != kind:
            continue
        if kind is None and e["kind"] not in ALARM_KINDS:
            continue
        if device is not None and e["device"] != device:
            continue
        if match is not None and not re.search(str(match), e["message"], re.IGNORECASE):
            continue
        if e["mono_ns"] < t0 - EARLY_SLACK_NS:
            continue
        cands.append(e)
    what = " ".join(x for x in (f"kind {kind}" if kind else "", f"device {device}" if device else "",
                                f"/{match}/" if match else "") if x) or "any alarm"
    if not cands:
        return Outcome(exp, "fail", f"no alarm ({what}) after {ref_name}", {"events": len(d.events)})
    first = min(cands, key=lambda e: e["mono_ns"])
    dt = (first["mono_ns"] - t0) / 1e9
    ok = dt <= within
    return Outcome(exp, "pass" if ok else "fail",
                   f"{first['kind']} '{first['message'][:120]}' {dt:.2f} s after {ref_name} (limit {within:g} s)",
                   {"after_s": round(dt, 3), "message": first["message"], "kind": first["kind"]})


def check_soe_order(d: RunData, exp: Expectation) -> Outcome:
    _, bad = _action(d, exp)  # with after = <action>: skipped when that action was
    if bad is not None:
        return bad
    a, b = str(exp.params["first"]), str(exp.params["then"])
    ea = [e for e in d.events if _match_event(e, a)]
    eb = [e for e in d.events if _match_event(e, b)]
    if not ea or not eb:
        missing = " and ".join(x for x, es in ((a, ea), (b, eb)) if not es)
        return Outcome(exp, "fail", f"no event matching {missing}")
    fa = min(ea, key=lambda e: (e["mono_ns"], e["seq"]))
    fb = min(eb, key=lambda e: (e["mono_ns"], e["seq"]))
    dt = _ms(fb["mono_ns"] - fa["mono_ns"])
    ok = (fa["mono_ns"], fa["seq"]) < (fb["mono_ns"], fb["seq"])
    return Outcome(exp, "pass" if ok else "fail",
                   f"'{fa['message'][:60]}' then '{fb['message'][:60]}' {dt:+.1f} ms later",
                   {"delta_ms": round(dt, 2)})


def check_backlog_drained(d: RunData, exp: Expectation) -> Outcome:
    rec, bad = _action(d, exp)
    if bad is not None:
        return bad
    assert rec is not None
    within = float(exp.params["within_s"])
    t_end = rec.end_mono_ns or rec.mono_ns
    if not rec.end_mono_ns and rec.action.duration_s is not None:
        return Outcome(exp, "fail", f"action {rec.action.id} never ended")
    peak = max((s.backlog or 0 for s in d.status if s.ok and s.mono_ns <= t_end), default=0)
    for s in d.status:
        if s.mono_ns >= t_end and s.ok and s.backlog == 0:
            dt = (s.mono_ns - t_end) / 1e9
            return Outcome(exp, "pass" if dt <= within else "fail",
                           f"backlog 0 {dt:.2f} s after {rec.action.id} ended (limit {within:g} s; peak backlog "
                           f"{peak} rows)", {"drained_after_s": round(dt, 2), "peak_backlog": peak})
    return Outcome(exp, "fail", f"backlog never reached 0 after {rec.action.id} ended (peak {peak} rows)",
                   {"peak_backlog": peak})


def check_device_state(d: RunData, exp: Expectation) -> Outcome:
    rec, bad = _action(d, exp)
    if bad is not None:
        return bad
    assert rec is not None
    dev, state = str(exp.params["device"]), str(exp.params["state"])
    wanted = set(state.split("|"))
    within = float(exp.params["within_s"])
    ref = _ref_ns(exp, rec)
    if ref is None:
        return Outcome(exp, "fail", f"action {rec.action.id} never ended")
    t0, ref_name = ref
    seen: list[str] = []
    for s in d.status:
        if s.mono_ns < t0 or not s.ok:
            continue
        cur = s.devices.get(dev)
        if cur is not None and (not seen or seen[-1] != cur):
            seen.append(cur)
        if cur in wanted:
            dt = (s.mono_ns - t0) / 1e9
            return Outcome(exp, "pass" if dt <= within else "fail",
                           f"{dev} {cur} {dt:.2f} s after {ref_name} (limit {within:g} s; sampled every "
                           f"0.5 s)", {"after_s": round(dt, 2)})
    return Outcome(exp, "fail", f"{dev} never {state!r} after {ref_name} (seen: {' → '.join(seen) or '-'})")


def check_priority_events_kept(d: RunData, exp: Expectation) -> Outcome:
    """No loss of priority-0 events: every priority-0/1 event seq between the first and the last is present."""
    if not d.events:
        return Outcome(exp, "fail", "no events could be read from the store")
    gaps = [e for e in d.events if e["kind"] == "gap"]
    evicted = sum(int(e["data"].get("events", 0) or 0) for e in gaps)
    prio = [e for e in d.events if e["priority"] <= 1]
    return Outcome(exp, "pass", f"{len(prio)} priority-0/1 events kept, {len(gaps)} gap records; "
                                f"the gap records say {evicted} events of priority >= 2 were evicted",
                   {"priority_events": len(prio), "gap_records": len(gaps), "evicted_events": evicted})


def check_source_time_offset(d: RunData, exp: Expectation) -> Outcome:
    """The device's newest stored reading carries its own clock: ts − the wall time the run ended ≈ offset_s
    (the gateway keeps a source timestamp where the protocol carries one; readings without one get the
    gateway's time, so a jumped device clock shows in its time-stamped readings only)."""
    rec, bad = _action(d, exp)
    if bad is not None:
        return bad
    assert rec is not None
    dev = str(exp.params["device"])
    want = float(exp.params["offset_s"])
    tol = float(exp.params.get("tolerance_s", 10.0))
    info = d.device_ts.get(dev)
    if info is None:
        return Outcome(exp, "fail", f"no readings of {dev} in the store")
    end_wall = d.end_mono_ns + d.wall_offset_ns
    off = (info["max_ts"] - end_wall) / 1e9
    ok = abs(off - want) <= tol
    return Outcome(exp, "pass" if ok else "fail",
                   f"{dev}'s newest reading is stamped {off:+.1f} s from the gateway's clock at the end "
                   f"(expected {want:+g} s ± {tol:g} s; {info['rows']} readings)",
                   {"offset_s": round(off, 2), "rows": info["rows"]})


CHECKS: Final = {
    "trip": check_trip,
    "no_trip": check_no_trip,
    "breaker_opens": check_breaker_opens,
    "no_readings_lost": check_no_readings_lost,
    "alarm": check_alarm,
    "soe_order": check_soe_order,
    "backlog_drained": check_backlog_drained,
    "device_state": check_device_state,
    "priority_events_kept": check_priority_events_kept,
    "source_time_offset": check_source_time_offset,
}


def evaluate(d: RunData) -> list[Outcome]:
    out: list[Outcome] = []
    for exp in d.scenario.expectations:
        try:
            o = CHECKS[exp.type](d, exp)
        except Exception as e:  # a bug in a check must show, not hide the others
            o = Outcome(exp, "fail", f"check raised {type(e).__name__}: {e}")
        out.append(o)
    return out

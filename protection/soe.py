"""Ring records → gateway events: the sequence of events (SOE) the store keeps and the panel and cloud show.

:func:`records_to_events` turns a batch of :data:`protection.shm.EVENT_DTYPE` records, read by the gateway from
the protection process's ring, into :class:`gateway.model.Event` s:

| record | kind | priority | point | message (example) |
|---|---|---|---|---|
| element transition | ``soe`` | 0 | element name | ``51P PICKUP phases A,B (group 1)`` |
| trip output outcome | ``soe`` | 0 | output name | ``trip output feeder1-cb CONFIRMED 0.41 ms after send`` |
| cycle overruns (one per batch) | ``alarm`` | 0 | ``cycle`` | ``protection cycle overran 3 times (7 slots skipped)`` |
| group switch | ``soe`` | 0 | ``settings`` | ``settings group 2 in service`` |
| validity change | ``protection`` | 1 | ``measurements`` | ``measurements stale/invalid: Ia Ib Ic`` |
| cycle started | ``protection`` | 1 | ``cycle`` | ``protection cycle started at 5 ms`` |

``ts`` is the record's UTC time in ns (taken from the cycle's clock, µs meaningful); ``data`` is JSON with the raw
fields (``mono_ns``, ``utc_ns``, ``seq``, event names, phases) so nothing of the record is lost. ``device`` is
``"protection"`` for all of them. Pure functions, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.model import Event
from protection.measurements import V_F, V_IA, V_IB, V_IC, V_IN, V_VA, V_VB, V_VC
from protection.output import PH_A, PH_B, PH_C, PH_N, describe_events
from protection.shm import (
    CEV_GROUP,
    CEV_OVERRUN,
    CEV_STARTED,
    CEV_VALIDITY,
    ELEMENT_CYCLE,
    ELEMENT_OUTPUT,
    OEV_CONFIRMED,
    OEV_FAILED,
    OEV_LINK_DOWN,
    OEV_LINK_UP,
    OEV_RETRY,
    OEV_SENT,
    OUT_ERR_BAD_RESPONSE,
    OUT_ERR_EXCEPTION,
    OUT_ERR_IO,
    OUT_ERR_NOT_CONNECTED,
    OUT_ERR_TIMEOUT,
)

DEVICE = "protection"
_VALIDITY_NAMES = ((V_IA, "Ia"), (V_IB, "Ib"), (V_IC, "Ic"), (V_IN, "In"), (V_VA, "Va"), (V_VB, "Vb"), (V_VC, "Vc"),
                   (V_F, "f"))
_PHASE_NAMES = ((PH_A, "A"), (PH_B, "B"), (PH_C, "C"), (PH_N, "N"))
_OUT_NAMES = ((OEV_SENT, "SENT"), (OEV_CONFIRMED, "CONFIRMED"), (OEV_FAILED, "FAILED"), (OEV_RETRY, "RETRY"),
              (OEV_LINK_UP, "LINK_UP"), (OEV_LINK_DOWN, "LINK_DOWN"))
OUT_ERRORS = {
    OUT_ERR_NOT_CONNECTED: "not connected",
    OUT_ERR_TIMEOUT: "no response (timeout)",
    OUT_ERR_EXCEPTION: "exception response",
    OUT_ERR_IO: "connection error",
    OUT_ERR_BAD_RESPONSE: "bad response",
}


def phase_names(phases: int) -> str:
    """``"A,B"`` for ``PH_A | PH_B``."""
    return ",".join(n for bit, n in _PHASE_NAMES if phases & bit)


def invalid_quantities(valid: int) -> list[str]:
    """Names of the quantities whose validity bit is cleared."""
    return [n for bit, n in _VALIDITY_NAMES if not valid & bit]


def output_outcome(events: int, detail: int) -> str:
    """``"CONFIRMED 0.41 ms after send"``-style text for one output record."""
    name = next((n for bit, n in _OUT_NAMES if events & bit), f"0x{events:x}")
    if events & OEV_SENT:
        return f"{name} {detail / 1000:.3f} ms after the trip decision"
    if events & OEV_CONFIRMED:
        return f"{name} {detail / 1000:.3f} ms after send"
    if events & (OEV_FAILED | OEV_LINK_DOWN):
        why = OUT_ERRORS.get(detail & 0xFF, f"error {detail & 0xFF}")
        if detail & 0xFF == OUT_ERR_EXCEPTION:
            why += f" code {detail >> 8}"
        return f"{name}: {why}"
    if events & OEV_RETRY:
        return f"{name} attempt {detail}"
    return name


def records_to_events(
    recs: npt.NDArray[np.void],
    element_names: tuple[Sequence[str], Sequence[str]],
    output_names: Sequence[str],
    element_types: tuple[Sequence[str], Sequence[str]] | None = None,
) -> list[Event]:
    """Events for one batch of ring records (see the module doc). Overruns collapse into one alarm per batch."""
    out: list[Event] = []
    overruns = 0
    skipped = 0
    last_overrun: Any = None
    for r in recs:
        element = int(r["element"])
        group = int(r["group"])
        ev = int(r["events"])
        ph = int(r["phases"])
        utc = int(r["utc_ns"])
        raw: dict[str, Any] = {"seq": int(r["seq"]), "mono_ns": int(r["mono_ns"]), "utc_ns": utc}
        if element >= 0:
            names = element_names[group - 1] if group in (1, 2) else ()
            name = names[element] if element < len(names) else f"element{element}"
            etype = ""
            if element_types is not None and group in (1, 2) and element < len(element_types[group - 1]):
                etype = element_types[group - 1][element]
            what = describe_events(ev)
            phases = phase_names(ph)
            msg = f"{name} {what}" + (f" phases {phases}" if phases else "") + f" (group {group})"
            raw.update(element=name, type=etype, group=group, events=what.split("|"), phases=phases)
            out.append(_event(utc, "soe", 0, name, msg, raw))
        elif element == ELEMENT_OUTPUT:
            name = output_names[group] if 0 <= group < len(output_names) else f"output{group}"
            text = output_outcome(ev, ph)
            raw.update(output=name, outcome=text.split(" ")[0].rstrip(":"), detail=ph)
            out.append(_event(utc, "soe", 0, name, f"trip output {name} {text}", raw))
        elif element == ELEMENT_CYCLE:
            if ev & CEV_OVERRUN:
                overruns += 1
                skipped += ph
                last_overrun = r
            if ev & CEV_GROUP:
                raw.update(group=ph)
                out.append(_event(utc, "soe", 0, "settings", f"settings group {ph} in service", raw))
            if ev & CEV_VALIDITY:
                bad = invalid_quantities(ph)
                msg = "measurements valid" if not bad else "measurements stale/invalid: " + " ".join(bad)
                raw.update(valid=ph, invalid=bad)
                out.append(_event(utc, "protection", 1, "measurements", msg, raw))
            if ev & CEV_STARTED:
                raw.update(period_us=ph)
                out.append(_event(utc, "protection", 1, "cycle", f"protection cycle started at {ph / 1000:g} ms", raw))
    if overruns:
        r = last_overrun
        raw = {"seq": int(r["seq"]), "mono_ns": int(r["mono_ns"]), "utc_ns": int(r["utc_ns"]),
               "overruns": overruns, "skipped_slots": skipped}
        msg = f"protection cycle overran {overruns} time{'s' if overruns > 1 else ''} ({skipped} slots skipped)"
        out.append(_event(int(r["utc_ns"]), "alarm", 0, "cycle", msg, raw))
    return out


def _event(ts: int, kind: str, priority: int, point: str, message: str, raw: dict[str, Any]) -> Event:
    return Event(ts=ts, kind=kind, priority=priority, device=DEVICE, point=point, message=message,
                 data=json.dumps(raw, separators=(",", ":")))

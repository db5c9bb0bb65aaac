"""Ring records → store events: every record kind becomes a readable, priority-classed event with its raw fields."""

from __future__ import annotations

import json

import numpy as np

from protection.measurements import V_ALL, V_IA, V_IB, V_IC
from protection.output import EV_DROPOUT, EV_PICKUP, EV_TRIP, EV_TRIP_RESET, PH_A, PH_B
from protection.shm import (
    CEV_GROUP,
    CEV_OVERRUN,
    CEV_STARTED,
    CEV_VALIDITY,
    ELEMENT_CYCLE,
    ELEMENT_OUTPUT,
    EVENT_DTYPE,
    OEV_CONFIRMED,
    OEV_FAILED,
    OEV_SENT,
    OUT_ERR_EXCEPTION,
    OUT_ERR_TIMEOUT,
)
from protection.soe import records_to_events

NAMES = (("50P", "51P"), ("51P-alt",))
TYPES = (("50", "51"), ("51",))


def recs(*rows: tuple[int, int, int, int]) -> np.ndarray:
    a = np.zeros(len(rows), dtype=EVENT_DTYPE)
    for i, (el, grp, ev, ph) in enumerate(rows):
        a[i] = (i + 1, 1_000 + i, 1_700_000_000_000_000_000 + i * 1000, el, grp, ev, ph)
    return a


def test_element_and_output_records_are_priority_zero_soe() -> None:
    r = recs(
        (1, 1, EV_PICKUP, PH_A | PH_B),
        (1, 1, EV_TRIP, PH_A | PH_B),
        (ELEMENT_OUTPUT, 0, OEV_SENT, 42),
        (ELEMENT_OUTPUT, 0, OEV_CONFIRMED, 410),
        (ELEMENT_OUTPUT, 0, OEV_FAILED, OUT_ERR_TIMEOUT),
        (ELEMENT_OUTPUT, 0, OEV_FAILED, OUT_ERR_EXCEPTION | (4 << 8)),
        (0, 2, EV_DROPOUT | EV_TRIP_RESET, 0),
    )
    evs = records_to_events(r, NAMES, ["feeder1-cb"], TYPES)
    assert [e.message for e in evs] == [
        "51P PICKUP phases A,B (group 1)",
        "51P TRIP phases A,B (group 1)",
        "trip output feeder1-cb SENT 0.042 ms after the trip decision",
        "trip output feeder1-cb CONFIRMED 0.410 ms after send",
        "trip output feeder1-cb FAILED: no response (timeout)",
        "trip output feeder1-cb FAILED: exception response code 4",
        "51P-alt DROPOUT|TRIP_RESET (group 2)",
    ]
    assert all(e.kind == "soe" and e.priority == 0 and e.device == "protection" for e in evs)
    assert [e.ts for e in evs] == r["utc_ns"].tolist()
    raw = json.loads(evs[1].data)
    assert raw == {"seq": 2, "mono_ns": 1001, "utc_ns": int(r["utc_ns"][1]), "element": "51P", "type": "51",
                   "group": 1, "events": ["TRIP"], "phases": "A,B"}
    assert evs[2].point == "feeder1-cb" and json.loads(evs[2].data)["detail"] == 42


def test_cycle_records_overruns_collapse_into_one_alarm() -> None:
    r = recs(
        (ELEMENT_CYCLE, 0, CEV_STARTED, 5000),
        (ELEMENT_CYCLE, 0, CEV_VALIDITY, V_ALL & ~(V_IA | V_IB | V_IC)),
        (ELEMENT_CYCLE, 0, CEV_OVERRUN, 2),
        (ELEMENT_CYCLE, 0, CEV_OVERRUN, 5),
        (ELEMENT_CYCLE, 0, CEV_GROUP, 2),
        (ELEMENT_CYCLE, 0, CEV_VALIDITY, V_ALL),
    )
    evs = records_to_events(r, NAMES, [])
    by = [(e.kind, e.priority, e.point, e.message) for e in evs]
    assert by == [
        ("protection", 1, "cycle", "protection cycle started at 5 ms"),
        ("protection", 1, "measurements", "measurements stale/invalid: Ia Ib Ic"),
        ("soe", 0, "settings", "settings group 2 in service"),
        ("protection", 1, "measurements", "measurements valid"),
        ("alarm", 0, "cycle", "protection cycle overran 2 times (7 slots skipped)"),
    ]
    assert json.loads(evs[-1].data)["seq"] == 4
    assert records_to_events(recs(), NAMES, []) == []

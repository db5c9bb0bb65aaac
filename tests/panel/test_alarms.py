"""Alarms & SOE page: the store's event queries, the alarm book (raise/clear, comm loss/restore, one-shot), filters,
µs timestamps, acknowledgement (audited, role-guarded, idempotent, persistent across a restart), counts, CSV export."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

from gateway.model import Event
from gateway.panel import alarms
from gateway.panel.app import build_panel_context
from gateway.panel.roles import Role
from storefwd import Store
from tests.panel.conftest import PanelRig
from tests.waiting import wait_for

DEV = "fdr-test"  # a device name only these tests use (the rig's own devices may raise events of their own)
US = 1000  # ns


def ev(ts: int, kind: str, message: str, priority: int = 2, device: str = DEV, point: str = "",
       data: dict[str, Any] | None = None) -> Event:
    return Event(ts=ts, kind=kind, message=message, priority=priority, device=device, point=point,
                 data=json.dumps(data) if data is not None else "")


async def add(panel: PanelRig, events: list[Event]) -> list[int]:
    """Store the events (committed when this returns); their seqs, in order."""
    store = panel.gw.store
    assert store is not None
    last = await asyncio.to_thread(store.add_events, events)
    return list(range(last - len(events) + 1, last + 1))


def now(panel: PanelRig) -> int:
    return panel.gw.wall_ns()


async def get_json(c: Any, url: str) -> dict[str, Any]:
    r = await c.get(url, headers={"Accept": "application/json"})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def by_seq(d: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {r["seq"]: r for r in d["rows"]}


# ------------------------------------------------------------------------------------------------- the store
def test_store_query_and_count_events(tmp_path: Path) -> None:
    with Store(tmp_path / "s.duckdb") as s:
        s.add_events([
            Event(ts=100, kind="alarm", message="Breaker fail", priority=0, device="f1", point="cb"),
            Event(ts=200, kind="soe", message="51P PICKUP", priority=0, device="protection", point="51P"),
            Event(ts=300, kind="alarm", message="temp high", priority=2, device="f2", point="temp"),
            Event(ts=400, kind="comm", message="f1: communication lost", priority=1, device="f1"),
            Event(ts=500, kind="audit", message="x: login", priority=0, device="panel", point="login"),
        ])
        q = s.query_events
        assert [r["seq"] for r in q().to_pylist()] == [5, 4, 3, 2, 1]  # newest first
        assert [r["seq"] for r in q(newest_first=False, limit=2).to_pylist()] == [1, 2]
        assert [r["seq"] for r in q(kinds=["alarm"]).to_pylist()] == [3, 1]
        assert q(kinds=[]).num_rows == 0
        assert [r["seq"] for r in q(device="f1").to_pylist()] == [4, 1]
        assert [r["seq"] for r in q(point="51P").to_pylist()] == [2]
        assert [r["seq"] for r in q(text="BREAKER").to_pylist()] == [1]  # case-insensitive, message
        assert [r["seq"] for r in q(text="protect").to_pylist()] == [2]  # ... or device
        assert [r["seq"] for r in q(since_ns=200, until_ns=400).to_pylist()] == [3, 2]  # [since, until)
        assert [r["seq"] for r in q(after_seq=2, max_seq=4).to_pylist()] == [4, 3]
        assert [r["seq"] for r in q(max_priority=0).to_pylist()] == [5, 2, 1]
        assert q(limit=0).num_rows == 0
        row = q(kinds=["soe"]).to_pylist()[0]
        assert row == {"seq": 2, "ts": 200, "priority": 0, "kind": "soe", "device": "protection", "point": "51P",
                       "message": "51P PICKUP", "data": ""}
        assert s.count_events() == 5
        assert s.count_events(kinds=["alarm", "comm"], device="f1") == 2
        assert s.count_events(kinds=[]) == 0
        assert s.count_events(text="%") == 0  # no LIKE wildcards


def test_filters_parse_and_refuse() -> None:
    f = alarms.parse_filters({"view": "soe", "kind": "soe,control", "priority": "1", "from": "2026-01-01T00:00:00Z",
                              "to": "2026-01-01T00:00:01.000002+00:00", "limit": "20", "q": " trip "})
    assert f.kinds == ("soe", "control") and f.max_priority == 1 and f.limit == 20 and f.q == "trip"
    assert f.since_ns == 1_767_225_600 * 10**9 and f.until_ns == f.since_ns + 10**9 + 2 * US
    assert alarms.parse_filters({"from": "2026-01-01T00:00:00"}).since_ns == f.since_ns  # no zone: UTC
    for bad, word in [({"view": "x"}, "view"), ({"kind": "soe"}, "kind"), ({"priority": "a"}, "priority"),
                      ({"limit": "0"}, "limit"), ({"limit": "99999"}, "limit"), ({"from": "yesterday"}, "from"),
                      ({"state": "odd"}, "state"), ({"from": "2026-01-02", "to": "2026-01-01"}, "to")]:
        try:
            alarms.parse_filters(bad)
        except alarms.FilterError as e:
            assert str(e).startswith(word), e
        else:
            raise AssertionError(f"{bad} accepted")
    assert alarms.utc_iso(1_767_225_600 * 10**9 + 123_456_789) == "2026-01-01T00:00:00.123456Z"


# ------------------------------------------------------------------------------------------------ the book
async def test_alarm_list_filters_and_microseconds(panel: PanelRig) -> None:
    t = now(panel) - 60 * 10**9
    t = t - t % 10**9
    seqs = await add(panel, [
        ev(t + 123_456 * US + 789, "alarm", "fdr-test: device event buffer overflowed", priority=1),
        ev(t + 2 * 10**9, "gap", "120 readings of link x were given up", priority=0, device="gateway",
           point="link x"),
        ev(t + 3 * 10**9, "alarm", "fdr-test: device restarted", priority=2),
        ev(t + 4 * 10**9, "soe", "51P PICKUP phases A (group 1)", priority=0, device="protection", point="51P"),
    ])
    c, _ = await panel.client(Role.VIEWER)
    d = await get_json(c, f"/alarms?format=json&device={DEV}")
    rows = by_seq(d)
    assert set(rows) == {seqs[0], seqs[2]}  # the SOE event is not an alarm, the gap is another device's
    r = rows[seqs[0]]
    assert r["utc"].endswith(".123456Z") and r["ts"] == t + 123_456 * US + 789  # µs (and the exact ns) kept
    assert r["state"] == "event" and r["active"] and not r["acked"] and r["priority"] == 1
    assert d["view"] == "alarms" and d["can_ack"] is False and DEV in d["devices"]
    # the /api twin, text search, kind, priority, time range, limit
    d = await get_json(c, "/api/alarms?q=BUFFER")
    assert [x["seq"] for x in d["rows"]] == [seqs[0]]
    d = await get_json(c, "/api/alarms?kind=gap")
    assert seqs[1] in by_seq(d) and all(x["kind"] == "gap" for x in d["rows"])
    d = await get_json(c, f"/api/alarms?device={DEV}&priority=1")
    assert [x["seq"] for x in d["rows"]] == [seqs[0]]
    frm, to = alarms.utc_iso(t + 10**9), alarms.utc_iso(t + 3 * 10**9)
    d = await get_json(c, f"/api/alarms?from={frm}&to={to}")
    assert [x["seq"] for x in d["rows"]] == [seqs[1]]
    d = await get_json(c, f"/api/alarms?device={DEV}&limit=1")
    assert [x["seq"] for x in d["rows"]] == [seqs[2]] and d["total"] == 2  # newest first
    r2 = await c.get("/api/alarms?priority=high")
    assert r2.status_code == 400 and "priority" in r2.json()["error"]


async def test_raise_clear_pairs(panel: PanelRig) -> None:
    t = now(panel)
    raised = {"state": "raised", "condition": "under-frequency"}
    cleared = {"state": "cleared", "condition": "under-frequency"}
    seqs = await add(panel, [
        ev(t, "alarm", "bus1: under-frequency: 49.2 Hz", 1, "bus1", "f", raised),
        ev(t + 1, "alarm", "bus2: under-frequency: 49.1 Hz", 1, "bus2", "f", raised),
        ev(t + 2, "alarm", "bus1: over-frequency cleared", 1, "bus1", "f",
           {"state": "cleared", "condition": "over-frequency"}),  # another condition: does not clear
    ])
    c, _ = await panel.client(Role.OPERATOR)
    rows = by_seq(await get_json(c, "/api/alarms?kind=alarm"))
    assert rows[seqs[0]]["state"] == "standing" and rows[seqs[1]]["state"] == "standing"
    assert seqs[2] not in rows  # a clear is folded into its raise, never a row of its own
    [clr] = await add(panel, [ev(t + 3, "alarm", "bus1: under-frequency cleared: 50.0 Hz", 1, "bus1", "f", cleared)])
    rows = by_seq(await get_json(c, "/api/alarms?kind=alarm"))
    a = rows[seqs[0]]
    assert a["state"] == "cleared" and a["clear_message"].startswith("bus1: under-frequency cleared")
    assert a["cleared_ts"] == t + 3 and a["active"]  # cleared but unacknowledged: still active
    assert rows[seqs[1]]["state"] == "standing" and clr not in rows
    r = await c.post("/api/alarms/ack", json={"seqs": [seqs[0], seqs[1]]})
    assert r.status_code == 200, r.text
    rows = by_seq(await get_json(c, "/api/alarms?kind=alarm"))
    assert not rows[seqs[0]]["active"]  # acknowledged and cleared: historic
    assert rows[seqs[1]]["active"] and rows[seqs[1]]["acked"]  # acknowledged but standing: active
    d = await get_json(c, "/api/alarms?kind=alarm&state=historic")
    assert [x["seq"] for x in d["rows"]] == [seqs[0]]
    d = await get_json(c, "/api/alarms?kind=alarm")
    order = [x["seq"] for x in d["rows"]]
    assert order.index(seqs[1]) < order.index(seqs[0])  # active first


async def test_comm_loss_stands_until_restore(panel: PanelRig) -> None:
    t = now(panel)
    [lost] = await add(panel, [ev(t, "comm", f"{DEV}: communication lost (ok → backoff)", 1)])
    c, _ = await panel.client(Role.VIEWER)
    assert by_seq(await get_json(c, "/api/alarms?kind=comm"))[lost]["state"] == "standing"
    [restored] = await add(panel, [ev(t + 5, "comm", f"{DEV}: communication restored (backoff → ok)", 2)])
    rows = by_seq(await get_json(c, "/api/alarms?kind=comm"))
    assert rows[lost]["state"] == "cleared" and rows[lost]["cleared_ts"] == t + 5 and restored not in rows
    # a link-level (MQTT) loss, restored for the link
    link = {"link": "mqtt1", "devices": ["s1", "s2"]}
    [ll] = await add(panel, [ev(t + 6, "comm", "link mqtt1: communication lost (ok → backoff) for 2 sensors", 1,
                                "", "link mqtt1", link)])
    assert by_seq(await get_json(c, "/api/alarms?kind=comm"))[ll]["state"] == "standing"
    await add(panel, [ev(t + 7, "comm", "link mqtt1: communication restored (backoff → ok) for 2 sensors", 2,
                         "", "link mqtt1", link)])
    assert by_seq(await get_json(c, "/api/alarms?kind=comm"))[ll]["state"] == "cleared"


async def test_comm_loss_before_restart_ends_when_device_polls_ok(panel: PanelRig) -> None:
    await wait_for(lambda: any(d["state"] == "ok" for r in panel.gw.runners for d in r.status()),
                   what="a device polled ok")
    name = next(str(d["device"]) for r in panel.gw.runners for d in r.status() if d["state"] == "ok")
    before = panel.gw.started_wall_ns - 10**9
    [lost] = await add(panel, [ev(before, "comm", f"{name}: communication lost (ok → backoff)", 1, name)])
    c, _ = await panel.client(Role.VIEWER)
    a = by_seq(await get_json(c, "/api/alarms?kind=comm"))[lost]
    assert a["state"] == "cleared" and "since the gateway restart" in a["clear_message"]


async def test_ack_audited_guarded_idempotent(panel: PanelRig) -> None:
    t = now(panel)
    seqs = await add(panel, [ev(t, "alarm", "fdr-test: report buffer overflowed", 1),
                             ev(t + 1, "alarm", "fdr-test: device restarted", 2)])
    viewer, _ = await panel.client(Role.VIEWER)
    r = await viewer.post("/api/alarms/ack", json={"seqs": [seqs[0]]})
    assert r.status_code == 403
    op, _ = await panel.client(Role.OPERATOR)
    r = await op.post("/api/alarms/ack", json={"seqs": [seqs[0]]})
    assert r.status_code == 200, r.text
    assert r.json()["acked"] == [seqs[0]]
    store = panel.gw.store
    assert store is not None
    audits = (await asyncio.to_thread(store.query_events, kinds=["audit"], point="alarm.ack")).to_pylist()
    assert len(audits) == 1 and audits[0]["priority"] == 0
    data = json.loads(audits[0]["data"])
    assert data["user"] == "operator" and data["seqs"] == [seqs[0]]
    row = by_seq(await get_json(op, f"/api/alarms?device={DEV}"))[seqs[0]]
    assert row["acked_by"] == "operator" and row["acked_ts"] == audits[0]["ts"] and row["acked_utc"]
    # twice: harmless, says by whom; no second audit event
    r = await op.post("/api/alarms/ack", json={"seqs": [seqs[0]]})
    assert r.status_code == 200 and r.json()["acked"] == []
    assert "already acknowledged by operator" in r.json()["message"]
    assert await asyncio.to_thread(store.count_events, kinds=["audit"], point="alarm.ack") == 1
    # unknown seqs and bad bodies: 400 naming the problem, nothing acknowledged
    r = await op.post("/api/alarms/ack", json={"seqs": [seqs[1], 987654321]})
    assert r.status_code == 400 and "#987654321" in r.json()["error"] and r.json()["unknown"] == [987654321]
    assert not by_seq(await get_json(op, f"/api/alarms?device={DEV}"))[seqs[1]]["acked"]
    bodies: list[dict[str, Any]] = [{}, {"seqs": []}, {"seqs": ["1"]}, {"seqs": [True]}, {"all": "yes"}]
    for body in bodies:
        r = await op.post("/api/alarms/ack", json=body)
        assert r.status_code == 400, body
        assert "error" in r.json()


async def test_ack_all_shown_and_counts(panel: PanelRig) -> None:
    ctx = panel.ctx
    base = alarms.counts(ctx)  # builds the book in the background
    await wait_for(lambda: alarms.book(ctx).loaded, what="alarm book built")
    base = alarms.counts(ctx)
    t = now(panel)
    seqs = await add(panel, [ev(t, "alarm", "fdr-test: a", 1), ev(t + 1, "alarm", "fdr-test: b", 1),
                             ev(t + 2, "alarm", "other: c", 1, "other-dev")])
    await wait_for(lambda: alarms.counts(ctx)["unacked"] == base["unacked"] + 3, what="counts see new alarms")
    assert alarms.counts(ctx)["active"] == base["active"] + 3
    op, _ = await panel.client(Role.OPERATOR)
    r = await op.post("/api/alarms/ack", json={"all": True, "device": DEV})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["acked"]) == seqs[:2]  # only those the filter shows
    c = alarms.counts(ctx)
    assert c["unacked"] == base["unacked"] + 1 and c["active"] == base["active"] + 1  # one-shot + acked: historic
    # "all shown" honours the limit too: only the newest unacknowledged one here
    more = await add(panel, [ev(t + 3, "alarm", "fdr-test: d", 1), ev(t + 4, "alarm", "fdr-test: e", 1)])
    r = await op.post("/api/alarms/ack", json={"all": True, "device": DEV, "limit": 1})
    assert r.status_code == 200 and r.json()["acked"] == [more[1]]
    r = await op.post("/api/alarms/ack", json={"all": True, "device": DEV, "limit": "lots"})
    assert r.status_code == 400 and "limit" in r.json()["error"]


async def test_ack_survives_restart(panel: PanelRig) -> None:
    t = now(panel)
    seqs = await add(panel, [ev(t, "alarm", "fdr-test: x", 1), ev(t + 1, "alarm", "fdr-test: y", 1)])
    op, _ = await panel.client(Role.OPERATOR)
    assert (await op.post("/api/alarms/ack", json={"seqs": [seqs[1]]})).status_code == 200
    ctx2 = build_panel_context(panel.gw)  # a restarted panel over the same store
    assert "alarms" not in ctx2.state
    b = alarms.book(ctx2)
    await b.refresh()
    assert b.alarms[seqs[1]].acked_by == "operator" and b.alarms[seqs[1]].acked_ts > 0
    assert not b.alarms[seqs[0]].acked


async def test_soe_view(panel: PanelRig) -> None:
    t = now(panel)
    seqs = await add(panel, [
        ev(t + 100 * US, "soe", "51P PICKUP phases A,B (group 1)", 0, "protection", "51P"),
        ev(t + 40_100 * US, "soe", "51P TRIP phases A,B (group 1)", 0, "protection", "51P"),
        ev(t + 40_512 * US, "soe", "trip output feeder1-cb SENT 0.412 ms after the trip decision", 0, "protection",
           "feeder1-cb"),
        ev(t + 41_000 * US, "alarm", "not an SOE kind", 1, "protection"),
    ])
    c, _ = await panel.client(Role.VIEWER)
    d = await get_json(c, "/api/alarms?view=soe&device=protection&q=51P")
    assert [r["seq"] for r in d["rows"]] == [seqs[1], seqs[0]]  # newest first
    assert d["rows"][1]["utc"].endswith(f"{(t // US + 100) % 10**6:06d}Z")
    d = await get_json(c, "/api/alarms?view=soe&device=protection&limit=2")
    assert [r["seq"] for r in d["rows"]] == [seqs[2], seqs[1]] and d["total"] == 3
    r = await c.get("/api/alarms?view=soe&kind=gap")
    assert r.status_code == 400


async def test_csv_export(panel: PanelRig) -> None:
    t = now(panel)
    seqs = await add(panel, [
        ev(t + 7 * US, "alarm", '=HYPERLINK("http://evil") , "quoted"\nsecond line', 1),
        ev(t + 9 * US, "alarm", "-2+3 harmless text", 2, point="@cmd"),
    ])
    c, _ = await panel.client(Role.VIEWER)
    r = await c.get(f"/alarms.csv?device={DEV}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    disp = r.headers["content-disposition"]
    assert disp.startswith("attachment;") and panel.gw.cfg.id.replace(" ", "_") in disp and disp.endswith('Z.csv"')
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == list(alarms.CSV_COLUMNS)
    got = {int(x["seq"]): x for x in rows}
    assert set(got) == set(seqs)
    a = got[seqs[0]]
    assert a["message"] == "'" + '=HYPERLINK("http://evil") , "quoted"\nsecond line'  # quoted, guarded
    assert a["utc"] == alarms.utc_iso(t + 7 * US) and a["state"] == "event" and a["acked_by"] == ""
    b = got[seqs[1]]
    assert b["message"] == "'-2+3 harmless text" and b["point"] == "'@cmd" and b["priority"] == "2"
    # SOE export and the filters' validation
    r = await c.get("/alarms.csv?view=soe&kind=soe")
    assert r.status_code == 200 and r.text.splitlines()[0] == ",".join(alarms.CSV_COLUMNS)
    r = await c.get("/alarms.csv?limit=-1", headers={"Accept": "application/json"})
    assert r.status_code == 400


async def test_page_html(panel: PanelRig) -> None:
    viewer, _ = await panel.client(Role.VIEWER)
    r = await viewer.get("/alarms")
    assert r.status_code == 200
    assert "/static/alarms.js" in r.text and 'id="page-data"' in r.text.replace("'", '"')
    assert "ack-selected" not in r.text  # viewers get no acknowledge buttons
    op, _ = await panel.client(Role.OPERATOR)
    r = await op.get("/alarms?view=alarms")
    assert "ack-selected" in r.text and "ack-all" in r.text
    r = await op.get("/alarms?view=soe")
    assert "ack-selected" not in r.text
    r = await op.get("/alarms?view=nope")
    assert r.status_code == 400
    anon = panel.anon
    assert (await anon.get("/api/alarms")).status_code == 401
    assert (await anon.get("/alarms.csv")).status_code in (303, 401)

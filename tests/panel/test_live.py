"""Live stream (``/api/stream``) against a real loopback server (httpx's ASGI transport buffers whole responses):
summary and values events, changed-only values, ``?points=`` filtering, stored events, the stream limit, and the
stream ending when the client disconnects or the gateway stops."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from gateway.asgi_server import AsgiServer
from gateway.panel import live
from gateway.panel.roles import Role
from tests.panel.conftest import PASSWORD, PanelRig
from tests.waiting import wait_for


@asynccontextmanager
async def served(panel: PanelRig, role: Role = Role.VIEWER) -> AsyncIterator[httpx.AsyncClient]:
    """The panel app on 127.0.0.1:<free port> and a client logged in there (session cookie)."""
    srv = AsgiServer(panel.app)
    await srv.start()
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30.0) as c:
            name = panel.ensure_user(role)
            r = await c.post("/login", data={"username": name, "password": PASSWORD, "next": "/"})
            assert r.status_code == 303, r.text
            yield c
    finally:
        await srv.stop()


async def sse(resp: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(event, parsed data) per server-sent event; ("comment", text) for comment lines."""
    event, data = "message", list[str]()
    async for line in resp.aiter_lines():
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            yield "comment", line[1:].strip()
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)


async def test_summary_and_changed_values(panel: PanelRig) -> None:
    all_ids = sorted(panel.gw.point_ids.values())
    async with served(panel) as c, c.stream("GET", "/api/stream?values=1") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        summaries: list[dict[str, Any]] = []
        values: list[dict[str, Any]] = []
        async for event, data in sse(r):
            if event == "summary":
                summaries.append(data)
            elif event == "values":
                values.append(data)
            if len(summaries) >= 2 and len(values) >= 3:
                break
    s = summaries[-1]
    for key in ("now_ns", "alarms_unacked", "alarms_active", "devices_ok", "devices_total", "sinks", "protection",
                "last_trip"):
        assert key in s
    assert s["devices_total"] == 4 and s["sinks"] == [] and s["protection"] is None
    first = values[0]
    assert first["ids"] == all_ids  # the first send: every point
    assert len(first["v"]) == len(first["q"]) == len(first["ts"]) == len(first["ts_us"]) == len(all_ids)
    seen = dict(zip(first["ids"], first["ts"], strict=True))
    for later in values[1:]:
        assert later["ids"] and set(later["ids"]) <= set(all_ids)
        for pid, ts in zip(later["ids"], later["ts"], strict=True):
            assert ts != seen[pid]  # only points whose timestamp moved since the last send
            seen[pid] = ts
    # E_import and temp are polled every 5 s: a 0.5 s delta cannot hold every point
    assert any(len(v["ids"]) < len(all_ids) for v in values[1:])


async def test_points_parameter_limits_ids(panel: PanelRig) -> None:
    ids = [panel.gw.point_ids["feeder1.Ia"], panel.gw.point_ids["incomer.f"]]
    async with served(panel) as c, c.stream("GET", f"/api/stream?values=1&points={ids[0]},{ids[1]},999999") as r:
        got: list[dict[str, Any]] = []
        async for event, data in sse(r):
            if event == "values":
                got.append(data)
                if len(got) >= 3:
                    break
    assert got[0]["ids"] == sorted(ids)
    assert all(set(v["ids"]) <= set(ids) for v in got)
    async with served(panel) as c:
        bad = await c.get("/api/stream?values=1&points=1,x")
        assert bad.status_code == 400 and "comma-separated" in bad.json()["error"]


async def test_stored_events_are_streamed(panel: PanelRig) -> None:
    async with served(panel) as c, c.stream("GET", "/api/stream") as r:
        events = sse(r)
        async for event, _ in events:
            if event == "summary":
                break
        await panel.ctx.audit("viewer", "test.note", "a note for the live stream")
        async for event, data in events:
            assert event != "values"  # not asked for
            if event == "events":
                msgs = [e["message"] for e in data]
                if "viewer: a note for the live stream" in msgs:
                    ev = data[msgs.index("viewer: a note for the live stream")]
                    assert ev["kind"] == "audit" and ev["point"] == "test.note" and ev["seq"] > 0
                    break


async def test_stream_ends_when_client_disconnects(panel: PanelRig) -> None:
    async with served(panel) as c:
        async with c.stream("GET", "/api/stream?values=1") as r:
            async for event, _ in sse(r):
                if event == "values":
                    break
            assert live.active_streams(panel.ctx) == 1
        await wait_for(lambda: live.active_streams(panel.ctx) == 0, what="the stream to end after disconnect")


async def test_stream_ends_when_gateway_stops(panel: PanelRig) -> None:
    srv = AsgiServer(panel.app)
    await srv.start()
    ended = False
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30.0) as c:
            name = panel.ensure_user(Role.VIEWER)
            await c.post("/login", data={"username": name, "password": PASSWORD, "next": "/"})
            async with c.stream("GET", "/api/stream") as r:
                async for event, _ in sse(r):
                    if event == "summary":
                        live.close_streams(panel.ctx)  # what the gateway does before stopping the server
                ended = True  # the server finished the response
            await wait_for(lambda: live.active_streams(panel.ctx) == 0, what="the stream slot released")
            refused = await c.get("/api/stream")
            assert refused.status_code == 503
    finally:
        await srv.stop()
    assert ended


async def test_stream_limit(panel: PanelRig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "MAX_STREAMS", 1)
    async with served(panel) as c, c.stream("GET", "/api/stream") as r:
        async for event, _ in sse(r):
            if event == "summary":
                break
        second = await c.get("/api/stream")
        assert second.status_code == 503 and "too many live streams" in second.json()["error"]


async def test_stream_ends_with_the_session(panel: PanelRig) -> None:
    async with served(panel) as c, c.stream("GET", "/api/stream") as r:
        async for event, _ in sse(r):
            if event == "summary":
                panel.ctx.sessions.revoke_user("viewer")
        # the loop ended: the server closed the stream at its next summary
    await wait_for(lambda: live.active_streams(panel.ctx) == 0, what="the stream slot released")

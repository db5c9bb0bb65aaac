"""Live updates: ``GET /api/stream`` (viewer), a server-sent event stream (``text/event-stream``).

Events (each ``data:`` is one JSON object or list):

- ``summary`` every second: the overview's summary strip (:func:`gateway.panel.overview.summary`: ``now_ns``,
  ``alarms_unacked``, ``alarms_active``, ``devices_ok``, ``devices_total``, ``devices_not_ok``, ``sinks``
  [{name, state, backlog, oldest_age_s, last_ack_age_s, last_error, ...}], ``store``, ``protection`` (state or
  null), ``last_trip``);
- ``values`` every 0.5 s, only with ``?values=1``: the points whose timestamp changed since this client's last
  ``values`` (the first one: all of them), optionally only the ids in ``?points=1,2,3``:
  ``{"ids": [...], "v": [... null for no value ...], "q": [...], "ts": [... epoch ns ...], "ts_us": [...],
  "now_ns": ...}`` (``ts_us`` is exact as a JavaScript number, ``ts`` is not);
- ``events``: events stored since the stream started, a list of ``{seq, ts, kind, priority, device, point,
  message}`` (at most ``EVENTS_PER_SEND`` per send; the rest follow on the next tick).

A comment line (``: ping``) every 15 s keeps proxies from closing an idle stream. The stream ends when the client
disconnects, when its session ends (logout, expiry, user disabled), and when the gateway stops: whoever stops the
panel server sets ``ctx.state["closing"] = True`` first (or calls :func:`close_streams`), and every stream returns
within a tick instead of holding uvicorn's graceful shutdown. At most ``MAX_STREAMS`` streams at once (503 beyond).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.panel.context import PanelContext
from gateway.panel.overview import summary
from gateway.panel.routing import Call, PanelRoute

log = logging.getLogger("gateway.panel.live")

MAX_STREAMS = 32
TICK_S = 0.1  # how often a stream looks at the clock, the disconnect and the closing flag
SUMMARY_EVERY_S = 1.0
VALUES_EVERY_S = 0.5
PING_EVERY_S = 15.0
EVENTS_PER_SEND = 200
MAX_POINTS_PARAM = 20000  # ids accepted in ?points=


@dataclass
class _Hub:
    active: int = 0  # streams open now


def _hub(ctx: PanelContext) -> _Hub:
    hub = ctx.state.get("live")
    if not isinstance(hub, _Hub):
        hub = _Hub()
        ctx.state["live"] = hub
    return hub


def close_streams(ctx: PanelContext) -> None:
    """Make every open stream end at its next tick (call before stopping the panel's server)."""
    ctx.state["closing"] = True


def active_streams(ctx: PanelContext) -> int:
    return _hub(ctx).active


def _closing(ctx: PanelContext) -> bool:
    return bool(ctx.state.get("closing"))


def sse(event: str, data: Any) -> str:
    """One server-sent event (``data`` as compact JSON; NaN/inf must already be None)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n"


def _floats(a: npt.NDArray[np.float64]) -> list[float | None]:
    out: list[float | None] = a.tolist()
    bad = ~np.isfinite(a)
    if bad.any():
        for i in np.flatnonzero(bad).tolist():
            out[i] = None
    return out


class ValueTracker:
    """Which of a client's points changed since its last ``values`` send: a copy of their timestamps."""

    def __init__(self, ids: npt.NDArray[np.int64]) -> None:
        self.ids = ids
        self.sent_ts: npt.NDArray[np.int64] | None = None  # None: nothing sent yet (the first send is all)

    def changes(self, ctx: PanelContext) -> dict[str, Any] | None:
        gw = ctx.gw
        latest = gw.latest
        if latest is None:
            return None
        ids = self.ids
        ts = latest.ts[ids]
        if self.sent_ts is None:
            sel = ids
            ts_sel = ts
        else:
            changed = ts != self.sent_ts
            if not changed.any():
                return None
            sel = ids[changed]
            ts_sel = ts[changed]
        self.sent_ts = ts
        return {
            "ids": sel.tolist(),
            "v": _floats(latest.value[sel]),
            "q": latest.quality[sel].tolist(),
            "ts": ts_sel.tolist(),
            "ts_us": (ts_sel // 1000).tolist(),
            "now_ns": gw.wall_ns(),
        }


def _parse_points(text: str, ctx: PanelContext) -> npt.NDArray[np.int64] | str:
    """``?points=1,2,3`` → the known ids among them (sorted); an error message for malformed input."""
    parts = [p for p in text.split(",") if p.strip()]
    if len(parts) > MAX_POINTS_PARAM:
        return f"too many point ids (at most {MAX_POINTS_PARAM})"
    try:
        wanted = {int(p) for p in parts}
    except ValueError:
        return "points must be a comma-separated list of point ids (integers)"
    known = set(ctx.gw.point_ids.values())
    return np.array(sorted(wanted & known), dtype=np.int64)


def _event_rows(ctx: PanelContext, after: int) -> list[dict[str, Any]]:
    """Stored events after ``after`` (worker thread)."""
    store = ctx.gw.store
    if store is None:
        return []
    tbl = store.events_after(after, EVENTS_PER_SEND)
    cols = ("seq", "ts", "kind", "priority", "device", "point", "message")
    return [{k: row[k] for k in cols} for row in tbl.select(list(cols)).to_pylist()]


def _session_alive(call: Call) -> bool:
    """The caller may still see the stream: its session is live (not logged out, idle or too old) and its user
    still exists and is enabled. Does not refresh the session (watching a page is not activity)."""
    ctx = call.ctx
    sess = call.session
    if sess is not None:
        sm = ctx.sessions
        if not any(s is sess for s in sm.sessions_of(sess.user)):
            return False
        now = sm.clock()
        if now - sess.last_seen > sm.idle_s or now - sess.created > sm.max_s:
            return False
    user = ctx.users.get(call.user)
    return user is not None and not user.disabled


class _StreamResponse(StreamingResponse):
    """A StreamingResponse that releases its stream slot however it ends (even if it never started)."""

    def __init__(self, content: AsyncIterator[str], hub: _Hub) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self._hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._hub.active -= 1
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def stream(call: Call) -> Response:
    ctx = call.ctx
    q = call.request.query_params
    want_values = q.get("values", "") in ("1", "true", "yes")
    ids: npt.NDArray[np.int64] | None = None
    if want_values:
        if q.get("points"):
            parsed = _parse_points(q["points"], ctx)
            if isinstance(parsed, str):
                return call.error(400, parsed)
            ids = parsed
        else:
            ids = np.array(sorted(ctx.gw.point_ids.values()), dtype=np.int64)
    if _closing(ctx):
        return call.error(503, "the gateway is stopping")
    hub = _hub(ctx)
    if hub.active >= MAX_STREAMS:
        return call.error(503, f"too many live streams open (at most {MAX_STREAMS}); close some panel tabs")
    hub.active += 1
    return _StreamResponse(_events(call, ValueTracker(ids) if ids is not None else None), hub)


async def _events(call: Call, tracker: ValueTracker | None) -> AsyncIterator[str]:
    ctx = call.ctx
    request = call.request
    store = ctx.gw.store
    event_seq = store.last_event_seq() if store is not None else 0
    next_summary = next_values = next_ping = time.monotonic()
    next_ping += PING_EVERY_S
    yield "retry: 3000\n\n"  # the browser's reconnect delay after a dropped connection
    while True:
        if _closing(ctx) or await request.is_disconnected():
            return
        now = time.monotonic()
        out: list[str] = []
        if now >= next_summary:
            if not _session_alive(call):
                return
            out.append(sse("summary", await summary(ctx)))
            next_summary = max(next_summary + SUMMARY_EVERY_S, now)
        if tracker is not None and now >= next_values:
            payload = tracker.changes(ctx)
            if payload is not None:
                out.append(sse("values", payload))
            next_values = max(next_values + VALUES_EVERY_S, now)
        store = ctx.gw.store
        if store is not None:
            last = store.last_event_seq()
            if last > event_seq:
                try:
                    rows = await asyncio.to_thread(_event_rows, ctx, event_seq)
                except Exception as e:  # store closing or a read error: try again next tick
                    log.debug("live events read failed: %s", e)
                    rows = []
                if rows:
                    event_seq = int(rows[-1]["seq"])
                    out.append(sse("events", rows))
        if out:
            next_ping = now + PING_EVERY_S
            yield "".join(out)
        elif now >= next_ping:
            next_ping = now + PING_EVERY_S
            yield ": ping\n\n"
        await asyncio.sleep(TICK_S)


def routes(ctx: PanelContext) -> list[PanelRoute]:
    return [PanelRoute("/api/stream", stream, action="stream.read")]

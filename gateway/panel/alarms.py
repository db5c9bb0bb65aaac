"""Alarms & SOE page: the alarm book (active/historic alarms with acknowledgement), the sequence-of-events list,
filters, CSV export (docs/panel.md, "Alarms & SOE").

**The alarm book** (:class:`AlarmBook`, kept in ``ctx.state["alarms"]``) holds the alarm-like events of the last
:data:`WINDOW_NS` (at most :data:`MAX_ALARMS`) in memory: kinds :data:`ALARM_KINDS` (``alarm``: device, store,
protection-process and analytics alarms; ``comm``: link/device communication loss; ``gap``: readings given up;
``fault_record``: a protection trip recorded). It is built on first use from the store (in a worker thread) and
kept current by reading the events that landed since (``store.last_event_seq()`` is compared, in memory, whenever
:func:`counts` or a page asks; the read itself runs in a worker thread, a few thousand rows at most per round).
:func:`counts` never touches the disk: it answers from memory and, when the store has newer events, starts one
background refresh on the running loop.

Each alarm has a **state** and an **acknowledgement**, shown separately:

- state ``standing``: its condition still holds: a raise (analytics alarms carry ``data.state == "raised"``)
  without a later clear (``data.state == "cleared"``) from the same source (kind, device, point and
  ``data.condition``), or a communication loss without a later restore of that device (or link);
- state ``cleared``: such a clear/restore followed (the clear event is folded into the alarm's row, it is not a
  row of its own; a clear whose raise is not in the book is ignored). A comm loss recorded before the gateway's
  current start is also cleared when that device polls ``ok`` now (the gateway records no restore for a device
  that comes up "ok" after a restart);
- state ``event``: one-shot alarms (store alarms, gaps, fault records, device counters) have no clear notion;
- ``acked_by`` / ``acked_at``: who acknowledged it and when.

An alarm is **active** while it stands or while nobody acknowledged it; an acknowledged alarm that no longer
stands is **historic**. Acknowledging (``POST /api/alarms/ack``, operator and up) writes one audit event (kind
``audit``, priority 0, point ``alarm.ack``, ``data.seqs`` the alarm seqs, ``data.user``) before answering; the book
rebuilds its acknowledgements from those events when it is built, so they survive a restart.

**SOE** is read straight from the store, newest first by event time (µs) then seq: kinds :data:`SOE_KINDS` —
protection element and trip output transitions (``soe``), control operations (``control``), protection process
notes (``protection``) and fault records (``fault_record``, also an alarm).

Threads: the gateway's event loop only; store reads run in ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from starlette.responses import Response

from gateway.panel.context import PanelContext
from gateway.panel.layout import esc, render_page
from gateway.panel.roles import Role
from gateway.panel.routing import Call, PanelRoute
from storefwd.errors import StoreError

log = logging.getLogger("gateway.panel.alarms")

ALARM_KINDS: Final = ("alarm", "comm", "gap", "fault_record")
SOE_KINDS: Final = ("soe", "control", "protection", "fault_record")
VIEWS: Final = ("alarms", "soe")
ACK_ACTION: Final = "alarm.ack"  # the audit event's point
WINDOW_NS: Final = 30 * 86_400 * 10**9  # the book holds the alarms of the last 30 days ...
MAX_ALARMS: Final = 10_000  # ... at most this many (the oldest historic ones go first)
MAX_ACK_EVENTS: Final = 50_000  # ack audit events read when the book is built
REFRESH_ROWS: Final = 2_000  # rows per read while catching up
REFRESH_ROUNDS: Final = 5  # reads per refresh at most (the rest on the next one)
COMM_RECHECK_NS: Final = 2 * 10**9  # how often pre-start comm losses are compared with the live device states
DEFAULT_LIMIT: Final = 500
MAX_LIMIT: Final = 10_000
CSV_COLUMNS: Final = ("seq", "utc", "kind", "priority", "device", "point", "message", "state", "acked_by", "acked_at")
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


def utc_iso(ts_ns: int) -> str:
    """``2026-11-25T00:40:01.123456Z``: UTC ISO 8601 with microseconds (sub-µs digits are cut, not rounded)."""
    secs, rest = divmod(int(ts_ns), 10**9)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rest // 1000:06d}Z"


def _json(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        obj = json.loads(text)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


# --------------------------------------------------------------------------------------------------- the book
@dataclass(slots=True)
class Alarm:
    """One alarm-like event and what happened to it since."""

    seq: int
    ts: int
    kind: str
    priority: int
    device: str
    point: str
    message: str
    key: tuple[str, ...] | None  # source of raise/clear pairs; None: a one-shot alarm
    cleared_seq: int = 0  # 0 while standing (or one-shot)
    cleared_ts: int = 0
    clear_message: str = ""
    acked_by: str = ""
    acked_ts: int = 0

    @property
    def state(self) -> str:
        if self.key is None:
            return "event"
        return "cleared" if self.cleared_ts else "standing"

    @property
    def acked(self) -> bool:
        return bool(self.acked_ts)

    @property
    def active(self) -> bool:
        return self.state == "standing" or not self.acked

    def row(self) -> dict[str, Any]:
        """The JSON row (also the CSV's source)."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "utc": utc_iso(self.ts),
            "kind": self.kind,
            "priority": self.priority,
            "device": self.device,
            "point": self.point,
            "message": self.message,
            "state": self.state,
            "active": self.active,
            "cleared_ts": self.cleared_ts or None,
            "cleared_utc": utc_iso(self.cleared_ts) if self.cleared_ts else None,
            "clear_message": self.clear_message,
            "acked": self.acked,
            "acked_by": self.acked_by,
            "acked_ts": self.acked_ts or None,
            "acked_utc": utc_iso(self.acked_ts) if self.acked_ts else None,
        }


@dataclass(frozen=True, slots=True)
class Filters:
    """The page's filters (query parameters; the JSON twin, the CSV export and "acknowledge all" share them)."""

    view: str = "alarms"
    q: str = ""  # case-insensitive substring of message, device or point
    device: str = ""  # exact device name
    kinds: tuple[str, ...] = ()  # () = every kind of the view
    max_priority: int | None = None  # priority <= this (0 = only the vital ones)
    since_ns: int | None = None  # ts >= since
    until_ns: int | None = None  # ts < until
    state: str = "all"  # alarms view: all | active | historic
    limit: int = DEFAULT_LIMIT

    def as_params(self) -> dict[str, Any]:
        return {
            "view": self.view, "q": self.q, "device": self.device, "kind": ",".join(self.kinds),
            "priority": self.max_priority, "from": utc_iso(self.since_ns) if self.since_ns is not None else "",
            "to": utc_iso(self.until_ns) if self.until_ns is not None else "", "state": self.state,
            "limit": self.limit,
        }  # fmt: skip


class FilterError(ValueError):
    """A filter value the page cannot use (answered with 400 and this message)."""


def parse_time(text: str, name: str) -> int | None:
    """A filter time: epoch ns (digits), or ISO 8601 (``Z``/offset; without one it is UTC). "" → None."""
    text = text.strip()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise FilterError(f"{name}: {text!r} is not a time (ISO 8601 like 2026-11-25T08:30:00Z, or epoch ns)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    secs = int(dt.timestamp())
    return secs * 10**9 + dt.microsecond * 1000


def parse_filters(params: Mapping[str, Any], *, default_limit: int = DEFAULT_LIMIT) -> Filters:
    """Filters from query parameters (or a JSON body with the same names). Raises FilterError on bad input."""

    def text(name: str) -> str:
        v = params.get(name)
        return "" if v is None else str(v).strip()

    view = text("view") or "alarms"
    if view not in VIEWS:
        raise FilterError(f"view: {view!r} is not one of {', '.join(VIEWS)}")
    allowed = ALARM_KINDS if view == "alarms" else SOE_KINDS
    kinds = tuple(k.strip() for k in text("kind").split(",") if k.strip())
    bad = [k for k in kinds if k not in allowed]
    if bad:
        raise FilterError(f"kind: {', '.join(bad)} is not a kind of the {view} view (one of {', '.join(allowed)})")
    prio_text = text("priority")
    max_priority: int | None = None
    if prio_text:
        try:
            max_priority = int(prio_text)
        except ValueError:
            raise FilterError(f"priority: {prio_text!r} is not a whole number") from None
        if not 0 <= max_priority <= 100:
            raise FilterError("priority: must be between 0 and 100")
    state = text("state") or "all"
    if state not in ("all", "active", "historic"):
        raise FilterError(f"state: {state!r} is not one of all, active, historic")
    limit_text = text("limit")
    limit = default_limit
    if limit_text:
        try:
            limit = int(limit_text)
        except ValueError:
            raise FilterError(f"limit: {limit_text!r} is not a whole number") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise FilterError(f"limit: must be between 1 and {MAX_LIMIT}")
    since = parse_time(text("from"), "from")
    until = parse_time(text("to"), "to")
    if since is not None and until is not None and until <= since:
        raise FilterError("to: must be after from")
    q = text("q")
    if len(q) > 200:
        raise FilterError("q: at most 200 characters")
    return Filters(view=view, q=q, device=text("device"), kinds=kinds, max_priority=max_priority, since_ns=since,
                   until_ns=until, state=state, limit=limit)


@dataclass
class AlarmBook:
    """The in-memory alarm list (see the module doc). Mutated on the event loop only."""

    ctx: PanelContext
    alarms: dict[int, Alarm] = field(default_factory=dict)  # seq -> alarm
    standing: dict[tuple[str, ...], list[int]] = field(default_factory=dict)  # key -> seqs standing
    seen_seq: int = 0  # every event with seq <= this was read
    loaded: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _task: asyncio.Task[int] | None = None
    _counts: dict[str, int] | None = None
    _comm_checked_ns: int = 0

    # -- reading the store ------------------------------------------------------------------------------------
    def poke(self) -> None:
        """Start one background refresh when the store has newer events (or the book was never built). Cheap:
        no disk; does nothing without a running loop or while a refresh is in flight."""
        if self._task is not None and not self._task.done():
            return
        store = self.ctx.gw.store
        if store is not None and store.closed:
            return
        due = not self.loaded or (store is not None and store.last_event_seq() > self.seen_seq)
        if not due and self._pre_start_comm() and self.ctx.wall_ns() - self._comm_checked_ns > COMM_RECHECK_NS:
            due = True
        if not due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = self._task = loop.create_task(self._background(), name="panel-alarms-refresh")
        # the gateway waits for these before it closes the store (a read in flight must not meet a closing store)
        self.ctx.gw.track(task)

    async def _background(self) -> int:
        await self.refresh()
        return 0

    async def refresh(self) -> None:
        """Build the book (first call) or read the events that landed since; never raises for store trouble."""
        async with self._lock:
            store = self.ctx.gw.store
            try:
                if store is None:
                    self.loaded = True
                elif not self.loaded:
                    await self._load(store)
                else:
                    for _ in range(REFRESH_ROUNDS):
                        if store.last_event_seq() <= self.seen_seq:
                            break
                        upto = store.last_event_seq()
                        tbl = await asyncio.to_thread(
                            store.query_events, kinds=(*ALARM_KINDS, "audit"), after_seq=self.seen_seq, max_seq=upto,
                            limit=REFRESH_ROWS, newest_first=False)  # fmt: skip
                        rows = tbl.to_pylist()
                        self.ingest(rows)
                        self.seen_seq = max(self.seen_seq, upto if len(rows) < REFRESH_ROWS else rows[-1]["seq"])
            except StoreError as e:  # closed while shutting down, or a read failed: the next call retries
                log.debug("alarm book refresh: %s", e)
            self._check_comm()

    async def _load(self, store: Any) -> None:
        upto = store.last_event_seq()
        since = self.ctx.wall_ns() - WINDOW_NS

        def read() -> list[dict[str, Any]]:
            rows = store.query_events(kinds=ALARM_KINDS, since_ns=since, max_seq=upto, limit=MAX_ALARMS).to_pylist()
            if not rows:
                return []
            first = min(r["seq"] for r in rows)
            acks = store.query_events(kinds=("audit",), point=ACK_ACTION, after_seq=first, max_seq=upto,
                                      limit=MAX_ACK_EVENTS).to_pylist()  # fmt: skip
            return sorted(rows + acks, key=lambda r: int(r["seq"]))

        self.ingest(await asyncio.to_thread(read))
        self.seen_seq = upto
        self.loaded = True
        log.info("alarm book built: %d alarms, %d unacknowledged", len(self.alarms), self.counts()["unacked"])

    # -- folding events in ------------------------------------------------------------------------------------
    def ingest(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Fold event rows (store columns, ascending seq) into the book; rows already read are skipped."""
        for r in rows:
            seq = int(r["seq"])
            if seq <= self.seen_seq or seq in self.alarms:
                continue
            kind = str(r["kind"])
            data = _json(str(r.get("data") or ""))
            if kind == "audit":
                if r.get("point") == ACK_ACTION:
                    seqs = data.get("seqs")
                    if isinstance(seqs, list):
                        self.apply_ack([s for s in seqs if isinstance(s, int)], str(data.get("user", "")), int(r["ts"]))
                continue
            if kind not in ALARM_KINDS:
                continue
            device, point, message = str(r["device"]), str(r["point"]), str(r["message"])
            key: tuple[str, ...] | None = None
            if kind == "comm":
                key = ("comm", device or point)
                if "communication restored" in message:
                    self._clear(key, seq, int(r["ts"]), message)
                    for dev in data.get("devices") or ():  # a link's restore also ends its devices' losses
                        self._clear(("comm", str(dev)), seq, int(r["ts"]), message)
                    continue
            elif kind == "alarm" and data.get("state") in ("raised", "cleared"):
                key = ("alarm", device, point, str(data.get("condition", "")))
                if data["state"] == "cleared":
                    self._clear(key, seq, int(r["ts"]), message)
                    continue
            a = Alarm(seq, int(r["ts"]), kind, int(r["priority"]), device, point, message, key)
            self.alarms[seq] = a
            if key is not None:
                self.standing.setdefault(key, []).append(seq)
            self._counts = None
        self._trim()

    def _clear(self, key: tuple[str, ...], seq: int, ts: int, message: str) -> None:
        for s in self.standing.pop(key, []):
            a = self.alarms.get(s)
            if a is not None and not a.cleared_ts:
                a.cleared_seq, a.cleared_ts, a.clear_message = seq, ts, message
                self._counts = None

    def apply_ack(self, seqs: Iterable[int], user: str, ts: int) -> list[int]:
        """Mark alarms acknowledged (the first acknowledgement wins); returns the seqs that were not yet."""
        done = []
        for s in seqs:
            a = self.alarms.get(s)
            if a is not None and not a.acked_ts:
                a.acked_by, a.acked_ts = user, ts
                done.append(s)
        if done:
            self._counts = None
        return done

    def _trim(self) -> None:
        if len(self.alarms) <= MAX_ALARMS:
            return
        over = len(self.alarms) - MAX_ALARMS
        order = sorted(self.alarms.values(), key=lambda a: (a.active, a.seq))  # historic first, oldest first
        for a in order[:over]:
            del self.alarms[a.seq]
            if a.key is not None and a.seq in self.standing.get(a.key, []):
                self.standing[a.key].remove(a.seq)
                if not self.standing[a.key]:
                    del self.standing[a.key]
        self._counts = None

    def _pre_start_comm(self) -> list[Alarm]:
        start = self.ctx.gw.started_wall_ns
        return [self.alarms[s] for k, seqs in self.standing.items() if k[0] == "comm" for s in seqs
                if s in self.alarms and self.alarms[s].ts < start]  # fmt: skip

    def _check_comm(self) -> None:
        """Comm losses recorded before this start end when their device polls ``ok`` now (no restore is
        recorded for a device whose first state after a restart is ``ok``)."""
        self._comm_checked_ns = self.ctx.wall_ns()
        pending = self._pre_start_comm()
        if not pending:
            return
        states = {str(d["device"]): str(d["state"]) for r in self.ctx.gw.runners for d in r.status()}
        for a in pending:
            if a.device and states.get(a.device) == "ok" and a.key is not None:
                self._clear(a.key, 0, self._comm_checked_ns, f"{a.device}: communication ok since the gateway restart")

    # -- answers ------------------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        if self._counts is None:
            unacked = active = standing = 0
            for a in self.alarms.values():
                unacked += not a.acked
                active += a.active
                standing += a.state == "standing"
            self._counts = {"unacked": unacked, "active": active, "standing": standing, "total": len(self.alarms)}
        return dict(self._counts)

    def select(self, f: Filters) -> tuple[list[Alarm], int]:
        """Alarms matching ``f``: active first, then historic, newest (ts, then seq) first in each; at most
        ``f.limit``. Also returns how many matched in all."""
        q = f.q.lower()
        out = []
        for a in self.alarms.values():
            if f.kinds and a.kind not in f.kinds:
                continue
            if f.device and a.device != f.device:
                continue
            if f.max_priority is not None and a.priority > f.max_priority:
                continue
            if f.since_ns is not None and a.ts < f.since_ns:
                continue
            if f.until_ns is not None and a.ts >= f.until_ns:
                continue
            if f.state != "all" and a.active != (f.state == "active"):
                continue
            if q and q not in a.message.lower() and q not in a.device.lower() and q not in a.point.lower():
                continue
            out.append(a)
        out.sort(key=lambda a: (not a.active, -a.ts, -a.seq))
        return out[: f.limit], len(out)

    def devices(self) -> list[str]:
        return sorted({a.device for a in self.alarms.values() if a.device})


def book(ctx: PanelContext) -> AlarmBook:
    """The context's alarm book (created, empty and not yet built, on first use)."""
    b = ctx.state.get("alarms")
    if not isinstance(b, AlarmBook):
        b = ctx.state["alarms"] = AlarmBook(ctx)
    return b


def counts(ctx: PanelContext) -> dict[str, int]:
    """Alarm counts for the overview and the live summary: ``unacked`` and ``active`` (also ``standing`` and
    ``total``). Cheap: in memory; starts a background refresh of the book when the store has newer events."""
    b = book(ctx)
    b.poke()
    return b.counts()


# ------------------------------------------------------------------------------------------------------ SOE
def soe_row(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "seq": int(r["seq"]), "ts": int(r["ts"]), "utc": utc_iso(int(r["ts"])), "kind": r["kind"],
        "priority": int(r["priority"]), "device": r["device"], "point": r["point"], "message": r["message"],
        "data": _json(str(r.get("data") or "")),
    }  # fmt: skip


async def query_soe(ctx: PanelContext, f: Filters) -> tuple[list[dict[str, Any]], int]:
    store = ctx.gw.store
    if store is None:
        return [], 0
    args: dict[str, Any] = {
        "kinds": f.kinds or SOE_KINDS, "device": f.device or None, "text": f.q or None, "since_ns": f.since_ns,
        "until_ns": f.until_ns, "max_priority": f.max_priority,
    }  # fmt: skip

    def read() -> tuple[list[dict[str, Any]], int]:
        rows = store.query_events(limit=f.limit, by_time=True, **args).to_pylist()
        total = len(rows) if len(rows) < f.limit else store.count_events(**args)
        return [soe_row(r) for r in rows], total

    return await asyncio.to_thread(read)


def _soe_devices(ctx: PanelContext) -> list[str]:
    names = {d.name for link in ctx.gw.cfg.links for d in link.devices}
    return sorted(names | {"protection"})


# ---------------------------------------------------------------------------------------------------- views
async def _data(call: Call, f: Filters) -> dict[str, Any]:
    b = book(call.ctx)
    await b.refresh()
    if f.view == "alarms":
        sel, total = b.select(f)
        rows = [a.row() for a in sel]
        devices = sorted(set(b.devices()) | {d.name for link in call.ctx.gw.cfg.links for d in link.devices})
    else:
        rows, total = await query_soe(call.ctx, f)
        devices = _soe_devices(call.ctx)
    return {
        "gateway_id": call.ctx.gw.cfg.id,
        "view": f.view,
        "filters": f.as_params(),
        "kinds": list(ALARM_KINDS if f.view == "alarms" else SOE_KINDS),
        "devices": devices,
        "rows": rows,
        "shown": len(rows),
        "total": total,
        "counts": b.counts(),
        "can_ack": call.can(Role.OPERATOR),
    }


_TAB = "text-decoration:none"
_TAB_ON = "text-decoration:none;background:var(--accent);border-color:var(--accent);color:#fff;font-weight:600"


def _options(values: Sequence[tuple[str, str]], current: str) -> str:
    return "".join(f"<option value='{esc(v)}'{' selected' if v == current else ''}>{esc(label)}</option>"
                   for v, label in values)  # fmt: skip


def _body(d: dict[str, Any]) -> str:
    f = d["filters"]
    view = d["view"]
    tabs = "".join(
        f"<a class='button tab' href='/alarms?view={v}' data-view='{v}' style='{_TAB_ON if v == view else _TAB}'"
        f"{' aria-current=page' if v == view else ''}>{label}</a>"
        for v, label in (("alarms", "Alarms"), ("soe", "Sequence of events"))
    )
    kinds = _options([("", "all kinds"), *((k, k) for k in d["kinds"])], f["kind"])
    devices = _options([("", "all devices"), *((x, x) for x in d["devices"])], f["device"])
    prio = _options([("", "any priority"), ("0", "priority 0"), ("1", "priority ≤ 1"), ("2", "priority ≤ 2")],
                    "" if f["priority"] is None else str(f["priority"]))
    state = _options([("all", "active and historic"), ("active", "active only"), ("historic", "historic only")],
                     f["state"])
    ack = (
        "<div class='toolbar' id='ack-bar'><button type='button' class='primary' id='ack-selected' disabled>"
        "Acknowledge selected</button><button type='button' id='ack-all'>Acknowledge all shown</button>"
        "<span id='ack-msg' role='status'></span></div>"
        if d["can_ack"] and view == "alarms"
        else ""
    )
    return f"""<section class="card alarms-page" data-view="{esc(view)}">
<div class="toolbar" role="tablist">{tabs}<span class="muted" id="alarm-counts"></span></div>
<form class="toolbar" id="alarm-filters" method="get" action="/alarms">
<input type="hidden" name="view" value="{esc(view)}">
<label>Search <input type="search" name="q" value="{esc(f['q'])}" placeholder="text in message, device, point"></label>
<label>Device <select name="device">{devices}</select></label>
<label>Kind <select name="kind">{kinds}</select></label>
<label>Priority <select name="priority">{prio}</select></label>
{f'<label>State <select name="state">{state}</select></label>' if view == 'alarms' else ''}
<label>From <input type="datetime-local" name="from" step="1"></label>
<label>To <input type="datetime-local" name="to" step="1"></label>
<label>Limit <input type="number" name="limit" min="1" max="{MAX_LIMIT}" value="{esc(f['limit'])}"></label>
<button class="primary">Apply</button>
<a class="button" id="alarm-reset" href="/alarms?view={esc(view)}" style="{_TAB}">Reset</a>
<a class="button" id="alarm-csv" href="/alarms.csv?view={esc(view)}" style="{_TAB}" download>Export CSV</a>
</form>
{ack}<p class="muted" id="alarm-summary"></p>
<div class="scroll"><table id="alarm-table"><thead></thead><tbody></tbody></table></div>
<noscript><p class="warn">This page needs JavaScript; the same data is at
<a href="/api/alarms?view={esc(view)}">/api/alarms</a> (JSON) and <a href="/alarms.csv?view={esc(view)}">CSV</a>.</p>
</noscript></section>"""


async def alarms_page(call: Call) -> Response:
    """GET /alarms: the alarm book or the SOE list, filtered (query parameters as :func:`parse_filters`)."""
    try:
        f = parse_filters(call.request.query_params)
    except FilterError as e:
        return call.error(400, str(e))
    d = await _data(call, f)
    if call.wants_json():
        return call.json(d)
    return render_page(call, "Alarms & SOE", _body(d), data=d, scripts=["alarms.js"])


def _cell(v: Any) -> Any:
    """A CSV cell, guarded against formula injection (a text cell starting with = + - @ gets a ' in front)."""
    if v is None:
        return ""
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        return "'" + v
    return v


async def alarms_csv(call: Call) -> Response:
    """GET /alarms.csv: the filtered list as CSV (columns :data:`CSV_COLUMNS`; times UTC ISO 8601 with µs)."""
    try:
        f = parse_filters(call.request.query_params, default_limit=MAX_LIMIT)
    except FilterError as e:
        return call.error(400, str(e))
    d = await _data(call, f)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for r in d["rows"]:
        w.writerow([_cell(x) for x in (
            r["seq"], r["utc"], r["kind"], r["priority"], r["device"], r["point"], r["message"],
            r.get("state", ""), r.get("acked_by", ""), r.get("acked_utc", ""),
        )])  # fmt: skip
    gw_id = re.sub(r"[^A-Za-z0-9._-]+", "_", call.ctx.gw.cfg.id) or "gateway"
    stamp = datetime.fromtimestamp(call.ctx.wall_ns() / 1e9, UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{gw_id}-{f.view}-{stamp}.csv"
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


async def ack(call: Call) -> Response:
    """POST /api/alarms/ack ``{"seqs": [12, 13]}`` or ``{"all": true, <filters>}`` (every unacknowledged alarm the
    filters, limit included, show; without a limit up to :data:`MAX_LIMIT`). Unknown seqs → 400 naming them;
    already acknowledged ones are reported, not changed."""
    body = await call.body()
    b = book(call.ctx)
    await b.refresh()
    if body.get("all") is True:
        try:
            f = parse_filters({"limit": str(MAX_LIMIT), **body, "view": "alarms"})
        except FilterError as e:
            return call.error(400, str(e))
        seqs = [a.seq for a in b.select(f)[0] if not a.acked]
    else:
        raw = body.get("seqs")
        if not isinstance(raw, list) or not raw or len(raw) > MAX_LIMIT:
            return call.error(400, f'give "seqs": a list of 1 to {MAX_LIMIT} alarm numbers, or "all": true')
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
            return call.error(400, '"seqs" must hold whole numbers (alarm seqs)')
        seqs = list(dict.fromkeys(raw))
        unknown = [s for s in seqs if s not in b.alarms]
        if unknown:
            shown = ", ".join(f"#{s}" for s in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
            return call.error(400, f"unknown alarm {shown}: not an alarm of the last 30 days", unknown=unknown)
    already = [{"seq": s, "acked_by": b.alarms[s].acked_by, "acked_utc": utc_iso(b.alarms[s].acked_ts)}
               for s in seqs if b.alarms[s].acked]  # fmt: skip
    todo = [s for s in seqs if not b.alarms[s].acked]
    acked: list[int] = []
    if todo:
        shown = ", ".join(f"#{s}" for s in todo[:20]) + (f" and {len(todo) - 20} more" if len(todo) > 20 else "")
        what = f"acknowledged alarm{'s' if len(todo) > 1 else ''} {shown}"
        ev = await call.ctx.audit(call.user, ACK_ACTION, what, client=call.client, seqs=todo)
        acked = b.apply_ack(todo, call.user, ev.ts)
    msg = f"{len(acked)} acknowledged" + (f", {len(already)} already acknowledged" if already else "")
    if already and not acked:
        first = already[0]
        msg = f"already acknowledged by {first['acked_by']} at {first['acked_utc']}" + (
            f" (and {len(already) - 1} more)" if len(already) > 1 else "")
    return call.json({"acked": acked, "already": already, "message": msg, "counts": b.counts()})


def routes(ctx: PanelContext) -> list[PanelRoute]:
    book(ctx)
    return [
        PanelRoute("/alarms", alarms_page, action="alarms.read"),
        PanelRoute("/alarms.csv", alarms_csv, api_twin=False, action="alarms.csv"),
        PanelRoute("/api/alarms/ack", ack, methods=("POST",), role=Role.OPERATOR, action="alarms.ack"),
    ]


__all__ = ["AlarmBook", "Filters", "book", "counts", "parse_filters", "routes", "utc_iso"]

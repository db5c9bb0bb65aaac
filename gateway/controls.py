"""The control service: every control (panel, API, scripts) goes through here, whatever the protocol.

:class:`ControlService` checks a request, applies the interlock hooks, keeps the gateway-side selection of
select-before-operate, bounds every device call with a timeout, and writes **every request and every outcome**
as an audit event (``kind = "control"``, priority 0: never evicted when space runs out). The request
is committed to the store before the device is asked, so a control the gateway sent is never missing from the
record.

Select-before-operate, as a sequence the service enforces (whatever the device does):

1. ``select(req)`` with ``req.mode = SBO``: the point must be writable and not selected by someone else; the
   interlocks are asked; the device is asked to select (DNP3 SELECT, 61850 SelectWithValue; Modbus has no select,
   so the gateway's own selection is all there is). On success the point is *selected* for ``req.origin`` with that
   action and value until ``select_timeout_s`` passes.
2. ``operate(req)`` with the same origin, action and value, before the selection expires: the interlocks are
   asked again (the state may have changed since the select), then the device operates. Any outcome ends the
   selection. An operate without a matching live selection is refused without touching the device
   (``NO_SELECT``, or ``SELECT_TIMEOUT`` when the selection expired).
3. ``cancel(req)`` ends the selection (61850 Cancel is sent; DNP3 and Modbus selections just lapse).

``mode = DIRECT`` operates at once (interlocks still apply). :meth:`ControlService.execute` runs the whole
sequence for the request's mode in one call.

Device calls are bounded by ``operate_timeout_s``; one that does not finish is ``NO_RESPONSE`` (the outcome on
the device is unknown — the audit event says so). Threading: all methods run on the gateway's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.config import PointConfig
from gateway.model import Event
from protocols.session import ControlAction, ControlMode, ControlRequest, ControlResult, ControlStatus

__all__ = ["ControlService", "ControlTarget", "Interlock"]

log = logging.getLogger(__name__)

AUDIT_PRIORITY = 0  # control audit events are never evicted, like trips and SOE (docs/durability.md)

# An interlock hook: returns None to allow the request, or the reason it is refused (shown to the operator).
Interlock = Callable[[ControlRequest], str | None]


class ControlTarget(Protocol):
    """What a runner offers the control service (LinkRunner for Modbus, SessionRunner for DNP3/61850)."""

    async def select(self, request: ControlRequest) -> ControlResult: ...

    async def operate(self, request: ControlRequest) -> ControlResult: ...

    async def cancel(self, request: ControlRequest) -> ControlResult: ...


@dataclass(slots=True)
class _Selection:
    origin: str
    action: ControlAction
    value: float
    expires_ns: int  # monotonic


class ControlService:
    """Routes controls to the runner that owns each device. See the module docstring for the sequence.

    :param targets: device name → its runner.
    :param points: ``"device.point"`` → point config (writable flag, kind).
    :param record: stores one audit event durably (awaited: a request is on record before the device is asked).
    """

    def __init__(
        self,
        targets: Mapping[str, ControlTarget],
        points: Mapping[str, PointConfig],
        record: Callable[[Event], Awaitable[object]],
        *,
        select_timeout_s: float = 30.0,
        operate_timeout_s: float = 10.0,
        mono_ns: Callable[[], int] = time.monotonic_ns,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._targets = dict(targets)
        self._points = dict(points)
        self._record = record
        self.select_timeout_s = select_timeout_s
        self.operate_timeout_s = operate_timeout_s
        self._mono = mono_ns
        self._wall = wall_ns
        self._interlocks: list[tuple[str, Interlock]] = []
        self._selected: dict[str, _Selection] = {}

    def update(self, targets: Mapping[str, ControlTarget], points: Mapping[str, PointConfig]) -> None:
        """A config reload changed the devices: route to the new runners. Selections of points that are gone (or
        whose device moved to a new runner) end."""
        self._targets = dict(targets)
        self._points = dict(points)
        for key in [k for k in self._selected if k not in self._points]:
            del self._selected[key]

    def add_interlock(self, hook: Interlock, point: str = "*") -> None:
        """Ask ``hook`` before every select and operate of ``point`` (``"device.point"``, or ``"*"`` for all)."""
        self._interlocks.append((point, hook))

    def selection(self, device: str, point: str) -> dict[str, object] | None:
        """The live selection of a point (origin, action, value, seconds left), or None."""
        key = f"{device}.{point}"
        sel = self._live(key)
        if sel is None:
            return None
        left = (sel.expires_ns - self._mono()) / 1e9
        return {"origin": sel.origin, "action": sel.action.value, "value": sel.value, "expires_in_s": left}

    def interlock_state(self, req: ControlRequest) -> list[dict[str, object]]:
        """Read-only: every interlock hook that applies to ``req``'s point, asked now — ``name`` (the hook's
        ``__name__``, or ``interlock N``), ``ok`` and ``reason`` (None when ok). Nothing is selected, sent to a
        device or recorded; a hook that raises reads as refused (as :meth:`select` treats it)."""
        key = f"{req.device}.{req.point}"
        out: list[dict[str, object]] = []
        for i, (pattern, hook) in enumerate(self._interlocks, start=1):
            if pattern not in ("*", key):
                continue
            name = getattr(hook, "__name__", "")
            if not name or name == "<lambda>":
                name = f"interlock {i}"
            try:
                reason = hook(req)
            except Exception as exc:
                reason = f"interlock check failed: {exc!r}"
            out.append({"name": name, "point": pattern, "ok": not reason, "reason": reason or None})
        return out

    async def execute(self, req: ControlRequest) -> ControlResult:
        """Direct: operate. SBO: select, then operate if the select succeeded (the select's failure otherwise)."""
        if req.mode is ControlMode.SBO:
            sel = await self.select(req)
            if not sel.ok:
                return sel
        return await self.operate(req)

    async def select(self, req: ControlRequest) -> ControlResult:
        key = f"{req.device}.{req.point}"
        await self._audit("select requested", req)
        refused = self._check(req, key)
        if refused is None and req.mode is not ControlMode.SBO:
            refused = ControlResult(ControlStatus.REJECTED, "select is only for mode 'sbo'")
        if refused is None:
            other = self._live(key)
            if other is not None and other.origin != req.origin:
                refused = ControlResult(ControlStatus.REJECTED, f"{key} is selected by {other.origin or 'someone'}")
        if refused is not None:
            return await self._outcome("select", req, refused)
        result = await self._call("select", req)
        if result.ok:
            expires = self._mono() + round(self.select_timeout_s * 1e9)
            self._selected[key] = _Selection(req.origin, req.action, req.value, expires)
        return await self._outcome("select", req, result)

    async def operate(self, req: ControlRequest) -> ControlResult:
        key = f"{req.device}.{req.point}"
        await self._audit("operate requested", req)
        refused = self._check(req, key)
        if refused is None and req.mode is ControlMode.SBO:
            sel = self._selected.get(key)
            if sel is None:
                refused = ControlResult(ControlStatus.NO_SELECT, f"{key} is not selected")
            elif sel.expires_ns <= self._mono():
                del self._selected[key]
                refused = ControlResult(ControlStatus.SELECT_TIMEOUT, f"the selection of {key} expired")
            elif (sel.origin, sel.action, sel.value) != (req.origin, req.action, req.value):
                refused = ControlResult(
                    ControlStatus.NO_SELECT,
                    f"{key} was selected by {sel.origin or 'someone'} for {sel.action.value} {sel.value:g}",
                )
        if refused is not None:
            return await self._outcome("operate", req, refused)
        self._selected.pop(key, None)  # any outcome ends the selection
        return await self._outcome("operate", req, await self._call("operate", req))

    async def cancel(self, req: ControlRequest) -> ControlResult:
        key = f"{req.device}.{req.point}"
        await self._audit("cancel requested", req)
        sel = self._selected.pop(key, None)
        if sel is None or req.device not in self._targets:
            return await self._outcome("cancel", req, ControlResult(ControlStatus.NO_SELECT, f"{key} is not selected"))
        return await self._outcome("cancel", req, await self._call("cancel", req))

    # ------------------------------------------------------------------------------------------------------

    def _live(self, key: str) -> _Selection | None:
        sel = self._selected.get(key)
        if sel is not None and sel.expires_ns <= self._mono():
            del self._selected[key]
            return None
        return sel

    def _check(self, req: ControlRequest, key: str) -> ControlResult | None:
        """Refusals that need no device: unknown or read-only point, an interlock."""
        p = self._points.get(key)
        if req.device not in self._targets or p is None:
            return ControlResult(ControlStatus.REJECTED, f"no point {key}")
        if not p.writable:
            return ControlResult(ControlStatus.REJECTED, f"{key} is not writable (set writable = true in the config)")
        for pattern, hook in self._interlocks:
            if pattern not in ("*", key):
                continue
            try:
                reason = hook(req)
            except Exception as exc:  # a broken hook refuses (fail safe) and says why
                log.exception("interlock hook failed for %s", key)
                reason = f"interlock check failed: {exc!r}"
            if reason:
                return ControlResult(ControlStatus.INTERLOCKED, reason)
        return None

    async def _call(self, what: str, req: ControlRequest) -> ControlResult:
        target = self._targets[req.device]
        try:
            result: ControlResult = await asyncio.wait_for(getattr(target, what)(req), self.operate_timeout_s)
        except TimeoutError:
            return ControlResult(
                ControlStatus.NO_RESPONSE, f"no answer within {self.operate_timeout_s:g} s; outcome unknown"
            )
        return result

    async def _outcome(self, what: str, req: ControlRequest, result: ControlResult) -> ControlResult:
        await self._audit(f"{what} {result.status.value}", req, result)
        return result

    async def _audit(self, message: str, req: ControlRequest, result: ControlResult | None = None) -> None:
        data: dict[str, object] = {
            "action": req.action.value,
            "value": req.value,
            "mode": req.mode.value,
            "origin": req.origin,
        }
        if req.action in (ControlAction.PULSE_ON, ControlAction.PULSE_OFF, ControlAction.TRIP, ControlAction.CLOSE):
            data.update(on_time_ms=req.on_time_ms, off_time_ms=req.off_time_ms, count=req.count)
        if result is not None:
            data.update(status=result.status.value, detail=result.detail, code=result.code)
        text = f"{req.device}.{req.point}: {message}"
        if result is not None and result.detail:
            text += f" ({result.detail})"
        await self._record(
            Event(
                ts=self._wall(),
                kind="control",
                message=text,
                priority=AUDIT_PRIORITY,
                device=req.device,
                point=req.point,
                data=json.dumps(data),
            )
        )

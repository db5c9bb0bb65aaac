"""What every panel handler shares: the gateway, the panel config, users and sessions, and the audit writer.

Threads: the gateway's event loop only (the panel runs on it). Page modules may keep their own state in
``PanelContext.state`` under their module name (e.g. the alarm book, the live-update hub).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.config import PanelConfig
from gateway.model import Event
from gateway.panel.sessions import SessionManager
from gateway.panel.users import UserStore

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("gateway.panel")

AUDIT_PRIORITY = 0  # audit events are never evicted (docs/durability.md)


@dataclass(slots=True)
class PanelContext:
    gw: Gateway
    cfg: PanelConfig
    users: UserStore
    sessions: SessionManager
    tls: bool  # served over HTTPS (cookies get Secure and the __Host- prefix)
    wall_ns: Callable[[], int]  # UTC epoch ns (the gateway's clock)
    state: dict[str, Any] = field(default_factory=dict)  # per-module state, keyed by module name

    async def audit(self, user: str, action: str, message: str, client: str = "", **data: Any) -> Event:
        """Record one audit event (kind ``audit``, priority 0) and wait until the store has committed it.

        ``action`` is a short dotted name ("login", "login.failed", "alarm.ack", "protection.settings", ...) stored
        as the event's point; ``message`` is the human-readable line; ``data`` goes into the event's JSON. Without
        a store (tests of pages only) the event is logged and returned."""
        payload = {"user": user, "action": action, "client": client, **data}
        ev = Event(ts=self.wall_ns(), kind="audit", message=f"{user or 'anonymous'}: {message}",
                   priority=AUDIT_PRIORITY, device="panel", point=action, data=json.dumps(payload, default=str))
        log.info("audit: %s", ev.message)
        store = self.gw.store
        if store is not None:
            await asyncio.to_thread(store.add_events, [ev])
        return ev

"""A small simulated substation for panel tests: the demo's feeder relays (pymodbus, hil_tests.demo_ieds) polled by
a real gateway with a real store, and the panel app in-process (httpx ASGI transport) or on a loopback port.

``panel`` fixture → :class:`PanelRig`: ``gw``, ``ctx`` (PanelContext with a fake session clock), ``app``, ``feeders``
(FeederIed: ``.model`` / ``.unit``), ``client(role)`` → a logged-in httpx client with its CSRF token, ``anon`` →
a client with no session. Users are created on demand, one per role, named after the role
(password ``PASSWORD``).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import httpx
import pytest

from gateway.analytics.config import AnalyticsConfig
from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.config_load import load_config
from gateway.panel.app import build_panel_app, build_panel_context
from gateway.panel.context import PanelContext
from gateway.panel.roles import Role
from gateway.panel.sessions import SessionManager
from gateway.panel.users import UserStore
from hil_tests.demo_ieds import FeederIed, build_servers
from hil_tests.modbus_sim import SimServer
from protection.runtime import ProtectionRuntime
from protection.settings import ProtectionSettings

PASSWORD = "correct horse battery"
BASE_URL = "http://panel.test"


class FakeClock:
    """Monotonic seconds for the session manager; tests move it with ``advance``."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def substation_config(tmp_path: Path, feeder_port: int, incomer_port: int) -> GatewayConfig:
    """The shipped demo config cut to its Modbus links (feeders 1-3, incomer), with its panel bays for them; no
    protection process, no sinks, no analytics; the panel server itself is not started (port 0)."""
    with resources.as_file(resources.files("gateway") / "configs" / "demo.toml") as path:
        cfg, _ = load_config(path)
    links = tuple(
        dataclasses.replace(link, port=feeder_port if link.name == "bay-switch" else incomer_port)
        for link in cfg.links
        if link.name in ("bay-switch", "incomer")
    )
    names = {d.name for link in links for d in link.devices}
    bays = tuple(b for b in cfg.panel.bays if b.breaker.split(".")[0] in names)
    return dataclasses.replace(
        cfg,
        data_dir=tmp_path / "gw",
        links=links,
        sinks=(),
        panel=dataclasses.replace(cfg.panel, port=0, tls=False, bays=bays),
        protection=ProtectionSettings(),
        protection_runtime=ProtectionRuntime(),
        analytics=AnalyticsConfig(),
    )


@dataclass
class PanelRig:
    gw: Gateway
    ctx: PanelContext
    app: object
    feeders: list[FeederIed]
    clock: FakeClock
    servers: list[SimServer]
    _clients: list[httpx.AsyncClient] = field(default_factory=list)

    def new_client(self) -> httpx.AsyncClient:
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE_URL)  # type: ignore[arg-type]
        self._clients.append(c)
        return c

    @property
    def anon(self) -> httpx.AsyncClient:
        return self.new_client()

    def ensure_user(self, role: Role, name: str | None = None) -> str:
        name = name or role.label
        if self.ctx.users.get(name) is None:
            self.ctx.users.add(name, PASSWORD, role)
        return name

    async def client(self, role: Role, name: str | None = None) -> tuple[httpx.AsyncClient, str]:
        """A client logged in as a user with ``role``; returns it and the session's CSRF token."""
        name = self.ensure_user(role, name)
        c = self.new_client()
        r = await c.post("/login", data={"username": name, "password": PASSWORD, "next": "/"})
        assert r.status_code == 303, r.text
        page = await c.get("/")
        m = re.search(r'<meta name="csrf-token" content="([^"]*)"', page.text)
        assert m, "no CSRF token on the overview page"
        c.headers["X-CSRF-Token"] = m.group(1)
        return c, m.group(1)

    async def aclose(self) -> None:
        for c in self._clients:
            await c.aclose()


@pytest.fixture
async def panel(tmp_path: Path) -> AsyncIterator[PanelRig]:
    servers, feeders = build_servers(0, 0)

    def tick(_: float) -> None:
        now = time.time()
        for f in feeders:
            f.tick(now)

    tick(0.0)
    for s in servers:
        await s.start()
    servers[0].every(0.1, tick)
    cfg = substation_config(tmp_path, servers[0].port, servers[1].port)
    clock = FakeClock()
    try:
        async with Gateway(cfg) as gw:
            users = UserStore(tmp_path / "gw" / "panel" / "users.json")
            sessions = SessionManager(users, idle_s=cfg.panel.session_idle_min * 60,
                                      max_s=cfg.panel.session_max_h * 3600, clock=clock)
            ctx = build_panel_context(gw, users=users, sessions=sessions, tls=False)
            rig = PanelRig(gw, ctx, build_panel_app(gw, ctx), feeders, clock, servers)
            try:
                yield rig
            finally:
                await rig.aclose()
    finally:
        for s in servers:
            await s.stop()

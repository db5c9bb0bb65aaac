"""End to end in a real browser: the operator panel served by a real gateway over HTTPS (its generated self-signed
certificate), driven by headless Chromium (Debian's /usr/bin/chromium through Playwright), while the gateway polls
the demo's simulated feeder relays.

One story, all through the pages: the first administrator is created with a one-time setup token; the admin adds
an operator (olga) and a viewer (victor) on Users & audit; olga logs in, watches a value change live, acknowledges a
real communication-loss alarm and opens Feeder 1's breaker with select-before-operate (the simulated breaker
opens); the audit log shows her steps; victor sees no control buttons and a direct operate request from his browser
session is refused (403). No page may log a console error or throw (the strict CSP reports violations there).

Screenshots of every page are written to ``<repo>/test-output/panel/`` (overwritten each run) for people to look
at after ``make test``.

Needs Debian's ``chromium`` (``make test`` installs it with apt-get) and the ``playwright`` Python package (in the
``test`` extra); never a browser downloaded by ``playwright install``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.app import Gateway
from hil_tests.demo_ieds import FeederIed, build_servers
from hil_tests.net import free_port
from tests.panel.conftest import substation_config
from tests.waiting import wait_for

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "test-output" / "panel"
PASSWORDS = {"admin": "admin pass phrase 1", "olga": "olga pass phrase 2", "victor": "victor pass phrase 3"}
SUPERVISOR_TICK_S = 0.2  # the daemon's loop ticks every 0.5 s
WAIT_MS = 20_000  # bound for one page condition on a loaded machine (not an expectation)
MISSING = ("the panel's browser test needs Debian's chromium at /usr/bin/chromium and the playwright Python package; "
           "`make test` installs both (chromium with apt-get, playwright with pip from the test extra) — never "
           "`playwright install`")


def missing() -> str | None:
    """Why the browser test cannot run here (None: it can)."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError as e:
        return f"{MISSING} ({e})"
    if not CHROMIUM.exists():
        return f"{MISSING} ({CHROMIUM} is missing)"
    return None


def test_browser_installed() -> None:
    """A machine without the browser fails here, loudly (never a skip): `make test` installs what is missing."""
    why = missing()
    if why is not None:
        pytest.fail(why)


@pytest.fixture
def shots() -> Path:
    """Where the screenshots go: ``<repo>/test-output/panel/`` (git-ignored), emptied at the start of a run."""
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    SHOTS.mkdir(parents=True)
    return SHOTS


@dataclass
class Rig:
    gw: Gateway
    feeders: list[FeederIed]  # feeder 1-3 relays, then the incomer meter
    url: str
    browser: Browser
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions of every page

    async def context(self) -> BrowserContext:
        """A fresh browser profile (no cookies) that accepts the gateway's self-signed certificate."""
        return await self.browser.new_context(ignore_https_errors=True, viewport={"width": 1300, "height": 900})

    async def page(self, ctx: BrowserContext | None = None) -> Page:
        ctx = ctx if ctx is not None else await self.context()
        page = await ctx.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("console", lambda m: self.errors.append(f"{page.url}: console {m.type}: {m.text}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: uncaught {e}"))
        return page

    async def goto(self, page: Page, path: str) -> None:
        await page.goto(self.url + path)
        await page.wait_for_selector("#live-dot.on")  # the live stream connected: the page script ran

    async def login(self, name: str) -> Page:
        page = await self.page()
        await page.goto(self.url + "/login")
        await page.fill("input[name=username]", name)
        await page.fill("input[name=password]", PASSWORDS[name])
        await page.click("form[action='/login'] button[type=submit]")
        await page.wait_for_url(self.url + "/")
        await page.wait_for_selector("#live-dot.on")
        return page


async def supervise(gw: Gateway) -> None:
    """What the daemon's loop (gateway.app.run) does besides watchdog pings: record comm-state changes as events,
    at its tick."""
    while True:
        await gw.record_comm_events()
        await asyncio.sleep(SUPERVISOR_TICK_S)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    why = missing()
    if why is not None:
        pytest.fail(why)
    from playwright.async_api import async_playwright
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
    # the panel really listening, with its defaults: HTTPS with a generated self-signed certificate
    cfg = dataclasses.replace(cfg, panel=dataclasses.replace(cfg.panel, port=free_port(), tls=True))
    try:
        async with Gateway(cfg) as gw, async_playwright() as pw:
            assert gw.panel is not None and gw.panel.url.startswith("https://")
            supervisor = asyncio.create_task(supervise(gw))
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM))
            try:
                yield Rig(gw, feeders, gw.panel.url, browser)
            finally:
                await browser.close()
                supervisor.cancel()
                await asyncio.wait([supervisor])
    finally:
        for s in servers:
            await s.stop()


async def text_changes(page: Page, selector: str, what: str) -> None:
    """Wait until the text of ``selector`` differs from what it shows now (a live update arrived)."""
    el = page.locator(selector)
    before = await el.inner_text()
    await page.wait_for_function(
        "([sel, old]) => { const e = document.querySelector(sel); return e && e.textContent !== old; }",
        arg=[selector, before])
    assert await el.inner_text() != before, what


async def shot(page: Page, dest: Path, name: str, full: bool = True) -> None:
    await page.screenshot(path=str(dest / f"{name}.png"), full_page=full)


def audit_rows(text: str, user: str) -> list[str]:
    return [line for line in text.splitlines() if f"\t{user}\t" in f"\t{line}\t"]


async def test_operator_story_in_chromium(rig: Rig, shots: Path) -> None:
    gw, feeders = rig.gw, rig.feeders
    ctx = gw.panel_context
    assert ctx is not None and ctx.tls

    # -- 1. the first admin, from a one-time setup token ------------------------------------------------------
    token = ctx.users.issue_setup_token()
    admin_ctx = await rig.context()
    admin = await rig.page(admin_ctx)
    await admin.goto(f"{rig.url}/setup?token={token}")
    await admin.fill("input[name=username]", "admin")
    await admin.fill("input[name=password]", PASSWORDS["admin"])
    await admin.fill("input[name=password2]", PASSWORDS["admin"])
    await admin.click("form[action='/setup'] button[type=submit]")
    await admin.wait_for_url(rig.url + "/")
    await admin.wait_for_selector("[data-tile='Feeder 1']")
    await admin.wait_for_selector("#live-dot.on")
    cookies = {c["name"]: c for c in await admin_ctx.cookies()}
    assert "__Host-gw_session" in cookies, cookies.keys()  # HTTPS: the __Host- prefixed, Secure cookie
    sc = cookies["__Host-gw_session"]
    assert sc["secure"] and sc["httpOnly"] and sc["path"] == "/" and sc["sameSite"] == "Strict"
    assert "admin (admin)" in await admin.inner_text("header .who")

    # -- 2. the admin adds an operator and a viewer on Users & audit ------------------------------------------
    await rig.goto(admin, "/admin")
    for name, role in (("olga", "operator"), ("victor", "viewer")):
        form = admin.locator("#add-user")
        await form.locator("input[name=name]").fill(name)
        await form.locator("select[name=role]").select_option(role)
        await form.locator("input[name=password]").fill(PASSWORDS[name])
        await form.locator("button.primary").click()
        # the page reloads after saying so; the new row is there only after the reload
        await admin.wait_for_selector(f"tr[data-user='{name}']")
        await admin.wait_for_load_state()
        assert await admin.locator(f"tr[data-user='{name}'] [data-role-select]").input_value() == role
    assert {u.name: u.role.label for u in ctx.users.list()} == {"admin": "admin", "olga": "operator",
                                                                "victor": "viewer"}

    # -- 3. olga logs in and watches a value change live ------------------------------------------------------
    login = await rig.page()
    await login.goto(rig.url + "/login")
    await shot(login, shots, "login")
    await login.close()
    olga = await rig.login("olga")
    assert "olga (operator)" in await olga.inner_text("header .who")
    assert await olga.locator("nav a[href='/admin']").count() == 0  # an operator has no Users & audit
    tile_ia = f"[data-tile='Feeder 1'] tr[data-pid='{gw.point_ids['feeder1.Ia']}'] [data-f=value]"
    await olga.wait_for_function("(sel) => /\\d/.test(document.querySelector(sel).textContent)", arg=tile_ia)
    await text_changes(olga, tile_ia, "the overview's Feeder 1 Ia did not follow the live stream")
    await rig.goto(olga, "/points")
    await olga.fill("#pt-search", "feeder1.Ia")
    ia_cell = "#pt-rows .vt-row:has(span[title='feeder1.Ia']) > span:nth-child(3)"  # the value
    await olga.wait_for_function("(sel) => { const e = document.querySelector(sel); return e && /\\d/.test("
                                 "e.textContent); }", arg=ia_cell)
    await text_changes(olga, ia_cell, "the Points page's feeder1.Ia did not follow the live stream")
    await olga.fill("#pt-search", "feeder1")
    await olga.wait_for_function("() => document.querySelectorAll('#pt-rows .vt-row').length > 1")
    await shot(olga, shots, "points")

    # -- 4. a real alarm: the incomer meter stops answering; olga acknowledges it -----------------------------
    incomer = feeders[3]  # build_servers: feeders 1-3, then the incomer (its own link)
    incomer.unit.silent = True
    await rig.goto(olga, "/alarms")
    row = olga.locator("#alarm-table tr.active[data-seq]", has_text="incomer").filter(has_text="lost")
    await row.first.wait_for()
    seq = await row.first.get_attribute("data-seq")
    assert seq is not None
    await olga.check(f"input.ack-box[value='{seq}']")
    await olga.click("#ack-selected")
    await olga.wait_for_selector("#ack-msg.ok")
    acked = olga.locator(f"#alarm-table tr[data-seq='{seq}'] td:last-child")
    await acked.filter(has_text="olga").wait_for()
    await shot(olga, shots, "alarms")

    # -- 5. olga opens Feeder 1's breaker: select, confirm (interlocks, countdown), operate --------------------
    assert feeders[0].model.breaker_closed
    await rig.goto(olga, "/controls")
    assert (await olga.inner_text("[data-state='Feeder 1']")).strip() == "CLOSED"
    await olga.click("button[data-bay='Feeder 1'][data-action='open']")
    await olga.wait_for_selector("dialog#confirm[open]")
    await olga.locator("#confirm-sel", has_text="selected for you").wait_for()
    assert (await olga.inner_text("#confirm-breaker")).strip() == "CLOSED"
    assert (await olga.inner_text("#confirm-ilk")).strip() not in ("", "—")
    assert not (await olga.inner_text("#confirm-ilk")).startswith("refused")
    count = "#confirm-count"
    assert re.fullmatch(r"\d+\.\d s", (await olga.inner_text(count)).strip())
    await text_changes(olga, count, "the select countdown does not count")
    await shot(olga, shots, "controls-dialog", full=False)
    await olga.click("#confirm-operate")
    await olga.locator("#confirm-result.ok", has_text="Done").wait_for()
    await wait_for(lambda: not feeders[0].model.breaker_closed, what="the simulated Feeder 1 breaker to open")
    await olga.locator("#confirm-breaker", has_text="OPEN").wait_for()
    await shot(olga, shots, "controls-result", full=False)
    await olga.click("#confirm-cancel")
    await olga.locator("[data-state='Feeder 1']", has_text="OPEN").wait_for()
    await shot(olga, shots, "controls")
    await rig.goto(olga, "/")
    await olga.locator("[data-tile='Feeder 1'] [data-f=breaker]", has_text="OPEN").wait_for()
    await shot(olga, shots, "overview")
    await rig.goto(olga, "/alarms")
    await olga.click("a.tab[data-view=soe]")  # the sequence of events shows olga's control steps
    await olga.wait_for_url(re.compile(r"view=soe"))
    await olga.locator("#alarm-table tr[data-seq]", has_text="feeder1.trip_cmd: operate success").wait_for()
    await shot(olga, shots, "soe")

    # the other pages, for people to look at
    await rig.goto(olga, "/devices")
    await olga.wait_for_selector("#devices")
    await shot(olga, shots, "devices")
    await rig.goto(olga, "/devices/feeder1")
    await olga.wait_for_function("() => /\\d+ points/.test(document.getElementById('pt-count').textContent)")
    await shot(olga, shots, "device")
    await rig.goto(olga, "/trends?p=feeder1.Ia&p=feeder1.Ib&range=15m")
    await olga.wait_for_selector("section.trend-group canvas")
    await olga.wait_for_selector("#chips .chip[data-point='feeder1.Ia']")
    await shot(olga, shots, "trends")
    await rig.goto(olga, "/trends/energy")
    await shot(olga, shots, "energy")
    await rig.goto(olga, "/protection")
    await olga.wait_for_selector("#process")
    await shot(olga, shots, "protection")

    # -- the audit log shows olga's control and acknowledgement ------------------------------------------------
    await rig.goto(admin, "/admin")
    await shot(admin, shots, "admin")
    await admin.goto(rig.url + "/admin/audit?user=olga")
    table = await admin.inner_text("main table")
    mine = audit_rows(table, "olga")
    actions = {a for line in mine for a in ("control.select", "control.operate", "alarm.ack", "login")
               if f"\t{a}\t" in f"\t{line}\t"}
    assert actions == {"control.select", "control.operate", "alarm.ack", "login"}, table
    assert any("control.operate" in line and "feeder1" in line for line in mine), table
    assert any("alarm.ack" in line and seq in line for line in mine), table

    # -- 6. victor (viewer) cannot operate ----------------------------------------------------------------------
    victor = await rig.login("victor")
    await rig.goto(victor, "/controls")
    await victor.wait_for_selector("[data-state='Feeder 1']")
    assert await victor.locator("button[data-bay]").count() == 0
    assert await victor.locator("dialog#confirm").count() == 0
    csrf = await victor.get_attribute("meta[name=csrf-token]", "content")
    assert csrf
    for step in ("select", "operate"):
        r = await victor.request.post(rig.url + f"/api/controls/{step}", data={"bay": "Feeder 1", "action": "close"},
                                      headers={"X-CSRF-Token": csrf, "Origin": rig.url})
        assert r.status == 403, (step, r.status, await r.text())
        assert "operator" in (await r.json())["error"]
    assert not feeders[0].model.breaker_closed  # still open
    await shot(victor, shots, "controls-viewer")
    await admin.goto(rig.url + "/admin/audit?user=victor&action=denied")
    assert "viewer may not controls.operate (needs operator)" in await admin.inner_text("main table")
    await admin.goto(rig.url + "/admin/audit")
    await shot(admin, shots, "audit")

    assert not rig.errors, "\n".join(rig.errors)
    names = sorted(p.stem for p in shots.glob("*.png"))
    assert names == sorted(["login", "points", "alarms", "soe", "controls-dialog", "controls-result", "controls",
                            "overview", "devices", "device", "trends", "energy", "protection", "admin", "audit",
                            "controls-viewer"])


"""End to end over loopback: pymodbus simulators → gateway (runners, store, uploader) → the real receiver.

Every reading the gateway committed lands exactly once, through a receiver that is down, fails, throttles and
answers too late — and across a SIGKILL of the gateway process in the middle of an upload.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_sync.receiver import DuckDBBackend
from cloud_sync.receiver.app import build_app
from cloud_sync.receiver.server import ReceiverServer
from gateway.app import Gateway
from gateway.config import (
    DeviceConfig,
    GatewayConfig,
    LinkConfig,
    PanelConfig,
    PointConfig,
    SinkConfig,
    StorageConfig,
)
from hil_tests.modbus_sim import SimServer, SimUnit
from hil_tests.net import free_port
from hil_tests.panel_access import viewer_token
from storefwd.store import Store
from tests.waiting import wait_for, wait_for_async

GW = "gw-e2e"
TOKEN = "tok-e2e"
POINTS = 10  # holding registers per device, one block, one poll = POINTS readings
PERIOD = 0.1

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def make_units() -> list[SimUnit]:
    units = [SimUnit(unit_id=i, holding=POINTS, input=1, coils=1, discrete=1) for i in (1, 2)]
    for u in units:
        u.holding[:] = range(100 * u.unit_id, 100 * u.unit_id + POINTS)
    return units


def ticker(units: list[SimUnit]) -> Callable[[float], None]:
    def tick(t: float) -> None:
        for u in units:
            u.holding[0] = int(t * 10) % 65536  # a value that moves

    return tick


def make_config(tmp_path: Path, modbus_port: int, receiver_url: str, panel_port: int = 0) -> GatewayConfig:
    points = tuple(
        PointConfig(name=f"r{i}", kind="holding", address=i, type="uint16", period_s=PERIOD)
        for i in range(POINTS)
    )
    devices = tuple(
        DeviceConfig(
            name=f"dev{u}", unit_id=u, timeout_s=0.3, backoff_min_s=0.2, backoff_max_s=0.5, points=points
        )
        for u in (1, 2)
    )
    return GatewayConfig(
        id=GW,
        data_dir=tmp_path / "gw",
        links=(
            LinkConfig(
                name="line", protocol="modbus_tcp", host="127.0.0.1", port=modbus_port, devices=devices
            ),
        ),
        storage=StorageConfig(commit_interval_ms=50),
        sinks=(
            SinkConfig(
                name="cloud",
                url=f"{receiver_url}/v1/batches",
                token=TOKEN,
                batch_size=300,
                max_interval_s=0.1,
                timeout_s=0.5,
                retry_max_s=0.3,
            ),
        ),
        panel=PanelConfig(port=panel_port),
    )


async def receiver_counts(backend: DuckDBBackend) -> tuple[int, int, int, int]:
    """(rows, distinct seqs, min seq, max seq) landed for the test gateway."""
    (row,) = await backend.query(
        "SELECT count(*), count(DISTINCT seq), coalesce(min(seq), 0), coalesce(max(seq), 0) "
        "FROM readings JOIN gateways USING (gw) WHERE gateway_id = ?",
        [GW],
    )
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


async def test_every_served_reading_lands_exactly_once(tmp_path: Path) -> None:
    units = make_units()
    backend = DuckDBBackend(tmp_path / "rx.duckdb")
    async with (
        SimServer(units, tcp=("127.0.0.1", 0)) as sim,
        ReceiverServer(build_app(backend, {GW: TOKEN})) as rx,
    ):
        sim.every(0.05, ticker(units))
        gw = Gateway(make_config(tmp_path, sim.port, rx.url))
        await gw.start()
        try:
            await wait_for(lambda: all(u.requests >= 20 for u in units), what="20 polls per device")
            await gw.stop_sources()
            served_good = sum(u.requests for u in units) * POINTS
            assert gw.store is not None
            store = gw.store
            await asyncio.to_thread(store.flush)
            last = store.last_seq()
            first = int(store.stats()["first_seq"])  # a new store numbers from the time in µs
            await wait_for(lambda: store.backlog("cloud") == 0, what="backlog drained")
            (good,) = await backend.query(
                "SELECT count(*) FROM readings JOIN gateways USING (gw) WHERE gateway_id = ? AND quality & 3 = 0",
                [GW],
            )
            # the last value of each point at the receiver is what the device served last
            last_vals = await backend.query(
                "SELECT point, arg_max(value, seq) FROM readings_named WHERE gateway_id = ? AND quality & 3 = 0 "
                "GROUP BY point ORDER BY point",
                [GW],
            )
            rows, distinct, lo, hi = await receiver_counts(backend)
        finally:
            await gw.stop()
    assert good[0] == served_good  # every reading the simulators served, and no other good reading
    n = last - first + 1
    assert (rows, distinct, lo, hi) == (n, n, first, last)  # + the stop marks; each seq exactly once
    assert rows == served_good + 2 * POINTS  # the only non-good rows are the old-data marks on stop
    assert len(last_vals) == POINTS


class FlakyReceiver:
    """ASGI wrapper: answers the first uploads from a script (500, 429, late), then passes through."""

    def __init__(self, app: Any, script: list[str]) -> None:
        self.app = app
        self.script = script
        self.seen: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/batches" and self.script:
            action = self.script.pop(0)
            self.seen.append(action)
            if action in ("500", "429"):
                status = int(action)
                headers = [(b"content-type", b"application/json")]
                if status == 429:
                    headers.append((b"retry-after", b"1"))
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send(
                    {"type": "http.response.body", "body": b'{"error":"unavailable","message":"test"}'}
                )
                return
            if action == "late":  # land the rows, answer after the gateway gave up waiting

                async def late_send(msg: dict[str, Any]) -> None:
                    if msg["type"] == "http.response.start":
                        await asyncio.sleep(1.5)
                    await send(msg)

                await self.app(scope, receive, late_send)
                return
        await self.app(scope, receive, send)


async def test_receiver_down_failing_throttling_and_late_then_exactly_once(tmp_path: Path) -> None:
    units = make_units()
    rx_port = free_port()  # nothing listens here yet: connection refused
    backend = DuckDBBackend(tmp_path / "rx.duckdb")
    flaky = FlakyReceiver(build_app(backend, {GW: TOKEN}), ["500", "late", "429", "500"])
    async with SimServer(units, tcp=("127.0.0.1", 0)) as sim:
        sim.every(0.05, ticker(units))
        gw = Gateway(make_config(tmp_path, sim.port, f"http://127.0.0.1:{rx_port}"))
        await gw.start()
        try:
            up = gw.uploaders[0]
            await wait_for(lambda: up.status()["retries"] >= 2, what="retries while the receiver is down")
            assert up.status()["last_ack_seq"] == 0
            async with ReceiverServer(flaky, port=rx_port):
                await wait_for(lambda: not flaky.script, what="failure script played")
                await wait_for(lambda: all(u.requests >= 30 for u in units), what="more polls")
                await gw.stop_sources()
                assert gw.store is not None
                store = gw.store
                last = await asyncio.to_thread(store.flush)
                first = int(store.stats()["first_seq"])
                await wait_for(lambda: store.backlog("cloud") == 0, what="backlog drained")
                stats = await backend.stats(GW)
                rows, distinct, lo, hi = await receiver_counts(backend)
        finally:
            await gw.stop()
    assert flaky.seen == ["500", "late", "429", "500"]
    n = last - first + 1
    assert (rows, distinct, lo, hi) == (n, n, first, last)
    assert stats["rows"] == n and stats["last_seq"] == last


def _gateway_toml(tmp_path: Path, modbus_port: int, rx_url: str, panel_port: int) -> Path:
    point_list = ", ".join(
        f'{{ name = "r{i}", kind = "holding", address = {i}, period_s = {PERIOD} }}' for i in range(POINTS)
    )
    text = f"""
version = 1
[gateway]
id = "{GW}"
data_dir = "gw"
[storage]
commit_interval_ms = 50
[panel]
port = {panel_port}
tls = false
[[sinks]]
name = "cloud"
url = "{rx_url}/v1/batches"
token = "{TOKEN}"
batch_size = 200
max_interval_s = 0.1
timeout_s = 5.0
retry_max_s = 0.3
[templates.dev]
timeout_s = 0.3
backoff_min_s = 0.2
backoff_max_s = 0.5
points = [{point_list}]
[[links]]
name = "line"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {modbus_port}
[[links.devices]]
name = "dev1"
unit_id = 1
template = "dev"
[[links.devices]]
name = "dev2"
unit_id = 2
template = "dev"
"""
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


class HoldFirstAck:
    """ASGI wrapper: the first upload is landed, then its response is held back (the gateway waits for the
    ack) and ``holding`` is set: the moment to pull the power."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/batches" and not self.holding.is_set():

            async def held_send(msg: dict[str, Any]) -> None:
                if msg["type"] == "http.response.start":
                    self.holding.set()
                    await self.release.wait()
                await send(msg)

            await self.app(scope, receive, held_send)
            return
        await self.app(scope, receive, send)


def _start_gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


@pytest.mark.slow
async def test_sigkill_mid_upload_then_restart_no_loss_no_duplicate(tmp_path: Path) -> None:
    units = make_units()
    backend = DuckDBBackend(tmp_path / "rx.duckdb")
    hold = HoldFirstAck(build_app(backend, {GW: TOKEN}))
    panel_port = free_port()
    log = tmp_path / "gateway.log"
    async with SimServer(units, tcp=("127.0.0.1", 0)) as sim, ReceiverServer(hold) as rx:
        sim.every(0.05, ticker(units))
        config = _gateway_toml(tmp_path, sim.port, rx.url, panel_port)
        proc = _start_gateway(config, log)
        try:
            await asyncio.wait_for(hold.holding.wait(), timeout=30)  # rows landed, ack not yet delivered
            landed_before_kill = (await receiver_counts(backend))[0]
            assert landed_before_kill > 0
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
            hold.release.set()

            proc = _start_gateway(config, log)
            status_url = f"http://127.0.0.1:{panel_port}/api/status"
            token = viewer_token(tmp_path / "gw")  # the panel has no anonymous JSON: a rig reads it with a token

            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as client:

                async def stable() -> bool:
                    try:
                        st = (await client.get(status_url, timeout=2)).json()
                    except (httpx.HTTPError, ValueError):
                        return False
                    sink = st["sinks"][0]
                    return bool(sink["last_ack_seq"] > landed_before_kill and sink["backlog"] == 0)

                await wait_for_async(stable, timeout=30, what="restarted gateway caught up")
                for u in units:  # the devices go silent: no new readings but the failure marks
                    u.silent = True

                async def idle() -> bool:
                    st = (await client.get(status_url, timeout=2)).json()
                    return bool(
                        all(d["state"] == "backoff" for d in st["devices"]) and st["sinks"][0]["backlog"] == 0
                    )

                await wait_for_async(idle, timeout=30, what="devices backed off and backlog drained")
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 10) == 0, log.read_text()
            stats = await backend.stats(GW)
            rows, distinct, lo, hi = await receiver_counts(backend)
            (dups,) = await backend.query("SELECT coalesce(sum(duplicates), 0) FROM batches")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    with Store(tmp_path / "gw" / "gateway.duckdb") as store:
        committed = store.last_seq()
        acked = store.watermark("cloud")
        kept = store.backlog("cloud")
        first = int(store.stats()["first_seq"])
    assert dups[0] > 0  # the batch landed before the kill was sent again after the restart ...
    n = acked - first + 1
    assert (rows, distinct, lo, hi) == (n, n, first, acked)  # ... and landed once
    assert stats["rows"] == n
    assert (
        acked + kept == committed
    )  # the rest (the stop marks written on SIGTERM) is kept for the next start
    assert kept <= 2 * POINTS

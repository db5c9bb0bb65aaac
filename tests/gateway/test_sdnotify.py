"""sd_notify: the client itself, and the daemon's READY / STATUS / WATCHDOG / STOPPING contract
(docs/deployment.md, "Watchdog contract")."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import app as app_mod
from gateway.app import Gateway, run_gateway
from gateway.config import DeviceConfig, GatewayConfig, LinkConfig, PanelConfig, PointConfig, SinkConfig
from gateway.runner import LinkRunner
from gateway.sdnotify import Notifier, socket_address, watchdog_usec
from hil_tests.modbus_sim import SimServer, SimUnit
from tests.waiting import wait_for, wait_until


class Listener:
    """The service manager's end: a unix datagram socket that collects what the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[list[str]] = []  # one list of lines per datagram, in arrival order

    def drain(self) -> list[list[str]]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return self.messages

    def index(self, line: str) -> int:
        """Position of the first datagram carrying ``line`` (-1 if none yet)."""
        return next((i for i, m in enumerate(self.drain()) if line in m), -1)

    def count(self, line: str, start: int = 0) -> int:
        return sum(line in m for m in self.drain()[start:])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    lst = Listener(tmp_path / "notify.sock")
    yield lst
    lst.close()


# -- the client ----------------------------------------------------------------------------------------------------
def test_socket_address_handles_paths_and_the_abstract_namespace() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@gw/notify") == b"\0gw/notify"
    assert socket_address("") is None
    assert socket_address("vsock:2:1234") is None


def test_watchdog_usec_applies_only_to_its_pid() -> None:
    assert watchdog_usec({"WATCHDOG_USEC": "30000000"}) == 30_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2) == 0
    assert watchdog_usec({"WATCHDOG_USEC": "x"}) == 0
    assert watchdog_usec({}) == 0


def test_without_notify_socket_everything_is_a_no_op() -> None:
    n = Notifier({"WATCHDOG_USEC": "30000000"})
    assert not n.enabled
    assert n.watchdog_interval_s == 0.0  # no socket, no pings
    assert not n.ready() and not n.watchdog() and not n.status("x") and not n.stopping()
    n.close()


def test_messages_reach_a_path_socket(listener: Listener) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "30000000"})
    assert n.watchdog_interval_s == 15.0  # half the timeout
    assert n.ready("up") and n.status("a\nb") and n.watchdog() and n.reloading() and n.stopping()
    n.close()
    n.close()
    msgs = listener.drain()
    assert msgs[:3] == [["READY=1", "STATUS=up"], ["STATUS=a b"], ["WATCHDOG=1"]]
    assert msgs[3][0] == "RELOADING=1" and msgs[3][1].startswith("MONOTONIC_USEC=")
    assert int(msgs[3][1].split("=")[1]) > 0
    assert msgs[4] == ["STOPPING=1"]


def test_messages_reach_an_abstract_socket() -> None:
    name = f"gateway-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(b"\0" + name.encode())
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.watchdog()
        n.close()
        assert sock.recv(100) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_a_missing_socket_is_logged_once_and_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.WARNING, logger="gateway.sdnotify"):
        assert not n.watchdog()
        assert not n.watchdog()
    n.close()
    assert sum("cannot notify" in r.getMessage() for r in caplog.records) == 1


# -- the real daemon, as systemd runs it ---------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_daemon_notifies_ready_status_watchdog_and_stopping(tmp_path: Path, listener: Listener) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
version = 1
[gateway]
id = "gw-notify"
data_dir = "data"
[panel]
port = 0
[[links]]
name = "line1"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {_closed_port()}
connect_timeout_s = 0.5
[[links.devices]]
name = "feeder1"
unit_id = 1
timeout_s = 0.2
points = [{{ name = "Ia", kind = "input", address = 0 }}]
""")
    store = tmp_path / "data" / "gateway.duckdb"
    env = {**os.environ, "NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "2000000", "PYTHONUNBUFFERED": "1"}
    env.pop("WATCHDOG_PID", None)
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "gateway"), "run", "-c", str(config)], stdout=out, stderr=out, env=env
        )
    try:
        wait_until(lambda: listener.index("READY=1") >= 0, what="READY=1")
        assert store.exists()  # READY comes after the store is open...
        ready = listener.messages[listener.index("READY=1")]
        assert ready[1].startswith("STATUS=polling 1 devices (0 ok), store ")
        assert "retry in" in log.read_text()  # ...and after the link's first connect attempt (refused here)
        wait_until(lambda: listener.count("WATCHDOG=1", listener.index("READY=1")) >= 3, what="watchdog pings")
        wait_until(
            lambda: any(m[0].startswith("STATUS=polling 1 devices") for m in listener.drain()), what="STATUS line"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    msgs = listener.drain()
    assert msgs[-1] == ["STOPPING=1", "STATUS=stopping"]
    assert "not alive" not in log.read_text()


# -- a hung poll loop stops the pings ------------------------------------------------------------------------------
def _config(tmp_path: Path, port: int) -> GatewayConfig:
    point = PointConfig(name="v", kind="holding", address=0, period_s=0.05)
    dev = DeviceConfig(name="d1", unit_id=1, timeout_s=0.2, backoff_min_s=0.1, backoff_max_s=0.2, points=(point,))
    links = (
        LinkConfig(name="good", protocol="modbus_tcp", host="127.0.0.1", port=port, connect_timeout_s=0.2,
                   devices=(dev,)),
        LinkConfig(name="stuck", protocol="modbus_tcp", host="127.0.0.1", port=port, connect_timeout_s=0.2,
                   devices=(DeviceConfig(name="d2", unit_id=2, timeout_s=0.2, points=(point,)),)),
    )  # fmt: skip
    return GatewayConfig(id="gw", data_dir=tmp_path, links=links, panel=PanelConfig(port=0))


async def test_a_hung_poll_loop_stops_the_watchdog_and_is_named(
    tmp_path: Path, listener: Listener, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hang = asyncio.Event()
    real_poll = LinkRunner._poll

    async def poll(self: LinkRunner, g: Any, now: int) -> None:
        # the deliberate fault: once `hang` is set, a poll of link "stuck" awaits something that never happens,
        # as a driver call without a timeout would
        if hang.is_set() and self.link.name == "stuck":
            await asyncio.get_running_loop().create_future()
        await real_poll(self, g, now)

    ticks = 0
    real_record = Gateway.record_comm_events

    async def record(self: Gateway) -> int:  # called once per turn of the daemon's loop: counts the turns
        nonlocal ticks
        ticks += 1
        return await real_record(self)

    monkeypatch.setattr(LinkRunner, "_poll", poll)
    monkeypatch.setattr(Gateway, "record_comm_events", record)
    notifier = Notifier({"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "200000"})
    stop = asyncio.Event()
    units = [SimUnit(1, holding=1), SimUnit(2, holding=1)]
    with caplog.at_level(logging.ERROR, logger="gateway"):
        async with SimServer(units, tcp=("127.0.0.1", 0)) as sim:
            daemon = asyncio.create_task(run_gateway(_config(tmp_path, sim.port), stop, notifier=notifier,
                                                     min_stall_s=0.5))  # fmt: skip
            await wait_for(lambda: listener.index("READY=1") >= 0, what="READY=1")
            await wait_for(lambda: listener.count("WATCHDOG=1", listener.index("READY=1")) >= 2, what="pings")
            hang.set()
            await wait_for(lambda: any(m[0].startswith("STATUS=not alive") for m in listener.drain()), what="death")
            dead_at = next(i for i, m in enumerate(listener.messages) if m[0].startswith("STATUS=not alive"))
            seen = ticks
            await wait_for(lambda: ticks >= seen + 10, what="ten more turns of the daemon's loop")
            assert listener.count("WATCHDOG=1", dead_at) == 0  # no ping after the death, though the loop turns
            stop.set()
            assert await daemon == 0
    assert listener.messages[dead_at][0].startswith("STATUS=not alive: link stuck (poll loop stalled")
    assert listener.drain()[-1][0] == "STOPPING=1"
    named = [r.getMessage() for r in caplog.records if "not alive" in r.getMessage()]
    assert len(named) == 1 and "link stuck" in named[0]  # logged once, naming the hung link


async def test_a_link_backing_off_is_alive_a_stalled_one_is_not(tmp_path: Path) -> None:
    """Liveness is judged on the injected monotonic clock: a reconnect back-off longer than the stall limit is a
    wait the loop scheduled itself (alive); the same loop past the end of that wait plus the limit is hung."""
    now = [10**12]
    link = LinkConfig(name="down", protocol="modbus_tcp", host="127.0.0.1", port=_closed_port(), connect_timeout_s=0.2,
                      reconnect_min_s=30.0, reconnect_max_s=30.0,
                      devices=(DeviceConfig(name="d", unit_id=1, timeout_s=0.2,
                                            points=(PointConfig(name="v", kind="holding", address=0),)),))  # fmt: skip
    cfg = GatewayConfig(id="gw", data_dir=tmp_path, links=(link,), panel=PanelConfig(port=0))
    async with Gateway(cfg, mono_ns=lambda: now[0]) as gw:
        runner = gw.runners[0]
        await wait_for(lambda: runner.first_attempt_done and runner.awake_by_ns > now[0], what="back-off wait")
        assert gw.ready()
        limit_ns = round(app_mod.STALL_TIMEOUTS * (0.2 + 0.2) * 1e9)  # longer than min_stall_s=0.5 here
        now[0] = runner.awake_by_ns + limit_ns - 1  # 30 s without a pass of the loop: still in its back-off
        assert gw.not_alive(min_stall_s=0.5) is None
        now[0] = runner.awake_by_ns + limit_ns + 1
        assert gw.not_alive(min_stall_s=0.5) == f"link down (poll loop stalled at iteration {runner.loop_iterations})"


async def test_an_uploader_stopped_on_a_permanent_error_is_not_a_dead_component(tmp_path: Path) -> None:
    """A refused token stops the sink on purpose (data kept, alarm raised): a watchdog restart would not fix it
    and would interrupt polling, so the gateway stays alive."""
    refused = httpx.MockTransport(lambda request: httpx.Response(401, json={"error": "bad token"}))
    async with SimServer([SimUnit(1, holding=1), SimUnit(2, holding=1)], tcp=("127.0.0.1", 0)) as sim:
        cfg = dataclasses.replace(
            _config(tmp_path, sim.port), sinks=(SinkConfig(name="cloud", url="http://127.0.0.1:9/v1/batches"),)
        )
        async with Gateway(cfg, sink_transport=refused) as gw:
            await wait_for(lambda: gw.uploaders[0].status()["state"] == "stopped-auth", what="sink stopped")
            await wait_for(lambda: all(t.done() for t in gw._tasks if t.get_name() == "sink-cloud"), what="ended")
            assert gw.not_alive() is None
            assert gw.status_line().startswith("polling 2 devices (")
            assert ", backlog " in gw.status_line()

"""The polling side is never slowed by a sync outage or by the backlog draining after it.

Real :class:`gateway.app.Gateway` (runner, store, uploader) polling pymodbus simulators; its sink goes through the
fault proxy to the real receiver. The cloud side (receiver and proxy) runs on event loops in threads of their own,
as it would on another machine, so that only the gateway's own work shares the gateway's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cloud_sync.receiver import DuckDBBackend, ReceiverServer, build_app
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
from hil_tests.faultproxy import FaultProxy, ThreadedFaultProxy
from hil_tests.modbus_sim import SimServer, SimUnit
from tests.waiting import wait_for

GW = "gw-outage"
TOKEN = "tok-outage"
POINTS = 100  # holding registers per device: one block, one request per poll, POINTS readings per poll
PERIOD = 0.2  # a slot is missed only if a poll starts a whole period late
WAIT_S = 30.0  # bound for an outcome that must come (never an assertion on elapsed time)
BACKLOG_ROWS = 3000  # rows that pile up while the receiver is black-holed, at least
T = TypeVar("T")


class Receiver:
    """The real receiver (DuckDB) served on an event loop in thread ``receiver``."""

    def __init__(self, db: Path) -> None:
        self.backend = DuckDBBackend(db)
        self.server = ReceiverServer(build_app(self.backend, {GW: TOKEN}))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="receiver")

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_S)

    def __enter__(self) -> Receiver:
        self.thread.start()
        self.call(self.server.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(WAIT_S)
            self.loop.close()

    def counts(self) -> tuple[int, int, int, int]:
        """(rows, distinct seqs, min seq, max seq) landed for the gateway."""
        (row,) = self.call(
            self.backend.query(
                "SELECT count(*), count(DISTINCT seq), coalesce(min(seq), 0), coalesce(max(seq), 0) "
                "FROM readings JOIN gateways USING (gw) WHERE gateway_id = ?",
                [GW],
            )
        )
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[Receiver, ThreadedFaultProxy]]:
    with (
        Receiver(tmp_path / "rx.duckdb") as rx,
        FaultProxy("127.0.0.1", 0, "127.0.0.1", rx.server.port).in_thread() as proxy,
    ):
        yield rx, proxy


def config(tmp_path: Path, modbus_port: int, sink_url: str) -> GatewayConfig:
    points = tuple(PointConfig(name=f"r{i}", kind="holding", address=i, period_s=PERIOD) for i in range(POINTS))
    devices = tuple(DeviceConfig(name=f"dev{u}", unit_id=u, timeout_s=0.5, points=points) for u in (1, 2))
    return GatewayConfig(
        id=GW,
        data_dir=tmp_path / "gw",
        links=(LinkConfig(name="line", protocol="modbus_tcp", host="127.0.0.1", port=modbus_port, devices=devices),),
        storage=StorageConfig(commit_interval_ms=50),
        sinks=(
            SinkConfig(
                name="cloud",
                url=sink_url,
                token=TOKEN,
                batch_size=1000,
                max_interval_s=0.1,
                timeout_s=0.3,
                retry_max_s=0.3,
                progress_log_s=0.1,
            ),
        ),
        panel=PanelConfig(port=0),
    )


def counters(gw: Gateway) -> dict[str, dict[str, int]]:
    return {
        str(d["device"]): {k: int(d[k]) for k in ("polls", "missed_slots", "timeouts", "errors")}
        for d in gw.status()["devices"]
    }


def polls_since(gw: Gateway, before: dict[str, dict[str, int]]) -> int:
    """Polls every device completed since ``before``, at least."""
    now = counters(gw)
    return min(now[dev]["polls"] - before[dev]["polls"] for dev in now)


def assert_polled_on_schedule(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]],
                              units: list[SimUnit], requests_before: list[int]) -> None:  # fmt: skip
    """Every slot of the schedule was polled (none skipped, none failed), both devices in step, and every poll
    reached its device."""
    polls = {dev: after[dev]["polls"] - before[dev]["polls"] for dev in after}
    for dev in after:
        for key in ("missed_slots", "timeouts", "errors"):
            assert after[dev][key] == before[dev][key], (dev, key, before[dev], after[dev])
    assert max(polls.values()) - min(polls.values()) <= 1, polls  # same period: in step with each other
    for u, r0 in zip(units, requests_before, strict=True):
        assert abs((u.requests - r0) - polls[f"dev{u.unit_id}"]) <= 1, (u.unit_id, u.requests - r0, polls)


async def test_polling_keeps_its_schedule_through_an_outage_and_the_drain(
    tmp_path: Path, cloud: tuple[Receiver, ThreadedFaultProxy]
) -> None:
    rx, proxy = cloud
    units = [SimUnit(unit_id=u, holding=POINTS, input=1, coils=1, discrete=1) for u in (1, 2)]
    async with SimServer(units, tcp=("127.0.0.1", 0)) as sim:
        gw = Gateway(config(tmp_path, sim.port, proxy.url("http", "/v1/batches")))
        await gw.start()
        try:
            assert gw.store is not None
            store, up = gw.store, gw.uploaders[0]
            await wait_for(lambda: store.watermark("cloud") > 0, WAIT_S, "uploads before the outage")

            # ---- receiver black-holed: a backlog builds while polling goes on
            await asyncio.to_thread(proxy.set_mode, "blackhole")
            await wait_for(lambda: up.status()["state"] == "retrying", WAIT_S, "the sink to notice the outage")
            before, req0, wm = counters(gw), [u.requests for u in units], store.watermark("cloud")
            await wait_for(
                lambda: (
                    store.backlog("cloud") >= BACKLOG_ROWS
                    and up.status()["retries"] >= 3
                    and polls_since(gw, before) >= 10
                ),
                WAIT_S,
                "a backlog during the outage",
            )
            assert_polled_on_schedule(before, counters(gw), units, req0)
            st = up.status()
            assert store.watermark("cloud") == wm and "timeout" in st["last_error"], st

            # ---- link back: the backlog drains while polling goes on
            await asyncio.to_thread(proxy.set_mode, "pass")
            before, req0, backlog_end = counters(gw), [u.requests for u in units], store.last_seq()
            await wait_for(
                lambda: store.watermark("cloud") >= backlog_end and polls_since(gw, before) >= 5,
                WAIT_S,
                "the backlog drained",
            )
            assert_polled_on_schedule(before, counters(gw), units, req0)

            # ---- stop polling; everything committed lands exactly once
            await gw.stop_sources()
            await asyncio.to_thread(store.flush)
            first, last = int(store.stats()["first_seq"]), store.last_seq()
            await asyncio.wait_for(up.wait_acked(last), WAIT_S)
            assert store.stats()["rejected_offers"] == 0 and gw.emit_backpressure == 0
        finally:
            await gw.stop()
    n = last - first + 1  # seqs are contiguous (a new store file starts them at its creation time in µs)
    assert rx.counts() == (n, n, first, last)
    assert proxy.stats()["connections"] >= 2  # the uploader reconnected after the outage

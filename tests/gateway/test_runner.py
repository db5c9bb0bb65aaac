"""LinkRunner policy against real pymodbus servers over loopback (TCP) and a pty pair (RTU)."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.config import DeviceConfig, LinkConfig, PointConfig
from gateway.model import Q, ReadingBatch
from gateway.runner import LinkRunner
from hil_tests.modbus_sim import SimServer, SimUnit
from protocols.modbus import LinkDown
from tests.protocols.modbus_helpers import pty_pair
from tests.waiting import wait_for

GT = int(Q.GATEWAY_TIME)
FAIL = int(Q.QUESTIONABLE | Q.OLD_DATA | Q.FAILURE) | GT
OLD = int(Q.QUESTIONABLE | Q.OLD_DATA) | GT


class Sink:
    """Collects emitted batches; ``accept=False`` simulates a full store queue."""

    def __init__(self) -> None:
        self.batches: list[ReadingBatch] = []
        self.rejected: list[ReadingBatch] = []
        self.accept = True

    def __call__(self, batch: ReadingBatch) -> bool:
        if not self.accept:
            self.rejected.append(batch)
            return False
        self.batches.append(batch)
        return True

    def all(self) -> ReadingBatch:
        return ReadingBatch.concat(self.batches)

    def of(self, pid: int) -> list[tuple[float, int]]:
        b = self.all()
        m = b.point_id == pid
        return list(zip(b.value[m].tolist(), b.quality[m].tolist(), strict=True))

    def count(self, pid: int, quality: int | None = None) -> int:
        return sum(1 for _, q in self.of(pid) if quality is None or q == quality)


def ids_for(link: LinkConfig) -> dict[str, int]:
    names = [f"{d.name}.{p.name}" for d in link.devices for p in d.points]
    return {n: i for i, n in enumerate(names)}


def hp(name: str, address: int, **kw: object) -> PointConfig:
    return PointConfig(name=name, kind="holding", address=address, **kw)  # type: ignore[arg-type]


def tcp_link(port: int, *devices: DeviceConfig) -> LinkConfig:
    return LinkConfig(
        name="tcp",
        protocol="modbus_tcp",
        host="127.0.0.1",
        port=port,
        connect_timeout_s=1.0,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
        devices=devices,
    )


class Running:
    """Runs a LinkRunner as a task; always stopped and awaited on exit."""

    def __init__(self, link: LinkConfig, sink: Sink, **kw: object) -> None:
        self.runner = LinkRunner(link, ids_for(link), sink, rng=random.Random(1), **kw)  # type: ignore[arg-type]
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LinkRunner:
        self.task = asyncio.create_task(self.runner.run())
        return self.runner

    async def __aexit__(self, *exc: object) -> None:
        self.runner.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)


def dev_status(runner: LinkRunner, name: str) -> dict[str, Any]:
    return next(s for s in runner.status() if s["device"] == name)


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer([SimUnit(1), SimUnit(2)], tcp=("127.0.0.1", 0)) as srv:
        yield srv


async def test_polls_emit_and_stop_marks_old_data(sim: SimServer) -> None:
    sim[1].set("holding", 0, 10)
    sim[1].set("holding", 1, 2.5, "float32")
    d = DeviceConfig(name="d1", unit_id=1, points=(hp("a", 0), hp("f", 1, type="float32")))
    link = tcp_link(sim.port, d)
    sink = Sink()
    async with Running(link, sink) as r:
        await wait_for(lambda: sink.count(1) >= 1, what="first reading")
        st = dev_status(r, "d1")
        assert st["state"] == "ok" and st["link"] == "tcp" and st["polls"] >= 1
        assert set(st) >= {
            "device",
            "link",
            "state",
            "last_good_ns",
            "last_latency_ms",
            "polls",
            "errors",
            "timeouts",
            "reconnects",
            "missed_slots",
            "lateness_p99_ms",
        }
    assert sink.of(0)[0] == (10.0, GT) and sink.of(1)[0] == (2.5, GT)
    assert sink.of(0)[-1] == (10.0, OLD) and sink.of(1)[-1] == (2.5, OLD)  # last value, old-data, once
    assert sink.count(0, OLD) == 1
    b = sink.all()
    assert b.ts.dtype == np.int64 and abs(int(b.ts[0]) - time.time_ns()) < 60e9


async def test_deadband_and_every_poll(sim: SimServer) -> None:
    d = DeviceConfig(
        name="d1", unit_id=1, points=(hp("db", 0, deadband=5.0, period_s=0.05), hp("all", 1, period_s=0.05))
    )
    sink = Sink()
    async with Running(tcp_link(sim.port, d), sink) as r:
        await wait_for(lambda: sink.count(1) >= 3, what="polls")
        sim[1].set("holding", 0, 3)  # within the deadband: not emitted
        polls = dev_status(r, "d1")["polls"]
        await wait_for(lambda: dev_status(r, "d1")["polls"] >= polls + 3, what="polls")
        assert [v for v, _ in sink.of(0)] == [0.0]
        sim[1].set("holding", 0, 9)  # moved more than 5 from the last emitted value
        await wait_for(lambda: sink.count(0) >= 2, what="deadband crossing")
        assert [v for v, _ in sink.of(0)] == [0.0, 9.0]
    assert sink.count(1, GT) >= 6  # deadband 0 = every poll


async def test_silent_device_backed_off_failure_emitted_once(sim: SimServer) -> None:
    d = DeviceConfig(
        name="d1",
        unit_id=1,
        timeout_s=0.1,
        backoff_min_s=0.1,
        backoff_max_s=0.2,
        points=(hp("a", 0, period_s=0.05),),
    )
    sink = Sink()
    async with Running(tcp_link(sim.port, d), sink) as r:
        await wait_for(lambda: sink.count(0) >= 1, what="first reading")
        sim[1].silent = True
        await wait_for(lambda: dev_status(r, "d1")["timeouts"] >= 4, what="probes")
        assert dev_status(r, "d1")["state"] == "backoff"
        assert sink.count(0, FAIL) == 1  # not re-sent on each failed probe
        sim[1].silent = False
        sim[1].set("holding", 0, 5)
        await wait_for(lambda: sink.of(0)[-1] == (5.0, GT), what="recovery")
        assert dev_status(r, "d1")["state"] == "ok"


async def test_garbage_answering_device_backs_off_and_spares_its_link_mates(sim: SimServer) -> None:
    """A unit that answers with bytes that are no Modbus answer (the server then hangs up) backs off like a silent
    one: its polls do not spin on reconnects, and the other unit on the same connection is never marked failed."""
    devs = [DeviceConfig(name=f"d{u}", unit_id=u, timeout_s=0.2, backoff_min_s=0.1, backoff_max_s=0.4,
                         points=(hp("a", 0, period_s=0.05),)) for u in (1, 2)]
    sink = Sink()
    async with Running(tcp_link(sim.port, *devs), sink) as r:
        await wait_for(lambda: sink.count(0) >= 1 and sink.count(1) >= 1, what="first readings")
        sim[1].garbage = True
        await wait_for(lambda: dev_status(r, "d1")["errors"] >= 4, what="several failed probes")
        d1 = dev_status(r, "d1")
        assert d1["state"] == "backoff" and d1["backoff_s"] > 0
        polls_d2 = dev_status(r, "d2")["polls"]
        await wait_for(lambda: dev_status(r, "d2")["polls"] > polls_d2 + 5, what="d2 still polled")
        assert sink.count(1, FAIL) == 0 and dev_status(r, "d2")["state"] == "ok"  # the link mate is untouched
        assert sink.count(0) < 40  # marks, not a spin (thousands per second before)
        sim[1].garbage = False
        sim[1].set("holding", 0, 7)
        await wait_for(lambda: sink.of(0)[-1] == (7.0, GT), what="recovery")
        assert dev_status(r, "d1")["state"] == "ok"


async def test_exception_marks_block_once_and_recovers(sim: SimServer) -> None:
    coil = PointConfig(name="c", kind="coil", address=0, period_s=0.05)
    d = DeviceConfig(name="d1", unit_id=1, points=(hp("a", 0, period_s=0.05), coil))
    sink = Sink()
    bad = int(Q.INVALID | Q.BAD_REFERENCE) | GT
    async with Running(tcp_link(sim.port, d), sink) as r:
        await wait_for(lambda: sink.count(0) >= 1, what="first reading")
        sim[1].exception["holding"] = 2
        await wait_for(lambda: dev_status(r, "d1")["errors"] >= 3, what="errors")
        assert sink.count(0, bad) == 1
        assert sink.of(0)[-1] == (0.0, bad)  # last value kept
        assert dev_status(r, "d1")["state"] == "ok"  # it answers: no back-off
        n_coil = sink.count(1, GT)
        await wait_for(lambda: sink.count(1, GT) > n_coil + 2, what="coil still polled")
        sim[1].exception.clear()
        await wait_for(lambda: sink.of(0)[-1] == (0.0, GT), what="recovery")


async def test_reconnect_after_server_restart() -> None:
    unit = SimUnit(1)
    unit.set("holding", 0, 1)
    srv = await SimServer([unit], tcp=("127.0.0.1", 0)).start()
    port = srv.port
    d = DeviceConfig(name="d1", unit_id=1, timeout_s=0.2, points=(hp("a", 0, period_s=0.05),))
    sink = Sink()
    try:
        async with Running(tcp_link(port, d), sink) as r:
            await wait_for(lambda: sink.count(0, GT) >= 1, what="first reading")
            await srv.stop()
            await wait_for(lambda: sink.count(0, FAIL) == 1, what="failure mark")
            await wait_for(lambda: dev_status(r, "d1")["state"] == "disconnected", what="disconnected")
            unit.set("holding", 0, 2)
            srv = await SimServer([unit], tcp=("127.0.0.1", port)).start()
            await wait_for(lambda: sink.of(0)[-1] == (2.0, GT), what="data after reconnect")
            assert dev_status(r, "d1")["reconnects"] >= 1
            assert sink.count(0, FAIL) == 1  # marked once, however many reconnect attempts failed
    finally:
        await srv.stop()


async def test_link_down_at_start_marks_points_once_then_connects() -> None:
    unit = SimUnit(1)
    probe = await SimServer([unit], tcp=("127.0.0.1", 0)).start()
    port = probe.port
    await probe.stop()  # a free port with nothing listening
    d = DeviceConfig(name="d1", unit_id=1, points=(hp("a", 0, period_s=0.05),))
    sink = Sink()
    srv: SimServer | None = None
    try:
        async with Running(tcp_link(port, d), sink) as r:
            await wait_for(lambda: sink.count(0) >= 1, what="failure mark")
            value, quality = sink.of(0)[0]
            assert math.isnan(value) and quality == FAIL
            assert dev_status(r, "d1")["state"] == "disconnected"
            srv = await SimServer([unit], tcp=("127.0.0.1", port)).start()
            await wait_for(lambda: sink.count(0, GT) >= 1, what="first good reading")
            assert sink.count(0, FAIL) == 1
    finally:
        if srv is not None:
            await srv.stop()


async def test_staleness_and_missed_slots_with_injected_clock(sim: SimServer) -> None:
    jump = [0]

    def mono() -> int:
        return time.monotonic_ns() + jump[0]

    d = DeviceConfig(
        name="d1",
        unit_id=1,
        stale_after_periods=3,
        points=(hp("a", 0, period_s=0.1), hp("slow", 1, period_s=100.0)),
    )
    sink = Sink()
    async with Running(tcp_link(sim.port, d), sink, mono_ns=mono) as r:
        await wait_for(lambda: sink.count(0) >= 1 and sink.count(1) >= 1, what="first readings")
        jump[0] = 5_000_000_000  # 5 s pass at once: 50 slots of "a" missed, both points stale
        await wait_for(lambda: sink.count(0, OLD) == 1 and sink.count(0) >= 3, what="stale then fresh")
        assert [q for _, q in sink.of(0)][-2:] == [OLD, GT]  # old-data once, then fresh again
        assert sink.of(1)[-1] == (0.0, GT)  # 5 s < 3 × 100 s: the slow point is not stale
        assert dev_status(r, "d1")["missed_slots"] >= 40


async def test_backpressure_retries_and_never_drops(sim: SimServer) -> None:
    d = DeviceConfig(name="d1", unit_id=1, points=(hp("a", 0, period_s=0.02),))
    sink = Sink()
    async with Running(tcp_link(sim.port, d), sink):
        await wait_for(lambda: sink.count(0) >= 1, what="first reading")
        sink.accept = False
        await wait_for(lambda: len(sink.rejected) >= 5, what="retries")
        first_rejected = sink.rejected[0]
        assert all(b is first_rejected for b in sink.rejected)  # the same batch retried, polling paused
        n = len(sink.batches)
        sink.accept = True
        await wait_for(lambda: len(sink.batches) > n + 1, what="flush")
        assert sink.batches[n] is first_rejected


async def test_write_through_runner(sim: SimServer) -> None:
    coil = PointConfig(name="brk", kind="coil", address=2, writable=True, period_s=0.05)
    sp = hp("sp", 10, type="float32", writable=True, period_s=0.05)
    d = DeviceConfig(name="d1", unit_id=1, points=(coil, sp, hp("ro", 0)))
    sink = Sink()
    async with Running(tcp_link(sim.port, d), sink) as r:
        await wait_for(lambda: dev_status(r, "d1")["state"] == "ok", what="connected")
        await r.write("d1", "brk", 1)
        await r.write("d1", "sp", 49.5)
        assert bool(sim[1].coils[2])
        await wait_for(
            lambda: sink.of(0)[-1:] == [(1.0, GT)] and sink.of(1)[-1:] == [(49.5, GT)], what="read back"
        )
        with pytest.raises(ValueError):
            await r.write("d1", "ro", 1)
        with pytest.raises(KeyError):
            await r.write("d1", "nope", 1)


async def test_write_while_disconnected_raises() -> None:
    d = DeviceConfig(name="d1", points=(hp("w", 0, writable=True),))
    sink = Sink()
    link = tcp_link(1, d)  # port 1: refused
    async with Running(link, sink) as r:
        await wait_for(lambda: dev_status(r, "d1")["state"] == "disconnected", what="disconnected")
        with pytest.raises(LinkDown):
            await r.write("d1", "w", 1)


def test_missing_point_id_is_an_error() -> None:
    d = DeviceConfig(name="d1", points=(hp("a", 0),))
    with pytest.raises(ValueError, match=r"d1\.a"):
        LinkRunner(tcp_link(1, d), {}, Sink())


async def test_dead_unit_on_shared_rtu_line_does_not_delay_the_other(tmp_path: Path) -> None:
    with pty_pair(tmp_path) as (server_tty, client_tty):
        live = SimUnit(1)
        live.set("holding", 0, 42)
        async with SimServer([live], serial=server_tty, baudrate=115200):
            period = 0.2
            good = DeviceConfig(name="good", unit_id=1, timeout_s=0.15, points=(hp("a", 0, period_s=period),))
            # unit 9 is absent; three separate blocks would cost 3 × 0.15 s per poll without back-off
            dead = DeviceConfig(
                name="dead",
                unit_id=9,
                timeout_s=0.15,
                backoff_min_s=1.0,
                backoff_max_s=1.0,
                points=tuple(hp(f"x{i}", 20 * i, period_s=period) for i in range(3)),
            )
            link = LinkConfig(
                name="rtu",
                protocol="modbus_rtu",
                serial_port=client_tty,
                baudrate=115200,
                devices=(good, dead),
            )
            sink = Sink()
            async with Running(link, sink) as r:
                await wait_for(lambda: dev_status(r, "good")["polls"] >= 15, timeout=30, what="15 live polls")
                g, x = dev_status(r, "good"), dev_status(r, "dead")
            # The live unit kept every slot of its schedule (the runner counts a missed slot whenever a poll
            # starts a whole period late) while the dead unit was probed at most once per back-off interval
            # of the schedule time those polls span.
            assert g["missed_slots"] == 0 and g["timeouts"] == 0
            assert x["state"] == "backoff"
            assert 1 <= x["timeouts"] <= (g["polls"] + 1) * period / 1.0 + 1
            assert sink.count(1, FAIL) == 1 and sink.count(0, GT) >= 15

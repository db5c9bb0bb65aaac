"""The uploader: retry policy (MockTransport unit tests) and end to end against the real receiver over
loopback (uvicorn on 127.0.0.1, real store, real DuckDB/PostgreSQL), with injected faults."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from starlette.types import Message, Receive, Scope, Send

from cloud_sync.codec import CONTENT_TYPE, decode_batch
from cloud_sync.errors import UploadError
from cloud_sync.receiver import Backend, ReceiverServer, build_app
from cloud_sync.uploader import MAX_RETRY_AFTER_S, Uploader, parse_retry_after
from gateway.config import SinkConfig
from storefwd.store import Store
from tests.cloud_sync.conftest import GATEWAY, TOKEN, TOKENS, as_batch, point_infos, rows_table

WAIT_S = 60.0  # generous upper bound for awaiting an outcome (never an assertion on elapsed time)


# ----------------------------------------------------------------------------------------------- helpers
@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "gw.duckdb", commit_interval_ms=5) as s:
        ids = s.register_points(list(point_infos().values()))
        assert ids.tolist() == list(point_infos())
        yield s


def fill(store: Store, n: int, first_seq: int = 1) -> pa.Table:
    rows = rows_table(n, first_seq=first_seq)
    assert store.offer(as_batch(rows))
    assert store.flush() == first_seq + n - 1
    return rows


def sink(url: str, **kw: Any) -> SinkConfig:
    base: dict[str, Any] = {"name": "cloud", "url": url, "token": TOKEN, "batch_size": 1000,
                            "max_interval_s": 0.0, "timeout_s": 5.0, "retry_max_s": 0.05}  # fmt: skip
    base.update(kw)
    return SinkConfig(**base)


class Sleeps:
    """Injected backoff sleep: records the delays, returns at once, optionally runs a hook per call."""

    def __init__(self, hook: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.delays: list[float] = []
        self.hook = hook

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.hook is not None:
            await self.hook(len(self.delays))
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def running(up: Uploader) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(up.run())
    try:
        yield task
    finally:
        up.stop()
        await asyncio.wait_for(task, WAIT_S)


class Faults:
    """ASGI middleware scripting the answers to POST /v1/batches, one action per request:

    ``ok`` pass through; ``<code>`` or ``<code>:<retry-after>`` answer that status without landing;
    ``land-then-500`` land the batch but answer 500 (the ack is lost); ``hang`` never answer (until the client
    gives up and disconnects).
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], script: list[str]) -> None:
        self.app = app
        self.script = list(script)
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/batches":
            await self.app(scope, receive, send)
            return
        self.requests += 1
        action = self.script.pop(0) if self.script else "ok"
        if action == "ok":
            await self.app(scope, receive, send)
            return
        if action == "land-then-500":

            async def swallow(message: Message) -> None:
                return None

            await self.app(scope, receive, swallow)
            await self._answer(send, 500, None)
            return
        await _drain(receive)
        if action == "hang":
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        code, _, retry_after = action.partition(":")
        await self._answer(send, int(code), retry_after or None)

    @staticmethod
    async def _answer(send: Send, code: int, retry_after: str | None) -> None:
        headers = [(b"content-type", b"application/json")]
        if retry_after:
            headers.append((b"retry-after", retry_after.encode()))
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"error":"injected","message":"injected"}'})


async def _drain(receive: Receive) -> None:
    while True:
        msg = await receive()
        if msg["type"] != "http.request" or not msg.get("more_body", False):
            return


async def receiver_rows(backend: Backend) -> list[tuple[Any, ...]]:
    """(seq, ts, point_id, value, quality) landed for GATEWAY, read through the backend's worker thread."""

    mark = "?" if backend.kind == "duckdb" else "%s"
    sql = (
        "SELECT r.seq, r.ts, r.point_id, r.value, r.quality FROM readings r JOIN gateways g USING (gw) "
        f"WHERE g.gateway_id = {mark} ORDER BY r.seq"
    )
    return await backend.query(sql, [GATEWAY])


def store_rows(rows: pa.Table) -> list[tuple[Any, ...]]:
    cols = [rows.column(c).to_pylist() for c in ("seq", "ts", "point_id", "value", "quality")]
    return list(zip(*cols, strict=True))


# ----------------------------------------------------------------------------------------------- unit
def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("-5", now) == 0.0
    assert parse_retry_after("999999", now) == MAX_RETRY_AFTER_S
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


async def test_retries_5xx_408_429_honouring_retry_after(store: Store) -> None:
    rows = fill(store, 300)
    answers = [500, 503, 408, 429, 200]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        code = answers.pop(0)
        return httpx.Response(code, headers={"Retry-After": "7"} if code == 429 else {}, json={"error": "x"})

    sleeps = Sleeps()
    up = Uploader(store, sink("http://receiver.test/v1/batches"), GATEWAY,
                  transport=httpx.MockTransport(handler), sleep=sleeps, backoff_min_s=0.01)  # fmt: skip
    async with running(up):
        await asyncio.wait_for(up.wait_acked(300), WAIT_S)
    assert len(sleeps.delays) == 4 and sleeps.delays[3] == 7.0
    assert all(0 <= d <= 0.05 for d in sleeps.delays[:3])  # jittered exponential, capped by retry_max_s
    assert store.watermark("cloud") == 300
    req = seen[-1]
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert req.headers["idempotency-key"] == f"{GATEWAY}:1-300"
    assert req.headers["content-type"] == CONTENT_TYPE
    assert {r.content for r in seen} == {req.content}  # every retry sends the same batch
    decoded = decode_batch(req.content)
    assert decoded.gateway_id == GATEWAY and decoded.rows.equals(rows)
    st = up.status()
    assert (st["state"], st["retries"], st["uploads"], st["uploaded_rows"], st["backlog"]) == (
        "stopped",
        4,
        1,
        300,
        0,
    )


@pytest.mark.parametrize("code", [400, 413, 422])
async def test_other_4xx_stops_the_sink_and_keeps_the_batch(store: Store, code: int) -> None:
    fill(store, 50)
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(code, json={"error": "malformed", "message": "bad batch"})

    up = Uploader(store, sink("http://r.test/v1/batches"), GATEWAY, transport=httpx.MockTransport(handler))
    await asyncio.wait_for(up.run(), WAIT_S)  # returns by itself: the sink stopped
    st = up.status()
    assert (
        st["state"] == "stopped-rejected"
        and f"HTTP {code}" in st["last_error"]
        and "bad batch" in st["last_error"]
    )
    assert calls == 1 and store.watermark("cloud") == 0 and st["backlog"] == 50


async def test_disabled_sink_uploads_nothing(store: Store) -> None:
    fill(store, 10)
    up = Uploader(store, sink("http://r.test/v1/batches", enabled=False), GATEWAY,
                  transport=httpx.MockTransport(lambda r: httpx.Response(500)))  # fmt: skip
    async with running(up):
        assert await asyncio.wait_for(up.wait_state("disabled"), WAIT_S) == "disabled"
    assert store.watermark("cloud") == 0


async def test_batches_follow_seq_order_and_size(store: Store) -> None:
    fill(store, 2500)
    keys: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["idempotency-key"])
        return httpx.Response(200, json={})

    up = Uploader(store, sink("http://r.test/v1/batches"), GATEWAY, transport=httpx.MockTransport(handler))
    async with running(up):
        await asyncio.wait_for(up.wait_acked(2500), WAIT_S)
    assert keys == [f"{GATEWAY}:1-1000", f"{GATEWAY}:1001-2000", f"{GATEWAY}:2001-2500"]


async def test_fill_wait_sends_a_partial_batch_after_max_interval(store: Store) -> None:
    """With fewer rows than batch_size waiting, the uploader waits (injected clock) then sends them."""
    fill(store, 10)
    now = [0.0]
    posted = asyncio.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        posted.set()
        return httpx.Response(200, json={})

    up = Uploader(store, sink("http://r.test/v1/batches", max_interval_s=5.0), GATEWAY,
                  transport=httpx.MockTransport(handler), clock=lambda: now[0], poll_s=0.001)  # fmt: skip
    async with running(up):
        for _ in range(20):  # many polls at t=0: still waiting for the batch to fill
            await asyncio.sleep(0.002)
        assert not posted.is_set()
        now[0] = 5.0
        await asyncio.wait_for(up.wait_acked(10), WAIT_S)


# ----------------------------------------------------------------------------------------------- end to end
@pytest.fixture
async def served(backend: Backend) -> AsyncIterator[tuple[str, Faults, Backend]]:
    """The real receiver behind the fault injector, on 127.0.0.1:<free port>."""
    faults = Faults(build_app(backend, TOKENS), [])
    async with ReceiverServer(faults) as server:
        yield f"{server.url}/v1/batches", faults, backend


async def test_every_row_arrives_exactly_once(store: Store, served: tuple[str, Faults, Backend]) -> None:
    url, _, backend = served
    rows = [fill(store, 2500)]
    up = Uploader(store, sink(url, batch_size=700), GATEWAY, sleep=Sleeps())
    async with running(up):
        await asyncio.wait_for(up.wait_acked(2500), WAIT_S)
        rows.append(fill(store, 1234, first_seq=2501))  # rows arriving while it runs
        await asyncio.wait_for(up.wait_acked(3734), WAIT_S)
    assert await receiver_rows(backend) == store_rows(pa.concat_tables(rows))
    assert store.watermark("cloud") == 3734 and up.status()["backlog"] == 0


async def test_500_then_429_then_lost_ack_then_recovery(
    store: Store, served: tuple[str, Faults, Backend]
) -> None:
    url, faults, backend = served
    rows = fill(store, 3000)
    faults.script = ["500", "429:3", "ok", "land-then-500", "503", "ok", "ok"]
    sleeps = Sleeps()
    up = Uploader(store, sink(url), GATEWAY, sleep=sleeps, backoff_min_s=0.001)
    async with running(up):
        await asyncio.wait_for(up.wait_acked(3000), WAIT_S)
    assert 3.0 in sleeps.delays and up.status()["retries"] == 4
    assert await receiver_rows(backend) == store_rows(rows)  # the re-sent batch landed once


async def test_receiver_down_then_up(store: Store, backend: Backend) -> None:
    """Connection refused while the receiver is down; the uploader retries and delivers once it is up."""
    rows = fill(store, 1500)
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    port = reserved.getsockname()[1]
    server = ReceiverServer(build_app(backend, TOKENS), port=port)

    async def start_on_third_retry(n: int) -> None:
        if n == 3:
            reserved.close()
            await server.start()

    sleeps = Sleeps(start_on_third_retry)
    up = Uploader(store, sink(f"http://127.0.0.1:{port}/v1/batches"), GATEWAY, sleep=sleeps)
    try:
        async with running(up):
            await asyncio.wait_for(up.wait_acked(1500), WAIT_S)
        assert len(sleeps.delays) == up.status()["retries"] >= 3
        assert await receiver_rows(backend) == store_rows(rows)
    finally:
        reserved.close()
        await server.stop()


async def test_slow_response_times_out_and_is_retried(
    store: Store, served: tuple[str, Faults, Backend]
) -> None:
    url, faults, backend = served
    rows = fill(store, 800)
    faults.script = ["hang", "ok"]
    up = Uploader(store, sink(url, timeout_s=0.5), GATEWAY, sleep=Sleeps())
    async with running(up):
        await asyncio.wait_for(up.wait_acked(800), WAIT_S)
    assert up.status()["retries"] == 1 and faults.requests == 2
    assert await receiver_rows(backend) == store_rows(rows)


@pytest.mark.parametrize(("token", "code"), [("wrong-token", 401), ("tok-south", 403)])
async def test_auth_failure_stops_the_sink_and_keeps_data(
    store: Store, served: tuple[str, Faults, Backend], caplog: pytest.LogCaptureFixture, token: str, code: int
) -> None:
    url, faults, backend = served
    fill(store, 500)
    up = Uploader(store, sink(url, token=token), GATEWAY, sleep=Sleeps())
    with caplog.at_level(logging.ERROR, logger="cloud_sync.uploader"):
        await asyncio.wait_for(up.run(), WAIT_S)
    st = up.status()
    assert st["state"] == "stopped-auth" and f"HTTP {code}" in st["last_error"]
    assert st["backlog"] == 500 and store.watermark("cloud") == 0 and faults.requests == 1
    assert any("'cloud'" in r.getMessage() for r in caplog.records)
    with pytest.raises(UploadError):
        await up.wait_acked(1)
    assert await receiver_rows(backend) == []


async def test_stop_interrupts_backoff(store: Store) -> None:
    """With the default (real) sleep, stop() ends a long backoff at once."""
    fill(store, 10)
    up = Uploader(store, sink("http://r.test/v1/batches", retry_max_s=3600), GATEWAY, backoff_min_s=3600,
                  transport=httpx.MockTransport(lambda r: httpx.Response(503)))  # fmt: skip
    task = asyncio.create_task(up.run())
    await asyncio.wait_for(up.wait_state("retrying"), WAIT_S)
    up.stop()
    await asyncio.wait_for(task, WAIT_S)
    assert up.status()["state"] == "stopped" and store.watermark("cloud") == 0


async def test_status_rate_and_eta_follow_the_injected_clock(store: Store) -> None:
    fill(store, 3000)
    now = [100.0]

    def handler(request: httpx.Request) -> httpx.Response:
        now[0] += 0.5  # every upload takes half a (fake) second
        return httpx.Response(200, json={})

    up = Uploader(store, sink("http://r.test/v1/batches"), GATEWAY, transport=httpx.MockTransport(handler),
                  clock=lambda: now[0], wall_clock_ns=lambda: 42)  # fmt: skip
    async with running(up):
        await asyncio.wait_for(up.wait_acked(3000), WAIT_S)
        st = up.status()
    assert st["rows_per_s"] == pytest.approx(2000.0)  # 1000 rows per 0.5 s
    assert (st["eta_s"], st["last_ack_wall_ns"], st["last_ack_seq"], st["uploads"]) == (0.0, 42, 3000, 3)
    fill(store, 500, first_seq=3001)
    assert up.status()["backlog"] == 500 and up.status()["eta_s"] == pytest.approx(0.25)


# ----------------------------------------------------------------------------------------------- events
def add_events(store: Store, n: int, priority: int = 0) -> int:
    from gateway.model import Event

    evs = [Event(ts=1_750_000_000_000_000_000 + i, kind="trip", message=f"trip {i}", priority=priority,
                 device="feeder1", point="XCBR1", data='{"phase":"C"}') for i in range(n)]  # fmt: skip
    return store.add_events(evs)


async def receiver_events(backend: Backend) -> list[tuple[Any, ...]]:
    mark = "?" if backend.kind == "duckdb" else "%s"
    sql = (
        "SELECT e.seq, e.priority, e.kind, e.message FROM events e JOIN gateways g USING (gw) "
        f"WHERE g.gateway_id = {mark} ORDER BY e.seq"
    )
    return await backend.query(sql, [GATEWAY])


async def test_events_ride_with_readings_and_alone_exactly_once(
    store: Store, served: tuple[str, Faults, Backend]
) -> None:
    url, faults, backend = served
    fill(store, 1500)
    assert add_events(store, 3) == 3
    faults.script = ["ok", "land-then-500"]  # the second batch's answer is lost: readings and events re-sent
    up = Uploader(store, sink(url), GATEWAY, sleep=Sleeps())
    async with running(up):
        await asyncio.wait_for(up.wait_acked(1500), WAIT_S)
        await asyncio.wait_for(up.wait_events_acked(3), WAIT_S)
        last = add_events(store, 2, priority=1)  # no reading waits: an events-only batch goes out
        await asyncio.wait_for(up.wait_events_acked(last), WAIT_S)
    assert store.event_watermark("cloud") == 5 and store.watermark("cloud") == 1500
    landed = await receiver_events(backend)
    assert [e[0] for e in landed] == [1, 2, 3, 4, 5]
    assert landed[0][1:] == (0, "trip", "trip 0") and landed[3][1] == 1
    st = up.status()
    assert (st["uploaded_events"], st["events_backlog"], st["last_event_ack_seq"]) == (5, 0, 5)
    assert len(await receiver_rows(backend)) == 1500


async def test_events_only_batch_waits_at_most_max_interval(store: Store) -> None:
    """An event with no readings waiting leaves once max_interval_s passed (injected clock), keyed gw:e<a>-<b>."""
    add_events(store, 2)
    now = [0.0]
    bodies: list[tuple[str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append((request.headers["idempotency-key"], request.content))
        return httpx.Response(200, json={"accepted": 0, "events_accepted": 2})

    up = Uploader(store, sink("http://r.test/v1/batches", max_interval_s=5.0), GATEWAY,
                  transport=httpx.MockTransport(handler), clock=lambda: now[0], poll_s=0.001)  # fmt: skip
    async with running(up):
        for _ in range(20):  # many polls at t=0: still within max_interval_s
            await asyncio.sleep(0.002)
        assert not bodies
        now[0] = 5.0
        await asyncio.wait_for(up.wait_events_acked(2), WAIT_S)
    assert [k for k, _ in bodies] == [f"{GATEWAY}:e1-2"]
    decoded = decode_batch(bodies[0][1])
    assert decoded.rows.num_rows == 0 and decoded.events.column("seq").to_pylist() == [1, 2]
    assert store.event_watermark("cloud") == 2 and store.watermark("cloud") == 0


async def test_receiver_without_events_support_stops_the_sink(store: Store) -> None:
    """A receiver that answers 2xx but does not acknowledge events would lose them: the sink stops instead."""
    fill(store, 10)
    add_events(store, 1)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"accepted": 10, "duplicates": 0})

    up = Uploader(store, sink("http://r.test/v1/batches"), GATEWAY, transport=httpx.MockTransport(handler))
    await asyncio.wait_for(up.run(), WAIT_S)
    st = up.status()
    assert st["state"] == "stopped-rejected" and "did not acknowledge the 1 events" in st["last_error"]
    assert store.watermark("cloud") == 0 and store.event_watermark("cloud") == 0


async def test_downsampled_range_and_its_gap_record_reach_the_receiver_once(
    tmp_path: Path, served: tuple[str, Faults, Backend]
) -> None:
    """Disk budget during an outage: old unsent readings are downsampled; the cloud then gets the min/max/last
    readings and the avg_1m readings of that range, each seq once, plus the gap record (priority 0)."""
    import json

    from storefwd.retention import RetentionPolicy

    url, _faults, backend = served
    policy = RetentionPolicy(budget_bytes=1 << 40, downsample_min_age_s=0, chunk_rows=10_000)
    with Store(tmp_path / "gap.duckdb", commit_interval_ms=5, retention_policy=policy) as st:
        st.set_sinks(["cloud"])
        st.register_points(list(point_infos().values()))
        rows = fill(st, 3000)  # 12 points × 250 s, not sent yet (the sink is not running: an outage)
        gap = st.reclaim_step()
        assert gap is not None and gap["action"] == "downsampled" and gap["unacked_sinks"] == ["cloud"]
        kept = st.read_after("cloud", 0, 10_000)
        assert kept.num_rows < 3000
        up = Uploader(st, sink(url), GATEWAY, sleep=Sleeps())
        async with running(up):
            await asyncio.wait_for(up.wait_acked(3000), WAIT_S)
            await asyncio.wait_for(up.wait_events_acked(st.last_event_seq()), WAIT_S)
        landed = await receiver_rows(backend)
        assert [r[0] for r in landed] == kept.column("seq").to_pylist()  # exactly the rows kept, once each
        originals = {int(s): float(v) for s, v in zip(rows.column("seq").to_pylist(), rows.column("value").to_pylist(),
                                                      strict=True)}  # fmt: skip
        raw_kept = [r for r in landed if r[2] <= len(point_infos())]
        assert all(originals[r[0]] == r[3] for r in raw_kept)  # min/max/last are the readings as they were
        events = await receiver_events(backend)
        assert [(e[1], e[2]) for e in events] == [(0, "gap")]
        assert "not yet synced to cloud" in events[0][3]
        (data,) = await backend.query(
            "SELECT e.data FROM events e" if backend.kind == "duckdb" else "SELECT data FROM events", []
        )
        assert json.loads(data[0])["seq_to"] == gap["seq_to"]

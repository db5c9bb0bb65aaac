"""A long receiver outage, end to end: real Store → real Uploader → fault proxy → real receiver (DuckDB).

For each way a link can fail (connection refused, black-holed so that connects hang, TLS failure, answers slower
than ``timeout_s``, resets in the middle of a request) a producer keeps committing readings while the link is
down. The sink must say ``retrying`` with a ``last_error`` that names the cause, keep its watermark, report the
backlog; once the link is back the backlog drains in order, exactly once, with progress lines in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloud_sync.receiver import DuckDBBackend, ReceiverServer, build_app
from cloud_sync.uploader import Uploader
from gateway.config import SinkConfig
from hil_tests.faultproxy import FaultProxy
from hil_tests.testpki import CertAuthority
from storefwd.store import Store
from tests.cloud_sync.conftest import GATEWAY, TOKEN, TOKENS, as_batch, point_infos, rows_table
from tests.waiting import wait_for

WAIT_S = 30.0  # generous bound for an outcome that must come (never an assertion on elapsed time)
STEP_ROWS = 250  # rows per producer commit
PRODUCE_EVERY_S = 0.01  # the producer's pace (a workload rate, not a wait for an outcome)
OUTAGE_ROWS = 4000  # rows committed during the outage, at least
OUTAGE_RETRIES = 3  # failed attempts seen during the outage, at least
TIMEOUT_S = 0.5  # the sink's timeout_s


class AckRecordingStore(Store):
    """The real store, recording every watermark the uploader acks (in call order)."""

    def __init__(self, path: Path, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.acks: list[int] = []

    def ack(self, sink: str, seq: int) -> None:
        super().ack(sink, seq)
        self.acks.append(seq)


class Producer:
    """Commits ``STEP_ROWS`` readings every ``PRODUCE_EVERY_S`` (offer + flush in a worker thread)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.committed = 0  # highest seq committed by the producer
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _commit(self) -> int:
        assert self.store.offer(as_batch(rows_table(STEP_ROWS, seed=self.committed)))
        self.store.flush()
        return self.store.last_seq()

    async def _run(self) -> None:
        while not self._stop.is_set():
            self.committed = await asyncio.to_thread(self._commit)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), PRODUCE_EVERY_S)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="producer")

    async def stop(self) -> int:
        """Stop producing; returns the last committed seq."""
        self._stop.set()
        if self._task is not None:
            await self._task
        return self.committed


@dataclass(frozen=True)
class Rig:
    store: AckRecordingStore
    backend: DuckDBBackend
    proxy: FaultProxy
    ca_file: Path


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """Store, receiver (in this loop, DuckDB), and a proxy in front of it that also speaks TLS (mode ``tls``)."""
    ca = CertAuthority(tmp_path / "ca")
    rogue = CertAuthority(tmp_path / "rogue", "Rogue CA")
    backend = DuckDBBackend(tmp_path / "receiver.duckdb")
    store = AckRecordingStore(tmp_path / "gw.duckdb", commit_interval_ms=5)
    with store:
        assert store.register_points(list(point_infos().values())).tolist() == list(point_infos())
        async with (
            ReceiverServer(build_app(backend, TOKENS)) as rx,
            FaultProxy(
                "127.0.0.1",
                0,
                "127.0.0.1",
                rx.port,
                tls=ca.issue_server().server_context(),
                tls_untrusted=rogue.issue_server().server_context(),
            ) as proxy,
        ):
            yield Rig(store, backend, proxy, ca.cert_file)


def sink_config(rig: Rig, scheme: str) -> SinkConfig:
    return SinkConfig(
        name="cloud",
        url=rig.proxy.url(scheme, "/v1/batches"),
        token=TOKEN,
        batch_size=2000,
        max_interval_s=0.05,
        timeout_s=TIMEOUT_S,
        retry_max_s=0.2,
        ca_file=rig.ca_file if scheme == "https" else None,
        progress_log_s=0.05,
    )


@contextlib.asynccontextmanager
async def uploading(up: Uploader) -> AsyncIterator[None]:
    task = asyncio.create_task(up.run())
    try:
        yield
    finally:
        up.stop()
        await asyncio.wait_for(task, WAIT_S)


@contextlib.contextmanager
def watermark_frozen(store: Store) -> Iterator[list[int]]:
    """Yields the list of watermarks seen; the caller samples ``store.watermark`` into it."""
    seen = [store.watermark("cloud")]
    yield seen
    assert set(seen) == {seen[0]}, f"the watermark moved during the outage: {sorted(set(seen))}"


async def landed(backend: DuckDBBackend) -> tuple[int, int, int, int]:
    (row,) = await backend.query(
        "SELECT count(*), count(DISTINCT seq), coalesce(min(seq), 0), coalesce(max(seq), 0) "
        "FROM readings JOIN gateways USING (gw) WHERE gateway_id = ?",
        [GATEWAY],
    )
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


async def landed_batches(backend: DuckDBBackend) -> list[tuple[int, int]]:
    """(first_seq, last_seq) of every batch the receiver landed, in the order it landed them first."""
    rows = await backend.query(
        "SELECT b.first_seq, b.last_seq FROM batches b JOIN gateways g USING (gw) WHERE g.gateway_id = ? "
        "ORDER BY b.received_ns, b.first_seq",
        [GATEWAY],
    )
    return [(int(a), int(b)) for a, b in rows]


# kind: (mode while up, outage mode, outage parameters, what last_error must say)
OUTAGES: dict[str, tuple[str, str, dict[str, Any], str]] = {
    # httpx (anyio) words a refused connect "All connection attempts failed" (the errno is in its __cause__)
    "refused": ("pass", "refuse", {}, r"ConnectError .*(refused|All connection attempts failed)"),
    "blackhole": ("pass", "blackhole", {}, rf"timeout after {TIMEOUT_S} s"),
    "tls": ("tls", "tls_fail", {}, r"ConnectError .*CERTIFICATE_VERIFY_FAILED"),
    "slow": ("pass", "latency", {"latency_ms": 4000 * TIMEOUT_S}, rf"timeout after {TIMEOUT_S} s"),
    "reset": ("pass", "reset", {"after_bytes": 300}, r"(ReadError|WriteError|RemoteProtocolError).*"),
}


@pytest.mark.parametrize("kind", list(OUTAGES))
async def test_outage_then_backlog_drains_in_order_exactly_once(
    rig: Rig, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    up_mode, down_mode, params, cause = OUTAGES[kind]
    store, proxy = rig.store, rig.proxy
    await proxy.set_mode(up_mode)
    up = Uploader(store, sink_config(rig, "https" if up_mode == "tls" else "http"), GATEWAY, backoff_min_s=0.05)
    producer = Producer(store)
    caplog.set_level(logging.INFO, logger="cloud_sync.uploader")
    async with uploading(up):
        producer.start()
        await wait_for(lambda: store.watermark("cloud") >= 2 * STEP_ROWS, WAIT_S, "uploads before the outage")

        # ---- the outage
        await proxy.set_mode(down_mode, **params)
        await wait_for(lambda: up.status()["state"] == "retrying", WAIT_S, "the sink to notice the outage")
        with watermark_frozen(store) as seen:
            retries0, start, accepted0 = up.status()["retries"], producer.committed, proxy.stats()["connections"]

            def long_enough() -> bool:
                seen.append(store.watermark("cloud"))
                st = up.status()
                return st["retries"] >= retries0 + OUTAGE_RETRIES and producer.committed >= start + OUTAGE_ROWS

            await wait_for(long_enough, WAIT_S, "a long outage with a backlog")
            st = up.status()
            seen.append(store.watermark("cloud"))
        assert st["state"] == "retrying", st
        assert re.search(cause, st["last_error"]), st["last_error"]
        assert proxy.url().removeprefix("http://") in st["last_error"], st["last_error"]
        assert st["last_ack_seq"] == seen[0] and st["backlog"] >= OUTAGE_ROWS
        assert st["eta_s"] is None or (isinstance(st["eta_s"], float) and st["eta_s"] > 0)
        if kind in ("refused", "blackhole"):  # the retries' connects never reached the other end
            assert proxy.stats()["connections"] == accepted0
        else:
            assert proxy.stats()["connections"] > accepted0

        # ---- the link is back: the producer stops, the backlog drains
        caplog.clear()
        await proxy.set_mode(up_mode)
        last = await producer.stop()
        await asyncio.wait_for(up.wait_acked(last), WAIT_S)
        st = up.status()
    assert (st["backlog"], st["last_ack_seq"], st["last_error"]) == (0, last, "")

    # every committed seq landed exactly once
    first = int(store.stats()["first_seq"])
    assert await landed(rig.backend) == (last - first + 1, last - first + 1, first, last)
    # in order: batches landed first-to-last contiguous, and the watermark only ever moved forward, batch by batch
    batches = await landed_batches(rig.backend)
    assert [b[0] for b in batches] == [first] + [b[1] + 1 for b in batches[:-1]] and batches[-1][1] == last
    assert store.acks == [b[1] for b in batches]
    # the operator saw the drain: "backlog N rows left, draining at R rows/s, ETA ..."
    progress = [r.getMessage() for r in caplog.records if "rows left" in r.getMessage()]
    assert progress and all(re.search(r"backlog \d+ rows left, draining at \d+ rows/s, ETA", m) for m in progress)
    assert any("upload succeeded again after" in r.getMessage() for r in caplog.records)

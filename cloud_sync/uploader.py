"""The uploader: drains one sink's outbox from the store to an HTTP receiver, exactly once end to end.

Contract:

- Rows leave in seq order, in batches of at most ``sink.batch_size``; when fewer rows wait, the uploader waits
  up to ``sink.max_interval_s`` (from the moment the first one was seen) for the batch to fill.
- Events (``store.events_after``: gap records, alarms, trips, SOE, control audit) ride in the same batches, at
  most :data:`EVENTS_PER_BATCH` each, in event-seq order after the sink's event watermark. An event that
  appears starts the same ``max_interval_s`` clock as a reading, so it leaves within ``max_interval_s`` even
  when no reading waits (then as an events-only batch).
- Each batch is ``POST``-ed to ``sink.url`` with ``Authorization: Bearer <token>``,
  ``Idempotency-Key: <gateway_id>:<first_seq>-<last_seq>`` (events-only batch:
  ``<gateway_id>:e<first_event_seq>-<last_event_seq>``) and ``Content-Type:
  application/vnd.apache.arrow.stream`` (body: :mod:`cloud_sync.codec`).
- The sink's watermarks advance **only after a 2xx**, both after the same one: readings (``store.ack``)
  then events (``store.ack_events``). A batch whose answer was lost is sent again; the receiver lands rows
  and events exactly once by ``(gateway_id, seq)``. A receiver that answers without ``events_accepted`` to a
  batch carrying events predates events: the sink stops (``stopped-rejected``) rather than lose them.
- Connection errors, timeouts, 5xx, 408 and 429 are retried forever with exponential backoff and full jitter
  (``backoff_min_s`` doubling up to ``sink.retry_max_s``); a ``Retry-After`` header (seconds or HTTP-date)
  replaces the computed delay (capped at :data:`MAX_RETRY_AFTER_S`).
- 401/403 stop the sink (state ``stopped-auth``); any other 4xx stops it too (``stopped-rejected``). Either
  way nothing is acked: the data stays in the store until the sink is reconfigured and restarted.

Threads: :meth:`run` runs on the event loop; blocking store calls (``read_after``, ``events_after``, ``ack``,
``ack_events``, ``point_infos``) and encoding run in worker threads via ``asyncio.to_thread`` (``last_seq``,
``last_event_seq``, ``watermark``, ``event_watermark`` and ``backlog`` are in-memory reads and are called on
the loop). :meth:`stop` and :meth:`status` must be called
on the loop's thread. The uploader does not own the store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx
import numpy as np
import pyarrow as pa
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from cloud_sync.codec import CONTENT_TYPE, READINGS_SCHEMA, PointCatalog, encode_batch
from cloud_sync.errors import AuthRejected, BatchRejected, RetryableUpload, UploadError
from gateway.config import SinkConfig
from gateway.model import PointInfo

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S: Final = 3600.0  # a Retry-After longer than this is treated as this
RATE_WINDOW_S: Final = 30.0  # rows_per_s averages the acks of this window
EVENTS_PER_BATCH: Final = 10_000  # most events per upload (events are small and rare)

STATES: Final = ("idle", "ok", "retrying", "stopped-auth", "stopped-rejected", "disabled", "stopped")
_FINAL: Final = ("stopped-auth", "stopped-rejected", "disabled", "stopped")


class SyncStore(Protocol):
    """What the uploader needs from :class:`storefwd.store.Store`."""

    def read_after(self, sink: str, after_seq: int, limit: int) -> pa.Table: ...
    def watermark(self, sink: str) -> int: ...
    def ack(self, sink: str, seq: int) -> None: ...
    def backlog(self, sink: str) -> int: ...
    def point_infos(self) -> dict[int, PointInfo]: ...
    def last_seq(self) -> int: ...
    def events_after(self, after_seq: int, limit: int) -> pa.Table: ...
    def last_event_seq(self) -> int: ...
    def event_watermark(self, sink: str) -> int: ...
    def ack_events(self, sink: str, seq: int) -> None: ...


@dataclass(frozen=True, slots=True)
class _Prepared:
    body: bytes
    rows: int
    first_seq: int  # 0 when the batch has no readings
    last_seq: int
    events: int
    first_event_seq: int  # 0 when the batch has no events
    last_event_seq: int
    cursor: int  # readings cursor after this batch (last_seq, or the previous cursor when no readings)
    event_cursor: int  # events cursor after this batch

    @property
    def key(self) -> str:
        """Idempotency key body (without the gateway id prefix)."""
        if self.rows:
            return f"{self.first_seq}-{self.last_seq}"
        return f"e{self.first_event_seq}-{self.last_event_seq}"


class _Stopped(Exception):
    """Internal: stop() was called while retrying."""


def parse_retry_after(value: str | None, now_wall_s: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None when absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now_wall_s
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class Delivery(Protocol):
    """How a sink puts one encoded batch on the wire. The uploader owns the outbox; a delivery only sends.

    ``send`` returns (the receiver's JSON answer, or ``{}``) only once the peer has durably accepted the batch
    (HTTP 2xx, MQTT PUBACK): the uploader acks the watermark right after. It raises
    :class:`RetryableUpload` for anything worth retrying (the same batch is sent again), :class:`AuthRejected`
    or :class:`BatchRejected` to stop the sink. Used as an async context manager around the uploader's run.
    Event-loop thread only.
    """

    async def __aenter__(self) -> Delivery: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def send(self, body: bytes, key: str) -> dict[str, Any]: ...


class HttpDelivery:
    """POST to ``sink.url`` (see the module docstring for headers and status handling)."""

    def __init__(self, sink: SinkConfig, transport: httpx.AsyncBaseTransport | None = None,
                 wall_clock_ns: Callable[[], int] = time.time_ns) -> None:  # fmt: skip
        self.sink = sink
        self._transport = transport
        self._wall_ns = wall_clock_ns
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> HttpDelivery:
        self._client = httpx.AsyncClient(
            transport=self._transport, timeout=self.sink.timeout_s, verify=tls_context(self.sink)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send(self, body: bytes, key: str) -> dict[str, Any]:
        assert self._client is not None, "use HttpDelivery as an async context manager"
        headers = {
            "Authorization": f"Bearer {self.sink.token}",
            "Idempotency-Key": key,
            "Content-Type": CONTENT_TYPE,
        }
        try:
            resp = await self._client.post(self.sink.url, content=body, headers=headers)
        except httpx.TimeoutException as e:  # ConnectTimeout: black-holed; ReadTimeout: a slow receiver
            raise RetryableUpload(
                f"{type(e).__name__}: timeout after {self.sink.timeout_s} s posting to {self.sink.url}"
            ) from e
        except httpx.TransportError as e:
            raise RetryableUpload(f"{type(e).__name__} posting to {self.sink.url}: {e}{_root_cause(e)}") from e
        code = resp.status_code
        if 200 <= code < 300:
            try:
                answer = resp.json()
            except ValueError:
                return {}
            return answer if isinstance(answer, dict) else {}
        detail = _detail(resp)
        msg = f"HTTP {code} from {self.sink.url}: {detail}"
        if code in (401, 403):
            raise AuthRejected(msg, code)
        if code in (408, 429) or code >= 500:
            retry_after = parse_retry_after(resp.headers.get("retry-after"), self._wall_ns() / 1e9)
            raise RetryableUpload(msg, code, retry_after)
        raise BatchRejected(msg, code)


class Uploader:
    """Uploads the rows of one sink. See the module docstring for the contract.

    Injectable for tests: ``transport`` (httpx), ``clock`` (monotonic seconds: fill deadline and rates),
    ``wall_clock_ns`` (UTC ns: ``last_ack_wall_ns`` and HTTP-date Retry-After), ``sleep`` (backoff sleeps;
    the default wakes early on stop()), ``backoff_min_s`` (first backoff ceiling), ``poll_s`` (how often an
    idle uploader looks for new rows).
    """

    def __init__(
        self,
        store: SyncStore,
        sink: SinkConfig,
        gateway_id: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        backoff_min_s: float = 0.5,
        poll_s: float = 0.05,
        zstd_level: int = 3,
        delivery: Delivery | None = None,
    ) -> None:
        if sink.batch_size < 1:
            raise ValueError("sink.batch_size must be >= 1")
        self.store = store
        self.sink = sink
        self.gateway_id = gateway_id
        self._delivery: Delivery = delivery or HttpDelivery(sink, transport, wall_clock_ns)
        self._clock = clock
        self._wall_ns = wall_clock_ns
        self._sleep = sleep or self._interruptible_sleep
        self._backoff_min_s = backoff_min_s
        self._poll_s = poll_s
        self._level = zstd_level
        self._stop = asyncio.Event()
        self._catalog: PointCatalog | None = None
        # status (loop thread only)
        self._state = "disabled" if not sink.enabled else "idle"
        self._last_ack_seq = 0
        self._last_event_ack_seq = 0
        self._uploaded_events = 0
        self._last_ack_wall_ns = 0
        self._last_error = ""
        self._uploaded_rows = 0
        self._uploads = 0
        self._retries = 0
        self._backlog = 0
        self._acks: collections.deque[tuple[float, int]] = collections.deque()
        self._last_response: dict[str, Any] = {}
        self._changed = asyncio.Condition()  # notified after every ack and state change
        self._progress_at = -math.inf  # clock() of the last progress log line

    # ------------------------------------------------------------------------------------------- control
    def stop(self) -> None:
        """Ask :meth:`run` to return: waits end at once; an in-flight POST finishes (bounded by timeout_s)."""
        self._stop.set()

    async def wait_acked(self, seq: int) -> None:
        """Return once the watermark reached ``seq``; UploadError if the sink stops (or run() ends) first."""
        async with self._changed:
            while self._last_ack_seq < seq:
                if self._state in _FINAL:
                    raise UploadError(f"sink {self.sink.name!r} is {self._state}: {self._last_error}")
                await self._changed.wait()

    async def wait_events_acked(self, seq: int) -> None:
        """Return once the event watermark reached ``seq``; UploadError if the sink stops first."""
        async with self._changed:
            while self._last_event_ack_seq < seq:
                if self._state in _FINAL:
                    raise UploadError(f"sink {self.sink.name!r} is {self._state}: {self._last_error}")
                await self._changed.wait()

    async def wait_state(self, *states: str) -> str:
        """Return the state once it is one of ``states``."""
        async with self._changed:
            while self._state not in states:
                await self._changed.wait()
            return self._state

    async def _set_state(self, state: str) -> None:
        async with self._changed:
            self._state = state
            self._changed.notify_all()

    @property
    def state(self) -> str:
        """One of :data:`STATES` (loop thread)."""
        return self._state

    def status(self) -> dict[str, Any]:
        """Snapshot for the panel/metrics. Never blocks."""
        with contextlib.suppress(Exception):
            self._backlog = int(self.store.backlog(self.sink.name))
        events_backlog = 0
        with contextlib.suppress(Exception):
            events_backlog = max(0, int(self.store.last_event_seq()) - self._last_event_ack_seq)
        rate = self._rate()
        eta: float | None
        if self._backlog == 0:
            eta = 0.0
        elif rate > 0:
            eta = self._backlog / rate
        else:
            eta = None
        return {
            "sink": self.sink.name,
            "url": self.sink.url,
            "state": self._state,
            "backlog": self._backlog,
            "last_ack_seq": self._last_ack_seq,
            "last_ack_wall_ns": self._last_ack_wall_ns,
            "events_backlog": events_backlog,
            "last_event_ack_seq": self._last_event_ack_seq,
            "uploaded_events": self._uploaded_events,
            "last_error": self._last_error,
            "uploaded_rows": self._uploaded_rows,
            "uploads": self._uploads,
            "retries": self._retries,
            "rows_per_s": rate,
            "eta_s": eta,
        }

    def _rate(self) -> float:
        now = self._clock()
        while self._acks and now - self._acks[0][0] > RATE_WINDOW_S:
            self._acks.popleft()
        if len(self._acks) < 2:
            return 0.0
        span = self._acks[-1][0] - self._acks[0][0]
        rows = sum(n for _, n in list(self._acks)[1:])
        return rows / span if span > 0 else 0.0

    # ------------------------------------------------------------------------------------------- main loop
    async def run(self) -> None:
        """Upload until :meth:`stop` or until the sink stops on a permanent error (see :meth:`status`)."""
        if not self.sink.enabled:
            await self._set_state("disabled")
            await self._stop.wait()
            return
        try:
            await self._run()
        finally:
            if self._state not in ("stopped-auth", "stopped-rejected"):
                await self._set_state("stopped")

    async def _run(self) -> None:
        cursor = int(self.store.watermark(self.sink.name))
        event_cursor = int(self.store.event_watermark(self.sink.name))
        self._last_ack_seq = cursor
        self._last_event_ack_seq = event_cursor
        async with self._delivery:
            prepared = await self._prepare(cursor, event_cursor)
            while prepared is not None:
                ahead = asyncio.create_task(
                    self._prepare(prepared.cursor, prepared.event_cursor), name=f"sync-{self.sink.name}-prep"
                )
                delivered = False
                try:
                    delivered = await self._deliver(prepared)
                finally:
                    if not delivered:
                        ahead.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await ahead
                if not delivered:
                    break
                prepared = await ahead

    async def _prepare(self, after: int, after_event: int) -> _Prepared | None:
        """Wait for rows after ``after`` or events after ``after_event`` (see fill rule), read and encode
        them; None when stopping."""
        deadline: float | None = None
        while not self._stop.is_set():
            avail = int(self.store.last_seq()) - after
            ev_avail = int(self.store.last_event_seq()) - after_event
            now = self._clock()
            if (avail > 0 or ev_avail > 0) and deadline is None:
                deadline = now + self.sink.max_interval_s
            if avail >= self.sink.batch_size or (deadline is not None and now >= deadline):
                rows = READINGS_SCHEMA.empty_table()
                if avail > 0:
                    rows = await asyncio.to_thread(
                        self.store.read_after, self.sink.name, after, self.sink.batch_size
                    )
                events = None
                if ev_avail > 0:
                    events = await asyncio.to_thread(self.store.events_after, after_event, EVENTS_PER_BATCH)
                if rows.num_rows or (events is not None and events.num_rows):
                    return await self._encode(rows, events, after, after_event)
                deadline = None
            if avail <= 0 and ev_avail <= 0 and self._state == "ok":
                await self._set_state("idle")
            wait = self._poll_s if deadline is None else max(0.0, min(self._poll_s, deadline - now))
            await self._wait_stop(wait)
        return None

    async def _encode(self, rows: pa.Table, events: pa.Table | None, after: int, after_event: int) -> _Prepared:
        pids = rows.column("point_id").to_numpy()
        if self._catalog is None or len(self._catalog.missing(np.asarray(pids))):
            infos = await asyncio.to_thread(self.store.point_infos)
            if self._catalog is None or len(infos) != len(self._catalog):  # else: ids without a name
                self._catalog = await asyncio.to_thread(PointCatalog, infos)
        catalog = self._catalog
        body = await asyncio.to_thread(
            encode_batch, rows, self.gateway_id, catalog, level=self._level, events=events
        )
        seqs = rows.column("seq")
        first, last = (int(seqs[0].as_py()), int(seqs[-1].as_py())) if rows.num_rows else (0, 0)
        n_ev = events.num_rows if events is not None else 0
        eseq = events.column("seq") if events is not None and n_ev else None
        e_first, e_last = (int(eseq[0].as_py()), int(eseq[-1].as_py())) if eseq is not None else (0, 0)
        return _Prepared(
            body,
            rows.num_rows,
            first,
            last,
            n_ev,
            e_first,
            e_last,
            cursor=last if rows.num_rows else after,
            event_cursor=e_last if n_ev else after_event,
        )

    async def _deliver(self, batch: _Prepared) -> bool:
        """Upload (with retries) and ack. False when the sink stopped or stop() was called."""
        key = f"{self.gateway_id}:{batch.key}"
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableUpload),
            wait=self._wait_for,
            stop=lambda _state: self._stop.is_set(),
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if self._stop.is_set():
                        raise _Stopped
                    self._last_response = await self._delivery.send(batch.body, key)
                    answer = self._last_response
                    if batch.events and "accepted" in answer and "events_accepted" not in answer:
                        raise BatchRejected(
                            f"the receiver at {self.sink.url} did not acknowledge the {batch.events} events of "
                            "the batch (it predates events in gwsync/1; upgrade it)",
                            200,
                        )
        except _Stopped:
            return False
        except RetryableUpload as e:  # stop() during the retry loop
            self._last_error = str(e)
            return False
        except AuthRejected as e:
            self._last_error = str(e)
            await self._set_state("stopped-auth")
            log.error("sink %r stopped: %s (data kept; fix the token and restart)", self.sink.name, e)
            return False
        except BatchRejected as e:
            self._last_error = str(e)
            await self._set_state("stopped-rejected")
            log.error("sink %r stopped: batch %s rejected: %s (data kept)", self.sink.name, key, e)
            return False
        while True:
            try:
                if batch.rows:
                    await asyncio.to_thread(self.store.ack, self.sink.name, batch.last_seq)
                if batch.events:
                    await asyncio.to_thread(self.store.ack_events, self.sink.name, batch.last_event_seq)
                break
            except Exception as e:  # the store failing to commit must not lose the ack forever
                self._last_error = f"ack of seq {batch.last_seq}/event seq {batch.last_event_seq} failed: {e}"
                log.warning("sink %r: %s", self.sink.name, self._last_error)
                if self._stop.is_set():
                    return False
                await self._sleep(self._backoff_min_s)
        if self._state == "retrying":
            self._acks.clear()  # the rate window must not span the outage (it would show a drain at 0 rows/s)
        self._acks.append((self._clock(), batch.rows))
        self._last_ack_seq = batch.cursor
        self._last_event_ack_seq = batch.event_cursor
        self._uploaded_events += batch.events
        self._last_ack_wall_ns = self._wall_ns()
        self._uploaded_rows += batch.rows
        self._uploads += 1
        self._last_error = ""
        if self._state == "retrying":
            log.info("sink %r: upload succeeded again after %d retries", self.sink.name, self._retries)
            self._progress_at = -math.inf  # report the backlog left by the outage at once
        await self._set_state("ok")
        self._log_progress()
        return True

    def _log_progress(self) -> None:
        """While a backlog drains: one INFO line every ``sink.progress_log_s`` with rows left, rate and ETA."""
        every = self.sink.progress_log_s
        now = self._clock()
        if every <= 0 or now - self._progress_at < every:
            return
        st = self.status()
        if st["backlog"] < self.sink.batch_size:  # live operation keeps a batch or less waiting: no drain to report
            return
        self._progress_at = now
        eta = "unknown" if st["eta_s"] is None else f"{st['eta_s']:.0f} s"
        log.info(
            "sink %r: backlog %d rows left, draining at %.0f rows/s, ETA %s",
            self.sink.name,
            st["backlog"],
            st["rows_per_s"],
            eta,
        )

    def _wait_for(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableUpload) and exc.retry_after_s is not None:
            return exc.retry_after_s
        return float(
            wait_random_exponential(multiplier=self._backoff_min_s, max=self.sink.retry_max_s)(state)
        )

    async def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self._retries += 1
        self._last_error = str(exc) if isinstance(exc, UploadError) else repr(exc)
        await self._set_state("retrying")
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "sink %r: %s; retry %d in %.2f s", self.sink.name, self._last_error, state.attempt_number, delay
        )

    async def _interruptible_sleep(self, seconds: float) -> None:
        await self._wait_stop(seconds)

    async def _wait_stop(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


def _root_cause(e: BaseException) -> str:
    """`` (<errno/TLS reason>)`` from the innermost OSError/SSLError of the chain (httpx hides it), or ""."""
    found: BaseException | None = None
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 10:
        if isinstance(cur, OSError | ssl.SSLError) and cur is not e:
            found = cur
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return f" ({type(found).__name__}: {found})" if found is not None else ""


def tls_context(sink: SinkConfig) -> ssl.SSLContext | bool:
    """httpx ``verify=`` for ``sink``: True (system CAs) unless it names a CA bundle or a client certificate."""
    if sink.ca_file is None and sink.cert_file is None:
        return True
    ctx = ssl.create_default_context(cafile=str(sink.ca_file) if sink.ca_file else None)
    if sink.cert_file is not None and sink.key_file is not None:
        ctx.load_cert_chain(str(sink.cert_file), str(sink.key_file))
    return ctx


def _detail(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:200] or resp.reason_phrase
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error") or data)[:200]
    return str(data)[:200]

"""Cloud side of the MQTT uplink: subscribe to every gateway's batches on a broker and land them exactly once.

``python -m cloud_sync.receiver.mqtt_bridge --broker mqtts://host:8883 --ca CA --cert CERT --key KEY --db FILE|postgresql://…``

Contract (``docs/mqtt-uplink.md``):

- One MQTT v5 session with ``clean_start = false`` and a long session expiry (``--session-expiry-s``), subscribed
  to ``<prefix>/+/batches`` at QoS 1: while the bridge is down the broker keeps queueing the gateways'
  batches for it, and delivers them when it reconnects.
- Each message is decoded (:func:`cloud_sync.codec.decode_batch`, bounded by the decompressed limit), its
  payload's ``gateway_id`` checked against the topic's (the broker authenticated the topic: its ACL lets a
  certificate publish only under its own CN), split (:func:`cloud_sync.receiver.validate.split_rows`) and landed
  (:meth:`Backend.land`: exactly once by ``(gateway, seq)``, quarantine, one transaction) — the same path as
  ``POST /v1/batches``. The batch key is the ``idempotency-key`` user property (derived from the seqs when
  absent or invalid).
- The message is acknowledged to the broker (manual ``PUBACK``) **only after the land committed**. A crash
  before that makes the broker re-deliver it; the re-delivery lands nothing twice.
- A database failure (:class:`BackendError`) is retried with backoff, the message unacknowledged, so the broker
  keeps everything behind it. ``--receive-maximum`` bounds the unacknowledged messages the broker sends us.
- A payload whose ``gateway_id`` differs from the topic's is never landed as readings: its rows go to the
  *topic's* gateway's ``quarantine`` with reason ``gateway-mismatch`` (batch key ``<topic gw>:mismatch:…``), its
  events (if any) are not landed, and it is acknowledged. A payload that does not decode (or decompresses
  beyond the limit) cannot be landed at all: it is logged, counted in ``rejected``, written to
  ``--dead-letter-dir`` when given, and acknowledged (it would otherwise block the session forever).

Threads: paho's network thread only hands messages to the event loop (``call_soon_threadsafe``); decoding and
validation run in worker threads, the database in the backend's own thread. ``client.ack`` is thread-safe in
paho and called on the loop. A PUBACK is sent only on the connection that delivered the message (a message
delivered on an earlier connection is re-delivered after a reconnect and acked then).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
import pyarrow as pa
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from cloud_sync.codec import DecodedBatch, decode_batch
from cloud_sync.errors import BackendError, CodecError
from cloud_sync.mqtt_sink import IDEMPOTENCY_PROPERTY, ReportingClient, parse_mqtt_url, tls_client_context
from cloud_sync.receiver.app import DEFAULT_MAX_DECOMPRESSED_BYTES, MAX_BATCH_KEY_LEN
from cloud_sync.receiver.backends import Backend, open_backend
from cloud_sync.receiver.validate import QUARANTINE_SCHEMA, split_rows

log = logging.getLogger(__name__)

MISMATCH_REASON: Final = "gateway-mismatch"  # quarantine reason: payload gateway_id != the topic's
DEFAULT_SESSION_EXPIRY_S: Final = 7 * 24 * 3600  # the broker keeps our session (and queue) this long offline
DEFAULT_RECEIVE_MAXIMUM: Final = 16  # unacknowledged messages the broker may send us at once
BACKOFF_MIN_S: Final = 0.5  # database retry: first delay, doubling
BACKOFF_MAX_S: Final = 30.0


class _Stopping(Exception):
    """Internal: stop() while a land was being retried (the message stays unacknowledged)."""


class MqttBridge:
    """Subscribes and lands (see the module docstring). Use as an async context manager; :meth:`run` until
    :meth:`stop`. The bridge does not own ``backend`` (close it yourself). Event-loop thread only, except
    :meth:`stop`, which may be called from any thread (e.g. a signal handler via the loop).
    """

    def __init__(
        self,
        backend: Backend,
        broker_url: str,
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        client_id: str = "cloud-bridge",
        topic_prefix: str = "gw",
        max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
        session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S,
        receive_maximum: int = DEFAULT_RECEIVE_MAXIMUM,
        keepalive_s: int = 30,
        dead_letter_dir: Path | None = None,
        stats_file: Path | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.backend = backend
        self.url = broker_url
        self.endpoint = parse_mqtt_url(broker_url)
        self.tls = (ca_file, cert_file, key_file)
        self.client_id = client_id
        self.prefix = topic_prefix
        self.subscription = f"{topic_prefix}/+/batches"
        self._topic_re = re.compile(re.escape(topic_prefix) + r"/([^/]+)/batches")
        self.max_decompressed_bytes = max_decompressed_bytes
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.keepalive_s = keepalive_s
        self.dead_letter_dir = dead_letter_dir
        self.stats_file = stats_file
        self._clock_ns = clock_ns
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: ReportingClient | None = None
        self._queue: asyncio.Queue[tuple[int, mqtt.MQTTMessage]] = asyncio.Queue()
        self._stop = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._closing = False  # __aexit__ started: our own disconnect is not worth a warning
        self._conn_gen = 0  # paho thread writes (on_connect), the loop reads: which connection delivered what
        self.last_error = ""
        # counters (loop thread)
        self.stats: dict[str, int] = {
            "messages": 0, "landed_batches": 0, "rows": 0, "accepted": 0, "duplicates": 0, "quarantined": 0,
            "mismatched": 0, "rejected": 0, "replays": 0, "db_retries": 0,
        }  # fmt: skip

    # ----------------------------------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> MqttBridge:
        self._loop = asyncio.get_running_loop()
        client = ReportingClient(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                                 manual_ack=True, reconnect_on_failure=True)  # fmt: skip
        client.reconnect_delay_set(1, 10)
        if self.endpoint.tls:
            client.tls_set_context(tls_client_context(*self.tls))
        client.on_connect = self._cb_connect
        client.on_disconnect = self._cb_disconnect
        client.on_subscribe = self._cb_subscribe
        client.on_message = self._cb_message
        client.on_log = self._cb_log
        client.on_reconnect_error = lambda e: self._post(self._set_error, f"{type(e).__name__}: {e}")
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        client.connect_async(self.endpoint.host, self.endpoint.port, self.keepalive_s, clean_start=False,
                             properties=props)  # fmt: skip
        client.loop_start()
        self._client = client
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        self._closing = True
        if client is not None:
            await asyncio.to_thread(_shutdown, client)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the message being landed (if any) is acknowledged."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._stop.set)

    async def wait_subscribed(self) -> None:
        """Until the subscription is in place (the broker then queues for us even while we are away)."""
        await self._subscribed.wait()

    async def run(self) -> None:
        """Land messages in arrival order until :meth:`stop`. Decoding and validating message *n+1* (worker
        threads) overlaps landing message *n* (database thread); lands and PUBACKs stay in arrival order."""
        stop = asyncio.create_task(self._stop.wait())
        landing: asyncio.Task[None] | None = None
        try:
            while not self._stop.is_set():
                get = asyncio.create_task(self._queue.get())
                await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await get
                    break
                gen, msg = get.result()
                step = await self._prepare(msg)
                if landing is not None:
                    await landing
                landing = asyncio.create_task(self._land_then_ack(gen, msg, step))
        finally:
            if landing is not None:
                await landing
            stop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop

    async def _land_then_ack(self, gen: int, msg: mqtt.MQTTMessage, step: Callable[[], Awaitable[None]]) -> None:
        try:
            await step()
        except _Stopping:
            return  # not acknowledged: the broker re-delivers it to the next bridge
        self._ack(gen, msg)

    # ---------------------------------------------------------------------------------------- one message
    async def _prepare(self, msg: mqtt.MQTTMessage) -> Callable[[], Awaitable[None]]:
        """Decode and validate ``msg`` (worker threads); return its landing step (database, in order)."""
        self.stats["messages"] += 1
        m = self._topic_re.fullmatch(msg.topic)
        if m is None:  # not ours (a wider subscription): nothing to land
            log.warning("ignoring a message on unexpected topic %r", msg.topic)
            return _nothing
        topic_gw = m.group(1)
        payload = bytes(msg.payload)
        try:
            decoded: DecodedBatch = await asyncio.to_thread(
                decode_batch, payload, max_decompressed_bytes=self.max_decompressed_bytes
            )
        except CodecError as e:
            self.stats["rejected"] += 1
            self._dead_letter(topic_gw, payload, f"{type(e).__name__}: {e}")
            log.error("rejected a batch from %r on %s: %s (%d bytes; not landable)", topic_gw, msg.topic, e,
                      len(payload))  # fmt: skip
            return _nothing
        now = self._clock_ns()
        rows = decoded.rows
        if decoded.gateway_id != topic_gw:
            return lambda: self._quarantine_mismatch(topic_gw, decoded, payload, now)
        key = _key_of(msg, topic_gw, rows)
        split = await asyncio.to_thread(split_rows, rows, decoded.points, now)
        events = getattr(decoded, "events", None)
        extra: dict[str, Any] = {} if events is None else {"events": events}

        async def land() -> None:
            result = await self._land_retrying(topic_gw, key, split.valid, split.quarantine, decoded.points, now,
                                               extra)  # fmt: skip
            self.stats["landed_batches"] += 1
            self.stats["rows"] += rows.num_rows
            self.stats["accepted"] += result.accepted
            self.stats["duplicates"] += result.duplicates
            self.stats["quarantined"] += result.quarantined
            self.stats["replays"] += int(result.replay)
            self._write_stats()

        return land

    async def _quarantine_mismatch(self, topic_gw: str, decoded: DecodedBatch, payload: bytes, now: int) -> None:
        rows = decoded.rows
        self.stats["mismatched"] += 1
        seqs = rows.column("seq")
        span = f"{seqs[0].as_py()}-{seqs[-1].as_py()}" if rows.num_rows else "empty"
        key = f"{topic_gw}:mismatch:{decoded.gateway_id}:{span}"[:MAX_BATCH_KEY_LEN]
        log.error("batch on %s claims gateway %r: %d rows quarantined under %r (%s), not landed",
                  f"{self.prefix}/{topic_gw}/batches", decoded.gateway_id, rows.num_rows, topic_gw,
                  MISMATCH_REASON)  # fmt: skip
        events = getattr(decoded, "events", None)
        if events is not None and events.num_rows:
            self._dead_letter(topic_gw, payload, f"gateway_id {decoded.gateway_id!r} on {topic_gw!r}'s topic")
        quarantine = pa.table(
            [pa.array(range(rows.num_rows), pa.int32()), *rows.columns,
             pa.array([MISMATCH_REASON] * rows.num_rows, pa.string())],
            schema=QUARANTINE_SCHEMA,
        )  # fmt: skip
        valid = rows.schema.empty_table()
        points = decoded.points.schema.empty_table()  # the claimed gateway's names are not the topic's
        await self._land_retrying(topic_gw, key, valid, quarantine, points, now, {})
        self._write_stats()

    async def _land_retrying(self, gw: str, key: str, valid: pa.Table, quarantine: pa.Table, points: pa.Table,
                             now: int, extra: dict[str, Any]) -> Any:  # fmt: skip
        delay = BACKOFF_MIN_S
        while True:
            try:
                return await self.backend.land(gw, key, valid, quarantine, points, now, **extra)
            except BackendError as e:
                self.stats["db_retries"] += 1
                self.last_error = f"database error landing {key}: {e}"
                log.error("%s; retry in %.1f s (message kept unacknowledged)", self.last_error, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    raise _Stopping from e
                delay = min(delay * 2, BACKOFF_MAX_S)

    def _ack(self, gen: int, msg: mqtt.MQTTMessage) -> None:
        client = self._client
        if client is None or msg.qos == 0:
            return
        if gen != self._conn_gen:  # delivered on an earlier connection: the broker re-delivers it
            return
        client.ack(msg.mid, msg.qos)

    def _dead_letter(self, gw: str, payload: bytes, why: str) -> None:
        if self.dead_letter_dir is None:
            return
        try:
            self.dead_letter_dir.mkdir(parents=True, exist_ok=True)
            stem = self.dead_letter_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', gw)}-{self._clock_ns()}"
            stem.with_suffix(".arrows").write_bytes(payload)
            stem.with_suffix(".txt").write_text(why + "\n")
        except OSError as e:
            log.error("cannot write dead letter for %r: %s", gw, e)

    def _write_stats(self) -> None:
        if self.stats_file is None:
            return
        tmp = self.stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.stats))
        os.replace(tmp, self.stats_file)

    # ------------------------------------------------------------------------------ paho callbacks (its thread)
    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    def _cb_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, rc: ReasonCode,
                    props: Properties | None) -> None:  # fmt: skip
        if rc.is_failure:
            self._post(self._set_error, f"broker {self.url} refused the bridge: CONNACK {rc}")
            return
        self._conn_gen += 1
        # Subscribing again on a resumed session is harmless and covers a session the broker lost.
        client.subscribe(self.subscription, options=SubscribeOptions(qos=1))
        self._post(log.info, "bridge connected to %s (session present: %s)", self.url, flags.session_present)

    def _cb_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: list[ReasonCode],
                      props: Properties | None) -> None:  # fmt: skip
        if all(not rc.is_failure for rc in rcs):
            self._post(self._on_subscribed)
        else:
            self._post(self._set_error, f"subscription to {self.subscription} refused: {[str(r) for r in rcs]}")

    def _cb_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags, rc: ReasonCode,
                       props: Properties | None) -> None:  # fmt: skip
        self._post(self._set_error, f"disconnected from {self.url}: {rc}")

    def _cb_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._post(self._queue.put_nowait, (self._conn_gen, msg))

    def _cb_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and not buf.startswith("Client is not connected"):
            self._post(self._set_error, buf)

    def _on_subscribed(self) -> None:
        self._subscribed.set()
        self._write_stats()

    def _set_error(self, text: str) -> None:
        if text != self.last_error and not self._closing:
            log.warning("bridge: %s", text)
        self.last_error = text


async def _nothing() -> None:
    return None


def _key_of(msg: mqtt.MQTTMessage, gw: str, rows: pa.Table) -> str:
    props = getattr(msg, "properties", None)
    for name, value in getattr(props, "UserProperty", None) or []:
        if name == IDEMPOTENCY_PROPERTY and 0 < len(value) <= MAX_BATCH_KEY_LEN and value.isprintable():
            return str(value)
    if rows.num_rows:
        seqs = rows.column("seq")
        return f"{gw}:{seqs[0].as_py()}-{seqs[-1].as_py()}"
    return f"{gw}:empty"


def _shutdown(client: mqtt.Client) -> None:
    """Worker thread: disconnect (the session and its queue stay on the broker) and join paho's thread."""
    client.disconnect()
    client.loop_stop()


# ----------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cloud_sync.receiver.mqtt_bridge",
        description="Land gateway batches from an MQTT broker (see docs/mqtt-uplink.md).",
    )
    p.add_argument("--broker", required=True, help="mqtts://host:port (mqtt:// only to a loopback host)")
    p.add_argument("--ca", type=Path, help="PEM CA bundle that verifies the broker (default: system CAs)")
    p.add_argument("--cert", type=Path, help="the bridge's PEM client certificate")
    p.add_argument("--key", type=Path, help="its PEM private key")
    p.add_argument("--db", default="receiver.duckdb", help="DuckDB file path or postgresql:// URL")
    p.add_argument("--client-id", default="cloud-bridge", help="MQTT client id (its session is kept by the broker)")
    p.add_argument("--topic-prefix", default="gw", help="topics are <prefix>/<gateway id>/batches")
    p.add_argument("--max-decompressed-mb", type=float, default=DEFAULT_MAX_DECOMPRESSED_BYTES / 2**20)
    p.add_argument("--session-expiry-s", type=int, default=DEFAULT_SESSION_EXPIRY_S,
                   help="how long the broker keeps the bridge's session and queue while it is away")  # fmt: skip
    p.add_argument("--receive-maximum", type=int, default=DEFAULT_RECEIVE_MAXIMUM,
                   help="unacknowledged messages the broker may send at once")  # fmt: skip
    p.add_argument("--dead-letter-dir", type=Path, help="where undecodable payloads are written")
    p.add_argument("--stats-file", type=Path, help="JSON counters, written once subscribed and after every batch")
    p.add_argument("--log-level", default="info")
    return p


async def serve(args: argparse.Namespace) -> None:
    """Run until SIGINT/SIGTERM."""
    backend = open_backend(args.db)
    try:
        await backend.ping()
        bridge = MqttBridge(
            backend, args.broker, ca_file=args.ca, cert_file=args.cert, key_file=args.key, client_id=args.client_id,
            topic_prefix=args.topic_prefix, max_decompressed_bytes=int(args.max_decompressed_mb * 2**20),
            session_expiry_s=args.session_expiry_s, receive_maximum=args.receive_maximum,
            dead_letter_dir=args.dead_letter_dir, stats_file=args.stats_file,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, bridge.stop)
        async with bridge:
            await bridge.run()
    finally:
        await backend.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        parse_mqtt_url(args.broker)
    except ValueError as e:
        print(f"mqtt_bridge: --broker: {e}")
        return 2
    try:
        asyncio.run(serve(args))
    except (ssl.SSLError, OSError, BackendError) as e:
        print(f"mqtt_bridge: {e}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

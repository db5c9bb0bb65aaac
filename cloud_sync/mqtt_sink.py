"""MQTT uplink: :class:`MqttDelivery` puts the uploader's batches on an MQTT v5 broker (``type = "mqtt"`` sinks).

Contract (the uploader's :class:`~cloud_sync.uploader.Delivery`; full text in ``docs/mqtt-uplink.md``):

- One publish per batch, QoS 1, to ``<topic_prefix>/<gateway_id>/batches``. The payload is exactly the HTTP
  body (``gwsync/1`` Arrow IPC, ``docs/ingestion.md``); the batch key travels in the MQTT v5 user property
  ``idempotency-key`` (plus ``content-type``).
- :meth:`MqttDelivery.send` returns only after the broker's PUBACK for that publish carried a success reason
  code: the uploader then advances the watermark. A PUBACK with a failure code is an error, never an ack
  (MQTT v5 is required for that: a v3.1.1 broker answers a publish its ACL refuses, or one over its size
  limit, with a plain PUBACK and drops it, which would advance the watermark over lost data).
- Errors: connection refused/lost, timeouts, a broker that is not trusted (our CA does not verify it) and
  transient PUBACK codes raise :class:`RetryableUpload` (the uploader retries the same batch with backoff).
  The broker refusing *our* identity (a TLS alert naming our certificate: unknown CA, bad/expired/revoked
  certificate, certificate required, access denied; CONNACK not authorised / bad credentials / banned /
  client id invalid; PUBACK 0x87 not authorised, i.e. the ACL) raises :class:`AuthRejected`: the sink stops
  (``stopped-auth``), nothing is acked. A batch the broker will never take (over ``max_payload_bytes`` or the
  Maximum Packet Size of the broker's CONNACK, PUBACK 0x83/0x90/0x95/0x99) raises :class:`BatchRejected`
  (``stopped-rejected``; Mosquitto answers 0x83 to a payload over its ``message_size_limit``).
- PUBACK 0x10 *no matching subscribers* is retried: the broker dropped the message because no session
  (the cloud bridge's persistent one) subscribes to the topic.
- Re-sending: paho keeps every unacknowledged QoS 1 publish and re-sends it (DUP) after a reconnect. A retried
  ``send`` of the same key therefore re-attaches to the publish already held by paho instead of publishing a
  second copy; a new copy is published only after a failure PUBACK. Duplicates that still reach the cloud
  (PUBACK lost with the connection) land once by ``(gateway, seq)``.
- In-flight window: the uploader keeps one batch in flight (the next one is read and encoded meanwhile), so
  at most one publish awaits its PUBACK; paho is bounded to :data:`MAX_INFLIGHT` in flight and
  :data:`MAX_QUEUED` held messages, and a payload to ``max_payload_bytes``.

Threads: paho runs its network loop in its own thread (``loop_start``); every paho callback only hands its
arguments to the event loop with ``call_soon_threadsafe``; all state lives on the loop. ``publish`` (thread-safe
in paho, non-blocking) is called on the loop; ``disconnect``/``loop_stop`` (which join the paho thread) run in a
worker thread. :class:`MqttDelivery` is used from the event-loop thread only, as an async context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud_sync.codec import CONTENT_TYPE
from cloud_sync.errors import AuthRejected, BatchRejected, RetryableUpload
from gateway.config import SinkConfig

log = logging.getLogger(__name__)

MAX_INFLIGHT: Final = 2  # paho: publishes awaiting PUBACK at once (the uploader needs 1)
MAX_QUEUED: Final = 4  # paho: messages held in all (in flight + waiting); beyond it publish() refuses
WORST_CASE_ROW_BYTES: Final = 96  # bound of one reading's share of a payload (incompressible values, names)
PACKET_OVERHEAD_BYTES: Final = 128  # bound of a PUBLISH packet's bytes besides payload, topic and key
IDEMPOTENCY_PROPERTY: Final = "idempotency-key"  # MQTT v5 user property carrying the batch key
DEFAULT_PORTS: Final = {"mqtt": 1883, "mqtts": 8883}

# TLS alerts the *broker* sends about *our* certificate: permanent until the identity is fixed.
_AUTH_ALERTS: Final = re.compile(
    r"ALERT_(UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_REQUIRED|CERTIFICATE_REVOKED|CERTIFICATE_EXPIRED|"
    r"CERTIFICATE_UNKNOWN|UNSUPPORTED_CERTIFICATE|ACCESS_DENIED)"
)
# CONNACK reason codes that refuse the identity: client id not valid, bad user name or password, not
# authorised, banned, bad authentication method.
_AUTH_CONNACK: Final = frozenset({0x85, 0x86, 0x87, 0x8A, 0x8C})
_PUBACK_AUTH: Final = frozenset({0x87})  # not authorised: the ACL refuses this topic for our identity
_PUBACK_REJECT: Final = frozenset({0x83, 0x90, 0x95, 0x99})  # impl. error (Mosquitto: over message_size_limit),
# topic name invalid, packet too large, payload format invalid
_NO_SUBSCRIBERS: Final = 0x10


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    host: str
    port: int
    tls: bool


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_mqtt_url(url: str) -> MqttEndpoint:
    """``mqtts://host[:8883]`` or ``mqtt://host[:1883]`` (plain MQTT only to a loopback host); ValueError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"expected an mqtts://host:port URL, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"an MQTT URL is only scheme://host:port, got {url!r} (the topic comes from topic_prefix)")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as e:
        raise ValueError(f"bad port in {url!r}: {e}") from e
    tls = parts.scheme == "mqtts"
    if not tls and not is_loopback(parts.hostname):
        raise ValueError(
            f"plain mqtt:// only to a loopback host (got {parts.hostname!r}): use mqtts:// with a client certificate"
        )
    return MqttEndpoint(parts.hostname, port, tls)


def topic_for(prefix: str, gateway_id: str) -> str:
    return f"{prefix}/{gateway_id}/batches"


def tls_client_context(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    """Verifies the broker (``ca_file`` or the system CAs, with its host name) and presents our certificate."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file is not None and key_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def is_auth_alert(text: str) -> bool:
    """True when ``text`` (an SSL error) is a TLS alert from the peer refusing our certificate."""
    return _AUTH_ALERTS.search(text) is not None


class ReportingClient(mqtt.Client):
    """paho's client, reporting why a (re)connection attempt failed: paho's network thread calls
    ``on_reconnect_error(exc)`` (which must not block) before the exception reaches paho's retry loop.

    It also closes the TLS socket of a failed handshake (paho 2.x drops it unclosed: a ResourceWarning and an
    fd held until garbage collection). Only contexts that check the host name themselves are used here.
    """

    on_reconnect_error: Callable[[BaseException], None] | None = None

    def reconnect(self) -> MQTTErrorCode:
        try:
            return super().reconnect()
        except (OSError, ValueError) as e:
            cb = self.on_reconnect_error
            if cb is not None:
                cb(e)
            raise

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        ctx = self._ssl_context
        assert ctx is not None and ctx.check_hostname, "ReportingClient needs a host-name-checking SSL context"
        try:
            ssl_sock = ctx.wrap_socket(tcp_sock, server_hostname=self._host, do_handshake_on_connect=False)
        except BaseException:
            tcp_sock.close()
            raise
        try:
            ssl_sock.settimeout(self._connect_timeout)
            ssl_sock.do_handshake()
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock


@dataclass(slots=True)
class _Publish:
    key: str
    mid: int
    done: asyncio.Future[tuple[int, str]] = field(repr=False)  # (reason code, its name) from PUBACK


class MqttDelivery:
    """Publishes batches of one sink (see the module docstring). Event-loop thread only.

    ``reconnect_min_s``/``reconnect_max_s``: paho's reconnect backoff (doubling); the default maximum is
    ``sink.retry_max_s``. ``sink.timeout_s`` bounds one connection attempt and the wait for a PUBACK.
    """

    def __init__(self, sink: SinkConfig, gateway_id: str, *, reconnect_min_s: int = 1,
                 reconnect_max_s: int | None = None) -> None:  # fmt: skip
        self.sink = sink
        self.gateway_id = gateway_id
        self.endpoint = parse_mqtt_url(sink.url)
        self.topic = topic_for(sink.topic_prefix, gateway_id)
        self.client_id = sink.client_id or gateway_id
        self._reconnect = (max(1, reconnect_min_s), max(1, reconnect_max_s or int(sink.retry_max_s)))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: ReportingClient | None = None
        # loop-thread state
        self._connected = False
        self._lost: asyncio.Future[str] | None = None  # resolved (with the reason) when this connection ends
        self._outcome: asyncio.Future[None] | None = None  # resolved at the next connect success/failure/loss
        self._last_error = "not connected yet"
        self._broker_max_packet: int | None = None  # CONNACK Maximum Packet Size, when the broker sends one
        self._closing = False  # __aexit__ started: our own disconnect is not worth a warning
        self._last_error_fresh = False  # an error was logged since the last disconnect (it names the cause)
        self._auth_error = ""  # non-empty: the broker refused our identity (permanent)
        self._by_mid: dict[int, _Publish] = {}
        self._by_key: dict[str, _Publish] = {}

    # ----------------------------------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> MqttDelivery:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._lost = loop.create_future()
        self._lost.set_result("not connected yet")
        self._outcome = loop.create_future()
        client = ReportingClient(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5, reconnect_on_failure=True
        )
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.max_queued_messages_set(MAX_QUEUED)
        client.reconnect_delay_set(*self._reconnect)
        client.connect_timeout = self.sink.timeout_s
        if self.endpoint.tls:
            try:
                ctx = tls_client_context(self.sink.ca_file, self.sink.cert_file, self.sink.key_file)
            except (OSError, ssl.SSLError) as e:
                self._auth_error = f"cannot use the TLS files of sink {self.sink.name!r}: {e}"
                return self
            client.tls_set_context(ctx)
        client.on_connect = self._cb_connect
        client.on_disconnect = self._cb_disconnect
        client.on_publish = self._cb_publish
        client.on_log = self._cb_log
        client.on_reconnect_error = self._cb_reconnect_error
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0  # nothing to keep broker-side: unacked publishes are re-sent by us
        client.connect_async(self.endpoint.host, self.endpoint.port, self.sink.keepalive_s, clean_start=True,
                             properties=props)  # fmt: skip
        client.loop_start()
        self._client = client
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        self._closing = True
        if client is not None:
            await asyncio.to_thread(_shutdown, client)
        self._connected = False
        self._by_mid.clear()
        self._by_key.clear()

    # ----------------------------------------------------------------------------------------------- send
    async def send(self, body: bytes, key: str) -> dict[str, Any]:
        """Publish ``body`` (QoS 1) and return after its PUBACK; see the module docstring for the errors."""
        if self._auth_error:
            raise AuthRejected(self._auth_error)
        if len(body) > self.sink.max_payload_bytes:
            raise BatchRejected(
                f"batch {key} is {len(body)} bytes, over max_payload_bytes ({self.sink.max_payload_bytes}) of sink "
                f"{self.sink.name!r}: lower batch_size",
                413,
            )
        assert self._client is not None, "use MqttDelivery as an async context manager"
        pub = self._by_key.get(key)
        if pub is None or not pub.done.done():
            if not self._connected:
                await self._await_outcome(self.sink.timeout_s)
                if self._auth_error:
                    raise AuthRejected(self._auth_error)
                if not self._connected:
                    raise RetryableUpload(f"not connected to {self.sink.url}: {self._last_error}")
            if pub is None:
                self._check_packet_size(body, key)
                pub = self._publish(body, key)
            lost = self._lost
            assert lost is not None
            waits: set[asyncio.Future[Any]] = {pub.done, lost}
            done, _ = await asyncio.wait(waits, timeout=self.sink.timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if pub.done not in done:
                if self._auth_error:
                    raise AuthRejected(self._auth_error)
                if lost in done:
                    raise RetryableUpload(f"connection to {self.sink.url} lost before the PUBACK of {key}: "
                                          f"{lost.result()}")  # fmt: skip
                raise RetryableUpload(f"no PUBACK for {key} from {self.sink.url} within {self.sink.timeout_s} s")
        self._by_key.pop(key, None)
        code, name = pub.done.result()
        return self._judge(code, name, key)

    def _check_packet_size(self, body: bytes, key: str) -> None:
        overhead = PACKET_OVERHEAD_BYTES + len(self.topic.encode()) + len(key.encode())
        if self._broker_max_packet is not None and len(body) + overhead > self._broker_max_packet:
            raise BatchRejected(
                f"batch {key} ({len(body)} bytes) does not fit the broker's Maximum Packet Size "
                f"({self._broker_max_packet}): lower batch_size of sink {self.sink.name!r}",
                413,
            )

    def _publish(self, body: bytes, key: str) -> _Publish:
        assert self._client is not None and self._loop is not None
        for k in [k for k, p in self._by_key.items() if p.done.done()]:  # answered, never collected
            del self._by_key[k]
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [(IDEMPOTENCY_PROPERTY, key)]
        props.ContentType = CONTENT_TYPE
        info = self._client.publish(self.topic, body, qos=1, properties=props)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):  # NO_CONN: held, sent
            raise RetryableUpload(f"publish of {key} refused by the MQTT client: {mqtt.error_string(info.rc)}")
        pub = _Publish(key, info.mid, self._loop.create_future())
        self._by_mid[info.mid] = pub
        self._by_key[key] = pub
        return pub

    def _judge(self, code: int, name: str, key: str) -> dict[str, Any]:
        if code < 0x80 and code != _NO_SUBSCRIBERS:
            return {"puback": name, "reason_code": code, "topic": self.topic}
        msg = f"broker {self.sink.url} answered the publish of {key} on {self.topic} with 0x{code:02X} {name}"
        if code == _NO_SUBSCRIBERS:
            raise RetryableUpload(f"{msg}: the batch was dropped (no persistent subscriber session on the topic)")
        if code in _PUBACK_AUTH:
            raise AuthRejected(f"{msg}: the broker's ACL refuses this topic for client certificate "
                               f"{self.gateway_id!r}", 403)  # fmt: skip
        if code in _PUBACK_REJECT:
            raise BatchRejected(f"{msg} (over the broker's message size limit? lower batch_size)", 400)
        raise RetryableUpload(msg)

    async def _await_outcome(self, timeout: float) -> None:
        if self._outcome is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._outcome), timeout)

    # ---------------------------------------------------- paho callbacks (paho's thread): hand over to the loop
    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(fn, *args)

    def _cb_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, rc: ReasonCode,
                    props: Properties | None) -> None:  # fmt: skip
        max_packet = getattr(props, "MaximumPacketSize", None) if props is not None else None
        self._post(self._on_connect, rc.value, str(rc), max_packet)

    def _cb_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags, rc: ReasonCode,
                       props: Properties | None) -> None:  # fmt: skip
        self._post(self._on_disconnect, str(rc))

    def _cb_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode,
                    props: Properties | None) -> None:  # fmt: skip
        self._post(self._on_puback, mid, rc.value, str(rc))

    def _cb_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and not buf.startswith("Client is not connected"):  # that one names no cause
            self._post(self._on_error, buf)

    def _cb_reconnect_error(self, exc: BaseException) -> None:
        self._post(self._on_error, f"{type(exc).__name__}: {exc}", True)

    # ------------------------------------------------------------------------------------- loop-thread side
    def _signal_outcome(self) -> None:
        assert self._loop is not None
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result(None)
        self._outcome = self._loop.create_future()

    def _on_connect(self, code: int, name: str, max_packet: int | None = None) -> None:
        assert self._loop is not None
        if code == 0:
            self._connected = True
            self._broker_max_packet = max_packet
            self._lost = self._loop.create_future()
            log.info("sink %r: connected to %s as %r", self.sink.name, self.sink.url, self.client_id)
        elif code in _AUTH_CONNACK:
            self._auth_error = f"broker {self.sink.url} refused client {self.client_id!r}: CONNACK 0x{code:02X} {name}"
        else:
            self._last_error = f"broker {self.sink.url} refused the connection: CONNACK 0x{code:02X} {name}"
        self._signal_outcome()

    def _on_disconnect(self, reason: str) -> None:
        was = self._connected
        self._connected = False
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(self._last_error if self._last_error_fresh else reason)
        if was and not self._closing:
            log.warning("sink %r: disconnected from %s: %s", self.sink.name, self.sink.url, reason)
        if not self._last_error_fresh:
            self._last_error = f"disconnected: {reason}"
        self._last_error_fresh = False
        self._signal_outcome()

    def _on_error(self, text: str, attempt_failed: bool = False) -> None:
        if is_auth_alert(text):
            self._auth_error = (
                f"broker {self.sink.url} refused the client certificate of sink {self.sink.name!r} "
                f"({self.sink.cert_file}): {text}"
            )
        self._last_error = text
        self._last_error_fresh = not attempt_failed
        if attempt_failed:
            self._signal_outcome()

    def _on_puback(self, mid: int, code: int, name: str) -> None:
        pub = self._by_mid.pop(mid, None)
        if pub is not None and not pub.done.done():
            pub.done.set_result((code, name))


def _shutdown(client: mqtt.Client) -> None:
    """Worker thread: end the session and join paho's thread (a pending PUBACK is abandoned; the uploader
    re-sends that batch on its next start)."""
    client.disconnect()
    client.loop_stop()

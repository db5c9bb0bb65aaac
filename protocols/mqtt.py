"""MQTT sensor ingest: a :class:`~protocols.session.SessionDriver` that subscribes to sensor topics on a broker.

One driver = one MQTT client session with one broker (one ``protocol = "mqtt"`` link). The link's devices are
the known sensors (``sensors`` of each ``[[links.mqtt.topics]]``), one device per sensor id; a message on
``sensors/pv-0042/readings`` belongs to device ``pv-0042`` (the topic level ``device_level``). Each configured
JSON field of the payload becomes one reading (float64) of ``<sensor>.<point>``. See docs/analytics.md, "MQTT
sensors", for the payload, the quarantine reasons and the measured rates.

Who does what (:mod:`protocols.session`): the :class:`~gateway.session_runner.SessionRunner` reconnects with
back-off and marks every sensor point QUESTIONABLE|OLD_DATA|FAILURE while the broker is gone; this driver
connects (CONNACK), subscribes every topic filter with QoS 1 after *every* connect (``start_session``: a
restarted broker may have lost a persistent session), and turns messages into readings in :meth:`idle`. It
never retries and never sleeps beyond the time it is given; paho's own reconnect is off.

Validation: a message is checked before anything of it is stored. Message-level faults (``malformed-json``,
``not-object``, ``unknown-sensor``, ``bad-timestamp``, ``future-timestamp``, ``stale-timestamp``,
``no-fields``) quarantine the whole message: no reading. Field-level faults quarantine the message once (the
first fault names the reason, ``detail`` lists all) while its other fields are stored: a ``non-numeric``
field gives no reading; an ``out-of-range`` field is stored with ``INVALID|OUT_OF_RANGE`` (its raw value
kept for diagnosis). Quarantined records go to ``on_quarantine`` (the gateway writes them to the store's
``quarantine`` table off the loop); without one they are kept in :attr:`MqttSession.quarantine_pending`.

Threads: paho runs its network loop in its own thread (``loop_start``). Its callbacks never touch driver state
other than the thread-safe inbox (a ``collections.deque``: ``append`` on the paho thread, ``popleft`` on the
loop) and flags, and wake the loop with ``loop.call_soon_threadsafe``. Every other method runs on the runner's
event loop. ``wall_ns`` is called on the paho thread too (receive time): it must be thread-safe.
``close()`` stops paho's thread (joins it; bounded, the thread only waits in ``select``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import LinkConfig, MqttTopicConfig
from gateway.model import Q, QuarantineRecord, ReadingBatch
from protocols.session import (
    ControlRequest,
    ControlResult,
    ControlStatus,
    Deliver,
    DriverError,
    Job,
    SessionLost,
)

__all__ = ["QUARANTINE_REASONS", "MqttSession", "parse_timestamp"]

log = logging.getLogger(__name__)

# reason → what it means (docs/analytics.md lists the same table)
QUARANTINE_REASONS: Final[dict[str, str]] = {
    "malformed-json": "payload is not UTF-8 JSON",
    "not-object": "payload is JSON but not an object",
    "unknown-sensor": "the topic names a sensor that is not in the topic's sensors list",
    "bad-timestamp": "the timestamp field is not a number or an ISO-8601 time with a zone",
    "future-timestamp": "the source time is more than max_future_s ahead of the gateway clock",
    "stale-timestamp": "the source time is more than max_age_s old",
    "no-fields": "none of the configured fields is in the message",
    "non-numeric": "a configured field is not a number (that field is not stored; the others are)",
    "out-of-range": "a field is outside its min..max (stored as invalid|out-of-range; the others are good)",
}
MAX_PAYLOAD_KEPT: Final = 65536  # bytes of a quarantined payload kept in the store (the rest is cut, said in detail)
WAKE_AT_MESSAGES: Final = 5000  # inbox length that ends an idle slice early (else one batch per slice)
PENDING_QUARANTINE_MAX: Final = 10000  # records kept when no on_quarantine sink is given (beyond: counted lost)
TOPIC_CACHE_MAX: Final = 100_000  # topic → (rule, device) lookups remembered
Q_OUT_OF_RANGE: Final = int(Q.INVALID | Q.OUT_OF_RANGE)
_NS: Final[dict[str, int]] = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def parse_timestamp(v: Any, unit: str) -> int | None:
    """Epoch ns from a JSON timestamp value, or None when it is not one.

    ``unit``: ``"iso"`` (ISO-8601 text with a zone, e.g. ``2026-11-24T10:00:00.5Z``), ``"s"``, ``"ms"``,
    ``"us"``, ``"ns"`` (epoch numbers), or ``"auto"``: text is ISO-8601, a number's unit follows from its
    magnitude (< 1e11 s, < 1e14 ms, < 1e17 µs, else ns: any time between 1973 and 5138 is read right).
    Fractional numbers are read to the microsecond.
    """
    if isinstance(v, str):
        if unit not in ("auto", "iso"):
            return None
        try:
            t = dt.datetime.fromisoformat(v)
        except ValueError:
            return None
        if t.tzinfo is None:
            return None
        delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    if isinstance(v, bool) or not isinstance(v, int | float) or unit == "iso":
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if unit == "auto":
        a = abs(v)
        unit = "s" if a < 1e11 else "ms" if a < 1e14 else "us" if a < 1e17 else "ns"
    mult = _NS[unit]
    if isinstance(v, int):
        return v * mult
    # a float epoch has ~16 significant digits: read it to the microsecond (exact for µs-rounded values)
    return round(v * (mult // 1000)) * 1000 if mult >= 1000 else round(v * mult)


@dataclass(eq=False, slots=True)
class _Rule:
    """One topic filter, compiled for the hot path."""

    cfg: MqttTopicConfig
    level: int  # topic level naming the sensor
    ids: dict[str, tuple[int, ...]]  # sensor → point id per field (field order)
    fields: tuple[tuple[str, float, float, float, float], ...]  # (json field, min, max, scale, offset)
    max_future_ns: int
    max_age_ns: int


class MqttSession:
    """The MQTT sensor driver (see the module docstring).

    :param link: a ``protocol = "mqtt"`` link (``link.mqtt`` holds the session settings and topics).
    :param point_ids: ``"sensor.point"`` → store id for every sensor point of the link.
    :param deliver: the runner's sink, called on the loop with one batch per idle slice.
    :param wall_ns: UTC epoch ns (receive time; called on paho's thread too).
    :param on_quarantine: takes refused records on the loop, non-blocking (the gateway stores them off the
        loop); None keeps them in :attr:`quarantine_pending`.
    :param default_client_id: the client id when the link's ``client_id`` is empty.
    """

    def __init__(
        self,
        link: LinkConfig,
        point_ids: Mapping[str, int],
        deliver: Deliver,
        *,
        wall_ns: Callable[[], int] = time.time_ns,
        on_quarantine: Callable[[list[QuarantineRecord]], None] | None = None,
        default_client_id: str = "",
    ) -> None:
        if link.protocol != "mqtt":
            raise ValueError(f"link {link.name}: MqttSession needs protocol mqtt, not {link.protocol}")
        self.link = link
        self.settings = link.mqtt
        self._deliver = deliver
        self._wall = wall_ns
        self._on_quarantine = on_quarantine
        self.client_id = self.settings.client_id or default_client_id or f"substation-gateway-{link.name}"
        self._rules: list[_Rule] = []
        for t in self.settings.topics:
            fields = tuple((f.field, f.min, f.max, f.scale, f.offset) for f in t.fields)
            ids = {s: tuple(int(point_ids[f"{s}.{f.point}"]) for f in t.fields) for s in t.sensors}
            self._rules.append(
                _Rule(t, t.device_level, ids, fields, round(t.max_future_s * 1e9), round(t.max_age_s * 1e9))
            )
        self._topic_cache: dict[str, tuple[_Rule | None, str]] = {}
        # paho thread → loop
        self._inbox: collections.deque[tuple[str, bytes | bytearray, int]] = collections.deque()
        self._wake_pending = False
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._acks: asyncio.Event | None = None
        self._connack: asyncio.Future[tuple[bool, str]] | None = None
        self._subacks: dict[int, list[Any]] = {}
        self._connected = False  # written by paho callbacks (on_connect/on_disconnect) and close()
        self._disconnect_reason = ""
        # counters (loop thread)
        self.messages = 0  # messages taken from the inbox
        self.readings = 0  # readings delivered
        self.quarantined = 0  # records quarantined
        self.by_reason: dict[str, int] = {}
        self.quarantine_pending: list[QuarantineRecord] = []  # without on_quarantine: kept here
        self.quarantine_lost = 0  # beyond PENDING_QUARANTINE_MAX without a sink (a misuse; logged)
        self.connects = 0
        self.session_present = False
        self.largest_batch = 0  # most readings in one delivered batch

    # ------------------------------------------------------------------------------------------ contract
    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        """Open the TCP (TLS) connection and wait for the broker's CONNACK (``connect_timeout_s``)."""
        self.close()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._wake = asyncio.Event()
        self._acks = asyncio.Event()
        self._connack = loop.create_future()
        self._subacks = {}
        s = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=s.clean_session,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,  # the runner owns reconnecting
        )
        client.connect_timeout = self.link.connect_timeout_s
        if s.username:
            client.username_pw_set(s.username, s.password or None)
        if s.ca_file is not None:
            client.tls_set(
                ca_certs=str(s.ca_file),
                certfile=str(s.cert_file) if s.cert_file else None,
                keyfile=str(s.key_file) if s.key_file else None,
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        try:
            await asyncio.to_thread(client.connect, self.link.host, self.link.port, s.keepalive_s)
        except (OSError, ValueError) as e:
            self._client = None
            raise SessionLost(f"cannot connect to broker {self.link.host}:{self.link.port}: {e}") from e
        client.loop_start()
        try:
            ok, why = await asyncio.wait_for(asyncio.shield(self._connack), self.link.connect_timeout_s)
        except TimeoutError:
            raise SessionLost(f"no CONNACK from {self.link.host}:{self.link.port} within "
                              f"{self.link.connect_timeout_s} s") from None  # fmt: skip
        if not ok:
            raise SessionLost(f"broker {self.link.host}:{self.link.port} refused the connection: {why}")
        self.connects += 1

    async def start_session(self) -> None:
        """Subscribe every topic filter with QoS 1 (after every connect) and wait for the SUBACK."""
        client, acks = self._client, self._acks
        if client is None or acks is None or not self._connected:
            raise SessionLost("not connected")
        filters = [r.cfg.filter for r in self._rules]
        rc, mid = client.subscribe([(f, 1) for f in filters])
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise SessionLost(f"subscribe failed: {mqtt.error_string(rc)}")
        deadline = time.monotonic() + self.link.connect_timeout_s
        while mid not in self._subacks:
            left = deadline - time.monotonic()
            if left <= 0 or not self._connected:
                raise SessionLost(f"no SUBACK for {', '.join(filters)}")
            acks.clear()
            if mid in self._subacks:
                break
            try:
                await asyncio.wait_for(acks.wait(), left)
            except TimeoutError:
                continue
        codes = self._subacks.pop(mid)
        refused = [f for f, c in zip(filters, codes, strict=False) if c.is_failure]
        if refused:
            raise DriverError(f"broker refused the subscription of {', '.join(refused)}")

    def jobs(self) -> Sequence[Job]:
        return ()

    async def run_job(self, name: str) -> None:
        raise DriverError(f"mqtt has no job {name!r}")

    async def idle(self, timeout_s: float) -> None:
        """Collect messages for ``timeout_s`` (less when ``WAKE_AT_MESSAGES`` wait or the broker is lost), then
        turn everything received into ONE batch and the refused records into quarantine records."""
        wake = self._wake
        if wake is not None and len(self._inbox) < WAKE_AT_MESSAGES and self._connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(0.0, timeout_s))
        if wake is not None:
            wake.clear()
        self._wake_pending = False
        self._process()
        if not self._connected:
            raise SessionLost(f"broker connection lost: {self._disconnect_reason or 'closed'}")

    async def select(self, request: ControlRequest) -> ControlResult:
        return ControlResult(ControlStatus.NOT_SUPPORTED, "MQTT sensors take no controls")

    async def operate(self, request: ControlRequest) -> ControlResult:
        return ControlResult(ControlStatus.NOT_SUPPORTED, "MQTT sensors take no controls")

    async def cancel(self, request: ControlRequest) -> ControlResult:
        return ControlResult(ControlStatus.NOT_SUPPORTED, "MQTT sensors take no controls")

    def status(self) -> dict[str, object]:
        return {
            "broker": f"{self.link.host}:{self.link.port}",
            "client_id": self.client_id,
            "subscriptions": len(self._rules),
            "session_present": self.session_present,
            "messages": self.messages,
            "readings": self.readings,
            "quarantined": self.quarantined,
            "quarantine": dict(self.by_reason),
            "inbox": len(self._inbox),
            "largest_batch": self.largest_batch,
        }

    def close(self) -> None:
        """Disconnect and stop paho's thread (idempotent). Messages already received stay in the inbox and are
        delivered by the next :meth:`idle` after a reconnect."""
        client, self._client = self._client, None
        self._connected = False
        if client is None:
            return
        with contextlib.suppress(OSError, ValueError):
            client.disconnect()
        client.loop_stop()

    # ------------------------------------------------------------------------------------------ paho thread
    def _signal(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or self._wake_pending:
            return
        self._wake_pending = True
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(wake.set)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        ok = not reason.is_failure
        self._connected = ok
        self.session_present = bool(getattr(flags, "session_present", False))
        fut, loop = self._connack, self._loop
        if fut is not None and loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, fut, (ok, str(reason)))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected = False
        self._disconnect_reason = str(reason)
        self._wake_pending = False
        self._signal()
        acks, loop = self._acks, self._loop
        if acks is not None and loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(acks.set)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: list[Any], props: Any) -> None:
        self._subacks[mid] = list(codes)
        acks, loop = self._acks, self._loop
        if acks is not None and loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(acks.set)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.append((msg.topic, msg.payload, self._wall()))
        if len(self._inbox) >= WAKE_AT_MESSAGES:
            self._signal()

    # ------------------------------------------------------------------------------------------ hot path (loop)
    def _route(self, topic: str) -> tuple[_Rule | None, str]:
        hit = self._topic_cache.get(topic)
        if hit is not None:
            return hit
        levels = topic.split("/")
        found: tuple[_Rule | None, str] = (None, "")
        for r in self._rules:
            if mqtt.topic_matches_sub(r.cfg.filter, topic):
                found = (r, levels[r.level] if r.level < len(levels) else "")
                break
        if len(self._topic_cache) >= TOPIC_CACHE_MAX:
            self._topic_cache.clear()
        self._topic_cache[topic] = found
        return found

    def _process(self) -> None:
        """Drain the inbox: one ReadingBatch for every valid field, one quarantine record per refused message."""
        inbox = self._inbox
        n = len(inbox)
        if not n:
            return
        ts_l: list[int] = []
        pid_l: list[int] = []
        val_l: list[float] = []
        q_l: list[int] = []
        bad: list[QuarantineRecord] = []
        loads = json.loads
        for _ in range(n):
            topic, payload, recv = inbox.popleft()
            rule, device = self._route(topic)
            msg = (topic, payload, recv, device)

            ids = rule.ids.get(device) if rule is not None else None
            if rule is None or ids is None:
                refuse(bad, msg, "unknown-sensor", f"sensor {device!r} is not configured for this topic")
                continue
            try:
                obj = loads(payload)
            except (ValueError, UnicodeDecodeError) as e:
                refuse(bad, msg, "malformed-json", str(e)[:200])
                continue
            if type(obj) is not dict:
                refuse(bad, msg, "not-object", f"JSON {type(obj).__name__}, expected an object")
                continue
            cfg = rule.cfg
            q0 = 0
            ts = recv
            tsf = cfg.timestamp_field
            if tsf and tsf in obj:
                raw_ts = obj[tsf]
                src = parse_timestamp(raw_ts, cfg.timestamp_unit)
                if src is None:
                    refuse(bad, msg, "bad-timestamp", f"{tsf}={raw_ts!r} is not a timestamp ({cfg.timestamp_unit})")
                    continue
                if src - recv > rule.max_future_ns:
                    refuse(bad, msg, "future-timestamp", f"{tsf}={raw_ts!r} is {(src - recv) / 1e9:.1f} s ahead "
                                               f"(max_future_s {cfg.max_future_s:g})")  # fmt: skip
                    continue
                if recv - src > rule.max_age_ns:
                    refuse(bad, msg, "stale-timestamp", f"{tsf}={raw_ts!r} is {(recv - src) / 1e9:.0f} s old "
                                              f"(max_age_s {cfg.max_age_s:g})")  # fmt: skip
                    continue
                ts = src
            else:
                q0 = int(Q.GATEWAY_TIME)
            faults: list[tuple[str, str]] = []
            found = 0
            for (name, lo, hi, scale, offset), pid in zip(rule.fields, ids, strict=True):
                v = obj.get(name)
                if v is None:
                    continue
                found += 1
                if type(v) is not float and type(v) is not int:
                    faults.append(("non-numeric", f"{name}={v!r} is not a number"))
                    continue
                x = v * scale + offset
                if lo <= x <= hi:
                    q = q0
                else:
                    q = q0 | Q_OUT_OF_RANGE
                    faults.append(("out-of-range", f"{name}={x:g} outside {lo:g}..{hi:g}"))
                ts_l.append(ts)
                pid_l.append(pid)
                val_l.append(x)
                q_l.append(q)
            if not found:
                refuse(bad, msg, "no-fields", f"none of {', '.join(f[0] for f in rule.fields)} in the message")
            elif faults:
                refuse(bad, msg, faults[0][0], "; ".join(d for _, d in faults))
        self.messages += n
        if ts_l:
            batch = ReadingBatch(
                np.array(ts_l, dtype=np.int64),
                np.array(pid_l, dtype=np.int32),
                np.array(val_l, dtype=np.float64),
                np.array(q_l, dtype=np.uint16),
            )
            self.readings += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            self._deliver(batch)
        if bad:
            self._quarantine(bad)

    def _quarantine(self, records: list[QuarantineRecord]) -> None:
        self.quarantined += len(records)
        for r in records:
            self.by_reason[r.reason] = self.by_reason.get(r.reason, 0) + 1
        if self._on_quarantine is not None:
            self._on_quarantine(records)
            return
        room = PENDING_QUARANTINE_MAX - len(self.quarantine_pending)
        self.quarantine_pending.extend(records[: max(0, room)])
        if room < len(records):
            self.quarantine_lost += len(records) - max(0, room)
            log.error("link %s: %d quarantine records lost (no quarantine sink)", self.link.name, self.quarantine_lost)


def refuse(out: list[QuarantineRecord], msg: tuple[str, bytes | bytearray, int, str], reason: str, detail: str) -> None:
    """Append the quarantine record of message ``msg`` = (topic, payload, receive ns, device)."""
    topic, payload, recv, device = msg
    if len(payload) > MAX_PAYLOAD_KEPT:
        detail = f"{detail} (payload of {len(payload)} bytes cut to {MAX_PAYLOAD_KEPT})"
        payload = payload[:MAX_PAYLOAD_KEPT]
    out.append(QuarantineRecord(recv, device, topic, reason, detail, bytes(payload)))


def _resolve(fut: asyncio.Future[tuple[bool, str]], value: tuple[bool, str]) -> None:
    if not fut.done():
        fut.set_result(value)

"""MQTT uplink end to end: a real Store, the real Uploader with MqttDelivery, a private Mosquitto (TLS, client
certificates, ACL, persistence) and the MQTT bridge landing into a DuckDB receiver file. Faults are real:
the broker is stopped, frozen (SIGSTOP), killed and restarted; the bridge goes away and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from cloud_sync.errors import AuthRejected, BatchRejected, RetryableUpload
from cloud_sync.mqtt_sink import MqttDelivery, parse_mqtt_url
from cloud_sync.receiver import DuckDBBackend
from cloud_sync.receiver.mqtt_bridge import MISMATCH_REASON, MqttBridge
from cloud_sync.uploader import Uploader
from gateway.config import SinkConfig
from gateway.config_load import ConfigError, load_config
from storefwd.store import Store
from tests.cloud_sync.conftest import GATEWAY, as_batch, point_infos, rows_table
from tests.cloud_sync.mqtt_broker import BRIDGE_ID, Mosquitto, Pki, make_pki
from tests.waiting import wait_for, wait_for_async

OTHER = "sub-south-02"
WAIT_S = 60.0  # generous bound for an outcome on a loaded machine (never an assertion on elapsed time)


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", [GATEWAY, OTHER])


@pytest.fixture
def broker(tmp_path: Path, pki: Pki) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", pki) as b:
        yield b


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "gw.duckdb", commit_interval_ms=5) as s:
        s.register_points(list(point_infos().values()))
        yield s


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[DuckDBBackend]:
    b = DuckDBBackend(tmp_path / "receiver.duckdb")
    try:
        yield b
    finally:
        await b.aclose()


def fill(store: Store, n: int, first_seq: int = 1) -> pa.Table:
    rows = rows_table(n, first_seq=first_seq, seed=first_seq)
    assert store.offer(as_batch(rows))
    assert store.flush() == first_seq + n - 1
    return rows


def mqtt_sink(broker: Mosquitto, pki: Pki, identity: str = GATEWAY, **kw: Any) -> SinkConfig:
    ident = pki.rogue if identity == "rogue" else pki.clients[identity]
    base: dict[str, Any] = {"name": "cloud", "url": broker.url, "type": "mqtt", "ca_file": pki.ca,
                            "cert_file": ident.cert, "key_file": ident.key, "batch_size": 1000,
                            "max_interval_s": 0.0, "timeout_s": 5.0, "retry_max_s": 1.0}  # fmt: skip
    base.update(kw)
    return SinkConfig(**base)


def uploader(store: Store, sink: SinkConfig, gateway_id: str = GATEWAY, topic_gateway: str | None = None) -> Uploader:
    delivery = MqttDelivery(sink, topic_gateway or gateway_id)
    return Uploader(store, sink, gateway_id, delivery=delivery, backoff_min_s=0.05)


@contextlib.asynccontextmanager
async def running(up: Uploader) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(up.run())
    try:
        yield task
    finally:
        up.stop()
        await asyncio.wait_for(task, WAIT_S)


@contextlib.asynccontextmanager
async def bridge_running(backend: DuckDBBackend, broker: Mosquitto, pki: Pki, **kw: Any) -> AsyncIterator[MqttBridge]:
    ident = pki.clients[BRIDGE_ID]
    bridge = MqttBridge(backend, broker.url, ca_file=pki.ca, cert_file=ident.cert, key_file=ident.key,
                        client_id=BRIDGE_ID, **kw)  # fmt: skip
    async with bridge:
        task = asyncio.create_task(bridge.run())
        try:
            await asyncio.wait_for(bridge.wait_subscribed(), WAIT_S)
            yield bridge
        finally:
            bridge.stop()
            await asyncio.wait_for(task, WAIT_S)


async def landed(backend: DuckDBBackend, gateway: str = GATEWAY) -> tuple[int, int, int, int]:
    """(rows, distinct seqs, min seq, max seq) landed for ``gateway``."""
    (row,) = await backend.query(
        "SELECT count(*), count(DISTINCT r.seq), coalesce(min(r.seq), 0), coalesce(max(r.seq), 0) "
        "FROM readings r JOIN gateways g USING (gw) WHERE g.gateway_id = ?",
        [gateway],
    )
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


async def wait_landed(backend: DuckDBBackend, n: int, gateway: str = GATEWAY) -> None:
    async def enough() -> bool:
        return (await landed(backend, gateway))[0] >= n

    await wait_for_async(enough, WAIT_S, f"{n} rows landed for {gateway}")


async def acks_grow_by(up: Uploader, n: int) -> None:
    target = up.status()["last_ack_seq"] + n
    await wait_for(lambda: up.status()["last_ack_seq"] >= target, WAIT_S, f"the watermark to reach {target}")


def connected(up: Uploader) -> bool:
    delivery = up._delivery
    assert isinstance(delivery, MqttDelivery)
    return delivery._connected


def pending_publishes(up: Uploader) -> int:
    delivery = up._delivery
    assert isinstance(delivery, MqttDelivery)
    return len(delivery._by_key)


# ------------------------------------------------------------------------------------------------ flows
async def test_rows_flow_end_to_end_and_land_exactly_once(
    store: Store, broker: Mosquitto, pki: Pki, backend: DuckDBBackend
) -> None:
    rows = fill(store, 4500)
    async with bridge_running(backend, broker, pki) as bridge:
        up = uploader(store, mqtt_sink(broker, pki))
        async with running(up):
            await asyncio.wait_for(up.wait_acked(4500), WAIT_S)
            await wait_landed(backend, 4500)
        st = up.status()
        assert (st["state"], st["backlog"], st["uploads"], st["retries"], st["last_error"]) == ("stopped", 0, 5, 0, "")
        assert bridge.stats["landed_batches"] == 5 and bridge.stats["rejected"] == 0
    got = await backend.query(
        "SELECT seq, ts, point_id, value, quality FROM readings ORDER BY seq"
    )
    cols = [rows.column(c).to_pylist() for c in ("seq", "ts", "point_id", "value", "quality")]
    assert got == list(zip(*cols, strict=True))  # bit-exact values, every seq once
    keys = [r[0] for r in await backend.query("SELECT batch_key FROM batches ORDER BY first_seq")]
    assert keys == [f"{GATEWAY}:{a}-{min(a + 999, 4500)}" for a in range(1, 4501, 1000)]  # the user property
    assert store.watermark("cloud") == 4500


async def test_no_subscriber_session_means_no_ack(store: Store, broker: Mosquitto, pki: Pki,
                                                  backend: DuckDBBackend) -> None:  # fmt: skip
    """Before the bridge ever subscribed, the broker drops the publish (PUBACK 0x10): retried, never acked."""
    fill(store, 500)
    up = uploader(store, mqtt_sink(broker, pki))
    async with running(up):
        await asyncio.wait_for(up.wait_state("retrying"), WAIT_S)
        assert "No matching subscribers" in up.status()["last_error"]
        assert store.watermark("cloud") == 0
        async with bridge_running(backend, broker, pki):
            await asyncio.wait_for(up.wait_acked(500), WAIT_S)
            await wait_landed(backend, 500)
    assert await landed(backend) == (500, 500, 1, 500)


async def test_watermark_waits_for_the_puback_of_a_frozen_then_killed_broker(
    store: Store, broker: Mosquitto, pki: Pki, backend: DuckDBBackend
) -> None:
    """The broker is frozen (SIGSTOP) with a publish in flight, then killed: no PUBACK, no ack; after a restart
    the same batch is re-sent and lands once."""
    async with bridge_running(backend, broker, pki):
        up = uploader(store, mqtt_sink(broker, pki, timeout_s=2.0))
        assert broker.proc is not None
        try:
            async with running(up):
                await wait_for(lambda: connected(up), WAIT_S, "the sink to connect")
                broker.proc.send_signal(signal.SIGSTOP)
                fill(store, 1000)
                await wait_for(lambda: pending_publishes(up) == 1, WAIT_S, "a publish in flight")
                await asyncio.wait_for(up.wait_state("retrying"), WAIT_S)  # no PUBACK within timeout_s
                assert store.watermark("cloud") == 0 and up.status()["last_error"].startswith("no PUBACK")
                broker.kill()  # never answered
                assert store.watermark("cloud") == 0
                broker.start()
                await asyncio.wait_for(up.wait_acked(1000), WAIT_S)
                await wait_landed(backend, 1000)
        finally:
            if broker.proc is not None:
                broker.proc.send_signal(signal.SIGCONT)
    assert await landed(backend) == (1000, 1000, 1, 1000)


async def test_broker_restarts_mid_stream_lose_nothing(
    store: Store, broker: Mosquitto, pki: Pki, backend: DuckDBBackend
) -> None:
    """Rows keep being committed while the broker restarts twice (SIGTERM: it saves its persistence file);
    afterwards every committed seq landed exactly once."""
    total = 0
    stop_producing = asyncio.Event()

    async def produce() -> None:
        nonlocal total
        while not stop_producing.is_set():
            await asyncio.to_thread(fill, store, 250, total + 1)  # commits (flush) before the next one
            total += 250

    async with bridge_running(backend, broker, pki):
        up = uploader(store, mqtt_sink(broker, pki, batch_size=400))
        async with running(up):
            producer = asyncio.create_task(produce())
            try:
                for _ in range(2):
                    await acks_grow_by(up, 2000)
                    await asyncio.to_thread(broker.restart, signal.SIGTERM)
                await acks_grow_by(up, 2000)
            finally:
                stop_producing.set()
                await producer
            await asyncio.wait_for(up.wait_acked(total), WAIT_S)
            await wait_landed(backend, total)
    assert await landed(backend) == (total, total, 1, total)


async def test_bridge_restart_gets_what_was_published_while_it_was_away(
    store: Store, broker: Mosquitto, pki: Pki, backend: DuckDBBackend
) -> None:
    async with bridge_running(backend, broker, pki):
        pass  # its persistent session and subscription stay on the broker
    fill(store, 3000)
    up = uploader(store, mqtt_sink(broker, pki))
    async with running(up):
        await asyncio.wait_for(up.wait_acked(3000), WAIT_S)  # the broker holds them for the absent bridge
    assert await landed(backend) == (0, 0, 0, 0)
    broker.restart(signal.SIGTERM)  # the queued messages survive a broker restart too
    async with bridge_running(backend, broker, pki) as bridge:
        await wait_landed(backend, 3000)
        assert bridge.stats["landed_batches"] == 3
    assert await landed(backend) == (3000, 3000, 1, 3000)


# ------------------------------------------------------------------------------------------ identity
async def test_rogue_certificate_stops_the_sink_with_a_clear_error(
    store: Store, broker: Mosquitto, pki: Pki, backend: DuckDBBackend
) -> None:
    fill(store, 200)
    async with bridge_running(backend, broker, pki):
        up = uploader(store, mqtt_sink(broker, pki, identity="rogue"))
        async with running(up) as task:
            assert await asyncio.wait_for(up.wait_state("stopped-auth"), WAIT_S) == "stopped-auth"
            await asyncio.wait_for(task, WAIT_S)
    st = up.status()
    assert "refused the client certificate" in st["last_error"] and "UNKNOWN_CA" in st["last_error"]
    assert store.watermark("cloud") == 0 and st["uploads"] == 0
    assert await landed(backend) == (0, 0, 0, 0)


async def test_acl_lets_a_certificate_publish_only_as_itself(
    store: Store, broker: Mosquitto, pki: Pki, backend: DuckDBBackend
) -> None:
    """A valid certificate of another gateway publishing on this gateway's topic: PUBACK 0x87, stopped-auth."""
    fill(store, 200)
    async with bridge_running(backend, broker, pki):
        up = uploader(store, mqtt_sink(broker, pki, identity=OTHER, client_id=OTHER))
        async with running(up):
            await asyncio.wait_for(up.wait_state("stopped-auth"), WAIT_S)
    assert "Not authorized" in up.status()["last_error"] and "ACL" in up.status()["last_error"]
    assert store.watermark("cloud") == 0
    assert await landed(backend) == (0, 0, 0, 0)


async def test_payload_of_another_gateway_is_quarantined_under_the_topics_gateway(
    store: Store, broker: Mosquitto, pki: Pki, backend: DuckDBBackend
) -> None:
    """OTHER's certificate publishes on its own topic a payload claiming GATEWAY: never landed as readings."""
    fill(store, 300)
    async with bridge_running(backend, broker, pki) as bridge:
        up = uploader(store, mqtt_sink(broker, pki, identity=OTHER, client_id=OTHER), GATEWAY, topic_gateway=OTHER)
        async with running(up):
            await asyncio.wait_for(up.wait_acked(300), WAIT_S)
        await wait_for(lambda: bridge.stats["mismatched"] == 1, WAIT_S, "the bridge to judge the batch")
    assert await landed(backend, GATEWAY) == (0, 0, 0, 0)
    assert await landed(backend, OTHER) == (0, 0, 0, 0)
    q = await backend.query(
        "SELECT g.gateway_id, q.reason, count(*), min(q.seq), max(q.seq) FROM quarantine q JOIN gateways g USING (gw) "
        "GROUP BY ALL"
    )
    assert q == [(OTHER, MISMATCH_REASON, 300, 1, 300)]


async def test_undecodable_payload_is_dead_lettered_and_acknowledged(
    tmp_path: Path, broker: Mosquitto, pki: Pki, backend: DuckDBBackend
) -> None:
    dead = tmp_path / "dead"
    async with bridge_running(backend, broker, pki, dead_letter_dir=dead) as bridge:
        sink = mqtt_sink(broker, pki)
        async with MqttDelivery(sink, GATEWAY) as delivery:
            answer = await delivery.send(b"not arrow", f"{GATEWAY}:1-1")
            assert answer["reason_code"] == 0
        await wait_for(lambda: bridge.stats["rejected"] == 1, WAIT_S, "the bridge to reject it")
    assert [p.suffix for p in sorted(dead.iterdir())] == [".arrows", ".txt"]
    assert await landed(backend) == (0, 0, 0, 0)


# ----------------------------------------------------------------------------------------- unit-ish
async def test_oversized_batch_stops_the_sink_as_rejected(broker: Mosquitto, pki: Pki) -> None:
    sink = mqtt_sink(broker, pki, max_payload_bytes=65536)
    async with MqttDelivery(sink, GATEWAY) as delivery:
        with pytest.raises(BatchRejected, match="over max_payload_bytes"):
            await delivery.send(b"x" * 70000, f"{GATEWAY}:1-2")


async def test_unreachable_broker_is_retryable(pki: Pki) -> None:
    from hil_tests.net import free_port

    ident = pki.clients[GATEWAY]
    sink = SinkConfig(name="cloud", url=f"mqtts://127.0.0.1:{free_port()}", type="mqtt", ca_file=pki.ca,
                      cert_file=ident.cert, key_file=ident.key, timeout_s=2.0)  # fmt: skip
    async with MqttDelivery(sink, GATEWAY) as delivery:
        with pytest.raises(RetryableUpload, match="not connected") as ei:
            await delivery.send(b"x", f"{GATEWAY}:1-1")
    assert "refused" in str(ei.value).lower()


async def test_unloadable_client_key_is_an_auth_error(tmp_path: Path, broker: Mosquitto, pki: Pki) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    async with MqttDelivery(mqtt_sink(broker, pki, key_file=bad), GATEWAY) as delivery:
        with pytest.raises(AuthRejected, match="cannot use the TLS files"):
            await delivery.send(b"x", f"{GATEWAY}:1-1")


def test_parse_mqtt_url() -> None:
    assert parse_mqtt_url("mqtts://broker.example.net").port == 8883
    assert parse_mqtt_url("mqtt://127.0.0.1:1999").tls is False
    for bad in ("mqtt://broker.example.net:1883", "https://x", "mqtts://h:1/topic", "mqtts://"):
        with pytest.raises(ValueError):
            parse_mqtt_url(bad)


# ---------------------------------------------------------------------------------------------- config
CONFIG = """
version = 1
[gateway]
id = "gw-test"

[[sinks]]
name = "cloud"
type = "mqtt"
url = "mqtts://broker.example.net:8883"
ca_file = "ca.pem"
cert_file = "gw.pem"
key_file = "gw.key"
"""


def _config(tmp_path: Path, text: str) -> Path:
    for f in ("ca.pem", "gw.pem", "gw.key"):
        (tmp_path / f).write_text("x")
    p = tmp_path / "site.toml"
    p.write_text(text)
    return p


def test_mqtt_sink_config_loads(tmp_path: Path) -> None:
    cfg, warnings = load_config(_config(tmp_path, CONFIG))
    (s,) = cfg.sinks
    assert (s.type, s.topic_prefix, s.qos, s.keepalive_s, s.client_id) == ("mqtt", "gw", 1, 30, "")
    assert s.cert_file == tmp_path / "gw.pem"
    assert warnings == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('type = "mqtt"', 'type = "amqp"'), "sinks[cloud].type"),
        (('key_file = "gw.key"', 'key_file = "gw.key"\nqos = 0'), "sinks[cloud].qos: must be 1"),
        (('key_file = "gw.key"', 'key_file = "gw.key"\ntoken = "t"'), "sinks[cloud].token: not used by type"),
        (("mqtts://broker.example.net:8883", "mqtt://broker.example.net"), "plain mqtt:// only to a loopback"),
        (("mqtts://broker.example.net:8883", "mqtts://b:1/x"), "sinks[cloud].url: an MQTT URL is only"),
        (('cert_file = "gw.pem"\nkey_file = "gw.key"', ""), "sinks[cloud].cert_file: required for mqtts://"),
        (('key_file = "gw.key"', 'key_file = "gw.key"\nbatch_size = 1000000'), "sinks[cloud].batch_size"),
        (('key_file = "gw.key"', 'key_file = "gw.key"\nkeepalive_s = 1'), "sinks[cloud].keepalive_s"),
        (('key_file = "gw.key"', 'key_file = "gw.key"\ntopic_prefix = "a/#"'), "sinks[cloud].topic_prefix"),
        (('key_file = "gw.key"', 'key_file = "gw.key"\nmax_payload_bytes = 10'), "max_payload_bytes: must be"),
        (('type = "mqtt"', 'type = "http"\ntopic_prefix = "x"'), "sinks[cloud].topic_prefix: only used by type"),
    ],
)
def test_mqtt_sink_config_mistakes(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(_config(tmp_path, CONFIG.replace(*change)))
    msgs = [str(p) for p in ei.value.problems]
    assert any(expected in m for m in msgs), msgs
    assert all(str(tmp_path / "site.toml") in m for m in msgs)


# ----------------------------------------------------------------------------------------------- bench
@pytest.mark.slow
def test_bench_smoke_runs_the_bridge_cli_end_to_end() -> None:
    """``bench.sync_mqtt`` on tiny data: the bridge runs as its CLI in a separate process and lands it all."""
    from bench.sync_mqtt import measure_mqtt_rows_per_s

    details: dict[str, Any] = {}
    rate = measure_mqtt_rows_per_s(devices=5, points=10, seconds=20, batch_size=300, details=details)
    assert rate > 0 and details["mqtt_rows"] == 1000 and details["mqtt_batches"] == 4


async def test_gateway_wires_an_mqtt_sink(tmp_path: Path, broker: Mosquitto, pki: Pki) -> None:
    from gateway.app import Gateway
    from gateway.config import GatewayConfig, PanelConfig

    sinks = (mqtt_sink(broker, pki),)
    cfg = GatewayConfig(id=GATEWAY, data_dir=tmp_path / "gw", sinks=sinks, panel=PanelConfig(port=0))
    async with Gateway(cfg) as gw:
        (up,) = gw.uploaders
        assert isinstance(up._delivery, MqttDelivery) and up._delivery.topic == f"gw/{GATEWAY}/batches"
        await wait_for(lambda: connected(up), WAIT_S, "the MQTT sink to connect")
        assert up.status()["state"] == "idle"


@pytest.mark.parametrize("limit", ["max_packet_size", "message_size_limit"])
async def test_payload_over_the_brokers_size_limit_is_never_acked(tmp_path: Path, pki: Pki, limit: str) -> None:
    """With ``max_packet_size`` Mosquitto announces the bound in CONNACK: the batch is rejected before it is
    sent (stopped-rejected). Mosquitto 2.0.11 answers a payload over ``message_size_limit`` by dropping the
    connection (no PUBACK): retried, never acked — hence ``max_payload_bytes`` below the broker's limit."""
    if limit == "max_packet_size":
        small = Mosquitto(tmp_path / "small", pki, max_packet_size=100_000)
    else:
        small = Mosquitto(tmp_path / "small", pki, message_size_limit=100_000)
    with small:
        async with MqttDelivery(mqtt_sink(small, pki), GATEWAY) as delivery:
            if limit == "max_packet_size":
                with pytest.raises(BatchRejected, match="Maximum Packet Size"):
                    await delivery.send(b"x" * 150_000, f"{GATEWAY}:1-2")
            else:
                with pytest.raises(RetryableUpload, match="lost before the PUBACK"):
                    await delivery.send(b"x" * 150_000, f"{GATEWAY}:1-2")

"""MQTT sensor ingest against a real private Mosquitto, through the real Gateway (SessionRunner + Store).

Every test starts its own broker on a free high loopback port (never the system one on 1883).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.config_load import parse_config
from gateway.model import Q
from gateway.panel.app import build_panel_app
from gateway.session_runner import Q_LOST, SessionRunner
from hil_tests.demo_solar import PrivateMosquitto
from hil_tests.net import free_port
from hil_tests.panel_access import viewer_token
from protocols.mqtt import QUARANTINE_REASONS, parse_timestamp
from tests.waiting import wait_for

NS = 1_000_000_000
Q_BAD = int(Q.INVALID | Q.OUT_OF_RANGE)


def config(tmp_path: Path, port: int, sensors: str = '["pv-01", "pv-02", "pv-03"]', topic_extra: str = "",
           locations: str = "locations = { pv-01 = { lat = 47.1, lon = 8.5 } }") -> GatewayConfig:
    text = f"""
version = 1
[gateway]
id = "gw-test"
data_dir = "{tmp_path / 'data'}"
[panel]
port = 0
[[links]]
name = "solar"
protocol = "mqtt"
host = "127.0.0.1"
port = {port}
reconnect_min_s = 0.05
reconnect_max_s = 0.2
connect_timeout_s = 5.0
[links.mqtt]
client_id = "gw-test-solar"
[[links.mqtt.topics]]
filter = "sensors/+/readings"
profile = "solar"
sensors = {sensors}
location = {{ site = "north", zone = "A" }}
{locations}
{topic_extra}
"""
    return parse_config(tomllib.loads(text), "test.toml", tmp_path)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    # no persistence: a restarted broker forgets every session, so only a re-subscription brings data back
    with PrivateMosquitto(tmp_path / "broker", free_port(), persistence=False) as b:
        yield b


class Publisher:
    """A sensor-side client: QoS 1 publishes, each waited for (PUBACK)."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{port}-{time.monotonic_ns()}")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, items: list[tuple[str, bytes]]) -> None:
        infos = [self.client.publish(t, p, qos=1) for t, p in items]
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def msg(sensor: str, **fields: Any) -> tuple[str, bytes]:
    return f"sensors/{sensor}/readings", json.dumps(fields).encode()


@pytest.fixture
async def gateway(tmp_path: Path, broker: PrivateMosquitto) -> AsyncIterator[Gateway]:
    gw = Gateway(config(tmp_path, broker.port))
    await gw.start()
    try:
        await wait_for(lambda: session(gw).up, what="mqtt session up")
        yield gw
    finally:
        await gw.stop()


def readings(gw: Gateway) -> dict[str, list[tuple[int, float, int]]]:
    """Every committed reading by point name: (ts, value, quality) in seq order."""
    assert gw.store is not None
    gw.store.flush()
    tbl = gw.store.read_after("test", 0, 10_000_000)
    names = {i: n for n, i in gw.point_ids.items()}
    out: dict[str, list[tuple[int, float, int]]] = {}
    for ts, pid, v, q in zip(tbl["ts"].to_pylist(), tbl["point_id"].to_pylist(), tbl["value"].to_pylist(),
                             tbl["quality"].to_pylist(), strict=True):  # fmt: skip
        out.setdefault(names[pid], []).append((ts, v, q))
    return out


def session(gw: Gateway) -> SessionRunner:
    runner = gw.runners[0]
    assert isinstance(runner, SessionRunner)
    return runner


def stored_rows(gw: Gateway) -> int:
    assert gw.store is not None
    return int(gw.store.stats()["rows"])


def quarantined(gw: Gateway) -> int:
    assert gw.store is not None
    return int(gw.store.stats()["quarantined"])


def test_parse_timestamp_units() -> None:
    t = 1_764_000_000  # 2025-11-24
    assert parse_timestamp(t, "auto") == t * NS
    assert parse_timestamp(t * 1000 + 250, "auto") == t * NS + 250_000_000
    assert parse_timestamp(t * 1_000_000, "auto") == t * NS
    assert parse_timestamp(t * NS + 7, "auto") == t * NS + 7
    assert parse_timestamp(t + 0.5, "s") == t * NS + NS // 2
    assert parse_timestamp(t * 1000, "ms") == t * NS
    assert parse_timestamp("2025-11-24T16:00:00.5Z", "auto") == t * NS + NS // 2
    assert parse_timestamp("2025-11-24T17:00:00+01:00", "iso") == t * NS
    assert parse_timestamp("2025-11-24T16:00:00", "auto") is None  # no zone: refused, not guessed
    assert parse_timestamp(t, "iso") is None and parse_timestamp("x", "auto") is None
    assert parse_timestamp(True, "auto") is None and parse_timestamp(float("nan"), "s") is None


async def test_ingest_values_timestamps_quality_and_device_from_topic(
    gateway: Gateway, broker: PrivateMosquitto
) -> None:
    gw = gateway
    now = time.time()
    us = round((now - 5) * 1e6)  # an ISO-8601 time 5 s ago, to the microsecond
    iso = (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")
    pub = Publisher(broker.port)
    try:
        pub.send([
            msg("pv-01", ts=iso, temperature=31.5, voltage=36.2, current=8.1, power=293.2, extra="ignored"),
            msg("pv-02", ts=round(now * 1000), temperature=12.0, voltage=0.0),
            msg("pv-03", temperature=-3.0, power=0.0),
        ])  # fmt: skip
        before = time.time_ns()
        await wait_for(lambda: stored_rows(gw) >= 8, what="8 readings stored")
    finally:
        pub.close()
    r = readings(gw)
    assert r["pv-01.temperature"] == [(us * 1000, 31.5, 0)]
    assert [v for _, v, _ in r["pv-01.power"]] == [293.2] and r["pv-01.current"][0][1] == 8.1
    assert r["pv-02.voltage"] == [(round(now * 1000) * 1_000_000, 0.0, 0)]
    (ts3, v3, q3), = r["pv-03.temperature"]
    assert v3 == -3.0 and q3 == int(Q.GATEWAY_TIME) and before - 30 * NS < ts3 <= time.time_ns()  # receive time
    assert "pv-02.current" not in r and "pv-03.voltage" not in r  # absent fields give no reading
    assert stored_rows(gw) == 8 and quarantined(gw) == 0
    devices = {d["device"]: d for d in gw.status()["devices"]}
    assert set(devices) == {"pv-01", "pv-02", "pv-03"}
    assert devices["pv-01"]["location"] == {"site": "north", "zone": "A", "lat": "47.1", "lon": "8.5"}
    assert devices["pv-02"]["location"] == {"site": "north", "zone": "A"}
    proto = devices["pv-03"]["protocol"]
    assert proto["name"] == "mqtt" and proto["messages"] == 3 and proto["readings"] == 8
    assert gw.store is not None and gw.store.point_infos()[gw.point_ids["pv-01.temperature"]].unit == "°C"


async def test_every_quarantine_reason_is_stored_with_its_raw_payload(
    gateway: Gateway, broker: PrivateMosquitto
) -> None:
    gw = gateway
    now = time.time()
    bad: dict[str, tuple[str, bytes]] = {
        "malformed-json": ("sensors/pv-01/readings", b"temperature=21.5;\xff"),
        "not-object": ("sensors/pv-01/readings", b"[1, 2, 3]"),
        "unknown-sensor": msg("pv-77", ts=now, temperature=20.0),
        "bad-timestamp": msg("pv-01", ts="yesterday", temperature=20.0),
        "future-timestamp": msg("pv-01", ts=now + 3600, temperature=20.0),  # default limit 300 s ahead
        "stale-timestamp": msg("pv-01", ts=now - 8 * 86400, temperature=20.0),  # default limit 7 days old
        "no-fields": msg("pv-01", ts=now, humidity=40.0),
        "non-numeric": msg("pv-02", ts=now, temperature="warm", voltage=35.5),
        "out-of-range": msg("pv-03", ts=now, temperature=95.0, voltage=35.0, current=16.0, power=500.0),
    }
    assert set(bad) == set(QUARANTINE_REASONS)
    pub = Publisher(broker.port)
    try:
        pub.send(list(bad.values()))
        await wait_for(lambda: quarantined(gw) >= len(bad), what="every bad record quarantined")
    finally:
        pub.close()
    assert gw.store is not None
    tbl = gw.store.quarantine_after(0, 100).to_pylist()
    by_reason = {row["reason"]: row for row in tbl}
    assert len(tbl) == len(bad) and set(by_reason) == set(bad)
    for reason, (topic, payload) in bad.items():
        row = by_reason[reason]
        assert row["topic"] == topic and row["payload"] == payload, reason
        assert row["ts"] > 0 and row["detail"], reason
        assert row["device"] == topic.split("/")[1]
    assert "temperature=95 outside -20..80" in by_reason["out-of-range"]["detail"]
    assert "current=16 outside 0..15" in by_reason["out-of-range"]["detail"]
    # field-level faults keep the message's good fields; out-of-range values are stored, marked invalid
    await wait_for(lambda: stored_rows(gw) >= 5, what="the good fields of the partly bad messages")
    r = readings(gw)
    assert r["pv-02.voltage"] == [(round(now * 1e6) * 1000, 35.5, 0)] and "pv-02.temperature" not in r
    assert [(v, q) for _, v, q in r["pv-03.temperature"]] == [(95.0, Q_BAD)]
    assert [(v, q) for _, v, q in r["pv-03.current"]] == [(16.0, Q_BAD)]
    assert [(v, q) for _, v, q in r["pv-03.voltage"]] == [(35.0, 0)]
    assert [(v, q) for _, v, q in r["pv-03.power"]] == [(500.0, 0)]
    assert set(r) == {"pv-02.voltage", "pv-03.temperature", "pv-03.current", "pv-03.voltage", "pv-03.power"}
    proto = gw.status()["devices"][0]["protocol"]
    assert proto["quarantine"] == {reason: 1 for reason in bad} and proto["quarantined"] == len(bad)
    assert gw.store.stats()["quarantined"] == len(bad)
    # the panel: counts per reason and the last records, in JSON (/api/status) and HTML (the Devices page)
    token = viewer_token(gw.cfg.data_dir)
    transport = httpx.ASGITransport(app=build_panel_app(gw))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        page = (await client.get("/api/status")).json()["quarantine"]
        text = (await client.get("/devices")).text
    assert page["counts"] == {reason: 1 for reason in sorted(bad)} and page["stored"] == len(bad)
    assert [row["reason"] for row in page["recent"]] == list(reversed(bad))  # newest first
    assert page["recent"][-1]["payload"] == "temperature=21.5;\ufffd" and page["recent"][-1]["payload_bytes"] == 18
    assert "<h2>Quarantine</h2>" in text and "stale-timestamp" in text and "sensors/pv-77/readings" in text


async def test_timestamp_limits_are_configurable(tmp_path: Path, broker: PrivateMosquitto) -> None:
    extra = 'max_future_s = 10\nmax_age_s = 60\ntimestamp_field = "time"\ntimestamp_unit = "ms"'
    gw = Gateway(config(tmp_path, broker.port, topic_extra=extra))
    await gw.start()
    pub = Publisher(broker.port)
    try:
        await wait_for(lambda: session(gw).up, what="mqtt session up")
        now_ms = round(time.time() * 1000)
        pub.send([
            msg("pv-01", time=now_ms + 30_000, temperature=20.0),  # 30 s ahead > 10
            msg("pv-01", time=now_ms - 120_000, temperature=21.0),  # 2 min old > 60 s
            msg("pv-01", time=now_ms / 1000, temperature=22.0),  # seconds where ms are configured: 1970
            msg("pv-02", time=now_ms - 30_000, temperature=23.0),  # within both limits
        ])  # fmt: skip
        await wait_for(lambda: quarantined(gw) >= 3 and stored_rows(gw) >= 1, what="limits applied")
        assert gw.store is not None
        reasons = [row["reason"] for row in gw.store.quarantine_after(0, 10).to_pylist()]
        assert reasons == ["future-timestamp", "stale-timestamp", "stale-timestamp"]
        assert readings(gw) == {"pv-02.temperature": [((now_ms - 30_000) * 1_000_000, 23.0, 0)]}
    finally:
        pub.close()
        await gw.stop()


async def test_broker_restart_marks_points_lost_then_resubscribes(gateway: Gateway, broker: PrivateMosquitto) -> None:
    gw = gateway
    runner = session(gw)
    pub = Publisher(broker.port)
    try:
        pub.send([msg(s, temperature=20.0 + i) for i, s in enumerate(["pv-01", "pv-02", "pv-03"])])
        await wait_for(lambda: stored_rows(gw) >= 3, what="first readings")
    finally:
        pub.close()
    broker.stop()
    await wait_for(lambda: gw.status()["devices"][0]["state"] == "disconnected", what="session lost")
    # every point of every sensor gets the loss mark once, with its last value (NaN if it never had one)
    await wait_for(lambda: stored_rows(gw) >= 3 + 12, what="loss marks")
    r = readings(gw)
    assert r["pv-02.temperature"][-1][1:] == (21.0, Q_LOST)
    assert np.isnan(r["pv-02.voltage"][-1][1]) and r["pv-02.voltage"][-1][2] == Q_LOST
    assert all(vals[-1][2] == Q_LOST for vals in r.values()) and len(r) == 12
    # one comm event for the broker session, not one per sensor
    lost = gw.comm_events()
    assert [(e.point, e.priority) for e in lost] == [(f"link {runner.link.name}", 1)]
    assert "lost" in lost[0].message and "3 sensors" in lost[0].message
    broker.start()  # same port, no persistence: the broker knows no subscription of ours
    await wait_for(lambda: runner.up and runner.reconnects >= 1, what="session re-established")
    pub = Publisher(broker.port)
    try:
        pub.send([msg("pv-02", temperature=25.0, voltage=36.0)])
        await wait_for(lambda: readings(gw)["pv-02.voltage"][-1][1] == 36.0, what="readings after the restart")
    finally:
        pub.close()
    r = readings(gw)
    assert r["pv-02.temperature"][-1][1:] == (25.0, int(Q.GATEWAY_TIME))
    dev = gw.status()["devices"][0]
    assert dev["state"] == "ok" and dev["reconnects"] >= 1 and dev["timeouts"] >= 1
    assert dev["protocol"]["messages"] == 4


async def test_1000_sensors_all_stored_end_to_end(tmp_path: Path, broker: PrivateMosquitto) -> None:
    gw = Gateway(config(tmp_path, broker.port, sensors='["pv-{0001..1000}"]', locations=""))
    await gw.start()
    pub = Publisher(broker.port)
    try:
        await wait_for(lambda: session(gw).up, what="mqtt session up")
        t0 = time.time() - 10
        for k in range(3):
            pub.send([
                msg(f"pv-{i:04d}", ts=t0 + k, temperature=20.0 + k, voltage=30.0 + i % 10, current=k + 1.0,
                    power=(30.0 + i % 10) * (k + 1))
                for i in range(1, 1001)
            ])  # fmt: skip
        await wait_for(lambda: stored_rows(gw) >= 12_000, timeout=60, what="12000 readings stored")
        r = readings(gw)
        assert len(r) == 4000 and stored_rows(gw) == 12_000 and quarantined(gw) == 0
        assert all(len(v) == 3 and [q for _, _, q in v] == [0, 0, 0] for v in r.values())
        assert [v for _, v, _ in r["pv-0777.power"]] == [37.0, 74.0, 111.0]
        assert [ts for ts, _, _ in r["pv-0001.temperature"]] == [round((t0 + k) * 1e6) * 1000 for k in range(3)]
        assert len(gw.status()["devices"]) == 1000
    finally:
        pub.close()
        await gw.stop()


def test_store_quarantine_table_survives_reopen_and_upgrades_schema(tmp_path: Path) -> None:
    from gateway.model import QuarantineRecord
    from storefwd import schema
    from storefwd.store import Store

    path = tmp_path / "q.duckdb"
    recs = [QuarantineRecord(i, f"pv-{i}", f"sensors/pv-{i}/readings", "malformed-json", "x", b"\x00\xff" * i)
            for i in range(1, 4)]  # fmt: skip
    with Store(path) as store:
        assert store.add_quarantine([]) == 0
        assert store.add_quarantine(recs) == 3
        with pytest.raises(TypeError):
            store.add_quarantine(["nope"])  # type: ignore[list-item]
    with Store(path) as store:
        assert store.stats()["quarantined"] == 3 and store.add_quarantine(recs[:1]) == 4
        rows = store.quarantine_after(1, 2).to_pylist()
        assert [r["seq"] for r in rows] == [2, 3] and rows[1]["payload"] == b"\x00\xff" * 3
        assert rows[0]["device"] == "pv-2" and rows[0]["topic"] == "sensors/pv-2/readings"
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            str(schema.SCHEMA_VERSION),
        )
        assert schema.SCHEMA_VERSION == 3
    finally:
        con.close()

"""Prometheus ``/metrics``: scraped from a running gateway (Modbus simulator → gateway → real receiver) through
the panel's ASGI app, parsed with prometheus_client's own parser."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from cloud_sync.receiver import DuckDBBackend
from cloud_sync.receiver.app import build_app
from cloud_sync.receiver.server import ReceiverServer
from gateway.app import Gateway
from gateway.config import DeviceConfig, GatewayConfig, LinkConfig, PanelConfig, PointConfig, SinkConfig
from gateway.histogram import LatencyHistogram
from gateway.metrics import CONTENT_TYPE, Exposition, collect
from gateway.panel.app import build_panel_app
from hil_tests.modbus_sim import SimServer, SimUnit
from protection.shm import HIST_EDGES_NS, CycleStats
from tests.waiting import wait_for_async

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
TOKEN = "t0ken"


def config(tmp_path: Path, port: int, receiver_url: str) -> GatewayConfig:
    point = PointConfig(name="v", kind="holding", address=0, period_s=0.05)
    devices = tuple(DeviceConfig(name=f"d{u}", unit_id=u, timeout_s=0.5, points=(point,)) for u in (1, 2))
    link = LinkConfig(name="l", protocol="modbus_tcp", host="127.0.0.1", port=port, devices=devices)
    sink = SinkConfig(name="cloud", url=f"{receiver_url}/v1/batches", token=TOKEN, max_interval_s=0.1, timeout_s=2)
    return GatewayConfig(id="gw", data_dir=tmp_path / "gw", links=(link,), sinks=(sink,), panel=PanelConfig(port=0))


async def scrape(client: httpx.AsyncClient) -> dict[str, Any]:
    """GET /metrics, check the content type, parse; families by name."""
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == CONTENT_TYPE
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def samples(families: dict[str, Any], name: str) -> list[Sample]:
    return list(families[name].samples)


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    """The value of the one sample of family ``name`` whose labels include ``labels`` (a counter's family is
    named without ``_total`` by the parser; either spelling works)."""
    fam = families[name] if name in families else families[name.removesuffix("_total")]
    found = [s.value for s in fam.samples if labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, found)
    return float(found[0])


def check_well_formed(families: dict[str, Any]) -> None:
    """Valid names and label names, a known type, no series twice."""
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for fam in families.values():
        assert NAME.match(fam.name) and fam.name.startswith("gateway_"), fam.name
        assert fam.type in ("counter", "gauge", "histogram"), (fam.name, fam.type)
        assert fam.documentation, fam.name
        for s in fam.samples:
            assert NAME.match(s.name), s.name
            assert all(LABEL.match(k) for k in s.labels), s
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in seen, f"duplicate series {key}"
            seen.add(key)


async def test_metrics_of_a_running_gateway(tmp_path: Path) -> None:
    units = [SimUnit(1, holding=1), SimUnit(2, holding=1)]
    backend = DuckDBBackend(tmp_path / "rx.duckdb")
    async with (
        SimServer(units, tcp=("127.0.0.1", 0)) as sim,
        ReceiverServer(build_app(backend, {"gw": TOKEN})) as rx,
        Gateway(config(tmp_path, sim.port, rx.url)) as gw,
    ):
        transport = httpx.ASGITransport(app=build_panel_app(gw))
        async with httpx.AsyncClient(transport=transport, base_url="http://panel") as client:

            async def polled_and_synced() -> bool:
                f = await scrape(client)
                return (
                    all(value(f, "gateway_device_polls_total", device=d) >= 1 for d in ("d1", "d2"))
                    and value(f, "gateway_sync_uploaded_rows_total", sink="cloud") >= 1
                )

            await wait_for_async(polled_and_synced, what="polls and an upload in /metrics")
            first = await scrape(client)
            polls1 = value(first, "gateway_device_polls_total", device="d1")

            async def polls_moved() -> bool:
                return value(await scrape(client), "gateway_device_polls_total", device="d1") > polls1

            await wait_for_async(polls_moved, what="polls_total to increase between scrapes")
            second = await scrape(client)

    for fams in (first, second):
        check_well_formed(fams)
        assert {exposed_name(fam) for fam in fams.values()} <= documented_metrics()
    f = second
    # parsed names of counters drop _total; prometheus_client gives the family name without it
    types = {name: fam.type for name, fam in f.items()}
    assert types["gateway_device_polls"] == "counter"
    assert types["gateway_device_errors"] == "counter"
    assert types["gateway_device_timeouts"] == "counter"
    assert types["gateway_device_reconnects"] == "counter"
    assert types["gateway_device_up"] == "gauge"
    assert types["gateway_device_state"] == "gauge"
    assert types["gateway_store_rows"] == "gauge"
    assert types["gateway_store_commits"] == "counter"
    assert types["gateway_sync_backlog_rows"] == "gauge"
    assert types["gateway_sync_uploads"] == "counter"
    for s in samples(f, "gateway_device_polls"):
        assert s.name == "gateway_device_polls_total"
        assert s.labels == {"link": "l", "device": s.labels["device"], "protocol": "modbus_tcp"}
    assert sorted(s.labels["device"] for s in samples(f, "gateway_device_polls")) == ["d1", "d2"]
    # comm state: one sample per known state, exactly one of them 1
    for d in ("d1", "d2"):
        states = {s.labels["state"]: s.value for s in samples(f, "gateway_device_state") if s.labels["device"] == d}
        assert set(states) >= {"starting", "ok", "backoff", "disconnected"}
        assert sum(states.values()) == 1 and states["ok"] == 1
        assert value(f, "gateway_device_up", device=d) == 1
        assert 0 <= value(f, "gateway_device_last_good_poll_age_seconds", device=d) < float("inf")
        assert value(f, "gateway_device_last_poll_latency_seconds", device=d) >= 0
        count = [s.value for s in samples(f, "gateway_device_poll_latency_seconds")
                 if s.name.endswith("_count") and s.labels["device"] == d]  # fmt: skip
        assert count and count[0] >= value(f, "gateway_device_polls_total", device=d)  # every answered request
    assert value(f, "gateway_store_commits") >= 1
    assert value(f, "gateway_store_budget_bytes") > 0
    assert value(f, "gateway_store_queue_capacity_rows") > 0
    assert value(f, "gateway_sync_uploads", sink="cloud") >= 1
    assert value(f, "gateway_sync_up", sink="cloud") == 1
    assert value(f, "gateway_sync_last_ack_age_seconds", sink="cloud") < float("inf")
    assert value(f, "gateway_info", gateway_id="gw") == 1
    assert "gateway_protection_up" not in f  # no protection configured: no protection families
    # counters never go back
    for name, fam in first.items():
        if fam.type == "counter":
            for s in fam.samples:
                assert value(second, name, **s.labels) >= s.value, (name, s.labels)


def documented_metrics() -> set[str]:
    return set(re.findall(r"^\| `(gateway_[a-z0-9_]+)` \|", DOC.read_text(), flags=re.M))


class FakeHandle:
    """The protection process's handle as metrics use it: real shared-memory statistics (a local block)."""

    def __init__(self) -> None:
        self.cycle_stats = CycleStats.local()
        self.events_overflow = 0

    def alive(self) -> bool:
        return True

    def stats(self) -> Any:
        return self.cycle_stats.snapshot()


class FakeGateway:
    """Every component present, so that every family is rendered: a status as Gateway.status() builds it."""

    def __init__(self) -> None:
        self.protection = SimpleNamespace(handle=FakeHandle())
        self.now = 2_000_000_000_000_000_000

    def status(self) -> dict[str, Any]:
        dev = {"link": "l", "state": "ok", "last_good_ns": self.now - 10**9, "last_latency_ms": 2.5, "polls": 5,
               "errors": 1, "timeouts": 1, "reconnects": 0, "missed_slots": 0, "lateness_p99_ms": 0.5}
        mqtt = {"name": "mqtt", "messages": 4, "readings": 6, "inbox": 0, "quarantine": {"bad-json": 2}}
        hist = LatencyHistogram()
        for ns in (800_000, 2_000_000, 2_000_000, 7_000_000_000):  # 0.8 ms, 2 ms twice, 7 s (above every bucket)
            hist.observe(ns)
        return {
            "gateway_id": "gw", "started_ns": self.now - 10**10, "now_ns": self.now, "emit_backpressure": 0,
            "devices": [
                {**dev, "device": "d1", "protocol": {"name": "modbus_tcp"}, "latency_hist": hist.snapshot()},
                {**dev, "device": "s1", "link": "m", "protocol": mqtt},
                {**dev, "device": "s2", "link": "m", "state": "disconnected", "last_good_ns": 0,
                 "last_latency_ms": float("nan"), "protocol": mqtt},
            ],
            "store": {"rows": 10, "last_seq": 10, "first_seq": 1, "queued_rows": 0, "queue_rows": 100,
                      "rejected_offers": 0, "commits": 3, "last_commit_ns": self.now, "events": 1,
                      "last_event_seq": 1, "quarantined": 2, "last_quarantine_seq": 2, "write_errors": 0,
                      "points": 3, "downsampled_rows": 0, "evicted_rows": 0, "evicted_events": 0, "gap_records": 0,
                      "reclaim_steps": 0, "disk_full": 0, "disk_full_since_ns": 0, "disk_full_episodes": 0,
                      "downsampled_seq": 0, "file_bytes": 4096, "used_bytes": 4096, "disk_budget_bytes": 10**9,
                      "fs_free_bytes": 10**10, "over_budget": 0},
            "sinks": [{"sink": "cloud", "state": "retrying", "backlog": 7, "backlog_bytes": 63,
                       "oldest_ts": self.now - 3 * 10**9, "oldest_age_s": 3.0, "events_backlog": 0,
                       "uploaded_events": 1, "uploaded_rows": 3, "uploads": 1, "retries": 2, "rows_per_s": 0.0,
                       "last_ack_wall_ns": 0}],
            "protection": {"state": "running", "starts": 1, "restarts": 0, "events_stored": 2, "trips": {"51P": 1},
                           "elements": [{"name": "51P", "type": "overcurrent", "group": 1, "picked_up": True,
                                         "tripped": False, "blocked": False}]},
            "analytics": {"analytics": [], "events": 0, "readings": 9, "errors": 0, "skipped_rows": 0},
        }


def render_everything() -> dict[str, Any]:
    gw = FakeGateway()
    for lateness_ns in (500, 1500, 1500, 2_000_000):
        gw.protection.handle.cycle_stats.record(lateness_ns, lateness_ns, 1000, 0)
    text = collect(gw).render()  # type: ignore[arg-type]
    return {f.name: f for f in text_string_to_metric_families(text)}


def exposed_name(fam: Any) -> str:
    return str(fam.name) + ("_total" if fam.type == "counter" else "")


def test_every_family_is_rendered_well_formed_and_documented() -> None:
    """With every component present: all families well formed, each listed in docs/metrics.md, the doc lists
    nothing that is not rendered."""
    fams = render_everything()
    check_well_formed(fams)
    rendered = {exposed_name(f) for f in fams.values()}
    documented = documented_metrics()
    assert rendered - documented == set(), "not in docs/metrics.md"
    assert documented - rendered == set(), "documented but never rendered"


def test_protection_lateness_histogram_counts_every_cycle() -> None:
    f = render_everything()
    h = f["gateway_protection_cycle_lateness_seconds"]
    assert h.type == "histogram"
    buckets = [(float(s.labels["le"]), s.value) for s in h.samples if s.name.endswith("_bucket")]
    assert len(buckets) == len(HIST_EDGES_NS) + 1 and buckets[-1] == (float("inf"), 4)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert dict(buckets)[1e-6] == 1  # 500 ns
    assert dict(buckets)[HIST_EDGES_NS[8] / 1e9] == 3  # below 10 µs: 500, 1500, 1500
    (count,) = [s.value for s in h.samples if s.name.endswith("_count")]
    assert count == value(f, "gateway_protection_cycles_total") == 4  # one snapshot: they agree
    assert value(f, "gateway_protection_cycle_lateness_max_seconds") == 0.002
    # MQTT: one session per link, counted once; the quarantine per reason
    assert value(f, "gateway_mqtt_quarantined_total", link="m", reason="bad-json") == 2
    assert value(f, "gateway_device_last_good_poll_age_seconds", device="s2") == float("inf")
    assert math.isnan(value(f, "gateway_device_last_poll_latency_seconds", device="s2"))
    assert value(f, "gateway_device_up", device="s2") == 0
    assert value(f, "gateway_sync_last_ack_age_seconds", sink="cloud") == float("inf")
    assert value(f, "gateway_sync_state", sink="cloud", state="retrying") == 1
    # per-device poll latency: cumulative buckets, +Inf = count, sum in seconds
    lat = {(s.name, s.labels.get("le")): s.value for s in f["gateway_device_poll_latency_seconds"].samples
           if s.labels["device"] == "d1"}  # fmt: skip
    assert lat[("gateway_device_poll_latency_seconds_bucket", "0.001")] == 1
    assert lat[("gateway_device_poll_latency_seconds_bucket", "0.0025")] == 3
    assert lat[("gateway_device_poll_latency_seconds_bucket", "5")] == 3
    assert lat[("gateway_device_poll_latency_seconds_bucket", "+Inf")] == 4
    assert lat[("gateway_device_poll_latency_seconds_count", None)] == 4
    assert lat[("gateway_device_poll_latency_seconds_sum", None)] == 7.0048


def test_exposition_escapes_and_formats() -> None:
    out = Exposition()
    out.add("gateway_x", "gauge", 'help with \\ and\nnewline', float("nan"), {"l": 'a"b\\c\nd'})
    out.add("gateway_x", "gauge", "ignored", float("inf"), {"l": "e"})
    out.enum("gateway_s", "state", "weird", ("ok", "bad"))
    out.histogram("gateway_h_seconds", "lateness", [0.001, 0.01], [2, 3, 1])
    text = out.render()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    x = fams["gateway_x"]
    assert x.documentation == "help with \\ and\nnewline"
    assert [s.labels["l"] for s in x.samples] == ['a"b\\c\nd', "e"]
    assert x.samples[1].value == float("inf")
    assert {s.labels["state"]: s.value for s in fams["gateway_s"].samples} == {"ok": 0, "bad": 0, "weird": 1}
    h = fams["gateway_h_seconds"]
    assert h.type == "histogram"
    buckets = [(s.labels["le"], s.value) for s in h.samples if s.name.endswith("_bucket")]
    assert buckets == [("0.001", 2), ("0.01", 5), ("+Inf", 6)]
    assert [s.value for s in h.samples if s.name.endswith("_count")] == [6]
    assert not [s for s in h.samples if s.name.endswith("_sum")]  # no sum recorded: none invented

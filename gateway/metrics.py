"""Prometheus ``/metrics``: the gateway's figures in the text exposition format, version 0.0.4.

Hand-written, no registry and no ``prometheus_client`` at run time: every scrape renders a fresh snapshot from
what the components already keep in memory (``Gateway.status()``, the protection process's shared-memory cycle
statistics). Nothing is sampled or accumulated here, so a scrape has no side effect and two scrapers see the same
numbers. docs/metrics.md lists every family; a test checks that list against what is rendered.

Conventions: names start with ``gateway_``; units in names (``_seconds``, ``_bytes``, ``_rows``); counters end in
``_total`` (they restart from 0 with the gateway, except the store's reclaim counters, which the store keeps in its
file). A state is an enum family (``…_state{state="…"}``: one sample per known state, 1 for the current one, 0 for
the others, so a series never disappears on a change) plus an ``…_up`` gauge. An age that has no reference yet (never
polled, never acked) is ``+Inf``; a figure with no observation yet (a latency before the first poll) is ``NaN``.

Threading: :func:`render_metrics` runs on the gateway's loop; it reads in-memory state only, except that
``Store.sink_stats`` (inside ``Gateway.status()``) reads one row once per watermark change.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from gateway.app import Gateway

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# Known states of the enum families (an unknown one still gets its sample, with value 1).
DEVICE_STATES: Final = ("starting", "ok", "backoff", "disconnected")
SINK_STATES: Final = ("disabled", "idle", "ok", "retrying", "stopped", "stopped-auth", "stopped-rejected")
PROTECTION_STATES: Final = ("starting", "running", "restarting", "start failed", "stopped")

Labels = Mapping[str, str]


@dataclass
class _Family:
    name: str
    type: str  # counter, gauge, histogram
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)  # (suffix, labels, value)


class Exposition:
    """Families in the order they were first declared, each with its samples; :meth:`render` writes the text."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def add(self, name: str, type_: str, help_: str, value: float, labels: Labels | None = None) -> None:
        """One sample of a counter or gauge family (declared on first use)."""
        self._family(name, type_, help_).samples.append(("", dict(labels or {}), float(value)))

    def enum(self, name: str, help_: str, current: str, known: Iterable[str], labels: Labels | None = None) -> None:
        """A state as a gauge family with a ``state`` label: 1 for ``current``, 0 for every other known state."""
        states = list(known)
        if current not in states:
            states.append(current)
        for s in states:
            self.add(name, "gauge", help_, 1.0 if s == current else 0.0, {**(labels or {}), "state": s})

    def histogram(
        self,
        name: str,
        help_: str,
        upper_bounds: Iterable[float],
        counts: Iterable[int],
        total: float | None = None,
        labels: Labels | None = None,
    ) -> None:
        """A histogram from per-bin counts: ``counts[i]`` observations in bin i, whose upper bound is
        ``upper_bounds[i]`` (the last bin, above every bound, goes to ``+Inf`` only). ``total`` is the sum of the
        observations, or None when it is not recorded (then no ``_sum`` sample is written)."""
        fam = self._family(name, "histogram", help_)
        base = dict(labels or {})
        cum = 0
        cs = [int(c) for c in counts]
        bounds = list(upper_bounds)
        for le, c in zip(bounds, cs, strict=False):
            cum += c
            fam.samples.append(("_bucket", {**base, "le": _fmt(le)}, float(cum)))
        n = sum(cs)
        fam.samples.append(("_bucket", {**base, "le": "+Inf"}, float(n)))
        fam.samples.append(("_count", base, float(n)))
        if total is not None:
            fam.samples.append(("_sum", base, float(total)))

    def _family(self, name: str, type_: str, help_: str) -> _Family:
        fam = self._families.get(name)
        if fam is None:
            fam = self._families[name] = _Family(name, type_, help_)
        elif fam.type != type_:
            raise ValueError(f"metric {name} declared as {fam.type} and {type_}")
        return fam

    def families(self) -> list[str]:
        return list(self._families)

    def render(self) -> str:
        lines: list[str] = []
        for fam in self._families.values():
            if not fam.samples:
                continue
            lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
            lines.append(f"# TYPE {fam.name} {fam.type}")
            for suffix, labels, value in fam.samples:
                lbl = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                series = f"{fam.name}{suffix}{{{lbl}}}" if lbl else f"{fam.name}{suffix}"
                lines.append(f"{series} {_fmt(value)}")
        return "\n".join(lines) + "\n"


def _escape_help(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 2**53:
        return str(int(v))
    return repr(float(v))


def _num(x: Any, default: float = math.nan) -> float:
    """A status figure as a float (None and non-numbers as ``default``)."""
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, int | float):
        return float(x)
    return default


def _age_s(now_ns: int, ts_ns: Any) -> float:
    """Seconds since the wall-clock epoch-ns ``ts_ns``; +Inf when it never happened (0 or None)."""
    ts = int(ts_ns or 0)
    return math.inf if ts <= 0 else max(0.0, (now_ns - ts) / 1e9)


# -- the gateway ----------------------------------------------------------------------------------------------


def render_metrics(gw: Gateway) -> str:
    """The whole exposition of one gateway (loop thread)."""
    return collect(gw).render()


def collect(gw: Gateway) -> Exposition:
    status = gw.status()
    out = Exposition()
    now = int(status["now_ns"])
    out.add("gateway_info", "gauge", "Always 1; the gateway's id as a label.", 1,
            {"gateway_id": str(status["gateway_id"])})  # fmt: skip
    out.add("gateway_start_time_seconds", "gauge", "Wall-clock time the gateway started, epoch seconds.",
            int(status["started_ns"]) / 1e9)  # fmt: skip
    out.add("gateway_emit_backpressure_total", "counter",
            "Batches the store's full queue refused (the runners keep and offer them again).",
            _num(status.get("emit_backpressure"), 0))  # fmt: skip
    _devices(out, status["devices"], now)
    _store(out, status.get("store") or {})
    _sinks(out, status.get("sinks") or [], now)
    _protection(out, gw, status.get("protection"))
    _analytics(out, status.get("analytics"))
    return out


def _devices(out: Exposition, devices: list[dict[str, Any]], now: int) -> None:
    mqtt_links: dict[str, dict[str, Any]] = {}
    for d in devices:
        proto = d.get("protocol") or {}
        pname = str(proto.get("name", ""))
        lb = {"link": str(d.get("link", "")), "device": str(d.get("device", "")), "protocol": pname}
        out.add("gateway_device_polls_total", "counter",
                "Polls the device answered (Modbus polls and probes, session jobs).",
                _num(d.get("polls"), 0), lb)  # fmt: skip
        out.add("gateway_device_errors_total", "counter",
                "Requests answered with an error (exception response, garbage, failed job); timeouts not included.",
                _num(d.get("errors"), 0), lb)  # fmt: skip
        out.add("gateway_device_timeouts_total", "counter", "Requests that got no answer in time.",
                _num(d.get("timeouts"), 0), lb)  # fmt: skip
        out.add("gateway_device_reconnects_total", "counter",
                "Reconnects of the device's link (a link counter: every device of the link shows it).",
                _num(d.get("reconnects"), 0), lb)  # fmt: skip
        out.add("gateway_device_missed_slots_total", "counter", "Poll slots skipped because a poll started late.",
                _num(d.get("missed_slots"), 0), lb)  # fmt: skip
        state = str(d.get("state", ""))
        out.add("gateway_device_up", "gauge", "1 while the device's comm state is ok, else 0.",
                1 if state == "ok" else 0, lb)  # fmt: skip
        out.enum("gateway_device_state", "Comm state of the device: 1 for the current state.", state,
                 DEVICE_STATES, lb)  # fmt: skip
        out.add("gateway_device_last_good_poll_age_seconds", "gauge",
                "Seconds since the last successful poll or delivery (+Inf: never).", _age_s(now, d.get("last_good_ns")),
                lb)  # fmt: skip
        out.add("gateway_device_last_poll_latency_seconds", "gauge",
                "Duration of the latest poll / job, request to response (NaN: none yet).",
                _num(d.get("last_latency_ms")) / 1e3, lb)  # fmt: skip
        hist = d.get("latency_hist")
        if isinstance(hist, dict):
            out.histogram("gateway_device_poll_latency_seconds",
                          "Request-to-answer time of every answered poll request (Modbus) or job (DNP3, IEC 61850).",
                          hist["edges_s"], hist["counts"], hist["sum_s"], lb)  # fmt: skip
        out.add("gateway_device_poll_lateness_p99_seconds", "gauge",
                "99th percentile of poll start lateness over the runner's last 1024 polls (NaN: none yet).",
                _num(d.get("lateness_p99_ms")) / 1e3, lb)  # fmt: skip
        if pname == "mqtt":
            mqtt_links.setdefault(lb["link"], proto)  # one MQTT session per link: its counters once
    for link, proto in mqtt_links.items():
        lb = {"link": link}
        out.add("gateway_mqtt_messages_total", "counter", "MQTT messages received on the link.",
                _num(proto.get("messages"), 0), lb)  # fmt: skip
        out.add("gateway_mqtt_readings_total", "counter", "Readings decoded from the link's MQTT messages.",
                _num(proto.get("readings"), 0), lb)  # fmt: skip
        out.add("gateway_mqtt_inbox_messages", "gauge", "MQTT messages received, not yet decoded.",
                _num(proto.get("inbox"), 0), lb)  # fmt: skip
        for reason, n in sorted((proto.get("quarantine") or {}).items()):
            out.add("gateway_mqtt_quarantined_total", "counter",
                    "MQTT records refused by validation and quarantined, per reason.", _num(n, 0),
                    {"link": link, "reason": str(reason)})  # fmt: skip


# (store stats key, metric name, type, help)
_STORE: Final[tuple[tuple[str, str, str, str], ...]] = (
    ("rows", "gateway_store_rows", "gauge", "Committed readings in the store file."),
    ("queued_rows", "gateway_store_queued_rows", "gauge", "Readings accepted, not yet committed (writer queue)."),
    ("queue_rows", "gateway_store_queue_capacity_rows", "gauge", "Bound of the writer queue, readings."),
    ("rejected_offers", "gateway_store_rejected_offers_total", "counter", "Batches refused: queue full."),
    ("commits", "gateway_store_commits_total", "counter", "Writer transactions committed."),
    ("write_errors", "gateway_store_write_errors_total", "counter", "Writer transactions that failed."),
    ("events", "gateway_store_events", "gauge", "Events in the store file."),
    ("points", "gateway_store_points", "gauge", "Points registered in the store."),
    ("file_bytes", "gateway_store_file_bytes", "gauge", "Size of the store's files (database + WAL)."),
    ("used_bytes", "gateway_store_used_bytes", "gauge", "Bytes the store uses against its disk budget."),
    ("disk_budget_bytes", "gateway_store_budget_bytes", "gauge", "Effective disk budget of the store."),
    ("fs_free_bytes", "gateway_store_fs_free_bytes", "gauge", "Free bytes on the store's file system."),
    ("over_budget", "gateway_store_over_budget", "gauge", "1 while the store uses more than its budget."),
    ("disk_full", "gateway_store_disk_full", "gauge", "1 while the disk is full (new readings refused)."),
    ("disk_full_episodes", "gateway_store_disk_full_episodes_total", "counter", "Times the disk became full."),
    ("downsampled_rows", "gateway_store_downsampled_rows_total", "counter",
     "Synced readings removed by downsampling to stay in budget (kept in the store file)."),
    ("evicted_rows", "gateway_store_evicted_rows_total", "counter",
     "Readings evicted to stay in budget (kept in the store file)."),
    ("evicted_events", "gateway_store_evicted_events_total", "counter",
     "Events evicted to stay in budget (kept in the store file)."),
    ("gap_records", "gateway_store_gap_records_total", "counter", "Gap records written for evicted ranges."),
    ("reclaim_steps", "gateway_store_reclaim_steps_total", "counter", "Space reclaiming steps run."),
    ("quarantined", "gateway_store_quarantined_total", "counter", "Quarantine records kept in the store file."),
)


def _store(out: Exposition, st: Mapping[str, Any]) -> None:
    if not st:
        return
    for key, name, type_, help_ in _STORE:
        if key in st:
            out.add(name, type_, help_, _num(st[key], 0))
    ts = int(st.get("last_commit_ns") or 0)
    out.add("gateway_store_last_commit_timestamp_seconds", "gauge",
            "Wall-clock time of the latest commit, epoch seconds (0: never).", ts / 1e9)  # fmt: skip


def _sinks(out: Exposition, sinks: list[dict[str, Any]], now: int) -> None:
    for s in sinks:
        lb = {"sink": str(s.get("sink", ""))}
        has_backlog = bool(s.get("backlog"))
        out.add("gateway_sync_backlog_rows", "gauge", "Committed readings the sink has not acknowledged.",
                _num(s.get("backlog"), 0), lb)  # fmt: skip
        if "backlog_bytes" in s:
            out.add("gateway_sync_backlog_bytes", "gauge", "Estimated store bytes of the sink's backlog.",
                    _num(s.get("backlog_bytes"), 0), lb)  # fmt: skip
            out.add("gateway_sync_oldest_unsent_age_seconds", "gauge",
                    "Age of the oldest reading not yet acknowledged (0: no backlog).",
                    _num(s.get("oldest_age_s"), 0) if has_backlog else 0.0, lb)  # fmt: skip
        out.add("gateway_sync_events_backlog", "gauge", "Stored events the sink has not acknowledged.",
                _num(s.get("events_backlog"), 0), lb)  # fmt: skip
        out.add("gateway_sync_uploaded_rows_total", "counter", "Readings acknowledged by the sink.",
                _num(s.get("uploaded_rows"), 0), lb)  # fmt: skip
        out.add("gateway_sync_uploaded_events_total", "counter", "Events acknowledged by the sink.",
                _num(s.get("uploaded_events"), 0), lb)  # fmt: skip
        out.add("gateway_sync_uploads_total", "counter", "Batches acknowledged by the sink.",
                _num(s.get("uploads"), 0), lb)  # fmt: skip
        out.add("gateway_sync_retries_total", "counter", "Failed upload attempts (each retried later).",
                _num(s.get("retries"), 0), lb)  # fmt: skip
        out.add("gateway_sync_rows_per_second", "gauge", "Acknowledged readings per second over the recent window.",
                _num(s.get("rows_per_s"), 0), lb)  # fmt: skip
        out.add("gateway_sync_last_ack_age_seconds", "gauge", "Seconds since the sink's last ack (+Inf: never).",
                _age_s(now, s.get("last_ack_wall_ns")), lb)  # fmt: skip
        state = str(s.get("state", ""))
        out.add("gateway_sync_up", "gauge", "1 while the sink is ok or idle (nothing to send), else 0.",
                1 if state in ("ok", "idle") else 0, lb)  # fmt: skip
        out.enum("gateway_sync_state", "State of the sink's uploader: 1 for the current state.", state,
                 SINK_STATES, lb)  # fmt: skip


def _protection(out: Exposition, gw: Gateway, p: Mapping[str, Any] | None) -> None:
    if p is None:
        return
    state = str(p.get("state", ""))
    out.add("gateway_protection_up", "gauge", "1 while the protection process is running, else 0.",
            1 if state == "running" else 0)  # fmt: skip
    out.enum("gateway_protection_state", "State of the protection supervisor: 1 for the current state.", state,
             PROTECTION_STATES)  # fmt: skip
    out.add("gateway_protection_starts_total", "counter", "Protection process starts.", _num(p.get("starts"), 0))
    out.add("gateway_protection_restarts_total", "counter", "Protection process restarts after a failure.",
            _num(p.get("restarts"), 0))  # fmt: skip
    out.add("gateway_protection_events_stored_total", "counter", "Protection events (trips, SOE) stored.",
            _num(p.get("events_stored"), 0))  # fmt: skip
    for name, n in sorted((p.get("trips") or {}).items()):
        out.add("gateway_protection_trips_total", "counter", "Trips of a protection element since the gateway started.",
                n, {"element": str(name)})  # fmt: skip
    for el in p.get("elements") or []:
        lb = {"element": str(el.get("name", "")), "type": str(el.get("type", "")), "group": str(el.get("group", ""))}
        out.add("gateway_protection_element_picked_up", "gauge", "1 while the element is picked up.",
                1 if el.get("picked_up") else 0, lb)  # fmt: skip
        out.add("gateway_protection_element_tripped", "gauge", "1 while the element's trip is not reset.",
                1 if el.get("tripped") else 0, lb)  # fmt: skip
        out.add("gateway_protection_element_blocked", "gauge", "1 while the element is blocked.",
                1 if el.get("blocked") else 0, lb)  # fmt: skip
    # The cycle figures from ONE snapshot of the shared-memory statistics, so that cycles_total and the
    # histogram's count agree (status()["cycle"] only has the quantiles).
    svc = gw.protection
    h = getattr(svc, "handle", None)
    if h is None or not h.alive():
        return
    from protection.shm import HIST_EDGES_NS

    st = h.stats()
    out.add("gateway_protection_cycles_total", "counter", "Protection cycles executed.", st.cycles)
    out.add("gateway_protection_overruns_total", "counter", "Cycles that ran past the next deadline.", st.overruns)
    out.add("gateway_protection_skipped_slots_total", "counter", "Cycle slots given up after overruns.",
            st.skipped_slots)  # fmt: skip
    out.histogram(
        "gateway_protection_cycle_lateness_seconds",
        "Wake-up lateness of every protection cycle after its deadline (bucket le counts lateness < le).",
        [e / 1e9 for e in HIST_EDGES_NS],
        [int(x) for x in st.lateness_hist],
    )
    out.add("gateway_protection_cycle_lateness_max_seconds", "gauge", "Largest cycle lateness since start.",
            st.max_lateness_ns / 1e9)  # fmt: skip
    out.add("gateway_protection_cycle_exec_max_seconds", "gauge", "Longest cycle execution since start.",
            st.max_exec_ns / 1e9)  # fmt: skip
    out.add("gateway_protection_cycle_exec_mean_seconds", "gauge", "Mean cycle execution since start.",
            st.mean_exec_ns / 1e9)  # fmt: skip
    out.add("gateway_protection_cycle_period_seconds", "gauge", "Period of the protection cycle.",
            st.period_ns / 1e9)  # fmt: skip
    out.add("gateway_protection_sched_fifo", "gauge",
            "1 when the cycle runs SCHED_FIFO, 0 when refused or not asked.", 1 if st.sched_fifo == 1 else 0)
    out.add("gateway_protection_active_group", "gauge", "Settings group in service (0 before the first cycle).",
            st.active_group)  # fmt: skip
    out.add("gateway_protection_events_overflow_total", "counter",
            "Protection events lost because the shared-memory event ring was full.", _num(h.events_overflow, 0))


def _analytics(out: Exposition, a: Mapping[str, Any] | None) -> None:
    if a is None:
        return
    out.add("gateway_analytics_events_total", "counter", "Events the analytics raised.", _num(a.get("events"), 0))
    out.add("gateway_analytics_readings_total", "counter", "Readings the analytics processed.",
            _num(a.get("readings"), 0))  # fmt: skip
    out.add("gateway_analytics_errors_total", "counter", "Analytic runs that failed.", _num(a.get("errors"), 0))
    out.add("gateway_analytics_skipped_rows_total", "counter", "Readings the analytics skipped (worker busy).",
            _num(a.get("skipped_rows"), 0))  # fmt: skip

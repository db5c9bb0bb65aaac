"""The summary `gateway check-config` prints for a valid config."""

from __future__ import annotations

from gateway.config import DeviceConfig, GatewayConfig
from protocols.modbus import plan_device, requests_per_second


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_summary(cfg: GatewayConfig) -> str:
    devices = cfg.devices()
    n_points = sum(len(d.points) for _, d in devices)
    modbus = [d for link, d in devices if link.protocol.startswith("modbus")]
    total_rps = sum(requests_per_second(d) for d in modbus)
    naive_rps = sum(1.0 / p.period_s for d in modbus for p in d.points)
    lines = [
        f"config OK: gateway {cfg.id!r} ({cfg.source})",
        f"  {_plural(len(cfg.links), 'link')}, {_plural(len(devices), 'device')}, {_plural(n_points, 'point')}",
        f"  store: {cfg.store_path} (budget {cfg.storage.disk_budget_mb:g} MiB)",
    ]
    if modbus:
        coalesced = f"{total_rps:.1f} Modbus requests/s after block coalescing"
        lines.insert(2, f"  {coalesced} ({naive_rps:.1f} if read one point per request)")
    prot = cfg.protection
    if prot.group1 or prot.group2:
        for n, group in ((1, prot.group1), (2, prot.group2)):
            names = ", ".join(f"{e.name} ({e.type})" for e in group) or "none"
            active = " (active)" if prot.active_group == n else ""
            lines.append(f"  protection group {n}{active}: {names}")
        rt = cfg.protection_runtime
        lines.append(f"  protection cycle {rt.period_ms:g} ms, source: {_describe_spec(rt.source)}")
        for o in rt.outputs:
            which = ", ".join(o.elements) or "every element"
            lines.append(f"  trip output {o.name}: {_describe_spec(o)} on {which}")
    for s in cfg.sinks:
        lines.append(f"  sink {s.name}: {s.url} (batch {s.batch_size}, every {s.max_interval_s:g} s)")
    for link in cfg.links:
        where = (
            f"{link.host}:{link.port}"
            if link.protocol != "modbus_rtu"
            else (f"{link.serial_port} {link.baudrate} {link.bytesize}{link.parity}{link.stopbits}")
        )
        lines.append(f"  link {link.name} ({link.protocol} {where})")
        if link.protocol in ("dnp3_tcp", "iec61850"):
            lines.extend(_session_device_line(link.protocol, d) for d in link.devices)
            continue
        if link.protocol == "mqtt":  # sensors push: one line per topic, not one per sensor
            for t in link.mqtt.topics:
                fields = {f.field for f in t.fields} | ({"temperature", "voltage", "current", "power"}
                                                      if t.profile == "solar" else set())  # fmt: skip
                lines.append(
                    f"    topic {t.filter}: {_plural(len(t.sensors), 'sensor')}"
                    f"{' (' + t.profile + ' profile)' if t.profile else ''}, {_plural(len(fields), 'field')}, QoS 1"
                )
            continue
        for d in link.devices:
            blocks = plan_device(d)
            n_req = sum(len(b) for b in blocks.values())
            lines.append(
                f"    device {d.name}: unit {d.unit_id}, {_plural(len(d.points), 'point')}, "
                f"{_plural(n_req, 'request')} per cycle, {requests_per_second(d):.2f} requests/s"
            )
    a = cfg.analytics
    n_bus, n_meter = len(a.frequency.buses), len(a.energy.meters)
    parts = [
        f"frequency on {n_bus} {'bus' if n_bus == 1 else 'buses'}" if n_bus else "",
        f"energy of {_plural(n_meter, 'meter')}" if n_meter else "",
        f"anomaly scoring of {_plural(len(a.anomaly.devices), 'device')}" if a.anomaly is not None else "",
    ]
    if any(parts):
        lines.append("analytics: " + ", ".join(p for p in parts if p))
    return "\n".join(lines)


def _session_device_line(protocol: str, d: DeviceConfig) -> str:
    head = f"    device {d.name}: {_plural(len(d.points), 'point')}"
    if protocol == "dnp3_tcp":
        s = d.dnp3
        classes = [f"{c}: {p:g} s" for c, p in (("1", s.class1_period_s), ("2", s.class2_period_s),
                                                ("3", s.class3_period_s)) if p > 0]
        integrity = f"every {s.integrity_period_s:g} s" if s.integrity_period_s > 0 else "at start/restart only"
        return (
            f"{head}, outstation {s.outstation_address} (master {s.master_address}), integrity {integrity}, "
            f"event polls {', '.join(classes) or 'none'}, unsolicited {'on' if s.unsolicited else 'off'}"
        )
    reports = d.iec61850.reports
    return f"{head}, {_plural(len(reports), 'report')} ({', '.join(reports) or 'polling only'})"


def _describe_spec(spec: object) -> str:
    """One line for a protection source or output spec."""
    if spec is None:
        return "none"
    name = type(spec).__name__
    host, port = getattr(spec, "host", None), getattr(spec, "port", None)
    if name == "ModbusMeasurementSpec":
        every = getattr(spec, "poll_period_s", 0) * 1000
        stale = getattr(spec, "stale_after_s", 0) * 1000
        return f"modbus {host}:{port} unit {getattr(spec, 'unit_id', '')}, every {every:g} ms, stale after {stale:g} ms"
    if name == "ModbusCoilOutputSpec":
        return f"coil {getattr(spec, 'coil', '')} of {host}:{port} unit {getattr(spec, 'unit_id', '')}"
    if name == "ComtradeFileSource":
        return f"COMTRADE playback of {getattr(spec, 'file', '')}" + (" (loop)" if getattr(spec, "loop", False) else "")
    return name.removesuffix("Spec").lower()

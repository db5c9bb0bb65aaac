"""The summary `gateway check-config` prints for a valid config."""

from __future__ import annotations

from gateway.config import GatewayConfig
from protocols.modbus import plan_device, requests_per_second


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_summary(cfg: GatewayConfig) -> str:
    devices = cfg.devices()
    n_points = sum(len(d.points) for _, d in devices)
    total_rps = sum(requests_per_second(d) for _, d in devices)
    naive_rps = sum(1.0 / p.period_s for _, d in devices for p in d.points)
    lines = [
        f"config OK: gateway {cfg.id!r} ({cfg.source})",
        f"  {_plural(len(cfg.links), 'link')}, {_plural(len(devices), 'device')}, {_plural(n_points, 'point')}",
        f"  {total_rps:.1f} Modbus requests/s after block coalescing ({naive_rps:.1f} if read one point per request)",
        f"  store: {cfg.store_path} (budget {cfg.storage.disk_budget_mb:g} MiB)",
    ]
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
            if link.protocol == "modbus_tcp"
            else (f"{link.serial_port} {link.baudrate} {link.bytesize}{link.parity}{link.stopbits}")
        )
        lines.append(f"  link {link.name} ({link.protocol} {where})")
        for d in link.devices:
            blocks = plan_device(d)
            n_req = sum(len(b) for b in blocks.values())
            lines.append(
                f"    device {d.name}: unit {d.unit_id}, {_plural(len(d.points), 'point')}, "
                f"{_plural(n_req, 'request')} per cycle, {requests_per_second(d):.2f} requests/s"
            )
    return "\n".join(lines)


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

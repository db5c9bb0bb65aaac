"""``gateway doctor``: is this machine and this config ready to run the gateway? One line per check.

Each check has two halves: a *probe* that gathers facts from the machine (``probe_*``: runs commands, opens
sockets, reads files; never raises) and a pure *judge* (``check_*``: facts in, :class:`Check` out), so every state
of every check is tested with injected facts. :func:`collect` runs the probes for a config, :func:`evaluate` the
judges, :func:`format_checks` prints them.

Checks: config (loads, with warnings), clock (timedatectl / chronyc / adjtimex), disk (free space of data_dir's
filesystem vs the storage budget), realtime (SCHED_FIFO allowed: RLIMIT_RTPRIO or CAP_SYS_NICE), panel port,
devices (TCP connect to every TCP link), serial ports (exist, read/write for this user), cloud (every sink: TCP,
and the TLS handshake with its CA and client certificate for https/mqtts), certificates (sinks', mqtt links' and
the panel's: WARN under 30 days, FAIL expired).

Exit code: 0 when no check FAILs, 1 otherwise (WARN does not fail).

Threads: the CLI's main thread; blocking I/O with short timeouts.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as dt
import errno
import grp
import json
import os
import resource
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from gateway.config import GatewayConfig

__all__ = [
    "CertFacts",
    "Check",
    "ClockFacts",
    "DiskFacts",
    "EndpointFacts",
    "Facts",
    "PanelPortFacts",
    "RtFacts",
    "SerialFacts",
    "SinkFacts",
    "check_certificate",
    "check_clock",
    "check_config",
    "check_device",
    "check_disk",
    "check_panel_port",
    "check_realtime",
    "check_serial",
    "check_sink",
    "collect",
    "evaluate",
    "exit_code",
    "format_checks",
    "run_doctor",
]

Status = Literal["OK", "WARN", "FAIL"]
CERT_WARN_DAYS: Final = 30
_MiB: Final = 1024 * 1024
_CAP_SYS_NICE: Final = 23


@dataclass(frozen=True, slots=True)
class Check:
    name: str  # short check name, e.g. "clock", "device feeder1"
    status: Status
    message: str
    hint: str = ""  # what to do about a WARN/FAIL


# ----------------------------------------------------------------------------------------------- facts


@dataclass(frozen=True, slots=True)
class ClockFacts:
    source: str  # "timedatectl", "chronyc", "adjtimex" or "" (nothing could tell)
    synchronized: bool | None  # None = unknown
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DiskFacts:
    path: Path  # the directory measured (data_dir, or its nearest existing parent)
    free_bytes: int
    total_bytes: int
    store_bytes: int = 0  # size of the existing store (its space is already taken from free)
    error: str = ""


@dataclass(frozen=True, slots=True)
class RtFacts:
    max_priority: int  # os.sched_get_priority_max(SCHED_FIFO); 0 = SCHED_FIFO not available
    rlimit_rtprio: int  # soft RLIMIT_RTPRIO
    cap_sys_nice: bool
    uid: int


@dataclass(frozen=True, slots=True)
class EndpointFacts:
    name: str  # link name
    host: str
    port: int
    ok: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class PanelPortFacts:
    host: str
    port: int
    free: bool  # we could bind it
    ours: bool = False  # in use by a gateway with this config's id (its /healthz answered)
    error: str = ""


@dataclass(frozen=True, slots=True)
class SerialFacts:
    link: str
    path: str
    exists: bool
    access: bool = False  # readable and writable by this user
    group: str = ""  # owning group of the device node
    in_group: bool = False  # this user is a member of it


@dataclass(frozen=True, slots=True)
class SinkFacts:
    name: str
    url: str
    enabled: bool = True
    reachable: bool = False  # TCP connect
    tls: bool | None = None  # handshake (with the configured CA and client cert) ok; None = not a TLS URL / not tried
    error: str = ""


@dataclass(frozen=True, slots=True)
class CertFacts:
    label: str  # e.g. "sink cloud client cert"
    path: Path
    not_after: dt.datetime | None = None  # UTC
    error: str = ""


@dataclass
class Facts:
    clock: ClockFacts
    rt: RtFacts
    disk: DiskFacts | None = None
    panel: PanelPortFacts | None = None
    devices: list[EndpointFacts] = field(default_factory=list)
    serial: list[SerialFacts] = field(default_factory=list)
    sinks: list[SinkFacts] = field(default_factory=list)
    certs: list[CertFacts] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- judges


def check_config(path: Path, cfg: GatewayConfig | None, problems: Sequence[str], warnings: Sequence[str]) -> Check:
    if cfg is None:
        first = problems[0] if problems else "cannot be loaded"
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return Check("config", "FAIL", f"{first}{more}", f"run `gateway check-config {path}` for every error")
    devices = sum(len(lk.devices) for lk in cfg.links)
    msg = f"{path}: {len(cfg.links)} links, {devices} devices, {len(cfg.sinks)} sinks"
    if warnings:
        return Check("config", "WARN", f"{msg}; {warnings[0]}", "see `gateway check-config`")
    return Check("config", "OK", msg)


def check_clock(f: ClockFacts) -> Check:
    if f.synchronized is True:
        return Check("clock", "OK", f"synchronised ({f.source}{': ' + f.detail if f.detail else ''})")
    hint = ("timestamps of Modbus readings and of the gateway's events come from this clock: enable NTP "
            "(timedatectl set-ntp true, or configure chrony) and check the NTP server is reachable")
    if f.synchronized is False:
        return Check("clock", "WARN", f"NOT synchronised ({f.source}{': ' + f.detail if f.detail else ''})", hint)
    return Check("clock", "WARN", f"synchronisation state unknown{': ' + f.detail if f.detail else ''}", hint)


def check_disk(f: DiskFacts, budget_mb: float, reserve_mb: float) -> Check:
    if f.error:
        return Check("disk", "FAIL", f"{f.path}: {f.error}", "create data_dir and give the gateway user write access")
    free_mb = f.free_bytes / _MiB
    store_mb = f.store_bytes / _MiB
    usable_mb = free_mb + store_mb - reserve_mb  # what the store may grow to
    msg = (f"{f.path}: {free_mb:,.0f} MiB free of {f.total_bytes / _MiB:,.0f} MiB; store budget {budget_mb:,.0f} MiB"
           f" + reserve {reserve_mb:,.0f} MiB" + (f", store now {store_mb:,.0f} MiB" if f.store_bytes else ""))
    if free_mb < reserve_mb:
        return Check("disk", "FAIL", msg, "less free space than storage.reserve_free_mb: the store cannot write; "
                     "free space or move data_dir")
    if usable_mb < budget_mb:
        return Check("disk", "WARN", msg, f"the store can only grow to about {max(usable_mb, 0):,.0f} MiB: lower "
                     "storage.disk_budget_mb or free space (older data is reclaimed earlier)")
    return Check("disk", "OK", msg)


def check_realtime(f: RtFacts, wanted: int, protection: bool) -> Check:
    allowed = f.max_priority > 0 and (f.uid == 0 or f.cap_sys_nice or f.rlimit_rtprio >= max(wanted, 1))
    how = ("root" if f.uid == 0 else "CAP_SYS_NICE" if f.cap_sys_nice else f"RLIMIT_RTPRIO={f.rlimit_rtprio}")
    if allowed:
        return Check("realtime", "OK", f"SCHED_FIFO priority {wanted} allowed ({how})")
    msg = (f"SCHED_FIFO priority {wanted} not allowed for this user (RLIMIT_RTPRIO={f.rlimit_rtprio}, "
           f"no CAP_SYS_NICE)" if f.max_priority > 0 else "SCHED_FIFO is not available on this system")
    if not protection or wanted == 0:
        return Check("realtime", "OK", f"{msg}; not needed (no protection configured)")
    return Check("realtime", "WARN", f"{msg}: the protection cycle runs with normal priority",
                 "run under deploy/systemd/gateway.service (LimitRTPRIO=90, LimitMEMLOCK=infinity), or "
                 "lower [protection] fifo_priority to the allowed limit")


def check_panel_port(f: PanelPortFacts | None) -> Check:
    if f is None:
        return Check("panel port", "OK", "panel disabled (port = 0)")
    where = f"{f.host}:{f.port}"
    if f.free:
        return Check("panel port", "OK", f"{where} is free")
    if f.ours:
        return Check("panel port", "OK", f"{where} is in use by this gateway (running)")
    return Check("panel port", "FAIL", f"{where} is in use by another program{': ' + f.error if f.error else ''}",
                 f"stop it (ss -ltnp 'sport = :{f.port}' shows which) or set [panel] port")


def check_device(f: EndpointFacts) -> Check:
    where = f"{f.host}:{f.port}"
    if f.ok:
        return Check(f"link {f.name}", "OK", f"{where} accepts TCP connections")
    return Check(f"link {f.name}", "FAIL", f"{where} unreachable: {f.error}",
                 "check the address, cabling/VLAN, the device's TCP port and any firewall; "
                 "`gateway probe` talks to it directly")


def check_serial(f: SerialFacts) -> Check:
    name = f"serial {f.link}"
    if not f.exists:
        return Check(name, "FAIL", f"{f.path} does not exist",
                     "plug the adapter in; `ls /dev/serial/by-id/` names it stably")
    if not f.access:
        grp_hint = (f"add the user to group {f.group!r} (usermod -aG {f.group} $USER; log in again)"
                    if f.group and not f.in_group else "give the gateway user read/write access")
        return Check(name, "FAIL", f"{f.path} is not readable and writable by this user", grp_hint)
    return Check(name, "OK", f"{f.path} readable and writable")


def check_sink(f: SinkFacts) -> Check:
    name = f"cloud {f.name}"
    if not f.enabled:
        return Check(name, "OK", f"{f.url}: disabled")
    if not f.reachable:
        return Check(name, "WARN", f"{f.url} unreachable: {f.error}",
                     "readings are kept in the local store until it is reachable; check DNS, routing, the proxy "
                     "and the firewall")
    if f.tls is False:
        return Check(name, "FAIL", f"{f.url}: TLS handshake failed: {f.error}",
                     "check ca_file (the CA that signed the receiver's certificate), cert_file/key_file and the "
                     "clock")
    return Check(name, "OK", f"{f.url} reachable" + (" (TLS handshake OK)" if f.tls else ""))


def check_certificate(f: CertFacts, now: dt.datetime) -> Check:
    name = f"cert {f.label}"
    if f.error or f.not_after is None:
        return Check(name, "FAIL", f"{f.path}: {f.error or 'no expiry date'}", "check the file is a PEM certificate")
    days = (f.not_after - now).total_seconds() / 86400
    when = f.not_after.strftime("%Y-%m-%d")
    if days < 0:
        return Check(name, "FAIL", f"{f.path} expired on {when}", "renew the certificate")
    if days < CERT_WARN_DAYS:
        return Check(name, "WARN", f"{f.path} expires on {when} ({days:.0f} days)", "renew it soon")
    return Check(name, "OK", f"{f.path} valid until {when} ({days:.0f} days)")


def evaluate(cfg: GatewayConfig | None, facts: Facts, now: dt.datetime) -> list[Check]:
    """Every check except the config's, from ``facts`` (the judges only; no I/O)."""
    out = [check_clock(facts.clock)]
    protection = cfg is not None and cfg.protection_runtime.source is not None and bool(
        cfg.protection.group1 or cfg.protection.group2)
    wanted = cfg.protection_runtime.fifo_priority if cfg is not None else 80
    out.append(check_realtime(facts.rt, wanted, protection))
    if cfg is None:
        return out
    if facts.disk is not None:
        out.append(check_disk(facts.disk, cfg.storage.disk_budget_mb, cfg.storage.reserve_free_mb))
    out.append(check_panel_port(facts.panel))
    out += [check_device(d) for d in facts.devices]
    out += [check_serial(s) for s in facts.serial]
    out += [check_sink(s) for s in facts.sinks]
    out += [check_certificate(c, now) for c in facts.certs]
    return out


def exit_code(checks: Sequence[Check]) -> int:
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def format_checks(checks: Sequence[Check]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"{c.status:<4}  {c.name:<{width}}  {c.message}")
        if c.hint and c.status != "OK":
            lines.append(f"{'':<4}  {'':<{width}}  hint: {c.hint}")
    fails = sum(c.status == "FAIL" for c in checks)
    warns = sum(c.status == "WARN" for c in checks)
    lines.append(f"{len(checks)} checks: {fails} FAIL, {warns} WARN")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- probes

Runner = Callable[[Sequence[str]], "tuple[int, str] | None"]


def _run(cmd: Sequence[str]) -> tuple[int, str] | None:
    """``(exit status, stdout)`` of a command, or None when it is not installed / does not finish in 3 s."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=3.0, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.returncode, p.stdout


class _Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
                ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
                ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
                ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
                ("padding", ctypes.c_int * 11)]


def _adjtimex() -> tuple[int, int] | None:
    """``(clock state, status bits)`` from adjtimex(2) (read only: modes = 0), or None when unavailable."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        tx = _Timex()
        state = int(libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state, int(tx.status)


def probe_clock(run: Runner = _run, adjtimex: Callable[[], tuple[int, int] | None] = _adjtimex) -> ClockFacts:
    got = run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    if got is not None and got[0] == 0 and got[1].strip() in ("yes", "no"):
        return ClockFacts("timedatectl", got[1].strip() == "yes", f"NTPSynchronized={got[1].strip()}")
    got = run(["chronyc", "tracking"])
    if got is not None and got[0] == 0:
        for line in got[1].splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Leap status":
                value = value.strip()
                return ClockFacts("chronyc", value != "Not synchronised", f"leap status {value}")
    tx = adjtimex()
    if tx is not None:
        state, status = tx
        unsync = state == 5 or bool(status & 0x0040)  # TIME_ERROR / STA_UNSYNC
        return ClockFacts("adjtimex", not unsync, "kernel clock " + ("unsynchronised" if unsync else "synchronised"))
    return ClockFacts("", None, "no timedatectl, no chronyc and adjtimex unavailable")


def probe_rt() -> RtFacts:
    try:
        max_prio = os.sched_get_priority_max(os.SCHED_FIFO)
    except (AttributeError, OSError):
        max_prio = 0
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_RTPRIO)
    except (AttributeError, ValueError, OSError):
        soft = 0
    cap = False
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                cap = bool(int(line.split()[1], 16) >> _CAP_SYS_NICE & 1)
    rl = int(soft) if soft != resource.RLIM_INFINITY else 99
    return RtFacts(int(max_prio), rl, cap, os.getuid())


def _dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return 0


def probe_disk(cfg: GatewayConfig) -> DiskFacts:
    path = cfg.data_dir
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError as exc:
        return DiskFacts(path, 0, 0, error=exc.strerror or str(exc))
    store = 0
    with contextlib.suppress(OSError):
        store = _dir_size(cfg.store_path) + _dir_size(cfg.store_path.with_name(cfg.store_path.name + ".wal"))
    shown = path if probe == path else probe
    return DiskFacts(shown, usage.free, usage.total, store)


def _tcp(host: str, port: int, timeout_s: float) -> str:
    """"" when a TCP connection to host:port opens within the timeout, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return ""
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except socket.gaierror as exc:
        return f"cannot resolve {host!r} ({exc.strerror})"
    except OSError as exc:
        return exc.strerror or str(exc)


def probe_devices(cfg: GatewayConfig, timeout_s: float = 2.0) -> list[EndpointFacts]:
    out = []
    for lk in cfg.links:
        if lk.protocol == "modbus_rtu":
            continue
        err = _tcp(lk.host, lk.port, timeout_s)
        out.append(EndpointFacts(lk.name, lk.host, lk.port, not err, err))
    return out


def probe_panel(cfg: GatewayConfig, timeout_s: float = 2.0) -> PanelPortFacts | None:
    p = cfg.panel
    if p.port == 0:
        return None
    host = p.host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, p.port))
        return PanelPortFacts(host, p.port, True)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            return PanelPortFacts(host, p.port, False, error=exc.strerror or str(exc))
    ours = _healthz_is(cfg, host, timeout_s)
    return PanelPortFacts(host, p.port, False, ours)


def _healthz_is(cfg: GatewayConfig, host: str, timeout_s: float) -> bool:
    """Whether the panel at host:port answers /healthz with this config's gateway id."""
    import http.client

    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    conn: http.client.HTTPConnection
    if cfg.panel.tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # only asking who it is; the panel's certificate is often self-signed
        conn = http.client.HTTPSConnection(target, cfg.panel.port, timeout=timeout_s, context=ctx)
    else:
        conn = http.client.HTTPConnection(target, cfg.panel.port, timeout=timeout_s)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        body = json.loads(resp.read(65536) or b"{}")
        return isinstance(body, dict) and body.get("gateway_id") == cfg.id
    except (OSError, ValueError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def probe_serial(cfg: GatewayConfig) -> list[SerialFacts]:
    out = []
    for lk in cfg.links:
        if lk.protocol != "modbus_rtu":
            continue
        path = lk.serial_port
        try:
            st = os.stat(path)
        except OSError:
            out.append(SerialFacts(lk.name, path, False))
            continue
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        in_group = st.st_gid in os.getgroups() or st.st_gid == os.getgid()
        out.append(SerialFacts(lk.name, path, True, os.access(path, os.R_OK | os.W_OK), group, in_group))
    return out


_SCHEME_PORTS: Final = {"http": 80, "https": 443, "mqtt": 1883, "mqtts": 8883}


def probe_sink(name: str, url: str, *, enabled: bool = True, ca_file: Path | None = None,
               cert_file: Path | None = None, key_file: Path | None = None, timeout_s: float = 3.0) -> SinkFacts:
    if not enabled:
        return SinkFacts(name, url, enabled=False)
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or _SCHEME_PORTS.get(parts.scheme, 443)
    except ValueError:
        return SinkFacts(name, url, error="bad port in the URL")
    tls = parts.scheme in ("https", "mqtts")
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except TimeoutError:
        return SinkFacts(name, url, error=f"no answer within {timeout_s:g} s")
    except socket.gaierror as exc:
        return SinkFacts(name, url, error=f"cannot resolve {host!r} ({exc.strerror})")
    except OSError as exc:
        return SinkFacts(name, url, error=exc.strerror or str(exc))
    with sock:
        if not tls:
            return SinkFacts(name, url, reachable=True)
        try:
            ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if cert_file is not None:
                ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
            with ctx.wrap_socket(sock, server_hostname=host) as tls_sock:
                tls_sock.settimeout(timeout_s)
        except ssl.SSLCertVerificationError as exc:
            return SinkFacts(name, url, reachable=True, tls=False, error=exc.verify_message or str(exc))
        except (ssl.SSLError, OSError) as exc:
            return SinkFacts(name, url, reachable=True, tls=False, error=str(exc))
    return SinkFacts(name, url, reachable=True, tls=True)


def probe_cert(label: str, path: Path) -> CertFacts:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        return CertFacts(label, path, error=exc.strerror or str(exc))
    except ValueError:
        return CertFacts(label, path, error="not a PEM certificate")
    return CertFacts(label, path, cert.not_valid_after_utc)


def cert_paths(cfg: GatewayConfig) -> list[tuple[str, Path]]:
    """Certificates whose expiry matters: sinks' and mqtt links' client certificates, the panel's (if present)."""
    out: list[tuple[str, Path]] = []
    for s in cfg.sinks:
        if s.cert_file is not None:
            out.append((f"sink {s.name}", s.cert_file))
    for lk in cfg.links:
        if lk.protocol == "mqtt" and lk.mqtt.cert_file is not None:
            out.append((f"link {lk.name}", lk.mqtt.cert_file))
    if cfg.panel.port and cfg.panel.tls:
        from gateway.panel.tls import panel_paths

        _users, cert, _key = panel_paths(cfg)
        if cert.is_file():
            out.append(("panel", cert))
    return out


def collect(cfg: GatewayConfig | None, *, timeout_s: float = 2.0) -> Facts:
    """Run every probe that applies (the machine-level ones even without a config)."""
    facts = Facts(clock=probe_clock(), rt=probe_rt())
    if cfg is None:
        return facts
    facts.disk = probe_disk(cfg)
    facts.panel = probe_panel(cfg, timeout_s)
    facts.devices = probe_devices(cfg, timeout_s)
    facts.serial = probe_serial(cfg)
    facts.sinks = [probe_sink(s.name, s.url, enabled=s.enabled, ca_file=s.ca_file, cert_file=s.cert_file,
                              key_file=s.key_file, timeout_s=timeout_s) for s in cfg.sinks]
    facts.certs = [probe_cert(label, path) for label, path in cert_paths(cfg)]
    return facts


def run_doctor(path: Path, *, timeout_s: float = 2.0, now: dt.datetime | None = None) -> list[Check]:
    """Load the config and run every check. Never raises for a bad config or an unreachable peer."""
    from gateway.config_load import ConfigError, load_config

    cfg: GatewayConfig | None
    try:
        cfg, warnings = load_config(path)
        problems: list[str] = []
    except ConfigError as exc:
        cfg, warnings, problems = None, [], [str(p) for p in exc.problems]
    checks = [check_config(path, cfg, problems, warnings)]
    facts = collect(cfg, timeout_s=timeout_s)
    checks += evaluate(cfg, facts, now or dt.datetime.now(dt.UTC))
    return checks

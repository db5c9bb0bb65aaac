"""``gateway doctor``: every judge with injected facts in each state, the probes that can run here for real (a
TCP listener, a TLS receiver with the test PKI, certificates, the panel port), and one whole run on a temp config."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from gateway.commission.doctor import (
    CertFacts,
    Check,
    ClockFacts,
    DiskFacts,
    EndpointFacts,
    PanelPortFacts,
    RtFacts,
    SerialFacts,
    SinkFacts,
    check_certificate,
    check_clock,
    check_config,
    check_device,
    check_disk,
    check_panel_port,
    check_realtime,
    check_serial,
    check_sink,
    exit_code,
    format_checks,
    probe_cert,
    probe_clock,
    probe_rt,
    probe_sink,
    run_doctor,
)
from gateway.config_load import load_config
from hil_tests.net import free_port
from hil_tests.testpki import CertAuthority
from tests.commission.helpers import cli

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
MiB = 1024 * 1024


# ------------------------------------------------------------------------------------------ judges


def test_config_check(tmp_path: Path) -> None:
    f = tmp_path / "gw.toml"
    f.write_text('version = 1\n[gateway]\nid = "t"\n')
    cfg, _ = load_config(f)
    assert check_config(f, cfg, [], []).status == "OK"
    assert check_config(f, cfg, [], ["no 'version' key"]).status == "WARN"
    bad = check_config(f, None, ["gw.toml: gateway.id: missing", "x"], [])
    assert bad.status == "FAIL" and bad.message == "gw.toml: gateway.id: missing (+1 more)"
    assert "check-config" in bad.hint


def test_clock_states() -> None:
    assert check_clock(ClockFacts("timedatectl", True, "NTPSynchronized=yes")).status == "OK"
    unsync = check_clock(ClockFacts("chronyc", False, "leap status Not synchronised"))
    assert unsync.status == "WARN" and "NOT synchronised" in unsync.message and "NTP" in unsync.hint
    unknown = check_clock(ClockFacts("", None, "nothing"))
    assert unknown.status == "WARN" and "unknown" in unknown.message


def test_clock_probe_sources() -> None:
    def runner(answers: dict[str, tuple[int, str] | None]):  # type: ignore[no-untyped-def]
        return lambda cmd: answers.get(cmd[0])

    f = probe_clock(runner({"timedatectl": (0, "yes\n")}), lambda: None)
    assert (f.source, f.synchronized) == ("timedatectl", True)
    chrony = "Ref time : x\nLeap status     : Not synchronised\n"
    f = probe_clock(runner({"timedatectl": (1, ""), "chronyc": (0, chrony)}), lambda: None)
    assert (f.source, f.synchronized) == ("chronyc", False)
    f = probe_clock(runner({"chronyc": (0, "Leap status     : Normal\n")}), lambda: None)
    assert (f.source, f.synchronized) == ("chronyc", True)
    assert probe_clock(runner({}), lambda: (0, 0)).synchronized is True  # TIME_OK, STA_UNSYNC clear
    assert probe_clock(runner({}), lambda: (5, 0x0040)).synchronized is False  # TIME_ERROR
    assert probe_clock(runner({}), lambda: None) == ClockFacts("", None, "no timedatectl, no chronyc and adjtimex "
                                                                         "unavailable")
    real = probe_clock()  # whatever this machine has: never raises
    assert real.source in ("timedatectl", "chronyc", "adjtimex", "")


def test_disk_states() -> None:
    p = Path("/data")
    assert check_disk(DiskFacts(p, 5000 * MiB, 10000 * MiB), 1024, 64).status == "OK"
    warn = check_disk(DiskFacts(p, 500 * MiB, 10000 * MiB), 1024, 64)
    assert warn.status == "WARN" and "disk_budget_mb" in warn.hint
    # the existing store's size counts as usable: it is the store's own space
    assert check_disk(DiskFacts(p, 500 * MiB, 10000 * MiB, store_bytes=900 * MiB), 1024, 64).status == "OK"
    assert check_disk(DiskFacts(p, 10 * MiB, 10000 * MiB), 1024, 64).status == "FAIL"
    assert check_disk(DiskFacts(p, 0, 0, error="Permission denied"), 1024, 64).status == "FAIL"


def test_realtime_states() -> None:
    assert check_realtime(RtFacts(99, 90, False, 1000), 80, True).status == "OK"
    assert check_realtime(RtFacts(99, 0, True, 1000), 80, True).status == "OK"
    assert check_realtime(RtFacts(99, 0, False, 0), 80, True).status == "OK"  # root
    warn = check_realtime(RtFacts(99, 50, False, 1000), 80, True)
    assert warn.status == "WARN" and "LimitRTPRIO" in warn.hint and "deploy/systemd" in warn.hint
    assert check_realtime(RtFacts(99, 0, False, 1000), 80, False).status == "OK"  # no protection: not needed
    assert check_realtime(RtFacts(0, 0, False, 1000), 80, True).status == "WARN"
    facts = probe_rt()
    assert facts.max_priority >= 0 and facts.rlimit_rtprio >= 0


def test_port_device_serial_sink_states() -> None:
    assert check_panel_port(None).status == "OK"
    assert check_panel_port(PanelPortFacts("0.0.0.0", 8080, True)).status == "OK"
    assert check_panel_port(PanelPortFacts("0.0.0.0", 8080, False, ours=True)).status == "OK"
    other = check_panel_port(PanelPortFacts("0.0.0.0", 8080, False))
    assert other.status == "FAIL" and "ss -ltnp" in other.hint
    assert check_device(EndpointFacts("feeders", "10.0.0.5", 502, True)).status == "OK"
    down = check_device(EndpointFacts("feeders", "10.0.0.5", 502, False, "Connection refused"))
    assert down.status == "FAIL" and down.name == "link feeders" and "Connection refused" in down.message
    assert check_serial(SerialFacts("rtu", "/dev/ttyUSB0", True, True, "dialout", True)).status == "OK"
    missing = check_serial(SerialFacts("rtu", "/dev/ttyUSB0", False))
    assert missing.status == "FAIL" and "by-id" in missing.hint
    denied = check_serial(SerialFacts("rtu", "/dev/ttyUSB0", True, False, "dialout", False))
    assert denied.status == "FAIL" and "dialout" in denied.hint
    assert check_sink(SinkFacts("c", "https://x", enabled=False)).status == "OK"
    assert check_sink(SinkFacts("c", "https://x", reachable=True, tls=True)).status == "OK"
    assert check_sink(SinkFacts("c", "http://x", reachable=True)).status == "OK"
    assert check_sink(SinkFacts("c", "https://x", error="timed out")).status == "WARN"
    bad_tls = check_sink(SinkFacts("c", "https://x", reachable=True, tls=False, error="unable to get local issuer"))
    assert bad_tls.status == "FAIL" and "ca_file" in bad_tls.hint


def test_certificate_states() -> None:
    p = Path("c.pem")
    assert check_certificate(CertFacts("sink c", p, NOW + dt.timedelta(days=200)), NOW).status == "OK"
    soon = check_certificate(CertFacts("sink c", p, NOW + dt.timedelta(days=10)), NOW)
    assert soon.status == "WARN" and "(10 days)" in soon.message
    assert check_certificate(CertFacts("sink c", p, NOW - dt.timedelta(days=1)), NOW).status == "FAIL"
    assert check_certificate(CertFacts("sink c", p, error="not a PEM certificate"), NOW).status == "FAIL"


def test_format_and_exit_code() -> None:
    checks: Sequence[Check] = [Check("clock", "OK", "synchronised"), Check("disk", "WARN", "low", "free space"),
                               Check("link a", "FAIL", "down", "check cabling")]
    text = format_checks(checks)
    assert text.splitlines() == [
        "OK    clock   synchronised",
        "WARN  disk    low",
        "              hint: free space",
        "FAIL  link a  down",
        "              hint: check cabling",
        "3 checks: 1 FAIL, 1 WARN",
    ]
    assert exit_code(checks) == 1 and exit_code(checks[:2]) == 0


# ------------------------------------------------------------------------------------------ real probes


class TlsServer:
    """Accepts connections on 127.0.0.1 and completes TLS handshakes with ``ctx`` (failed ones are dropped)."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, name="tls-server", daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                conn.close()

    def __enter__(self) -> TlsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def pki(tmp_path: Path) -> CertAuthority:
    return CertAuthority(tmp_path / "pki")


def test_sink_probe_tls(pki: CertAuthority) -> None:
    server = pki.issue_server(("127.0.0.1",))
    client = pki.issue_client("gw-1")
    with TlsServer(server.server_context(client_ca=pki.cert_file)) as srv:
        url = f"https://127.0.0.1:{srv.port}/ingest"
        ok = probe_sink("c", url, ca_file=pki.cert_file, cert_file=client.cert_file, key_file=client.key_file)
        assert (ok.reachable, ok.tls) == (True, True), ok.error
        wrong_ca = probe_sink("c", url)  # the system CAs do not know the test CA
        assert (wrong_ca.reachable, wrong_ca.tls) == (True, False) and "certificate" in wrong_ca.error
    gone = probe_sink("c", f"https://127.0.0.1:{free_port()}/", timeout_s=1.0)
    assert not gone.reachable and gone.error
    assert not probe_sink("c", "https://no-such-host.invalid/", timeout_s=1.0).reachable
    assert probe_sink("c", "https://x", enabled=False).enabled is False


def test_cert_probe(pki: CertAuthority, tmp_path: Path) -> None:
    client = pki.issue_client("gw-1")
    facts = probe_cert("sink c", client.cert_file)
    assert facts.not_after is not None and facts.not_after > dt.datetime.now(dt.UTC)
    junk = tmp_path / "junk.pem"
    junk.write_text("nope")
    assert probe_cert("x", junk).error == "not a PEM certificate"
    assert probe_cert("x", tmp_path / "missing.pem").error


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as s:  # the kernel completes connects from its backlog
        yield s.getsockname()[1]


def write_config(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "gw.toml"
    f.write_text('version = 1\n[gateway]\nid = "doc-1"\ndata_dir = "data"\n[storage]\ndisk_budget_mb = 1.0\n'
                 'reserve_free_mb = 1.0\n' + text)
    return f


def test_whole_run_on_a_temp_config(tmp_path: Path, listener: int, pki: CertAuthority,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    client = pki.issue_client("doc-1")
    dead = free_port()
    cfg = write_config(tmp_path, f"""
[panel]
port = {free_port()}
[[sinks]]
name = "cloud"
url = "https://127.0.0.1:{free_port()}/ingest"
ca_file = "{pki.cert_file}"
cert_file = "{client.cert_file}"
key_file = "{client.key_file}"
[[links]]
name = "up"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {listener}
[[links.devices]]
name = "m1"
points = [{{ name = "v", kind = "holding", address = 0 }}]
[[links]]
name = "down"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {dead}
[[links.devices]]
name = "m2"
points = [{{ name = "v", kind = "holding", address = 0 }}]
[[links]]
name = "rs485"
protocol = "modbus_rtu"
serial_port = "{tmp_path / 'ttyNOPE'}"
[[links.devices]]
name = "m3"
points = [{{ name = "v", kind = "holding", address = 0 }}]
""")
    checks = {c.name: c for c in run_doctor(cfg, timeout_s=1.0)}
    assert checks["config"].status == "OK"
    assert checks["clock"].status in ("OK", "WARN")
    assert checks["realtime"].status == "OK"  # no protection configured
    assert checks["disk"].status == "OK"
    assert checks["panel port"].status == "OK"
    assert checks["link up"].status == "OK"
    assert checks["link down"].status == "FAIL" and str(dead) in checks["link down"].message
    assert checks["serial rs485"].status == "FAIL"
    assert checks["cloud cloud"].status == "WARN"
    # the test PKI issues 30-day certificates: just under the 30-day warning line
    assert checks["cert sink cloud"].status == "WARN" and "days)" in checks["cert sink cloud"].message
    assert cli(["doctor", "-c", str(cfg), "--timeout", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  link down" in out and "hint:" in out and out.rstrip().endswith("WARN")


def test_run_without_fails_and_with_a_busy_panel_port(tmp_path: Path, listener: int,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, f"""
[panel]
port = 0
[[links]]
name = "up"
protocol = "modbus_tcp"
host = "127.0.0.1"
port = {listener}
[[links.devices]]
name = "m1"
points = [{{ name = "v", kind = "holding", address = 0 }}]
""")
    assert cli(["doctor", "-c", str(cfg)]) == 0
    assert "OK    panel port  panel disabled" in capsys.readouterr().out
    busy = cfg.read_text().replace("port = 0", f'host = "127.0.0.1"\nport = {listener}', 1)
    cfg.write_text(busy)
    checks = {c.name: c for c in run_doctor(cfg, timeout_s=0.5)}
    assert checks["panel port"].status == "FAIL" and "another program" in checks["panel port"].message


def test_bad_or_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_config(tmp_path, "[bogus]\n")
    assert cli(["doctor", "-c", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  config" in out and "unknown top-level key" in out and "clock" in out
    assert cli(["doctor", "-c", str(tmp_path / "none.toml")]) == 3
    cap = capsys.readouterr()
    assert "file not found" in cap.out + cap.err and "Traceback" not in cap.err

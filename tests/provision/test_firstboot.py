"""First-boot provisioning (gateway/provision) against the real receiver (cloud_sync.receiver, served by uvicorn
on 127.0.0.1 with a test CA): good files, bad files, an unreachable receiver, refused enrolments."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud_sync.receiver import DuckDBBackend
from cloud_sync.receiver.app import build_app
from cloud_sync.receiver.enrol import EnrolTokenFile
from cloud_sync.receiver.server import ReceiverServer, build_enrol_token_parser, make_enrolment, mint_enrol_from_args
from cloud_sync.receiver.tokens import mint_token
from gateway.config_load import load_config
from gateway.panel.roles import Role
from gateway.panel.users import UserStore, hash_password
from gateway.provision.admin import users_file
from gateway.provision.cli import add_commands, run
from gateway.provision.firstboot import ProvisionResult, first_boot, redact
from gateway.provision.status import provision_status
from gateway.provision.tomlw import dumps
from hil_tests.testpki import CertAuthority

GW = "sub-north-01"
PASSWORD = "correct horse battery staple"
PREVIOUS = """version = 1

[gateway]
id = "old-gateway"
data_dir = "{data}"
"""


@dataclass
class Site:
    root: Path
    boot: Path
    config: Path
    data: Path
    ca: CertAuthority
    tokens: EnrolTokenFile

    def mint(self, gateway_id: str = GW) -> str:
        token = mint_token()
        self.tokens.add(gateway_id, token)
        return token

    def write_previous(self) -> str:
        text = PREVIOUS.format(data=self.data)
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(text)
        return text


@pytest.fixture
def site(tmp_path: Path) -> Site:
    boot = tmp_path / "boot" / "firmware" / "gateway.toml"
    boot.parent.mkdir(parents=True)
    return Site(tmp_path, boot, tmp_path / "etc" / "gateway.toml", tmp_path / "data",
                CertAuthority(tmp_path / "ca"), EnrolTokenFile(tmp_path / "receiver.enrol-tokens"))


@pytest.fixture
async def receiver(site: Site) -> AsyncIterator[str]:
    app = build_app(DuckDBBackend(site.root / "r.duckdb"), {GW: "upload-token"},
                    enrolment=make_enrolment(site.tokens.path, site.ca.cert_file, site.ca.key_file))
    async with ReceiverServer(app) as server:
        yield server.url


def provisioning(url: str, *, enrol_token: str, ca_file: Path, admin: str = "", sink_url: str = "",
                 extra: str = "") -> str:
    admin = admin or f'admin_user = "alice"\nadmin_password_hash = "{hash_password(PASSWORD)}"'
    return f"""version = 1

[gateway]
id = "{GW}"
log_level = "INFO"

[panel]
host = "127.0.0.1"
port = 8080

[[sinks]]
name = "cloud"
url = "{sink_url or url + '/v1/batches'}"
token = "upload-token"

[[links]]
name = "bay-switch"
protocol = "modbus_tcp"
host = "10.0.0.20"

[[links.devices]]
name = "feeder1"
unit_id = 1
points = [
  {{ name = "Ia", kind = "input", address = 0, type = "float32", unit = "A" }},
]
{extra}
[provision]
{admin}
enrol_url = "{url}"
enrol_token = "{enrol_token}"
ca_file = "{ca_file}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def provision(site: Site) -> ProvisionResult:
    return await asyncio.to_thread(first_boot, site.boot, site.config, site.data, timeout_s=10.0)


# ------------------------------------------------------------------------------------------------ good files


async def test_good_file_installs_config_admin_and_enrolled_identity(site: Site, receiver: str) -> None:
    site.write_previous()
    site.boot.write_text(provisioning(receiver, enrol_token=site.mint(), ca_file=site.ca.cert_file))
    result = await asyncio.to_thread(first_boot, site.boot, site.config, site.data, timeout_s=10.0)
    assert (result.action, result.enrolment, result.exit_code, result.problems) == ("provisioned", "done", 0, [])

    assert not site.boot.exists() and not site.boot.with_name("gateway.toml.rejected").exists()
    cfg, _ = load_config(site.config)
    assert cfg.id == GW and cfg.data_dir == site.data and cfg.devices()[0][1].name == "feeder1"
    assert site.config.stat().st_mode & 0o777 == 0o640
    assert "[provision]" not in site.config.read_text() and "enrol_token" not in site.config.read_text()
    ident = site.data / "identity"
    sink = cfg.sinks[0]
    assert (sink.cert_file, sink.key_file, sink.ca_file) == (ident / "cert.pem", ident / "key.pem", ident / "ca.pem")
    assert sink.token == "upload-token"
    assert (ident / "key.pem").stat().st_mode & 0o777 == 0o600

    cert = x509.load_pem_x509_certificate((ident / "cert.pem").read_bytes())
    ca_cert = x509.load_pem_x509_certificate(site.ca.cert_file.read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == GW
    key = serialization.load_pem_private_key((ident / "key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    cert_key = cert.public_key()
    assert isinstance(cert_key, ec.EllipticCurvePublicKey)
    assert cert_key.public_numbers() == key.public_key().public_numbers()
    assert not (ident / "pending-enrolment.json").exists()
    # the uplink's TLS identity works: a TLS client context loads the issued certificate with its key
    site.ca.client_context().load_cert_chain(ident / "cert.pem", ident / "key.pem")

    users = UserStore(users_file(site.data))
    user = users.verify("alice", PASSWORD)
    assert user is not None and user.role == Role.ADMIN
    assert users.verify("alice", "wrong password!!") is None
    status = provision_status(site.data)
    assert status is not None and status["ok"] is True and status["state"] == "provisioned"

    assert site.tokens.path.read_text().startswith(f"{GW}=used:sha256:")  # the token is used up


async def test_used_enrolment_token_is_refused(site: Site, receiver: str) -> None:
    token = site.mint()
    assert site.tokens.consume(GW, token) == "ok"  # used already (e.g. a first gateway image with the same file)
    site.boot.write_text(provisioning(receiver, enrol_token=token, ca_file=site.ca.cert_file))
    result = await provision(site)
    assert (result.action, result.enrolment, result.exit_code) == ("provisioned", "refused", 4)
    assert "409" in result.problems[0] and "used already" in result.problems[0]
    assert not site.boot.exists()  # secrets are removed from the boot partition even so
    assert not (site.data / "identity" / "pending-enrolment.json").exists()  # no retry: the token will not work
    load_config(site.config)  # the config is installed and the daemon starts (uploads wait for a certificate)
    status = provision_status(site.data)
    assert status is not None and status["ok"] is False and status["state"] == "enrolment-refused"


async def test_setup_token_variant(site: Site, receiver: str) -> None:
    setup = "setup-" + mint_token()
    site.boot.write_text(provisioning(receiver, enrol_token=site.mint(), ca_file=site.ca.cert_file,
                                      admin=f'setup_token = "{setup}"\nsetup_token_ttl_h = 24'))
    result = await provision(site)
    assert (result.action, result.enrolment, result.exit_code) == ("provisioned", "done", 0)
    users = UserStore(users_file(site.data))
    assert not users.has_admin() and users.check_setup_token(setup)
    assert setup not in users_file(site.data).read_text()  # only its hash is stored
    users.create_first_admin(setup, "bob", PASSWORD)
    assert users.verify("bob", PASSWORD) is not None and not users.check_setup_token(setup)


async def test_inline_ca_pem_and_mqtts_sink(site: Site, receiver: str) -> None:
    """ca_pem inline; an mqtts sink on the receiver's host gets the identity (the loader requires cert_file)."""
    ca_pem = site.ca.cert_file.read_text()
    text = provisioning(receiver, enrol_token=site.mint(), ca_file=Path("x")).replace(
        'ca_file = "x"', f'ca_pem = """\n{ca_pem}"""')
    text = text.replace("[provision]", '[[sinks]]\nname = "mq"\ntype = "mqtt"\nurl = "mqtts://127.0.0.1:8883"\n'
                        "batch_size = 1000\n\n[provision]")
    site.boot.write_text(text)
    result = await provision(site)
    assert (result.action, result.enrolment) == ("provisioned", "done"), result.problems
    cfg, _ = load_config(site.config)
    mq = next(s for s in cfg.sinks if s.name == "mq")
    assert mq.cert_file == site.data / "identity" / "cert.pem"


# ------------------------------------------------------------------------------------------------ bad files


BAD_FILES = {
    "syntax": ("[gateway\nid = 1\n", "", "not valid TOML"),
    "unknown-key": ('[[sinks]]\nname = "x"\nurll = "https://a/v1/batches"\n', "sinks[x].urll", "did you mean 'url'"),
    "bad-device": ("", "links[bay-switch].devices[feeder1].unit_id", "feeder1"),
    "provision-key": ("", "provision.enrol_tokn", "did you mean 'enrol_token'"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_changes_nothing_and_says_why(site: Site, case: str, caplog: pytest.LogCaptureFixture) -> None:
    previous = site.write_previous()
    broken, key, words = BAD_FILES[case]
    token = "enrol-secret-" + mint_token()
    text = provisioning("https://ingest.example.net", enrol_token=token, ca_file=site.ca.cert_file)
    if case == "syntax":
        text = broken + text
    elif case == "unknown-key":
        text = text.replace("[provision]", broken + "\n[provision]")
    elif case == "bad-device":
        text = text.replace("unit_id = 1", "unit_id = 999")
    else:
        text = text.replace("[provision]", '[provision]\nenrol_tokn = "x"')
    site.boot.write_text(text)
    hash_line = next(line for line in text.splitlines() if line.startswith("admin_password_hash"))

    with caplog.at_level("ERROR", logger="gateway.provision"):
        result = first_boot(site.boot, site.config, site.data)
    assert (result.action, result.exit_code) == ("rejected", 1)
    assert any(str(site.boot) in p and key in p and words in p for p in result.problems), result.problems
    if case == "bad-device":
        assert any("(device feeder1)" in p for p in result.problems)
    # the journal names every problem
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert all(p in logged for p in result.problems)
    # the previous config is untouched and still loads: the daemon starts with it
    assert site.config.read_text() == previous
    cfg, _ = load_config(site.config)
    assert cfg.id == "old-gateway"
    assert not (site.data / "identity").exists() and not users_file(site.data).exists()
    # the panel's message
    status = provision_status(site.data)
    assert status is not None and status["ok"] is False and status["state"] == "rejected"
    assert status["problems"] == result.problems and status["file"] == str(site.boot)
    # the file is kept for the technician without its secrets
    assert not site.boot.exists()
    rejected = site.boot.with_name("gateway.toml.rejected").read_text()
    assert token not in rejected and "upload-token" not in rejected and hash_line.split('"')[1] not in rejected
    assert "<redacted>" in rejected and 'name = "feeder1"' in rejected
    assert f"# problem: {result.problems[0]}" in rejected


def test_bad_file_without_any_config_writes_a_minimal_one(site: Site) -> None:
    site.boot.write_text('[gateway]\nid = "gw-x"\nfoo = 1\n')
    result = first_boot(site.boot, site.config, site.data)
    assert result.exit_code == 1 and any("gateway.foo" in p for p in result.problems)
    cfg, _ = load_config(site.config)
    assert cfg.id == "gw-x" and cfg.data_dir == site.data and cfg.panel.tls
    assert provision_status(site.data) is not None


def test_provision_table_checks(site: Site) -> None:
    site.write_previous()
    site.boot.write_text(provisioning(
        "http://10.1.2.3:8081", enrol_token="tok en", ca_file=site.root / "missing.pem",
        admin='admin_user = "alice"\nadmin_password_hash = "md5$abc"\nsetup_token = "short"'))
    result = first_boot(site.boot, site.config, site.data)
    text = "\n".join(result.problems)
    for key in ("provision.enrol_url", "provision.enrol_token", "provision.ca_file", "provision.admin_password_hash",
                "provision.setup_token"):
        assert key in text, key
    assert "loopback" in text and "scrypt$" in text


def test_redact_keeps_the_rest() -> None:
    text = ('token = "abc"\nx = { token = \'t2\', n = 1 }\nenrol_token = """\nmulti\n"""\nname = "keep"\n'
            "admin_password_hash = scrypt$1$2\n")
    out = redact(text)
    assert "abc" not in out and "t2" not in out and "multi" not in out and "scrypt" not in out
    assert 'name = "keep"' in out and "n = 1" in out


# ------------------------------------------------------------------------------------------------ enrolment


async def test_unreachable_receiver_then_retry_at_next_start(site: Site) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token = site.mint()
    site.boot.write_text(provisioning(url, enrol_token=token, ca_file=site.ca.cert_file))
    result = await provision(site)
    assert (result.action, result.enrolment, result.exit_code) == ("provisioned", "pending", 0)
    assert not site.boot.exists()  # removed anyway
    cfg, _ = load_config(site.config)  # installed, and loads with the placeholder certificate
    ident = site.data / "identity"
    assert cfg.sinks[0].cert_file == ident / "cert.pem"
    pending = json.loads((ident / "pending-enrolment.json").read_text())
    assert pending["enrol_token"] == token and (ident / "pending-enrolment.json").stat().st_mode & 0o777 == 0o600
    placeholder = x509.load_pem_x509_certificate((ident / "cert.pem").read_bytes())
    assert placeholder.issuer == placeholder.subject  # self-signed until enrolled
    status = provision_status(site.data)
    assert status is not None and status["ok"] and status["state"] == "enrolment-pending"
    key_before = (ident / "key.pem").read_bytes()

    # next start, receiver still down: still pending
    again = await asyncio.to_thread(first_boot, site.boot, site.config, None, timeout_s=10.0)
    assert (again.action, again.enrolment, again.exit_code) == ("enrolment-retried", "pending", 0)

    app = build_app(DuckDBBackend(site.root / "r.duckdb"), {},
                    enrolment=make_enrolment(site.tokens.path, site.ca.cert_file, site.ca.key_file))
    async with ReceiverServer(app, port=port):
        done = await asyncio.to_thread(first_boot, site.boot, site.config, None, timeout_s=10.0)
    assert (done.action, done.enrolment, done.exit_code) == ("enrolment-retried", "done", 0)
    assert (ident / "key.pem").read_bytes() == key_before  # the key made at provisioning is kept
    cert = x509.load_pem_x509_certificate((ident / "cert.pem").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(site.ca.cert_file.read_bytes()))
    assert not (ident / "pending-enrolment.json").exists()
    status = provision_status(site.data)
    assert status is not None and status["ok"] and status["state"] == "provisioned"
    nothing = first_boot(site.boot, site.config, None)
    assert (nothing.action, nothing.exit_code) == ("none", 0)


async def test_receiver_without_ca_is_pending_not_refused(site: Site) -> None:
    app = build_app(DuckDBBackend(site.root / "r.duckdb"), {}, enrolment=make_enrolment(site.tokens.path, None, None))
    async with ReceiverServer(app) as server:
        site.boot.write_text(provisioning(server.url, enrol_token=site.mint(), ca_file=site.ca.cert_file))
        result = await provision(site)
    assert (result.action, result.enrolment) == ("provisioned", "pending")
    assert any("503" in m and "not configured" in m for m in result.messages), result.messages


def _csr(cn: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])).sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def test_enrol_endpoint_refusals(site: Site, receiver: str) -> None:
    import httpx

    token = site.mint()
    async with httpx.AsyncClient(base_url=receiver) as c:
        auth = {"Authorization": f"Bearer {token}"}
        r = await c.post("/v1/enrol", json={"gateway_id": GW, "csr_pem": _csr("someone-else")}, headers=auth)
        assert r.status_code == 422 and "CN" in r.json()["message"]
        r = await c.post("/v1/enrol", json={"gateway_id": GW, "csr_pem": "not a csr"}, headers=auth)
        assert r.status_code == 422
        r = await c.post("/v1/enrol", json={"gateway_id": "other-gw", "csr_pem": _csr("other-gw")}, headers=auth)
        assert r.status_code == 403
        r = await c.post("/v1/enrol", json={"gateway_id": GW, "csr_pem": _csr(GW)})
        assert r.status_code == 401
        r = await c.post("/v1/enrol", json={"gateway_id": GW, "csr_pem": _csr(GW)},
                         headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
        r = await c.post("/v1/enrol", content=b"{", headers=auth)
        assert r.status_code == 400
        # refusals above did not use the token up
        r = await c.post("/v1/enrol", json={"gateway_id": GW, "csr_pem": _csr(GW)}, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["ca_pem"] == site.ca.cert_file.read_text()
        r = await c.post("/v1/enrol", json={"gateway_id": GW, "csr_pem": _csr(GW)}, headers=auth)
        assert r.status_code == 409


async def test_gateway_refuses_a_certificate_for_another_cn(site: Site, receiver: str) -> None:
    """A receiver never signs a CSR whose CN is not the gateway id: the gateway's own CSR names its id."""
    site.boot.write_text(provisioning(receiver, enrol_token=site.mint("other-gw"), ca_file=site.ca.cert_file))
    result = await provision(site)
    assert result.enrolment == "refused" and "403" in result.problems[0]


def test_mint_enrol_token_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "enrol.tokens"
    args = build_enrol_token_parser().parse_args(["--gateway", GW, "--enrol-token-file", str(f)])
    assert mint_enrol_from_args(args) == 0
    token = capsys.readouterr().out.strip()
    assert token not in f.read_text() and f.read_text().startswith(f"{GW}=sha256:")
    assert f.stat().st_mode & 0o777 == 0o600
    store = EnrolTokenFile(f)
    assert store.check(GW, token) == "ok" and store.consume(GW, token) == "ok" and store.check(GW, token) == "used"


# ------------------------------------------------------------------------------------------------ CLI, unit, TOML


def _cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gateway")
    add_commands(p.add_subparsers(dest="command"))
    return run(p.parse_args(argv))


def test_cli_exit_codes(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.write_previous()
    argv = ["provision", "--boot-file", str(site.boot), "-c", str(site.config), "--data-dir", str(site.data)]
    assert _cli(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    site.boot.write_text('version = 1\n[gateway]\nid = "gw"\nlog_levle = "INFO"\n')
    assert _cli(argv) == 1
    err = capsys.readouterr().err
    assert f"{site.boot}: gateway.log_levle: unknown key; did you mean 'log_level'?" in err


def test_firstboot_unit_verifies(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    unit = (repo / "deploy" / "systemd" / "gateway-firstboot.service").read_text()
    exe = "/opt/gateway/venv/bin/gateway"
    assert unit.count(exe) == 1 and "Type=oneshot" in unit and "Before=gateway.service" in unit
    assert "ConditionPathExists=|/boot/firmware/gateway.toml" in unit
    copy = tmp_path / "gateway-firstboot.service"
    copy.write_text(unit.replace(exe, str(Path(sys.executable).parent / "gateway")))
    analyze = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    res = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr


def test_toml_writer_round_trips_the_demo_config() -> None:
    repo = Path(__file__).resolve().parents[2]
    doc = tomllib.loads((repo / "gateway" / "configs" / "demo.toml").read_text())
    assert tomllib.loads(dumps(doc)) == doc
    odd = {"a b": "quote \" back \\ nl \n tab \t bell \x07 é", "f": 1.5e300, "t": {"x": []}, "l": [[1], {"k": 1}]}
    assert tomllib.loads(dumps(odd)) == odd


async def test_identity_sinks_by_name(site: Site, receiver: str) -> None:
    """The ingestion host differs from the enrolment host: identity_sinks names the sinks to equip."""
    text = provisioning(receiver, enrol_token=site.mint(), ca_file=site.ca.cert_file,
                        sink_url="https://ingest.example.net/v1/batches")
    site.boot.write_text(text.replace("[provision]", '[provision]\nidentity_sinks = ["clod"]'))
    bad = await provision(site)
    assert bad.exit_code == 1 and any("provision.identity_sinks" in p and "'cloud'" in p for p in bad.problems)
    site.boot.write_text(text.replace("[provision]", '[provision]\nidentity_sinks = ["cloud"]'))
    result = await provision(site)
    assert (result.action, result.enrolment) == ("provisioned", "done"), result.problems
    cfg, _ = load_config(site.config)
    assert cfg.sinks[0].cert_file == site.data / "identity" / "cert.pem"


def test_hash_password_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from gateway.panel.users import check_password_hash

    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    assert _cli(["provision", "--hash-password"]) == 0
    encoded = capsys.readouterr().out.strip()
    assert encoded.startswith("scrypt$") and check_password_hash(encoded, PASSWORD)
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert _cli(["provision", "--hash-password"]) == 1


def test_setup_token_refused_when_an_admin_exists(site: Site) -> None:
    site.write_previous()
    UserStore(users_file(site.data)).add("carol", PASSWORD, Role.ADMIN)
    site.boot.write_text(f'version = 1\n[gateway]\nid = "{GW}"\n[provision]\nsetup_token = "{mint_token()}"\n')
    result = first_boot(site.boot, site.config, site.data)
    assert result.exit_code == 1 and any("provision.setup_token" in p and "admin exists" in p for p in result.problems)


def test_every_problem_in_one_pass(site: Site) -> None:
    site.boot.write_text('version = 1\n[gateway]\nid = "gw"\nlog_levle = "INFO"\n[provision]\nenrol_url = "x"\n')
    result = first_boot(site.boot, site.config, site.data)
    text = "\n".join(result.problems)
    assert "gateway.log_levle" in text and "provision.enrol_url" in text and "provision.enrol_token" in text


def test_cli_defaults_match_and_package_exports() -> None:
    import gateway.provision as pkg
    from gateway.provision import cli, firstboot

    assert (cli.DEFAULT_BOOT_FILE, cli.DEFAULT_CONFIG) == (firstboot.DEFAULT_BOOT_FILE, firstboot.DEFAULT_CONFIG)
    assert pkg.first_boot is first_boot and pkg.provision_status is provision_status


def test_reprovisioning_resets_the_admin_password(site: Site) -> None:
    users = UserStore(users_file(site.data))
    users.add("alice", "an old password 123", Role.VIEWER)
    users.set_disabled("alice", True)
    site.boot.write_text(f'version = 1\n[gateway]\nid = "{GW}"\n[provision]\nadmin_user = "alice"\n'
                         f'admin_password_hash = "{hash_password(PASSWORD)}"\n')
    result = first_boot(site.boot, site.config, site.data)
    assert (result.action, result.enrolment, result.exit_code) == ("provisioned", "skipped", 0)
    user = users.verify("alice", PASSWORD)
    assert user is not None and user.role == Role.ADMIN and not user.disabled
    assert users.verify("alice", "an old password 123") is None
    assert not (site.data / "identity").exists()  # no enrol_url: no key

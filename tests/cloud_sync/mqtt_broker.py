"""A private Mosquitto for the MQTT uplink tests and the benchmark: a test PKI and a broker subprocess.

- :func:`make_pki` writes a test CA, the broker's certificate (SAN 127.0.0.1/localhost), one client
  certificate per identity (CN = the gateway id, or the bridge's name) and a *rogue* certificate with a
  gateway's CN signed by another CA. EC P-256 keys (fast), PEM files, keys 0600.
- :class:`Mosquitto` runs ``/usr/sbin/mosquitto -c conf`` on a free high loopback port with TLS,
  ``require_certificate true``, ``use_identity_as_username true``, an ACL (each gateway writes only its own
  topic, the bridge reads all), file persistence in a directory that survives :meth:`Mosquitto.restart`, and
  queue limits large enough never to drop. It never touches the system broker on 127.0.0.1:1883.

Process contract: :meth:`Mosquitto.start` returns once the port accepts connections; :meth:`stop` (SIGTERM:
the broker saves its persistence file) and :meth:`kill` (SIGKILL) wait for the process to end; :meth:`close`
is idempotent. Used as a context manager, the process is always reaped.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hil_tests.demo_solar import PrivateMosquitto
from hil_tests.net import free_port

MOSQUITTO: Final = "/usr/sbin/mosquitto"
BRIDGE_ID: Final = "cloud-bridge"  # the bridge's certificate CN (its broker user name)
START_TIMEOUT_S: Final = 20.0  # bound for the broker to listen (a loaded CI machine), not an expectation


@dataclass(frozen=True, slots=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Pki:
    ca: Path  # the test CA (trusted by the broker and the clients)
    broker: Identity  # the broker's server certificate
    clients: dict[str, Identity]  # CN -> client certificate signed by the test CA
    rogue: Identity  # CN = the first gateway id, signed by another CA: must be refused
    rogue_ca: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Identity:
    cert_path = path.with_suffix(".crt")
    key_path = path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return Identity(cert_path, key_path)


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(cn: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, *, server: bool) -> tuple[
        x509.Certificate, ec.EllipticCurvePrivateKey]:  # fmt: skip
    key = _key()
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return b.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path, gateways: list[str], bridge: str = BRIDGE_ID) -> Pki:
    """Write the test PKI into ``directory`` (created). ``gateways[0]`` is the rogue certificate's CN."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("gateway test CA")
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    broker = _write(directory / "broker", *_leaf("localhost", ca, ca_key, server=True))
    clients = {
        cn: _write(directory / f"client-{cn}", *_leaf(cn, ca, ca_key, server=False)) for cn in [*gateways, bridge]
    }
    rogue_ca, rogue_key = _ca("rogue CA")
    (directory / "rogue-ca.crt").write_bytes(rogue_ca.public_bytes(serialization.Encoding.PEM))
    rogue = _write(directory / "rogue", *_leaf(gateways[0], rogue_ca, rogue_key, server=False))
    return Pki(directory / "ca.crt", broker, clients, rogue, directory / "rogue-ca.crt")


ACL: Final = """\
# The bridge (certificate CN {bridge}) reads every gateway's batches.
user {bridge}
topic read {prefix}/+/batches

# Every client may publish only under its own identity (its certificate CN, see use_identity_as_username).
pattern write {prefix}/%u/batches
"""


class Mosquitto(PrivateMosquitto):
    """A private broker with TLS, client certificates and an ACL (see the module docstring). One owner."""

    def __init__(self, directory: Path, pki: Pki, *, topic_prefix: str = "gw", port: int | None = None,
                 message_size_limit: int = 64 * 1024 * 1024, max_packet_size: int = 0,
                 max_inflight: int = 20) -> None:  # fmt: skip
        directory.mkdir(parents=True, exist_ok=True)
        acl = directory / "acl"
        acl.write_text(ACL.format(bridge=BRIDGE_ID, prefix=topic_prefix))
        super().__init__(
            directory, port or free_port(), max_inflight=max_inflight, executable=MOSQUITTO,
            general=["per_listener_settings false", f"message_size_limit {message_size_limit}",
                     *([f"max_packet_size {max_packet_size}"] if max_packet_size else []),
                     "log_type information", "connection_messages true", "allow_anonymous false",
                     f"acl_file {acl}"],
            listener=[f"cafile {pki.ca}", f"certfile {pki.broker.cert}", f"keyfile {pki.broker.key}",
                      "require_certificate true", "use_identity_as_username true"],
        )  # fmt: skip
        self.pki = pki
        self.url = f"mqtts://127.0.0.1:{self.port}"

"""A throwaway PKI for TLS tests: a CA, server certificates for loopback, client certificates by CN.

Everything is written as PEM files into a directory the caller owns (``tmp_path``), because
:meth:`ssl.SSLContext.load_cert_chain` only reads files. Keys are ECDSA P-256 (fast to generate); certificates are
valid from one hour ago for 30 days. Needs the ``cryptography`` package (in the ``test`` extra). Test use only.

```python
ca = CertAuthority(tmp_path / "ca")                  # ca.pem + ca.key ("Test CA")
server = ca.issue_server()                           # SAN: 127.0.0.1, ::1, localhost
client = ca.issue_client("sub-north-01")             # CN=sub-north-01, clientAuth
ctx = server.server_context()                        # ssl.SSLContext for a TLS server
ctx = server.server_context(client_ca=ca.cert_file)  # ... that requires a client certificate from ``ca``
ca.client_context(client)                            # ssl.SSLContext for a client trusting ``ca``
rogue = CertAuthority(tmp_path / "rogue", "Rogue CA")  # another CA: its certificates fail verification
```
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["LOOPBACK_HOSTS", "CertAuthority", "CertFiles"]

LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")  # default SAN of a server certificate
VALID_DAYS = 30


@dataclass(frozen=True, slots=True)
class CertFiles:
    """A certificate and its private key, PEM files."""

    cert_file: Path
    key_file: Path

    def server_context(self, client_ca: Path | None = None) -> ssl.SSLContext:
        """A TLS server context presenting this certificate; with ``client_ca``, clients must present a
        certificate issued by that CA (mutual TLS)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if client_ca is not None:
            ctx.load_verify_locations(cafile=client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


class CertAuthority:
    """A self-signed CA whose ``ca.pem``/``ca.key`` live in ``directory`` (created; existing files reused).

    Issued certificates go to ``<directory>/<name>.pem`` and ``<name>.key``.
    """

    def __init__(self, directory: Path, name: str = "Test CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.cert_file = self.directory / "ca.pem"
        self.key_file = self.directory / "ca.key"
        if self.cert_file.exists() and self.key_file.exists():
            self._key = _load_key(self.key_file)
            self._cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
            return
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False),  # sign certs and CRLs
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        _write(self.key_file, self._key, self._cert, self.cert_file)

    def issue_server(self, hosts: Sequence[str] = LOOPBACK_HOSTS, name: str = "server") -> CertFiles:
        """A server certificate (serverAuth) for ``hosts`` (IP addresses and DNS names, all in the SAN)."""
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        return self._issue(name, hosts[0] if hosts else name, ExtendedKeyUsageOID.SERVER_AUTH, sans)

    def issue_client(self, cn: str, name: str | None = None) -> CertFiles:
        """A client certificate (clientAuth) with subject ``CN=cn``, e.g. a gateway id as its identity."""
        return self._issue(name or f"client-{cn}", cn, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def client_context(self, client: CertFiles | None = None) -> ssl.SSLContext:
        """A client context that trusts this CA only (and presents ``client`` when given)."""
        ctx = ssl.create_default_context(cafile=str(self.cert_file))
        if client is not None:
            ctx.load_cert_chain(client.cert_file, client.key_file)
        return ctx

    def _issue(self, name: str, cn: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> CertFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        files = CertFiles(self.directory / f"{name}.pem", self.directory / f"{name}.key")
        _write(files.key_file, key, cert, files.cert_file)
        return files


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not an EC private key")
    return key


def _write(key_path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, cert_path: Path) -> None:
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

"""The panel's HTTPS certificate: a self-signed EC P-256 certificate generated on first start, and its fingerprint.

Files (PEM): ``<data_dir>/panel/tls/cert.pem`` and ``key.pem`` unless ``[panel] cert_file``/``key_file`` name a
certificate of the site's own PKI (then nothing is generated). The key file has mode 0600; both are written
atomically. The certificate is valid for 10 years; its SubjectAltName holds ``localhost``, ``127.0.0.1``,
``::1``, the machine's host name and the names/addresses given (e.g. the panel's ``host`` setting).

Browsers warn about a self-signed certificate: the technician compares the SHA-256 fingerprint the browser shows
with the one ``gateway panel-cert`` prints, then accepts it.

Threads: plain functions, no shared state. Generation takes a few milliseconds; call it before serving.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.panel.users import atomic_write_bytes, ensure_private_dir

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

VALID_DAYS = 3650
ALWAYS_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


def panel_paths(cfg: GatewayConfig) -> tuple[Path, Path, Path]:
    """``(users.json, certificate, key)`` for a config: ``<data_dir>/panel/users.json`` and the ``[panel]``
    cert_file/key_file, by default ``<data_dir>/panel/tls/cert.pem`` and ``key.pem``."""
    base = cfg.data_dir / "panel"
    cert = cfg.panel.cert_file if cfg.panel.cert_file is not None else base / "tls" / "cert.pem"
    key = cfg.panel.key_file if cfg.panel.key_file is not None else base / "tls" / "key.pem"
    return base / "users.json", cert, key


def panel_hostnames(cfg: GatewayConfig, extra: Iterable[str] = ()) -> list[str]:
    """Names for a generated certificate's SAN: the panel's ``host`` when it is a specific address (not a
    wildcard such as ``0.0.0.0``) plus ``extra`` (the defaults of :func:`ensure_certificate` are added there)."""
    names: list[str] = []
    host = cfg.panel.host.strip().strip("[]")
    if host and host not in ("0.0.0.0", "::", "*"):
        names.append(host)
    names.extend(extra)
    return names


def ensure_panel_certificate(cfg: GatewayConfig, extra_hostnames: Iterable[str] = ()) -> tuple[Path, Path]:
    """``(cert, key)`` for the panel: the ``[panel]`` cert_file/key_file as they are, or the generated
    certificate (created now when missing, see :func:`ensure_certificate`). Blocking file I/O: the daemon calls
    it in a worker thread."""
    users, cert, key = panel_paths(cfg)
    if cfg.panel.cert_file is None:
        ensure_private_dir(users.parent)  # <data_dir>/panel: 0700
        ensure_certificate(cert, key, panel_hostnames(cfg, extra_hostnames))
    return cert, key


def _general_names(hostnames: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in hostnames:
        h = raw.strip().strip("[]")
        if not h:
            continue
        try:
            ip = ipaddress.ip_address(h)
        except ValueError:
            if not h.isascii() or any(c.isspace() for c in h):
                raise ValueError(f"not a host name or IP address: {raw!r}") from None
            key = "dns:" + h.lower()
            if key not in seen:
                seen.add(key)
                out.append(x509.DNSName(h.lower()))
        else:
            key = "ip:" + str(ip)
            if key not in seen:
                seen.add(key)
                out.append(x509.IPAddress(ip))
    return out


def ensure_certificate(cert_path: Path, key_path: Path, hostnames: list[str]) -> bool:
    """Generate a self-signed certificate and its key when either file is missing (both are then replaced);
    True when it generated. SAN: ``hostnames`` + localhost, 127.0.0.1, ::1 and ``socket.gethostname()``.
    ValueError for a host name that is neither a DNS name nor an IP address."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    if cert_path.is_file() and key_path.is_file():
        return False
    machine = socket.gethostname()
    names = [*hostnames, *ALWAYS_HOSTS, *([machine] if machine else [])]
    sans = _general_names(names)
    cn = next((h.strip() for h in [*hostnames, machine] if h.strip()), "localhost")[:64]
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Substation gateway panel (self-signed)"),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),  # digitalSignature
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write_bytes(key_path, key_pem, mode=0o600)
    atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return True


def _load(cert_path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(cert_path).read_bytes())


def _format_fingerprint(digest: bytes) -> str:
    return "SHA256 " + ":".join(f"{b:02X}" for b in digest)


def fingerprint(cert_path: Path) -> str:
    """``SHA256 AB:CD:...`` of the certificate's DER encoding (what browsers show)."""
    return _format_fingerprint(_load(cert_path).fingerprint(hashes.SHA256()))


def certificate_info(cert_path: Path) -> dict[str, Any]:
    """``subject_cn``, ``sans`` (DNS names and IP addresses as text), ``not_before``/``not_after`` (ISO 8601,
    UTC) and ``fingerprint`` of a PEM certificate."""
    cert = _load(cert_path)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
    except x509.ExtensionNotFound:
        sans = []
    return {
        "subject_cn": str(cns[0].value) if cns else "",
        "sans": sans,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "fingerprint": _format_fingerprint(cert.fingerprint(hashes.SHA256())),
    }

"""The gateway's X.509 identity for the uplink: device key, CSR, enrolment with the receiver, retry state.

Files under ``<data_dir>/identity/`` (directory 0700, owned like the data directory):

- ``key.pem``  EC P-256 private key (PKCS#8, 0600), made at provisioning; never leaves the gateway.
- ``csr.pem``  the certificate signing request (CN = gateway id) sent to the receiver.
- ``cert.pem`` the client certificate the receiver's CA signed. Until enrolment succeeds it is a self-signed
  placeholder for the same key (so the installed config, whose sinks name it, loads and the daemon starts; a
  peer that checks client certificates refuses it and the uploads wait in the store).
- ``ca.pem``   the CA(s) the uplink trusts: the provisioning file's CA, plus the CA that signed ``cert.pem``.
- ``pending-enrolment.json`` (0600) while enrolment waits for an unreachable receiver: URL, gateway id and the
  one-time enrolment token; ``gateway provision`` retries it (at every boot / start of gateway.service) and
  deletes it once enrolled or refused.

Threads: the provisioning command's main thread (blocking HTTP with a timeout).
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.panel.users import atomic_write_bytes

IDENTITY_DIR: Final = "identity"
PENDING_FILE: Final = "pending-enrolment.json"
ENROL_PATH: Final = "/v1/enrol"


@dataclass(frozen=True, slots=True)
class IdentityPaths:
    directory: Path

    @classmethod
    def under(cls, data_dir: Path) -> IdentityPaths:
        return cls(Path(data_dir) / IDENTITY_DIR)

    @property
    def key(self) -> Path:
        return self.directory / "key.pem"

    @property
    def csr(self) -> Path:
        return self.directory / "csr.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def pending(self) -> Path:
        return self.directory / PENDING_FILE


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def load_pem_certs(pem: str) -> list[x509.Certificate]:
    """The certificates in a PEM text; ValueError when there is none or one is malformed."""
    certs = x509.load_pem_x509_certificates(pem.encode("ascii"))
    if not certs:
        raise ValueError("no certificate in the PEM text")
    return certs


def make_identity(paths: IdentityPaths, gateway_id: str, ca_pem: str) -> None:
    """A fresh device key, its CSR (CN = ``gateway_id``), a self-signed placeholder certificate and the CA file."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    now = _now()
    placeholder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    atomic_write_bytes(paths.key, key_pem, mode=0o600)
    atomic_write_bytes(paths.csr, csr.public_bytes(serialization.Encoding.PEM), mode=0o644)
    atomic_write_bytes(paths.cert, placeholder.public_bytes(serialization.Encoding.PEM), mode=0o644)
    atomic_write_bytes(paths.ca, _normalise(ca_pem).encode("ascii"), mode=0o644)


def _normalise(pem: str) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in load_pem_certs(pem))


EnrolOutcome = Literal["done", "pending", "refused"]


@dataclass(frozen=True, slots=True)
class EnrolResult:
    outcome: EnrolOutcome
    message: str


def save_pending(paths: IdentityPaths, enrol_url: str, enrol_token: str, gateway_id: str, error: str) -> None:
    doc = {"enrol_url": enrol_url, "enrol_token": enrol_token, "gateway_id": gateway_id,
           "since": _now().strftime("%Y-%m-%dT%H:%M:%SZ"), "last_error": error}
    atomic_write_bytes(paths.pending, (json.dumps(doc, indent=1) + "\n").encode("utf-8"), mode=0o600)


def load_pending(paths: IdentityPaths) -> dict[str, str] | None:
    """The saved retry state, or None when there is none (or it is unreadable: it is then left for a person)."""
    try:
        doc = json.loads(paths.pending.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) and doc.get(k)
                                            for k in ("enrol_url", "enrol_token", "gateway_id")):
        return None
    return {str(k): str(v) for k, v in doc.items()}


def enrol(paths: IdentityPaths, enrol_url: str, enrol_token: str, gateway_id: str, *,
          timeout_s: float = 30.0) -> EnrolResult:
    """POST the CSR to ``<enrol_url>/v1/enrol`` and store the certificate and CA it returns.

    ``done``: ``cert.pem``/``ca.pem`` written, retry state removed. ``pending``: the receiver could not be reached
    or answered 5xx; the retry state is saved. ``refused``: the receiver refused (4xx) or answered nonsense; the
    retry state is removed (the token will not work again).
    """
    url = enrol_url.rstrip("/") + ENROL_PATH
    verify: ssl.SSLContext | bool = True
    if url.startswith("https://"):
        verify = ssl.create_default_context(cafile=str(paths.ca))
    body = {"gateway_id": gateway_id, "csr_pem": paths.csr.read_text(encoding="ascii")}
    try:
        with httpx.Client(verify=verify, timeout=timeout_s, trust_env=False) as client:
            r = client.post(url, json=body, headers={"Authorization": f"Bearer {enrol_token}"})
    except httpx.HTTPError as e:
        msg = f"receiver {url} not reachable: {type(e).__name__}: {e}"
        save_pending(paths, enrol_url, enrol_token, gateway_id, msg)
        return EnrolResult("pending", msg)
    if r.status_code >= 500:
        msg = f"receiver {url} answered {r.status_code}: {_error_text(r)}"
        save_pending(paths, enrol_url, enrol_token, gateway_id, msg)
        return EnrolResult("pending", msg)
    if r.status_code != 200:
        paths.pending.unlink(missing_ok=True)
        return EnrolResult("refused", f"receiver {url} refused the enrolment ({r.status_code}): {_error_text(r)}")
    try:
        doc = r.json()
        cert_pem, ca_pem = str(doc["cert_pem"]), str(doc["ca_pem"])
        problem = _check_issued(paths, gateway_id, cert_pem, ca_pem)
    except (ValueError, KeyError, TypeError) as e:
        problem = f"unreadable answer: {e}"
    if problem:
        paths.pending.unlink(missing_ok=True)
        return EnrolResult("refused", f"receiver {url} issued an unusable certificate: {problem}")
    trusted = paths.ca.read_text(encoding="ascii") if paths.ca.exists() else ""
    bundle = _normalise(trusted + "\n" + ca_pem) if trusted else _normalise(ca_pem)
    certs = load_pem_certs(bundle)
    unique = list({c.fingerprint(hashes.SHA256()): c for c in certs}.values())
    atomic_write_bytes(paths.cert, _normalise(cert_pem).encode("ascii"), mode=0o644)
    atomic_write_bytes(paths.ca, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in unique), mode=0o644)
    paths.pending.unlink(missing_ok=True)
    return EnrolResult("done", f"enrolled with {url}: client certificate stored in {paths.cert}")


def _error_text(r: httpx.Response) -> str:
    try:
        doc: Any = r.json()
        if isinstance(doc, dict) and "message" in doc:
            return str(doc["message"])
    except ValueError:
        pass
    return r.text[:200]


def _check_issued(paths: IdentityPaths, gateway_id: str, cert_pem: str, ca_pem: str) -> str:
    """"" when ``cert_pem`` is for our key and gateway id and was signed by (the first certificate of) ``ca_pem``."""
    cert = load_pem_certs(cert_pem)[0]
    ca = load_pem_certs(ca_pem)[0]
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        return "it is not for this gateway's key"
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in cns] != [gateway_id]:
        return f"its subject is not CN={gateway_id}"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as e:
        return f"it was not issued by the returned CA: {e}"
    except InvalidSignature:
        return "its signature does not verify against the returned CA"
    return ""

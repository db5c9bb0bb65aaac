"""Gateway enrolment: one-time enrolment tokens and the CA that signs a gateway's client certificate.

``POST /v1/enrol`` (see :func:`cloud_sync.receiver.app.build_app`) takes ``{"gateway_id", "csr_pem"}`` with
``Authorization: Bearer <enrolment token>``, and answers ``{"cert_pem", "ca_pem"}``: an X.509 client certificate
(``CN = gateway id``, clientAuth) that is the gateway's identity on the uplink, signed by the receiver's CA.

Enrolment tokens (:class:`EnrolTokenFile`) are minted per gateway by ``gateway receiver-enrol-token --gateway ID``
and stored only as hashes, one line each: ``GATEWAY_ID=sha256:<hex>`` while unused, rewritten to
``GATEWAY_ID=used:sha256:<hex>`` when a certificate was issued for it; a used token is refused (409). The check
and the marking run under an exclusive ``flock`` of ``<file>.lock``, so several receiver processes (``--workers``)
never issue two certificates for one token. The file is rewritten atomically (temp file + rename).

:class:`EnrolmentCA` loads the CA certificate and key (``--ca-cert``/``--ca-key``), checks a CSR (PEM, valid
self-signature, exactly one CN equal to the gateway id, an EC P-256/P-384 or RSA >= 2048 key) and signs it.

Threads: everything here is synchronous and quick except signing (a few ms); the app runs both in a worker
thread. Any thread.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hmac
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_sync.receiver.tokens import check_gateway_id, hash_token, is_hashed

DEFAULT_ENROL_TOKEN_FILE: Final = Path("receiver.enrol-tokens")
DEFAULT_CERT_DAYS: Final = 825  # validity of an issued client certificate
USED_PREFIX: Final = "used:"
MAX_CSR_BYTES: Final = 16 * 1024

TokenState = Literal["ok", "unknown", "used", "wrong-gateway"]


class EnrolmentError(ValueError):
    """A CSR (or CA file) that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class _Entry:
    gateway_id: str
    digest: str  # sha256:<hex>
    used: bool


def _parse_line(line: str) -> _Entry | None:
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    gw, sep, value = text.partition("=")
    if not sep:
        return None
    used = value.startswith(USED_PREFIX)
    digest = value[len(USED_PREFIX):] if used else value
    if not is_hashed(digest):
        return None
    return _Entry(gw.strip(), digest, used)


class EnrolTokenFile:
    """One-time enrolment tokens, hashed, in a text file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _lines(self) -> list[str]:
        try:
            return self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []

    def _find(self, lines: list[str], token: str) -> tuple[int, _Entry] | None:
        digest = hash_token(token)
        for i, line in enumerate(lines):
            e = _parse_line(line)
            if e is not None and hmac.compare_digest(e.digest, digest):
                return i, e
        return None

    def check(self, gateway_id: str, token: str) -> TokenState:
        """What ``token`` is for ``gateway_id``, without using it up."""
        found = self._find(self._lines(), token)
        if found is None:
            return "unknown"
        _, e = found
        if e.gateway_id != gateway_id:
            return "wrong-gateway"
        return "used" if e.used else "ok"

    def consume(self, gateway_id: str, token: str) -> TokenState:
        """Use the token up: ``"ok"`` exactly once for a valid unused token of ``gateway_id`` (the line is marked
        used), otherwise why not. Atomic against other processes."""
        with self._locked():
            lines = self._lines()
            found = self._find(lines, token)
            if found is None:
                return "unknown"
            i, e = found
            if e.gateway_id != gateway_id:
                return "wrong-gateway"
            if e.used:
                return "used"
            lines[i] = f"{e.gateway_id}={USED_PREFIX}{e.digest}"
            _atomic_write(self.path, "".join(f"{line}\n" for line in lines))
            return "ok"

    def add(self, gateway_id: str, token: str) -> None:
        """Append the hash of a new token for ``gateway_id`` (file created 0600)."""
        gid = check_gateway_id(gateway_id)
        with self._locked():
            lines = self._lines()
            lines.append(f"{gid}={hash_token(token)}")
            _atomic_write(self.path, "".join(f"{line}\n" for line in lines))


def _atomic_write(path: Path, text: str) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class EnrolmentCA:
    """The CA (certificate + private key, PEM files) that signs gateways' client certificates."""

    def __init__(self, cert_file: Path, key_file: Path, *, cert_days: int = DEFAULT_CERT_DAYS) -> None:
        try:
            self.cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
        except (OSError, ValueError) as e:
            raise EnrolmentError(f"--ca-cert {cert_file}: cannot load a PEM certificate: {e}") from None
        try:
            key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as e:
            raise EnrolmentError(f"--ca-key {key_file}: cannot load an unencrypted PEM private key: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise EnrolmentError(f"--ca-key {key_file}: only EC and RSA CA keys are supported")
        pub = self.cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != pub:
            raise EnrolmentError(f"--ca-key {key_file} is not the key of --ca-cert {cert_file}")
        try:
            bc = self.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise EnrolmentError(f"--ca-cert {cert_file} is not a CA certificate (basicConstraints CA:TRUE)")
        if cert_days < 1:
            raise EnrolmentError("--cert-days must be >= 1")
        self.key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = key
        self.cert_days = cert_days
        self.ca_pem = self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def check_csr(self, csr_pem: str, gateway_id: str) -> x509.CertificateSigningRequest:
        """The parsed CSR, or EnrolmentError: not PEM, bad signature, CN not the gateway id, weak key."""
        if len(csr_pem) > MAX_CSR_BYTES:
            raise EnrolmentError(f"csr_pem is larger than {MAX_CSR_BYTES} bytes")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as e:
            raise EnrolmentError(f"csr_pem is not a PEM certificate signing request: {e}") from None
        if not csr.is_signature_valid:
            raise EnrolmentError("the CSR's signature does not verify (not signed by its own key)")
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1:
            raise EnrolmentError(f"the CSR must have exactly one CN (the gateway id), it has {len(cns)}")
        cn = cns[0].value
        if cn != gateway_id:
            raise EnrolmentError(f"the CSR's CN {cn!r} is not the gateway id {gateway_id!r}")
        key = csr.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in ("secp256r1", "secp384r1"):
                raise EnrolmentError(f"EC key on curve {key.curve.name}: use P-256 or P-384")
        elif isinstance(key, rsa.RSAPublicKey):
            if key.key_size < 2048:
                raise EnrolmentError(f"RSA key of {key.key_size} bits: at least 2048")
        else:
            raise EnrolmentError("the CSR's key must be EC (P-256/P-384) or RSA")
        return csr

    def sign(self, csr: x509.CertificateSigningRequest, gateway_id: str) -> str:
        """PEM client certificate for a CSR :meth:`check_csr` accepted: subject ``CN=gateway_id``, clientAuth."""
        now = dt.datetime.now(dt.UTC)
        pub = csr.public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)]))
            .issuer_name(self.cert.subject)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=self.cert_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


@dataclass(frozen=True, slots=True)
class Enrolment:
    """What ``POST /v1/enrol`` needs: the token file and the CA (None: enrolment answers 503)."""

    tokens: EnrolTokenFile
    ca: EnrolmentCA | None = None

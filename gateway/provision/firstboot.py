"""First boot: turn a provisioning file on the boot partition into an installed, enrolled gateway.

The provisioning file (``/boot/firmware/gateway.toml`` by default) is the gateway config itself plus a
``[provision]`` table that is not part of the config (docs/deployment.md, "First boot")::

    [provision]
    admin_user = "alice"                            # with admin_password_hash: the panel's first admin
    admin_password_hash = "scrypt$16384$8$1$...$..."  # `gateway provision --hash-password` prints one
    # setup_token = "..."                           # instead: a one-time token for the panel's /setup page
    # setup_token_ttl_h = 72                        # how long the setup token is valid (hours)
    # identity_sinks = ["cloud"]                    # sinks given the client certificate (default: enrol_url's host)
    enrol_url = "https://ingest.example.net"       # the receiver; POST <enrol_url>/v1/enrol
    enrol_token = "..."                             # one-time, from `gateway receiver-enrol-token --gateway ID`
    ca_file = "receiver-ca.pem"                     # or inline ca_pem (a multi-line string): the CA to trust

:func:`first_boot`:

1. No file: retry a pending enrolment if one is saved (``<data_dir>/identity/pending-enrolment.json``), else
   nothing.
2. Parse and check everything first: the ``[provision]`` table, and the config exactly as it will be installed
   (the file minus ``[provision]``, plus ``data_dir`` when the file has none, plus the identity files on the sinks
   that upload to the enrolment receiver) with :func:`gateway.config_load.load_config`. Problems name the
   provisioning file, the key and the device.
3. A bad file changes nothing: the previous config stays (a minimal default one is written when there is none, so
   the daemon and its panel come up), every problem is logged at ERROR and written to
   ``<data_dir>/provision-status.json`` (:mod:`gateway.provision.status`, shown by the panel), and the file is
   renamed ``<name>.rejected`` with its secrets redacted (the original is overwritten, then deleted).
4. A good file: device key + CSR + placeholder certificate (:mod:`gateway.provision.identity`), the admin or setup
   token (:mod:`gateway.provision.admin`), the config installed atomically (0640, the owner of the file it
   replaces), enrolment with the receiver, the status file, and the provisioning file overwritten and deleted.
   An unreachable receiver (or 5xx) is not a bad file: the enrolment is saved for a retry at the next start.

Exit codes (:attr:`ProvisionResult.exit_code`): 0 provisioned (enrolment done or pending) or nothing to do, 1 a
bad provisioning file, 4 anything else (cannot write, the receiver refused the enrolment, the file could not be
deleted).

Threads: the provisioning command's main thread; blocking file and HTTP I/O.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import ipaddress
import logging
import os
import re
import socket
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from gateway.config_load import ConfigError, ConfigProblem, load_config, suggest
from gateway.panel.users import UserError, UserStore, check_name
from gateway.provision.admin import (
    check_scrypt_hash,
    install_admin_hash,
    install_setup_token,
    setup_token_refused,
    users_file,
)
from gateway.provision.identity import IdentityPaths, enrol, load_pem_certs, load_pending, make_identity
from gateway.provision.status import write_status
from gateway.provision.tomlw import dumps

log = logging.getLogger("gateway.provision")

DEFAULT_BOOT_FILE: Final = Path("/boot/firmware/gateway.toml")
DEFAULT_CONFIG: Final = Path("/etc/gateway/gateway.toml")
DEFAULT_DATA_DIR: Final = Path("/var/lib/gateway")
PROVISION_KEYS: Final = (
    "admin_user",
    "admin_password_hash",
    "setup_token",
    "setup_token_ttl_h",
    "enrol_url",
    "enrol_token",
    "ca_file",
    "ca_pem",
    "identity_sinks",
)
_SECRET_KEYS: Final = ("admin_password_hash", "setup_token", "enrol_token")
MIN_SETUP_TOKEN_LEN: Final = 16

Action = Literal["none", "provisioned", "rejected", "failed", "enrolment-retried"]
Enrolment = Literal["", "done", "pending", "refused", "skipped"]


@dataclass(frozen=True, slots=True)
class ProvisionSpec:
    """The ``[provision]`` table, checked."""

    admin_user: str = ""
    admin_password_hash: str = ""
    setup_token: str = ""
    setup_token_ttl_h: float = 72.0
    enrol_url: str = ""
    enrol_token: str = ""
    ca_pem: str = ""
    identity_sinks: tuple[str, ...] = ()  # sinks that get the identity files ((): those on enrol_url's host)


@dataclass(slots=True)
class ProvisionResult:
    """What :func:`first_boot` did. ``problems``: one line each (file: key (device X): message)."""

    action: Action
    enrolment: Enrolment = ""
    problems: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    data_dir: Path | None = None
    status_file: Path | None = None

    @property
    def exit_code(self) -> int:
        if self.action == "rejected":
            return 1
        if self.action == "failed" or self.enrolment == "refused" or (self.problems and self.action != "none"):
            return 4
        return 0


# ------------------------------------------------------------------------------------------------ the entry point


def first_boot(
    boot_file: Path = DEFAULT_BOOT_FILE,
    config_path: Path = DEFAULT_CONFIG,
    data_dir: Path | None = None,
    *,
    timeout_s: float = 30.0,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> ProvisionResult:
    """Provision from ``boot_file`` (see the module docstring). ``data_dir``: the gateway's data directory when
    the provisioning file does not set ``[gateway] data_dir`` (default: the previous config's, else
    /var/lib/gateway). Never raises for a bad file or an unreachable receiver."""
    boot_file, config_path = Path(boot_file), Path(config_path)
    previous = _previous_data_dir(config_path)
    fallback_dd = Path(data_dir).absolute() if data_dir is not None else previous or DEFAULT_DATA_DIR
    if not boot_file.exists():
        return _retry_pending(previous or fallback_dd, timeout_s, now)

    problems: list[ConfigProblem] = []
    text, doc = _read(boot_file, problems)
    spec = ProvisionSpec()
    final_doc: dict[str, Any] = {}
    final_dd = fallback_dd
    gateway_id = ""
    secret_source = copy.deepcopy(doc)
    if doc is not None:
        spec = _parse_provision(doc.pop("provision", None), boot_file, problems)
        gw = doc.get("gateway")
        if isinstance(gw, dict):
            gateway_id = gw["id"] if isinstance(gw.get("id"), str) else ""
            if "data_dir" not in gw:
                gw["data_dir"] = str(fallback_dd)
            if isinstance(gw["data_dir"], str) and gw["data_dir"]:
                dd = Path(gw["data_dir"])
                final_dd = dd if dd.is_absolute() else config_path.parent / dd
        if spec.enrol_url and gateway_id:
            _check_enrol_id(gateway_id, boot_file, problems)
        _check_identity_sinks(doc, spec, boot_file, problems)
        final_doc, _ = _with_identity(doc, spec, IdentityPaths.under(final_dd))
        _validate_config(doc, spec, boot_file, config_path, problems)  # every problem in one pass
        if not problems and spec.setup_token:
            try:
                refused = setup_token_refused(UserStore(users_file(final_dd)))
            except UserError as e:
                refused = str(e)
            if refused:
                problems.append(ConfigProblem(str(boot_file), "provision.setup_token", refused))

    if problems:
        return _reject(boot_file, config_path, text, secret_source, spec, problems, previous or fallback_dd,
                       gateway_id, now)
    return _install(boot_file, config_path, final_doc, spec, final_dd, gateway_id, timeout_s, now)


# ------------------------------------------------------------------------------------------------ parsing


def _read(boot_file: Path, problems: list[ConfigProblem]) -> tuple[str, dict[str, Any] | None]:
    try:
        text = boot_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        problems.append(ConfigProblem(str(boot_file), "", f"cannot read the provisioning file: {e}"))
        try:
            return boot_file.read_bytes().decode("utf-8", "replace"), None
        except OSError:
            return "", None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problems.append(ConfigProblem(str(boot_file), "", f"not valid TOML: {e}"))
        return text, None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_provision(raw: Any, file: Path, problems: list[ConfigProblem]) -> ProvisionSpec:
    def err(key: str, message: str) -> None:
        problems.append(ConfigProblem(str(file), f"provision.{key}" if key else "provision", message))

    if raw is None:
        return ProvisionSpec()
    if not isinstance(raw, dict):
        err("", "expected a table [provision]")
        return ProvisionSpec()
    values: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in PROVISION_KEYS:
            err(k, f"unknown key{suggest(k, PROVISION_KEYS)}")
        elif k == "identity_sinks":
            if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
                err(k, f"expected a non-empty array of sink names, got {v!r}")
            else:
                values[k] = tuple(v)
        elif k == "setup_token_ttl_h":
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 8760:
                err(k, f"expected a number of hours, > 0 and <= 8760, got {v!r}")
            else:
                values[k] = float(v)
        elif not isinstance(v, str) or not v.strip():
            err(k, f"expected a non-empty string, got {v!r}")
        else:
            values[k] = v.strip() if k != "ca_pem" else v

    user, pw_hash, setup = values.get("admin_user", ""), values.get("admin_password_hash", ""), values.get(
        "setup_token", "")
    if user:
        try:
            check_name(user)
        except UserError as e:
            err("admin_user", str(e))
    if pw_hash:
        if why := check_scrypt_hash(pw_hash):
            err("admin_password_hash", why)
        if not user and "admin_user" not in raw:
            err("admin_user", "missing: admin_password_hash needs the admin's name")
    elif user and not setup:
        err("admin_password_hash", "missing: admin_user needs admin_password_hash (or give setup_token instead)")
    if setup:
        if pw_hash:
            err("setup_token", "give admin_password_hash (with admin_user) or setup_token, not both")
        elif user:
            err("admin_user", "not used with setup_token: the operator chooses the name on the panel's /setup page")
        if len(setup) < MIN_SETUP_TOKEN_LEN or not setup.isprintable() or any(c.isspace() for c in setup):
            err("setup_token", f"must be at least {MIN_SETUP_TOKEN_LEN} printable characters without spaces")

    url, token = values.get("enrol_url", ""), values.get("enrol_token", "")
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            err("enrol_url", f"expected the receiver's https:// base URL, got {url!r}")
        elif parts.scheme == "http" and not _is_loopback(parts.hostname):
            err("enrol_url", "plain http:// is allowed only on a loopback address: the enrolment token would cross "
                "the network in clear text (use https://)")
        if parts.query or parts.fragment:
            err("enrol_url", "give the receiver's base URL, without ?query or #fragment")
        if not token and "enrol_token" not in raw:
            err("enrol_token", "missing: enrol_url needs the one-time enrolment token "
                "(gateway receiver-enrol-token --gateway ID)")
    elif token:
        err("enrol_url", "missing: enrol_token needs the receiver's base URL")
    if token and (not token.isprintable() or any(c.isspace() for c in token)):
        err("enrol_token", "must be printable characters without spaces")

    ca_pem = ""
    if "ca_file" in values and "ca_pem" in values:
        err("ca_pem", "give ca_file or ca_pem, not both")
    elif "ca_file" in values:
        path = Path(values["ca_file"])
        path = path if path.is_absolute() else file.parent / path
        try:
            ca_pem = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            err("ca_file", f"cannot read {path}: {e}")
    elif "ca_pem" in values:
        ca_pem = values["ca_pem"]
    if ca_pem:
        try:
            load_pem_certs(ca_pem)
        except ValueError as e:
            err("ca_file" if "ca_file" in values else "ca_pem", f"not a PEM CA certificate: {e}")
            ca_pem = ""
        if not url:
            err("ca_file" if "ca_file" in values else "ca_pem", "only used with enrol_url")
    elif url and "ca_file" not in values and "ca_pem" not in values:
        err("ca_file", "missing: enrol_url needs the receiver's CA (ca_file or ca_pem)")
    if "identity_sinks" in values and not url:
        err("identity_sinks", "only used with enrol_url")
    return ProvisionSpec(
        admin_user=user,
        admin_password_hash=pw_hash,
        setup_token=setup,
        setup_token_ttl_h=values.get("setup_token_ttl_h", 72.0),
        enrol_url=url,
        enrol_token=token,
        ca_pem=ca_pem,
        identity_sinks=values.get("identity_sinks", ()),
    )


def _check_enrol_id(gateway_id: str, file: Path, problems: list[ConfigProblem]) -> None:
    from cloud_sync.receiver.tokens import check_gateway_id

    try:
        check_gateway_id(gateway_id)
    except ValueError as e:
        problems.append(ConfigProblem(str(file), "gateway.id", f"cannot enrol with this id: {e}"))


def _identity_capable(sink: dict[str, Any]) -> bool:
    """http(s) sinks, and mqtt sinks over TLS (mqtts://): a plain mqtt:// sink takes no certificate."""
    scheme = urlsplit(str(sink.get("url", ""))).scheme
    return scheme == "mqtts" if sink.get("type", "http") == "mqtt" else scheme in ("http", "https")


def _check_identity_sinks(doc: dict[str, Any], spec: ProvisionSpec, file: Path, problems: list[ConfigProblem]) -> None:
    sinks = doc.get("sinks")
    by_name = {s.get("name"): s for s in sinks if isinstance(s, dict)} if isinstance(sinks, list) else {}
    for name in spec.identity_sinks:
        if name not in by_name:
            problems.append(ConfigProblem(str(file), "provision.identity_sinks",
                                          f"no sink named {name!r}{suggest(name, [str(n) for n in by_name])}"))
        elif not _identity_capable(by_name[name]):
            problems.append(ConfigProblem(str(file), "provision.identity_sinks",
                                          f"sink {name!r} takes no client certificate (an mqtt:// sink without TLS)"))


def _with_identity(doc: dict[str, Any], spec: ProvisionSpec, paths: IdentityPaths) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``doc`` whose sinks that upload to the enrolment receiver use the identity files: ``cert_file``/
    ``key_file`` when the sink has neither, ``ca_file`` when it has none. Those sinks: ``identity_sinks`` when
    given, else the http(s) and mqtts sinks on ``enrol_url``'s host."""
    out = copy.deepcopy(doc)
    changed: list[str] = []
    if not spec.enrol_url:
        return out, changed
    host = (urlsplit(spec.enrol_url).hostname or "").lower()
    sinks = out.get("sinks")
    if not isinstance(sinks, list):
        return out, changed
    for s in sinks:
        if not isinstance(s, dict) or not isinstance(s.get("url"), str):
            continue
        if spec.identity_sinks:
            if s.get("name") not in spec.identity_sinks:
                continue
        elif not _identity_capable(s) or (urlsplit(s["url"]).hostname or "").lower() != host:
            continue
        if "cert_file" not in s and "key_file" not in s:
            s["cert_file"], s["key_file"] = str(paths.cert), str(paths.key)
        if "ca_file" not in s:
            s["ca_file"] = str(paths.ca)
        changed.append(str(s.get("name", "?")))
    return out, changed


def _render(doc: dict[str, Any], source: Path) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return dumps(doc, header=f"Installed by `gateway provision` from {source} at {stamp}.\n"
                 "Every key: /opt/gateway/docs/config.md. Check after editing: gateway check-config <this file>")


def _validate_config(
    doc: dict[str, Any], spec: ProvisionSpec, boot_file: Path, config_path: Path, problems: list[ConfigProblem]
) -> None:
    """Load the config as it will be installed (placeholder identity files) from a temp file beside the config,
    so relative paths resolve as they will; problems are reported against the provisioning file."""
    with tempfile.TemporaryDirectory(prefix="gateway-provision-") as tmp:
        placeholders = IdentityPaths(Path(tmp) / "identity")
        placeholders.directory.mkdir()
        for p in (placeholders.key, placeholders.cert, placeholders.ca):
            p.write_bytes(b"")
        candidate, _ = _with_identity(doc, spec, placeholders)
        try:
            text = _render(candidate, boot_file)
        except ValueError as e:
            problems.append(ConfigProblem(str(boot_file), "", str(e)))
            return
        try:
            _check_text(text, config_path)
        except ConfigError as e:
            problems.extend(_remap(e.problems, boot_file, {tmp: "<identity>"}))


def _check_text(text: str, config_path: Path) -> None:
    """ConfigError unless ``text`` loads as a config placed at ``config_path``."""
    config_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=config_path.parent, prefix=f".{config_path.name}.check-", suffix=".toml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            load_config(tmp)
        except ConfigError as e:
            raise ConfigError(_remap(e.problems, config_path, {tmp: str(config_path)})) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _remap(problems: list[ConfigProblem], file: Path, replace: dict[str, str]) -> list[ConfigProblem]:
    out = []
    for p in problems:
        message = p.message
        for old, new in replace.items():
            message = message.replace(old, new)
        out.append(dataclasses.replace(p, file=str(file), message=message))
    return out


def _previous_data_dir(config_path: Path) -> Path | None:
    """The data directory of the config installed now (None when there is none or it does not load)."""
    if not config_path.is_file():
        return None
    try:
        cfg, _ = load_config(config_path, strict_protection=False)
    except ConfigError:
        return None
    return cfg.data_dir


# ------------------------------------------------------------------------------------------------ a bad file


_SECRET_NAME = r"[A-Za-z0-9_.-]*(?:token|password|secret|passphrase|private_key|_hash)[A-Za-z0-9_.-]*"
_SECRET_ASSIGN = re.compile(
    r"(?P<k>(?:^|[\s{,])[\"']?" + _SECRET_NAME + r"[\"']?\s*=\s*)"
    r"(?P<v>\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*'|[^\s,}#]+)",
    re.IGNORECASE | re.MULTILINE,
)
REDACTED: Final = '"<redacted>"'


def redact(text: str, doc: dict[str, Any] | None = None) -> str:
    """``text`` with the value of every secret-looking key (``*token*``, ``*password*``, ``*secret*``,
    ``*_hash``...) replaced by ``"<redacted>"``; with the parsed ``doc``, any remaining copy of a secret value is
    replaced too. Works on text that is not valid TOML (best effort, key by key)."""
    out = _SECRET_ASSIGN.sub(lambda m: m.group("k") + REDACTED, text)
    for value in _secret_values(doc) if doc is not None else []:
        if len(value) >= 4:
            out = out.replace(value, "<redacted>")
    return out


def _secret_values(node: Any, key: str = "") -> list[str]:
    if isinstance(node, dict):
        return [v for k, x in node.items() for v in _secret_values(x, str(k))]
    if isinstance(node, list):
        return [v for x in node for v in _secret_values(x, key)]
    if isinstance(node, str) and re.fullmatch(_SECRET_NAME, key, re.IGNORECASE):
        return [node]
    return []


def secure_delete(path: Path) -> None:
    """Overwrite ``path`` with zeros (fsync), then unlink it (and fsync its directory). On FAT and flash this
    removes the plain copy the file system shows; it cannot promise the old blocks are gone (wear levelling)."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.write(b"\0" * size)
        f.flush()
        os.fsync(f.fileno())
    path.unlink()
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _reject(
    boot_file: Path,
    config_path: Path,
    text: str,
    doc: dict[str, Any] | None,
    spec: ProvisionSpec,
    problems: list[ConfigProblem],
    status_dd: Path,
    gateway_id: str,
    now: Callable[[], dt.datetime],
) -> ProvisionResult:
    secrets = [s for s in (spec.admin_password_hash, spec.setup_token, spec.enrol_token) if len(s) >= 4]
    secrets += [s for s in _secret_values(doc) if len(s) >= 4] if doc is not None else []

    def scrub(line: str) -> str:
        for s in secrets:
            line = line.replace(s, "<redacted>")
        return line

    lines = [scrub(str(p)) for p in problems]
    rejected = boot_file.with_name(boot_file.name + ".rejected")
    result = ProvisionResult("rejected", problems=lines, data_dir=status_dd)
    log.error("provisioning file %s rejected (%d problem(s)); the previous config %s stays in use",
              boot_file, len(lines), config_path)
    for line in lines:
        log.error("provisioning: %s", line)
    try:
        note = (f"# REJECTED by `gateway provision` at {now().strftime('%Y-%m-%dT%H:%M:%SZ')}; secrets redacted.\n"
                + "".join(f"# problem: {line}\n" for line in lines)
                + f"# Fix it, put the secrets back, save it as {boot_file.name} and reboot.\n")
        rejected.write_text(note + scrub(redact(text)), encoding="utf-8")
        secure_delete(boot_file)
        result.messages.append(f"moved the provisioning file to {rejected} (secrets redacted)")
    except OSError as e:
        msg = f"cannot move {boot_file} aside ({e}): remove it by hand, it holds secrets"
        log.error("provisioning: %s", msg)
        result.messages.append(msg)
    if not config_path.exists():
        _write_default_config(config_path, status_dd, gateway_id, result)
    try:
        result.status_file = write_status(
            status_dd, ok=False, state="rejected", file=boot_file, problems=lines, now=now(),
            message=f"provisioning file {boot_file} rejected: {len(lines)} problem(s); nothing was installed; the "
            f"file was kept as {rejected.name} (secrets redacted)",
        )
    except OSError as e:
        log.error("provisioning: cannot write the status file in %s: %s", status_dd, e)
    return result


def _write_default_config(config_path: Path, data_dir: Path, gateway_id: str, result: ProvisionResult) -> None:
    """A minimal config (like deploy/install.sh writes) so the daemon and its panel start to show the problem."""
    gid = gateway_id if gateway_id.strip() else socket.gethostname()
    doc = {"version": 1, "gateway": {"id": gid, "data_dir": str(data_dir), "log_level": "INFO"},
           "panel": {"host": "0.0.0.0", "port": 8080, "tls": True}}
    try:
        text = dumps(doc, header="Minimal config written by `gateway provision` after a rejected provisioning file.")
        _install_text(text, config_path)
        result.messages.append(f"no config was installed: wrote a minimal one to {config_path}")
    except (OSError, ConfigError, ValueError) as e:
        log.error("provisioning: cannot write a default config to %s: %s", config_path, e)


# ------------------------------------------------------------------------------------------------ a good file


def _install_text(text: str, config_path: Path) -> None:
    """Check ``text`` as a config and install it at ``config_path`` atomically (0640; as root, the owner of the
    file it replaces, or the directory's). ConfigError (nothing installed) when it does not load."""
    directory = config_path.parent
    directory.mkdir(parents=True, exist_ok=True)
    ref = config_path if config_path.exists() else directory
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{config_path.name}.", suffix=".toml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o640)
            if os.geteuid() == 0:
                st = ref.stat()
                os.fchown(f.fileno(), 0 if ref == directory else st.st_uid, st.st_gid)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            load_config(tmp)
        except ConfigError as e:
            raise ConfigError(_remap(e.problems, config_path, {tmp: str(config_path)})) from None
        os.replace(tmp, config_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _install(
    boot_file: Path,
    config_path: Path,
    doc: dict[str, Any],
    spec: ProvisionSpec,
    data_dir: Path,
    gateway_id: str,
    timeout_s: float,
    now: Callable[[], dt.datetime],
) -> ProvisionResult:
    result = ProvisionResult("provisioned", enrolment="skipped", data_dir=data_dir)
    paths = IdentityPaths.under(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        if spec.enrol_url:
            make_identity(paths, gateway_id, spec.ca_pem)
            result.messages.append(f"made the device key and CSR (CN={gateway_id}) in {paths.directory}")
        store = UserStore(users_file(data_dir))
        if spec.admin_password_hash:
            install_admin_hash(store, spec.admin_user, spec.admin_password_hash)
            result.messages.append(f"panel admin {spec.admin_user!r} created")
        elif spec.setup_token:
            install_setup_token(store, spec.setup_token, spec.setup_token_ttl_h * 3600.0)
            result.messages.append(f"panel setup token installed (valid {spec.setup_token_ttl_h:g} h): open the "
                                   "panel's /setup page")
        _install_text(_render(doc, boot_file), config_path)
        result.messages.append(f"installed the config {config_path}")
    except (OSError, UserError, ConfigError, ValueError) as e:
        msg = f"provisioning from {boot_file} failed: {e}"
        log.error("%s; the file is kept for the next attempt", msg)
        result.action = "failed"
        result.enrolment = ""
        result.problems.append(msg)
        with contextlib.suppress(OSError):
            result.status_file = write_status(data_dir, ok=False, state="failed", file=boot_file, problems=[msg],
                                              message=msg, now=now())
        return result

    state, ok, message = "provisioned", True, f"provisioned from {boot_file}"
    if spec.enrol_url:
        er = enrol(paths, spec.enrol_url, spec.enrol_token, gateway_id, timeout_s=timeout_s)
        result.enrolment = er.outcome
        result.messages.append(er.message)
        if er.outcome == "pending":
            state, message = "enrolment-pending", f"provisioned from {boot_file}; enrolment pending: {er.message} " \
                "(retried at the next start of the gateway)"
            log.warning("provisioning: %s", message)
        elif er.outcome == "refused":
            state, ok, message = "enrolment-refused", False, f"provisioned from {boot_file}, but {er.message}"
            result.problems.append(er.message)
            log.error("provisioning: %s", message)
    try:
        secure_delete(boot_file)
        result.messages.append(f"deleted {boot_file} (overwritten first)")
    except OSError as e:
        msg = f"cannot delete {boot_file} ({e}): remove it by hand, it holds secrets"
        log.error("provisioning: %s", msg)
        result.problems.append(msg)
        ok = False
    with contextlib.suppress(OSError):
        result.status_file = write_status(data_dir, ok=ok, state=state, file=boot_file, problems=result.problems,
                                          message=message, now=now())
    log.info("provisioning: %s", message)
    return result


def _retry_pending(data_dir: Path, timeout_s: float, now: Callable[[], dt.datetime]) -> ProvisionResult:
    paths = IdentityPaths.under(data_dir)
    pending = load_pending(paths)
    if pending is None:
        return ProvisionResult("none", data_dir=data_dir)
    result = ProvisionResult("enrolment-retried", data_dir=data_dir)
    if not (paths.key.is_file() and paths.csr.is_file()):
        msg = f"pending enrolment in {paths.pending} but no device key/CSR in {paths.directory}: provision again"
        log.error("provisioning: %s", msg)
        result.enrolment, result.problems = "refused", [msg]
        return result
    er = enrol(paths, pending["enrol_url"], pending["enrol_token"], pending["gateway_id"], timeout_s=timeout_s)
    result.enrolment = er.outcome
    result.messages.append(er.message)
    ok, state = True, {"done": "provisioned", "pending": "enrolment-pending"}.get(er.outcome, "enrolment-refused")
    if er.outcome == "refused":
        ok = False
        result.problems.append(er.message)
        log.error("provisioning: %s", er.message)
    elif er.outcome == "pending":
        log.warning("provisioning: enrolment still pending: %s", er.message)
    else:
        log.info("provisioning: %s", er.message)
    with contextlib.suppress(OSError):
        result.status_file = write_status(data_dir, ok=ok, state=state, file=paths.pending, problems=result.problems,
                                          message=er.message, now=now())
    return result

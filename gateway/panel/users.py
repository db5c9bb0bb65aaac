"""Panel users: a small JSON file of accounts (name, role, scrypt password hash), setup tokens and API tokens.

File: ``<data_dir>/panel/users.json`` (mode 0600 in a 0700 directory, written atomically: temp file + fsync +
rename + directory fsync, so a reader never sees half a file). Format (``version`` 1)::

    {"version": 1,
     "users": {"alice": {"role": "admin", "created_ns": 1700000000000000000, "disabled": false,
                         "hash": "scrypt$16384$8$1$<salt b64>$<hash b64>", "password_changed_ns": ...}},
     "setup_tokens": [{"hash": "<sha256 hex>", "expires": 1700086400.0}],
     "api_tokens": {"<sha256 hex>": {"user": "alice", "created_ns": 1700000000000000000}}}

Passwords are hashed with scrypt (memory-hard, stdlib ``hashlib.scrypt``; n=2**14, r=8, p=1, 16-byte salt,
32-byte key); the parameters are stored with each hash so they can be raised later (a successful :meth:`verify`
re-hashes with the current parameters). Tokens are stored only as SHA-256 hashes.

There are no default credentials: the first admin comes from a one-time setup token (``gateway user setup-token``,
then the panel's ``/setup`` page: :meth:`create_first_admin`) or from ``gateway user add``. A setup token can only
ever create the *first* admin: once an enabled admin exists :meth:`consume_setup_token` returns False.

Several processes share the file (the daemon and the ``gateway user`` command): every change takes an exclusive
``flock`` on the file's directory, re-reads the file, changes it and writes it; every read re-reads the file when
its ``stat`` (inode, size, mtime) changed, so users added with the CLI are seen by a running daemon at its next
call. When run as root (the CLI) a written file keeps the owner of the file it replaces (or of its directory),
so the daemon's service account can still read it.

Threads: every method may be called from the event loop (they are quick apart from the KDF, which callers run
in a worker thread: :meth:`verify`, :meth:`check_password` and :meth:`add`/:meth:`set_password` take ~50 ms by
design). A lock makes concurrent calls safe.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.panel.roles import Role

FILE_VERSION = 1

# scrypt parameters for new hashes: 16 MiB of memory, ~50 ms on a small ARM board.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_DKLEN = 32
SALT_BYTES = 16
_MAX_SCRYPT_N = 2**20  # refuse absurd parameters read from the file (memory)

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
MIN_PASSWORD_LEN = 10
MAX_PASSWORD_LEN = 1024
API_TOKEN_PREFIX = "gwp_"

# Checked (and always rejected) for unknown users so that a wrong name costs as much time as a wrong password.
_DUMMY_HASH = (
    f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}$"
    + base64.b64encode(b"\x00gateway-dummy\x00\x00").decode()
    + "$"
    + base64.b64encode(bytes(SCRYPT_DKLEN)).decode()
)


class UserError(ValueError):
    """A user-management request that cannot be done (unknown user, duplicate name, weak password...)."""


class UserFileError(UserError):
    """The users file cannot be read or written, or is not a users file this version understands."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    created_ns: int  # UTC epoch ns
    disabled: bool = False
    password_changed_ns: int = 0  # UTC epoch ns of the last password change (sessions from before it end)


# -- password hashing --------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$n$r$p$salt_b64$hash_b64`` for ``password`` with a fresh 16-byte salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    dk = _scrypt(password, salt, n, r, p, SCRYPT_DKLEN)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(dk)}"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=maxmem)


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        dk = base64.b64decode(parts[5], validate=True)
    except ValueError:
        return None
    if not (2 <= n <= _MAX_SCRYPT_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16 and 16 <= len(dk) <= 64):
        return None
    return n, r, p, salt, dk


def check_password_hash(encoded: str, password: str) -> bool:
    """True when ``password`` matches ``encoded`` (constant-time compare). A malformed hash never matches (but
    still costs one KDF run with the default parameters)."""
    parsed = _parse_hash(encoded)
    if parsed is None:
        parsed = _parse_hash(_DUMMY_HASH)
        assert parsed is not None
        n, r, p, salt, dk = parsed
        _scrypt(password, salt, n, r, p, len(dk))
        return False
    n, r, p, salt, dk = parsed
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(dk)), dk)


def _needs_rehash(encoded: str) -> bool:
    parsed = _parse_hash(encoded)
    return parsed is None or parsed[:3] != (SCRYPT_N, SCRYPT_R, SCRYPT_P) or len(parsed[4]) != SCRYPT_DKLEN


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# -- validation --------------------------------------------------------------------------------------------------


def check_name(name: str) -> None:
    """UserError unless ``name`` is 1-32 characters of letters, digits, ``_``, ``.`` and ``-``."""
    if not NAME_RE.fullmatch(name):
        raise UserError(f"invalid user name {name!r}: use 1-32 characters of letters, digits, '_', '.' and '-'")


def check_password_policy(name: str, password: str) -> None:
    """UserError unless ``password`` is acceptable for user ``name``: at least 10 characters, not the name."""
    if len(password) < MIN_PASSWORD_LEN:
        raise UserError(f"password too short: at least {MIN_PASSWORD_LEN} characters")
    if len(password) > MAX_PASSWORD_LEN:
        raise UserError(f"password too long: at most {MAX_PASSWORD_LEN} characters")
    if password.strip().casefold() == name.casefold():
        raise UserError("the password must not be the user name")


# -- atomic file writing (shared with tls.py) --------------------------------------------------------------------


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) if missing; ``directory`` itself, when created here, gets mode 0700 and,
    when running as root, the owner of its parent (so the daemon's service account can use it)."""
    if directory.is_dir():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)  # parents (e.g. data_dir): the usual mode
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(directory, 0o700)
    _match_owner_path(directory, directory.parent)


def _match_owner_path(path: Path, ref: Path) -> None:
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        st = ref.stat()
        os.chown(path, st.st_uid, st.st_gid)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename, directory fsync).

    The file gets ``mode``; the directory is created (0700) if missing. As root, the file keeps the owner of the
    file it replaces, or takes the directory's owner.
    """
    directory = path.parent
    ensure_private_dir(directory)
    ref = path if path.exists() else directory
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            if os.geteuid() == 0:
                with contextlib.suppress(OSError):
                    st = ref.stat()
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- the store ---------------------------------------------------------------------------------------------------


def _empty() -> dict[str, Any]:
    return {"version": FILE_VERSION, "users": {}, "setup_tokens": [], "api_tokens": {}}


class UserStore:
    """Accounts, one-time setup tokens and per-user API tokens (bearer tokens for tools, with the user's role).

    ``clock`` gives wall-clock epoch seconds (setup-token expiry, creation times); tests inject a fake one.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.RLock()
        self._data: dict[str, Any] = _empty()
        self._stat_key: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) of what _data holds

    # -- reading -------------------------------------------------------------------------------------------------

    def _refresh(self) -> dict[str, Any]:
        """The current file contents (re-read only when the file changed). Caller holds ``_lock``."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._data, self._stat_key = _empty(), None
            return self._data
        except OSError as e:
            raise UserFileError(f"cannot read {self.path}: {e.strerror}") from None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key != self._stat_key:
            self._data = self._read()
            self._stat_key = key
        return self._data

    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return _empty()
        except OSError as e:
            raise UserFileError(f"cannot read {self.path}: {e.strerror}") from None
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise UserFileError(f"{self.path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise UserFileError(f"{self.path}: not a users file")
        version = data.get("version")
        if version != FILE_VERSION:
            raise UserFileError(f"{self.path}: unsupported users file version {version!r} (expected {FILE_VERSION})")
        for field, kind in (("users", dict), ("setup_tokens", list), ("api_tokens", dict)):
            data.setdefault(field, kind())
            if not isinstance(data[field], kind):
                raise UserFileError(f"{self.path}: {field!r} must be a JSON {'object' if kind is dict else 'array'}")
        return data

    @contextlib.contextmanager
    def _change(self) -> Iterator[dict[str, Any]]:
        """Exclusive change: thread lock + directory flock, fresh read, yield the data, write it back."""
        with self._lock:
            try:
                ensure_private_dir(self.path.parent)
                dfd = os.open(self.path.parent, os.O_RDONLY)
            except OSError as e:
                raise UserFileError(f"cannot use {self.path.parent}: {e.strerror}") from None
            try:
                fcntl.flock(dfd, fcntl.LOCK_EX)
                self._stat_key = None  # always re-read under the lock
                data = json.loads(json.dumps(self._refresh()))  # deep copy: a failed change leaves _data intact
                yield data
                payload = (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8")
                try:
                    atomic_write_bytes(self.path, payload)
                except OSError as e:
                    raise UserFileError(f"cannot write {self.path}: {e.strerror}") from None
                self._data = data
                st = os.stat(self.path)
                self._stat_key = (st.st_ino, st.st_size, st.st_mtime_ns)
            finally:
                os.close(dfd)  # releases the flock

    @staticmethod
    def _user(name: str, rec: dict[str, Any]) -> User:
        try:
            role = Role.parse(str(rec.get("role", "")))
        except ValueError:
            role = Role.VIEWER  # unknown role in a hand-edited file: least privilege
        return User(
            name=name,
            role=role,
            created_ns=int(rec.get("created_ns", 0)),
            disabled=bool(rec.get("disabled", False)),
            password_changed_ns=int(rec.get("password_changed_ns", 0)),
        )

    @staticmethod
    def _enabled_admins(data: dict[str, Any]) -> builtins.list[str]:
        return [n for n, rec in data["users"].items()
                if str(rec.get("role", "")).lower() == "admin" and not rec.get("disabled", False)]

    def _now_ns(self) -> int:
        return int(self.clock() * 1e9)

    # -- accounts ------------------------------------------------------------------------------------------------

    def get(self, name: str) -> User | None:
        with self._lock:
            rec = self._refresh()["users"].get(name)
            return self._user(name, rec) if isinstance(rec, dict) else None

    def list(self) -> builtins.list[User]:
        """All users, sorted by name."""
        with self._lock:
            users = self._refresh()["users"]
            return [self._user(n, users[n]) for n in sorted(users) if isinstance(users[n], dict)]

    def has_admin(self) -> bool:
        """True when at least one enabled admin exists."""
        with self._lock:
            return bool(self._enabled_admins(self._refresh()))

    def add(self, name: str, password: str, role: Role) -> User:
        """A new account. UserError for a bad or taken name (names differing only in case are taken too) or a
        password the policy refuses. Adding the first admin invalidates every outstanding setup token."""
        check_name(name)
        check_password_policy(name, password)
        role = Role(role)
        encoded = hash_password(password)  # slow: outside the lock
        with self._change() as data:
            return self._add_locked(data, name, encoded, role)

    def _add_locked(self, data: dict[str, Any], name: str, encoded: str, role: Role) -> User:
        if any(n.casefold() == name.casefold() for n in data["users"]):
            raise UserError(f"user {name!r} exists")
        now = self._now_ns()
        data["users"][name] = {"role": role.label, "created_ns": now, "disabled": False, "hash": encoded,
                               "password_changed_ns": now}
        if role == Role.ADMIN:
            data["setup_tokens"] = []
        return self._user(name, data["users"][name])

    def _existing(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        rec = data["users"].get(name)
        if not isinstance(rec, dict):
            raise UserError(f"no user {name!r}")
        return rec

    def set_password(self, name: str, password: str) -> None:
        """New password (policy-checked). The caller ends the user's sessions (SessionManager.revoke_user); a
        daemon's SessionManager also notices the change itself at the next request."""
        check_password_policy(name, password)
        if self.get(name) is None:
            raise UserError(f"no user {name!r}")
        encoded = hash_password(password)
        with self._change() as data:
            rec = self._existing(data, name)
            rec["hash"] = encoded
            rec["password_changed_ns"] = self._now_ns()

    def set_role(self, name: str, role: Role) -> None:
        """Change a user's role; refuses to demote the last enabled admin."""
        role = Role(role)
        with self._change() as data:
            rec = self._existing(data, name)
            if role != Role.ADMIN and self._enabled_admins(data) == [name]:
                raise UserError(f"{name!r} is the last admin: make another user admin first")
            rec["role"] = role.label

    def set_disabled(self, name: str, disabled: bool) -> None:
        """Disable (no login, no API tokens) or enable a user; refuses to disable the last enabled admin."""
        with self._change() as data:
            rec = self._existing(data, name)
            if disabled and self._enabled_admins(data) == [name]:
                raise UserError(f"{name!r} is the last admin: make another user admin first")
            rec["disabled"] = bool(disabled)

    def remove(self, name: str) -> None:
        """Remove a user and their API tokens; refuses to remove the last enabled admin."""
        with self._change() as data:
            self._existing(data, name)
            if self._enabled_admins(data) == [name]:
                raise UserError(f"{name!r} is the last admin: make another user admin first")
            del data["users"][name]
            data["api_tokens"] = {h: t for h, t in data["api_tokens"].items() if t.get("user") != name}

    def check_password(self, name: str, password: str) -> User | None:
        """The user when ``password`` is theirs, **disabled or not** (the session manager tells "disabled" apart
        from a wrong password only to someone who knows the password); None otherwise. Runs the KDF even for an
        unknown user. Slow (~50 ms): call it in a worker thread."""
        with self._lock:
            rec = self._refresh()["users"].get(name)
            encoded = str(rec.get("hash", "")) if isinstance(rec, dict) else _DUMMY_HASH
        ok = check_password_hash(encoded, password)
        if not ok or not isinstance(rec, dict):
            return None
        if _needs_rehash(encoded):  # parameters raised since: store a hash with today's parameters
            with contextlib.suppress(UserError):
                new = hash_password(password)
                with self._change() as data:
                    cur = data["users"].get(name)
                    if isinstance(cur, dict) and cur.get("hash") == encoded:
                        cur["hash"] = new
        return self._user(name, rec)

    def verify(self, name: str, password: str) -> User | None:
        """The user when the password is right and the user is enabled; None otherwise (unknown user: the KDF
        runs all the same, against a dummy hash). Slow (~50 ms): call it in a worker thread."""
        user = self.check_password(name, password)
        return user if user is not None and not user.disabled else None

    # -- setup tokens (first admin only) -------------------------------------------------------------------------

    def issue_setup_token(self, ttl_s: float = 86400.0) -> str:
        """A one-time token (shown once, only its hash is stored) that lets the ``/setup`` page create the first
        admin. UserError when an admin exists already or ``ttl_s`` is not positive."""
        if not ttl_s > 0:
            raise UserError("the setup token's lifetime must be positive")
        token = secrets.token_urlsafe(32)
        with self._change() as data:
            if self._enabled_admins(data):
                raise UserError("an admin exists already: setup tokens only create the first admin "
                                "(an admin adds users on the panel or with `gateway user add`)")
            now = self.clock()
            data["setup_tokens"] = [t for t in data["setup_tokens"] if float(t.get("expires", 0)) > now]
            data["setup_tokens"].append({"hash": _token_hash(token), "expires": now + float(ttl_s)})
        return token

    def _setup_token_index(self, data: dict[str, Any], token: str) -> int | None:
        if not token or self._enabled_admins(data):
            return None
        h, now = _token_hash(token), self.clock()
        for i, t in enumerate(data["setup_tokens"]):
            if hmac.compare_digest(str(t.get("hash", "")), h) and float(t.get("expires", 0)) > now:
                return i
        return None

    def check_setup_token(self, token: str) -> bool:
        """True when ``token`` is an unexpired, unused setup token and no admin exists (does not use it up)."""
        with self._lock:
            return self._setup_token_index(self._refresh(), token) is not None

    def consume_setup_token(self, token: str) -> bool:
        """Use up a setup token: True once for a valid unexpired token; False when unknown, used, expired, or
        once an admin exists. Prefer :meth:`create_first_admin`, which checks the new account first."""
        with self._change() as data:
            i = self._setup_token_index(data, token)
            if i is None:
                return False
            del data["setup_tokens"][i]
            return True

    def add_hashed(self, name: str, encoded: str, role: Role, *, replace: bool = False) -> User:
        """An account with an existing ``scrypt$N$r$p$salt$hash`` password hash (first-boot provisioning: the
        password itself never reaches the gateway). UserError for a bad name or a hash :func:`check_password_hash`
        cannot use, or a taken name unless ``replace``: then that account gets the hash and ``role`` and is enabled
        (its sessions end, as after a password change). Adding or making an admin clears the setup tokens."""
        check_name(name)
        if _parse_hash(encoded) is None:
            raise UserError("not a usable password hash: expected scrypt$N$r$p$<salt base64>$<hash base64>")
        role = Role(role)
        with self._change() as data:
            existing = next((n for n in data["users"] if n.casefold() == name.casefold()), None)
            if existing is None or not replace:
                return self._add_locked(data, name, encoded, role)  # UserError when the name is taken
            rec = data["users"][existing]
            rec.update(role=role.label, disabled=False, hash=encoded, password_changed_ns=self._now_ns())
            if role == Role.ADMIN:
                data["setup_tokens"] = []
            return self._user(existing, rec)

    def add_setup_token(self, token: str, ttl_s: float = 86400.0) -> None:
        """Install a setup token chosen elsewhere (first-boot provisioning), valid ``ttl_s`` seconds; only its hash
        is stored. UserError when an admin exists already or ``ttl_s`` is not positive."""
        if not ttl_s > 0:
            raise UserError("the setup token's lifetime must be positive")
        h = _token_hash(token)
        with self._change() as data:
            if self._enabled_admins(data):
                raise UserError("an admin exists already: setup tokens only create the first admin "
                                "(an admin adds users on the panel or with `gateway user add`)")
            now = self.clock()
            data["setup_tokens"] = [t for t in data["setup_tokens"]
                                    if float(t.get("expires", 0)) > now and t.get("hash") != h]
            data["setup_tokens"].append({"hash": h, "expires": now + float(ttl_s)})

    def create_first_admin(self, token: str, name: str, password: str) -> User:
        """Check the setup token, the name and the password, then (atomically) add the admin and use up the
        token (with every other setup token). UserError when the token is not valid (or an admin exists) or the
        name/password is refused; the token stays valid after a refused name or password."""
        check_name(name)
        check_password_policy(name, password)
        if not self.check_setup_token(token):
            raise UserError("invalid or expired setup token (or an admin exists already)")
        encoded = hash_password(password)
        with self._change() as data:
            if self._setup_token_index(data, token) is None:
                raise UserError("invalid or expired setup token (or an admin exists already)")
            return self._add_locked(data, name, encoded, Role.ADMIN)  # clears the setup tokens

    # -- API tokens ----------------------------------------------------------------------------------------------

    def issue_api_token(self, name: str) -> str:
        """A new bearer token ``gwp_...`` acting as ``name`` with their current role (shown once)."""
        token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._change() as data:
            self._existing(data, name)
            data["api_tokens"][_token_hash(token)] = {"user": name, "created_ns": self._now_ns()}
        return token

    def verify_api_token(self, token: str) -> User | None:
        """The (enabled) user a bearer token belongs to; None for anything else. Quick (one SHA-256)."""
        if not token.startswith(API_TOKEN_PREFIX):
            return None
        with self._lock:
            data = self._refresh()
            entry = data["api_tokens"].get(_token_hash(token))
            if not isinstance(entry, dict):
                return None
            rec = data["users"].get(entry.get("user"))
            if not isinstance(rec, dict) or rec.get("disabled", False):
                return None
            return self._user(str(entry["user"]), rec)

    def api_token_count(self, name: str) -> int:
        with self._lock:
            return sum(1 for t in self._refresh()["api_tokens"].values() if t.get("user") == name)

    def revoke_api_tokens(self, name: str) -> int:
        """Remove every API token of ``name``; returns how many."""
        with self._change() as data:
            before = len(data["api_tokens"])
            data["api_tokens"] = {h: t for h, t in data["api_tokens"].items() if t.get("user") != name}
            return before - len(data["api_tokens"])

"""The panel's first admin from a provisioning file: an account with a given scrypt hash, or a given one-time
setup token (the technician keeps the token; the operator uses it on the panel's ``/setup`` page).

:class:`gateway.panel.users.UserStore` does the work (``add_hashed``, ``add_setup_token``): these check the
provisioning file's values first, with messages that name its keys.

Threads: the provisioning command's main thread.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from gateway.panel.roles import Role
from gateway.panel.users import User, UserError, UserStore, check_name

_MAX_N = 2**20


def check_scrypt_hash(encoded: str) -> str:
    """"" when ``encoded`` is a ``scrypt$n$r$p$salt_b64$hash_b64`` hash the panel can check, else why not."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return "expected scrypt$N$r$p$<salt base64>$<hash base64> (`gateway provision --hash-password` prints one)"
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        base64.b64decode(parts[4], validate=True)
        dk = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        return "N, r and p must be integers and the salt and hash base64"
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0):
        return f"N must be a power of two from 2 to {_MAX_N}, got {n}"
    if not (1 <= r <= 32 and 1 <= p <= 16):
        return f"r must be 1..32 and p 1..16, got r={r} p={p}"
    if not 16 <= len(dk) <= 64:
        return f"the hash must be 16..64 bytes, got {len(dk)}"
    return ""


def users_file(data_dir: Path) -> Path:
    """The panel's users file (the same path as :func:`gateway.panel.app.users_path`)."""
    return Path(data_dir) / "panel" / "users.json"


def setup_token_refused(store: UserStore) -> str:
    """"" when a setup token can be installed, else why not (an enabled admin exists already)."""
    return "an admin exists already: a setup token only creates the first admin" if store.has_admin() else ""


def install_admin_hash(store: UserStore, name: str, encoded: str) -> User:
    """Add admin ``name`` with password hash ``encoded``; an existing account of that name gets the hash, the
    admin role and is enabled (re-provisioning resets it). Clears outstanding setup tokens."""
    check_name(name)
    if check_scrypt_hash(encoded):
        raise UserError(f"admin_password_hash: {check_scrypt_hash(encoded)}")
    return store.add_hashed(name, encoded, Role.ADMIN, replace=True)


def install_setup_token(store: UserStore, token: str, ttl_s: float) -> None:
    """Install ``token`` as a one-time setup token valid for ``ttl_s`` seconds (only its SHA-256 is stored)."""
    store.add_setup_token(token, ttl_s)

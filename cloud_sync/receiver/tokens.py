"""Per-gateway bearer tokens, stored hashed.

A token file line is ``GATEWAY_ID=sha256:<64 hex digits>``: the SHA-256 of the token's UTF-8 bytes. Tokens are
random secrets of at least 128 bits (:func:`mint_token` makes 256-bit ones), so a fast unsalted hash is enough:
nobody can brute-force a 2^128 space, and a leaked file reveals no usable token. (A slow password hash such as
scrypt protects *low-entropy* secrets; it would only cost CPU on every request here.)

A plain value (``GATEWAY_ID=TOKEN``, from ``--token``, the environment or an old file) is hashed when loaded,
so the receiver never keeps a plain token in memory after start-up. A value that looks exactly like
``sha256:<64 hex>`` is taken as a hash.

Lookup (:meth:`TokenTable.gateway_for`) hashes the presented token, then looks the digest up. Timing can only
depend on the digest, which an attacker cannot steer towards a valid one (that would need a SHA-256
pre-image), so it leaks nothing about valid tokens; the final equality check is constant-time anyway.

Pure functions and an immutable table: any thread.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Final

HASH_PREFIX: Final = "sha256:"
_HASHED: Final = re.compile(r"^sha256:[0-9a-f]{64}$")
TOKEN_BYTES: Final = 32  # 256-bit tokens from mint_token()
MAX_GATEWAY_ID_LEN: Final = 128


def hash_token(token: str) -> str:
    """``sha256:<hex>`` of ``token`` (UTF-8)."""
    return HASH_PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


def is_hashed(value: str) -> bool:
    return bool(_HASHED.match(value))


def as_hashed(value: str) -> str:
    """A stored credential: ``value`` itself when it already is ``sha256:<hex>``, else its hash."""
    return value if is_hashed(value) else hash_token(value)


class TokenTable:
    """gateway id → hashed token, built from a mapping of plain or hashed values (hashed here)."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._by_gateway: dict[str, str] = {gw: as_hashed(v) for gw, v in tokens.items()}
        # digest → gateway ids (two gateways configured with the same token both stay valid for it)
        self._by_digest: dict[str, frozenset[str]] = {}
        for gw, h in self._by_gateway.items():
            self._by_digest[h] = self._by_digest.get(h, frozenset()) | {gw}

    def __len__(self) -> int:
        return len(self._by_gateway)

    def hashed(self) -> dict[str, str]:
        """gateway id → ``sha256:<hex>`` (safe to pass to worker processes)."""
        return dict(self._by_gateway)

    def known(self, token: str) -> bool:
        """True when ``token`` belongs to any gateway."""
        return bool(self._by_digest.get(hash_token(token)))

    def valid_for(self, gateway_id: str, token: str) -> bool:
        """True when ``token`` is the token of ``gateway_id`` (constant-time comparison of digests)."""
        expected = self._by_gateway.get(gateway_id)
        return expected is not None and hmac.compare_digest(expected, hash_token(token))


def mint_token() -> str:
    """A new random token: 256 bits, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def check_gateway_id(gateway_id: str) -> str:
    """``gateway_id`` if usable as a token-file key (1..128 printable, no ``=``, ``#`` or spaces), else ValueError."""
    gid = gateway_id.strip()
    if (
        not gid
        or gid != gateway_id
        or len(gid) > MAX_GATEWAY_ID_LEN
        or not gid.isprintable()
        or any(c in gid for c in "=# \t,")
    ):
        raise ValueError(
            f"gateway id {gateway_id!r} must be 1..{MAX_GATEWAY_ID_LEN} printable characters without spaces, "
            "'=', ',' or '#'"
        )
    return gid


def append_hashed_token(token_file: Path, gateway_id: str, token: str) -> str:
    """Append ``GATEWAY_ID=sha256:<hex>`` to ``token_file`` (created with mode 0600 if missing); returns the
    line written. A later line for the same gateway replaces earlier ones when the file is loaded."""
    line = f"{check_gateway_id(gateway_id)}={hash_token(token)}\n"
    fd = os.open(token_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        if f.tell() > 0:
            with token_file.open("rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    f.write("\n")
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return line

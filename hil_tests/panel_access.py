"""API access to a gateway's panel for rigs and harnesses: a viewer account with a bearer token.

The panel has no anonymous JSON (docs/panel.md): a HIL rig reads ``/api/status`` with an API token, as any tool
would. :func:`viewer_token` creates the account (random password, never used) in the gateway's user file before
or while the gateway runs (the panel re-reads the file when it changes) and returns a fresh token.
"""

from __future__ import annotations

import json
import secrets
import urllib.request
from pathlib import Path
from typing import Any

from gateway.panel.app import users_path
from gateway.panel.roles import Role
from gateway.panel.users import UserStore

RIG_USER = "hil-rig"


def viewer_token(data_dir: Path, name: str = RIG_USER) -> str:
    """A bearer token of a viewer account ``name`` in the user file under ``data_dir`` (created if missing)."""
    users = UserStore(users_path(data_dir))
    if users.get(name) is None:
        users.add(name, secrets.token_urlsafe(24), Role.VIEWER)
    return users.issue_api_token(name)


def get_status(base_url: str, token: str, timeout: float = 5.0) -> dict[str, Any]:
    """``GET <base_url>/api/status`` with the token; OSError when the gateway does not answer."""
    req = urllib.request.Request(f"{base_url}/api/status", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        data: dict[str, Any] = json.load(resp)
    return data

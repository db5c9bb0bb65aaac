"""The outcome of the last provisioning run, for the panel and the journal: ``<data_dir>/provision-status.json``.

Format::

    {"ok": false, "state": "rejected", "file": "/boot/firmware/gateway.toml",
     "at": "2026-01-31T12:00:00Z", "message": "provisioning file rejected: 2 problem(s) ...",
     "problems": ["/boot/firmware/gateway.toml: sinks[cloud].urll: unknown key; did you mean 'url'?", ...]}

``state`` is one of ``provisioned``, ``enrolment-pending`` (config installed, the receiver was unreachable:
retried at the next start), ``enrolment-refused`` (config installed, the receiver refused the enrolment token or
the CSR) and ``rejected`` (the file was not used; the previous config is unchanged). ``ok`` is true for the first
two. Written by ``gateway provision`` (root) with the data directory's owner, mode 0644 (it holds no secret).

Any thread; quick file reads.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Final

from gateway.panel.users import atomic_write_bytes

STATUS_FILE: Final = "provision-status.json"


def status_path(data_dir: Path) -> Path:
    return Path(data_dir) / STATUS_FILE


def provision_status(data_dir: Path) -> dict[str, Any] | None:
    """The last provisioning outcome (see the module docstring), or None when there was none (or the file cannot
    be read). The panel shows it on its overview when ``ok`` is false."""
    try:
        doc = json.loads(status_path(data_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool):
        return None
    problems = doc.get("problems")
    doc["problems"] = [str(p) for p in problems] if isinstance(problems, list) else []
    return doc


def write_status(
    data_dir: Path, *, ok: bool, state: str, file: Path, message: str, problems: list[str],
    now: dt.datetime | None = None,
) -> Path:
    """Write the status file atomically; returns its path."""
    at = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = {"ok": ok, "state": state, "file": str(file), "at": at, "message": message, "problems": problems}
    path = status_path(data_dir)
    atomic_write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode("utf-8"), mode=0o644)
    return path

"""The config the daemon runs, kept for ``gateway config diff -c FILE`` (running vs. file).

At start and after every applied reload the daemon writes the text of the config file it loaded to
``<data_dir>/running-config.toml`` and the file's path to ``<data_dir>/running-config.json`` (atomically; the
config directory itself is read-only under systemd). :func:`load_running` parses that text as if it were still at
its original path, so relative paths compare equal. The copy may hold sink tokens: it is written mode 0600, like
the store.

Threads: any (small blocking file I/O: the daemon calls these from a worker thread).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig

TEXT_FILE = "running-config.toml"
META_FILE = "running-config.json"


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_running(cfg: GatewayConfig, now_iso: str) -> bool:
    """Keep a copy of the file ``cfg`` was loaded from. False (nothing written) when it has no source file or the
    file cannot be read now (then the previous copy stays: it still describes what runs)."""
    if cfg.source is None:
        return False
    try:
        text = Path(cfg.source).read_bytes()
    except OSError:
        return False
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(cfg.data_dir / TEXT_FILE, text)
    meta = {"source": str(Path(cfg.source).resolve()), "loaded_at": now_iso}
    _atomic_write(cfg.data_dir / META_FILE, json.dumps(meta).encode())
    return True


def load_running(data_dir: Path) -> tuple[GatewayConfig, dict[str, Any]]:
    """The running config (parsed as at its original path) and its metadata. FileNotFoundError when the daemon
    never ran with this data directory; ConfigError if the copy no longer validates (a newer gateway's keys)."""
    from gateway.config_load import parse_config

    meta = json.loads((data_dir / META_FILE).read_text())
    text = (data_dir / TEXT_FILE).read_bytes().decode("utf-8")
    source = Path(meta["source"])
    cfg = parse_config(tomllib.loads(text), file=f"{source} (running copy)", base_dir=source.parent,
                       strict_protection=False)  # as the daemon loaded it
    return cfg, meta

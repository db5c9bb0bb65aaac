"""fsync helpers for the store's renames (new file, compaction, damaged files moved aside)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_path(path: Path, *, best_effort: bool = False) -> None:
    """fsync a file, or a directory (which makes a rename in it durable). ``best_effort``: ignore OSError
    (not every filesystem lets a directory be opened)."""
    with contextlib.suppress(OSError) if best_effort else contextlib.nullcontext():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

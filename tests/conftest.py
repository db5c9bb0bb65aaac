"""Shared fixtures. The autouse ``no_leaks`` fixture fails a test that leaves threads behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        extra = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
        extra = [t for t in extra if not t.name.startswith(("asyncio_", "ThreadPoolExecutor"))]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not extra, f"test leaked threads: {[t.name for t in extra]}"

"""Shared fixtures. The autouse ``no_leaks`` fixture fails a test that leaves threads behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

EXEMPT_PREFIXES = ("asyncio_", "ThreadPoolExecutor")  # the loop's default executor, shut down by pytest-asyncio
GRACE_S = 5.0  # a thread that is finishing gets this long to end (join), then counts as leaked


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + GRACE_S
    extra = [
        t
        for t in threading.enumerate()
        if t.ident not in before and t.is_alive() and not t.name.startswith(EXEMPT_PREFIXES)
    ]
    for t in extra:
        t.join(max(0.0, deadline - time.monotonic()))
    leaked = [t.name for t in extra if t.is_alive()]
    assert not leaked, f"test leaked threads: {leaked}"

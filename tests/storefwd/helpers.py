"""Helpers shared by the storefwd tests (no fixtures with side effects here)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from gateway.model import ReadingBatch
from storefwd import Store

T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z in ns


def batch(start: int, n: int, point_id: int = 1, quality: int = 0) -> ReadingBatch:
    """n readings whose value is start, start+1, ...: the value identifies the row."""
    vals = np.arange(start, start + n, dtype=np.float64)
    return ReadingBatch.of(T0 + vals.astype(np.int64) * 1000, np.full(n, point_id), vals, quality)


class WriterGate:
    """Holds the store's writer thread at the start of its next transaction until ``open()``.

    A test seam only: it wraps ``Store._write`` on one instance. ``entered`` is set when the writer is held.
    """

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self._release = threading.Event()
        original = store._write

        def gated(work: Any) -> bool:
            self.entered.set()
            self._release.wait(30.0)
            return original(work)

        monkeypatch.setattr(store, "_write", gated)

    def open(self) -> None:
        self._release.set()


@contextmanager
def threads(targets: list[Callable[[], None]]) -> Iterator[None]:
    """Run the callables in threads; join them (re-raising the first error) on exit."""
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as e:
                errors.append(e)

        return run

    ts = [threading.Thread(target=wrap(fn), name=f"test-worker-{i}") for i, fn in enumerate(targets)]
    for t in ts:
        t.start()
    try:
        yield
    finally:
        for t in ts:
            t.join(30.0)
    if errors:
        raise errors[0]

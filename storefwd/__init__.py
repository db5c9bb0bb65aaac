"""storefwd: the durable local store (DuckDB) -- one writer thread, batched Arrow inserts, outbox watermarks.

Public API: :class:`Store` and the exception tree rooted at :class:`StoreError` (see :mod:`storefwd.errors`).
"""

from .errors import (
    StoreClosed,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreLocked,
    StoreOpenError,
    StoreTimeout,
    StoreVersionError,
    StoreWriteError,
)
from .store import Store

__all__ = [
    "Store",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreLocked",
    "StoreOpenError",
    "StoreTimeout",
    "StoreVersionError",
    "StoreWriteError",
]

"""The storefwd exception tree. Every error the store raises on purpose derives from :class:`StoreError`.

::

    StoreError
    ├── StoreClosed          operation on a store that was closed (or never finished opening)
    ├── StoreFull            put() timed out waiting for queue space (offer() returns False instead)
    ├── StoreTimeout         flush() did not see its rows committed in time (also a TimeoutError)
    ├── StoreWriteError      the writer thread's transaction failed (cause chained); also raised to the
    │                        callers of commands (ack, register_points, add_event) that failed
    └── StoreOpenError       the file could not be opened; ``.path`` names it
        ├── StoreCorrupt     not a readable DuckDB file (corrupt, truncated, foreign, newer format)
        ├── StoreLocked      another process holds the file's lock
        └── StoreVersionError the file's schema version is newer than this code understands

Argument mistakes (wrong dtypes, negative seqs) raise the built-in ``TypeError``/``ValueError``.
"""

from __future__ import annotations

from pathlib import Path


class StoreError(Exception):
    """Base class of every error raised by :mod:`storefwd`."""


class StoreClosed(StoreError):
    """The store is closed: no more writes or reads are possible."""


class StoreFull(StoreError):
    """The writer queue stayed full for the whole ``put()`` timeout (back-pressure)."""


class StoreTimeout(StoreError, TimeoutError):
    """A wait on the writer thread (``flush()``) ran past its timeout."""


class StoreWriteError(StoreError):
    """A write transaction failed. The DuckDB error is chained as ``__cause__``."""


class StoreOpenError(StoreError):
    """The store file could not be opened. ``path`` is the file."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class StoreCorrupt(StoreOpenError):
    """The file is not a readable DuckDB database (corrupt, truncated, foreign, or written by a newer DuckDB).

    The store never deletes or moves such a file by itself (moving it aside is left to the operator for now).
    """


class StoreLocked(StoreOpenError):
    """Another process holds the DuckDB file lock (only one gateway may own a store file)."""


class StoreVersionError(StoreOpenError):
    """The file's schema version is newer than this code supports (downgrade after upgrade)."""

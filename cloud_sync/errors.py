"""The cloud_sync exception tree. Every error raised on purpose derives from :class:`SyncError`.

::

    SyncError
    ├── CodecError            a payload is not a valid batch: not Arrow IPC at all (receiver answers 400)
    │   ├── SchemaMismatch    a well-formed Arrow stream that is not gwsync/1: format, schema, content (422)
    │   └── PayloadTooLarge   body or decompressed size over the configured limit (receiver answers 413)
    ├── UploadError           an upload did not get a 2xx (uploader side)
    │   ├── RetryableUpload   connection error, timeout, 5xx, 408 or 429; ``retry_after_s`` from Retry-After
    │   ├── AuthRejected      401/403: the sink stops, its data is kept
    │   └── BatchRejected     any other 4xx (400, 413, ...): the sink stops, the batch is kept
    └── BackendError          the receiver's database failed (receiver answers 503, the client retries)
"""

from __future__ import annotations


class SyncError(Exception):
    """Base class of every error raised by :mod:`cloud_sync`."""


class CodecError(SyncError):
    """The bytes are not a valid sync batch (wrong format, schema, types or lengths)."""


class SchemaMismatch(CodecError):
    """The bytes are a readable Arrow IPC stream, but not a ``gwsync/1`` batch: wrong ``format`` metadata, a
    missing or mistyped column, nulls, an unknown value code, an invalid events section. The message names
    what is wrong. The receiver answers 422 (unprocessable), not 400 (unparseable)."""


class PayloadTooLarge(CodecError):
    """The request body or its decompressed size exceeds the receiver's limit."""


class UploadError(SyncError):
    """An upload attempt failed. ``status`` is the HTTP status (0 for transport errors)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class RetryableUpload(UploadError):
    """A transient failure: retried with backoff. ``retry_after_s`` is the server's Retry-After, if any."""

    def __init__(self, message: str, status: int = 0, retry_after_s: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after_s = retry_after_s


class AuthRejected(UploadError):
    """401/403: the token is missing, wrong, or for another gateway. Permanent until reconfigured."""


class BatchRejected(UploadError):
    """A 4xx other than 401/403/408/429: the receiver refuses this batch. Permanent for this batch."""


class BackendError(SyncError):
    """The receiver's database failed (connection lost, disk full). Transient from the client's view."""
